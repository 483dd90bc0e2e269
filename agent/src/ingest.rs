//! The ingest log: every reading the agent acknowledges, durable in redb, deduplicated.
//!
//! [`IngestLog`] is the synchronous core (tables, dedupe, quota); [`writer`] is the task that
//! group-commits into it and releases acks. Table layouts and byte encodings: `store/FORMAT.md`.
//!
//! # Invariants and crash reasoning
//!
//! 1. **Ack after commit.** A [`Submission`]'s ack runs only after the write transaction that
//!    holds all of its readings (or its dead letter) has committed with
//!    `Durability::Immediate` (fsync). `kill -9` or power loss at any instant therefore loses
//!    nothing that was acknowledged: before the commit nothing was acked and the source still
//!    owns the data (MQTT redelivers unacked QoS 1, firmware retransmits unacked frames).
//! 2. **Atomic submissions.** A submission (one MQTT message, one serial frame) commits whole or
//!    not at all, so a SenML pack is never half in the log; its `source_state` rows (a Sparkplug
//!    B birth's aliases) commit with it, so they are durable before its ack runs.
//! 3. **Dedupe in the same transaction.** The dedupe key of a reading is checked and inserted in
//!    the transaction that stores the reading, so after a crash the index and the log agree: a
//!    reading redelivered because its ack was lost in the crash is found and dropped. The index
//!    lives in the same file and survives restarts; it is bounded by `dedupe_max_entries` and
//!    `dedupe_max_age_s`, evicting oldest first.
//! 4. **Dense, increasing sequence.** Readings get `next_seq, next_seq + 1, ...`; `next_seq` is
//!    stored in `meta` in the same transaction, so a sequence number is never reused even after
//!    trimming the whole log.
//! 5. **Quota.** `log_bytes` (readings + dead letters, estimated per `store/FORMAT.md`) is
//!    updated in the same transaction as the rows it counts. Under `backpressure` a submission that would
//!    pass the quota is not committed (and not acked) unless the log is empty (so one
//!    submission larger than the quota cannot wedge the agent; the quota may be exceeded by
//!    at most one submission). Under `drop_oldest` the oldest readings are evicted first and
//!    counted as `dropped`.
//! 6. **No partial state on error.** A failed commit leaves the previous committed state (redb
//!    is copy-on-write); the caller keeps the batch and its acks and retries.

pub mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::config::OnFull;
use crate::reading::{DecodeError, Reading};
use crate::store::codec::{ByteReader, ByteWriter, Truncated};
use crate::store::salvage::{self, SalvageReport};
use crate::store::tables::{
    DEAD_LETTERS, DEDUPE, DEDUPE_AGE, DEDUPE_GROUP, META, READINGS, SOURCE_STATE, UPSTREAM_SEQ,
};
use crate::store::{meta as keys, redb_errors_into, row_bytes, StoreError};

/// Estimated B-tree bytes per row besides key and value (moved to [`crate::store`]).
pub use crate::store::ROW_OVERHEAD;
/// redb's page cache (its default is 1 GiB, grown as pages are touched). Memory is bounded by
/// configuration, not by the log's size: the writer only appends at the end and readers read
/// bounded batches in order, so a small cache costs little.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Dead letters keep at most this many bytes of the original payload.
pub const DEAD_LETTER_PAYLOAD_CAP: usize = 1024;

/// How a reading's redeliveries are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// Not deduplicated (QoS 0 sources, line serial without timestamps).
    None,
    /// (sensor, ts_ms).
    SensorTs,
    /// (sensor, payload seq); falls back to (sensor, ts_ms) when the reading has no seq.
    SensorSeq,
    /// Serial link: (device, boot, frame seq, index of the reading in the frame).
    Frame {
        device: u32,
        boot: u32,
        seq: u32,
        index: u16,
    },
}

