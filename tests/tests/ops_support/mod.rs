//! Shared by the `ops_*` suites: an agent with one MQTT source and a pass-through pipeline to
//! Kafka, its metrics listener on a free loopback port, a QoS 1 publisher whose values number
//! the messages, the `edge-agent` binary, tiny HTTP GETs, and accounting by value in Kafka.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_tests::bins::spawn_agent_logged;
use edge_tests::check::assert_none;
use edge_tests::kafka::{read_committed, unique_topic};
use rumqttc::{AsyncClient, QoS};

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub id: String,
    pub client_id: String,
    pub root: String,
    pub url: String,
    pub bootstrap: String,
    pub topic: String,
    pub metrics: SocketAddr,
}

#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::http::free_port;

impl Setup {
    pub fn new(mqtt_url: &str, bootstrap: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = Setup {
            config_path: dir.path().join("agent.toml"),
            dir,
            id: unique_topic("ops-agent"),
            client_id: unique_topic("ops-client"),
            root: unique_topic("ops-root"),
            url: mqtt_url.to_owned(),
            bootstrap: bootstrap.to_owned(),
            topic: unique_topic("ops-readings"),
            metrics: free_port(),
        };
        setup.write_config("{dev}", "");
        setup
    }

    /// Writes the configuration with sensor id template `id_template`; `extra` is appended
    /// to the `[[pipeline]]` table (to make a file bad on purpose).
    pub fn write_config(&self, id_template: &str, extra: &str) {
        let text = format!(
            r#"[agent]
id = "{id}"
data_dir = {data_dir:?}

[ops]
metrics_listen = "{metrics}"
shutdown_timeout_s = 20

{source}
[[pipeline]]
name = "p"
sensors = ["*"]
{extra}

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000

{topics}"#,
            topics = edge_tests::config::kafka_topics(
                &self.topic,
                &self.topic,
                &format!("{}.progress", self.topic),
            ),
            id = self.id,
            data_dir = self.dir.path().join("data").display().to_string(),
            metrics = self.metrics,
            source = edge_tests::config::mqtt_json_source(
                &self.url,
                &self.client_id,
                &self.root,
                id_template,
                "",
            ),
            bootstrap = self.bootstrap,
        );
        // Write then rename, as an operator's tooling should: SIGHUP never sees half a file.
        let tmp = self.dir.path().join("agent.toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Spawns `edge-agent run`; stderr goes to a file in the data directory.
    pub fn spawn(&self, bin: &Path) -> Proc {
        self.spawn_with_env(bin, &[])
    }

    /// [`Setup::spawn`] with extra environment variables.
    pub fn spawn_with_env(&self, bin: &Path, env: &[(&str, &str)]) -> Proc {
        spawn_agent_logged(bin, &self.config_path, self.dir.path(), "info", env)
    }

    /// `GET path` on the agent's metrics listener: (status, body); `None` while it does not
    /// answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, proc: &mut Proc, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            proc.assert_alive();
            assert!(
                Instant::now() < deadline,
                "not ready within {timeout:?}: {:?}\n{}",
                self.get("/readyz"),
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One value of `/metrics`, by its full series name.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// The `/inspect` snapshot of the running agent.
    pub fn inspect(&self) -> Option<serde_json::Value> {
        match self.get("/inspect")? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Waits until `n` readings were accepted since the database was created and both the log
    /// and the outbox are empty (everything committed to Kafka).
    pub fn wait_drained(&self, proc: &mut Proc, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.inspect() {
                let get = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
                if get("accepted") >= n && get("log_readings") == 0 && get("outbox_records") == 0 {
                    return;
                }
            }
            proc.assert_alive();
            assert!(
                Instant::now() < deadline,
                "not drained within {timeout:?}: {:?}",
                self.inspect()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::http::get as http_get;

#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::bins::AgentProc as Proc;

/// How most ops tests begin: the `edge-agent` binary, a setup on the test brokers with the
/// agent's MQTT session created, and the agent spawned and ready (`/readyz` 200 within 30 s).
pub async fn ready_agent(services: &edge_tests::Services) -> (PathBuf, Setup, Proc) {
    let bin = agent_binary();
    let setup = Setup::new(&services.mqtt_url, &services.kafka_bootstrap);
    create_session(&setup).await;
    let mut agent = setup.spawn(&bin);
    setup.wait_ready(&mut agent, Duration::from_secs(30));
    (bin, setup, agent)
}

/// Creates the agent's persistent session, so the broker queues everything from now on.
pub async fn create_session(setup: &Setup) {
    let options = edge_tests::mqtt::options(&setup.client_id, &setup.url);
    edge_tests::mqtt::create_session(options, &format!("{}/+/v", setup.root)).await;
}

/// Publishes values `from..to` at QoS 1 over 4 devices, `per_100` apart every 100 messages;
/// returns the broker's PUBACK count.
pub async fn publish(setup: &Setup, from: u64, to: u64, per_100: Duration) -> u64 {
    publish_paced(setup, from, to, 100, per_100).await
}

/// The timestamp message `i` carries (value `i`, `ts` = [`TS0`] + `i`).
pub const TS0: u64 = 1_700_000_000_000;

/// [`publish`] in bursts of `burst` messages, `pause` apart: small bursts make a stream with
/// no quiet gap for a signal to fall into.
pub async fn publish_paced(setup: &Setup, from: u64, to: u64, burst: u64, pause: Duration) -> u64 {
    let (client, eventloop) = AsyncClient::new(
        edge_tests::mqtt::options(&unique_topic("ops-pub"), &setup.url),
        1000,
    );
    let acks = edge_tests::mqtt::count_pubacks(eventloop, to - from);
    for i in from..to {
        let topic = format!("{}/d{}/v", setup.root, i % 4);
        let body = format!(r#"{{"v":{i},"ts":{}}}"#, TS0 + i);
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish queued");
        if i % burst == burst - 1 {
            tokio::time::sleep(pause).await;
        }
    }
    let acked = acks.await.expect("publisher task");
    let _ = client.disconnect().await;
    acked
}

/// One pass-through reading as the agent delivered it to Kafka.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub sensor: String,
    pub ts: u64,
    pub value: u64,
}

/// Every reading in the readings topic (`read_committed`), in topic order per partition.
pub fn delivered(setup: &Setup) -> Vec<Delivered> {
    let records = read_committed(&setup.bootstrap, &setup.topic, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    records
        .iter()
        .map(|r| {
            let payload = r.payload.as_deref().expect("payload");
            edge_tests::schema::Schema::Reading.check(payload);
            let json: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
            Delivered {
                sensor: json["sensor"].as_str().expect("sensor").to_owned(),
                ts: json["ts"].as_u64().expect("ts"),
                value: json["value"].as_f64().expect("value") as u64,
            }
        })
        .collect()
}

/// Reads the readings topic (`read_committed`) and asserts every value `0..n` is there, none
/// twice under one sensor id, and at most `remapped` values twice under two different ids (a
/// redelivery mapped again after a mapping change); returns the sensor ids of each value.
pub fn account(setup: &Setup, n: u64, remapped: usize) -> BTreeMap<u64, Vec<String>> {
    account_delivered(&delivered(setup), n, remapped)
}

/// [`account`] over readings already read.
pub fn account_delivered(
    records: &[Delivered],
    n: u64,
    remapped: usize,
) -> BTreeMap<u64, Vec<String>> {
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in records {
        seen.entry(r.value).or_default().push(r.sensor.clone());
    }
    let missing: Vec<u64> = (0..n).filter(|v| !seen.contains_key(v)).collect();
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(v, _)| *v)
        .collect();
    let same_id: Vec<u64> = seen
        .iter()
        .filter(|(_, s)| (1..s.len()).any(|i| s[..i].contains(&s[i])) || s.len() > 2)
        .map(|(v, _)| *v)
        .collect();
    println!(
        "{} records in Kafka: {} missing, {} more than once ({} under one sensor id)",
        records.len(),
        missing.len(),
        twice.len(),
        same_id.len()
    );
    for v in twice.iter().take(5) {
        println!("value {v}: sensors {:?}", seen[v]);
    }
    assert_none("missing values", &missing);
    assert_none("values more than once under one id", &same_id);
    assert!(
        twice.len() <= remapped,
        "values twice (first 20): {:?}",
        &twice[..twice.len().min(20)]
    );
    assert_eq!(records.len() as u64, n + twice.len() as u64);
    seen
}

/// `target/<profile>/edge-agent`, built on demand.
pub fn agent_binary() -> PathBuf {
    edge_tests::bins::workspace_binary("edge-agent", "edge-agent")
}
