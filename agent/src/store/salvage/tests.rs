//! The salvage against files written with the store's own tables and encoders, then damaged on
//! purpose: whole pages overwritten at several offsets, in both the cleanly closed and the
//! crashed (recovery flag set) state. The oracle for "every readable row" is a point lookup of
//! every key through the same read-only view, independent of the scans' skipping.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::scan::Source;
use super::*;
use crate::outbox::{OutboxRecord, RecordKind};
use crate::reading::Reading;
use crate::store::meta as keys;
use crate::store::rows::{DedupeAge, DedupeGroup};
use crate::store::tables::{
    DEDUPE, DEDUPE_AGE, DEDUPE_GROUP, FORWARD_META, META, OUTBOX, READINGS, WINDOW_SERIES,
};

const OUTBOX_ROWS: u64 = 3000;
const READING_ROWS: u64 = 2000;
/// The outbox starts after a trimmed prefix, as it does once the forwarder has run.
const TRIMMED: u64 = 100;
const INSTANCE: [u8; 16] = [7; 16];
const CACHE: usize = 1 << 20;

fn outbox_value(seq: u64) -> Vec<u8> {
    OutboxRecord {
        kind: RecordKind::Reading,
        created_ms: 1_700_000_000_000 + seq,
        route: "p".into(),
        key: format!("sensor-{}", seq % 7).into_bytes(),
        payload: format!("{{\"seq\":{seq},\"v\":{}}}", seq * 3).into_bytes(),
    }
    .encode()
    .unwrap()
}

fn reading_value(seq: u64) -> Vec<u8> {
    Reading {
        sensor: format!("s{}", seq % 5),
        ts_ms: 1_700_000_000_000 + seq,
        value: seq as f64,
        seq: Some(seq),
    }
    .encode()
}

/// The first half of the readings were taken by an agent before v0.2 (sensor-major keys, tag
/// 2, one `dedupe_age` row each); the rest by this one (time-major keys, tag 4, one
/// `dedupe_group` row per commit).
fn legacy(seq: u64) -> bool {
    seq <= READING_ROWS / 2
}

fn dedupe_key(seq: u64) -> Vec<u8> {
    if legacy(seq) {
        let mut k = vec![2, 0, 2, b's', b'x'];
        k.extend_from_slice(&seq.to_be_bytes());
        k
    } else {
        let mut k = vec![4];
        k.extend_from_slice(&seq.to_be_bytes());
        k.extend_from_slice(&[0, 2, b's', b'x']);
        k
    }
}

