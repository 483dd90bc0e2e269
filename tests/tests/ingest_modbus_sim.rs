//! The agent's Modbus source against `firmware-sim modbus`: simulated devices whose register
//! values change every 50 ms, over Modbus TCP on loopback and Modbus RTU on a `socat` pty pair.
//! The agent (the real binary) polls them and forwards pass-through readings to the real Kafka.
//!
//! The simulator's ledger lists, in the order it happened, every value installation and every
//! request it took. One block per device means one request per poll, so the `answered`
//! requests of a device and its readings in Kafka pair up in order: the j-th reading of each
//! channel must carry that channel's value at the j-th answered request, and the request must
//! have been taken between the poll's timestamp and its timeout. A reading lost in the middle,
//! a duplicate, a value carried over from another poll or a timestamp taken at another moment
//! breaks the pairing. Only the very last answer may be missing (the simulator stops first, and
//! an answer it took may not have left).
//!
//! With faults injected (no answer, `ServerDeviceBusy` exceptions, slow answers), the agent's
//! `edge_modbus_*` counters must equal what the simulator did, and the answered polls must
//! still pair up one to one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::bins::{spawn_agent_logged, workspace_binary, AgentProc};
use edge_tests::check::assert_none;
use edge_tests::http::{free_port, get};
use edge_tests::kafka::{read_committed, unique_topic};
use edge_tests::modbus::PtyPair;
use edge_tests::Services;

/// f32 channels per device (8 registers).
const CHANNELS: u16 = 4;
/// The agent's `timeout_ms`: an answer comes within it, or the poll fails.
const TIMEOUT_MS: u64 = 1000;

/// A pass-through reading in Kafka: (sensor, ts, value).
type Reading = (String, u64, f64);
/// The ledger per device (unit id).
type Ledgers = BTreeMap<u64, DeviceLedger>;

/// A running `firmware-sim modbus`, killed when dropped.
struct Sim {
    child: Child,
    ledger: PathBuf,
    log: PathBuf,
    /// Its first stdout line after `=`: the TCP address or the serial path.
    endpoint: String,
    stopped: bool,
}

impl Sim {
    /// Starts the simulator with `args` (plus a ledger and fast-changing sine channels) and
    /// waits for its `MODBUS_TCP=`/`MODBUS_RTU=` line.
    fn start(dir: &Path, args: &[&str]) -> Sim {
        let ledger = dir.join("modbus-ledger.jsonl");
        let log = dir.join("firmware-sim.stderr");
        let channels = CHANNELS.to_string();
        let mut child = Command::new(workspace_binary("firmware-sim", "firmware-sim"))
            .args(["modbus", "--channels", &channels, "--update-ms", "50"])
            .args(["--model", "sine:offset=20:amplitude=5:period=7:noise=0.5"])
            .args(["--progress-secs", "0", "--ledger"])
            .arg(&ledger)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("sim stderr file"),
            ))
            .spawn()
            .expect("spawn firmware-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the simulator's first line");
        let endpoint = line
            .trim()
            .split_once('=')
            .map(|(_, e)| e.to_owned())
            .unwrap_or_default();
        let sim = Sim {
            child,
            ledger,
            log,
            endpoint,
            stopped: false,
        };
        assert!(
            !sim.endpoint.is_empty(),
            "firmware-sim did not start ({line:?}):\n{}",
            sim.stderr()
        );
        sim
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; waits for a clean exit (the ledger then has its `end` record).
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait for firmware-sim");
        assert!(
            status.success(),
            "firmware-sim: {status}\n{}",
            self.stderr()
        );
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the ledger says about one device (unit id).
#[derive(Debug, Default)]
struct DeviceLedger {
    /// Each `answered` request: when it was taken and the channel values it was answered with.
    answered: Vec<(u64, Vec<f32>)>,
    busy: u64,
    refused: u64,
    dropped: u64,
    slow: u64,
}

