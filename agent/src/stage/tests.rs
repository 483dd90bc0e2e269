//! The stage against a real redb file: outputs, cursors, state and trimming commit together,
//! and a stage reopened from the file continues exactly where the last commit left it.

use std::path::Path;

use super::*;
use crate::config::OnFull;
use crate::ingest::{Dedupe, Limits, Submission};

const CONFIG: &str = r#"
[agent]
id = "gw"
data_dir = "/unused"

[[pipeline]]
name = "raw"
sensors = ["raw.*"]

[[pipeline]]
name = "win"
sensors = ["w.*"]
[pipeline.window]
kind = "tumbling"
size_ms = 10
idle_timeout_ms = 1000
"#;

fn config(text: &str) -> Arc<Config> {
    Arc::new(crate::config::fixtures::config(text))
}

fn log(dir: &Path) -> IngestLog {
    IngestLog::open(
        &dir.join("ingest.redb"),
        Limits {
            quota_bytes: 1 << 30,
            on_full: OnFull::Backpressure,
            dedupe_max_entries: 1000,
            dedupe_max_age_ms: 1 << 40,
        },
    )
    .unwrap()
}

fn put(log: &mut IngestLog, readings: &[(&str, u64, f64)], dead: usize) {
    let sub = Submission {
        readings: readings
            .iter()
            .map(|(s, ts, v)| {
                let r = Reading {
                    sensor: (*s).into(),
                    ts_ms: *ts,
                    value: *v,
                    seq: None,
                };
                (r, Dedupe::None)
            })
            .collect(),
        dead_letters: (0..dead)
            .map(|i| DeadLetter::new(1, "mqtt-a", &"bad json", &[i as u8]))
            .collect(),
        state: Vec::new(),
        ack: None,
    };
    log.commit(&[sub], 0).unwrap();
}

/// A fresh log in a temporary directory (kept alive by the caller) holding `readings` and
/// `dead` dead letters.
fn log_with(readings: &[(&str, u64, f64)], dead: usize) -> (tempfile::TempDir, IngestLog) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = log(dir.path());
    put(&mut log, readings, dead);
    (dir, log)
}

fn outbox_all(db: &Database) -> Vec<OutboxRecord> {
    outbox::read_after(db, 0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

fn partials(records: &[OutboxRecord]) -> Vec<Partial> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Partial)
        .map(|r| Partial::decode(&r.payload).unwrap())
        .collect()
}

#[test]
fn a_pipeline_without_a_window_passes_readings_through_as_json_and_trims_the_log() {
    let (_dir, log) = log_with(&[("raw.a", 5, 1.5), ("nowhere", 6, 1.0)], 0);
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 0).unwrap();
    let step = stage.step(0).unwrap();
    assert_eq!((step.readings, step.records), (2, 1));
    let records = outbox_all(&log.database());
    assert_eq!(records[0].kind, RecordKind::Reading);
    assert_eq!(records[0].key, b"raw.a");
    let json: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"sensor": "raw.a", "ts": 5, "value": 1.5, "seq": null})
    );
    assert_eq!(
        log.stats().unwrap().readings,
        0,
        "consumed readings are trimmed"
    );
    assert_eq!(stage.counters.unrouted.load(Ordering::Relaxed), 1);
}

#[test]
fn dead_letters_reach_the_outbox_with_their_own_cursor() {
    let (_dir, log) = log_with(&[], 3);
    let mut stage = Stage::open(log.database(), config(CONFIG), 2, 0).unwrap();
    stage.step(0).unwrap();
    stage.step(0).unwrap();
    stage.step(0).unwrap();
    let records = outbox_all(&log.database());
    assert_eq!(records.len(), 3);
    assert!(records
        .iter()
        .all(|r| r.kind == RecordKind::DeadLetter && r.key == b"mqtt-a"));
    assert_eq!(log.stats().unwrap().dead_letters, 0);
}

#[test]
fn a_stage_reopened_between_batches_emits_what_one_uninterrupted_stage_emits() {
    let input: Vec<(String, u64, f64)> = (0..400u64)
        .map(|i| (format!("w.{}", i % 7), i / 2 + (i % 5), i as f64))
        .collect();
    let run = |reopen_every: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log(dir.path());
        for chunk in input.chunks(50) {
            let chunk: Vec<(&str, u64, f64)> =
                chunk.iter().map(|(s, t, v)| (s.as_str(), *t, *v)).collect();
            put(&mut log, &chunk, 0);
        }
        let mut stage = Stage::open(log.database(), config(CONFIG), 13, 0).unwrap();
        for i in 1.. {
            if stage.step(0).unwrap().readings == 0 {
                break;
            }
            if i % reopen_every == 0 {
                stage = Stage::open(log.database(), config(CONFIG), 13, 0).unwrap();
            }
        }
        partials(&outbox_all(&log.database()))
    };
    let straight = run(usize::MAX);
    assert!(straight.len() > 50);
    for every in [1, 2, 5] {
        assert_eq!(run(every), straight, "reopened every {every} batches");
    }
}

