//! Shared by the `window_*` suites: an agent configuration with one windowed pipeline over an
//! MQTT source, a QoS 1 publisher, the agent binary, and reading partials out of the outbox.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use edge_agent::config::Config;
use edge_agent::ingest::IngestLog;
use edge_agent::outbox::{self, OutboxRecord, RecordKind};
use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::Partial;
use rumqttc::{AsyncClient, QoS};

#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::mqtt::unique;

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub client_id: String,
    pub root: String,
    pub url: String,
}

impl Setup {
    /// A copy to move into a task (a publisher): the same paths and names, with an empty
    /// temporary directory of its own (the original keeps the agent's data).
    pub fn copy_for_task(&self) -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            config_path: self.config_path.clone(),
            client_id: self.client_id.clone(),
            root: self.root.clone(),
            url: self.url.clone(),
        }
    }
}

/// One MQTT source on `<root>/+/v` (JSON `{"v":..,"ts":..}`), sensor id = the device level,
/// one pipeline `w` over every sensor with the given `[pipeline.window]` body.
pub fn setup(url: &str, window: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = unique("edge-window");
    let client_id = unique("agent");
    let text = format!(
        r#"
[agent]
id = "test-agent"
data_dir = {data_dir:?}

[buffer]
batch_max_ms = 5

{source}
[[pipeline]]
name = "w"
sensors = ["*"]
[pipeline.window]
{window}
"#,
        data_dir = dir.path().display().to_string(),
        source = edge_tests::config::mqtt_json_source(url, &client_id, &root, "{dev}", ""),
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, text).expect("write config");
    Setup {
        dir,
        config_path,
        client_id,
        root,
        url: url.to_owned(),
    }
}

/// Creates the agent's persistent session with its subscription, so the broker queues
/// everything published from now on.
pub async fn create_session(setup: &Setup) {
    let options = edge_tests::mqtt::options(&setup.client_id, &setup.url);
    edge_tests::mqtt::create_session(options, &format!("{}/+/v", setup.root)).await;
}

/// One reading to publish: device, event time, value.
#[derive(Debug, Clone, Copy)]
pub struct Msg {
    pub dev: u64,
    pub ts: u64,
    pub value: f64,
}

/// Publishes `msgs` at QoS 1, pausing `pace` every 100; returns the broker's PUBACK count.
pub async fn publish(setup: &Setup, msgs: Vec<Msg>, pace: Duration) -> u64 {
    let (client, eventloop) =
        AsyncClient::new(edge_tests::mqtt::options(&unique("pub"), &setup.url), 1000);
    let acks = edge_tests::mqtt::count_pubacks(eventloop, msgs.len() as u64);
    for (i, m) in msgs.iter().enumerate() {
        let topic = format!("{}/d{}/v", setup.root, m.dev);
        let body = format!(r#"{{"v":{},"ts":{}}}"#, m.value, m.ts);
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish queued");
        if i % 100 == 99 {
            tokio::time::sleep(pace).await;
        }
    }
    let acked = acks.await.expect("publisher task");
    let _ = client.disconnect().await;
    acked
}

/// Every outbox record (the agent must not be running: redb holds a file lock).
pub fn outbox_records(setup: &Setup) -> Vec<OutboxRecord> {
    let config = Config::load(&setup.config_path).expect("config");
    let log = IngestLog::open(&config.ingest_path(), edge_agent::service::limits(&config))
        .expect("open database");
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = outbox::read_after(&log.database(), after, 1000, 1 << 20).expect("outbox");
        let Some((last, _)) = batch.last() else { break };
        after = *last;
        out.extend(batch.into_iter().map(|(_, r)| r));
    }
    out
}

pub fn partials(records: &[OutboxRecord]) -> Vec<Partial> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::Partial)
        .map(|r| Partial::decode(&r.payload).expect("partial decodes"))
        .collect()
}

/// Merges every revision per (series, window start).
pub fn merged(partials: &[Partial]) -> BTreeMap<(String, i64), Aggregate> {
    let mut m: BTreeMap<(String, i64), Aggregate> = BTreeMap::new();
    for p in partials {
        m.entry((p.series.to_string(), p.window_start_ms))
            .or_default()
            .merge(&p.aggregate);
    }
    m
}

/// Equal as the issue asks: count, min, max, first, last and the sketch exactly (the sketch
/// merges exactly, so every quantile is equal too), sum and variance within rounding.
pub fn assert_same(what: &str, a: &Aggregate, b: &Aggregate) {
    assert_eq!(a.count(), b.count(), "{what}: count");
    assert_eq!((a.min(), a.max()), (b.min(), b.max()), "{what}: min/max");
    assert_eq!(
        (a.first(), a.last()),
        (b.first(), b.last()),
        "{what}: first/last"
    );
    assert_eq!(a.sketch(), b.sketch(), "{what}: sketch");
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()));
    assert!(
        close(a.sum(), b.sum()),
        "{what}: sum {} vs {}",
        a.sum(),
        b.sum()
    );
    let (va, vb) = (a.variance().unwrap_or(0.0), b.variance().unwrap_or(0.0));
    assert!(close(va, vb), "{what}: variance {va} vs {vb}");
}

/// `target/<profile>/edge-agent`, built on demand (the binary under test).
pub fn agent_binary() -> PathBuf {
    binary("edge-agent", "edge-agent")
}

/// `target/<profile>/<bin>` of `package`, built on demand.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    edge_tests::bins::workspace_binary(package, bin)
}

pub fn spawn_agent(bin: &Path, setup: &Setup) -> Child {
    edge_tests::bins::spawn_agent(bin, &setup.config_path)
}

/// Runs the agent for `secs`, then stops it with SIGTERM and waits for it.
pub async fn run_for(bin: &Path, setup: &Setup, secs: u64) {
    let mut agent = spawn_agent(bin, setup);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status();
    agent.wait().expect("reap agent");
}

/// Runs the agent in 3-second turns until `done(outbox)` or `limit` passes; returns the outbox.
pub async fn run_until(
    bin: &Path,
    setup: &Setup,
    limit: Duration,
    done: impl Fn(&[OutboxRecord]) -> bool,
) -> Vec<OutboxRecord> {
    let deadline = Instant::now() + limit;
    loop {
        run_for(bin, setup, 3).await;
        let records = outbox_records(setup);
        if done(&records) || Instant::now() > deadline {
            return records;
        }
    }
}

#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::schedule::next;
