//! Operations: what lets a gateway run unattended under systemd and Prometheus.
//!
//! | module | does |
//! | --- | --- |
//! | [`supervise`] | signals: SIGTERM/SIGINT drain within `ops.shutdown_timeout_s`; SIGHUP reloads the file (drain, reopen, restart) or refuses it and keeps the old one |
//! | [`health`] | a 1 s sampler over the counters: source connection states, "forwarder failing", stall detection; the `/healthz`, `/readyz` and watchdog predicates (no I/O but the database read) |
//! | [`metrics`] | the Prometheus text exposition of [`Telemetry`] |
//! | [`http`] | the endpoints' path table, served by the shared HTTP/1.1 responder of `edge-ops-http` on tokio's `TcpListener` (GET only, 8 KiB requests, 5 s deadline, 32 connections) |
//! | [`notify`] | `sd_notify` over `$NOTIFY_SOCKET` (READY, STOPPING, RELOADING, WATCHDOG) with a std `UnixDatagram` |
//!
//! # Invariants
//!
//! - **Observing never disturbs the pipeline.** The endpoints read atomics and open redb *read*
//!   transactions on the agent's own handle (MVCC: they never block a writer); the database is
//!   reachable from [`Telemetry`] only through a `Weak`, so a scrape cannot keep it open across a
//!   reload.
//! - **Counters survive reloads.** One [`Telemetry`] lives as long as the process; every run of
//!   [`crate::service`] registers its tasks' counters into it, so a SIGHUP does not reset a
//!   Prometheus counter. They start at 0 with the process (Prometheus handles resets).
//! - **Metrics are optional for the data path.** A listener that cannot bind (port taken) is
//!   logged as an error and the agent runs without it; the pipeline never waits on a scrape.

pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod supervise;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use redb::Database;

use crate::forward::ForwardMetrics;
use crate::ingest::Counters;
use crate::source::mqtt::SourceCounters;
use crate::source::serial::SerialCounters;
use crate::stage::StageCounters;

/// Why an operations task failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the drain did not finish within {seconds} s")]
    DrainTimeout { seconds: u64 },
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// Everything the endpoints show, shared by the pipeline's tasks and the ops tasks.
#[derive(Debug)]
pub struct Telemetry {
    pub started: Instant,
    pub ingest: Arc<Counters>,
    pub stage: Arc<StageCounters>,
    pub forward: Arc<ForwardMetrics>,
    /// Per source name; a reload keeps the entry of a source that still exists.
    pub mqtt: Mutex<BTreeMap<String, Arc<SourceCounters>>>,
    pub serial: Mutex<BTreeMap<String, Arc<SerialCounters>>>,
    /// The open database while a pipeline runs (never a strong reference: see the invariants).
    pub db: Mutex<Weak<Database>>,
    /// A pipeline is running (false while draining for a reload and after the stop).
    pub running: AtomicBool,
    /// `READY=1` was sent once: the watchdog is fed only from then on (systemd arms it at
    /// READY), and through the drains of reloads and stop.
    pub ready_sent: AtomicBool,
    /// The pipeline has pipelines configured (the windowing stage runs) / a `[kafka]` table.
    pub stage_enabled: AtomicBool,
    pub forward_enabled: AtomicBool,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Filled by the [`health`] sampler.
    pub health: Mutex<health::Health>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: Instant::now(),
            ingest: Arc::default(),
            stage: Arc::default(),
            forward: Arc::default(),
            mqtt: Mutex::default(),
            serial: Mutex::default(),
            db: Mutex::new(Weak::new()),
            running: AtomicBool::new(false),
            ready_sent: AtomicBool::new(false),
            stage_enabled: AtomicBool::new(false),
            forward_enabled: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            health: Mutex::default(),
        }
    }
}

impl Telemetry {
    /// The counters of MQTT source `name`, created on first use.
    pub fn mqtt_source(&self, name: &str) -> Arc<SourceCounters> {
        let mut map = self.mqtt.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// The counters of serial source `name`, created on first use.
    pub fn serial_source(&self, name: &str) -> Arc<SerialCounters> {
        let mut map = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Forgets the sources a reloaded configuration no longer has.
    pub fn retain_sources(&self, mqtt: &[&str], serial: &[&str]) {
        let mut m = self.mqtt.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| mqtt.contains(&k.as_str()));
        let mut s = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|k, _| serial.contains(&k.as_str()));
    }

    /// The running pipeline's database, for a read transaction.
    pub fn database(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(|p| p.into_inner()).upgrade()
    }

    /// Publishes (or clears) the running pipeline's database.
    pub fn set_database(&self, db: Option<&Arc<Database>>) {
        *self.db.lock().unwrap_or_else(|p| p.into_inner()) =
            db.map_or_else(Weak::new, Arc::downgrade);
    }

    /// A copy of the sampler's latest view.
    pub fn health(&self) -> health::Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