impl Dedupe {
    /// The key bytes (`store/FORMAT.md`, `dedupe`): a tag, then big-endian integers so keys
    /// sort by their fields. (sensor, ts) keys are time-major (tag 4): readings arrive roughly
    /// in time order, so a commit's new keys share a few leaf pages at the index's right edge
    /// and eviction takes its left edge. Sensor-major (tag 2, before v0.2) put each sensor's
    /// keys apart: one leaf page written per reading (issue 18: a fifth of the agent's CPU at
    /// 10k readings/s from 1,000 sensors).
    pub fn key(&self, reading: &Reading) -> Option<Vec<u8>> {
        match *self {
            Dedupe::None => None,
            Dedupe::SensorTs => Some(time_major_key(reading)),
            Dedupe::SensorSeq => Some(match reading.seq {
                Some(seq) => sensor_key(reading, 3, seq),
                None => time_major_key(reading),
            }),
            Dedupe::Frame {
                device,
                boot,
                seq,
                index,
            } => {
                let mut k = ByteWriter::with_capacity(15);
                k.u8(1)
                    .bytes(&device.to_be_bytes())
                    .bytes(&boot.to_be_bytes())
                    .bytes(&seq.to_be_bytes())
                    .bytes(&index.to_be_bytes());
                Some(k.into_vec())
            }
        }
    }

    /// The key an agent before v0.2 wrote for the same reading, where [`Dedupe::key`] differs
    /// from it: the (sensor, ts) key, sensor-major (tag 2). The writer looks it up too while
    /// the index holds such keys, so an upgrade keeps recognising redeliveries of readings the
    /// old agent took; they age out like any other key.
    pub fn legacy_key(&self, reading: &Reading) -> Option<Vec<u8>> {
        match *self {
            Dedupe::SensorTs => Some(sensor_key(reading, LEGACY_SENSOR_TS_TAG, reading.ts_ms)),
            Dedupe::SensorSeq if reading.seq.is_none() => {
                Some(sensor_key(reading, LEGACY_SENSOR_TS_TAG, reading.ts_ms))
            }
            _ => None,
        }
    }
}

/// The tag of the sensor-major (sensor, ts) keys of agents before v0.2 ([`Dedupe::legacy_key`]).
pub const LEGACY_SENSOR_TS_TAG: u8 = 2;

/// `tag sensor_len:u16 BE sensor n:u64 BE`.
fn sensor_key(reading: &Reading, tag: u8, n: u64) -> Vec<u8> {
    let mut k = ByteWriter::with_capacity(11 + reading.sensor.len());
    k.u8(tag)
        .bytes(&(reading.sensor.len() as u16).to_be_bytes())
        .bytes(reading.sensor.as_bytes())
        .bytes(&n.to_be_bytes());
    k.into_vec()
}

/// `0x04 ts_ms:u64 BE sensor_len:u16 BE sensor`.
fn time_major_key(reading: &Reading) -> Vec<u8> {
    let mut k = ByteWriter::with_capacity(11 + reading.sensor.len());
    k.u8(4)
        .bytes(&reading.ts_ms.to_be_bytes())
        .bytes(&(reading.sensor.len() as u16).to_be_bytes())
        .bytes(reading.sensor.as_bytes());
    k.into_vec()
}

/// Input that could not become a reading, kept with its reason for the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub received_ms: u64,
    pub source: String,
    pub reason: String,
    /// The original bytes, capped at [`DEAD_LETTER_PAYLOAD_CAP`].
    pub payload: Vec<u8>,
}

impl DeadLetter {
    pub fn new(
        received_ms: u64,
        source: &str,
        reason: &dyn std::fmt::Display,
        payload: &[u8],
    ) -> Self {
        DeadLetter {
            received_ms,
            source: source.to_owned(),
            reason: reason.to_string(),
            payload: payload[..payload.len().min(DEAD_LETTER_PAYLOAD_CAP)].to_vec(),
        }
    }

    /// The `dead_letters` value (`store/FORMAT.md`, DeadLetter record v1). Fields longer than
    /// their length prefix allows are cut (at a character boundary), the payload at
    /// [`DEAD_LETTER_PAYLOAD_CAP`].
    pub fn encode(&self) -> Vec<u8> {
        let cap = |s: &str| -> Vec<u8> {
            let mut end = s.len().min(u16::MAX as usize);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.as_bytes()[..end].to_vec()
        };
        let (source, reason) = (cap(&self.source), cap(&self.reason));
        let payload = &self.payload[..self.payload.len().min(DEAD_LETTER_PAYLOAD_CAP)];
        let mut out = ByteWriter::with_capacity(17 + source.len() + reason.len() + payload.len());
        out.u8(DEAD_LETTER_VERSION)
            .u64(self.received_ms)
            .bytes_u16(&source)
            .bytes_u16(&reason)
            .bytes_u32(payload);
        out.into_vec()
    }

