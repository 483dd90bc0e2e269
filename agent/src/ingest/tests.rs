use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writer::{BatchLimits, Writer};
use super::*;
use redb::{ReadableDatabase, ReadableTable};

fn limits(quota_bytes: u64, on_full: OnFull) -> Limits {
    Limits {
        quota_bytes,
        on_full,
        dedupe_max_entries: 1_000,
        dedupe_max_age_ms: 3_600_000,
    }
}

fn reading(sensor: &str, ts_ms: u64) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts_ms,
        value: ts_ms as f64,
        seq: None,
    }
}

fn sub(readings: Vec<(Reading, Dedupe)>) -> Submission {
    Submission {
        readings,
        dead_letters: Vec::new(),
        state: Vec::new(),
        ack: None,
    }
}

fn one(sensor: &str, ts_ms: u64) -> Submission {
    sub(vec![(reading(sensor, ts_ms), Dedupe::SensorTs)])
}

fn open(dir: &tempfile::TempDir, limits: Limits) -> IngestLog {
    IngestLog::open(&dir.path().join("ingest.redb"), limits).expect("open")
}

#[test]
fn committed_readings_get_dense_increasing_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let done = log
        .commit(&[one("a", 1), one("a", 2), one("b", 1)], 0)
        .unwrap();
    assert_eq!((done.submissions, done.accepted), (3, 3));
    let rows = log.readings_from(0, 10).unwrap();
    assert_eq!(rows.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(rows[2].1, reading("b", 1));
}

#[test]
fn a_redelivered_reading_is_dropped_in_the_same_transaction_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let l = limits(1 << 20, OnFull::Backpressure);
    {
        let mut log = open(&dir, l);
        let done = log.commit(&[one("a", 1), one("a", 1)], 0).unwrap();
        assert_eq!((done.accepted, done.duplicate), (1, 1));
    }
    let mut log = open(&dir, l);
    let done = log.commit(&[one("a", 1), one("a", 2)], 0).unwrap();
    assert_eq!((done.accepted, done.duplicate), (1, 1));
    let stats = log.stats().unwrap();
    assert_eq!(
        (
            stats.readings,
            stats.accepted,
            stats.duplicate,
            stats.next_seq
        ),
        (2, 2, 2, 2)
    );
}

#[test]
fn serial_frames_dedupe_by_device_boot_seq_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let frame = |boot, seq, index| Dedupe::Frame {
        device: 7,
        boot,
        seq,
        index,
    };
    let batch = [
        sub(vec![
            (reading("x", 1), frame(1, 1, 0)),
            (reading("y", 1), frame(1, 1, 1)),
        ]),
        sub(vec![
            (reading("x", 1), frame(1, 1, 0)),
            (reading("y", 1), frame(1, 1, 1)),
        ]),
        sub(vec![(reading("x", 1), frame(2, 1, 0))]),
    ];
    let done = log.commit(&batch, 0).unwrap();
    assert_eq!((done.accepted, done.duplicate), (3, 2));
}

#[test]
fn dedupe_keys_are_big_endian_and_tagged() {
    let key = Dedupe::Frame {
        device: 1,
        boot: 2,
        seq: 3,
        index: 4,
    }
    .key(&reading("s", 0))
    .unwrap();
    assert_eq!(key, [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 4]);
    let key = Dedupe::SensorTs.key(&reading("ab", 258)).unwrap();
    assert_eq!(key, [4, 0, 0, 0, 0, 0, 0, 1, 2, 0, 2, b'a', b'b']);
    let key = Dedupe::SensorTs.legacy_key(&reading("ab", 258)).unwrap();
    assert_eq!(key, [2, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(Dedupe::None.key(&reading("ab", 1)), None);
}

#[test]
fn the_dedupe_index_forgets_the_oldest_keys_past_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(1 << 20, OnFull::Backpressure);
    l.dedupe_max_entries = 3;
    l.dedupe_max_age_ms = 1_000;
    let mut log = open(&dir, l);
    for ts in 1..=4 {
        log.commit(&[one("a", ts)], 10_000).unwrap();
    }
    assert_eq!(log.dedupe_len().unwrap(), 3);
    // The oldest key was forgotten, so its redelivery is accepted again (documented bound).
    assert_eq!(log.commit(&[one("a", 1)], 10_000).unwrap().accepted, 1);
    assert_eq!(log.commit(&[one("a", 4)], 10_000).unwrap().duplicate, 1);
    // Past the age bound, everything old goes; the new key stays.
    log.commit(&[one("b", 1)], 20_000).unwrap();
    assert_eq!(log.dedupe_len().unwrap(), 1);
}

#[test]
fn a_commit_larger_than_the_dedupe_bound_is_remembered_whole_until_a_newer_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(1 << 20, OnFull::Backpressure);
    l.dedupe_max_entries = 3;
    let mut log = open(&dir, l);
    let burst: Vec<_> = (1..=5).map(|ts| one("a", ts)).collect();
    log.commit(&burst, 0).unwrap();
    // Within the bound plus one commit's keys; none of the burst is forgotten yet.
    assert_eq!(log.dedupe_len().unwrap(), 5);
    assert_eq!(log.commit(&[one("a", 1)], 0).unwrap().duplicate, 1);
    // Three newer keys hold the bound without the burst: it goes whole.
    log.commit(&[one("b", 1), one("b", 2), one("b", 3)], 0)
        .unwrap();
    assert_eq!(log.dedupe_len().unwrap(), 3);
    assert_eq!(log.commit(&[one("a", 5)], 0).unwrap().accepted, 1);
}

