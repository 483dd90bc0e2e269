//! Step 3 of the salvage: every table of the damaged file into the fresh one, row by row, and
//! the `meta` fix-up; the [`SalvageReport`].
//!
//! A row is kept only when it could be what the agent wrote (the guard against redb reading
//! garbage from a damaged page, [`super::scan`]): its value decodes with the record's own
//! decoder, and in the dense tables its key lies in the range `meta` states
//! (`readings` below `next_seq`, `dead_letters` below `next_dead_letter`, `outbox` in
//! `(outbox_trimmed_through, outbox_next_seq)`). A `dedupe` row must have the shape of a
//! dedupe key and agree with its eviction row (`dedupe_group`, or `dedupe_age` of an older
//! agent); one whose eviction row was lost gets a new one, so the index stays bounded
//! (eviction walks those rows) and still recognises redeliveries.
//!
//! Rows are written in batches of [`super::scan::BATCH`], one transaction each with
//! `Durability::None`; the last transaction (`meta`) is `Durability::Immediate` and makes all of
//! them durable. Nothing in the fresh file is live before the swap, so a crash before that
//! commit only costs a redo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, Key, ReadableTable, TableDefinition, Value, WriteTransaction};

use super::scan::{scan_ends, scan_seq, Scanned, Source};
use crate::ingest::DeadLetter;
use crate::outbox::OutboxRecord;
use crate::reading::Reading;
use crate::source::sparkplug::aliases::NodeRecord;
use crate::store::meta as keys;
use crate::store::row_bytes;
use crate::store::rows::{DedupeAge, DedupeGroup, WindowShape};
use crate::store::tables::{
    DEAD_LETTERS, DEDUPE, DEDUPE_AGE, DEDUPE_GROUP, FORWARD_META, META, OUTBOX, READINGS,
    SOURCE_STATE, UPSTREAM_SEQ, WINDOW_SERIES, WINDOW_SHAPE,
};

/// Every table this version salvages (all of `store/tables.rs`); any other table found in the
/// damaged file is named in the log as not salvaged.
pub const TABLES: [&str; 12] = [
    "meta",
    "forward_meta",
    "window_shape",
    "window_series",
    "upstream_seq",
    "source_state",
    "readings",
    "dead_letters",
    "outbox",
    "dedupe_age",
    "dedupe_group",
    "dedupe",
];

/// One table's salvage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    /// Rows copied into the new file.
    pub salvaged: u64,
    /// Rows read but refused (out of range, undecodable, a `dedupe` row without its age row).
    pub refused: u64,
    /// Damaged ranges skipped.
    pub unreadable_ranges: u64,
    /// Rows lost, for the dense tables whose expected range is known (`readings`,
    /// `dead_letters`, `outbox`): expected minus salvaged.
    pub lost: Option<u64>,
}

/// What a salvage kept and lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    /// Where the damaged file was moved.
    pub damaged: PathBuf,
    /// Whether redb could open the damaged file at all (read-only view); when not, nothing was
    /// salvaged and the losses are unknown.
    pub readable: bool,
    /// Read attempts that failed (redb errors and panics).
    pub read_failures: u64,
    pub tables: Vec<TableReport>,
}

impl SalvageReport {
    /// The report of one table.
    pub fn table(&self, name: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == name)
    }

    /// Rows copied, over every table.
    pub fn salvaged_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.salvaged).sum()
    }

    /// Rows lost, over the tables that count them.
    pub fn lost_rows(&self) -> u64 {
        self.tables.iter().filter_map(|t| t.lost).sum()
    }

    /// One error line per table with a loss, one summary line.
    pub fn log(&self) {
        for t in &self.tables {
            if t.lost.unwrap_or(0) > 0 || t.refused > 0 || t.unreadable_ranges > 0 {
                tracing::error!(table = t.table, salvaged = t.salvaged, lost = ?t.lost,
                    refused = t.refused, unreadable_ranges = t.unreadable_ranges,
                    "salvage: rows lost");
            }
        }
        tracing::error!(damaged = %self.damaged.display(), readable = self.readable,
            salvaged_rows = self.salvaged_rows(), lost_rows = self.lost_rows(),
            outbox_salvaged = self.table("outbox").map_or(0, |t| t.salvaged),
            outbox_lost = ?self.table("outbox").and_then(|t| t.lost),
            "salvage complete: started on a new database");
    }
}

