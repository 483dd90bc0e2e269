//! The agent's Modbus source against an independent peer: a pymodbus server
//! (`tests/peers/modbus_server.py`) serving values the test chose, encoded by pymodbus, over
//! Modbus TCP on loopback and Modbus RTU on a `socat` pty pair. The agent (the real binary)
//! polls it and forwards pass-through readings to the real Kafka; every reading a
//! `read_committed` reader sees must carry exactly the served value, once per (sensor, poll
//! time). Also: a device that goes away is a gap and `disconnected`, and comes back by itself;
//! and SIGKILL at random moments duplicates nothing and never pairs a value with the wrong time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_tests::bins::{spawn_agent_logged, workspace_binary, AgentProc};
use edge_tests::check::assert_none;
use edge_tests::http::{free_port, get};
use edge_tests::kafka::{read_committed, unique_topic};
use edge_tests::modbus::{Peer, PtyPair};
use edge_tests::Services;

/// One value the peer serves: table, register name, address, type, value, word and byte order.
type Served = (
    &'static str,
    &'static str,
    u16,
    &'static str,
    f64,
    &'static str,
    &'static str,
);

const TWO_POW_40: f64 = 1_099_511_627_776.0;

/// Every type, both word orders and both byte orders, coils and a discrete input.
fn served() -> Vec<Served> {
    vec![
        ("holding", "temp", 100, "f32", 21.5, "little", "big"),
        (
            "holding", "pressure", 102, "i32", -123_456.0, "little", "big",
        ),
        ("holding", "rpm", 104, "u16", 4321.0, "big", "little"),
        (
            "holding",
            "energy",
            105,
            "u32",
            4_000_000_000.0,
            "big",
            "big",
        ),
        ("holding", "offset", 107, "i16", -300.0, "big", "big"),
        ("holding", "ratio", 108, "f64", -1.25, "little", "little"),
        ("input", "flow", 10, "f32", f64::from(0.1f32), "big", "big"),
        ("input", "total", 12, "u64", TWO_POW_40, "big", "big"),
        ("coils", "pump", 3, "bool", 1.0, "big", "big"),
        ("coils", "valve", 4, "bool", 0.0, "big", "big"),
        ("discrete", "alarm", 0, "bool", 1.0, "big", "big"),
    ]
}

/// The peer's JSON for [`served`].
fn values_json() -> String {
    let mut tables: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (table, _, address, ty, value, word_order, byte_order) in served() {
        let entry = if ty == "bool" {
            serde_json::json!({ "address": address, "value": value != 0.0 })
        } else {
            serde_json::json!({
                "address": address, "type": ty, "value": value,
                "word_order": word_order, "byte_order": byte_order,
            })
        };
        tables.entry(table).or_default().push(entry);
    }
    serde_json::to_string(&tables).expect("JSON")
}

/// The `[[modbus.block]]`s over [`served`], plus an input block the peer does not serve (every
/// poll of it is an exception answer).
fn blocks() -> String {
    let mut text = String::new();
    for (kind, address, count) in [
        ("holding", 100, 12),
        ("input", 10, 6),
        ("coils", 3, 2),
        ("discrete", 0, 1),
    ] {
        text += &format!(
            "\n[[modbus.block]]\nkind = \"{kind}\"\naddress = {address}\ncount = {count}\nperiod_ms = 200\n"
        );
        for (_, name, reg, ty, _, word_order, byte_order) in
            served().into_iter().filter(|s| s.0 == kind)
        {
            text += &format!(
                "\n[[modbus.block.register]]\nname = \"{name}\"\naddress = {reg}\ntype = \"{ty}\"\n\
                 word_order = \"{word_order}\"\nbyte_order = \"{byte_order}\"\n"
            );
        }
    }
    text + "\n[[modbus.block]]\nkind = \"input\"\naddress = 500\ncount = 1\nperiod_ms = 200\n\
            \n[[modbus.block.register]]\nname = \"missing\"\naddress = 500\ntype = \"u16\"\n"
}

/// `rpm` is scaled by its own rule; every other register is `plc.<name>` unscaled.
const SENSORS: &str = r#"
[[sensor]]
source = "plc"
register = "rpm"
id = "plc.rpm"
scale = 0.5