#[test]
fn a_commit_records_its_new_keys_in_one_group_row_and_duplicates_in_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    log.commit(&[one("a", 1), one("b", 1)], 5).unwrap();
    // Seqs 2 and 3; ("a", 1) again is a duplicate and takes no seq.
    log.commit(&[one("a", 1), one("c", 1), one("a", 2)], 6)
        .unwrap();
    let txn = log.database().begin_read().unwrap();
    let groups = txn.open_table(crate::store::tables::DEDUPE_GROUP).unwrap();
    let rows: Vec<(u64, crate::store::rows::DedupeGroup)> = groups
        .iter()
        .unwrap()
        .map(|row| {
            let (k, v) = row.unwrap();
            let group = crate::store::rows::DedupeGroup::decode(v.value()).unwrap();
            (k.value(), group)
        })
        .collect();
    let key = |sensor: &str, ts: u64| Dedupe::SensorTs.key(&reading(sensor, ts)).unwrap();
    let described: Vec<(u64, u64, u64, Vec<Vec<u8>>)> = rows
        .iter()
        .map(|(first, g)| {
            let keys = g.keys().map(<[u8]>::to_vec).collect();
            (*first, g.last_seq, g.inserted_ms, keys)
        })
        .collect();
    assert_eq!(
        described,
        [
            (0, 1, 5, vec![key("a", 1), key("b", 1)]),
            (2, 3, 6, vec![key("c", 1), key("a", 2)]),
        ]
    );
    assert_eq!(log.dedupe_len().unwrap(), 4);
}

#[test]
fn time_major_keys_keep_a_commits_new_keys_together_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let batch: Vec<_> = (0..50).map(|s| one(&format!("s{s:02}"), 7)).collect();
    log.commit(&batch, 0).unwrap();
    log.commit(&[one("s00", 6), one("s49", 8)], 0).unwrap();
    let txn = log.database().begin_read().unwrap();
    let index = txn.open_table(DEDUPE).unwrap();
    let keys: Vec<Vec<u8>> = index
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value().to_vec())
        .collect();
    let order: Vec<(u64, String)> = keys
        .iter()
        .map(|k| {
            let ts = u64::from_be_bytes(k[1..9].try_into().unwrap());
            (ts, String::from_utf8(k[11..].to_vec()).unwrap())
        })
        .collect();
    let mut expected: Vec<(u64, String)> = (0..50).map(|s| (7, format!("s{s:02}"))).collect();
    expected.insert(0, (6, "s00".into()));
    expected.push((8, "s49".into()));
    assert_eq!(order, expected, "sorted by time, then sensor");
}

#[test]
fn a_redelivery_of_a_reading_an_older_agent_took_is_a_duplicate_until_its_key_ages_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(1 << 20, OnFull::Backpressure);
    l.dedupe_max_entries = 2;
    let mut log = open(&dir, l);
    // What an agent before v0.2 left: reading ("a", 1) as seq 0 under its sensor-major key.
    let db = log.database();
    let txn = db.begin_write().unwrap();
    {
        let old = Dedupe::SensorTs.legacy_key(&reading("a", 1)).unwrap();
        txn.open_table(DEDUPE)
            .unwrap()
            .insert(old.as_slice(), 0)
            .unwrap();
        let aged = crate::store::rows::DedupeAge {
            inserted_ms: 0,
            key: &old,
        };
        let mut age = txn.open_table(crate::store::tables::DEDUPE_AGE).unwrap();
        age.insert(0, aged.encode().as_slice()).unwrap();
        let mut meta = txn.open_table(crate::store::tables::META).unwrap();
        meta.insert(crate::store::meta::NEXT_SEQ, 1).unwrap();
    }
    txn.commit().unwrap();
    let done = log.commit(&[one("a", 1), one("a", 2)], 0).unwrap();
    assert_eq!((done.accepted, done.duplicate), (1, 1));
    assert_eq!(log.dedupe_len().unwrap(), 2, "no new key for the duplicate");
    // Two newer keys push the old one out of the index (`dedupe_max_entries = 2`): its
    // redelivery is then accepted, as any key past the bounds is.
    log.commit(&[one("b", 1)], 0).unwrap();
    assert_eq!(log.commit(&[one("a", 1)], 0).unwrap().accepted, 1);
}