/// The `meta` rows read from the damaged file, and whether that was all of them.
struct Meta {
    rows: BTreeMap<String, u64>,
    complete: bool,
}

impl Meta {
    /// A value read; a key not read is 0 when the table was read whole (a missing key reads as
    /// 0), else unknown.
    fn get(&self, key: &str) -> Option<u64> {
        self.rows.get(key).copied().or(self.complete.then_some(0))
    }
}

/// Copies every readable row of the damaged file at `damaged` into `fresh` (module doc).
pub fn copy_all(damaged: &Path, fresh: &Database) -> Result<SalvageReport, redb::Error> {
    let mut report = SalvageReport {
        damaged: damaged.to_owned(),
        readable: false,
        read_failures: 0,
        tables: Vec::new(),
    };
    let mut source = match Source::open(damaged) {
        Ok(source) => source,
        Err(error) => {
            tracing::error!(%error, "salvage: redb cannot read the damaged file at all; nothing salvaged");
            let nothing = Meta {
                rows: BTreeMap::new(),
                complete: false,
            };
            write_meta(fresh, &nothing, &Totals::default())?;
            return Ok(report);
        }
    };
    report.readable = true;
    for name in source.table_names() {
        if !TABLES.contains(&name.as_str()) {
            tracing::warn!(
                table = name,
                "salvage: a table this version does not know is not salvaged"
            );
        }
    }

    let mut meta_rows = BTreeMap::new();
    let scanned = scan_ends(&mut source, META, &mut |rows| {
        for (k, v) in rows {
            if let (Ok(k), Ok(v)) = (std::str::from_utf8(&k), <[u8; 8]>::try_from(&v[..])) {
                meta_rows.insert(k.to_owned(), u64::from_le_bytes(v));
            }
        }
        Ok::<_, redb::Error>(())
    })?;
    let meta_read = scanned.start_read && scanned.unreadable_ranges == 0;
    report.tables.push(TableReport {
        table: "meta",
        salvaged: meta_rows.len() as u64,
        refused: scanned.read - meta_rows.len() as u64,
        unreadable_ranges: scanned.unreadable_ranges,
        lost: None,
    });
    let meta = Meta {
        rows: meta_rows,
        complete: meta_read,
    };

    let t = &mut report.tables;
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("forward_meta", FORWARD_META),
        |k, v| k != keys::INSTANCE_ID.as_bytes() || v.len() == 16,
    )?);
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("window_shape", WINDOW_SHAPE),
        |_, v| WindowShape::decode(v).is_ok(),
    )?);
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("window_series", WINDOW_SERIES),
        |_, v| v.first() == Some(&crate::window::STATE_VERSION),
    )?);
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("upstream_seq", UPSTREAM_SEQ),
        |_, v| v.len() == 8,
    )?);
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("source_state", SOURCE_STATE),
        |k, v| !k.starts_with(b"sparkplug/") || NodeRecord::decode(v).is_ok(),
    )?);

    let mut totals = Totals::default();
    let next_seq = meta.get(keys::NEXT_SEQ);
    let readings = Dense {
        table: READINGS,
        name: "readings",
        after: None,
        cursor: meta.get(keys::WINDOW_NEXT_READING),
        next: next_seq,
    };
    t.push(readings.copy(&mut source, fresh, &mut totals, |v| {
        Reading::decode(v).is_ok()
    })?);
    let dead_letters = Dense {
        table: DEAD_LETTERS,
        name: "dead_letters",
        after: None,
        cursor: meta.get(keys::WINDOW_NEXT_DEAD_LETTER),
        next: meta.get(keys::NEXT_DEAD_LETTER),
    };
    t.push(dead_letters.copy(&mut source, fresh, &mut totals, |v| {
        DeadLetter::decode(v).is_ok()
    })?);
    let outbox = Dense {
        table: OUTBOX,
        name: "outbox",
        after: meta.get(keys::OUTBOX_TRIMMED_THROUGH),
        cursor: None,
        // Missing means 1 (`store/meta.rs`).
        next: meta.get(keys::OUTBOX_NEXT_SEQ).map(|n| n.max(1)),
    };
    t.push(outbox.copy(&mut source, fresh, &mut totals, |v| {
        OutboxRecord::decode(v).is_ok()
    })?);
    let ages = Dense {
        table: DEDUPE_AGE,
        name: "dedupe_age",
        after: None,
        cursor: None,
        next: next_seq,
    };
    let mut age_report = ages.copy(&mut source, fresh, &mut totals, |v| v.len() >= 8)?;
    age_report.lost = None;
    t.push(age_report);
    t.push(copy_keyed(
        &mut source,
        fresh,
        ("dedupe_group", DEDUPE_GROUP),
        |k, v| plausible_group(k, v, next_seq),
    )?);
    t.push(copy_dedupe(
        &mut source,
        fresh,
        next_seq,
        crate::clock::unix_ms(),
    )?);

    report.read_failures = source.failures;
    write_meta(fresh, &meta, &totals)?;
    Ok(report)
}

