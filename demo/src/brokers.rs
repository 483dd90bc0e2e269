//! The brokers the demo talks to: its own Apache Kafka (KRaft) and Mosquitto, started on ports of
//! their own through the project's `tests/services/services.sh` (so they never collide with the
//! test brokers), or brokers the user names with `--kafka` / `--mqtt`.
//!
//! Only a broker the demo started is ever stopped by it: the Kafka outage is injected into its
//! own broker, never into one it was pointed at.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the demo's own brokers listen: Kafka on `19092 + KAFKA_PORT_OFFSET`, Mosquitto on
/// `MQTT_PORT` (TLS on the next port, unused here).
pub const KAFKA_PORT_OFFSET: u16 = 600;
pub const MQTT_PORT: u16 = 18860;

pub struct Brokers {
    pub kafka: String,
    pub mqtt: String,
    own_kafka: bool,
    own_mqtt: bool,
    script: PathBuf,
    state: PathBuf,
    keep: bool,
}

impl Brokers {
    /// Uses `kafka` / `mqtt` when given, starts the others (waiting until they accept
    /// connections). `state` holds the started brokers' data and logs.
    pub fn start(
        root: &Path,
        state: &Path,
        kafka: Option<&str>,
        mqtt: Option<&str>,
        keep: bool,
    ) -> Result<Brokers> {
        let brokers = Brokers {
            kafka: kafka.map_or_else(
                || format!("127.0.0.1:{}", 19092 + KAFKA_PORT_OFFSET),
                str::to_owned,
            ),
            mqtt: mqtt.map_or_else(|| format!("mqtt://127.0.0.1:{MQTT_PORT}"), str::to_owned),
            own_kafka: kafka.is_none(),
            own_mqtt: mqtt.is_none(),
            script: root.join("tests/services/services.sh"),
            state: state.to_owned(),
            keep,
        };
        if !brokers.script.exists() {
            bail!(
                "{} not found: run the demo from the repository (./demo.sh)",
                brokers.script.display()
            );
        }
        match (brokers.own_kafka, brokers.own_mqtt) {
            (true, true) => brokers.services(&["start"])?,
            (true, false) => brokers.services(&["start", "kafka"])?,
            (false, true) => brokers.services(&["start", "mqtt"])?,
            (false, false) => {}
        }
        Ok(brokers)
    }

    /// Whether the demo may take Kafka down (only its own).
    pub fn own_kafka(&self) -> bool {
        self.own_kafka
    }

    /// Stops the demo's Kafka broker (SIGTERM; its data stays).
    pub fn stop_kafka(&self) -> Result<()> {
        self.services(&["stop", "kafka"])
    }

    /// Starts the demo's Kafka broker again, with its data, and waits until it listens.
    pub fn start_kafka(&self) -> Result<()> {
        self.services(&["start", "kafka"])
    }

    fn services(&self, args: &[&str]) -> Result<()> {
        let status = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("EDGE_SERVICES_DIR", &self.state)
            .env("EDGE_KAFKA_PORT_OFFSET", KAFKA_PORT_OFFSET.to_string())
            .env("EDGE_MQTT_PORT", MQTT_PORT.to_string())
            .process_group(0)
            .status()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !status.success() {
            bail!(
                "`{} {}` failed ({status}); its messages are above",
                self.script.display(),
                args.join(" ")
            );
        }
        Ok(())
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        if !self.keep && (self.own_kafka || self.own_mqtt) {
            // Stops what runs and deletes the brokers' data: every demo run has its own topics.
            let _ = self.services(&["clean"]);
        }
    }
}