    /// Reads a DeadLetter record v1; never panics. The one reader of this format: the
    /// windowing stage takes the Kafka key (the source) from it.
    pub fn decode(bytes: &[u8]) -> Result<DeadLetter, BadDeadLetter> {
        let mut r = ByteReader::new(bytes);
        r.version(DEAD_LETTER_VERSION, BadDeadLetter::Version)?;
        let received_ms = r.u64()?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| BadDeadLetter::Utf8)
        };
        let source = text(r.bytes_u16()?)?;
        let reason = text(r.bytes_u16()?)?;
        let payload = r.bytes_u32()?;
        if payload.len() > DEAD_LETTER_PAYLOAD_CAP {
            return Err(BadDeadLetter::Payload(payload.len()));
        }
        let payload = payload.to_vec();
        r.finish().map_err(BadDeadLetter::Trailing)?;
        Ok(DeadLetter {
            received_ms,
            source,
            reason,
            payload,
        })
    }
}

/// Version byte of the DeadLetter record.
pub const DEAD_LETTER_VERSION: u8 = 1;

/// Why stored bytes are not a DeadLetter record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadDeadLetter {
    #[error("record ends early")]
    Truncated,
    #[error("unknown dead letter version {0}")]
    Version(u8),
    #[error("source or reason is not UTF-8")]
    Utf8,
    #[error("payload of {0} bytes is over the cap")]
    Payload(usize),
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

impl From<Truncated> for BadDeadLetter {
    fn from(_: Truncated) -> Self {
        BadDeadLetter::Truncated
    }
}

/// One `source_state` row a submission writes (`store/FORMAT.md`, `source_state`): the key is
/// owned by one source kind (it starts with the kind's name), the value is that kind's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    pub key: String,
    pub value: Vec<u8>,
}

/// What a source hands the writer: readings of one message or frame, dead letters, one ack.
pub struct Submission {
    pub readings: Vec<(Reading, Dedupe)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Rows of the `source_state` table a source keeps beside its readings (the Sparkplug B
    /// alias tables): written, in order, in the same transaction as the readings, so they are
    /// durable before the ack runs (invariant 2). Empty for most submissions.
    pub state: Vec<StateWrite>,
    /// Run once, after the commit that holds everything above. Dropped unrun if the agent
    /// stops first: the source then redelivers.
    pub ack: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("readings", &self.readings.len())
            .field("dead_letters", &self.dead_letters.len())
            .field("state", &self.state.len())
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

impl Submission {
    /// Estimated bytes this adds to `log_bytes` if nothing is a duplicate.
    pub fn estimated_bytes(&self) -> u64 {
        let readings: u64 = self
            .readings
            .iter()
            .map(|(r, _)| row_bytes(r.encoded_len()))
            .sum();
        let dead: u64 = self
            .dead_letters
            .iter()
            .map(|d| row_bytes(17 + d.source.len() + d.reason.len() + d.payload.len()))
            .sum();
        readings + dead
    }
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the data directory: {0}")]
    DataDir(#[from] std::io::Error),
    #[error("ingest log: {0}")]
    Store(#[from] StoreError),
    #[error("the ingest writer's blocking thread failed")]
    WriterThread,
    #[error("stopped before the ingest log could be reopened")]
    Stopped,
    /// Opening the database failed, or salvaging a damaged one did (`store::salvage`).
    #[error("opening the database: {0}")]
    Open(#[from] crate::store::salvage::SalvageError),
    #[error("ingest log record {seq} is corrupt: {source}")]
    Corrupt {
        seq: u64,
        #[source]
        source: DecodeError,
    },
}

impl IngestError {
    /// Whether retrying (after a backoff) can succeed: creating the data directory may (a
    /// full disk); the database by [`StoreError::is_retryable`]'s one rule; corruption never.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::DataDir(_) => true,
            IngestError::Store(e) => e.is_retryable(),
            // An I/O error (a full disk) may clear; anything else is a fact about the file.
            IngestError::Open(crate::store::salvage::SalvageError::Open(e)) => {
                use redb::{DatabaseError::Storage, StorageError::*};
                matches!(e, Storage(Io(_) | PreviousIo))
            }
            IngestError::Open(_) => false,
            IngestError::Corrupt { .. } | IngestError::WriterThread | IngestError::Stopped => false,
        }
    }

    /// Whether the database must be closed and opened again before retrying (redb latches
    /// an I/O failure until then).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, IngestError::Store(e) if e.needs_reopen())
    }
}

redb_errors_into!(IngestError);

/// Limits the log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub quota_bytes: u64,
    pub on_full: OnFull,
    pub dedupe_max_entries: u64,
    pub dedupe_max_age_ms: u64,
}

/// Counters since the database was created (persisted in `meta`).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    /// Dead-lettered: failed parsing or mapping.
    pub rejected: AtomicU64,
    /// Evicted by `drop_oldest`.
    pub dropped: AtomicU64,
    /// Missing device sequence numbers seen (upstream loss).
    pub upstream_gaps: AtomicU64,
    /// Failed commits (retried); not persisted.
    pub write_errors: AtomicU64,
    /// Hop `ingest`: from a commit group's first submission reaching the writer to the commit
    /// that made it durable (and acked it), weighted by each submission's readings and dead
    /// letters; not persisted.
    pub latency: edge_ops_http::prometheus::Histogram,
}

