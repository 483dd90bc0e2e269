//! Shared by the `forward_*` suites: an agent's configuration and data directory, filling its
//! outbox through the library, running the forwarder (in process or as the `edge-agent`
//! binary), and accounting for every record by its `agent` and `seq` headers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edge_agent::config::{Config, KafkaSection};
use edge_agent::forward::progress::{self, Marker};
use edge_agent::forward::{producer, ForwardError, ForwardMetrics, Forwarder};
use edge_agent::outbox::{self, OutboxRecord, RecordKind};
use edge_tests::bins::spawn_agent_logged;
use edge_tests::check::assert_none;
use edge_tests::kafka::{kcat_count_committed, read_committed, unique_topic};
use redb::Database;
use tokio_util::sync::CancellationToken;

/// One agent: its id, data directory, configuration file and topics.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub bootstrap: String,
    /// Where passed-through readings (what these suites append) go.
    pub topic: String,
    pub progress: String,
    pub config_path: PathBuf,
}

impl Agent {
    /// A new agent with a unique id and unique topics; `kafka_extra` is added to `[kafka]`.
    pub fn new(bootstrap: &str, kafka_extra: &str) -> Agent {
        let id = unique_topic("fwd-agent");
        let topic = unique_topic("fwd-readings");
        let progress = unique_topic("fwd-progress");
        Agent::with(bootstrap, &id, &topic, &progress, kafka_extra)
    }

    /// Another agent (own data directory) with the same id and topics as `self`.
    pub fn twin(&self, kafka_extra: &str) -> Agent {
        Agent::with(
            &self.bootstrap,
            &self.id,
            &self.topic,
            &self.progress,
            kafka_extra,
        )
    }

    fn with(bootstrap: &str, id: &str, topic: &str, progress: &str, extra: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"[agent]
id = "{id}"
data_dir = {data_dir:?}

[[pipeline]]
name = "p"
sensors = ["*"]

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000
{batch}
{extra}

{topics}"#,
            topics = edge_tests::config::kafka_topics(topic, topic, progress),
            data_dir = dir.path().display().to_string(),
            batch = if extra.contains("batch_max_records") {
                ""
            } else {
                "batch_max_records = 2000"
            },
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text).expect("write config");
        Agent {
            dir,
            id: id.to_owned(),
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            progress: progress.to_owned(),
            config_path,
        }
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kafka(&self) -> KafkaSection {
        self.config().kafka.expect("[kafka]")
    }

    /// Opens (creates) the agent's database, as the agent would.
    pub fn open_db(&self) -> Arc<Database> {
        let path = self.config().ingest_path();
        std::fs::create_dir_all(path.parent().expect("data dir")).expect("data dir");
        let db = Database::create(&path).expect("open the agent's database");
        outbox::create(&db).expect("outbox table");
        Arc::new(db)
    }

    /// Appends `n` records through the library and closes the database again.
    pub fn prefill(&self, n: u64) {
        let db = self.open_db();
        append(&db, n);
    }

    /// Runs the forwarder on a thread of this process.
    pub fn spawn_forwarder(&self, db: Arc<Database>) -> Running {
        let metrics = Arc::new(ForwardMetrics::default());
        let cancel = CancellationToken::new();
        let forwarder = Forwarder::from_config(&self.config(), db, metrics.clone())
            .expect("[kafka] configured");
        let token = cancel.clone();
        let thread = std::thread::spawn(move || forwarder.run(token));
        Running {
            metrics,
            cancel,
            thread: Some(thread),
        }
    }

    /// The agent's newest marker readable now (not waiting for open transactions).
    /// `None` also while the agent has not created the progress topic yet.
    pub fn marker_now(&self) -> Option<Marker> {
        let reader = producer::reader_config(&self.kafka(), &self.id);
        match progress::read_last(
            &reader,
            &self.progress,
            &self.id,
            progress::Wait::No,
            &CancellationToken::new(),
        ) {
            Ok(marker) => marker,
            Err(ForwardError::MissingTopic { .. }) => None,
            Err(e) => panic!("reading the marker: {e}"),
        }
    }

    /// Spawns `edge-agent run` on this agent's configuration; its stderr goes to the returned
    /// file (read it after the process ended).
    pub fn spawn_binary(&self, bin: &Path) -> Proc {
        spawn_agent_logged(bin, &self.config_path, self.dir.path(), "warn", &[])
    }
}

pub use edge_tests::bins::AgentProc as Proc;

/// A forwarder running in this process.
pub struct Running {
    pub metrics: Arc<ForwardMetrics>,
    pub cancel: CancellationToken,
    thread: Option<JoinHandle<Result<(), ForwardError>>>,
}