/// Replays the ledger in order: the values in force at each request are the last installed.
fn read_ledger(path: &Path) -> (Ledgers, bool) {
    let text = std::fs::read_to_string(path).expect("read the simulator's ledger");
    let mut devices: BTreeMap<u64, DeviceLedger> = BTreeMap::new();
    let mut current: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let mut clean = false;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a ledger line is JSON");
        let device = r["device"].as_u64().unwrap_or(0);
        match r["kind"].as_str() {
            Some("modbus_values") => {
                let values = r["values"].as_array().expect("values");
                let values = values.iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32);
                current.insert(device, values.collect());
            }
            Some("modbus_request") => {
                let entry = devices.entry(device).or_default();
                if r["delay_ms"].as_u64().unwrap_or(0) > 0 {
                    entry.slow += 1;
                }
                match r["outcome"].as_str() {
                    Some("answered") => {
                        let values = current
                            .get(&device)
                            .cloned()
                            .expect("values before requests");
                        let at = r["unix_ms"].as_u64().expect("unix_ms");
                        entry.answered.push((at, values));
                    }
                    Some("busy") => entry.busy += 1,
                    Some("refused") => entry.refused += 1,
                    Some("dropped") => entry.dropped += 1,
                    other => panic!("unknown outcome {other:?}"),
                }
            }
            Some("end") => clean = r["clean"].as_bool().unwrap_or(false),
            _ => {}
        }
    }
    (devices, clean)
}

struct Agent {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    topic: String,
    metrics: SocketAddr,
    bootstrap: String,
}

impl Agent {
    /// An agent with one `[[modbus]]` source `sim<unit>` per `(unit, transport lines)`, each one
    /// holding block over every channel polled every 100 ms; readings `sim<unit>.c<i>` pass
    /// through to a fresh topic.
    fn new(devices: &[(u8, String)], bootstrap: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let topic = unique_topic("modbus-sim-readings");
        let metrics = free_port();
        let mut sources = String::new();
        for (unit, transport) in devices {
            sources += &format!(
                "[[modbus]]\nname = \"sim{unit}\"\n{transport}\nunit = {unit}\ntimeout_ms = {TIMEOUT_MS}\n\n\
                 [[modbus.block]]\nkind = \"holding\"\naddress = 0\ncount = {}\nperiod_ms = 100\n",
                CHANNELS * 2
            );
            for c in 0..CHANNELS {
                sources += &format!(
                    "\n[[modbus.block.register]]\nname = \"c{c}\"\naddress = {}\ntype = \"f32\"\n",
                    c * 2
                );
            }
            sources += &format!(
                "\n[[sensor]]\nsource = \"sim{unit}\"\nid = \"sim{unit}.{{register}}\"\n\n"
            );
        }
        let text = format!(
            "[agent]\nid = \"{id}\"\ndata_dir = {data:?}\n\n[ops]\nmetrics_listen = \"{metrics}\"\n\
             shutdown_timeout_s = 20\n\n{sources}\
             [[pipeline]]\nname = \"p\"\nsensors = [\"*\"]\n\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\n\
             transaction_timeout_ms = 10000\n\n{topics}",
            id = unique_topic("modbus-sim-agent"),
            data = dir.path().join("data").display().to_string(),
            topics = edge_tests::config::kafka_topics(&topic, &topic, &format!("{topic}.progress")),
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text).expect("write config");
        Agent {
            dir,
            config_path,
            topic,
            metrics,
            bootstrap: bootstrap.to_owned(),
        }
    }

    fn spawn(&self) -> AgentProc {
        let bin = workspace_binary("edge-agent", "edge-agent");
        spawn_agent_logged(&bin, &self.config_path, self.dir.path(), "warn", &[])
    }

    /// The value of the metric line starting with `name` (0 while absent).
    fn metric(&self, name: &str) -> u64 {
        edge_tests::http::metric(self.metrics, name)
    }

    /// `edge_modbus_<family>_total` of source `sim<unit>`.
    fn modbus(&self, family: &str, unit: u8) -> u64 {
        self.metric(&format!(
            "edge_modbus_{family}_total{{source=\"sim{unit}\"}}"
        ))
    }

