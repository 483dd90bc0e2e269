//! Ingest benchmark: prints figures, asserts nothing.
//!
//! ```text
//! cargo run --release -p edge-agent --example ingest_bench -- [READINGS] [MQTT_URL] [RUNS]
//! ```
//!
//! 1. **Writer only** (no broker): `READINGS` one-reading submissions (default 200,000) from 4
//!    producers through the group-committing writer into a fresh redb file; durable readings/s
//!    (committed with fsync and acked), commits made, and submit-to-ack latency p50/p99.
//! 2. **MQTT** (with `MQTT_URL`, e.g. `mqtt://127.0.0.1:18830`): `READINGS / 4` QoS 1 messages
//!    queued in a persistent session, drained once by a bare manual-ack rumqttc subscriber
//!    (acks on receipt) and once by the agent (`service::run`: parsed, mapped, committed, then
//!    acked); both receive rates, their ratio, and the CPU each side and the broker spent per
//!    message. Made `RUNS` times (default 5): the figures are the medians, with the ratio's
//!    lowest and highest beside them.
//!
//! ```text
//! cargo build --release -p edge-agent --bin edge-agent --example ingest_bench
//! target/release/examples/ingest_bench steady MQTT_URL [RATE] [SECONDS] [SENSORS]
//! ```
//!
//! 3. **Steady** rate: the `edge-agent` binary (next to `examples/`) runs as a child process
//!    while QoS 1 readings from `SENSORS` sensors (default 1,000) arrive at `RATE`/s (default
//!    10,000) for `SECONDS` (default 30); prints the agent's peak RSS (`VmHWM`) and how many readings it committed.
//!
//! Environment: `LINGER_MS` sets the writer's `batch_max_ms` (default 0), and `BENCH_BUFFER` adds
//! `[buffer]` keys to the agent's config in part 2, `;`-separated (e.g.
//! `BENCH_BUFFER='batch_max_readings = 4000;channel_capacity = 4096'`), to compare group sizes.
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick runs:
//! `ingest_bench 100000 MQTT_URL`, `ingest_bench steady MQTT_URL 10000 5`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_agent::config::{Config, OnFull};
use edge_agent::ingest::writer::{BatchLimits, Writer};
use edge_agent::ingest::{Counters, Dedupe, IngestLog, Limits, Submission};
use edge_agent::reading::Reading;
use edge_bench::line::Family;
use edge_bench::program::{status_kib, toml_keys_from_env, Process};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("ingest");

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("steady") {
        let _ = args.next();
        let url = args
            .next()
            .unwrap_or_else(|| "mqtt://127.0.0.1:18830".to_owned());
        let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
        let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
        let sensors: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
        steady(&url, rate, secs, sensors.max(1)).await;
        return;
    }
    let readings: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let linger_ms: u64 = std::env::var("LINGER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mqtt = args.next();
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    writer_only(readings, linger_ms).await;
    if let Some(url) = mqtt {
        mqtt_side_by_side(&url, readings / 4, linger_ms, runs).await;
    }
}

