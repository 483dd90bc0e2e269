//! The benchmarks of the suite: which program runs with which arguments, in the full run (what
//! fills the README) and in the quick run (`--quick`: short durations and small counts, a few
//! minutes in all, for CI).
//!
//! The quick run has one run per program; the full run adds the variants the README quotes
//! (hopping windows, bigger batches, 10,000 readings/s, 300,000 partials). A variant keeps only
//! the figures its change of parameters moves ([`Job::metrics`]), so the table does not repeat
//! the same bytes per window under other parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;

/// A benchmark program, as cargo builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `cargo run --release -p PACKAGE --example NAME`.
    Example {
        package: &'static str,
        name: &'static str,
    },
    /// `cargo bench -p PACKAGE --bench NAME` (a `harness = false` bench target).
    Bench {
        package: &'static str,
        name: &'static str,
    },
}

impl Program {
    /// The key of this program's executable in [`Artifacts`].
    pub fn key(&self) -> String {
        match self {
            Program::Example { name, .. } => format!("example:{name}"),
            Program::Bench { name, .. } => format!("bench:{name}"),
        }
    }

    /// The cargo command that runs the program with `args` (what the table shows).
    pub fn cargo_command(&self, args: &[String]) -> String {
        let base = match self {
            Program::Example { package, name } => {
                format!("cargo run --release -p {package} --example {name}")
            }
            Program::Bench { package, name } => format!("cargo bench -p {package} --bench {name}"),
        };
        if args.is_empty() {
            base
        } else {
            format!("{base} -- {}", args.join(" "))
        }
    }
}

/// One run of one benchmark program.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique, snake_case; names the log files.
    pub id: String,
    /// For progress lines: what runs and how big.
    pub title: String,
    pub program: Program,
    pub args: Vec<String>,
    /// The metrics kept from the program's output; empty keeps all.
    pub metrics: &'static [&'static str],
}

impl Job {
    /// The command the table shows (runs the same program with the same arguments).
    pub fn command(&self) -> String {
        self.program.cargo_command(&self.args)
    }
}

/// Where the brokers are (from `.services/env`).
#[derive(Debug, Clone, PartialEq)]
pub struct Brokers {
    pub kafka: String,
    pub mqtt: String,
}

impl Brokers {
    /// `KAFKA_BOOTSTRAP` and `MQTT_URL`, or the test brokers' defaults.
    pub fn from_env() -> Self {
        Brokers {
            kafka: std::env::var("KAFKA_BOOTSTRAP")
                .unwrap_or_else(|_| "127.0.0.1:19092".to_owned()),
            mqtt: std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:18830".to_owned()),
        }
    }
}

const LINK: Program = Program::Bench {
    package: "firmware-sim",
    name: "link",
};
const INGEST: Program = Program::Example {
    package: "edge-agent",
    name: "ingest_bench",
};
const WINDOW: Program = Program::Example {
    package: "edge-agent",
    name: "bench_window",
};
const FORWARD: Program = Program::Example {
    package: "edge-agent",
    name: "bench_forward",
};
const LATENCY: Program = Program::Example {
    package: "edge-agent",
    name: "bench_forward_latency",
};
const CONSUMER: Program = Program::Example {
    package: "edge-consumer",
    name: "bench_consumer",
};
const MODBUS: Program = Program::Example {
    package: "firmware-sim",
    name: "bench_modbus",
};
const RECOVERY: Program = Program::Example {
    package: "edge-consumer",
    name: "bench_recovery",
};
const RESTART: Program = Program::Example {
    package: "edge-agent",
    name: "bench_restart",
};
const CPU: Program = Program::Example {
    package: "edge-agent",
    name: "bench_cpu",
};

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn job(id: &str, title: String, program: Program, args: &[&str]) -> Job {
    Job {
        id: id.to_owned(),
        title,
        program,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        metrics: &[],
    }
}

/// `job` keeping only `metrics`.
fn variant(mut job: Job, metrics: &'static [&'static str]) -> Job {
    job.metrics = metrics;
    job
}