[[sensor]]
source = "plc"
id = "plc.{register}"
"#;

/// The value Kafka must carry for each sensor.
fn expected() -> BTreeMap<String, f64> {
    served()
        .into_iter()
        .map(|(_, name, _, _, value, _, _)| {
            let value = if name == "rpm" { value * 0.5 } else { value };
            (format!("plc.{name}"), value)
        })
        .collect()
}

struct Agent {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    topic: String,
    metrics: SocketAddr,
    bootstrap: String,
}

impl Agent {
    /// An agent with one `[[modbus]]` device `plc` (`transport`: its `tcp = ...` or `serial =
    /// ...` lines) with `blocks`, pass-through to a fresh topic when `bootstrap` is given.
    fn new(transport: &str, blocks: &str, sensors: &str, bootstrap: Option<&str>) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let topic = unique_topic("modbus-readings");
        let metrics = free_port();
        let kafka = bootstrap.map_or(String::new(), |b| {
            format!(
                "[[pipeline]]\nname = \"p\"\nsensors = [\"*\"]\n\n[kafka]\nbootstrap_servers = \"{b}\"\n\
                 transaction_timeout_ms = 10000\n\n{}",
                edge_tests::config::kafka_topics(&topic, &topic, &format!("{topic}.progress"))
            )
        });
        let text = format!(
            "[agent]\nid = \"{id}\"\ndata_dir = {data:?}\n\n[ops]\nmetrics_listen = \"{metrics}\"\n\
             shutdown_timeout_s = 20\n\n[[modbus]]\nname = \"plc\"\n{transport}\ntimeout_ms = 500\n\
             {blocks}\n{sensors}\n{kafka}",
            id = unique_topic("modbus-agent"),
            data = dir.path().join("data").display().to_string(),
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text).expect("write config");
        Agent {
            dir,
            config_path,
            topic,
            metrics,
            bootstrap: bootstrap.unwrap_or_default().to_owned(),
        }
    }

    fn spawn(&self) -> AgentProc {
        let bin = workspace_binary("edge-agent", "edge-agent");
        spawn_agent_logged(&bin, &self.config_path, self.dir.path(), "warn", &[])
    }

    /// The value of counter or gauge `name{source="plc"...}` now (0 while nothing answers).
    fn metric(&self, name: &str) -> u64 {
        edge_tests::http::metric(self.metrics, name)
    }

    /// The `plc` lines of `/metrics`, for failure messages.
    fn page(&self) -> String {
        let body = get(self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let lines = body.lines().filter(|l| l.contains("plc"));
        lines.collect::<Vec<_>>().join("\n")
    }

    fn polls(&self) -> u64 {
        self.metric("edge_modbus_polls_total{source=\"plc\"}")
    }

    fn state(&self, state: &str) -> bool {
        self.metric(&format!(
            "edge_source_state{{source=\"plc\",state=\"{state}\"}}"
        )) == 1
    }

    /// Waits until `done` holds (checked every 100 ms), failing after `timeout` with `what`.
    fn wait(
        &self,
        agent: &mut AgentProc,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Agent) -> bool,
    ) {
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
        let records = read_committed(&self.bootstrap, &self.topic, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        records
            .iter()
            .map(|r| {
                let payload = r.payload.as_deref().unwrap_or_default();
                edge_tests::schema::Schema::Reading.check(payload);
                let json: serde_json::Value =
                    serde_json::from_slice(payload).expect("a reading is JSON");
                (
                    json["sensor"].as_str().expect("sensor").to_owned(),
                    json["ts"].as_u64().expect("ts"),
                    json["value"].as_f64().expect("value"),
                )
            })
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Each reading at most once per (sensor, ts).
fn assert_no_duplicates(readings: &[(String, u64, f64)]) {
    let mut seen = BTreeSet::new();
    let twice: Vec<_> = readings
        .iter()
        .filter(|(s, ts, _)| !seen.insert((s.clone(), *ts)))
        .collect();
    assert_none("readings stored twice (sensor, ts)", &twice);
}

/// Runs the agent against the peer until it has polled `polls` times, stops it, and checks that
/// Kafka holds exactly the served values.
fn served_values_reach_kafka(transport: &str, polls: u64) {
    let services = Services::from_env();
    let agent = Agent::new(
        transport,
        &blocks(),
        SENSORS,
        Some(&services.kafka_bootstrap),
    );
    let started = unix_ms();
    let mut proc = agent.spawn();
    agent.wait(&mut proc, Duration::from_secs(60), "polls", |a| {
        a.polls() >= polls
    });
    agent.wait(
        &mut proc,
        Duration::from_secs(5),
        "connected while it answers",
        |a| a.state("connected"),
    );
    assert!(
        agent.metric("edge_modbus_exceptions_total{source=\"plc\"}") > 0,
        "the unserved block answers with exceptions"
    );
    assert_eq!(
        agent.metric("edge_modbus_timeouts_total{source=\"plc\"}"),
        0
    );
    // A stop does not wait for the forwarder to empty the outbox: wait for Kafka first.
    agent.wait(
        &mut proc,
        Duration::from_secs(60),
        "readings in Kafka",
        |a| a.metric("edge_kafka_records_committed_total") >= 6 * 11,
    );
    proc.terminate(Duration::from_secs(30));
    let stopped = unix_ms();

    let readings = agent.readings();
    assert_no_duplicates(&readings);
    let expected = expected();
    let wrong: Vec<_> = readings
        .iter()
        .filter(|(s, ts, v)| {
            expected.get(s).map(|e| e.to_bits()) != Some(v.to_bits())
                || *ts < started
                || *ts > stopped
        })
        .take(10)
        .collect();
    assert_none(
        "readings whose value is not the served one (or out of the run)",
        &wrong,
    );
    let mut per_sensor: BTreeMap<&str, u64> = BTreeMap::new();
    for (s, _, _) in &readings {
        *per_sensor.entry(s).or_default() += 1;
    }
    for sensor in expected.keys() {
        let n = per_sensor.get(sensor.as_str()).copied().unwrap_or(0);
        assert!(n >= 3, "{sensor}: {n} readings in Kafka; {per_sensor:?}");
    }
    println!("{} readings, per sensor {per_sensor:?}", readings.len());
}

#[test]
fn tcp_readings_polled_from_pymodbus_reach_kafka_with_exactly_the_served_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let _peer = Peer::tcp(dir.path(), &values_json(), addr, &[]);
    served_values_reach_kafka(&format!("tcp = \"{addr}\""), 20);
}

#[test]
fn rtu_readings_over_a_pty_pair_reach_kafka_with_exactly_the_served_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pty = PtyPair::new(dir.path());
    // A pty refuses parity bits (tcsetattr: EINVAL), so both ends run 8N1 here.
    let a = pty.a.display().to_string();
    let args = ["--serial", a.as_str(), "--parity", "N", "--unit", "3"];
    let _peer = Peer::start(dir.path(), &values_json(), &args);
    let transport = format!(
        "serial = {:?}\nbaud = 19200\nparity = \"none\"\nunit = 3",
        pty.b.display().to_string()
    );
    served_values_reach_kafka(&transport, 20);
}

