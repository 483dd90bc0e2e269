//! The outbox: records waiting to be delivered to Kafka, in the agent's redb database.
//!
//! The windowing stage appends (partials, passed-through readings, late readings, dead letters)
//! inside the same write transaction that advances its cursor into the ingest log; the forwarder
//! reads bounded batches in sequence order, delivers them in one Kafka transaction together with
//! a progress marker, and trims them only after that transaction committed.
//!
//! # Table and encodings (version 1; all tables: `store/FORMAT.md`)
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `outbox` | `u64` seq (redb's numeric `u64` key) | outbox record v1 |
//! | `meta` (shared with the ingest log) | `"outbox_next_seq"`, `"outbox_trimmed_through"`, `"log_bytes"` | `u64` |
//!
//! Outbox record v1, little-endian (values are never compared, so no ordering concerns):
//!
//! ```text
//! u8  version = 1
//! u8  kind: 1 partial, 2 reading (passed through), 3 late reading, 4 dead letter
//! u64 created_unix_ms LE      when the record entered the outbox (oldest-unsent age)
//! u16 route_len LE, route     UTF-8, the pipeline name (empty for dead letters)
//! u16 key_len LE, key         the Kafka key: the series (order per series is kept)
//! u32 payload_len LE, payload the Kafka value, as the record kind's schema says
//! ```
//!
//! Golden vector in `store/FORMAT.md`, checked by the store's tests. Stability: version 1 is
//! frozen; a new layout gets a new version byte and the reader keeps reading version 1.
//!
//! # Invariants
//!
//! 1. **Dense sequence from 1.** Records get `outbox_next_seq, +1, ...` (first record: 1), stored
//!    in `meta` in the same transaction, so a sequence number is never reused, even after the
//!    whole outbox was trimmed. `0` therefore means "nothing" in progress markers.
//! 2. **Append joins the caller's transaction.** [`append`] takes the caller's
//!    `WriteTransaction`: the records exist exactly when the caller's other writes (the windowing
//!    cursor, the open windows' state) do.
//! 3. **Trim only what Kafka has.** [`trim_through`] is called by the forwarder after the Kafka
//!    transaction holding those records (and the progress marker naming their last seq) has
//!    committed. It is idempotent, and it only ever removes a prefix, so the outbox is always
//!    the contiguous range `(outbox_trimmed_through, outbox_next_seq)`. A trim may commit
//!    without an fsync (`Durability::None`): a crash can only bring back records Kafka already
//!    has, and the forwarder's next session trims them again through the marker it reads from
//!    Kafka before it sends anything (`crate::forward`, invariant 2).
//! 4. **Quota.** Each row counts `8 + value length + ROW_OVERHEAD` bytes into the shared
//!    `log_bytes` (the same estimate as the ingest log), added on append and subtracted on trim
//!    in the same transaction, so the buffer quota covers ingest log and outbox together.
//! 5. **Bounded reads.** [`read_after`] returns at most `max_records` records and stops at
//!    `max_bytes` (always at least one record), so a backlog of any size is drained in bounded
//!    memory.

use std::ops::RangeInclusive;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction,
};

use crate::store::codec::{ByteReader, ByteWriter, Truncated};
use crate::store::meta::{
    self as keys, LOG_BYTES, OUTBOX_NEXT_SEQ as NEXT_SEQ, OUTBOX_TRIMMED_THROUGH as TRIMMED_THROUGH,
};
use crate::store::tables::{META, OUTBOX};
use crate::store::{redb_errors_into, row_bytes, StoreError};

/// Version byte of the record encoding.
pub const RECORD_VERSION: u8 = 1;

/// What an outbox record is; decides its topic and its `schema` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A windowed partial aggregate (`edge_protocol::partial`, postcard or JSON).
    Partial,
    /// A reading of a pipeline without a window, passed through.
    Reading,
    /// A reading that arrived after its window closed, forwarded raw to the late topic.
    Late,
    /// Input that failed parsing or mapping, with the reason, for the dead-letter topic.
    DeadLetter,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Partial => 1,
            RecordKind::Reading => 2,
            RecordKind::Late => 3,
            RecordKind::DeadLetter => 4,
        }
    }

    fn from_byte(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Partial,
            2 => RecordKind::Reading,
            3 => RecordKind::Late,
            4 => RecordKind::DeadLetter,
            _ => return None,
        })
    }
}

