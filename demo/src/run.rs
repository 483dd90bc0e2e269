//! The demo's timeline: brokers, simulated devices, agent and consumer up; readings flowing
//! with live progress; an agent crash and a Kafka outage mid-run; then, once the devices have
//! stopped, waiting until the finals account for every reading, and the summary.
//!
//! ```text
//!  0 s                 30 %            55 %     +outage          100 %          settle
//!  |---- devices send --|-- kill -9 --|-- Kafka down --|----------| ledgers end |-- finals --> summary
//!                         agent back                 back up                       complete
//!                         after 2 s
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use edge_protocol::partial::Partial;

use crate::account::{self, Finals, Sent};
use crate::agent_http::{Metrics, Snapshot};
use crate::brokers::Brokers;
use crate::configs::{self, AgentParams, Names};
use crate::kafka::{self, Tail};
use crate::procs::{tail, Proc};
use crate::report::{self, Outcome, Progress, Sample};

/// What the user chose (see `main.rs` for the flags and their defaults).
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub devices: u32,
    pub channels: u8,
    pub rate: u32,
    pub window_ms: u64,
    pub kafka: Option<String>,
    pub mqtt: Option<String>,
    pub faults: bool,
    pub keep: bool,
    pub work_dir: PathBuf,
    pub progress: Duration,
    pub settle_timeout: Duration,
}

/// Partitions of every topic of the run.
const PARTITIONS: i32 = 3;

/// How long the crashed agent stays down before the demo starts it again.
const AGENT_DOWN: Duration = Duration::from_secs(2);

/// The repository root (the demo uses its services script).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("demo/ is in the workspace")
        .to_owned()
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
struct Agent {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    proc: Option<Proc>,
    /// Process-lifetime counters of the agent processes before the current one.
    before: Counters,
    last: Counters,
}

/// Process-lifetime agent counters the progress line shows.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    windows_closed: f64,
    commits: f64,
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
    fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        self.proc = Some(Proc::spawn("edge-agent", cmd, &self.log)?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.before.windows_closed += self.last.windows_closed;
        self.before.commits += self.last.commits;
        self.last = Counters::default();
    }

    /// Fails with the log's tail if the agent exited on its own.
    fn check_alive(&mut self) -> Result<()> {
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
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
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
    fn sample(&mut self) -> (Counters, Option<Snapshot>) {
        if self.proc.is_none() {
            return (self.total(), None);
        }
        if let Ok(m) = Metrics::fetch(self.metrics) {
            self.last = Counters::of(&m);
        }
        (self.total(), Snapshot::fetch(self.metrics).ok())
    }

    fn total(&self) -> Counters {
        Counters {
            windows_closed: self.before.windows_closed + self.last.windows_closed,
            commits: self.before.commits + self.last.commits,
        }
    }
}

/// The faults of the run and when they happen.
struct Faults {
    crash_at: Option<Duration>,
    restart_at: Option<Duration>,
    outage: Option<(Duration, Duration)>,
}

impl Faults {
    fn plan(o: &Options, own_kafka: bool) -> Faults {
        let d = o.duration;
        if !o.faults || d < Duration::from_secs(20) {
            return Faults {
                crash_at: None,
                restart_at: None,
                outage: None,
            };
        }
        let crash = d.mul_f64(0.3);
        let outage_start = d.mul_f64(0.55);
        let outage_len = d
            .mul_f64(0.2)
            .clamp(Duration::from_secs(5), Duration::from_secs(30));
        Faults {
            crash_at: Some(crash),
            restart_at: Some(crash + AGENT_DOWN),
            outage: own_kafka.then_some((outage_start, outage_start + outage_len)),
        }
    }
}

/// Everything the demo counts while it runs.
#[derive(Default)]
struct Counts {
    finals: Finals,
    bad_finals: u64,
    partials: u64,
    delivered: u64,
    bad_partials: u64,
    peak_log: u64,
    peak_outbox: u64,
    snapshot: Snapshot,
}