#[test]
fn a_device_that_stops_answering_is_a_gap_and_disconnected_until_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let mut peer = Peer::tcp(dir.path(), &values_json(), addr, &[]);
    let agent = Agent::new(&format!("tcp = \"{addr}\""), &blocks(), SENSORS, None);
    let mut proc = agent.spawn();
    agent.wait(&mut proc, Duration::from_secs(60), "first polls", |a| {
        a.polls() >= 5
    });
    agent.wait(&mut proc, Duration::from_secs(10), "connected", |a| {
        a.state("connected")
    });

    peer.kill();
    agent.wait(
        &mut proc,
        Duration::from_secs(10),
        "disconnected after the peer died",
        |a| a.state("disconnected"),
    );
    let polls = agent.polls();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.polls(),
        polls,
        "no answered polls while the device is gone: a gap"
    );
    let failures = agent.metric("edge_modbus_connect_errors_total{source=\"plc\"}")
        + agent.metric("edge_modbus_transport_errors_total{source=\"plc\"}");
    assert!(
        (1..=20).contains(&failures),
        "reconnects back off, never a busy loop: {failures} failures in about 2 s"
    );

    let _peer = Peer::tcp(dir.path(), &values_json(), addr, &[]);
    agent.wait(
        &mut proc,
        Duration::from_secs(40),
        "polls again after the peer is back",
        |a| a.polls() >= polls + 5,
    );
    agent.wait(&mut proc, Duration::from_secs(10), "connected again", |a| {
        a.state("connected")
    });
    assert!(agent.metric("edge_modbus_connects_total{source=\"plc\"}") >= 2);
    proc.terminate(Duration::from_secs(30));
}