/// A snapshot of `meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub next_seq: u64,
    pub next_dead_letter: u64,
    pub log_bytes: u64,
    pub readings: u64,
    pub dead_letters: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub upstream_gaps: u64,
}

/// What one [`IngestLog::commit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    /// How many submissions, from the front of the batch, are now durable.
    pub submissions: usize,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub dropped: u64,
}

/// The redb database behind the ingest log. The handle is shared (`Arc`) with the stages that
/// write the same file in their own transactions (windows, outbox, forwarder); redb serialises
/// write transactions, so each commit stays atomic. While another stage holds the handle, a
/// reopen after an I/O error fails as "already open" and stops the writer (fatal, restart).
pub struct IngestLog {
    db: Arc<Database>,
    limits: Limits,
    salvage: Option<SalvageReport>,
    /// The dedupe index may still hold keys an agent before v0.2 wrote: each commit probes for
    /// them until one finds none (`store/FORMAT.md`, tag 2; only this process writes the file).
    legacy_keys: bool,
}

mod txn;

impl IngestLog {
    /// Opens (or creates) the database at `path` and its tables. A damaged file is moved aside
    /// and its readable rows salvaged into a new one first ([`crate::store::salvage`]; the
    /// report: [`IngestLog::salvage_report`]).
    pub fn open(path: &Path, limits: Limits) -> Result<IngestLog, IngestError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let opened = salvage::open(path, CACHE_BYTES)?;
        let db = opened.db;
        let txn = db.begin_write()?;
        for table in [READINGS, DEAD_LETTERS, DEDUPE_AGE, DEDUPE_GROUP] {
            txn.open_table(table)?;
        }
        txn.open_table(DEDUPE)?;
        txn.open_table(UPSTREAM_SEQ)?;
        txn.open_table(SOURCE_STATE)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(IngestLog {
            db: Arc::new(db),
            limits,
            salvage: opened.salvage,
            legacy_keys: true,
        })
    }

    /// What the salvage of a damaged file kept and lost, when this open had to salvage.
    pub fn salvage_report(&self) -> Option<&SalvageReport> {
        self.salvage.as_ref()
    }

    /// The shared database handle, for stages that join the same file.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Commits as many submissions from the front of `batch` as the quota allows, in one
    /// fsync'd transaction. `now_ms` ages the dedupe index. Does not run acks.
    pub fn commit(&mut self, batch: &[Submission], now_ms: u64) -> Result<Committed, IngestError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let (done, legacy_keys) = {
            let mut t = txn::Tables::open(&txn)?;
            let legacy_keys = self.legacy_keys && t.probe_legacy_keys()?;
            let done = t.apply(batch, &self.limits, now_ms)?;
            t.evict_dedupe(&self.limits, now_ms)?;
            t.store_meta()?;
            (done, legacy_keys)
        };
        txn.commit()?;
        self.legacy_keys = legacy_keys;
        Ok(done)
    }

    /// Removes readings with sequence numbers up to `through`; returns how many. For the stage
    /// that consumed them (windows), and frees quota.
    pub fn trim_readings_through(&mut self, through: u64) -> Result<u64, IngestError> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut t = txn::Tables::open(&txn)?;
            let n = t.trim(through)?;
            t.store_meta()?;
            n
        };
        txn.commit()?;
        Ok(n)
    }

    /// Inside the caller's write transaction: removes readings through `readings_through` and
    /// dead letters through `dead_letters_through`, keeping `log_bytes` in step. The windowing
    /// stage commits this together with its cursors, so what it trims is exactly what it
    /// consumed. Returns how many rows were removed.
    pub fn trim_in(
        txn: &WriteTransaction,
        readings_through: Option<u64>,
        dead_letters_through: Option<u64>,
    ) -> Result<u64, IngestError> {
        let mut t = txn::Tables::open(txn)?;
        let mut n = 0;
        if let Some(through) = readings_through {
            n += t.trim(through)?;
        }
        if let Some(through) = dead_letters_through {
            n += t.trim_dead_letters(through)?;
        }
        t.store_meta()?;
        Ok(n)
    }

    /// Up to `limit` readings with sequence numbers from `from`, in order. Bounded, so a
    /// backlog of any size is read in bounded memory.
    pub fn readings_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Reading)>, IngestError> {
        IngestLog::readings_in(&self.db, from, limit)
    }

    /// [`IngestLog::readings_from`] on a shared handle (the windowing stage's).
    pub fn readings_in(
        db: &Database,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Reading)>, IngestError> {
        read_from(db, READINGS, from, limit, |seq, bytes| {
            Reading::decode(bytes).map_err(|source| IngestError::Corrupt { seq, source })
        })
    }

    /// Up to `limit` dead letters from `from`, as stored bytes (`store/FORMAT.md`).
    pub fn dead_letters_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, IngestError> {
        IngestLog::dead_letters_in(&self.db, from, limit)
    }

    /// [`IngestLog::dead_letters_from`] on a shared handle.
    pub fn dead_letters_in(
        db: &Database,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, IngestError> {
        read_from(db, DEAD_LETTERS, from, limit, |_, bytes| Ok(bytes.to_vec()))
    }

    /// The persisted counters and sizes.
    pub fn stats(&self) -> Result<Stats, IngestError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |k: &str| keys::get(&meta, k);
        Ok(Stats {
            next_seq: get(keys::NEXT_SEQ)?,
            next_dead_letter: get(keys::NEXT_DEAD_LETTER)?,
            log_bytes: get(keys::LOG_BYTES)?,
            readings: txn.open_table(READINGS)?.len()?,
            dead_letters: txn.open_table(DEAD_LETTERS)?.len()?,
            accepted: get(keys::ACCEPTED)?,
            duplicate: get(keys::DUPLICATE)?,
            rejected: get(keys::REJECTED)?,
            dropped: get(keys::DROPPED)?,
            upstream_gaps: get(keys::UPSTREAM_GAPS)?,
        })
    }

    /// Number of keys in the dedupe index.
    pub fn dedupe_len(&self) -> Result<u64, IngestError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DEDUPE)?.len()?)
    }
}

/// Up to `limit` rows of a sequenced table from seq `from`, in order, each through `decode`.
fn read_from<T>(
    db: &Database,
    table: TableDefinition<u64, &[u8]>,
    from: u64,
    limit: usize,
    mut decode: impl FnMut(u64, &[u8]) -> Result<T, IngestError>,
) -> Result<Vec<(u64, T)>, IngestError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    let mut out = Vec::new();
    for row in table.range(from..)?.take(limit) {
        let (k, v) = row?;
        let seq = k.value();
        out.push((seq, decode(seq, v.value())?));
    }
    Ok(out)
}

impl Counters {
    /// Adds what one commit did.
    pub fn add(&self, c: &Committed) {
        self.accepted.fetch_add(c.accepted, Ordering::Relaxed);
        self.duplicate.fetch_add(c.duplicate, Ordering::Relaxed);
        self.rejected.fetch_add(c.rejected, Ordering::Relaxed);
        self.dropped.fetch_add(c.dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
