//! Sparkplug B end to end: payloads built by Google's `protobuf` from the agent's checked-in
//! `sparkplug_b.proto` (`tests/peers/sparkplug_payloads.py`, a producer no one here wrote),
//! published at QoS 1 to the test Mosquitto, read by the real agent binary and forwarded to the
//! real Kafka. Births declare aliases; data arrives by alias (and once by name); the agent is
//! killed with SIGKILL between the births and the next data, and restarted on a *new* MQTT
//! session (so the broker cannot hand it the births again: only the alias table on disk can
//! resolve that data); then the node is born again with new aliases. Every metric must reach
//! Kafka under the right sensor id with the right value and time, once; the old alias after the
//! rebirth must not resolve.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};

use edge_tests::bins::{spawn_agent_logged, workspace_binary, AgentProc};
use edge_tests::check::assert_none;
use edge_tests::http::{free_port, get};
use edge_tests::kafka::{read_committed, unique_topic};
use edge_tests::mqtt::{count_pubacks, create_session, options, unique};
use edge_tests::sparkplug::payloads;
use edge_tests::Services;

struct Agent {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    topic: String,
    metrics: SocketAddr,
    services: Services,
    group: String,
}

impl Agent {
    fn new(services: Services) -> Agent {
        Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            config_path: PathBuf::new(),
            topic: unique_topic("sparkplug-readings"),
            metrics: free_port(),
            services,
            group: unique("plant"),
        }
    }

    /// Writes the configuration for MQTT client id `client_id` (same data directory each time).
    fn configure(&mut self, client_id: &str) {
        let text = format!(
            r#"[agent]
id = "{id}"
data_dir = {data:?}

[ops]
metrics_listen = "{metrics}"
shutdown_timeout_s = 20

[[mqtt]]
name = "sp"
url = "{url}"
client_id = "{client_id}"
payload = {{ format = "sparkplug_b" }}
subscribe = [{{ topic = "spBv1.0/{group}/#", qos = 1 }}]

[[sensor]]
source = "sp"
topic = "spBv1.0/{{group}}/DDATA/{{node}}/{{device}}"
id = "{{group}}.{{node}}.{{device}}.{{payload}}"

[[sensor]]
source = "sp"
topic = "spBv1.0/{{group}}/NDATA/{{node}}"
id = "{{group}}.{{node}}.{{payload}}"

[[pipeline]]
name = "p"
sensors = ["*"]

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000

{topics}"#,
            id = unique_topic("sparkplug-agent"),
            data = self.dir.path().join("data").display().to_string(),
            metrics = self.metrics,
            url = self.services.mqtt_url,
            group = self.group,
            bootstrap = self.services.kafka_bootstrap,
            topics = edge_tests::config::kafka_topics(
                &self.topic,
                &self.topic,
                &format!("{}.progress", self.topic)
            ),
        );
        self.config_path = self.dir.path().join("agent.toml");
        std::fs::write(&self.config_path, text).expect("write config");
    }

    fn spawn(&self) -> AgentProc {
        let bin = workspace_binary("edge-agent", "edge-agent");
        spawn_agent_logged(&bin, &self.config_path, self.dir.path(), "warn", &[])
    }

    /// The value of the first `/metrics` line starting with `name` (0 when absent).
    fn metric(&self, name: &str) -> u64 {
        edge_tests::http::metric(self.metrics, name)
    }

    /// An `edge_sparkplug_*` counter of edge node `gw1`.
    fn node_metric(&self, family: &str) -> u64 {
        self.metric(&format!(
            "{family}{{source=\"sp\",group=\"{}\",edge_node=\"gw1\"}}",
            self.group
        ))
    }

    fn page(&self) -> String {
        let body = get(self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let lines = body
            .lines()
            .filter(|l| l.starts_with("edge_sparkplug") || l.starts_with("edge_ingest"));
        lines.collect::<Vec<_>>().join("\n")
    }

    fn wait(&self, agent: &mut AgentProc, what: &str, done: impl Fn(&Agent) -> bool) {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        while !done(self) {
            agent.assert_alive();
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}:\n{}\n{}",
                self.page(),
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every pass-through reading in Kafka: (sensor, ts, value).
    fn readings(&self) -> Vec<(String, u64, f64)> {
        let Ok(records) = read_committed(
            &self.services.kafka_bootstrap,
            &self.topic,
            Duration::from_secs(10),
        ) else {
            return Vec::new();
        };
        records
            .iter()
            .map(|r| {
                let json: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
                    .expect("a reading is JSON");
                (
                    json["sensor"].as_str().expect("sensor").to_owned(),
                    json["ts"].as_u64().expect("ts"),
                    json["value"].as_f64().expect("value"),
                )
            })
            .collect()
    }
}

/// Publishes the producer's payloads for `messages` at QoS 1, in order; waits for every PUBACK.
fn publish(rt: &tokio::runtime::Runtime, url: &str, messages: Value) {
    let built = payloads(&messages.to_string());
    rt.block_on(async {
        let (client, eventloop) = AsyncClient::new(options(&unique("sp-pub"), url), 100);
        let acks = count_pubacks(eventloop, built.len() as u64);
        for (topic, bytes) in built {
            client
                .publish(topic, QoS::AtLeastOnce, false, bytes)
                .await
                .expect("publish queued");
        }
        let acked = acks.await.expect("publisher task");
        assert_eq!(acked, messages.as_array().map_or(0, Vec::len) as u64);
        let _ = client.disconnect().await;
    });
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An NBIRTH of `gw1` declaring temp, count, on (and a string, never sent as data) at
/// `aliases[0..4]`.
fn nbirth(group: &str, ts: u64, aliases: [u64; 4]) -> Value {
    json!({"topic": format!("spBv1.0/{group}/NBIRTH/gw1"), "timestamp": ts, "seq": 0, "metrics": [
        {"name": "temp", "alias": aliases[0], "datatype": "Double", "value": 0.0},
        {"name": "count", "alias": aliases[1], "datatype": "Int32", "value": 0},
        {"name": "on", "alias": aliases[2], "datatype": "Boolean", "value": false},
        {"name": "label", "alias": aliases[3], "datatype": "String", "value": "x"},
    ]})
}

/// A DBIRTH of `gw1/pump` declaring rpm, i8, total at `aliases`.
fn dbirth(group: &str, ts: u64, aliases: [u64; 3]) -> Value {
    json!({"topic": format!("spBv1.0/{group}/DBIRTH/gw1/pump"), "timestamp": ts, "seq": 1, "metrics": [
        {"name": "rpm", "alias": aliases[0], "datatype": "Float", "value": 0.0},
        {"name": "i8", "alias": aliases[1], "datatype": "Int8", "value": 0},
        {"name": "total", "alias": aliases[2], "datatype": "UInt64", "value": 0},
    ]})
}

/// Node data by alias (no name, no datatype), each metric stamped `ts`.
fn ndata(group: &str, seq: u64, ts: u64, values: &[(u64, &str, Value)]) -> Value {
    let metrics: Vec<Value> = values
        .iter()
        .map(|(alias, as_type, v)| json!({"alias": alias, "as": as_type, "timestamp": ts, "value": v}))
        .collect();
    json!({"topic": format!("spBv1.0/{group}/NDATA/gw1"), "timestamp": ts, "seq": seq, "metrics": metrics})
}

fn ddata(group: &str, seq: u64, ts: u64, values: &[(u64, &str, Value)]) -> Value {
    let mut m = ndata(group, seq, ts, values);
    m["topic"] = json!(format!("spBv1.0/{group}/DDATA/gw1/pump"));
    m
}

#[test]
fn births_aliases_a_sigkill_and_a_rebirth_map_every_metric_to_its_sensor_in_kafka() {
    let services = Services::from_env();
    let url = services.mqtt_url.clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut agent = Agent::new(services);
    let g = agent.group.clone();
    let filter = format!("spBv1.0/{g}/#");
    let t0 = unix_ms();
    let mut expected: Vec<(String, u64, f64)> = Vec::new();
    let mut expect =
        |suffix: &str, ts: u64, v: f64| expected.push((format!("{g}.gw1.{suffix}"), ts, v));

    // 1. Births, then data by alias (and once by name), acknowledged: so committed.
    let first = unique("sp-agent");
    agent.configure(&first);
    rt.block_on(create_session(options(&first, &url), &filter));
    let mut proc = agent.spawn();
    let (a1, a2) = (t0 + 1, t0 + 2);
    publish(
        &rt,
        &url,
        json!([
            nbirth(&g, t0, [1, 2, 3, 4]),
            dbirth(&g, t0, [10, 11, 12]),
            ndata(&g, 2, a1, &[(1, "Double", json!(21.5)), (2, "Int32", json!(-7)), (3, "Boolean", json!(true))]),
            ddata(&g, 3, a2, &[(10, "Float", json!(1500.25)), (11, "Int8", json!(-100)), (12, "UInt64", json!(1u64 << 40))]),
            {"topic": format!("spBv1.0/{g}/NDATA/gw1"), "seq": 4, "metrics": [
                {"name": "temp", "timestamp": t0 + 3, "datatype": "Double", "value": 22.0}]},
        ]),
    );
    expect("temp", a1, 21.5);
    expect("count", a1, -7.0);
    expect("on", a1, 1.0);
    expect("pump.rpm", a2, 1500.25);
    expect("pump.i8", a2, -100.0);
    expect("pump.total", a2, 1_099_511_627_776.0);
    expect("temp", t0 + 3, 22.0);
    agent.wait(&mut proc, "every publish acked after its commit", |a| {
        a.metric("edge_ingest_acked_total") >= 5
    });
    assert_eq!(agent.node_metric("edge_sparkplug_births_total"), 2);

    // 2. SIGKILL; the next data goes to a NEW session, published while the agent is down, so
    //    only the aliases on disk can resolve it.
    proc.child.kill().expect("SIGKILL");
    let _ = proc.child.wait();
    let second = unique("sp-agent");
    agent.configure(&second);
    rt.block_on(create_session(options(&second, &url), &filter));
    let (b1, b2) = (t0 + 10, t0 + 11);
    publish(
        &rt,
        &url,
        json!([
            ndata(
                &g,
                5,
                b1,
                &[
                    (1, "Double", json!(23.0)),
                    (2, "Int32", json!(8)),
                    (3, "Boolean", json!(false))
                ]
            ),
            ddata(
                &g,
                6,
                b2,
                &[
                    (10, "Float", json!(-2.5)),
                    (11, "Int8", json!(5)),
                    (12, "UInt64", json!(7))
                ]
            ),
        ]),
    );
    expect("temp", b1, 23.0);
    expect("count", b1, 8.0);
    expect("on", b1, 0.0);
    expect("pump.rpm", b2, -2.5);
    expect("pump.i8", b2, 5.0);
    expect("pump.total", b2, 7.0);
    let mut proc = agent.spawn();
    agent.wait(&mut proc, "the queued data read after the restart", |a| {
        a.node_metric("edge_sparkplug_metrics_total") >= 6
    });

    // 3. A rebirth with new aliases; the old alias 1 must not resolve any more; a seq gap; deaths.
    let (c1, c2, c3) = (t0 + 20, t0 + 21, t0 + 22);
    publish(
        &rt,
        &url,
        json!([
            nbirth(&g, c1, [101, 102, 103, 104]),
            dbirth(&g, c1, [110, 111, 112]),
            ndata(&g, 2, c1, &[(101, "Double", json!(24.5)), (102, "Int32", json!(-9)), (103, "Boolean", json!(true))]),
            ddata(&g, 3, c2, &[(110, "Float", json!(3.75)), (111, "Int8", json!(-1)), (112, "UInt64", json!(9))]),
            ndata(&g, 5, c3, &[(101, "Double", json!(25.0))]),
            ndata(&g, 6, t0 + 23, &[(1, "Double", json!(99.0))]),
            {"topic": format!("spBv1.0/{g}/DDEATH/gw1/pump"), "timestamp": t0 + 24, "seq": 7},
            {"topic": format!("spBv1.0/{g}/NDEATH/gw1"), "timestamp": t0 + 24,
             "metrics": [{"name": "bdSeq", "datatype": "UInt64", "value": 0}]},
        ]),
    );
    expect("temp", c1, 24.5);
    expect("count", c1, -9.0);
    expect("on", c1, 1.0);
    expect("pump.rpm", c2, 3.75);
    expect("pump.i8", c2, -1.0);
    expect("pump.total", c2, 9.0);
    expect("temp", c3, 25.0);
    agent.wait(&mut proc, "the deaths counted", |a| {
        a.node_metric("edge_sparkplug_deaths_total") >= 2
    });
    assert_eq!(
        agent.node_metric("edge_sparkplug_births_total"),
        2,
        "{}",
        agent.page()
    );
    assert_eq!(
        agent.node_metric("edge_sparkplug_seq_gaps_total"),
        1,
        "seq 4 missing"
    );
    agent.wait(&mut proc, "the old alias dead-lettered", |a| {
        a.metric("edge_ingest_dead_lettered_total") >= 1
    });

    // Every expected reading in Kafka, once, and nothing else.
    let deadline = Instant::now() + Duration::from_secs(90);
    let want: BTreeSet<(String, u64, u64)> = expected
        .iter()
        .map(|(s, ts, v)| (s.clone(), *ts, v.to_bits()))
        .collect();
    let readings = loop {
        let readings = agent.readings();
        let have: BTreeSet<(String, u64, u64)> = readings
            .iter()
            .map(|(s, ts, v)| (s.clone(), *ts, v.to_bits()))
            .collect();
        if want.is_subset(&have) || Instant::now() > deadline {
            break readings;
        }
        proc.assert_alive();
        std::thread::sleep(Duration::from_secs(1));
    };
    proc.terminate(Duration::from_secs(30));
    let have: Vec<(String, u64, u64)> = readings
        .iter()
        .map(|(s, ts, v)| (s.clone(), *ts, v.to_bits()))
        .collect();
    let missing: Vec<_> = want.iter().filter(|w| !have.contains(w)).collect();
    assert_none("expected readings missing from Kafka", &missing);
    let unexpected: Vec<_> = have.iter().filter(|h| !want.contains(h)).collect();
    assert_none("readings in Kafka that no metric produced", &unexpected);
    assert_eq!(have.len(), want.len(), "each reading once");
}
