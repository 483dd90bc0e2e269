use std::collections::VecDeque;

use proptest::prelude::*;
use redb::{Database, ReadableDatabase};

use super::*;

fn db() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::create(dir.path().join("agent.redb")).expect("database");
    create(&db).expect("tables");
    (dir, db)
}

fn record(i: u64) -> OutboxRecord {
    OutboxRecord {
        kind: RecordKind::Reading,
        created_ms: 1_000 + i,
        route: "vibration".into(),
        key: format!("s{}", i % 3).into_bytes(),
        payload: i.to_le_bytes().to_vec(),
    }
}

fn append_committed(db: &Database, records: &[OutboxRecord]) -> Option<RangeInclusive<u64>> {
    let txn = db.begin_write().unwrap();
    let seqs = append(&txn, records).unwrap();
    txn.commit().unwrap();
    seqs
}

fn log_bytes(db: &Database) -> u64 {
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(LOG_BYTES).unwrap().map_or(0, |v| v.value())
}

// The golden vector of the record lives in `store/FORMAT.md`, checked by `store/tests.rs`.

#[test]
fn sequence_numbers_start_at_one_and_stay_dense_after_a_full_trim() {
    let (_dir, db) = db();
    assert_eq!(append_committed(&db, &[record(0), record(1)]), Some(1..=2));
    assert_eq!(trim_through(&db, 2, Durability::Immediate).unwrap(), 2);
    assert_eq!(append_committed(&db, &[record(2)]), Some(3..=3));
    let s = stats(&db).unwrap();
    assert_eq!(
        (s.depth, s.first_seq, s.next_seq, s.trimmed_through),
        (1, Some(3), 4, 2)
    );
    assert_eq!(s.oldest_created_ms, Some(1_002));
}

#[test]
fn an_aborted_transaction_appends_nothing() {
    let (_dir, db) = db();
    let txn = db.begin_write().unwrap();
    append(&txn, &[record(0)]).unwrap();
    txn.abort().unwrap();
    assert_eq!(stats(&db).unwrap().depth, 0);
    assert_eq!(
        append_committed(&db, &[record(1)]),
        Some(1..=1),
        "seq 1 was never used"
    );
    assert_eq!(log_bytes(&db), row_bytes(record(1).encode().unwrap().len()));
}

#[test]
fn reads_are_bounded_by_count_and_bytes_but_always_make_progress() {
    let (_dir, db) = db();
    let records: Vec<OutboxRecord> = (0..10).map(record).collect();
    append_committed(&db, &records);
    let batch = read_after(&db, 0, 4, usize::MAX).unwrap();
    assert_eq!(
        batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(batch[0].1, records[0]);
    let one = read_after(&db, 4, 100, 1).unwrap();
    assert_eq!(
        one.len(),
        1,
        "a byte budget smaller than one record still returns one"
    );
    assert_eq!(one[0].0, 5);
    assert!(read_after(&db, 10, 100, usize::MAX).unwrap().is_empty());
}

#[test]
fn trimming_is_idempotent_and_frees_the_quota_it_took() {
    let (_dir, db) = db();
    append_committed(&db, &(0..5).map(record).collect::<Vec<_>>());
    assert!(log_bytes(&db) > 0);
    assert_eq!(trim_through(&db, 5, Durability::Immediate).unwrap(), 5);
    assert_eq!(trim_through(&db, 5, Durability::Immediate).unwrap(), 0);
    assert_eq!(
        trim_through(&db, 3, Durability::Immediate).unwrap(),
        0,
        "an older trim changes nothing"
    );
    assert_eq!(stats(&db).unwrap().trimmed_through, 5);
    assert_eq!(log_bytes(&db), 0);
    assert_eq!(trim_through(&db, 99, Durability::Immediate).unwrap(), 0);
    assert_eq!(
        stats(&db).unwrap().trimmed_through,
        5,
        "never past the last appended record"
    );
}

#[test]
fn a_corrupt_record_is_reported_with_its_sequence_number() {
    let (_dir, db) = db();
    let txn = db.begin_write().unwrap();
    txn.open_table(OUTBOX)
        .unwrap()
        .insert(1, &[9u8, 9][..])
        .unwrap();
    txn.commit().unwrap();
    let err = read_after(&db, 0, 10, usize::MAX).unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::Corrupt {
                seq: 1,
                reason: CorruptRecord::Version(9)
            }
        ),
        "{err}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Trim(u8),
    Read(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u8..5).prop_map(Op::Append),
            (0u8..8).prop_map(Op::Trim),
            (1u8..6).prop_map(Op::Read),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Model-based: any sequence of appends, trims and reads behaves like a plain queue of
    /// (seq, record), and `log_bytes` always equals the rows' estimate.
    #[test]
    fn the_outbox_behaves_like_a_queue(ops in ops()) {
        let (_dir, db) = db();
        let mut model: VecDeque<(u64, OutboxRecord)> = VecDeque::new();
        let mut next = 1u64;
        let mut trimmed = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let records: Vec<OutboxRecord> = (next..next + u64::from(n)).map(record).collect();
                    let got = append_committed(&db, &records);
                    let want = (n > 0).then(|| next..=next + u64::from(n) - 1);
                    prop_assert_eq!(got, want);
                    for r in records {
                        model.push_back((next, r));
                        next += 1;
                    }
                }
                Op::Trim(k) => {
                    let through = (trimmed + u64::from(k)).min(next - 1);
                    let before = model.len();
                    model.retain(|(s, _)| *s > through);
                    prop_assert_eq!(trim_through(&db, through, Durability::Immediate).unwrap(), (before - model.len()) as u64);
                    trimmed = trimmed.max(through);
                }
                Op::Read(n) => {
                    let got = read_after(&db, trimmed, usize::from(n), usize::MAX).unwrap();
                    let want: Vec<(u64, OutboxRecord)> = model.iter().take(usize::from(n)).cloned().collect();
                    prop_assert_eq!(got, want);
                }
            }
            let expected_bytes: u64 = model.iter().map(|(_, r)| row_bytes(r.encode().unwrap().len())).sum();
            prop_assert_eq!(log_bytes(&db), expected_bytes);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = OutboxRecord::decode(&bytes);
    }
}

#[test]
fn a_trim_without_fsync_is_seen_at_once_and_kept_once_a_durable_commit_follows() {
    let (dir, db) = db();
    append_committed(&db, &[record(1), record(2), record(3)]);
    assert_eq!(trim_through(&db, 2, Durability::None).unwrap(), 2);
    assert_eq!(stats(&db).unwrap().depth, 1, "seen before any fsync");
    assert_eq!(log_bytes(&db), row_bytes(record(3).encode().unwrap().len()));
    assert_eq!(trim_through(&db, 2, Durability::Immediate).unwrap(), 0);
    drop(db);
    let db = Database::create(dir.path().join("agent.redb")).unwrap();
    let s = stats(&db).unwrap();
    assert_eq!((s.depth, s.trimmed_through), (1, 2));
}