/// What the dense tables left behind, for the `meta` fix-up.
#[derive(Default)]
struct Totals {
    log_bytes: u64,
    /// Per table name: the highest key kept.
    max_key: BTreeMap<&'static str, u64>,
}

/// A `u64`-keyed table whose keys are a dense sequence.
struct Dense {
    table: TableDefinition<'static, u64, &'static [u8]>,
    name: &'static str,
    /// Keys at or below this were trimmed (outbox: `outbox_trimmed_through`).
    after: Option<u64>,
    /// The consumer's cursor: keys below it were consumed (readings, dead letters).
    cursor: Option<u64>,
    /// The next key the table would get (`None`: `meta` unreadable).
    next: Option<u64>,
}

impl Dense {
    fn copy(
        &self,
        source: &mut Source,
        fresh: &Database,
        totals: &mut Totals,
        decodes: impl Fn(&[u8]) -> bool,
    ) -> Result<TableReport, redb::Error> {
        let (mut kept, mut refused) = (0u64, 0u64);
        let (mut first_read, mut first_kept, mut last_kept) = (None, None, None);
        let in_range = |k: u64| self.after.is_none_or(|a| k > a) && self.next.is_none_or(|n| k < n);
        let last_hint = self.next.and_then(|n| n.checked_sub(1));
        let quota = matches!(self.name, "readings" | "dead_letters" | "outbox");
        let scanned: Scanned = scan_seq(source, self.table, last_hint, &mut |rows| {
            if rows.is_empty() {
                return Ok(());
            }
            first_read = first_read.or(rows.first().map(|r| r.0));
            write_batch(fresh, |txn| {
                let mut table = txn.open_table(self.table)?;
                for (k, v) in rows {
                    if in_range(k) && decodes(&v) {
                        table.insert(k, v.as_slice())?;
                        if quota {
                            totals.log_bytes += row_bytes(v.len());
                        }
                        first_kept = first_kept.or(Some(k));
                        last_kept = Some(k);
                        kept += 1;
                    } else {
                        refused += 1;
                    }
                }
                Ok(())
            })
        })?;
        if let Some(k) = last_kept {
            totals.max_key.insert(self.name, k);
        }
        // The expected range: from the table's first key when the scan read it (eviction may
        // have moved it past the cursor), else from the cursor or the trim point; to the key
        // before `next`. Without `meta`, the kept rows' own first and last (ends not counted).
        let low = match (scanned.start_read, first_read) {
            (true, Some(first)) if self.next.is_some() => {
                Some(first.max(self.after.map_or(0, |a| a + 1)))
            }
            _ => self
                .after
                .map(|a| a + 1)
                .or(self.cursor.map(|c| c.max(1)))
                .or(first_kept),
        };
        let high = self.next.map(|n| n.saturating_sub(1)).or(last_kept);
        let expected = match (low, high) {
            (Some(low), Some(high)) if high >= low => high - low + 1,
            _ => 0,
        };
        Ok(TableReport {
            table: self.name,
            salvaged: kept,
            refused,
            unreadable_ranges: scanned.unreadable_ranges,
            lost: Some(expected.saturating_sub(kept)),
        })
    }
}

