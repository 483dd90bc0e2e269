//! The store: the one owner of the agent's redb file (`data_dir/ingest.redb`).
//!
//! Every stage keeps its rows in this one database so that what must change together commits
//! together (a reading and its dedupe key; a partial, the window state and the cursor; an
//! outbox trim and `log_bytes`). The stages still write their own rows, in their own
//! transactions; what they share lives here, once:
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`tables`] | every table definition (name, key and value types) |
//! | [`meta`] | the keys of the `meta` table, who writes each, and the `forward_meta` key |
//! | [`error`] | [`StoreError`]: every redb failure, and the one retry rule ([`StoreError::is_retryable`]) |
//! | [`codec`] | the little-endian [`ByteWriter`] / [`ByteReader`] every stored record is written and read with |
//! | [`rows`] | the small row values the store encodes itself (`window_shape`, `dedupe_age`, `dedupe_group`) |
//! | [`salvage`] | opening the file, with redb's integrity check unless a clean-close mark proves it unchanged; a damaged file is moved aside and every readable row salvaged into a new one |
//! | `FORMAT.md` | every table's key and value bytes, versions, stability, golden vectors (checked by `tests.rs`) |
//!
//! # Invariants
//!
//! 1. **One file, ACID.** Every write is one redb write transaction; the stages that change
//!    user data commit with `Durability::Immediate` (one fsync per commit). redb is
//!    copy-on-write: a crash at any instant leaves the last committed state, so a counter in
//!    `meta` and the rows it counts never disagree.
//! 2. **One writer at a time.** redb serialises write transactions, so the stages sharing the
//!    handle (`Arc<Database>`) never interleave inside one commit.
//! 3. **Quota in one place.** `meta.log_bytes` counts every `readings`, `dead_letters` and
//!    `outbox` row as [`row_bytes`] of its value, added and subtracted in the transaction that
//!    inserts or removes the row.
//! 4. **Formats are frozen per version.** Each record (reading, dead letter, outbox record,
//!    window shape and state) begins with a version byte; a new layout gets a new version and
//!    readers keep reading version 1; a layout without one changes only as a new table
//!    (`FORMAT.md`). Values are
//!    little-endian, never host-endian; only `dedupe` keys are big-endian, so they sort.
//! 5. **Retry only what can clear.** Only I/O failures are retried ([`StoreError::is_retryable`]
//!    says why a poisoned lock is not); every caller retries a whole transaction from the last
//!    commit, so a retry never repeats half of one.
//!
//! # Adding a table or a `meta` key
//!
//! Declare it in [`tables`] (or the key in [`meta`], with what it holds and who writes it),
//! write its layout and a golden vector in `FORMAT.md`, and test the vector in `tests.rs`
//! (`every_golden_vector_in_format_md_is_under_test` refuses a vector without a test), and add
//! it to `salvage/copy.rs` (`TABLES` and a copy step) so a damaged file does not lose it. Encode
//! values with [`codec`]; wrap errors by giving the stage's error a `#[from] StoreError` variant
//! and `redb_errors_into!(ThatError)`.

pub mod codec;
pub mod error;
pub mod meta;
pub mod rows;
pub mod salvage;
pub mod tables;

use redb::{Key, ReadOnlyTable, ReadTransaction, TableDefinition, TableError, Value};

pub use codec::{ByteReader, ByteWriter, Truncated};
pub(crate) use error::redb_errors_into;
pub use error::StoreError;

/// Opens `table` in a read transaction; `None` when it was never created (a database a stage
/// or the forwarder never ran on reads as empty, never as an error).
pub fn open_if_exists<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Estimated B-tree bytes per row besides key and value (FACTS: 71 bytes on disk for a
/// 40-byte record with an 8-byte key).
pub const ROW_OVERHEAD: u64 = 32;

/// The quota estimate of one `readings`, `dead_letters` or `outbox` row whose value is
/// `value_len` bytes: the 8-byte key, the value, [`ROW_OVERHEAD`].
pub fn row_bytes(value_len: usize) -> u64 {
    8 + value_len as u64 + ROW_OVERHEAD
}

#[cfg(test)]
mod tests;
