//! The body of one write transaction: the open tables, the `meta` values, and the rules of the
//! module doc applied row by row. Everything here happens inside one uncommitted transaction,
//! so an error anywhere leaves the committed state untouched.

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::{Committed, Dedupe, IngestError, Limits, Submission, LEGACY_SENSOR_TS_TAG};
use crate::config::OnFull;
use crate::reading::Reading;
use crate::store::meta::{
    ACCEPTED, DROPPED, DUPLICATE, LOG_BYTES, NEXT_DEAD_LETTER, NEXT_SEQ, REJECTED, UPSTREAM_GAPS,
};
use crate::store::row_bytes;
use crate::store::rows::DedupeAge;
use crate::store::tables::{
    DEAD_LETTERS, DEDUPE, DEDUPE_AGE, META, READINGS, SOURCE_STATE, UPSTREAM_SEQ,
};

const KEYS: [&str; 8] = [
    NEXT_SEQ,
    NEXT_DEAD_LETTER,
    LOG_BYTES,
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    DROPPED,
    UPSTREAM_GAPS,
];

/// The two sequenced tables of the log.
#[derive(Clone, Copy)]
enum Log {
    Readings,
    DeadLetters,
}

pub struct Tables<'t> {
    readings: Table<'t, u64, &'static [u8]>,
    dead: Table<'t, u64, &'static [u8]>,
    dedupe: Table<'t, &'static [u8], u64>,
    dedupe_age: Table<'t, u64, &'static [u8]>,
    upstream: Table<'t, &'static str, u64>,
    source_state: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    /// Values of `KEYS`, in order.
    values: [u64; 8],
    /// The index holds keys of the pre-v0.2 layout ([`Dedupe::legacy_key`]): `apply` looks
    /// those up too. False unless [`Tables::probe_legacy_keys`] found one.
    legacy_keys: bool,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, IngestError> {
        let meta = txn.open_table(META)?;
        let mut values = [0u64; 8];
        for (value, key) in values.iter_mut().zip(KEYS) {
            *value = crate::store::meta::get(&meta, key)?;
        }
        Ok(Tables {
            readings: txn.open_table(READINGS)?,
            dead: txn.open_table(DEAD_LETTERS)?,
            dedupe: txn.open_table(DEDUPE)?,
            dedupe_age: txn.open_table(DEDUPE_AGE)?,
            upstream: txn.open_table(UPSTREAM_SEQ)?,
            source_state: txn.open_table(SOURCE_STATE)?,
            meta,
            values,
            legacy_keys: false,
        })
    }

    /// Looks (one descent) whether the index still holds a key of the pre-v0.2 layout; while it
    /// does, [`Tables::apply`] looks those up too. Returns what it found.
    pub fn probe_legacy_keys(&mut self) -> Result<bool, IngestError> {
        let (tag, next) = ([LEGACY_SENSOR_TS_TAG], [LEGACY_SENSOR_TS_TAG + 1]);
        let mut legacy = self.dedupe.range(tag.as_slice()..next.as_slice())?;
        self.legacy_keys = legacy.next().is_some();
        Ok(self.legacy_keys)
    }

    fn get(&self, key: &str) -> u64 {
        KEYS.iter()
            .position(|k| *k == key)
            .map_or(0, |i| self.values[i])
    }

    fn add(&mut self, key: &str, n: u64) {
        if let Some(i) = KEYS.iter().position(|k| *k == key) {
            self.values[i] = self.values[i].saturating_add(n);
        }
    }

    fn sub(&mut self, key: &str, n: u64) {
        if let Some(i) = KEYS.iter().position(|k| *k == key) {
            self.values[i] = self.values[i].saturating_sub(n);
        }
    }

    pub fn store_meta(&mut self) -> Result<(), IngestError> {
        for (key, value) in KEYS.iter().zip(self.values) {
            self.meta.insert(*key, value)?;
        }
        Ok(())
    }

    /// Writes submissions from the front of `batch` while the quota allows.
    pub fn apply(
        &mut self,
        batch: &[Submission],
        limits: &Limits,
        now_ms: u64,
    ) -> Result<Committed, IngestError> {
        let mut done = Committed::default();
        for sub in batch {
            let need = sub.estimated_bytes();
            let log_bytes = self.get(LOG_BYTES);
            if log_bytes.saturating_add(need) > limits.quota_bytes {
                match limits.on_full {
                    OnFull::Backpressure => {
                        let empty = self.readings.len()? == 0 && self.dead.len()? == 0;
                        if !empty {
                            break;
                        }
                    }
                    OnFull::DropOldest => {
                        done.dropped += self.evict_for(need, limits.quota_bytes)?;
                    }
                }
            }
            for (reading, how) in &sub.readings {
                if let Some(key) = how.key(reading) {
                    // One descent of the index instead of a lookup and then an insert: insert,
                    // and put the first copy's seq back when the key was there (a duplicate:
                    // rare, so the second descent is too).
                    let seq = self.get(NEXT_SEQ);
                    let before = self.dedupe.insert(key.as_slice(), seq)?.map(|v| v.value());
                    if let Some(first) = before {
                        self.dedupe.insert(key.as_slice(), first)?;
                        done.duplicate += 1;
                        continue;
                    }
                    if self.seen_by_an_older_agent(how, reading)? {
                        self.dedupe.remove(key.as_slice())?;
                        done.duplicate += 1;
                        continue;
                    }
                    let aged = DedupeAge {
                        inserted_ms: now_ms,
                        key: &key,
                    };
                    self.dedupe_age.insert(seq, aged.encode().as_slice())?;
                }
                if let Some(seq) = reading.seq {
                    let last = self
                        .upstream
                        .insert(reading.sensor.as_str(), seq)?
                        .map(|v| v.value());
                    if let Some(last) = last.filter(|last| seq > last.saturating_add(1)) {
                        self.add(UPSTREAM_GAPS, seq - last - 1);
                    }
                }
                self.append(Log::Readings, &reading.encode())?;
                done.accepted += 1;
            }
            for dead in &sub.dead_letters {
                self.append(Log::DeadLetters, &dead.encode())?;
                done.rejected += 1;
            }
            for row in &sub.state {
                self.source_state
                    .insert(row.key.as_str(), row.value.as_slice())?;
            }
            done.submissions += 1;
        }
        self.add(ACCEPTED, done.accepted);
        self.add(DUPLICATE, done.duplicate);
        self.add(REJECTED, done.rejected);
        self.add(DROPPED, done.dropped);
        Ok(done)
    }

    /// Whether the index holds the reading's key in the layout of an agent before v0.2.
    fn seen_by_an_older_agent(&self, how: &Dedupe, reading: &Reading) -> Result<bool, IngestError> {
        let Some(old) = how.legacy_key(reading).filter(|_| self.legacy_keys) else {
            return Ok(false);
        };
        Ok(self.dedupe.get(old.as_slice())?.is_some())
    }

    /// Stores `bytes` under the next sequence number of `log`, counting it into `log_bytes`.
    fn append(&mut self, log: Log, bytes: &[u8]) -> Result<(), IngestError> {
        let next = match log {
            Log::Readings => NEXT_SEQ,
            Log::DeadLetters => NEXT_DEAD_LETTER,
        };
        let seq = self.get(next);
        let table = match log {
            Log::Readings => &mut self.readings,
            Log::DeadLetters => &mut self.dead,
        };
        table.insert(seq, bytes)?;
        self.add(next, 1);
        self.add(LOG_BYTES, row_bytes(bytes.len()));
        Ok(())
    }

    /// `drop_oldest`: evicts oldest readings (then dead letters) until `need` more bytes fit.
    /// Returns how many were evicted.
    fn evict_for(&mut self, need: u64, quota: u64) -> Result<u64, IngestError> {
        let mut evicted = 0;
        while self.get(LOG_BYTES).saturating_add(need) > quota {
            let freed = match self.readings.pop_first()? {
                Some((_, v)) => row_bytes(v.value().len()),
                None => match self.dead.pop_first()? {
                    Some((_, v)) => row_bytes(v.value().len()),
                    None => break,
                },
            };
            self.sub(LOG_BYTES, freed);
            evicted += 1;
        }
        Ok(evicted)
    }

    /// Forgets dedupe keys past the entry bound or older than the age bound, oldest first.
    pub fn evict_dedupe(&mut self, limits: &Limits, now_ms: u64) -> Result<(), IngestError> {
        let horizon = now_ms.saturating_sub(limits.dedupe_max_age_ms);
        loop {
            let over = self.dedupe_age.len()? > limits.dedupe_max_entries;
            let (ordinal, key) = match self.dedupe_age.first()? {
                Some((k, v)) => {
                    let aged = DedupeAge::decode(v.value());
                    if !over && aged.inserted_ms >= horizon {
                        break;
                    }
                    (k.value(), aged.key.to_vec())
                }
                None => break,
            };
            self.dedupe_age.remove(ordinal)?;
            let points_here = self.dedupe.get(key.as_slice())?.map(|v| v.value()) == Some(ordinal);
            if points_here {
                self.dedupe.remove(key.as_slice())?;
            }
        }
        Ok(())
    }

    /// Removes readings up to `through`, freeing their bytes.
    pub fn trim(&mut self, through: u64) -> Result<u64, IngestError> {
        let (n, freed) = remove_through(&mut self.readings, through)?;
        self.sub(LOG_BYTES, freed);
        Ok(n)
    }

    /// Removes dead letters up to `through`, freeing their bytes.
    pub fn trim_dead_letters(&mut self, through: u64) -> Result<u64, IngestError> {
        let (n, freed) = remove_through(&mut self.dead, through)?;
        self.sub(LOG_BYTES, freed);
        Ok(n)
    }
}

/// Removes the rows with keys up to `through`; returns how many, and their quota bytes.
fn remove_through(
    table: &mut Table<'_, u64, &'static [u8]>,
    through: u64,
) -> Result<(u64, u64), IngestError> {
    let (mut n, mut freed) = (0, 0);
    table.retain_in(..=through, |_, v| {
        freed += row_bytes(v.len());
        n += 1;
        false
    })?;
    Ok((n, freed))
}
