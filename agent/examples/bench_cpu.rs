//! CPU per reading, side by side with Telegraf (a program that prints figures, not a timed test):
//! how much CPU a SUBJECT process spends moving MQTT readings into Kafka.
//!
//! The subject runs as a child process with a generated configuration:
//!
//! - `agent`: the `edge-agent` binary next to `examples/` (`target/release/edge-agent`), one
//!   `[[mqtt]]` source (QoS 1, persistent session, JSON `{"v":..,"ts":..}`), one pipeline
//!   without a window (readings pass through to the readings topic) and `[kafka]`: ingest log
//!   in redb, outbox, exactly-once transactions;
//! - `telegraf PATH`: a Telegraf binary (`scripts/bench.sh --peers` builds 1.37 into
//!   `target/peers/`): `inputs.mqtt_consumer` (qos 1, persistent session, a client id,
//!   `json_v2` taking `v` and `ts`) -> `outputs.kafka` (its own topic, `data_format = "json"`,
//!   at-least-once, no transactions; the topic is created here beforehand, as the test
//!   broker does not create topics on use).
//!
//! This program publishes one warm-up reading per sensor and waits until they are all in Kafka
//! (connections, subscriptions, topic metadata and the producer are up by then), then publishes
//! `rate` readings/s for `seconds` s from 1,000 sensors over MQTT QoS 1 (`MQTT_URL`) and counts
//! the records on the subject's topic (`KAFKA_BOOTSTRAP`) with a `read_committed` consumer. The
//! subject's CPU is its utime + stime from `/proc/PID/stat` (all threads), taken just before the
//! first publish and at the moment the consumer reads the last record (or at the timeout,
//! 60 s after the last publish). Figures: CPU-s per 1,000 readings (target for the agent
//! <= 0.028, issue 18), CPU in % of one core over that span, delivered of published, and the
//! subject's peak RSS (`VmHWM`). The publisher and the reader run in this process: their CPU
//! is not counted, but they share the machine with the subject.
//!
//! ```text
//! . .services/env
//! cargo build --release -p edge-agent --bin edge-agent --example bench_cpu
//! target/release/examples/bench_cpu agent [rate] [seconds]
//! target/release/examples/bench_cpu telegraf target/peers/telegraf-1.37.2 [rate] [seconds]
//! ```
//!
//! Defaults: 10,000 readings/s for 30 s. Beside its human output it prints one `BENCH {json}`
//! line per figure for the suite runner (`scripts/bench.sh`, `--peers` for the Telegraf run;
//! the line format is documented in `bench/src/line.rs`), family `cpu` for the agent and
//! `peer_telegraf` for Telegraf, so the table shows them side by side. Quick run:
//! `bench_cpu agent 10000 5`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use edge_agent::clock::unix_ms;
use edge_bench::line::Family;
use edge_bench::program::{client_settings_from_env, status_kib, toml_keys_from_env, Process};
use edge_tests::config::kafka_topics;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::{AsyncClient, MqttOptions, QoS};

const SENSORS: u64 = 1000;
/// How long after the last publish the reader waits for the rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the warm-up readings may take to show up (start-up of the subject included).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(90);

/// What runs: the agent or a peer.
enum Subject {
    Agent,
    Telegraf(PathBuf),
}

