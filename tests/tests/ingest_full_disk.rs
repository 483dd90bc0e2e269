//! The ingest log on a full disk: a real filesystem (a small tmpfs mounted for the test, so it
//! needs root, as CI and the dev machines run) filled to the last byte while readings keep
//! coming. The writer must not crash or corrupt the database, must not acknowledge anything it
//! could not commit, and must commit everything once space frees.

mod ingest_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::config::OnFull;
use edge_agent::ingest::writer::{BatchLimits, Writer};
use edge_agent::ingest::{Counters, Dedupe, IngestLog, Limits, Submission};
use edge_agent::reading::Reading;
use ingest_support::each_reading;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test needs root (CI and dev machines run as root)"
        );
        SmallDisk { _dir: dir, path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes zeros into `file` until the filesystem refuses; returns the bytes written.
fn fill(file: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(file).expect("ballast");
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = f.sync_all();
    written
}

fn reading(i: u64) -> Reading {
    Reading {
        sensor: format!("sensor-{}", i % 50),
        ts_ms: 1_700_000_000_000 + i,
        value: i as f64,
        seq: None,
    }
}

async fn wait_for(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_without_crashing_and_everything_commits_once_space_frees() {
    const N: u64 = 20_000;
    let disk = SmallDisk::mount("8m");
    let db_path = disk.path.join("ingest.redb");
    let limits = Limits {
        quota_bytes: 1 << 30,
        on_full: OnFull::Backpressure,
        dedupe_max_entries: 1_000_000,
        dedupe_max_age_ms: 3_600_000,
    };
    let log = IngestLog::open(&db_path, limits).expect("open");
    let ballast = disk.path.join("ballast");
    let filled = fill(&ballast);
    println!("ballast: {filled} bytes; the disk is full");

    let (tx, rx) = mpsc::channel(256);
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let writer = tokio::spawn(
        Writer {
            log,
            path: db_path.clone(),
            batch: BatchLimits {
                max_readings: 500,
                max_wait: Duration::from_millis(2),
            },
            counters: counters.clone(),
            submissions: rx,
            cancel: cancel.clone(),
            committed: None,
        }
        .run(),
    );
    let acked = Arc::new(AtomicU64::new(0));
    let producer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let acked = acked.clone();
                let submission = Submission {
                    readings: vec![(reading(i), Dedupe::SensorTs)],
                    dead_letters: Vec::new(),
                    state: Vec::new(),
                    ack: Some(Box::new(move || {
                        acked.fetch_add(1, Ordering::SeqCst);
                    })),
                };
                if tx.send(submission).await.is_err() {
                    return;
                }
            }
        })
    };

    wait_for("commits failing on the full disk", 60, || {
        counters.write_errors.load(Ordering::Relaxed) >= 3
    })
    .await;
    let acked_while_full = acked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        acked.load(Ordering::SeqCst),
        acked_while_full,
        "nothing is acknowledged while commits fail"
    );
    assert!(
        !writer.is_finished(),
        "the writer keeps retrying: a full disk is not fatal"
    );
    println!(
        "full: {acked_while_full} acked, {} write errors",
        counters.write_errors.load(Ordering::Relaxed)
    );

    std::fs::remove_file(&ballast).expect("free the space");
    wait_for("every reading committed and acked", 120, || {
        acked.load(Ordering::SeqCst) == N
    })
    .await;
    producer.await.expect("producer");
    cancel.cancel();
    writer
        .await
        .expect("writer task")
        .expect("writer ended cleanly");

    let log = IngestLog::open(&db_path, limits).expect("the database opens after the full disk");
    let mut seen = std::collections::BTreeSet::new();
    each_reading(&log, |r| {
        assert!(
            seen.insert((r.sensor, r.ts_ms)),
            "a reading is stored twice"
        );
    });
    assert_eq!(
        seen.len() as u64,
        N,
        "every acknowledged reading is in the log"
    );
    let stats = log.stats().expect("stats");
    assert_eq!((stats.accepted, stats.duplicate), (N, 0));
}
