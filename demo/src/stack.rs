//! Everything the demo runs, started in order: brokers and topics, the serial devices (their
//! pseudo-terminal path goes into the agent's configuration), the Modbus TCP device (its
//! address too), the agent (waited for until its
//! MQTT session exists, so the broker queues for it from then on), the MQTT devices, the
//! consumer, and the demo's own `read_committed` tails of the partials and finals.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::agent_http::{Metrics, Snapshot};
use crate::brokers::Brokers;
use crate::configs::{self, AgentParams, Names};
use crate::kafka::{self, Tail};
use crate::procs::{tail, Proc};
use crate::run::{Clock, Options};

/// Partitions of every topic of the run.
const PARTITIONS: i32 = 3;

/// The repository root (the demo uses its services script).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("demo/ is in the workspace")
        .to_owned()
}

/// One run, up and running.
pub struct Stack {
    pub dir: PathBuf,
    pub names: Names,
    pub brokers: Brokers,
    pub sim_serial: Proc,
    pub sim_mqtt: Proc,
    pub sim_modbus: Proc,
    /// Serial, MQTT and Modbus ledgers.
    pub ledgers: [PathBuf; 3],
    pub agent: Agent,
    consumer: Proc,
    consumer_log: PathBuf,
    /// Tails of the partials and of the finals.
    pub tails: (Tail, Tail),
}