async fn writer_only(n: u64, linger_ms: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ingest.redb");
    let limits = Limits {
        quota_bytes: 1 << 34,
        on_full: OnFull::Backpressure,
        dedupe_max_entries: 10_000_000,
        dedupe_max_age_ms: 3_600_000,
    };
    let log = IngestLog::open(&path, limits).expect("open");
    let (tx, rx) = mpsc::channel(1024);
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let writer = tokio::spawn(
        Writer {
            log,
            path: path.clone(),
            batch: BatchLimits {
                max_readings: 1000,
                max_wait: Duration::from_millis(linger_ms),
            },
            counters: counters.clone(),
            submissions: rx,
            cancel: cancel.clone(),
            committed: None,
        }
        .run(),
    );
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let started = Instant::now();
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let tx = tx.clone();
            let latencies = latencies.clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(4) {
                    let sent = Instant::now();
                    let latencies = latencies.clone();
                    let reading = Reading {
                        sensor: format!("sensor-{}", i % 1000),
                        ts_ms: 1_700_000_000_000 + i,
                        value: i as f64,
                        seq: None,
                    };
                    let submission = Submission {
                        readings: vec![(reading, Dedupe::SensorTs)],
                        dead_letters: Vec::new(),
                        state: Vec::new(),
                        ack: Some(Box::new(move || {
                            if let Ok(mut l) = latencies.lock() {
                                l.push(sent.elapsed());
                            }
                        })),
                    };
                    if tx.send(submission).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        let _ = p.await;
    }
    let _ = writer.await;
    let elapsed = started.elapsed();
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let pct = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!("writer only: {n} readings, 4 producers, batch <= 1000 readings / {linger_ms} ms linger, Durability::Immediate");
    println!(
        "  {:.0} readings/s durable and acked ({:.2} s); accepted {}; file {} bytes ({:.0} B/reading)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        counters.accepted.load(Ordering::Relaxed),
        size,
        size as f64 / n as f64
    );
    println!(
        "  submit->ack latency p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        l.last().copied().unwrap_or_default()
    );
    let params = format!("{n} readings, 4 producers, batch 1000, linger {linger_ms} ms");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    FIGURES.print(
        "writer_durable",
        n as f64 / elapsed.as_secs_f64(),
        "readings/s",
        &params,
    );
    FIGURES.print("writer_ack_p50", ms(pct(0.5)), "ms", &params);
    FIGURES.print("writer_ack_p99", ms(pct(0.99)), "ms", &params);
    FIGURES.print(
        "writer_disk_per_reading",
        size as f64 / n as f64,
        "B",
        &params,
    );
}

/// The agent's MQTT source `b` (JSON `{"v":..,"ts":..}`, QoS 1, no keep-alive setting) on
/// `<root>/+/v`, with the sensor id taken from the topic level named `level`.
fn mqtt_source(url: &str, agent_id: &str, root: &str, level: &str) -> String {
    format!(
        r#"[[mqtt]]
name = "b"
url = "{url}"
client_id = "{agent_id}"
payload = {{ format = "json", value = "/v", timestamp = "/ts" }}
subscribe = [{{ topic = "{root}/+/v", qos = 1 }}]
[[sensor]]
source = "b"
topic = "{root}/{{{level}}}/v"
id = "{{{level}}}"
"#
    )
}

fn options(url: &str, id: &str) -> MqttOptions {
    let rest = url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let mut o = MqttOptions::new(id, host, port.parse().unwrap_or(1883));
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        .set_manual_acks(true);
    o
}