/// A database with an outbox backlog `(TRIMMED, TRIMMED + OUTBOX_ROWS]`, readings
/// `1..=READING_ROWS` with their dedupe rows, the instance id, a window state row and `meta`;
/// closed cleanly. Returns the outbox and readings written.
fn write_database(path: &Path) -> (BTreeMap<u64, Vec<u8>>, BTreeMap<u64, Vec<u8>>) {
    let db = Database::builder()
        .set_cache_size(CACHE)
        .create(path)
        .unwrap();
    let mut outbox = BTreeMap::new();
    let mut readings = BTreeMap::new();
    // Many commits, as the stage writes them, so the pages are spread over the file.
    for chunk in 0..30u64 {
        let txn = db.begin_write().unwrap();
        {
            let mut o = txn.open_table(OUTBOX).unwrap();
            let per = OUTBOX_ROWS / 30;
            for seq in TRIMMED + 1 + chunk * per..=TRIMMED + (chunk + 1) * per {
                o.insert(seq, outbox_value(seq).as_slice()).unwrap();
                outbox.insert(seq, outbox_value(seq));
            }
            let mut r = txn.open_table(READINGS).unwrap();
            let mut d = txn.open_table(DEDUPE).unwrap();
            let mut a = txn.open_table(DEDUPE_AGE).unwrap();
            let mut g = txn.open_table(DEDUPE_GROUP).unwrap();
            let mut group = (None, DedupeGroup::new(chunk));
            let per = READING_ROWS / 30 + 1;
            for seq in (1 + chunk * per..=(chunk + 1) * per).filter(|s| *s <= READING_ROWS) {
                r.insert(seq, reading_value(seq).as_slice()).unwrap();
                readings.insert(seq, reading_value(seq));
                d.insert(dedupe_key(seq).as_slice(), seq).unwrap();
                if legacy(seq) {
                    let age = DedupeAge {
                        inserted_ms: seq,
                        key: &dedupe_key(seq),
                    }
                    .encode();
                    a.insert(seq, age.as_slice()).unwrap();
                } else {
                    group.0.get_or_insert(seq);
                    group.1.push(&dedupe_key(seq), seq);
                }
            }
            if let (Some(first), group) = group {
                g.insert(first, group.encode().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let txn = db.begin_write().unwrap();
    {
        let mut m = txn.open_table(META).unwrap();
        m.insert(keys::OUTBOX_TRIMMED_THROUGH, TRIMMED).unwrap();
        m.insert(keys::OUTBOX_NEXT_SEQ, TRIMMED + OUTBOX_ROWS + 1)
            .unwrap();
        m.insert(keys::NEXT_SEQ, READING_ROWS + 1).unwrap();
        m.insert(keys::WINDOW_NEXT_READING, 1).unwrap();
        m.insert(keys::LOG_BYTES, 1).unwrap();
        txn.open_table(FORWARD_META)
            .unwrap()
            .insert(keys::INSTANCE_ID, INSTANCE.as_slice())
            .unwrap();
        txn.open_table(WINDOW_SERIES)
            .unwrap()
            .insert(("p", "s1"), [1u8, 0, 0, 0].as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    (outbox, readings)
}

/// Overwrites one 4 KiB page at each fraction of the file with `0x5a` bytes.
fn damage(path: &Path, fractions: &[f64]) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for fraction in fractions {
        let offset = ((len as f64 * fraction) as u64) / 4096 * 4096;
        f.write_at(&[0x5a; 4096], offset.max(4096)).unwrap();
    }
    f.sync_all().unwrap();
}

/// Overwrites one page at `fraction` except its first 16 bytes: the page type and entry count
/// survive, the entries' offsets and bytes are garbage, so redb reads garbage, not a bad page.
fn garble_entries(path: &Path, fraction: f64) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // The first leaf page (redb's page type byte 1) from `fraction` on: a garbled branch page
    // is another case (its garbage child pointers may still lead a point lookup, the oracle of
    // "readable", to a right leaf, while no scan can order its entries).
    let mut offset = ((len as f64 * fraction) as u64) / 4096 * 4096;
    let mut kind = [0u8];
    loop {
        f.read_exact_at(&mut kind, offset).unwrap();
        if kind[0] == 1 {
            break;
        }
        offset += 4096;
        assert!(offset < len, "no leaf page after {fraction}");
    }
    let garbage: Vec<u8> = (0..4080u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_at(&garbage, offset + 16).unwrap();
    f.sync_all().unwrap();
}

/// Sets redb's recovery-required flag, as a `kill -9` of the writer leaves it.
fn mark_crashed(path: &Path) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut god = [0u8];
    f.read_exact_at(&mut god, 9).unwrap();
    f.write_at(&[god[0] | 2], 9).unwrap();
}

/// Every row of `table` of a (healthy) database.
fn rows(db: &Database, table: redb::TableDefinition<u64, &[u8]>) -> BTreeMap<u64, Vec<u8>> {
    let txn = db.begin_read().unwrap();
    let Some(t) = crate::store::open_if_exists(&txn, table).unwrap() else {
        return BTreeMap::new();
    };
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

/// The keys of `expected` whose point lookup through the read-only view returns the value
/// written: what is readable, by the simplest read there is.
fn readable(
    damaged: &Path,
    table: redb::TableDefinition<u64, &[u8]>,
    expected: &BTreeMap<u64, Vec<u8>>,
) -> Vec<u64> {
    let mut source = Source::open(damaged).unwrap();
    expected
        .iter()
        .filter(|(k, v)| {
            let got = source.attempt(|txn| {
                let t = txn.open_table(table)?;
                Ok(t.get(**k)?.map(|g| g.value().to_vec()))
            });
            matches!(got, Ok(Some(bytes)) if &bytes == *v)
        })
        .map(|(k, _)| *k)
        .collect()
}

fn damaged_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".damaged-"))
        .collect();
    found.sort();
    found
}

/// Damages a fresh database at `fractions`, salvages it, and checks every promise: the damaged
/// file kept unchanged beside the new one; every readable outbox row and reading salvaged, none
/// invented or changed; salvaged + lost = the backlog; `meta` consistent.
fn salvage_keeps_every_readable_row(fractions: &[f64], crashed: bool) -> SalvageReport {
    salvage_after(crashed, |path| damage(path, fractions))
}

fn salvage_after(crashed: bool, damage: impl FnOnce(&Path)) -> SalvageReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    let (outbox, readings) = write_database(&path);
    damage(&path);
    if crashed {
        mark_crashed(&path);
    }
    let damaged_bytes = std::fs::read(&path).unwrap();

    let opened = open(&path, CACHE).unwrap();
    let report = opened.salvage.expect("damage was found");
    for t in &report.tables {
        println!("crashed={crashed}: {t:?}");
    }
    let damaged = damaged_files(dir.path());
    assert_eq!(damaged, vec![report.damaged.clone()]);
    assert_eq!(
        std::fs::read(&damaged[0]).unwrap(),
        damaged_bytes,
        "kept as found"
    );
    assert!(!partial_path(&path).exists() && !complete_path(&path).exists());

    let new_outbox = rows(&opened.db, OUTBOX);
    let new_readings = rows(&opened.db, READINGS);
    for (got, expected, table) in [
        (&new_outbox, &outbox, OUTBOX),
        (&new_readings, &readings, READINGS),
    ] {
        for (k, v) in got {
            assert_eq!(expected.get(k), Some(v), "row {k} invented or changed");
        }
        for k in readable(&damaged[0], table, expected) {
            assert!(got.contains_key(&k), "readable row {k} not salvaged");
        }
    }
    let o = report.table("outbox").unwrap();
    assert_eq!(o.salvaged, new_outbox.len() as u64);
    assert_eq!(
        o.salvaged + o.lost.unwrap(),
        OUTBOX_ROWS,
        "salvaged + lost = backlog"
    );
    let r = report.table("readings").unwrap();
    assert_eq!(r.salvaged + r.lost.unwrap(), READING_ROWS);

    let txn = opened.db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let get = |k: &str| meta.get(k).unwrap().map(|v| v.value());
    assert_eq!(get(keys::OUTBOX_NEXT_SEQ), Some(TRIMMED + OUTBOX_ROWS + 1));
    assert_eq!(get(keys::OUTBOX_TRIMMED_THROUGH), Some(TRIMMED));
    assert_eq!(get(keys::NEXT_SEQ), Some(READING_ROWS + 1));
    let quota: u64 = new_outbox
        .values()
        .chain(new_readings.values())
        .map(|v| crate::store::row_bytes(v.len()))
        .sum();
    assert_eq!(get(keys::LOG_BYTES), Some(quota), "log_bytes recounted");
    let ids = txn.open_table(FORWARD_META).unwrap();
    assert_eq!(
        ids.get(keys::INSTANCE_ID).unwrap().unwrap().value(),
        INSTANCE
    );
    // Every dedupe row kept is one written, with the eviction row that names it (rebuilt when
    // lost): its age row (an older agent's keys) or the group whose range holds its seq.
    let ages = txn.open_table(DEDUPE_AGE).unwrap();
    let groups = txn.open_table(DEDUPE_GROUP).unwrap();
    let dedupe = txn.open_table(DEDUPE).unwrap();
    let mut tracked = [0u64; 2];
    for row in dedupe.iter().unwrap() {
        let (k, seq) = row.unwrap();
        let seq = seq.value();
        assert_eq!(k.value(), dedupe_key(seq).as_slice());
        if let Some(age) = ages.get(seq).unwrap() {
            assert_eq!(DedupeAge::decode(age.value()).key, k.value());
        } else {
            let (first, group) = groups.range(..=seq).unwrap().next_back().unwrap().unwrap();
            let group = DedupeGroup::decode(group.value()).unwrap();
            assert!((first.value()..=group.last_seq).contains(&seq), "seq {seq}");
            assert!(group.keys().any(|key| key == k.value()), "seq {seq}");
        }
        tracked[usize::from(legacy(seq))] += 1;
    }
    assert!(
        tracked.iter().all(|n| *n > READING_ROWS / 4),
        "keys of both layouts kept (new, legacy): {tracked:?}"
    );
    report
}

#[test]
fn a_page_overwritten_in_the_middle_loses_only_its_own_rows() {
    let report = salvage_keeps_every_readable_row(&[0.5], false);
    assert!(report.readable);
    assert!(report.lost_rows() > 0, "the damage hit rows: {report:?}");
    assert!(
        report.lost_rows() < 200,
        "one page holds well under 200 rows: {report:?}"
    );
}

#[test]
fn pages_overwritten_at_several_offsets_lose_only_their_own_rows() {
    for fractions in [&[0.2, 0.45][..], &[0.3, 0.6, 0.8][..], &[0.1, 0.9][..]] {
        let report = salvage_keeps_every_readable_row(fractions, false);
        assert!(report.readable, "{fractions:?}");
    }
}

#[test]
fn a_page_whose_entries_are_garbage_yields_no_invented_row() {
    // redb reads such a page without an error (or panics on its offsets); what it reads is
    // refused by the range and decoder checks, never copied.
    for fraction in [0.3, 0.5, 0.7] {
        salvage_after(false, |path| garble_entries(path, fraction));
    }
}

#[test]
fn a_damaged_file_left_by_a_crash_is_salvaged_too() {
    // redb's own recovery refuses it ("all roots are corrupted"); the view reads it anyway.
    let report = salvage_keeps_every_readable_row(&[0.4, 0.7], true);
    assert!(report.readable);
    assert!(report.salvaged_rows() > OUTBOX_ROWS);
}

#[test]
fn a_healthy_file_is_opened_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    let (outbox, _) = write_database(&path);
    let opened = open(&path, CACHE).unwrap();
    assert!(opened.salvage.is_none());
    assert_eq!(rows(&opened.db, OUTBOX), outbox);
    assert!(damaged_files(dir.path()).is_empty());
}