impl Subject {
    fn family(&self) -> Family {
        match self {
            Subject::Agent => Family("cpu"),
            Subject::Telegraf(_) => Family("peer_telegraf"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let subject = match args.next().as_deref() {
        None | Some("agent") => Subject::Agent,
        Some("telegraf") => Subject::Telegraf(
            args.next()
                .map(PathBuf::from)
                .context("telegraf needs the path of its binary")?,
        ),
        Some(other) => bail!("unknown subject {other:?}: agent | telegraf PATH"),
    };
    let mut number = |default: u64| {
        args.next()
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let rate = number(10_000).max(1);
    let seconds = number(30).max(1);
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());
    let mqtt = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:18830".to_owned());
    let (host, port) = mqtt
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .context("MQTT_URL needs a port")?;
    let port: u16 = port.parse()?;

    let dir = tempfile::tempdir()?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = format!("cpu-{nanos}");
    let topic = format!("{id}.readings");
    let (child, version) = match &subject {
        Subject::Agent => (start_agent(dir.path(), &id, &mqtt, &bootstrap)?, None),
        Subject::Telegraf(exe) => {
            let version = telegraf_version(exe)?;
            create_topic(&bootstrap, &topic)?;
            (
                start_telegraf(exe, dir.path(), &id, host, port, &bootstrap)?,
                Some(version),
            )
        }
    };
    let pid = child.0.id();

    let total = rate * seconds;
    let reader = Reader::start(&bootstrap, &topic, pid);
    let runtime = tokio::runtime::Runtime::new()?;
    let published = runtime.block_on(async {
        let mut options = MqttOptions::new(format!("{id}-pub"), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let mut publisher = Publisher {
            client,
            prefix: id.clone(),
            last_ts: vec![0; SENSORS as usize],
        };
        // The subject subscribes during its start-up, and what is published before that is
        // lost: a probe every 500 ms until one arrives, then 1 s for the stragglers.
        let waited = Instant::now();
        while reader.seen() == 0 {
            if waited.elapsed() > WARM_UP_TIMEOUT {
                bail!("nothing arrived in {topic} within {WARM_UP_TIMEOUT:?}: is the subject up?");
            }
            publisher.publish(0).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Warm-up: one reading per sensor, all in Kafka before the measured span.
        let base = reader.seen();
        for i in 0..SENSORS {
            publisher.publish(i).await?;
        }
        reader.wait_for(base, SENSORS, WARM_UP_TIMEOUT).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let base = reader.seen();
        let start_cpu = child_cpu(pid)?;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut sent = 0u64;
        while sent < total {
            tick.tick().await;
            let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
            while sent < due {
                publisher.publish(SENSORS + sent).await?;
                sent += 1;
            }
        }
        let offered = sent as f64 / start.elapsed().as_secs_f64();
        let end = tokio::task::block_in_place(|| reader.wait_end(base, total, DRAIN_TIMEOUT, pid))?;
        poller.abort();
        anyhow::Ok((sent, offered, start, start_cpu, end))
    })?;
    let (sent, offered, start, start_cpu, end) = published;
    let peak_kib = status_kib(Process::Pid(pid), "VmHWM:");
    drop(child);

    let delivered = end.delivered;
    let cpu_s = end.cpu.saturating_sub(start_cpu).as_secs_f64();
    let wall_s = end.at.duration_since(start).as_secs_f64();
    let name = match &subject {
        Subject::Agent => "edge-agent".to_owned(),
        Subject::Telegraf(_) => format!("Telegraf {}", version.unwrap_or_default()),
    };
    println!(
        "{name}: {sent} QoS 1 readings from {SENSORS} sensors at {offered:.0}/s offered for {seconds} s; \
         {delivered} in Kafka ({}) after {wall_s:.1} s",
        if end.complete { "all" } else { "timed out" }
    );
    if delivered == 0 {
        bail!("no reading of the run reached {topic}");
    }
    let per_1000 = cpu_s / delivered as f64 * 1000.0;
    let percent = 100.0 * cpu_s / wall_s.max(1e-9);
    println!(
        "  CPU {cpu_s:.2} s = {per_1000:.4} CPU-s per 1,000 readings, {percent:.1} % of a core; \
         peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    let params = match &subject {
        Subject::Agent => format!(
            "edge-agent, {rate} readings/s from 1,000 sensors for {seconds} s, MQTT QoS 1 -> Kafka exactly-once"
        ),
        Subject::Telegraf(_) => format!(
            "{name} mqtt_consumer -> kafka, {rate} readings/s from 1,000 sensors for {seconds} s, MQTT QoS 1 -> Kafka at-least-once"
        ),
    };
    let figures = subject.family();
    let unit = "CPU-s per 1,000 readings";
    match subject {
        Subject::Agent => {
            figures.print_with_target("cpu_per_1000", per_1000, unit, &params, "<= 0.028")
        }
        Subject::Telegraf(_) => figures.print("cpu_per_1000", per_1000, unit, &params),
    }
    figures.print("cpu", percent, "% of a core", &params);
    figures.print(
        "delivered_of_published",
        100.0 * delivered as f64 / sent.max(1) as f64,
        "%",
        &params,
    );
    figures.print("peak_rss", peak_kib as f64 / 1024.0, "MiB", &params);
    Ok(())
}

/// Publishes reading `i` of sensor `i % SENSORS` as `{"v":i,"ts":now}` (QoS 1); a sensor's
/// timestamps strictly increase, so the agent never drops one as a duplicate of the last.
struct Publisher {
    client: AsyncClient,
    prefix: String,
    last_ts: Vec<u64>,
}

impl Publisher {
    async fn publish(&mut self, i: u64) -> Result<(), rumqttc::ClientError> {
        let sensor = i % SENSORS;
        let last = &mut self.last_ts[sensor as usize];
        *last = unix_ms().max(*last + 1);
        let payload = format!(r#"{{"v":{i},"ts":{last}}}"#);
        let topic = format!("{}/s{sensor}/v", self.prefix);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(dir: &Path, id: &str, mqtt: &str, bootstrap: &str) -> anyhow::Result<Running> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .context("target/release")?
        .join("edge-agent");
    if !bin.exists() {
        bail!(
            "{} missing: cargo build --release -p edge-agent --bin edge-agent",
            bin.display()
        );
    }
    // Experiments: extra librdkafka settings (BENCH_CLIENT="key=value,key=value"), `[kafka]`
    // and `[buffer]` keys (BENCH_KAFKA="poll_interval_ms = 50", `;` between keys).
    let client = client_settings_from_env();
    let text = format!(
        r#"[agent]
id = "{id}"
data_dir = {data:?}
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
{kafka}
[kafka.client]
{client}
{topics}
[buffer]
{buffer}"#,
        topics = kafka_topics(&format!("{id}.readings"), id, &format!("{id}.progress")),
        data = dir.display().to_string(),
        kafka = toml_keys_from_env("BENCH_KAFKA"),
        buffer = toml_keys_from_env("BENCH_BUFFER"),
    );
    let config = dir.join("agent.toml");
    std::fs::write(&config, text)?;
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Running(child))
}

/// `telegraf --version`: "Telegraf 1.37.2 (git: ...)" -> "1.37.2".
fn telegraf_version(exe: &Path) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .nth(1)
        .unwrap_or("unknown")
        .to_owned())
}

fn start_telegraf(
    exe: &Path,
    dir: &Path,
    id: &str,
    host: &str,
    port: u16,
    bootstrap: &str,
) -> anyhow::Result<Running> {
    let brokers: Vec<String> = bootstrap.split(',').map(|b| format!("{b:?}")).collect();
    // Flushes when a batch of 1,000 is full or after 1 s; a buffer of 100,000 metrics so
    // nothing is dropped for room; up to 5,000 MQTT messages in flight (acknowledged to the
    // broker once Kafka has them).
    let text = format!(
        r#"[agent]
  interval = "10s"
  flush_interval = "1s"
  metric_batch_size = 1000
  metric_buffer_limit = 100000
  omit_hostname = true
  quiet = true

[[inputs.mqtt_consumer]]
  servers = ["tcp://{host}:{port}"]
  topics = ["{id}/+/v"]
  qos = 1
  persistent_session = true
  client_id = "{id}"
  max_undelivered_messages = 5000
  data_format = "json_v2"
  [[inputs.mqtt_consumer.json_v2]]
    measurement_name = "reading"
    timestamp_path = "ts"
    timestamp_format = "unix_ms"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "v"
      type = "float"

[[outputs.kafka]]
  brokers = [{brokers}]
  topic = "{id}.readings"
  required_acks = -1
  data_format = "json"
"#,
        brokers = brokers.join(", "),
    );
    let config = dir.join("telegraf.conf");
    std::fs::write(&config, text)?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(&config)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(Running(child))
}

fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    edge_kafka::create_topics(
        &config,
        [&new],
        &edge_kafka::admin_options(Duration::from_secs(30)),
    )?;
    Ok(())
}

/// utime + stime of process `pid` (all its threads), from `/proc/PID/stat`.
fn child_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("/proc/PID/stat field")?.parse()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// The end of the measured span.
struct End {
    delivered: u64,
    complete: bool,
    at: Instant,
    cpu: Duration,
}

/// Counts the records of the subject's topic on a thread of its own; takes the subject's CPU
/// the moment the count reaches the goal.
struct Reader {
    seen: Arc<AtomicU64>,
    goal: Arc<AtomicU64>,
    end: mpsc::Receiver<anyhow::Result<(u64, Instant, Duration)>>,
}

impl Reader {
    fn start(bootstrap: &str, topic: &str, pid: u32) -> Reader {
        let seen = Arc::new(AtomicU64::new(0));
        let goal = Arc::new(AtomicU64::new(u64::MAX));
        let (end_tx, end) = mpsc::channel();
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        let (count, target) = (seen.clone(), goal.clone());
        std::thread::spawn(move || {
            let result = (|| {
                let consumer = reader(&bootstrap, &topic)?;
                loop {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(20)) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let n = count.load(Ordering::Relaxed);
                    if n >= target.load(Ordering::Relaxed) {
                        return Ok((n, Instant::now(), child_cpu(pid)?));
                    }
                }
            })();
            let _ = end_tx.send(result);
        });
        Reader { seen, goal, end }
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Waits until `n` more records than `base` arrived.
    async fn wait_for(&self, base: u64, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.seen() < base + n {
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} warm-up readings arrived within {timeout:?}",
                    self.seen() - base
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until the count reaches `base + n` (or `timeout`, then takes the CPU itself).
    fn wait_end(&self, base: u64, n: u64, timeout: Duration, pid: u32) -> anyhow::Result<End> {
        self.goal.store(base + n, Ordering::Relaxed);
        match self.end.recv_timeout(timeout) {
            Ok(result) => {
                let (seen, at, cpu) = result?;
                Ok(End {
                    delivered: seen - base,
                    complete: true,
                    at,
                    cpu,
                })
            }
            Err(_) => Ok(End {
                delivered: self.seen() - base,
                complete: false,
                at: Instant::now(),
                cpu: child_cpu(pid)?,
            }),
        }
    }
}

/// A `read_committed` consumer of every partition of `topic` from the beginning (waits for the
/// topic to exist).
fn reader(bootstrap: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.reader"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        // librdkafka backs off this long after an empty fetch (default 500 ms): that would be
        // counted as the subject's time.
        .set("fetch.error.backoff.ms", "5")
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let ps: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !ps.is_empty() {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    Ok(consumer)
}