#[test]
fn a_redelivery_into_a_database_v0_1_0_wrote_is_a_duplicate() {
    // The checked-in database of the previous release (`tests/fixtures/v0.1.0/README.md`):
    // reading i is sensor d{i % 5} at 1700000000000 + 20 i ms, i < 500.
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v0.1.0/ingest.redb");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture, dir.path().join("ingest.redb")).unwrap();
    let mut l = limits(1 << 30, OnFull::Backpressure);
    l.dedupe_max_entries = 1_000_000;
    let mut log = open(&dir, l);
    let ts = |i: u64| 1_700_000_000_000 + 20 * i;
    let again = [one("d3", ts(3)), one("d4", ts(499)), one("d0", ts(500))];
    let done = log.commit(&again, 0).unwrap();
    assert_eq!(
        (done.accepted, done.duplicate),
        (1, 2),
        "3 and 499 were taken by v0.1.0"
    );
}

/// A log whose quota holds three readings (`per` bytes each), and a batch of five.
fn five_for_a_quota_of_three(
    on_full: OnFull,
) -> (tempfile::TempDir, IngestLog, u64, Vec<Submission>) {
    let dir = tempfile::tempdir().unwrap();
    let per = one("a", 0).estimated_bytes();
    let log = open(&dir, limits(per * 3, on_full));
    let batch = (0..5).map(|i| one("a", i)).collect();
    (dir, log, per, batch)
}

#[test]
fn backpressure_commits_nothing_past_the_quota_until_a_trim_frees_space() {
    let (_dir, mut log, per, batch) = five_for_a_quota_of_three(OnFull::Backpressure);
    let done = log.commit(&batch, 0).unwrap();
    assert_eq!(done.submissions, 3);
    assert_eq!(log.commit(&batch[3..], 0).unwrap().submissions, 0);
    assert_eq!(log.stats().unwrap().log_bytes, per * 3);
    assert_eq!(log.trim_readings_through(1).unwrap(), 2);
    assert_eq!(log.commit(&batch[3..], 0).unwrap().submissions, 2);
    assert_eq!(log.stats().unwrap().dropped, 0);
}

#[test]
fn drop_oldest_evicts_and_counts_the_oldest_readings() {
    let (_dir, mut log, _, batch) = five_for_a_quota_of_three(OnFull::DropOldest);
    let done = log.commit(&batch, 0).unwrap();
    assert_eq!((done.submissions, done.accepted, done.dropped), (5, 5, 2));
    let seqs: Vec<u64> = log
        .readings_from(0, 10)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(log.stats().unwrap().dropped, 2);
}

#[test]
fn one_submission_larger_than_the_quota_cannot_wedge_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(10, OnFull::Backpressure));
    assert_eq!(log.commit(&[one("a", 1)], 0).unwrap().submissions, 1);
    assert_eq!(log.commit(&[one("a", 2)], 0).unwrap().submissions, 0);
}

#[test]
fn dead_letters_are_stored_capped_and_counted_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let big = vec![b'x'; 5000];
    let dl = DeadLetter::new(5, "broker", &"payload is not JSON", &big);
    let s = Submission {
        readings: Vec::new(),
        dead_letters: vec![dl],
        state: Vec::new(),
        ack: None,
    };
    assert_eq!(log.commit(&[s], 0).unwrap().rejected, 1);
    let rows = log.dead_letters_from(0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    let bytes = &rows[0].1;
    assert_eq!(bytes[0], 1);
    assert_eq!(&bytes[9..11], &6u16.to_le_bytes());
    assert_eq!(&bytes[11..17], b"broker");
    assert_eq!(
        bytes.len(),
        1 + 8 + 2 + 6 + 2 + 19 + 4 + DEAD_LETTER_PAYLOAD_CAP
    );
    assert_eq!(log.stats().unwrap().rejected, 1);
}

#[test]
fn gaps_in_a_sensors_device_sequence_count_as_upstream_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let with_seq = |ts, seq| {
        let mut r = reading("a", ts);
        r.seq = Some(seq);
        sub(vec![(r, Dedupe::SensorSeq)])
    };
    log.commit(
        &[
            with_seq(1, 1),
            with_seq(2, 2),
            with_seq(3, 5),
            with_seq(4, 5),
        ],
        0,
    )
    .unwrap();
    let stats = log.stats().unwrap();
    assert_eq!((stats.upstream_gaps, stats.duplicate), (2, 1));
}