#[test]
fn a_file_redb_cannot_read_at_all_is_moved_aside_and_a_new_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    write_database(&path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_at(&[0u8; 512], 0).unwrap();
    let opened = open(&path, CACHE).unwrap();
    let report = opened.salvage.unwrap();
    assert!(!report.readable);
    assert_eq!(report.salvaged_rows(), 0);
    assert_eq!(damaged_files(dir.path()).len(), 1);
    assert!(rows(&opened.db, OUTBOX).is_empty());
}

#[test]
fn a_file_held_by_another_handle_is_an_error_and_is_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    write_database(&path);
    let _held = Database::create(&path).unwrap();
    let err = open(&path, CACHE).err().expect("already open");
    assert!(matches!(
        err,
        SalvageError::Open(DatabaseError::DatabaseAlreadyOpen)
    ));
    assert!(damaged_files(dir.path()).is_empty());
}

#[test]
fn a_partial_copy_left_by_a_crash_is_deleted_and_the_salvage_redone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    let (outbox, _) = write_database(&path);
    damage(&path, &[0.5]);
    // A crash in step 3: half a copy, with rows that must not survive into the result.
    let partial = Database::create(partial_path(&path)).unwrap();
    let txn = partial.begin_write().unwrap();
    txn.open_table(OUTBOX)
        .unwrap()
        .insert(u64::MAX - 1, outbox_value(1).as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(partial);
    let opened = open(&path, CACHE).unwrap();
    let salvaged = rows(&opened.db, OUTBOX);
    assert!(salvaged.keys().all(|k| outbox.contains_key(k)));
    assert!(!partial_path(&path).exists());
}

