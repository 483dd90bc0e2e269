//! Benchmark: partials merged and windows finalized per second by one `edge-consumer` instance
//! with exactly-once on (read_committed, one transaction per batch with finals, changelog and
//! offsets), against a real broker; and memory per open window.
//!
//! ```text
//! cargo run --release -p edge-consumer --example bench_consumer -- [BOOTSTRAP] [SERIES] [WINDOWS] [INSTANCES] [PARTITIONS]
//! ```
//! Defaults: `$KAFKA_BOOTSTRAP` or 127.0.0.1:19092, 2000 series, 20 windows, 3 gateways, 1
//! instance, 3 input partitions. With INSTANCES > 1 that many consumers (one group, each its
//! own `instance_id` and thread, as separate processes would be) share the partitions and the
//! figures are their sum: the scaling figure (`-- BOOTSTRAP 5000 20 3 6`). The input (3 x SERIES x WINDOWS partials, watermark = window end, so each
//! window is final when its third gateway's partial arrives) is produced first, then the
//! consumer is timed from start until every partial is merged and every window emitted.
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick run:
//! `-- 127.0.0.1:19092 500 10`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_bench::line::Family;
use edge_bench::program::{status_kib, Process};
use edge_consumer::config::Config;
use edge_consumer::merge::{PartitionState, Settings};
use edge_consumer::run::{run, Metrics};
use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::{Partial, MAX_ENCODED_LEN};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("consumer");

fn partial(agent: &str, series: &str, start: i64, size: i64, seed: u64) -> Partial {
    let mut aggregate = Aggregate::new();
    for i in 0..4u64 {
        let v = 10.0 + ((seed * 31 + i * 7) % 1000) as f64 / 10.0;
        let _ = aggregate.add(start + i as i64 * 100, v);
    }
    Partial {
        series: series.try_into().unwrap_or_default(),
        window_start_ms: start,
        window_end_ms: start + size,
        agent: agent.try_into().unwrap_or_default(),
        watermark_ms: start + size,
        revision: 0,
        aggregate,
    }
}

fn memory_per_open_window() {
    let settings = Settings {
        rollup_ms: None,
        idle_timeout_ms: i64::MAX / 4,
        revisions: true,
        horizon_ms: i64::MAX / 4,
        max_open_windows: usize::MAX,
        max_finalized_windows: usize::MAX,
        max_sources: usize::MAX,
    };
    let mut state = PartitionState::new(settings);
    // One source that never passes the windows' ends: every window stays open.
    let hold = partial("holder", "hold", 0, 10, 1);
    let mut hold = hold;
    hold.watermark_ms = 0;
    let _ = state.apply("all", &hold, 0);
    let n = 100_000;
    let before = status_kib(Process::This, "VmRSS:");
    for i in 0..n {
        let mut p = partial("gw", "series.name.0001", i * 10_000, 10_000, i as u64);
        p.watermark_ms = 0;
        let _ = state.apply("all", &p, 0);
        if i % 1000 == 0 {
            let _ = state.take_changes();
        }
    }
    let _ = state.take_changes();
    let after = status_kib(Process::This, "VmRSS:");
    println!(
        "memory: {} open windows (4 readings each, group key of 3 bytes): RSS +{} KiB = {:.0} bytes per open window",
        state.open_windows(),
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 * 1024.0 / n as f64
    );
    FIGURES.print_with_target(
        "memory_per_open_window",
        after.saturating_sub(before) as f64 * 1024.0 / n as f64,
        "B of RSS",
        &format!("{n} open windows"),
        "<= 1,536",
    );
}