impl Running {
    /// Prints how long the drain took since `started` and how many session errors were retried.
    pub fn report_drained(&self, started: Instant) {
        let errors = self
            .metrics
            .session_errors
            .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "drained after {:?}; {errors} session errors retried",
            started.elapsed()
        );
    }

    pub fn committed(&self) -> u64 {
        self.metrics
            .last_committed_seq
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until seq `n` is committed, printing progress; panics after `timeout`.
    pub fn wait_for(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last_print = Instant::now();
        while self.committed() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} committed after {timeout:?}",
                self.committed()
            );
            assert!(
                !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "the forwarder stopped at {} of {n}",
                self.committed()
            );
            if last_print.elapsed() > Duration::from_secs(5) {
                println!("  committed {} of {n}", self.committed());
                last_print = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cancels and returns how the forwarder ended.
    pub fn stop(mut self) -> Result<(), ForwardError> {
        self.cancel.cancel();
        self.join()
    }

    /// Waits for the forwarder to end by itself.
    pub fn join(&mut self) -> Result<(), ForwardError> {
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("the forwarder thread does not panic")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The record appended as seq `seq` (the suites append in order from seq 1).
pub fn record(seq: u64) -> OutboxRecord {
    record_with("r", seq)
}

/// Like [`record`], with payload `{prefix}{seq}` (to tell two databases' records apart).
pub fn record_with(prefix: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        kind: RecordKind::Reading,
        created_ms: 1_700_000_000_000 + seq,
        route: "p".to_owned(),
        key: format!("sensor-{}", seq % 8).into_bytes(),
        payload: format!("{prefix}{seq}").into_bytes(),
    }
}

/// Appends the next `n` records (in write transactions of up to 10,000).
pub fn append(db: &Database, n: u64) {
    append_with(db, n, "r");
}

/// Like [`append`], with payloads `{prefix}{seq}`.
pub fn append_with(db: &Database, n: u64, prefix: &str) {
    let mut left = n;
    while left > 0 {
        let chunk = left.min(10_000);
        let next = outbox::stats(db).expect("stats").next_seq;
        let records: Vec<OutboxRecord> = (next..next + chunk)
            .map(|seq| record_with(prefix, seq))
            .collect();
        let txn = db.begin_write().expect("write txn");
        let range = outbox::append(&txn, &records).expect("append");
        txn.commit().expect("commit");
        assert_eq!(range, Some(next..=next + chunk - 1));
        left -= chunk;
    }
}

/// Reads the topic as a `read_committed` reader and asserts that every seq `1..=n` of `agent`
/// is there exactly once with its payload, and nothing else; kcat must count the same.
pub fn account(bootstrap: &str, topic: &str, agent: &str, n: u64) {
    let started = Instant::now();
    let records = read_committed(bootstrap, topic, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &records {
        assert_eq!(
            r.header("agent"),
            Some(agent.as_bytes()),
            "agent header of {r:?}"
        );
        let seq: u64 = std::str::from_utf8(r.header("seq").expect("seq header"))
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("seq header is a decimal number");
        assert_eq!(
            r.payload.as_deref(),
            Some(format!("r{seq}").as_bytes()),
            "payload of seq {seq}"
        );
        assert_eq!(
            r.header("schema"),
            Some(b"edge.reading".as_slice()),
            "schema header"
        );
        *copies.entry(seq).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=n).filter(|s| !copies.contains_key(s)).collect();
    let twice: Vec<(u64, u32)> = copies
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, c)| (*s, *c))
        .collect();
    let extra: Vec<u64> = copies.keys().copied().filter(|s| *s > n).collect();
    println!(
        "accounted {} records of {topic} in {:?}: {} missing, {} more than once, {} unexpected",
        records.len(),
        started.elapsed(),
        missing.len(),
        twice.len(),
        extra.len()
    );
    assert_none("missing seqs", &missing);
    assert_none("seqs more than once", &twice);
    assert_none("unexpected seqs", &extra);
    assert_eq!(records.len() as u64, n);
    let kcat = kcat_count_committed(bootstrap, topic).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kcat as u64, n, "kcat (read_committed) counts the same");
}

/// `target/<profile>/edge-agent`, built on demand (the binary under test).
pub fn agent_binary() -> PathBuf {
    edge_tests::bins::workspace_binary("edge-agent", "edge-agent")
}

/// Sends SIGTERM to `child` (a graceful stop).
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// Fault schedules: a clock seed (print it) and the xorshift draws.
#[allow(unused_imports)] // not every suite that includes this module uses it
pub use edge_tests::schedule::{next, seed};