#[test]
fn a_complete_copy_left_by_a_crash_is_put_in_place_before_anything_else() {
    for damaged_still_in_place in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest.redb");
        let (outbox, _) = write_database(&path);
        // A crash in step 4: the complete copy is there; the damaged file moved or not.
        std::fs::copy(&path, complete_path(&path)).unwrap();
        if damaged_still_in_place {
            damage(&path, &[0.5]);
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        let opened = open(&path, CACHE).unwrap();
        assert!(opened.salvage.is_none());
        assert_eq!(rows(&opened.db, OUTBOX), outbox);
        assert_eq!(
            damaged_files(dir.path()).len(),
            usize::from(damaged_still_in_place)
        );
        assert!(!complete_path(&path).exists());
    }
}

#[test]
fn the_view_clears_only_the_recovery_flags_of_the_header_byte() {
    // Pins the redb 4.x header layout the view relies on: magic number, then the flag byte.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    write_database(&path);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..9], b"redb\x1a\x0a\xa9\x0d\x0a");
    mark_crashed(&path);
    assert!(
        Database::builder().open_read_only(&path).is_err(),
        "redb refuses a crashed file read-only"
    );
    let mut source = Source::open(&path).unwrap();
    let n = source
        .attempt(|txn| Ok(txn.open_table(OUTBOX)?.len()?))
        .unwrap();
    assert_eq!(n, OUTBOX_ROWS);
    assert_eq!(
        std::fs::read(&path).unwrap()[9] & 2,
        2,
        "the file is not written"
    );
}