/// One record waiting for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub kind: RecordKind,
    /// Unix ms when it entered the outbox.
    pub created_ms: u64,
    /// The pipeline it belongs to (empty for dead letters).
    pub route: String,
    /// The Kafka key.
    pub key: Vec<u8>,
    /// The Kafka value.
    pub payload: Vec<u8>,
}

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    #[error("outbox record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: CorruptRecord },
    #[error("outbox record field too long: {field} has {len} bytes")]
    TooLong { field: &'static str, len: usize },
}

/// What is wrong with a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptRecord {
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("truncated")]
    Truncated,
    #[error("trailing bytes")]
    Trailing,
    #[error("route is not UTF-8")]
    Route,
}

redb_errors_into!(OutboxError);

impl OutboxError {
    /// Whether a retry can succeed: the database by [`StoreError::is_retryable`]'s rule; a
    /// corrupt or oversized record never.
    pub fn is_retryable(&self) -> bool {
        match self {
            OutboxError::Store(e) => e.is_retryable(),
            OutboxError::Corrupt { .. } | OutboxError::TooLong { .. } => false,
        }
    }
}

impl From<Truncated> for CorruptRecord {
    fn from(_: Truncated) -> Self {
        CorruptRecord::Truncated
    }
}

impl OutboxRecord {
    /// The version-1 bytes of the module doc.
    pub fn encode(&self) -> Result<Vec<u8>, OutboxError> {
        let too_long = |field, len| OutboxError::TooLong { field, len };
        let route_len =
            u16::try_from(self.route.len()).map_err(|_| too_long("route", self.route.len()))?;
        let key_len = u16::try_from(self.key.len()).map_err(|_| too_long("key", self.key.len()))?;
        let payload_len = u32::try_from(self.payload.len())
            .map_err(|_| too_long("payload", self.payload.len()))?;
        let mut out =
            ByteWriter::with_capacity(18 + self.route.len() + self.key.len() + self.payload.len());
        out.u8(RECORD_VERSION)
            .u8(self.kind.to_byte())
            .u64(self.created_ms)
            .u16(route_len)
            .bytes(self.route.as_bytes())
            .u16(key_len)
            .bytes(&self.key)
            .u32(payload_len)
            .bytes(&self.payload);
        Ok(out.into_vec())
    }

    /// Reads version-1 bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<OutboxRecord, CorruptRecord> {
        let mut r = ByteReader::new(bytes);
        r.version(RECORD_VERSION, CorruptRecord::Version)?;
        let kind_byte = r.u8()?;
        let kind = RecordKind::from_byte(kind_byte).ok_or(CorruptRecord::Kind(kind_byte))?;
        let created_ms = r.u64()?;
        let route = std::str::from_utf8(r.bytes_u16()?)
            .map_err(|_| CorruptRecord::Route)?
            .to_owned();
        let key = r.bytes_u16()?.to_vec();
        let payload = r.bytes_u32()?.to_vec();
        r.finish().map_err(|_| CorruptRecord::Trailing)?;
        Ok(OutboxRecord {
            kind,
            created_ms,
            route,
            key,
            payload,
        })
    }
}

/// Creates the outbox table if it does not exist yet (call once at start-up).
pub fn create(db: &Database) -> Result<(), OutboxError> {
    let txn = db.begin_write()?;
    txn.open_table(OUTBOX)?;
    txn.open_table(META)?;
    txn.commit()?;
    Ok(())
}