/// Subscribes `id` persistently to `topic`, then publishes `n` messages into its queue.
async fn queue(url: &str, id: &str, topic: &str, n: u64) {
    let (client, mut ev) = AsyncClient::new(options(url, id), 10);
    client
        .subscribe(format!("{topic}/+/v"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    while !matches!(ev.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    let _ = client.disconnect().await;
    while ev.poll().await.is_ok() {}
    let mut popts = options(url, &format!("{id}-pub"));
    popts.set_clean_session(true).set_manual_acks(false);
    let (publisher, mut pev) = AsyncClient::new(popts, 1000);
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match pev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for i in 0..n {
        let body = format!(r#"{{"v":{i},"ts":{}}}"#, 1_700_000_000_000 + i);
        publisher
            .publish(
                format!("{topic}/d{}/v", i % 100),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .expect("publish");
    }
    acker.await.expect("publisher acks");
    let _ = publisher.disconnect().await;
}

/// The MQTT side-by-side, `runs` times (the rate of a bare subscriber varies from run to run
/// on a shared machine, so one pair of drains decides little): the medians of each figure and
/// of the per-run ratios, and the ratio's spread.
async fn mqtt_side_by_side(url: &str, n: u64, linger_ms: u64, runs: usize) {
    println!("MQTT QoS 1, {n} messages queued in a persistent session, drained, {runs} runs:");
    let mut drains = Vec::with_capacity(runs);
    for index in 0..runs.max(1) {
        drains.push(drain_once(url, n, linger_ms, index).await);
    }
    let median = |f: &dyn Fn(&Drain) -> f64| {
        let mut v: Vec<f64> = drains.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = median(&Drain::ratio);
    println!("  median ratio {ratio:.2} of bare");
    let params = format!("{n} QoS 1 messages queued, median of {} runs", drains.len());
    let medians: [(&str, Figure, &str); 6] = [
        ("mqtt_bare_subscriber", |d| d.bare, "msg/s"),
        ("mqtt_bare_cpu_per_msg", |d| d.bare_cpu.0, "us"),
        ("mqtt_agent_cpu_per_reading", |d| d.agent_cpu.0, "us"),
        ("mqtt_broker_cpu_per_msg_bare", |d| d.bare_cpu.1, "us"),
        ("mqtt_broker_cpu_per_msg_agent", |d| d.agent_cpu.1, "us"),
        ("mqtt_agent", |d| d.durable, "readings/s"),
    ];
    for (metric, figure, unit) in medians {
        FIGURES.print(metric, median(&figure), unit, &params);
    }
    FIGURES.print_with_target("mqtt_agent_of_bare", ratio, "ratio", &params, ">= 0.8");
    let spread = format!("{n} QoS 1 messages queued, {} runs", drains.len());
    let ratios = drains.iter().map(Drain::ratio);
    FIGURES.print(
        "mqtt_agent_of_bare_min",
        ratios.clone().fold(f64::MAX, f64::min),
        "ratio",
        &spread,
    );
    FIGURES.print(
        "mqtt_agent_of_bare_max",
        ratios.fold(0.0, f64::max),
        "ratio",
        &spread,
    );
}

/// One figure of a drain, of which the side-by-side prints the median.
type Figure = fn(&Drain) -> f64;

/// What one side-by-side drain measured; CPU as (this process, the rest of the machine) in us
/// per message.
struct Drain {
    bare: f64,
    durable: f64,
    bare_cpu: (f64, f64),
    agent_cpu: (f64, f64),
}

impl Drain {
    fn ratio(&self) -> f64 {
        self.durable / self.bare
    }
}

/// One side-by-side drain: the bare subscriber's, then the agent's, `n` messages each.
async fn drain_once(url: &str, n: u64, linger_ms: u64, index: usize) -> Drain {
    let run = format!("{}-{index}", std::process::id());
    let bare_id = format!("bench-bare-{run}");
    let topic = format!("bench/{run}");
    queue(url, &bare_id, &format!("{topic}/bare"), n).await;
    let (client, mut ev) = AsyncClient::new(options(url, &bare_id), 1000);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            let _ = client.ack(&p).await;
        }
    });
    let started = Instant::now();
    let cpu = Cpu::start();
    let mut got = 0;
    while got < n {
        if let Ok(Event::Incoming(Packet::Publish(p))) = ev.poll().await {
            got += 1;
            let _ = ack_tx.send(p);
        }
    }
    let bare = n as f64 / started.elapsed().as_secs_f64();
    let bare_cpu = cpu.per_item_us(n);

    let dir = tempfile::tempdir().expect("tempdir");
    let agent_id = format!("bench-agent-{run}");
    queue(url, &agent_id, &format!("{topic}/agent"), n).await;
    let text = format!(
        r#"
[agent]
id = "bench"
data_dir = {:?}
[buffer]
batch_max_ms = {linger_ms}
{}
{}"#,
        dir.path().display().to_string(),
        toml_keys_from_env("BENCH_BUFFER"),
        mqtt_source(url, &agent_id, &format!("{topic}/agent"), "dev"),
    );
    let config = Config::from_toml(std::path::Path::new("bench.toml"), &text).expect("config");
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let cpu = Cpu::start();
    let agent = tokio::spawn(edge_agent::service::run_with_counters(
        config,
        cancel.clone(),
        counters.clone(),
    ));
    while counters.accepted.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let durable = n as f64 / started.elapsed().as_secs_f64();
    let agent_cpu = cpu.per_item_us(n);
    cancel.cancel();
    let _ = agent.await;
    let drain = Drain {
        bare,
        durable,
        bare_cpu,
        agent_cpu,
    };
    println!(
        "  run {}: bare rumqttc subscriber (ack on receipt) {bare:.0} msg/s; edge-agent (parse, map, commit with fsync, then ack) {durable:.0} readings/s = {:.2} of bare",
        index + 1,
        drain.ratio()
    );
    println!(
        "         CPU per message, this process / the rest of the machine (the broker): bare {:.2} / {:.2} us, agent {:.2} / {:.2} us",
        bare_cpu.0, bare_cpu.1, agent_cpu.0, agent_cpu.1
    );
    drain
}

/// CPU spent over one drain: this process's (`getrusage`), and the rest of the machine's (all
/// CPUs' busy time from `/proc/stat` minus this process's: the broker, on a quiet machine).
struct Cpu {
    own: Duration,
    machine_busy: u64,
}

impl Cpu {
    fn start() -> Cpu {
        Cpu {
            own: edge_bench::program::process_cpu(),
            machine_busy: edge_bench::machine::cpu_jiffies().0,
        }
    }

    /// Microseconds per item since [`Cpu::start`]: (this process, the rest of the machine).
    fn per_item_us(&self, items: u64) -> (f64, f64) {
        let own = edge_bench::program::process_cpu().saturating_sub(self.own);
        let (busy, _) = edge_bench::machine::cpu_jiffies();
        // Busy jiffies of all CPUs: /proc/stat counts USER_HZ (100) per second per CPU.
        let machine_s = busy.saturating_sub(self.machine_busy) as f64 / 100.0;
        let rest_s = (machine_s - own.as_secs_f64()).max(0.0);
        let per = |s: f64| s * 1e6 / items.max(1) as f64;
        (per(own.as_secs_f64()), per(rest_s))
    }
}

/// The agent binary as a child under a steady MQTT load; prints its peak RSS.
async fn steady(url: &str, rate: u64, secs: u64, sensors: u64) {
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/release")
        .join("edge-agent");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p edge-agent --bin edge-agent",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let run = std::process::id();
    let topic = format!("steady/{run}");
    let agent_id = format!("steady-agent-{run}");
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[agent]
id = "steady"
data_dir = {:?}
{}"#,
            dir.path().display().to_string(),
            mqtt_source(url, &agent_id, &topic, "sensor"),
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn agent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut popts = options(url, &format!("steady-pub-{run}"));
    popts
        .set_clean_session(true)
        .set_manual_acks(false)
        .set_inflight(1000);
    let (publisher, mut pev) = AsyncClient::new(popts, 10_000);
    let poller = tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    let total = rate * secs;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut sent = 0;
    let mut peak_kib = 0;
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let body = format!(r#"{{"v":{sent},"ts":{}}}"#, 1_700_000_000_000 + sent);
            publisher
                .publish(
                    format!("{topic}/s{}/v", sent % sensors),
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .expect("publish");
            sent += 1;
        }
        if sent % (rate / 2).max(1) < per_tick {
            peak_kib = peak_kib.max(status_kib(Process::Pid(child.id()), "VmHWM:"));
        }
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    peak_kib = peak_kib.max(status_kib(Process::Pid(child.id()), "VmHWM:"));
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    poller.abort();
    let config = Config::load(&config_path).expect("config");
    let log =
        IngestLog::open(&config.ingest_path(), edge_agent::service::limits(&config)).expect("log");
    let stats = log.stats().expect("stats");
    println!(
        "steady: {sent} QoS 1 readings from {sensors} sensors at {offered:.0}/s offered for {secs} s"
    );
    println!(
        "  edge-agent peak RSS (VmHWM) {:.1} MiB; committed {} readings",
        peak_kib as f64 / 1024.0,
        stats.accepted
    );
    let params = format!("{rate}/s from {sensors} sensors for {secs} s");
    let rss = peak_kib as f64 / 1024.0;
    if sensors >= 10_000 {
        FIGURES.print_with_target("steady_peak_rss", rss, "MiB", &params, "<= 16");
    } else {
        FIGURES.print("steady_peak_rss", rss, "MiB", &params);
    }
    FIGURES.print("steady_offered", offered, "readings/s", &params);
    FIGURES.print(
        "steady_committed_of_sent",
        100.0 * stats.accepted as f64 / sent.max(1) as f64,
        "%",
        &params,
    );
}