/// When each value of the counting register was served: (unix ms, value), from the peer's log.
fn counter_log(path: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(path)
        .expect("counter log")
        .lines()
        .filter_map(|l| {
            let (t, v) = l.split_once(' ')?;
            Some((t.parse().ok()?, v.parse().ok()?))
        })
        .collect()
}

#[test]
fn agent_killed_with_sigkill_while_polling_duplicates_nothing_and_never_mistimes_a_value() {
    const KILLS: usize = 6;
    let services = Services::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_port();
    let log = dir.path().join("counter.log");
    let log_arg = log.display().to_string();
    let args = [
        "--counter",
        "200",
        "--counter-ms",
        "100",
        "--counter-log",
        log_arg.as_str(),
    ];
    let _peer = Peer::tcp(dir.path(), "{}", addr, &args);
    let blocks =
        "\n[[modbus.block]]\nkind = \"holding\"\naddress = 200\ncount = 1\nperiod_ms = 30\n\
                  \n[[modbus.block.register]]\nname = \"counter\"\naddress = 200\ntype = \"u16\"\n";
    let sensors = "\n[[sensor]]\nsource = \"plc\"\nid = \"plc.{register}\"\n";
    let agent = Agent::new(
        &format!("tcp = \"{addr}\""),
        blocks,
        sensors,
        Some(&services.kafka_bootstrap),
    );
    let mut seed = edge_tests::schedule::seed();
    println!("kill schedule seed: {seed}");
    for kill in 0..KILLS {
        let mut proc = agent.spawn();
        let alive_ms = 500 + edge_tests::schedule::next(&mut seed) % 1500;
        std::thread::sleep(Duration::from_millis(alive_ms));
        proc.assert_alive();
        proc.child.kill().expect("SIGKILL the agent");
        proc.child.wait().expect("reap the agent");
        println!("kill {kill}: after {alive_ms} ms");
    }
    let mut last = agent.spawn();
    agent.wait(
        &mut last,
        Duration::from_secs(60),
        "polls and readings in Kafka after the kills",
        |a| a.polls() >= 20 && a.metric("edge_kafka_records_committed_total") >= 100,
    );
    last.terminate(Duration::from_secs(30));

    let readings = agent.readings();
    assert_no_duplicates(&readings);
    assert!(
        readings.len() >= 40,
        "only {} readings reached Kafka",
        readings.len()
    );
    let served = counter_log(&log);
    // The value a poll at `ts` got was served at some instant between the request (`ts`) and
    // its answer (on loopback within milliseconds; 250 ms allowed for a loaded machine); the
    // log stamps each value just before serving it (50 ms allowed for the change to land). The
    // counter moves every 100 ms, so a value carried from an older poll, or a timestamp taken
    // at another moment than the poll (commit, forward), is caught.
    let mistimed: Vec<_> = readings
        .iter()
        .filter(|(_, ts, value)| {
            !served.iter().enumerate().any(|(i, (from, v))| {
                let until = served.get(i + 1).map_or(u64::MAX, |n| n.0 + 50);
                v == value && *from <= ts + 250 && until >= *ts
            })
        })
        .take(10)
        .collect();
    let distinct: BTreeSet<u64> = readings.iter().map(|r| r.2 as u64).collect();
    assert!(
        distinct.len() >= 20,
        "the counter was read at only {} values",
        distinct.len()
    );
    assert_none(
        "readings whose value was not served at their time",
        &mistimed,
    );
    println!("{} readings over {KILLS} kills", readings.len());
}
