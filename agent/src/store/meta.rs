//! The keys of the `meta` table (`&str` -> `u64`), one line each on what it holds and who
//! writes it, and the `forward_meta` key. A missing key reads as 0 (except where noted).
//!
//! Every value is written in the same transaction as the rows it counts or points into, so a
//! crash never leaves a counter or cursor out of step with its table.

use redb::{ReadableTable, StorageError};

/// The seq the next ingested reading gets; never reused. Ingest writer.
pub const NEXT_SEQ: &str = "next_seq";
/// The seq the next dead letter gets; never reused. Ingest writer.
pub const NEXT_DEAD_LETTER: &str = "next_dead_letter";
/// Estimated bytes of `readings`, `dead_letters` and `outbox` rows (the buffer quota,
/// [`super::row_bytes`]). Ingest writer (adds, evicts), stage (trims the ingest rows, appends to
/// the outbox), forwarder (trims the outbox).
pub const LOG_BYTES: &str = "log_bytes";
/// Readings accepted since the database was created. Ingest writer.
pub const ACCEPTED: &str = "accepted";
/// Readings dropped as duplicates. Ingest writer.
pub const DUPLICATE: &str = "duplicate";
/// Dead letters stored (input that failed parsing or mapping). Ingest writer.
pub const REJECTED: &str = "rejected";
/// Readings and dead letters evicted by `drop_oldest`. Ingest writer.
pub const DROPPED: &str = "dropped";
/// Missing device sequence numbers seen (upstream loss). Ingest writer.
pub const UPSTREAM_GAPS: &str = "upstream_gaps";
/// The seq the next outbox record gets (missing: 1; 0 is never a record). Stage, on append.
pub const OUTBOX_NEXT_SEQ: &str = "outbox_next_seq";
/// Highest outbox seq trimmed after its Kafka transaction committed. Forwarder.
pub const OUTBOX_TRIMMED_THROUGH: &str = "outbox_trimmed_through";
/// The windowing stage's cursor: the next reading seq it consumes. Stage.
pub const WINDOW_NEXT_READING: &str = "window_next_reading";
/// The windowing stage's cursor: the next dead-letter seq it consumes. Stage.
pub const WINDOW_NEXT_DEAD_LETTER: &str = "window_next_dead_letter";

/// `forward_meta` key: this database's 16-byte random instance id, written once. Forwarder.
pub const INSTANCE_ID: &str = "instance_id";

/// The value of `key` in a `meta` table, 0 when missing.
pub fn get(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StorageError> {
    Ok(meta.get(key)?.map_or(0, |v| v.value()))
}