fn acked(counter: &Arc<AtomicUsize>, s: &str, ts: u64) -> Submission {
    let c = counter.clone();
    let mut s = one(s, ts);
    s.ack = Some(Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
    }));
    s
}

struct Running {
    submissions: mpsc::Sender<Submission>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

fn start(log: IngestLog, dir: &tempfile::TempDir, capacity: usize) -> Running {
    let (submissions, rx) = mpsc::channel(capacity);
    let cancel = CancellationToken::new();
    let writer = Writer {
        log,
        path: dir.path().join("ingest.redb"),
        batch: BatchLimits {
            max_readings: 100,
            max_wait: Duration::from_millis(5),
        },
        counters: Arc::new(Counters::default()),
        submissions: rx,
        cancel: cancel.clone(),
        committed: None,
    };
    Running {
        submissions,
        cancel,
        task: tokio::spawn(writer.run()),
    }
}

#[tokio::test]
async fn the_writer_acks_every_submission_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let acks = Arc::new(AtomicUsize::new(0));
    let w = start(log, &dir, 64);
    for i in 0..250 {
        w.submissions
            .send(acked(&acks, "a", i % 200))
            .await
            .unwrap();
    }
    drop(w.submissions);
    w.task.await.unwrap().unwrap();
    assert_eq!(acks.load(Ordering::SeqCst), 250, "duplicates are acked too");
    let log = open(&dir, limits(1 << 20, OnFull::Backpressure));
    let stats = log.stats().unwrap();
    assert_eq!((stats.readings, stats.duplicate), (200, 50));
}

/// Frees the log the way the windowing stage does: a trim in a transaction of its own on the
/// shared database, which the writer notices at its next quota re-check.
fn trim_all(db: &redb::Database) {
    let txn = db.begin_write().unwrap();
    IngestLog::trim_in(&txn, Some(u64::MAX), None).unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn under_backpressure_the_writer_withholds_acks_until_a_trim() {
    let dir = tempfile::tempdir().unwrap();
    let per = one("a", 0).estimated_bytes();
    let log = open(&dir, limits(per * 50, OnFull::Backpressure));
    let db = log.database();
    let acks = Arc::new(AtomicUsize::new(0));
    let w = start(log, &dir, 2);
    for i in 0..50 {
        w.submissions.send(acked(&acks, "a", i)).await.unwrap();
    }
    // More than one batch (100) plus the channel (2) can hold.
    let blocked: Vec<_> = (50..350).map(|i| acked(&acks, "a", i)).collect();
    let sender = w.submissions.clone();
    let feeder = tokio::spawn(async move {
        for s in blocked {
            sender.send(s).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        acks.load(Ordering::SeqCst),
        50,
        "nothing past the quota is acked"
    );
    assert!(
        !feeder.is_finished(),
        "the channel is full: sources feel the backpressure"
    );
    // Each trim frees the whole quota; the writer re-checks every 200 ms (QUOTA_RECHECK).
    for _ in 0..300 {
        if acks.load(Ordering::SeqCst) == 350 {
            break;
        }
        trim_all(&db);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    feeder.await.unwrap();
    assert_eq!(acks.load(Ordering::SeqCst), 350);
    w.cancel.cancel();
    w.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancelled_writer_never_acks_what_it_did_not_commit() {
    let dir = tempfile::tempdir().unwrap();
    let per = one("a", 0).estimated_bytes();
    let log = open(&dir, limits(per, OnFull::Backpressure));
    let acks = Arc::new(AtomicUsize::new(0));
    let w = start(log, &dir, 8);
    w.submissions.send(acked(&acks, "a", 1)).await.unwrap();
    w.submissions.send(acked(&acks, "a", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.cancel.cancel();
    w.task.await.unwrap().unwrap();
    assert_eq!(acks.load(Ordering::SeqCst), 1);
}

#[test]
fn a_submissions_state_rows_commit_with_it_and_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one reading: the second submission waits (backpressure), rows and all.
    let mut log = open(&dir, limits(100, OnFull::Backpressure));
    let row = |k: &str, v: u8| StateWrite {
        key: k.into(),
        value: vec![v],
    };
    let mut first = one("a", 1);
    first.state = vec![row("sparkplug/s/g/n", 1), row("sparkplug/s/g/n", 2)];
    let mut second = one("b", 1);
    second.state = vec![row("sparkplug/s/g/m", 3)];
    assert_eq!(log.commit(&[first, second], 0).unwrap().submissions, 1);
    let db = log.database();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(crate::store::tables::SOURCE_STATE).unwrap();
    assert_eq!(
        t.get("sparkplug/s/g/n").unwrap().unwrap().value(),
        [2],
        "in order"
    );
    assert!(t.get("sparkplug/s/g/m").unwrap().is_none(), "not committed");
}
