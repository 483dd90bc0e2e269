//! The runner (feature `std`): simulated devices driven over a serial line, MQTT or Modbus.
//!
//! | module | holds |
//! | --- | --- |
//! | [`sim`] | run options shared by the transports, the per-device sampler, the rate schedule |
//! | [`models`] | sensor models: sine with noise, random walk with drift, step, counter |
//! | [`serial`] | the serial transport: device cores speaking the link protocol over a port or a pty |
//! | [`serial_io`] | the port's reader and (paced) writer tasks |
//! | [`mqtt`] | the MQTT transport: one message per reading, QoS 0/1/2, plain or TLS |
//! | [`modbus`] | the Modbus transport: devices as unit ids behind a TCP or RTU server, values updated on a clock |
//! | [`modbus_device`] | one Modbus device without I/O: register map, answers, fault choice |
//! | [`payload`] | MQTT payload formats (JSON, nested JSON, SenML, plain) and topic templates |
//! | [`faults`] | fault injection (serial, MQTT): corruption, duplicates, reordering, skew, bursts, disconnects, reboots |
//! | [`ledger`] | the JSON-lines record of everything sent, for end-to-end accounting |
//! | [`peer`] | a minimal agent side of the serial link (decode, dedupe, ack), for tests and benches |
//! | [`rng`] | the seeded SplitMix64 generator behind every random choice |
//!
//! Every transport runs until `--count` readings per device or `--duration` seconds, or until
//! its cancellation token fires (the binary fires it on Ctrl-C and SIGTERM); it then drains
//! (waits for outstanding acknowledgements up to `--drain-timeout`), writes the ledger's `end`
//! record and returns a [`RunSummary`].

pub mod faults;
pub mod ledger;
pub mod modbus;
pub mod modbus_device;
pub mod models;
pub mod mqtt;
pub mod payload;
pub mod peer;
pub mod rng;
pub mod serial;
pub mod serial_io;
pub mod sim;

use std::time::{Duration, Instant};

pub use ledger::{Ledger, LedgerError, LedgerReading, LedgerRecord, ModbusOutcome};
pub use sim::RunConfig;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("serial port {path}: {source}")]
    SerialOpen {
        path: String,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("creating a pseudo-terminal pair: {0}")]
    Pty(#[source] tokio_serial::Error),
    #[error("serial I/O: {0}")]
    SerialIo(#[from] std::io::Error),
    #[error("bad MQTT URL {0:?}: expected mqtt://host[:port] or mqtts://host[:port]")]
    MqttUrl(String),
    #[error("an mqtts:// URL needs --ca FILE")]
    MqttCaMissing,
    #[error("reading the CA file {path}: {source}")]
    MqttCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("MQTT client: {0}")]
    MqttClient(#[from] rumqttc::ClientError),
    #[error("Modbus TCP: binding {addr}: {source}")]
    ModbusBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Modbus: {devices} devices from unit id {first} do not fit in unit ids 1..=247")]
    ModbusUnits { first: u8, devices: u8 },
    #[error("Modbus server: {0}")]
    ModbusServer(#[source] std::io::Error),
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Readings sampled (each is in the ledger once).
    pub readings: u64,
    /// Serial: `Readings` frames built. MQTT: publishes handed to the client (duplicates too).
    pub frames: u64,
    /// Serial: frames acknowledged. MQTT: PUBACK/PUBCOMP received.
    pub acked: u64,
    /// Serial: frames sent again after a timeout.
    pub retransmits: u64,
    /// Serial: readings that fell out of a device's ring unacknowledged.
    pub evicted_readings: u64,
    /// Whether everything was acknowledged before the run ended.
    pub drained: bool,
}

/// Prints a progress line to stderr at most every `every`.
#[derive(Debug)]
pub struct Progress {
    every: Option<Duration>,
    last: Instant,
    start: Instant,
}

impl Progress {
    /// Progress every `secs` seconds (0 or less: never).
    pub fn new(secs: f64) -> Progress {
        let now = Instant::now();
        Progress {
            every: Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero()),
            last: now,
            start: now,
        }
    }

    /// Prints `line()` if the interval has passed.
    pub fn maybe_print(&mut self, line: impl FnOnce() -> String) {
        let Some(every) = self.every else { return };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            eprintln!("[{:>7.1}s] {}", self.start.elapsed().as_secs_f64(), line());
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (or never, if the handlers cannot be installed).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
