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
use crate::store::rows::{DedupeAge, DedupeGroup};
use crate::store::tables::{
    DEAD_LETTERS, DEDUPE, DEDUPE_AGE, DEDUPE_GROUP, META, READINGS, SOURCE_STATE, UPSTREAM_SEQ,
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
    dedupe_group: Table<'t, u64, &'static [u8]>,
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
            dedupe_group: txn.open_table(DEDUPE_GROUP)?,
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
        // The keys this commit inserts, and the seq the first points at: one `dedupe_group` row.
        let mut group = DedupeGroup::new(now_ms);
        let mut group_first = None;
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
                    group_first.get_or_insert(seq);
                    group.push(&key, seq);
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
        if let Some(first) = group_first {
            self.dedupe_group.insert(first, group.encode().as_slice())?;
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

    /// Forgets dedupe keys past the entry bound or older than the age bound, oldest first: the
    /// per-key rows agents before v0.2 left (`dedupe_age`, all older than any group) one key at
    /// a time, then whole commit groups (`dedupe_group`): the entry bound evicts a group only
    /// when the index holds the bound's number of keys without it, so the index may hold up to
    /// one commit's keys (`batch_max_readings`) more than `dedupe_max_entries`.
    pub fn evict_dedupe(&mut self, limits: &Limits, now_ms: u64) -> Result<(), IngestError> {
        let horizon = now_ms.saturating_sub(limits.dedupe_max_age_ms);
        loop {
            let over = self.dedupe.len()? > limits.dedupe_max_entries;
            let (ordinal, key) = match self.dedupe_age.first()? {
                Some((k, v)) => {
                    let aged = DedupeAge::decode(v.value());
                    if !over && aged.inserted_ms >= horizon {
                        return Ok(());
                    }
                    (k.value(), aged.key.to_vec())
                }
                None => break,
            };
            self.dedupe_age.remove(ordinal)?;
            self.forget(&key, ordinal..=ordinal)?;
        }
        loop {
            let (first, group) = match self.dedupe_group.first()? {
                Some((k, v)) => (k.value(), DedupeGroup::decode(v.value())),
                None => return Ok(()),
            };
            let old = !group.as_ref().is_ok_and(|g| g.inserted_ms >= horizon);
            // Over the entry bound by the whole group at least: it goes. Less is left over (the
            // index stays within the bound plus one commit's keys), so a group is never
            // rewritten: a group is as large as a burst's commit, a commit as small as one key.
            let len = self.dedupe.len()?;
            let keys = group.as_ref().map_or(0, |g| u64::from(g.len()));
            let over = len > limits.dedupe_max_entries
                && len.saturating_sub(keys) >= limits.dedupe_max_entries;
            if !old && !over {
                return Ok(());
            }
            self.dedupe_group.remove(first)?;
            // Unreadable (a damaged page): dropped; its keys stay until a salvage.
            let Ok(group) = group else { continue };
            for key in group.keys() {
                self.forget(key, first..=group.last_seq)?;
            }
        }
    }

    /// Removes `key` from the index if it still points at a seq in `seqs` (a key evicted and
    /// inserted again points at a newer seq, and stays).
    fn forget(
        &mut self,
        key: &[u8],
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<(), IngestError> {
        let here = self.dedupe.get(key)?.map(|v| v.value());
        if here.is_some_and(|seq| seqs.contains(&seq)) {
            self.dedupe.remove(key)?;
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