/// Appends `records` inside the caller's transaction and returns their sequence numbers
/// (`None` for no records). Nothing is visible until the caller commits.
pub fn append(
    txn: &WriteTransaction,
    records: &[OutboxRecord],
) -> Result<Option<RangeInclusive<u64>>, OutboxError> {
    if records.is_empty() {
        return Ok(None);
    }
    let mut table = txn.open_table(OUTBOX)?;
    let mut meta = txn.open_table(META)?;
    let first = meta.get(NEXT_SEQ)?.map_or(1, |v| v.value()).max(1);
    let mut seq = first;
    let mut bytes = 0u64;
    for record in records {
        let value = record.encode()?;
        table.insert(seq, value.as_slice())?;
        bytes += row_bytes(value.len());
        seq += 1;
    }
    meta.insert(NEXT_SEQ, seq)?;
    let log_bytes = keys::get(&meta, LOG_BYTES)?;
    meta.insert(LOG_BYTES, log_bytes.saturating_add(bytes))?;
    Ok(Some(first..=seq - 1))
}

/// Up to `max_records` records with sequence numbers above `after`, in order, stopping once
/// `max_bytes` of values were read (at least one record is returned when there is one).
pub fn read_after(
    db: &Database,
    after: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, OutboxRecord)>, OutboxError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(OUTBOX)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in table.range(after.saturating_add(1)..)? {
        if out.len() >= max_records || (!out.is_empty() && bytes >= max_bytes) {
            break;
        }
        let (k, v) = row?;
        let seq = k.value();
        let value = v.value();
        bytes += value.len();
        let record =
            OutboxRecord::decode(value).map_err(|reason| OutboxError::Corrupt { seq, reason })?;
        out.push((seq, record));
    }
    Ok(out)
}

/// Removes every record with a sequence number `<= through` (capped at the last appended one),
/// in one transaction, and returns how many. Idempotent. Call only after the Kafka transaction
/// holding them committed. With `Durability::None` the trim is visible at once but reaches the
/// disk with the next durable commit (invariant 3).
pub fn trim_through(
    db: &Database,
    through: u64,
    durability: Durability,
) -> Result<u64, OutboxError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    let removed = {
        let mut table = txn.open_table(OUTBOX)?;
        let mut meta = txn.open_table(META)?;
        // Never past the last appended record: `trimmed_through` names only real records.
        let last = meta.get(NEXT_SEQ)?.map_or(1, |v| v.value()).max(1) - 1;
        let through = through.min(last);
        let mut removed = 0u64;
        let mut freed = 0u64;
        table.retain_in(..=through, |_, value| {
            removed += 1;
            freed += row_bytes(value.len());
            false
        })?;
        let trimmed = keys::get(&meta, TRIMMED_THROUGH)?;
        meta.insert(TRIMMED_THROUGH, trimmed.max(through))?;
        let log_bytes = keys::get(&meta, LOG_BYTES)?;
        meta.insert(LOG_BYTES, log_bytes.saturating_sub(freed))?;
        removed
    };
    txn.commit()?;
    Ok(removed)
}

/// A snapshot of the outbox, for metrics and `inspect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records waiting.
    pub depth: u64,
    /// Sequence number of the oldest waiting record.
    pub first_seq: Option<u64>,
    /// The sequence number the next record will get.
    pub next_seq: u64,
    /// Highest sequence number trimmed after a Kafka commit (0: none yet).
    pub trimmed_through: u64,
    /// `created_ms` of the oldest waiting record.
    pub oldest_created_ms: Option<u64>,
}

/// Reads the outbox's size and positions.
pub fn stats(db: &Database) -> Result<OutboxStats, OutboxError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(OUTBOX)?;
    let meta = txn.open_table(META)?;
    let first = table.first()?.map(|(k, v)| (k.value(), v.value().to_vec()));
    let oldest_created_ms = match &first {
        Some((seq, bytes)) => Some(
            OutboxRecord::decode(bytes)
                .map_err(|reason| OutboxError::Corrupt { seq: *seq, reason })?
                .created_ms,
        ),
        None => None,
    };
    Ok(OutboxStats {
        depth: table.len()?,
        first_seq: first.map(|(seq, _)| seq),
        next_seq: meta.get(NEXT_SEQ)?.map_or(1, |v| v.value()).max(1),
        trimmed_through: keys::get(&meta, TRIMMED_THROUGH)?,
        oldest_created_ms,
    })
}

#[cfg(test)]
mod tests;