#[test]
fn a_file_with_its_clean_close_mark_opens_without_the_full_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    let (outbox, _) = write_database(&path);
    mark_clean(&path).unwrap();
    assert!(clean::mark_path(&path).exists());
    let opened = open(&path, CACHE).unwrap();
    assert!(!opened.checked, "the mark proved the file unchanged");
    assert!(opened.salvage.is_none());
    assert_eq!(rows(&opened.db, OUTBOX), outbox);
    assert!(
        !clean::mark_path(&path).exists(),
        "the open consumes the mark"
    );
}

#[test]
fn a_file_damaged_after_its_clean_close_is_still_checked_and_salvaged() {
    // No pause between the mark and the damage: the mark waited out the clock's granularity,
    // so even an immediate write gives the file another ctime.
    let report = salvage_after(false, |path| {
        mark_clean(path).unwrap();
        damage(path, &[0.5]);
    });
    assert!(report.lost_rows() > 0, "{report:?}");
}

#[test]
fn a_start_after_a_crash_finds_no_mark_and_checks_in_full() {
    // The mark is taken at open, so a run that never reaches a clean stop leaves none, and
    // damage it met (a panic on a bad page) is looked for at the next start.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    write_database(&path);
    mark_clean(&path).unwrap();
    drop(open(&path, CACHE).unwrap());
    let opened = open(&path, CACHE).unwrap();
    assert!(opened.checked);
}

#[test]
fn a_mark_of_another_file_or_state_proves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    write_database(&path);
    mark_clean(&path).unwrap();
    // The same bytes under a new inode (a restore from a backup, a copy over the file).
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    assert!(open(&path, CACHE).unwrap().checked);
    // A mark that does not parse.
    std::fs::write(clean::mark_path(&path), "edge-clean v1 junk\n").unwrap();
    assert!(open(&path, CACHE).unwrap().checked);
    assert!(!clean::mark_path(&path).exists());
}