fn drain(tails: &(Tail, Tail), counts: &mut Counts) {
    tails.0.drain(|_, value| match Partial::decode(value) {
        Ok(p) => {
            counts.partials += 1;
            counts.delivered += p.aggregate.count();
        }
        Err(_) => counts.bad_partials += 1,
    });
    tails.1.drain(|_, value| {
        if counts.finals.apply(value).is_err() {
            counts.bad_finals += 1;
        }
    });
}

/// Samples the agent (keeping the peaks in `counts`) for a progress line.
fn observe(agent: &mut Agent, counts: &mut Counts, kafka_down: bool) -> Sample {
    let (c, snapshot) = agent.sample();
    if let Some(s) = snapshot {
        counts.snapshot = s;
        counts.peak_log = counts.peak_log.max(s.log_readings);
        counts.peak_outbox = counts.peak_outbox.max(s.outbox_records);
    }
    Sample {
        agent_up: agent.proc.is_some(),
        kafka_down,
        snapshot: counts.snapshot,
        windows_closed: c.windows_closed as u64,
        commits: c.commits as u64,
        partials: counts.partials,
        finals: counts.finals.windows() as u64,
    }
}

/// Runs the whole demo; `stop` is set by Ctrl-C / SIGTERM.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<Outcome> {
    let started = Instant::now();
    let say = |what: &str| println!("{:>6.1}s  {what}", started.elapsed().as_secs_f64());
    let bins = Bins::find()?;
    let run_id = unix_secs().to_string();
    let dir = o.work_dir.join(format!("run-{run_id}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    prune_runs(&o.work_dir, KEEP_RUNS);
    let names = Names::new(&run_id);

    say(&match (&o.kafka, &o.mqtt) {
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
    say(&format!(
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
    let serial_ledger = dir.join("ledger-serial.jsonl");
    let mut cmd = sim("serial", 101, &serial_ledger);
    cmd.arg("--pty");
    let (mut sim_serial, pty) = Proc::spawn_announcing(
        "firmware-sim serial",
        cmd,
        &dir.join("firmware-sim-serial.log"),
        "SERIAL_PATH=",
        Duration::from_secs(30),
    )?;
    say(&format!(
        "{} serial devices (ids 101..) on the pseudo-terminal {pty}, {} channels each, {} readings/s per device",
        o.devices, o.channels, o.rate
    ));

    let metrics = free_port()?;
    let agent_config = dir.join("agent.toml");
    let data_dir = dir.join("agent-data");
    std::fs::write(
        &agent_config,
        configs::agent(&AgentParams {
            names: &names,
            data_dir: &data_dir,
            mqtt_url: &brokers.mqtt,
            serial_path: &pty,
            kafka: &brokers.kafka,
            metrics,
            window_ms: o.window_ms,
        }),
    )?;
    let mut agent = Agent {
        bin: bins.agent.clone(),
        config: agent_config.clone(),
        log: dir.join("edge-agent.log"),
        metrics,
        proc: None,
        before: Counters::default(),
        last: Counters::default(),
    };
    agent.start()?;
    agent.wait_ready(Duration::from_secs(90))?;
    say(&format!(
        "edge-agent up (data in {}, metrics on http://{metrics}/metrics)",
        data_dir.display()
    ));

    let mqtt_ledger = dir.join("ledger-mqtt.jsonl");
    let mut cmd = sim("mqtt", 1, &mqtt_ledger);
    cmd.args(["--url", &brokers.mqtt])
        .args([
            "--topic",
            &format!("{}/{{device_id}}/{{channel_id}}", names.mqtt_root),
        ])
        .args(["--qos", "1", "--payload", "json"])
        .args(["--client-id", &format!("firmware-sim-{}", names.agent_id)]);
    let mut sim_mqtt = Proc::spawn("firmware-sim mqtt", cmd, &dir.join("firmware-sim-mqtt.log"))?;
    say(&format!(
        "{} MQTT devices (ids 1..) publishing QoS 1 JSON to {}/<device>/<channel>",
        o.devices, names.mqtt_root
    ));

    let consumer_config = dir.join("consumer.toml");
    std::fs::write(&consumer_config, configs::consumer(&names, &brokers.kafka))?;
    let consumer_log = dir.join("edge-consumer.log");
    let mut cmd = Command::new(&bins.consumer);
    cmd.args(["run", "--config"])
        .arg(&consumer_config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut consumer = Proc::spawn("edge-consumer", cmd, &consumer_log)?;
    say("edge-consumer up (group of one instance, merging partials into finals)");
    let tails = (
        Tail::new(
            &brokers.kafka,
            &names.partials,
            PARTITIONS,
            &names.consumer_group,
        )?,
        Tail::new(
            &brokers.kafka,
            &names.finals,
            PARTITIONS,
            &names.consumer_group,
        )?,
    );

    let faults = Faults::plan(o, brokers.own_kafka());
    if o.faults && faults.outage.is_none() && faults.crash_at.is_some() {
        say("no Kafka outage in this run: the demo only stops a Kafka broker it started itself");
    }
    let t0 = Instant::now();
    let mut counts = Counts::default();
    let mut progress = Progress::new(o.progress);
    println!("{}", Progress::LEGEND);
    let mut events = Vec::new();
    let mut kafka_down = false;
    let mut restarted_at = None;
    let mut killed_at = Duration::ZERO;
    let mut outage_from = Duration::ZERO;
    let (mut serial_done, mut mqtt_done) = (None, None);
    let settle_from;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!(
                "interrupted; logs and configuration are in {}",
                dir.display()
            );
        }
        let now = t0.elapsed();
        if faults.crash_at.is_some_and(|t| now >= t)
            && restarted_at.is_none()
            && agent.proc.is_some()
        {
            say("FAULT  kill -9 edge-agent (a power cut: no shutdown, nothing flushed); devices keep sending");
            agent.kill();
            killed_at = started.elapsed();
        }
        if faults.restart_at.is_some_and(|t| now >= t) && agent.proc.is_none() {
            let back = Instant::now();
            agent.start()?;
            agent.wait_ready(Duration::from_secs(90))?;
            restarted_at = Some(now);
            events.push(format!(
                "edge-agent killed with kill -9 at {:.0} s, restarted at {:.0} s",
                killed_at.as_secs_f64(),
                started.elapsed().as_secs_f64()
            ));
            say(&format!(
                "edge-agent restarted on the same database: serial devices retransmit what was never acked, the broker redelivers the rest ({:.1} s to reconnect)",
                back.elapsed().as_secs_f64()
            ));
        }
        if let Some((from, to)) = faults.outage {
            if now >= from && now < to && !kafka_down {
                say(&format!(
                    "FAULT  Kafka broker stopped for {:.0} s (the uplink is down): the agent keeps acking and buffers on disk",
                    (to - from).as_secs_f64()
                ));
                outage_from = started.elapsed();
                brokers.stop_kafka()?;
                kafka_down = true;
            }
            if now >= to && kafka_down {
                brokers.start_kafka()?;
                kafka_down = false;
                events.push(format!(
                    "Kafka broker stopped at {:.0} s, back at {:.0} s",
                    outage_from.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                ));
                say("Kafka back: the agent resumes from its progress marker and drains its buffer");
            }
        }
        agent.check_alive()?;
        if let Some(status) = consumer.exited() {
            bail!(
                "edge-consumer exited ({status}); the end of {}:\n{}",
                consumer_log.display(),
                tail(&consumer_log, 15)
            );
        }
        serial_done = serial_done.or_else(|| sim_serial.exited());
        mqtt_done = mqtt_done.or_else(|| sim_mqtt.exited());
        if !kafka_down {
            drain(&tails, &mut counts);
        }
        if progress.due() {
            progress.line(
                started.elapsed(),
                &observe(&mut agent, &mut counts, kafka_down),
            );
        }
        if serial_done.is_some() && mqtt_done.is_some() {
            settle_from = Instant::now();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, status, log) in [
        ("serial", serial_done, &sim_serial.log),
        ("mqtt", mqtt_done, &sim_mqtt.log),
    ] {
        if !status.is_some_and(|s| s.success()) {
            say(&format!(
                "warning: firmware-sim {name} ended with {status:?}; the end of {}:\n{}",
                log.display(),
                tail(log, 10)
            ));
        }
    }
    let sent = Sent::from_ledgers(&[&serial_ledger, &mqtt_ledger])
        .context("reading the simulators' ledgers")?;
    say(&format!(
        "devices done: {} readings sent; waiting until every one is in a final (windows close 3 s after the last reading, finals 4 s later)",
        sent.readings()
    ));

    let mut account = account::reconcile(&sent, &counts.finals.per_series());
    while !(account.exact() && account.finalized >= account.sent) {
        if stop.load(Ordering::Relaxed) {
            bail!(
                "interrupted; logs and configuration are in {}",
                dir.display()
            );
        }
        if settle_from.elapsed() > o.settle_timeout {
            say(&format!(
                "gave up waiting after {} s: the account below shows what is missing",
                o.settle_timeout.as_secs()
            ));
            break;
        }
        agent.check_alive()?;
        drain(&tails, &mut counts);
        if progress.due() {
            progress.line(started.elapsed(), &observe(&mut agent, &mut counts, false));
        }
        account = account::reconcile(&sent, &counts.finals.per_series());
        std::thread::sleep(Duration::from_millis(200));
    }
    if let (_, Some(s)) = agent.sample() {
        counts.snapshot = s;
    }
    let commits = agent.total().commits;
    say("stopping edge-agent and edge-consumer (SIGTERM: graceful drain)");
    let agent_exit = agent
        .proc
        .as_mut()
        .and_then(|p| p.terminate(Duration::from_secs(30)));
    let consumer_exit = consumer.terminate(Duration::from_secs(30));
    drop(brokers);
    Ok(Outcome {
        run_dir: dir,
        wall: started.elapsed(),
        sent,
        account,
        snapshot: counts.snapshot,
        partials: counts.partials,
        delivered: counts.delivered,
        bad_records: counts.bad_partials + counts.bad_finals,
        final_records: counts.finals.records,
        final_windows: counts.finals.windows(),
        revised: counts.finals.revised(),
        sample: counts.finals.sample(8).into_iter().cloned().collect(),
        commits,
        events,
        peak_log: counts.peak_log,
        peak_outbox: counts.peak_outbox,
        clean_stop: agent_exit.is_some_and(|s| s.success())
            && consumer_exit.is_some_and(|s| s.success()),
        finals_topic: names.finals.clone(),
        options: report::Shown {
            devices: o.devices,
            channels: o.channels,
            rate: o.rate,
            window_ms: o.window_ms,
            duration: o.duration,
        },
    })
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

    #[test]
    fn faults_fit_in_the_run_and_only_with_our_own_kafka() {
        let mut o = Options {
            duration: Duration::from_secs(60),
            devices: 1,
            channels: 1,
            rate: 1,
            window_ms: 5000,
            kafka: None,
            mqtt: None,
            faults: true,
            keep: false,
            work_dir: PathBuf::new(),
            progress: Duration::from_secs(2),
            settle_timeout: Duration::from_secs(1),
        };
        let f = Faults::plan(&o, true);
        let (from, to) = f.outage.unwrap();
        assert!(f.restart_at.unwrap() < from && to < o.duration);
        assert!(Faults::plan(&o, false).outage.is_none());
        o.duration = Duration::from_secs(19);
        assert!(Faults::plan(&o, true).crash_at.is_none());
    }
}