impl Stack {
    pub fn start(o: &Options, clock: &Clock) -> Result<Stack> {
        let bins = Bins::find()?;
        let run_id = unix_secs().to_string();
        let dir = o.work_dir.join(format!("run-{run_id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        prune_runs(&o.work_dir, KEEP_RUNS);
        let names = Names::new(&run_id);

        clock.say(&match (&o.kafka, &o.mqtt) {
            (None, None) => "starting Apache Kafka (KRaft, one node) and Mosquitto on loopback; the first run assembles Kafka from Maven Central (~50 MB)".to_owned(),
            (Some(k), None) => format!("using Kafka at {k}; starting Mosquitto"),
            (None, Some(m)) => format!("using MQTT at {m}; starting Kafka (the first run assembles it from Maven Central)"),
            (Some(k), Some(m)) => format!("using Kafka at {k} and MQTT at {m}"),
        });
        let brokers = Brokers::start(
            &repo_root(),
            &o.work_dir.join("services"),
            o.kafka.as_deref(),
            o.mqtt.as_deref(),
            o.keep,
        )?;
        kafka::create_topics(&brokers.kafka, &names.topics(), PARTITIONS)?;
        clock.say(&format!(
            "Kafka {} and MQTT {} ready; this run's topics are edge-demo.{run_id}.*",
            brokers.kafka, brokers.mqtt
        ));

        let secs = o.duration.as_secs().to_string();
        let per_device = o.rate.to_string();
        let sim = |transport: &str, first: u32, ledger: &Path| {
            let mut cmd = Command::new(&bins.sim);
            cmd.arg(transport)
                .args(["--devices", &o.devices.to_string()])
                .args(["--first-device", &first.to_string()])
                .args(["--channels", &o.channels.to_string()])
                .args(["--rate", &per_device, "--duration", &secs])
                .args(["--model", "sine", "--model", "walk"])
                .args(["--progress-secs", "0", "--drain-timeout", "60"])
                .arg("--ledger")
                .arg(ledger)
                .args(["--seed", &run_id]);
            cmd
        };
        let ledgers = [
            dir.join("ledger-serial.jsonl"),
            dir.join("ledger-mqtt.jsonl"),
            dir.join("ledger-modbus.jsonl"),
        ];
        let mut cmd = sim("serial", 101, &ledgers[0]);
        cmd.arg("--pty");
        let (sim_serial, pty) = Proc::spawn_announcing(
            "firmware-sim serial",
            cmd,
            &dir.join("firmware-sim-serial.log"),
            "SERIAL_PATH=",
            Duration::from_secs(30),
        )?;
        clock.say(&format!(
            "{} serial devices (ids 101..) on the pseudo-terminal {pty}, {} channels each, {} readings/s per device",
            o.devices, o.channels, o.rate
        ));

        let mut cmd = Command::new(&bins.sim);
        cmd.args(["modbus", "--tcp", "127.0.0.1:0"])
            .args(["--channels", &o.channels.to_string()])
            .args(["--duration", &secs, "--update-ms", "100"])
            .args(["--model", "sine", "--model", "walk"])
            .args(["--progress-secs", "0", "--seed", &run_id])
            .arg("--ledger")
            .arg(&ledgers[2]);
        let (sim_modbus, modbus_tcp) = Proc::spawn_announcing(
            "firmware-sim modbus",
            cmd,
            &dir.join("firmware-sim-modbus.log"),
            "MODBUS_TCP=",
            Duration::from_secs(30),
        )?;
        clock.say(&format!(
            "1 Modbus TCP device (unit 1) on {modbus_tcp}, {} f32 channels changing every 100 ms, polled every 500 ms",
            o.channels
        ));

        let metrics = free_port()?;
        let config = dir.join("agent.toml");
        let data_dir = dir.join("agent-data");
        std::fs::write(
            &config,
            configs::agent(&AgentParams {
                names: &names,
                data_dir: &data_dir,
                mqtt_url: &brokers.mqtt,
                serial_path: &pty,
                modbus_tcp: &modbus_tcp,
                modbus_channels: o.channels,
                kafka: &brokers.kafka,
                metrics,
                window_ms: o.window_ms,
            }),
        )?;
        let mut agent = Agent {
            bin: bins.agent.clone(),
            config,
            log: dir.join("edge-agent.log"),
            metrics,
            proc: None,
            before: Counters::default(),
            last: Counters::default(),
        };
        agent.start()?;
        agent.wait_ready(Duration::from_secs(90))?;
        clock.say(&format!(
            "edge-agent up (data in {}, metrics on http://{metrics}/metrics)",
            data_dir.display()
        ));

        let mut cmd = sim("mqtt", 1, &ledgers[1]);
        cmd.args(["--url", &brokers.mqtt])
            .args([
                "--topic",
                &format!("{}/{{device_id}}/{{channel_id}}", names.mqtt_root),
            ])
            .args(["--qos", "1", "--payload", "json"])
            .args(["--client-id", &format!("firmware-sim-{}", names.agent_id)]);
        let sim_mqtt = Proc::spawn("firmware-sim mqtt", cmd, &dir.join("firmware-sim-mqtt.log"))?;
        clock.say(&format!(
            "{} MQTT devices (ids 1..) publishing QoS 1 JSON to {}/<device>/<channel>",
            o.devices, names.mqtt_root
        ));

        let consumer_config = dir.join("consumer.toml");
        let consumer_metrics = free_port()?;
        std::fs::write(
            &consumer_config,
            configs::consumer(&names, &brokers.kafka, consumer_metrics),
        )?;
        let consumer_log = dir.join("edge-consumer.log");
        let mut cmd = Command::new(&bins.consumer);
        cmd.args(["run", "--config"])
            .arg(&consumer_config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let consumer = Proc::spawn("edge-consumer", cmd, &consumer_log)?;
        clock.say(&format!(
            "edge-consumer up (a group of one instance merging partials into finals; metrics on http://{consumer_metrics}/metrics)"
        ));
        let tail_of =
            |topic: &str| Tail::new(&brokers.kafka, topic, PARTITIONS, &names.consumer_group);
        let tails = (tail_of(&names.partials)?, tail_of(&names.finals)?);
        Ok(Stack {
            dir,
            names,
            brokers,
            sim_serial,
            sim_mqtt,
            sim_modbus,
            ledgers,
            agent,
            consumer,
            consumer_log,
            tails,
        })
    }

    /// Fails with the log's tail if the agent or the consumer exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        self.agent.check_alive()?;
        if let Some(status) = self.consumer.exited() {
            bail!(
                "edge-consumer exited ({status}); the end of {}:\n{}",
                self.consumer_log.display(),
                tail(&self.consumer_log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM to the agent and the consumer (a graceful drain each), then the brokers the demo
    /// started are stopped and cleaned. Returns whether both exited with success.
    pub fn stop(mut self) -> bool {
        let timeout = Duration::from_secs(30);
        let agent = self.agent.proc.as_mut().and_then(|p| p.terminate(timeout));
        let consumer = self.consumer.terminate(timeout);
        agent.is_some_and(|s: ExitStatus| s.success()) && consumer.is_some_and(|s| s.success())
    }
}

/// The workspace binaries, next to the demo's own executable (`./demo.sh` builds them all in
/// one profile).
struct Bins {
    agent: PathBuf,
    consumer: PathBuf,
    sim: PathBuf,
}

impl Bins {
    fn find() -> Result<Bins> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("the demo's directory")?;
        let bin = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if !path.exists() {
                bail!(
                    "{} not found: build it first (./demo.sh does: cargo build -p edge-agent -p edge-consumer -p firmware-sim -p edge-demo)",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Bins {
            agent: bin("edge-agent")?,
            consumer: bin("edge-consumer")?,
            sim: bin("firmware-sim")?,
        })
    }
}

/// Run directories kept in the work directory (the oldest beyond these are deleted).
const KEEP_RUNS: usize = 10;

/// Deletes all but the newest `keep` `run-*` directories of `work_dir` (names sort by start time).
fn prune_runs(work_dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
        })
        .collect();
    runs.sort();
    let old = runs.len().saturating_sub(keep);
    for path in &runs[..old] {
        let _ = std::fs::remove_dir_all(path);
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The agent process, restartable with the same configuration and data.
pub struct Agent {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    pub proc: Option<Proc>,
    /// Process-lifetime counters of the agent processes before the current one.
    before: Counters,
    last: Counters,
}

/// Process-lifetime agent counters the progress line shows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub windows_closed: f64,
    pub commits: f64,
}

impl Counters {
    fn of(m: &Metrics) -> Counters {
        Counters {
            windows_closed: m.sum("edge_window_closed_total"),
            commits: m.sum("edge_kafka_transactions_committed_total"),
        }
    }
}

impl Agent {
    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        self.proc = Some(Proc::spawn("edge-agent", cmd, &self.log)?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.before.windows_closed += self.last.windows_closed;
        self.before.commits += self.last.commits;
        self.last = Counters::default();
    }

    /// Fails with the log's tail if the agent exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "edge-agent exited ({status}); the end of {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Waits until the agent serves metrics and its MQTT source is connected.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(m) = Metrics::fetch(self.metrics) {
                if m.get("edge_source_connected", "source=\"plant-broker\"") == Some(1.0) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "edge-agent not connected to MQTT after {} s; the end of {}:\n{}",
                    timeout.as_secs(),
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads the agent's counters and buffer state (nothing while it is down).
    pub fn sample(&mut self) -> (Counters, Option<Snapshot>) {
        if self.proc.is_none() {
            return (self.total(), None);
        }
        if let Ok(m) = Metrics::fetch(self.metrics) {
            self.last = Counters::of(&m);
        }
        (self.total(), Snapshot::fetch(self.metrics).ok())
    }

    pub fn total(&self) -> Counters {
        Counters {
            windows_closed: self.before.windows_closed + self.last.windows_closed,
            commits: self.before.commits + self.last.commits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_runs_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        for t in 100..112 {
            std::fs::create_dir(dir.path().join(format!("run-{t}"))).unwrap();
        }
        std::fs::create_dir(dir.path().join("services")).unwrap();
        prune_runs(dir.path(), 10);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 11);
        assert_eq!(left[0], "run-102");
        assert_eq!(left[10], "services");
    }
}