/// The suite, in the order it runs: cheap, broker-free work first. With `telegraf` (the path of
/// a Telegraf binary, `--peers`), the same CPU measurement of Telegraf runs right after the
/// agent's, so the table shows them side by side.
pub fn jobs(quick: bool, brokers: &Brokers, telegraf: Option<&str>) -> Vec<Job> {
    let (mqtt, kafka) = (brokers.mqtt.as_str(), brokers.kafka.as_str());
    let mut jobs = Vec::new();
    let link_secs = if quick { "2" } else { "10" };
    jobs.push(job(
        "link",
        format!("serial link, codec and pty at 2 baud rates, {link_secs} s each"),
        LINK,
        &["--secs", link_secs],
    ));
    let readings: u64 = if quick { 100_000 } else { 400_000 };
    jobs.push(job(
        "ingest",
        format!(
            "durable ingest, {} readings writer-only + 5 x {} from Mosquitto (median)",
            thousands(readings),
            thousands(readings / 4)
        ),
        INGEST,
        &[&readings.to_string(), mqtt],
    ));
    let steady_secs = if quick { "5" } else { "30" };
    jobs.push(job(
        "ingest_steady",
        format!("agent peak RSS, 10,000 readings/s from 10,000 sensors for {steady_secs} s"),
        INGEST,
        &["steady", mqtt, "10000", steady_secs, "10000"],
    ));
    let modbus_secs = if quick { "10" } else { "30" };
    jobs.push(job(
        "modbus",
        format!("Modbus TCP polling of firmware-sim, 100 devices x 50 registers at 1 s for {modbus_secs} s"),
        MODBUS,
        &["100", "50", modbus_secs, "1000"],
    ));
    let window_secs = if quick { "30" } else { "120" };
    jobs.push(job(
        "window",
        format!("windows, 1,000 sensors x 10 Hz x {window_secs} s, 10 s tumbling"),
        WINDOW,
        &["1000", "10", window_secs],
    ));
    if !quick {
        jobs.push(variant(
            job(
                "window_hopping",
                "windows, 1,000 sensors x 10 Hz x 120 s, 60 s hopping by 10 s".to_owned(),
                WINDOW,
                &["1000", "10", "120", "60", "10"],
            ),
            &["state_machine", "stage", "state_per_window_encoded"],
        ));
        jobs.push(variant(
            job(
                "window_batch",
                "windows, 1,000 sensors x 10 Hz x 120 s, 5,000-reading batches".to_owned(),
                WINDOW,
                &["1000", "10", "120", "10", "10", "5000"],
            ),
            &["stage"],
        ));
    }
    let records: u64 = if quick { 100_000 } else { 1_000_000 };
    jobs.push(job(
        "forward_drain",
        format!("forwarder drain, {} records", thousands(records)),
        FORWARD,
        &[&records.to_string()],
    ));
    if !quick {
        jobs.push(job(
            "forward_drain_batch",
            "forwarder drain, 1,000,000 records in 50,000-record transactions".to_owned(),
            FORWARD,
            &["1000000", "50000"],
        ));
    }
    // Restart with a backlog (issue 18): as many ingested readings as outbox records.
    let backlog: u64 = if quick { 100_000 } else { 1_000_000 };
    jobs.push(job(
        "restart",
        format!(
            "restart on {} ingested readings + {} outbox records",
            thousands(backlog),
            thousands(backlog)
        ),
        RESTART,
        &[&backlog.to_string()],
    ));
    let (latency_secs, idle_secs) = if quick { ("5", "5") } else { ("20", "30") };
    jobs.push(job(
        "latency",
        format!(
            "end-to-end latency, 1,000 readings/s for {latency_secs} s, then {idle_secs} s idle"
        ),
        LATENCY,
        &["1000", latency_secs, idle_secs],
    ));
    if !quick {
        jobs.push(job(
            "latency_10k",
            "end-to-end latency, 10,000 readings/s for 20 s".to_owned(),
            LATENCY,
            &["10000", "20"],
        ));
        jobs.push(variant(
            job(
                "latency_build",
                "end-to-end latency, 1,000 readings/s for 20 s while a cargo build runs".to_owned(),
                LATENCY,
                &["1000", "20", "0", "build"],
            ),
            &["p50", "p99", "max", "hop_kafka_p99_bucket", "machine_busy"],
        ));
    }
    let cpu_secs = if quick { "5" } else { "30" };
    jobs.push(job(
        "cpu",
        format!("agent CPU per reading, 10,000 readings/s from 1,000 sensors for {cpu_secs} s"),
        CPU,
        &["agent", "10000", cpu_secs],
    ));
    if let Some(telegraf) = telegraf {
        jobs.push(job(
            "peer_telegraf",
            format!(
                "Telegraf ({telegraf}) CPU per reading, 10,000 readings/s from 1,000 sensors for {cpu_secs} s"
            ),
            CPU,
            &["telegraf", telegraf, "10000", cpu_secs],
        ));
    }
    let (series, windows) = if quick { (500u64, 10u64) } else { (2000, 20) };
    jobs.push(job(
        "consumer",
        format!("consumer, {} partials", thousands(3 * series * windows)),
        CONSUMER,
        &[kafka, &series.to_string(), &windows.to_string()],
    ));
    if !quick {
        jobs.push(variant(
            job(
                "consumer_300k",
                "consumer, 300,000 partials".to_owned(),
                CONSUMER,
                &[kafka, "5000", "20"],
            ),
            &["merged", "finalized", "transaction"],
        ));
        // Scaling: 6 partitions for 1 instance, then shared by 3 (one process, one group).
        jobs.push(variant(
            job(
                "consumer_1x6",
                "consumer, 300,000 partials, 6 partitions, 1 instance".to_owned(),
                CONSUMER,
                &[kafka, "5000", "20", "1", "6"],
            ),
            &["merged", "finalized", "transaction"],
        ));
        jobs.push(variant(
            job(
                "consumer_3x6",
                "consumer, 300,000 partials, 6 partitions, 3 instances".to_owned(),
                CONSUMER,
                &[kafka, "5000", "20", "3", "6"],
            ),
            &["merged", "finalized", "transaction"],
        ));
    }
    // A private broker of its own (stopped and restarted): after the shared-broker programs.
    let recovery_runs = if quick { "1" } else { "5" };
    jobs.push(job(
        "recovery",
        format!("consumer recovery after a 15 s broker outage, 1 consumer, {recovery_runs} run(s)"),
        RECOVERY,
        &["1", recovery_runs, "15"],
    ));
    if !quick {
        jobs.push(job(
            "recovery_3",
            "consumer recovery after a 15 s broker outage, 3 consumers, 5 runs".to_owned(),
            RECOVERY,
            &["3", "5", "15"],
        ));
    }
    jobs
}