fn main() {
    // RUST_LOG=edge_consumer=debug shows each transaction's send and commit times.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut args = std::env::args().skip(1);
    let bootstrap = args
        .next()
        .or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok())
        .unwrap_or_else(|| "127.0.0.1:19092".into());
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let windows: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let instances: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let partitions: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let gateways = ["gw-a", "gw-b", "gw-c"];
    memory_per_open_window();

    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let input = format!("bench-consumer-in-{tag}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(admin.create_topics(
        [&NewTopic::new(
            &input,
            partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new(),
    ))
    .expect("create topic");

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("bench-consumer-producer-{tag}"))
        .set("linger.ms", "20")
        .set("retry.backoff.ms", "10")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init");
    let size = 10_000;
    let base = 1_700_000_000_000i64;
    let total = gateways.len() * series * windows as usize;
    let t0 = Instant::now();
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let mut in_txn = 0;
    producer.begin_transaction().expect("begin");
    for w in 0..windows {
        for g in gateways {
            for s in 0..series {
                let name = format!("bench.series.{s:05}");
                let p = partial(g, &name, base + w * size, size, (w as u64) << 20 | s as u64);
                let n = p.encode(&mut buf).expect("encode");
                let mut record = BaseRecord::to(&input).key(&name).payload(&buf[..n]);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            producer.poll(Duration::from_millis(5));
                            record = r;
                        }
                    }
                }
                in_txn += 1;
                if in_txn == 10_000 {
                    producer
                        .commit_transaction(Duration::from_secs(60))
                        .expect("commit");
                    producer.begin_transaction().expect("begin");
                    in_txn = 0;
                }
            }
        }
    }
    producer
        .commit_transaction(Duration::from_secs(60))
        .expect("commit");
    println!(
        "produced {total} partials ({series} series x {windows} windows x 3 gateways, {partitions} partitions) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let config_text = format!(
        r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "bench-consumer-{tag}"
instance_id = "INSTANCE"
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
inputs = ["{input}"]
finals = "bench-consumer-finals-{tag}"
changelog = "bench-consumer-changelog-{tag}"
dead_letters = "bench-consumer-dead-{tag}"
[window]
idle_timeout_ms = 600000
"#
    );
    let stop = Arc::new(AtomicBool::new(false));
    let all_metrics: Vec<Arc<Metrics>> = (0..instances)
        .map(|_| Arc::new(Metrics::default()))
        .collect();
    let t1 = Instant::now();
    let workers: Vec<_> = all_metrics
        .iter()
        .enumerate()
        .map(|(i, metrics)| {
            let text = config_text.replace("INSTANCE", &format!("bench-{i}"));
            let config = Config::parse(Path::new("bench.toml"), &text).expect("config");
            let (stop, metrics) = (stop.clone(), metrics.clone());
            std::thread::spawn(move || run(&config, &stop, &metrics))
        })
        .collect();
    let sum = |f: fn(&Metrics) -> u64| all_metrics.iter().map(|m| f(m)).sum::<u64>();
    let expected_finals = series as u64 * windows as u64;
    let mut first_merge: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let merged = sum(|m| m.merged.load(Ordering::Relaxed));
        if merged > 0 && first_merge.is_none() {
            first_merge = Some(Instant::now());
        }
        if merged >= total as u64 && sum(|m| m.finals.load(Ordering::Relaxed)) >= expected_finals {
            break;
        }
        if t1.elapsed() > Duration::from_secs(600) {
            println!("timed out: {merged} merged");
            timed_out = true;
            break;
        }
    }
    let all = t1.elapsed().as_secs_f64();
    let busy = first_merge.map_or(all, |f| f.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let txns = sum(|m| m.transactions.load(Ordering::Relaxed));
    let finals = sum(|m| m.finals.load(Ordering::Relaxed));
    println!(
        "consumer: {total} partials merged, {finals} windows finalized in {txns} transactions; \
         {busy:.2} s from first merge ({all:.2} s incl. group join and restore)"
    );
    println!(
        "  {:.0} partials/s merged, {:.0} finals/s emitted ({instances} instance(s), exactly-once, {} ms/transaction)",
        total as f64 / busy,
        finals as f64 / busy,
        (busy * 1000.0 * instances as f64 / txns.max(1) as f64).round()
    );
    if timed_out {
        std::process::exit(1);
    }
    let params = match instances {
        1 => format!(
            "{total} partials ({series} series x {windows} windows x 3 gateways), {partitions} partitions"
        ),
        n => format!(
            "{total} partials ({series} series x {windows} windows x 3 gateways), {partitions} partitions, {n} instances"
        ),
    };
    // Issue 16's goals per instance on the 2-core machine (the scaling run shows the sum).
    let (merged_goal, finals_goal) = match instances {
        1 => (">= 150,000", ">= 60,000"),
        _ => ("", ""),
    };
    FIGURES.print_with_target(
        "merged",
        total as f64 / busy,
        "partials/s",
        &params,
        merged_goal,
    );
    FIGURES.print_with_target(
        "finalized",
        finals as f64 / busy,
        "finals/s",
        &params,
        finals_goal,
    );
    FIGURES.print(
        "transaction",
        busy * 1000.0 * instances as f64 / txns.max(1) as f64,
        "ms",
        &params,
    );
}
