//! End-to-end latency benchmark (a program that prints figures, not a timed test): MQTT publish
//! -> agent (ingest log, windowing stage pass-through, outbox, forwarder) -> committed in Kafka.
//!
//! Runs the whole agent (`edge_agent::service::run`, the code `edge-agent run` runs) in this
//! process with one MQTT source and one pipeline without a window, publishes `rate` readings/s
//! for `seconds` s (QoS 1, JSON `{"v":..,"ts":<publish time ms>}`, 1,000 sensors), and reads the
//! readings topic with a `read_committed` consumer: latency = time the consumer got the record
//! - the `ts` it carries (same clock). The first 2 s are warm-up and not counted.
//!
//! ```text
//! . .services/env
//! cargo run --release -p edge-agent --example bench_forward_latency -- [rate] [seconds] [idle_s]
//! ```
//!
//! With a fourth argument `build`, a `cargo build --release -p edge-consumer` into a temporary
//! target directory runs beside it (started 15 s before the first publish, killed after the
//! last read): the latency of a gateway whose CPU is taken by something else. The build runs in
//! a session of its own (`setsid`), as a build started from a login shell does beside a service:
//! the kernel then shares the CPU between the two (autogroups; under systemd, the
//! `system.slice` and `user.slice` cgroups do the same), where a build spawned in the agent's
//! own session would compete with each of its threads one by one. The run fails when the build
//! ended before it did, and it prints how busy the machine's CPUs were while it published.
//!
//! With `idle_s` > 0 it then leaves the agent idle (connected, nothing to do) for `idle_s` s and
//! prints the CPU this process used meanwhile, in % of one core (target < 0.05).
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick run:
//! `-- 1000 5`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_agent::clock::unix_ms;
use edge_agent::config::Config;
use edge_bench::line::Family;
use edge_bench::machine::{busy_share, cpu_jiffies};
use edge_bench::program::{arg, client_settings_from_env, process_cpu};
use edge_ops_http::prometheus::{Histogram, LATENCY_BOUNDS_S};
use edge_tests::config::kafka_topics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("latency");

const SENSORS: u64 = 1000;
const WARM_UP_MS: u64 = 2000;