/// The executables cargo built, read from its `--message-format=json` output (one JSON object
/// per line; the `compiler-artifact` messages with an `executable`).
#[derive(Debug, Default, Clone)]
pub struct Artifacts(BTreeMap<String, PathBuf>);

impl Artifacts {
    /// Reads the file `scripts/bench.sh` saved the build messages in.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::parse(&text))
    }

    /// Keeps `KIND:NAME -> executable` for every artifact with an executable; other messages
    /// (and lines that are not JSON) are skipped.
    pub fn parse(messages: &str) -> Self {
        let mut map = BTreeMap::new();
        for line in messages.lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let (Some(exe), Some(name)) =
                (msg["executable"].as_str(), msg["target"]["name"].as_str())
            else {
                continue;
            };
            for kind in msg["target"]["kind"].as_array().into_iter().flatten() {
                if let Some(kind) = kind.as_str() {
                    map.insert(format!("{kind}:{name}"), PathBuf::from(exe));
                }
            }
        }
        Artifacts(map)
    }

    /// The executable of `program`.
    pub fn executable(&self, program: &Program) -> Result<&Path, Error> {
        self.0
            .get(&program.key())
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::MissingExecutable(program.key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers() -> Brokers {
        Brokers {
            kafka: "127.0.0.1:19092".into(),
            mqtt: "mqtt://127.0.0.1:18830".into(),
        }
    }

    #[test]
    fn quick_runs_every_program_once_and_full_adds_variants() {
        let programs = |jobs: &[Job]| {
            let mut p: Vec<String> = jobs.iter().map(|j| j.program.key()).collect();
            p.sort();
            p.dedup();
            p
        };
        let quick = jobs(true, &brokers(), None);
        let full = jobs(false, &brokers(), None);
        assert_eq!(programs(&quick), programs(&full));
        assert_eq!(programs(&full).len(), 10);
        assert!(full.len() > quick.len());
        for js in [&quick, &full] {
            let mut ids: Vec<_> = js.iter().map(|j| j.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), js.len(), "ids are unique");
        }
    }

    #[test]
    fn the_shown_command_is_the_cargo_command_with_the_same_arguments() {
        let full = jobs(false, &brokers(), None);
        let cmd = |id: &str| {
            full.iter()
                .find(|j| j.id == id)
                .map(Job::command)
                .unwrap_or_default()
        };
        assert_eq!(
            cmd("link"),
            "cargo bench -p firmware-sim --bench link -- --secs 10"
        );
        assert_eq!(
            cmd("forward_drain"),
            "cargo run --release -p edge-agent --example bench_forward -- 1000000"
        );
        assert_eq!(
            cmd("restart"),
            "cargo run --release -p edge-agent --example bench_restart -- 1000000"
        );
        assert_eq!(
            cmd("ingest"),
            "cargo run --release -p edge-agent --example ingest_bench -- 400000 mqtt://127.0.0.1:18830"
        );
    }

    #[test]
    fn peers_run_telegraf_right_after_the_agent_with_the_same_load() {
        let telegraf = "target/peers/telegraf-1.37.2";
        for quick in [true, false] {
            let without = jobs(quick, &brokers(), None);
            assert!(without.iter().all(|j| j.id != "peer_telegraf"));
            let with = jobs(quick, &brokers(), Some(telegraf));
            assert_eq!(with.len(), without.len() + 1);
            let at = with.iter().position(|j| j.id == "cpu").expect("cpu job");
            let (agent, peer) = (&with[at], &with[at + 1]);
            assert_eq!(peer.id, "peer_telegraf");
            assert_eq!(peer.program, agent.program);
            assert_eq!(agent.args[0], "agent");
            assert_eq!(peer.args[..2], ["telegraf", telegraf]);
            assert_eq!(peer.args[2..], agent.args[1..], "same rate and seconds");
        }
        let full = jobs(false, &brokers(), Some(telegraf));
        let peer = full.iter().find(|j| j.id == "peer_telegraf").expect("peer");
        assert_eq!(
            peer.command(),
            "cargo run --release -p edge-agent --example bench_cpu -- telegraf target/peers/telegraf-1.37.2 10000 30"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(120_000), "120,000");
    }

    #[test]
    fn artifacts_map_kind_and_name_to_the_executable() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"edge_agent"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["example"],"name":"bench_forward"},"executable":"/t/release/examples/bench_forward"}
{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"link"},"executable":"/t/release/deps/link-0123"}
{"reason":"build-finished","success":true}
not json
"#;
        let a = Artifacts::parse(messages);
        assert_eq!(
            a.executable(&FORWARD).ok(),
            Some(Path::new("/t/release/examples/bench_forward"))
        );
        assert_eq!(
            a.executable(&LINK).ok(),
            Some(Path::new("/t/release/deps/link-0123"))
        );
        assert!(matches!(
            a.executable(&CONSUMER),
            Err(Error::MissingExecutable(_))
        ));
    }
}