/// Copies a table that is not a dense sequence, keeping the rows `keep` accepts (raw bytes).
fn copy_keyed<K: Key + 'static, V: Value + 'static>(
    source: &mut Source,
    fresh: &Database,
    (name, table): (&'static str, TableDefinition<K, V>),
    keep: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<TableReport, redb::Error> {
    let (mut kept, mut refused) = (0u64, 0u64);
    let scanned = scan_ends(source, table, &mut |rows| {
        if rows.is_empty() {
            return Ok(());
        }
        write_batch(fresh, |txn| {
            let mut t = txn.open_table(table)?;
            for (k, v) in rows {
                if keep(&k, &v) {
                    t.insert(K::from_bytes(&k), V::from_bytes(&v))?;
                    kept += 1;
                } else {
                    refused += 1;
                }
            }
            Ok(())
        })
    })?;
    Ok(TableReport {
        table: name,
        salvaged: kept,
        refused,
        unreadable_ranges: scanned.unreadable_ranges,
        lost: None,
    })
}

/// `dedupe` rows (each a key the ingest writer could have made, naming a seq below
/// `next_seq`). A row is kept when the eviction row that covers its seq was copied and names
/// this very key: the `dedupe_age` row of an agent before v0.2, or the `dedupe_group` row whose
/// range holds the seq. A row whose eviction row was lost gets a new one (a group of its own,
/// inserted now), so the index stays complete (a redelivery is still recognised) and bounded
/// (eviction walks those rows).
fn copy_dedupe(
    source: &mut Source,
    fresh: &Database,
    next_seq: Option<u64>,
    now_ms: u64,
) -> Result<TableReport, redb::Error> {
    let (mut kept, mut refused) = (0u64, 0u64);
    // The group last looked in: keys are scanned in key order, which mostly follows seq order.
    let mut cached: Option<(u64, DedupeGroup)> = None;
    let scanned = scan_ends(source, DEDUPE, &mut |rows| {
        if rows.is_empty() {
            return Ok(());
        }
        write_batch(fresh, |txn| {
            let ages = txn.open_table(DEDUPE_AGE)?;
            let mut groups = txn.open_table(DEDUPE_GROUP)?;
            let mut t = txn.open_table(DEDUPE)?;
            for (k, v) in rows {
                let seq = <[u8; 8]>::try_from(&v[..]).map(u64::from_le_bytes).ok();
                let seq =
                    seq.filter(|&s| plausible_dedupe_key(&k) && next_seq.is_none_or(|n| s < n));
                let Some(seq) = seq else {
                    refused += 1;
                    continue;
                };
                let mut names_key = ages
                    .get(seq)?
                    .map(|a| DedupeAge::decode(a.value()).key == k.as_slice());
                if names_key.is_none() {
                    let covers =
                        |(first, g): &(u64, DedupeGroup)| (*first..=g.last_seq).contains(&seq);
                    if !cached.as_ref().is_some_and(covers) {
                        cached = match groups.range(..=seq)?.next_back().transpose()? {
                            Some((first, g)) => DedupeGroup::decode(g.value())
                                .ok()
                                .map(|g| (first.value(), g)),
                            None => None,
                        };
                    }
                    names_key = cached
                        .as_ref()
                        .filter(|c| covers(c))
                        .map(|(_, g)| g.keys().any(|key| key == k.as_slice()));
                }
                match names_key {
                    Some(false) => {
                        refused += 1;
                        continue;
                    }
                    Some(true) => {}
                    None => {
                        let mut own = DedupeGroup::new(now_ms);
                        own.push(&k, seq);
                        groups.insert(seq, own.encode().as_slice())?;
                    }
                }
                t.insert(k.as_slice(), seq)?;
                kept += 1;
            }
            Ok(())
        })
    })?;
    Ok(TableReport {
        table: "dedupe",
        salvaged: kept,
        refused,
        unreadable_ranges: scanned.unreadable_ranges,
        lost: None,
    })
}

/// Whether a `dedupe_group` row could be what the ingest writer wrote: a readable v1 value
/// whose seq range (the key through `last_seq`) lies below `next_seq`.
fn plausible_group(key: &[u8], value: &[u8], next_seq: Option<u64>) -> bool {
    let Ok(first) = <[u8; 8]>::try_from(key).map(u64::from_le_bytes) else {
        return false;
    };
    DedupeGroup::decode(value).is_ok_and(|g| {
        !g.is_empty() && first <= g.last_seq && next_seq.is_none_or(|n| g.last_seq < n)
    })
}

/// Writes one scanned batch into the fresh database in a transaction of its own, without an
/// fsync (`Durability::None`, as every batch of the copy).
fn write_batch(
    fresh: &Database,
    write: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut txn = fresh.begin_write()?;
    txn.set_durability(Durability::None)?;
    write(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Whether `key` has the shape of a dedupe key (`store/FORMAT.md`): tag 1 and 14 bytes of
/// device, boot, seq and index; tag 2 or 3, a big-endian sensor length, the sensor, 8 bytes; or
/// tag 4, 8 bytes of time, a big-endian sensor length, the sensor.
fn plausible_dedupe_key(key: &[u8]) -> bool {
    match key {
        [1, rest @ ..] => rest.len() == 14,
        [2 | 3, hi, lo, rest @ ..] => rest.len() == usize::from(u16::from_be_bytes([*hi, *lo])) + 8,
        [4, _, _, _, _, _, _, _, _, hi, lo, rest @ ..] => {
            rest.len() == usize::from(u16::from_be_bytes([*hi, *lo]))
        }
        _ => false,
    }
}

/// The `meta` rows read, made consistent with the rows that survived, in one
/// `Durability::Immediate` commit: every sequence stays above every surviving key (so none is
/// reused), `log_bytes` is the surviving rows' quota estimate.
fn write_meta(fresh: &Database, meta: &Meta, totals: &Totals) -> Result<(), redb::Error> {
    let mut rows = meta.rows.clone();
    let above = |rows: &mut BTreeMap<String, u64>, key: &str, tables: &[&str]| {
        for table in tables {
            if let Some(&max) = totals.max_key.get(table) {
                let v = rows.entry(key.to_owned()).or_insert(0);
                *v = (*v).max(max + 1);
            }
        }
    };
    above(&mut rows, keys::NEXT_SEQ, &["readings", "dedupe_age"]);
    above(&mut rows, keys::NEXT_DEAD_LETTER, &["dead_letters"]);
    above(&mut rows, keys::OUTBOX_NEXT_SEQ, &["outbox"]);
    rows.insert(keys::LOG_BYTES.to_owned(), totals.log_bytes);
    let mut txn = fresh.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut t = txn.open_table(META)?;
        for (k, v) in &rows {
            t.insert(k.as_str(), *v)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_key_not_read_is_zero_only_when_the_table_was_read_whole() {
        let rows = BTreeMap::from([(keys::NEXT_SEQ.to_owned(), 9)]);
        let whole = Meta {
            rows: rows.clone(),
            complete: true,
        };
        assert_eq!(whole.get(keys::NEXT_SEQ), Some(9));
        assert_eq!(whole.get(keys::OUTBOX_NEXT_SEQ), Some(0));
        let part = Meta {
            rows,
            complete: false,
        };
        assert_eq!(part.get(keys::NEXT_SEQ), Some(9));
        assert_eq!(part.get(keys::OUTBOX_NEXT_SEQ), None, "unknown, not 0");
    }

    #[test]
    fn dedupe_keys_of_every_kind_are_plausible_and_garbage_is_not() {
        assert!(plausible_dedupe_key(&[
            1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 4
        ]));
        assert!(plausible_dedupe_key(&[
            2, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 1, 2
        ]));
        assert!(plausible_dedupe_key(&[
            3, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 5
        ]));
        assert!(!plausible_dedupe_key(&[
            2, 0, 9, b'a', b'b', 0, 0, 0, 0, 0, 0, 1, 2
        ]));
        assert!(!plausible_dedupe_key(&[0x5a; 15]));
        assert!(!plausible_dedupe_key(&[]));
    }
}
