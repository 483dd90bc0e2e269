//! A private Kafka cluster for one fault test: its own state directory and ports, so stopping,
//! killing or restarting its brokers never disturbs the shared broker other tests use.
//!
//! Started through `tests/services/services.sh` (the same script, with `EDGE_SERVICES_DIR` and
//! `EDGE_KAFKA_PORT_OFFSET`); stopped and deleted when dropped, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

/// A running private cluster of 1 or 3 KRaft nodes.
pub struct KafkaCluster {
    dir: tempfile::TempDir,
    offset: u16,
    nodes: u8,
}

static NEXT_OFFSET: AtomicU16 = AtomicU16::new(0);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services/services.sh")
}

impl KafkaCluster {
    /// Starts `nodes` (1 or 3) brokers on ports `N*10000 + 9092 + offset`, offsets 100, 200, ...
    /// per cluster of this process (plus `EDGE_KAFKA_PORT_OFFSET`, which moves the shared broker
    /// too). Panics with the script's output when they do not come up.
    pub fn start(nodes: u8) -> KafkaCluster {
        let base: u16 = std::env::var("EDGE_KAFKA_PORT_OFFSET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let offset = base + 100 * (1 + NEXT_OFFSET.fetch_add(1, Ordering::Relaxed));
        let cluster = KafkaCluster {
            dir: tempfile::tempdir().expect("a temp dir for the cluster"),
            offset,
            nodes,
        };
        cluster.run(&["start", "kafka", "--nodes", &nodes.to_string()]);
        cluster
    }

    /// `host:port,...` of every node.
    pub fn bootstrap(&self) -> String {
        (1..=u32::from(self.nodes))
            .map(|id| format!("127.0.0.1:{}", id * 10000 + 9092 + u32::from(self.offset)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops node `id` gracefully (SIGTERM).
    pub fn stop_node(&self, id: u8) {
        self.run(&["stop", "kafka", "--node", &id.to_string()]);
    }

    /// Kills node `id` (SIGKILL): a broker crash.
    pub fn kill_node(&self, id: u8) {
        self.run(&["kill", "kafka", "--node", &id.to_string()]);
    }

    /// Stops every node.
    pub fn stop(&self) {
        self.run(&["stop", "kafka"]);
    }

    /// Starts every node that is not running, keeping its data (a broker restart), and waits
    /// until each accepts connections.
    pub fn restart_stopped(&self) {
        self.run(&["start", "kafka"]);
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new("bash")
            .arg(script())
            .args(args)
            .env("EDGE_SERVICES_DIR", self.dir.path())
            .env("EDGE_KAFKA_PORT_OFFSET", self.offset.to_string())
            .output()
            .expect("bash runs tests/services/services.sh");
        assert!(
            output.status.success(),
            "services.sh {args:?} for the private cluster failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("clean")
            .env("EDGE_SERVICES_DIR", self.dir.path())
            .env("EDGE_KAFKA_PORT_OFFSET", self.offset.to_string())
            .output();
    }
}