fn main() -> anyhow::Result<()> {
    let rate = arg(1, 1000).max(1);
    let seconds = arg(2, 20).max(3);
    let idle_s = arg(3, 0);
    // "build": a `cargo build` competes for the CPU during the run (the issue's loaded gateway).
    let under_build = std::env::args().nth(4).is_some_and(|a| a == "build");
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let mqtt = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:18830".to_owned());
    let (host, port) = mqtt
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("MQTT_URL needs a port"))?;
    let port: u16 = port.parse()?;
    // Extra librdkafka settings for experiments: BENCH_CLIENT="key=value,key=value".
    let client = client_settings_from_env();
    let dir = tempfile::tempdir()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = format!("latency-{nanos}");
    let topic = format!("{id}.readings");
    let text = format!(
        r#"[agent]
id = "{id}"
data_dir = {dir:?}
[[mqtt]]
name = "m"
url = "{mqtt}"
client_id = "{id}"
payload = {{ format = "json", value = "/v", timestamp = "/ts" }}
subscribe = [{{ topic = "{id}/+/v", qos = 1 }}]
[[sensor]]
source = "m"
topic = "{id}/{{dev}}/v"
id = "{{dev}}"
[[pipeline]]
name = "raw"
sensors = ["*"]
[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.client]
{client}
{topics}"#,
        topics = kafka_topics(&topic, &id, &format!("{id}.progress")),
        dir = dir.path().display().to_string(),
    );
    let config = Config::from_toml(Path::new("latency.toml"), &text)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let cancel = CancellationToken::new();
    // The agent's counters, kept here to read its per-hop histograms after the run.
    let telemetry = Arc::new(edge_agent::telemetry::Telemetry::default());
    let agent = runtime.spawn(edge_agent::service::run_with_telemetry(
        config,
        cancel.clone(),
        telemetry.clone(),
        || {},
    ));

    // The consumer: waits for the topic (the forwarder creates it), then reads committed.
    let done = Arc::new(AtomicBool::new(false));
    let consumer_thread = {
        let (bootstrap, topic, done) = (bootstrap.clone(), topic.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<(u64, u64)>> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", format!("{topic}.reader"))
                .set("isolation.level", "read_committed")
                .set("fetch.wait.max.ms", "5")
                // librdkafka backs a fetcher off this long after an empty fetch at the end
                // of the partition (default 500 ms): that would be measured as latency.
                .set("fetch.error.backoff.ms", "5")
                .set("enable.auto.commit", "false")
                .create()?;
            let partitions = loop {
                let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
                let ps: Vec<i32> = md
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !ps.is_empty() {
                    break ps;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let mut list = TopicPartitionList::new();
            for p in partitions {
                list.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let now = unix_ms();
                    let ts = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                        .and_then(|v| v.get("ts").and_then(serde_json::Value::as_u64));
                    if let Some(ts) = ts {
                        latencies.push((ts, now.saturating_sub(ts)));
                    }
                }
            }
            Ok(latencies)
        })
    };

    // Let the agent connect and subscribe (its persistent session then holds everything).
    std::thread::sleep(Duration::from_secs(3));
    let mut load = under_build.then(Load::start).transpose()?;
    let machine_before = cpu_jiffies();
    let published = runtime.block_on(async {
        let mut options = MqttOptions::new(format!("{id}-pub"), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let start = Instant::now();
        let total = rate * seconds;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while sent < total {
            tick.tick().await;
            let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
            while sent < due {
                let payload = format!(r#"{{"v":{sent},"ts":{}}}"#, unix_ms());
                client
                    .publish(
                        format!("{id}/d{}/v", sent % SENSORS),
                        QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .await?;
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        poller.abort();
        anyhow::Ok(sent)
    })?;
    let machine_busy = busy_share(machine_before, cpu_jiffies());
    if let Some(load) = load.as_mut() {
        anyhow::ensure!(
            load.running(),
            "the cargo build ended before the run did: the run was not under load"
        );
    }
    done.store(true, Ordering::Relaxed);
    let raw = consumer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    // The agent's own account of the run: its per-hop histograms (warm-up included).
    let hops = [
        ("ingest", Hop::of(&telemetry.ingest.latency)),
        ("window", Hop::of(&telemetry.stage.latency)),
        ("kafka", Hop::of(&telemetry.forward.latency)),
    ];
    drop(load);
    // Idle: the publisher and the reader are gone, the outbox is drained; what this process
    // spends now is the agent's (its tasks, rumqttc's keep-alive, librdkafka's threads).
    let idle = (idle_s > 0).then(|| {
        std::thread::sleep(Duration::from_secs(2));
        let before = process_cpu();
        std::thread::sleep(Duration::from_secs(idle_s));
        100.0 * process_cpu().saturating_sub(before).as_secs_f64() / idle_s as f64
    });
    cancel.cancel();
    runtime.block_on(agent)??;

    let first_ts = raw.iter().map(|(ts, _)| *ts).min().unwrap_or(0);
    let mut lat: Vec<u64> = raw
        .iter()
        .filter(|(ts, _)| *ts >= first_ts + WARM_UP_MS)
        .map(|(_, latency)| *latency)
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{rate} readings/s for {seconds} s: published {published}, committed and read {} ({} after warm-up)",
        raw.len(),
        lat.len()
    );
    println!(
        "latency MQTT publish -> committed in Kafka (read_committed): p50 {} ms, p99 {} ms, max {} ms",
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
    if lat.is_empty() {
        anyhow::bail!("no record read back from {topic} after the warm-up");
    }
    let params = format!(
        "{rate} readings/s for {seconds} s, pass-through{}",
        if under_build {
            ", cargo build running"
        } else {
            ""
        }
    );
    FIGURES.print("p50", pct(0.50) as f64, "ms", &params);
    if under_build {
        println!("machine CPU busy while publishing: {machine_busy:.0} % of all cores");
        FIGURES.print("machine_busy", machine_busy, "% of all cores", &params);
        FIGURES.print_with_target("p99", pct(0.99) as f64, "ms", &params, "< 250");
    } else {
        FIGURES.print("p99", pct(0.99) as f64, "ms", &params);
    }
    FIGURES.print(
        "max",
        lat.last().copied().unwrap_or(0) as f64,
        "ms",
        &params,
    );
    if let Some(percent) = idle {
        println!("agent idle for {idle_s} s: {percent:.3} % of one core");
        FIGURES.print_with_target(
            "idle_cpu",
            percent,
            "% of a core",
            &format!("agent idle for {idle_s} s after the run, MQTT and Kafka connected"),
            "< 0.05",
        );
    }
    for (hop, h) in &hops {
        println!(
            "hop {hop} (edge_hop_latency_seconds): mean {:.1} ms, p50 <= {} ms, p99 <= {} ms over {} readings",
            h.mean_ms(),
            h.bound_ms(0.50),
            h.bound_ms(0.99),
            h.count
        );
        FIGURES.print(&format!("hop_{hop}_mean"), h.mean_ms(), "ms", &params);
        FIGURES.print(
            &format!("hop_{hop}_p99_bucket"),
            h.bound_ms(0.99),
            "ms (bucket bound)",
            &params,
        );
    }
    FIGURES.print(
        "read_back_of_published",
        100.0 * raw.len() as f64 / published.max(1) as f64,
        "%",
        &params,
    );
    Ok(())
}

/// One hop's histogram (`edge_hop_latency_seconds{hop}` on the agent's `/metrics`).
struct Hop {
    /// Cumulative counts per bound of `LATENCY_BOUNDS_S`, then +Inf.
    cumulative: Vec<u64>,
    sum_s: f64,
    count: u64,
}

impl Hop {
    fn of(h: &Histogram) -> Hop {
        let (cumulative, sum_s) = h.snapshot();
        let count = cumulative.last().copied().unwrap_or(0);
        Hop {
            cumulative,
            sum_s,
            count,
        }
    }

    fn mean_ms(&self) -> f64 {
        1000.0 * self.sum_s / self.count.max(1) as f64
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (10 s past the last bound).
    fn bound_ms(&self, q: f64) -> f64 {
        let want = (self.count as f64 * q).ceil() as u64;
        let i = self.cumulative.iter().position(|n| *n >= want);
        1000.0
            * i.and_then(|i| LATENCY_BOUNDS_S.get(i))
                .copied()
                .unwrap_or(10.0)
    }
}

/// A `cargo build` from scratch, competing for the CPU until dropped (its process group is
/// killed then).
struct Load {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Load {
    fn start() -> anyhow::Result<Load> {
        let dir = tempfile::tempdir()?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let child = std::process::Command::new("setsid")
            .arg(cargo)
            .args(["build", "--release", "--locked", "-p", "edge-consumer"])
            .arg("--target-dir")
            .arg(dir.path())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        println!(
            "load: cargo build (pid {}) started; measuring in 15 s",
            child.id()
        );
        std::thread::sleep(Duration::from_secs(15));
        Ok(Load { child, _dir: dir })
    }

    /// Whether the build is still going (it takes minutes; a run must end before it does).
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}