    fn page(&self) -> String {
        let body = get(self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let lines = body.lines().filter(|l| l.starts_with("edge_modbus"));
        lines.collect::<Vec<_>>().join("\n")
    }

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
    fn readings(&self) -> Vec<Reading> {
        let records = read_committed(&self.bootstrap, &self.topic, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        records
            .iter()
            .map(|r| {
                let json: serde_json::Value =
                    serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
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

/// Stops the simulator, lets the agent forward what it read, stops the agent; returns the
/// readings in Kafka and the ledger. Every answered poll's readings must be committed before
/// the agent is stopped (a stop does not wait for the outbox to empty).
fn stop_both(
    sim: &mut Sim,
    agent: &Agent,
    proc: &mut AgentProc,
    units: &[u8],
) -> (Vec<Reading>, Ledgers) {
    sim.stop();
    let (ledger, clean) = read_ledger(&sim.ledger);
    assert!(clean, "the simulator's run ended clean:\n{}", sim.stderr());
    let answered: u64 = units
        .iter()
        .map(|u| {
            ledger
                .get(&u64::from(*u))
                .map_or(0, |d| d.answered.len() as u64)
        })
        .sum();
    // At most one answer per device may not have left the simulator.
    let floor = (answered - units.len() as u64) * u64::from(CHANNELS);
    agent.wait(
        proc,
        Duration::from_secs(60),
        "answered polls committed to Kafka",
        |a| a.metric("edge_kafka_records_committed_total") >= floor,
    );
    proc.terminate(Duration::from_secs(30));
    (agent.readings(), ledger)
}

/// The pairing of the module doc, per device and channel.
fn assert_readings_pair_with_answered_requests(
    readings: &[Reading],
    ledger: &Ledgers,
    units: &[u8],
) {
    let mut seen = BTreeSet::new();
    let twice: Vec<_> = readings
        .iter()
        .filter(|(s, ts, _)| !seen.insert((s.clone(), *ts)))
        .collect();
    assert_none("readings stored twice (sensor, ts)", &twice);
    let mut by_sensor: BTreeMap<&str, Vec<(u64, f64)>> = BTreeMap::new();
    for (sensor, ts, value) in readings {
        by_sensor.entry(sensor).or_default().push((*ts, *value));
    }
    for unit in units {
        let device = &ledger[&u64::from(*unit)];
        let answered = &device.answered;
        assert!(
            answered.len() >= 20,
            "unit {unit}: only {} answered requests",
            answered.len()
        );
        for c in 0..usize::from(CHANNELS) {
            let sensor = format!("sim{unit}.c{c}");
            let mut got = by_sensor.remove(sensor.as_str()).unwrap_or_default();
            got.sort_by_key(|r| r.0);
            assert!(
                got.len() + 1 >= answered.len() && got.len() <= answered.len(),
                "{sensor}: {} readings in Kafka for {} answered requests",
                got.len(),
                answered.len()
            );
            let wrong: Vec<_> = got
                .iter()
                .zip(answered)
                .enumerate()
                .filter(|(_, ((ts, value), (taken, values)))| {
                    *value as f32 != values[c] || *taken < *ts || *taken > ts + TIMEOUT_MS
                })
                .take(5)
                .collect();
            assert_none(
                &format!("{sensor}: readings (j, (ts, value)) not the j-th answer (taken, values)"),
                &wrong,
            );
        }
    }
    assert!(
        by_sensor.is_empty(),
        "readings of unknown sensors: {:?}",
        by_sensor.keys()
    );
}

#[test]
fn tcp_readings_polled_from_firmware_sim_are_the_values_it_served_at_each_poll() {
    let services = Services::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = Sim::start(
        dir.path(),
        &["--tcp", "127.0.0.1:0", "--devices", "2", "--seed", "7"],
    );
    let tcp = format!("tcp = \"{}\"", sim.endpoint);
    let units = [1, 2];
    let agent = Agent::new(&[(1, tcp.clone()), (2, tcp)], &services.kafka_bootstrap);
    let mut proc = agent.spawn();
    agent.wait(
        &mut proc,
        Duration::from_secs(60),
        "polls of both devices",
        |a| units.iter().all(|u| a.modbus("polls", *u) >= 30),
    );
    for unit in units {
        for family in ["exceptions", "timeouts", "transport_errors"] {
            assert_eq!(
                agent.modbus(family, unit),
                0,
                "sim{unit} {family}:\n{}",
                agent.page()
            );
        }
    }
    let (readings, ledger) = stop_both(&mut sim, &agent, &mut proc, &units);
    assert_readings_pair_with_answered_requests(&readings, &ledger, &units);
    println!("{} readings", readings.len());
}

#[test]
fn rtu_readings_over_a_pty_pair_are_the_values_firmware_sim_served_at_each_poll() {
    let services = Services::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let pty = PtyPair::new(dir.path());
    let a = pty.a.display().to_string();
    let mut sim = Sim::start(
        dir.path(),
        &["--serial", &a, "--first-unit", "3", "--seed", "8"],
    );
    // A pty refuses parity bits, so both ends run 8N1.
    let serial = format!(
        "serial = {:?}\nbaud = 19200\nparity = \"none\"",
        pty.b.display().to_string()
    );
    let units = [3];
    let agent = Agent::new(&[(3, serial)], &services.kafka_bootstrap);
    let mut proc = agent.spawn();
    agent.wait(&mut proc, Duration::from_secs(60), "polls", |a| {
        a.modbus("polls", 3) >= 30
    });
    for family in ["exceptions", "timeouts", "transport_errors"] {
        assert_eq!(agent.modbus(family, 3), 0, "{family}:\n{}", agent.page());
    }
    let (readings, ledger) = stop_both(&mut sim, &agent, &mut proc, &units);
    assert_readings_pair_with_answered_requests(&readings, &ledger, &units);
    println!("{} readings", readings.len());
}

#[test]
fn injected_drops_exceptions_and_slow_answers_are_counted_and_every_answered_poll_arrives() {
    let services = Services::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = [
        "--drop-rate",
        "0.04",
        "--exception-rate",
        "0.1",
        "--slow-rate",
        "0.1",
        "--slow-ms",
        "150",
    ];
    let mut args = vec!["--tcp", "127.0.0.1:0", "--seed", "9"];
    args.extend_from_slice(&faults);
    let mut sim = Sim::start(dir.path(), &args);
    let units = [1];
    let agent = Agent::new(
        &[(1, format!("tcp = \"{}\"", sim.endpoint))],
        &services.kafka_bootstrap,
    );
    let mut proc = agent.spawn();
    agent.wait(&mut proc, Duration::from_secs(90), "each fault seen", |a| {
        a.modbus("polls", 1) >= 60 && a.modbus("exceptions", 1) >= 3 && a.modbus("timeouts", 1) >= 2
    });
    // Stop the device while the agent runs, then read the counters once nothing moves.
    sim.stop();
    std::thread::sleep(Duration::from_millis(TIMEOUT_MS + 500));
    let counted = |family| agent.modbus(family, 1);
    let (polls, exceptions, timeouts) =
        (counted("polls"), counted("exceptions"), counted("timeouts"));
    let transport_errors = counted("transport_errors");
    let (readings, ledger) = stop_both(&mut sim, &agent, &mut proc, &units);
    let device = &ledger[&1];
    let answered = device.answered.len() as u64;
    println!(
        "sim: answered {answered} busy {} refused {} dropped {} slow {}; agent: polls {polls} \
         exceptions {exceptions} timeouts {timeouts} transport errors {transport_errors}",
        device.busy, device.refused, device.dropped, device.slow
    );
    assert!(
        device.slow >= 3,
        "slow answers were injected: {}",
        device.slow
    );
    assert_eq!(
        device.refused, 0,
        "the agent only asks for registers the device has"
    );
    // The last request before the stop may have been taken but never answered: its answer,
    // exception or timeout shows as the session's end (a transport error) instead.
    assert!(
        polls + 1 >= answered && polls <= answered,
        "answered polls: agent {polls}, simulator {answered}"
    );
    assert!(
        exceptions + 1 >= device.busy && exceptions <= device.busy,
        "exception answers: agent {exceptions}, simulator {}",
        device.busy
    );
    assert!(
        timeouts + 1 >= device.dropped && timeouts <= device.dropped,
        "unanswered requests: agent timeouts {timeouts}, simulator dropped {}",
        device.dropped
    );
    assert!(
        transport_errors <= 1,
        "transport errors only at the stop: {transport_errors}"
    );
    assert_readings_pair_with_answered_requests(&readings, &ledger, &units);
}
