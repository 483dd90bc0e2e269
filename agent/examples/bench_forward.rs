//! Drain benchmark of the forwarder (a program that prints figures, not a timed test).
//!
//! Fills a fresh outbox with `records` records (default 1,000,000; 100-byte payloads, 1,000
//! keys, kind "reading"), then runs the forwarder (the same code `edge-agent run` runs, on a
//! thread of this process) against the broker at `$KAFKA_BOOTSTRAP` (default
//! `127.0.0.1:19092`) until every record is committed, and prints the drain rate, commit
//! figures, and this process's CPU time and RSS during the drain (sampled every 50 ms) and its
//! peak (VmHWM, the issue's figure: fill and drain both count).
//!
//! ```text
//! . .services/env
//! cargo run --release -p edge-agent --example bench_forward -- [records] [batch_max_records] [partitions]
//! # extra librdkafka settings: BENCH_CLIENT="linger.ms=20,socket.nagle.disable=false"
//! ```
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick run:
//! `-- 100000`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_agent::config::Config;
use edge_agent::forward::{ForwardMetrics, Forwarder};
use edge_agent::outbox::{self, OutboxRecord, RecordKind};
use edge_bench::line::Family;
use edge_bench::program::{arg, client_settings_from_env, process_cpu, status_kib, Process};
use edge_tests::config::kafka_topics;
use tokio_util::sync::CancellationToken;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("forward_drain");

fn main() -> anyhow::Result<()> {
    let records = arg(1, 1_000_000);
    let batch = arg(2, 10_000);
    let partitions = arg(3, 1);
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    // Extra librdkafka settings for experiments: BENCH_CLIENT="key=value,key=value".
    let client = client_settings_from_env();
    let dir = tempfile::tempdir()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = format!("bench-{nanos}");
    let text = format!(
        r#"[agent]
id = "{id}"
data_dir = {dir:?}
[[pipeline]]
name = "p"
sensors = ["*"]
[kafka]
bootstrap_servers = "{bootstrap}"
batch_max_records = {batch}
partitions = {partitions}
[kafka.client]
{client}
{topics}"#,
        topics = kafka_topics(&format!("{id}.readings"), &id, &format!("{id}.progress")),
        dir = dir.path().display().to_string(),
    );
    let config = Config::from_toml(Path::new("bench.toml"), &text)?;
    // The agent's page cache (`ingest::CACHE_BYTES`), not redb's default of 1 GiB, which the
    // fill would grow to the outbox's size and the drain's RSS would then include.
    let db = Arc::new(
        redb::Builder::new()
            .set_cache_size(edge_agent::ingest::CACHE_BYTES)
            .create(config.ingest_path())?,
    );
    outbox::create(&db)?;

    let fill = Instant::now();
    let payload = vec![b'x'; 100];
    let mut seq = 0u64;
    while seq < records {
        let n = (records - seq).min(10_000);
        let chunk: Vec<OutboxRecord> = (seq..seq + n)
            .map(|i| OutboxRecord {
                kind: RecordKind::Reading,
                created_ms: 0,
                route: "p".to_owned(),
                key: format!("sensor-{}", i % 1000).into_bytes(),
                payload: payload.clone(),
            })
            .collect();
        let txn = db.begin_write()?;
        outbox::append(&txn, &chunk)?;
        txn.commit()?;
        seq += n;
    }
    println!(
        "filled the outbox with {records} records (100-byte payloads) in {:.2} s",
        fill.elapsed().as_secs_f64()
    );

    let metrics = Arc::new(ForwardMetrics::default());
    let cancel = CancellationToken::new();
    let forwarder = Forwarder::from_config(&config, db.clone(), metrics.clone())
        .ok_or_else(|| anyhow::anyhow!("no [kafka]"))?;
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (rss_max, sampling) = (rss_max.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                rss_max.fetch_max(status_kib(Process::This, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let cpu0 = process_cpu();
    let rss0 = status_kib(Process::This, "VmRSS:");
    let start = Instant::now();
    let token = cancel.clone();
    let thread = std::thread::spawn(move || forwarder.run(token));
    let mut first_commit: Option<Instant> = None;
    let mut last_print = Instant::now();
    while metrics.last_committed_seq.load(Ordering::Relaxed) < records {
        if thread.is_finished() {
            break;
        }
        if first_commit.is_none() && metrics.transactions_committed.load(Ordering::Relaxed) > 0 {
            first_commit = Some(Instant::now());
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!(
                "  {:>9} committed after {:.1} s",
                metrics.last_committed_seq.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = start.elapsed().as_secs_f64();
    let cpu = process_cpu().saturating_sub(cpu0).as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    cancel.cancel();
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("forwarder thread panicked"))??;

    let commits = metrics.transactions_committed.load(Ordering::Relaxed);
    let sum_us = metrics.commit_latency_us_sum.load(Ordering::Relaxed);
    let max_us = metrics.commit_latency_us_max.load(Ordering::Relaxed);
    let bytes = metrics.bytes_committed.load(Ordering::Relaxed);
    let steady = first_commit.map_or(total, |t| t.elapsed().as_secs_f64());
    println!("broker {bootstrap}, batch_max_records {batch}, {partitions} partition(s), zstd");
    println!(
        "drained {records} records in {total:.2} s from start-up: {:.0} records/s ({:.1} MB/s payload)",
        records as f64 / total,
        bytes as f64 / total / 1e6
    );
    println!(
        "from the first commit on: {:.0} records/s",
        records as f64 / steady.max(1e-9)
    );
    println!(
        "{commits} transactions; transaction (send + commit) latency mean {:.1} ms, max {:.1} ms",
        sum_us as f64 / commits.max(1) as f64 / 1000.0,
        max_us as f64 / 1000.0
    );
    println!(
        "process CPU during the drain: {cpu:.2} s ({:.0}% of one core); RSS {} MiB before, max {} MiB during",
        cpu / total * 100.0,
        rss0 / 1024,
        rss_max.load(Ordering::Relaxed) / 1024
    );
    let hwm = status_kib(Process::This, "VmHWM:");
    println!(
        "peak RSS of the process (VmHWM, fill and drain): {} MiB",
        hwm / 1024
    );
    let params =
        format!("{records} records x 100 B, batch {batch}, {partitions} partition(s), zstd");
    FIGURES.print_with_target(
        "drain",
        records as f64 / total,
        "records/s",
        &params,
        ">= 200000",
    );
    FIGURES.print(
        "drain_after_first_commit",
        records as f64 / steady.max(1e-9),
        "records/s",
        &params,
    );
    FIGURES.print(
        "transaction_mean",
        sum_us as f64 / commits.max(1) as f64 / 1000.0,
        "ms",
        &params,
    );
    FIGURES.print("transaction_max", max_us as f64 / 1000.0, "ms", &params);
    FIGURES.print("cpu", cpu / total * 100.0, "% of one core", &params);
    FIGURES.print(
        "rss_max",
        rss_max.load(Ordering::Relaxed) as f64 / 1024.0,
        "MiB",
        &params,
    );
    FIGURES.print_with_target("rss_peak", hwm as f64 / 1024.0, "MiB", &params, "<= 48");
    Ok(())
}
