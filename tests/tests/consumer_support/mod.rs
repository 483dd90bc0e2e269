//! Shared by the `consumer_*` suites: topics and a configuration per test, raw readings turned
//! into partials and produced transactionally (as an agent would), the `edge-consumer` binary
//! spawned as a process, finals read back, and a reference batch computation over the raw
//! readings to compare against.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::{Partial, MAX_ENCODED_LEN};
use edge_tests::kafka::{base_config, create_topic, read_committed, unique_topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TXN: Duration = Duration::from_secs(30);

/// One test's topics, group and configuration directory.
pub struct Setup {
    pub bootstrap: String,
    pub input: String,
    pub finals: String,
    pub changelog: String,
    pub dead: String,
    pub group: String,
    pub dir: tempfile::TempDir,
    /// `[limits] batch_max_records` of the configurations written.
    pub batch: usize,
}

impl Setup {
    /// A fresh input topic with `partitions` partitions; outputs are created by the consumer.
    pub fn new(bootstrap: &str, name: &str, partitions: i32) -> Setup {
        let input = unique_topic(&format!("{name}-in"));
        create_topic(bootstrap, &input, partitions).unwrap_or_else(|e| panic!("{e}"));
        Setup::on_input(bootstrap, name, &input)
    }

    /// Another consumer group with its own outputs reading the same `input`.
    pub fn on_input(bootstrap: &str, name: &str, input: &str) -> Setup {
        Setup {
            bootstrap: bootstrap.to_owned(),
            input: input.to_owned(),
            finals: unique_topic(&format!("{name}-finals")),
            changelog: unique_topic(&format!("{name}-cl")),
            dead: unique_topic(&format!("{name}-dl")),
            group: unique_topic(&format!("{name}-group")),
            dir: tempfile::tempdir().expect("temp dir"),
            batch: 50,
        }
    }

    /// Writes a configuration for instance `instance`: `client` lines go under `[kafka.client]`,
    /// `window` lines under `[window]`, `extra` (whole tables) at the end.
    pub fn config(
        &self,
        instance: &str,
        idle_timeout_ms: i64,
        client: &str,
        window: &str,
        extra: &str,
    ) -> PathBuf {
        let text = format!(
            r#"[kafka]
bootstrap_servers = "{}"
group_id = "{}"
instance_id = "{instance}"
transaction_timeout_ms = 10000
[kafka.client]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"socket.timeout.ms" = "5000"
{client}
[topics]
inputs = ["{}"]
finals = "{}"
changelog = "{}"
dead_letters = "{}"
[window]
idle_timeout_ms = {idle_timeout_ms}
{window}
[limits]
batch_max_records = {}
batch_max_ms = 100
{extra}
"#,
            self.bootstrap,
            self.group,
            self.input,
            self.finals,
            self.changelog,
            self.dead,
            self.batch
        );
        let path = self.dir.path().join(format!("{instance}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Spawns `edge-consumer run`; its log goes to `{instance}.log` in the test's directory.
    pub fn spawn(&self, config: &Path, instance: &str) -> Child {
        self.spawn_binary(&consumer_binary(), config, instance)
    }

    /// [`Setup::spawn`] with another build of the consumer (the rolling-upgrade suite's).
    pub fn spawn_binary(&self, binary: &Path, config: &Path, instance: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(instance))
            .expect("log file");
        Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("CONSUMER_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-consumer")
    }

    /// Where an instance logs: `target/consumer-test-logs/{group}-{instance}.log`, kept after
    /// the test for a look at a failure.
    pub fn log_path(&self, instance: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/consumer-test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        dir.join(format!("{}-{instance}.log", self.group))
    }

    /// The last `lines` lines of an instance's log (for failure messages).
    pub fn log_tail(&self, instance: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(instance)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the instance's log holds `n` "partitions assigned" lines.
    pub fn wait_for_assignments(&self, instance: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self
            .log_tail(instance, usize::MAX)
            .matches("partitions assigned and restored")
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "no partition assignment within {timeout:?}; the log ends:\n{}",
                self.log_tail(instance, 20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The newest final of each key (read_committed), parsed.
    pub fn finals(&self) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        if let Ok(records) = read_committed(&self.bootstrap, &self.finals, Duration::from_secs(30))
        {
            for r in records {
                let key = String::from_utf8(r.key.unwrap_or_default()).expect("utf-8 key");
                let payload = r.payload.unwrap_or_default();
                edge_tests::schema::Schema::Final.check(&payload);
                let v = serde_json::from_slice(&payload).expect("JSON final");
                out.insert(key, v);
            }
        }
        out
    }

    /// Waits until the finals hold every key of `reference` with its count; returns them.
    pub fn wait_for_finals(
        &self,
        reference: &BTreeMap<String, Reference>,
        timeout: Duration,
    ) -> BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let finals = self.finals();
            let complete = reference.iter().all(|(k, r)| {
                finals.get(k).and_then(|v| v["count"].as_u64()) == Some(r.values.len() as u64)
            });
            if complete {
                return finals;
            }
            let done = reference
                .iter()
                .filter(|(k, r)| {
                    finals.get(*k).and_then(|v| v["count"].as_u64()) == Some(r.values.len() as u64)
                })
                .count();
            assert!(
                Instant::now() < deadline,
                "finals incomplete after {timeout:?}: {done} of {} windows complete",
                reference.len()
            );
            println!(
                "  waiting for finals: {done} of {} windows complete",
                reference.len()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Kills the consumer when a failing assertion unwinds (a passing test stops it first).
pub struct Running(pub Child);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Sends SIGTERM (a graceful stop between transactions) and waits for the exit.
pub fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "edge-consumer did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces `data` as the gateways would: window by window, each gateway's partials of a window
/// in one transaction, watermark = the window's end.
pub fn produce_by_window(bootstrap: &str, topic: &str, data: &[Cell], agents: &mut [FakeAgent]) {
    let mut starts: Vec<i64> = data.iter().map(|c| c.start_ms).collect();
    starts.sort_unstable();
    starts.dedup();
    for start in starts {
        for agent in agents.iter_mut() {
            let partials: Vec<_> = data
                .iter()
                .filter(|c| c.start_ms == start && c.gateway == agent.id)
                .map(|c| (c.partial(c.end_ms, 0), None))
                .collect();
            if !partials.is_empty() {
                agent.send_partials(topic, &partials);
            }
        }
    }
    let _ = bootstrap;
}

/// Produces each gateway's partials of `data` in one transaction per gateway (watermark = each
/// window's end), gateway after gateway.
pub fn produce_by_gateway(bootstrap: &str, topic: &str, data: &[Cell], gateways: &[&str]) {
    for g in gateways {
        let mut agent = FakeAgent::new(bootstrap, g);
        let partials: Vec<_> = data
            .iter()
            .filter(|c| c.gateway == *g)
            .map(|c| (c.partial(c.end_ms, 0), None))
            .collect();
        agent.send_partials(topic, &partials);
    }
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// `target/<profile>/edge-consumer`, built on demand.
pub fn consumer_binary() -> PathBuf {
    edge_tests::bins::workspace_binary("edge-consumer", "edge-consumer")
}

/// One raw reading of a gateway.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub ts_ms: i64,
    pub value: f64,
}

/// The raw readings of one (gateway, series, window): the input of one partial.
#[derive(Debug, Clone)]
pub struct Cell {
    pub gateway: String,
    pub series: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub readings: Vec<Reading>,
}

impl Cell {
    pub fn partial(&self, watermark_ms: i64, revision: u32) -> Partial {
        let mut aggregate = Aggregate::new();
        for r in &self.readings {
            aggregate.add(r.ts_ms, r.value).expect("finite");
        }
        Partial {
            series: self.series.as_str().try_into().expect("short series"),
            window_start_ms: self.start_ms,
            window_end_ms: self.end_ms,
            agent: self.gateway.as_str().try_into().expect("short id"),
            watermark_ms,
            revision,
            aggregate,
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift), so a failing run can be repeated.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        edge_tests::schedule::next(&mut self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Readings for `gateways` x `series` x `windows` windows of `size_ms` from `base_ms`: 1 to 6
/// readings per cell, positive values (relative errors are then simple).
pub fn cells(
    rng: &mut Rng,
    gateways: &[&str],
    series: &[&str],
    windows: i64,
    base_ms: i64,
    size_ms: i64,
) -> Vec<Cell> {
    let mut out = Vec::new();
    for w in 0..windows {
        for g in gateways {
            for s in series {
                let start = base_ms + w * size_ms;
                let n = 1 + rng.below(6);
                let readings = (0..n)
                    .map(|_| Reading {
                        ts_ms: start + rng.below(size_ms as u64) as i64,
                        value: 1.0 + rng.below(100_000) as f64 / 100.0,
                    })
                    .collect();
                out.push(Cell {
                    gateway: (*g).to_owned(),
                    series: (*s).to_owned(),
                    start_ms: start,
                    end_ms: start + size_ms,
                    readings,
                });
            }
        }
    }
    out
}

/// What a batch computation over the raw readings says about one final window.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    pub values: Vec<f64>,
    pub first: Option<(i64, f64)>,
    pub last: Option<(i64, f64)>,
    pub gateways: std::collections::BTreeSet<String>,
}

/// Reference finals keyed like the consumer's output (`{group}|{start}|{end}`), grouping by
/// series and rolling windows up to `rollup_ms` when given.
pub fn reference(cells: &[Cell], rollup_ms: Option<i64>) -> BTreeMap<String, Reference> {
    let mut out: BTreeMap<String, Reference> = BTreeMap::new();
    for c in cells {
        let (s, e) = match rollup_ms {
            Some(r) => (
                c.start_ms.div_euclid(r) * r,
                c.start_ms.div_euclid(r) * r + r,
            ),
            None => (c.start_ms, c.end_ms),
        };
        let r = out.entry(format!("{}|{s}|{e}", c.series)).or_default();
        r.gateways.insert(c.gateway.clone());
        for x in &c.readings {
            r.values.push(x.value);
            let key = |p: (i64, f64)| (p.0, p.1.to_bits() ^ (1 << 63));
            if r.first.is_none_or(|f| key((x.ts_ms, x.value)) < key(f)) {
                r.first = Some((x.ts_ms, x.value));
            }
            if r.last.is_none_or(|l| key((x.ts_ms, x.value)) > key(l)) {
                r.last = Some((x.ts_ms, x.value));
            }
        }
    }
    out
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Checks one final against the reference: exact count/min/max/first/last, sum/mean/stddev up
/// to rounding, quantiles within the sketch's 1 % relative error of a neighbouring rank.
pub fn check_final(key: &str, v: &serde_json::Value, r: &Reference) {
    let n = r.values.len();
    let mut sorted = r.values.clone();
    sorted.sort_by(f64::total_cmp);
    let sum: f64 = sorted.iter().sum();
    let mean = sum / n as f64;
    let var = sorted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    let f = |name: &str| {
        v[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {name} missing: {v}"))
    };
    assert_eq!(v["count"].as_u64(), Some(n as u64), "{key}: count");
    // Exact values; the 1e-15 only absorbs serde_json's parsing of the shortest decimal form.
    assert!(
        close(f("min"), sorted[0], 1e-15),
        "{key}: min {} vs {}",
        f("min"),
        sorted[0]
    );
    assert!(close(f("max"), sorted[n - 1], 1e-15), "{key}: max");
    assert!(
        close(f("sum"), sum, 1e-9),
        "{key}: sum {} vs {sum}",
        f("sum")
    );
    assert!(close(f("mean"), mean, 1e-9), "{key}: mean");
    assert!(
        (f("stddev") - var.sqrt()).abs() <= 1e-6 * mean.max(1.0),
        "{key}: stddev {} vs {}",
        f("stddev"),
        var.sqrt()
    );
    let first = r.first.expect("readings");
    let last = r.last.expect("readings");
    assert_eq!(
        v["first"]["ts_ms"].as_i64(),
        Some(first.0),
        "{key}: first ts"
    );
    assert_eq!(
        v["first"]["value"].as_f64(),
        Some(first.1),
        "{key}: first value"
    );
    assert_eq!(v["last"]["ts_ms"].as_i64(), Some(last.0), "{key}: last ts");
    assert_eq!(
        v["last"]["value"].as_f64(),
        Some(last.1),
        "{key}: last value"
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
        let est = f(name);
        let rank = q * (n - 1) as f64;
        let lo = sorted[(rank.floor() as usize).saturating_sub(1)];
        let hi = sorted[(rank.ceil() as usize + 1).min(n - 1)];
        assert!(
            est >= lo * (1.0 - 0.0101) && est <= hi * (1.0 + 0.0101),
            "{key}: {name} = {est} outside [{lo}, {hi}] +- 1 %"
        );
    }
    let gws: Vec<String> = v["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .map(|g| g.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        gws,
        r.gateways.iter().cloned().collect::<Vec<_>>(),
        "{key}: gateways"
    );
}

/// A transactional producer standing in for one agent.
pub struct FakeAgent {
    producer: BaseProducer,
    seq: u64,
    pub id: String,
}

impl FakeAgent {
    /// One fake agent per gateway id, in order.
    pub fn fleet(bootstrap: &str, gateways: &[&str]) -> Vec<FakeAgent> {
        gateways
            .iter()
            .map(|g| FakeAgent::new(bootstrap, g))
            .collect()
    }

    pub fn new(bootstrap: &str, id: &str) -> FakeAgent {
        let producer: BaseProducer = base_config(bootstrap)
            .set(
                "transactional.id",
                unique_topic(&format!("fake-agent-{id}")),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", "30000")
            .set("retry.backoff.ms", "10")
            .create()
            .expect("producer");
        producer.init_transactions(TXN).expect("init_transactions");
        FakeAgent {
            producer,
            seq: 0,
            id: id.to_owned(),
        }
    }

    /// Sends `records` (key, payload, record timestamp) in one transaction, headers as the
    /// agent's forwarder sets them.
    pub fn send(&mut self, topic: &str, records: &[(String, Vec<u8>, Option<i64>)]) {
        self.producer.begin_transaction().expect("begin");
        for (key, payload, ts) in records {
            self.seq += 1;
            let seq = self.seq.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "agent",
                    value: Some(self.id.as_str()),
                })
                .insert(Header {
                    key: "seq",
                    value: Some(seq.as_str()),
                })
                .insert(Header {
                    key: "schema",
                    value: Some("edge.partial"),
                });
            let mut rec = BaseRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers);
            if let Some(ts) = ts {
                rec = rec.timestamp(*ts);
            }
            let mut rec = Some(rec);
            while let Some(r) = rec.take() {
                if let Err((e, r)) = self.producer.send(r) {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "send: {e}"
                    );
                    self.producer.poll(Duration::from_millis(10));
                    rec = Some(r);
                }
            }
        }
        self.producer.commit_transaction(TXN).expect("commit");
    }

    /// Sends partials (their watermark given) in transactions of at most 200.
    pub fn send_partials(&mut self, topic: &str, partials: &[(Partial, Option<i64>)]) {
        for chunk in partials.chunks(200) {
            let records: Vec<_> = chunk
                .iter()
                .map(|(p, ts)| (p.series.to_string(), encode(p), *ts))
                .collect();
            self.send(topic, &records);
        }
    }
}

/// The version-1 envelope of a partial.
pub fn encode(p: &Partial) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    let n = p.encode(&mut buf).expect("encode");
    buf.truncate(n);
    buf
}