#[test]
fn an_idle_close_is_committed_once_and_a_reopened_stage_treats_the_window_as_closed() {
    let (_dir, mut log) = log_with(&[("w.a", 5, 1.0)], 0);
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 0).unwrap();
    stage.step(0).unwrap();
    assert!(partials(&outbox_all(&log.database())).is_empty());
    stage.step(999).unwrap();
    stage.step(1000).unwrap();
    assert_eq!(partials(&outbox_all(&log.database())).len(), 1);
    // Restart much later: nothing is closed again, and the old window stays closed.
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 50_000).unwrap();
    stage.step(60_000).unwrap();
    put(&mut log, &[("w.a", 7, 2.0)], 0);
    stage.step(60_001).unwrap();
    let records = outbox_all(&log.database());
    assert_eq!(partials(&records).len(), 1);
    assert_eq!(records.last().unwrap().kind, RecordKind::Late);
    assert_eq!(stage.counters.late_forwarded.load(Ordering::Relaxed), 1);
}

#[test]
fn a_changed_window_shape_sends_the_stored_windows_before_starting_afresh() {
    let (_dir, log) = log_with(&[("w.a", 5, 1.0), ("w.b", 6, 2.0)], 0);
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 0).unwrap();
    stage.step(0).unwrap();
    drop(stage);
    let changed = CONFIG.replace("size_ms = 10", "size_ms = 20");
    let mut stage = Stage::open(log.database(), config(&changed), 100, 0).unwrap();
    stage.step(0).unwrap();
    let p = partials(&outbox_all(&log.database()));
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|p| p.window_end_ms == 10));
    assert_eq!(stage.open_windows(), vec![("win".to_owned(), 0)]);
    // The old rows went with that commit: a further restart finds nothing to close or restore.
    drop(stage);
    let mut stage = Stage::open(log.database(), config(&changed), 100, 0).unwrap();
    assert_eq!(stage.open_windows(), vec![("win".to_owned(), 0)]);
    stage.step(0).unwrap();
    assert_eq!(partials(&outbox_all(&log.database())).len(), 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// The model-based form of the crash argument: whatever the batch size and wherever the
    /// stage is dropped (a crash between commits) and reopened, the outbox holds the partials
    /// of one uninterrupted run, in the same order.
    #[test]
    fn any_batch_size_and_any_restart_points_give_the_partials_of_a_straight_run(
        batch in 1usize..64,
        restarts in proptest::collection::vec(0usize..40, 0..6),
        seed in 0u64..1000,
    ) {
        let input: Vec<(String, u64, f64)> = (0..300u64)
            .map(|i| (format!("w.{}", (i + seed) % 5), i / 3 + (i * seed) % 7, i as f64))
            .collect();
        let run = |batch: usize, restarts: &[usize]| {
            let dir = tempfile::tempdir().unwrap();
            let mut log = log(dir.path());
            let chunk: Vec<(&str, u64, f64)> =
                input.iter().map(|(s, t, v)| (s.as_str(), *t, *v)).collect();
            put(&mut log, &chunk, 0);
            let mut stage = Stage::open(log.database(), config(CONFIG), batch, 0).unwrap();
            for i in 0.. {
                if stage.step(0).unwrap().readings == 0 {
                    break;
                }
                if restarts.contains(&i) {
                    stage = Stage::open(log.database(), config(CONFIG), batch, 0).unwrap();
                }
            }
            partials(&outbox_all(&log.database()))
        };
        let straight = run(1000, &[]);
        proptest::prop_assert_eq!(run(batch, &restarts), straight);
    }
}

#[test]
fn partial_format_json_writes_the_json_form_of_the_same_partials() {
    let readings = [("w.a", 1, 1.0), ("w.a", 3, -2.5), ("w.b", 12, 7.0)];
    let run = |text: &str| {
        let (_dir, log) = log_with(&readings, 0);
        let mut stage = Stage::open(log.database(), config(text), 100, 0).unwrap();
        stage.step(0).unwrap();
        stage.step(5_000).unwrap();
        outbox_all(&log.database())
            .into_iter()
            .filter(|r| r.kind == RecordKind::Partial)
            .collect::<Vec<_>>()
    };
    let kafka = "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n";
    let postcard = run(&format!("{CONFIG}{kafka}"));
    let json = run(&format!("{CONFIG}{kafka}partial_format = \"json\"\n"));
    assert_eq!(postcard.len(), 2, "both windows closed");
    assert_eq!(json.len(), postcard.len());
    for (p, j) in postcard.iter().zip(&json) {
        assert_eq!(j.payload.first(), Some(&b'{'), "a JSON object");
        let from_json: Partial = serde_json::from_slice(&j.payload).unwrap();
        assert_eq!(from_json, Partial::decode(&p.payload).unwrap());
        assert_eq!(j.key, p.key);
    }
}

#[test]
fn a_caught_up_stage_sleeps_long_only_while_no_window_waits_for_an_idle_close() {
    let (_dir, log) = log_with(&[], 0);
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 0).unwrap();
    stage.step(0).unwrap();
    assert_eq!(stage.idle_wait(), IDLE_WAIT_MAX, "nothing open");
    let (_dir, log) = log_with(&[("w.a", 5, 1.0)], 0);
    let mut stage = Stage::open(log.database(), config(CONFIG), 100, 0).unwrap();
    stage.step(0).unwrap();
    assert_eq!(
        stage.idle_wait(),
        IDLE_TICK,
        "a window waits for its idle close"
    );
    stage.step(1000).unwrap();
    assert_eq!(partials(&outbox_all(&log.database())).len(), 1);
    assert_eq!(stage.idle_wait(), IDLE_WAIT_MAX, "closed");
}
