//! Operations: what lets a gateway run unattended under systemd and Prometheus.
//!
//! | module | does |
//! | --- | --- |
//! | [`supervise`] | signals: SIGTERM/SIGINT drain within `ops.shutdown_timeout_s`; SIGHUP reloads the file (drain, reopen, restart) or refuses it and keeps the old one |
//! | [`health`] | a 1 s sampler over the counters: source connection states, "forwarder failing", stall detection; the `/healthz`, `/readyz` and watchdog predicates (no I/O but the database read) |
//! | [`metrics`] | the Prometheus text exposition of [`Telemetry`] and the health view, one block per stage (each source kind's block from its own family list) |
//! | [`http`] | the endpoints' path table, served by the shared HTTP/1.1 responder of `edge-ops-http` on tokio's `TcpListener` (GET only, 8 KiB requests, 5 s deadline, 32 connections) |
//!
//! `sd_notify` (READY, STOPPING, RELOADING, WATCHDOG) is `edge_ops_http::notify`, shared with
//! the consumer; this module decides when each is sent.
//!
//! The counters themselves live in [`crate::telemetry`] (the pipeline writes them, ops reads
//! them); ops depends on telemetry, [`crate::service`] and [`crate::source`], none of them on ops.
//!
//! # Invariants
//!
//! - **Observing never disturbs the pipeline.** The endpoints read atomics and open redb *read*
//!   transactions on the agent's own handle (MVCC: they never block a writer); the database is
//!   reachable from [`Telemetry`] only through a `Weak`, so a scrape cannot keep it open across a
//!   reload.
//! - **Counters survive reloads** (see [`crate::telemetry`]).
//! - **Metrics are optional for the data path.** A listener that cannot bind (port taken) is
//!   logged as an error and the agent runs without it; the pipeline never waits on a scrape.

pub mod health;
pub mod http;
pub mod metrics;
pub mod supervise;

use std::sync::{Arc, Mutex};

pub use crate::telemetry::Telemetry;

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
    #[error("[ops] {0}")]
    Token(String),
    #[error("the drain did not finish within {seconds} s")]
    DrainTimeout { seconds: u64 },
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// What the ops tasks share: the process's [`Telemetry`] and the health sampler's latest view.
#[derive(Debug, Default)]
pub struct Shared {
    pub telemetry: Arc<Telemetry>,
    /// Filled by the [`health`] sampler.
    health: Mutex<health::Health>,
}

impl Shared {
    pub fn new(telemetry: Arc<Telemetry>) -> Shared {
        Shared {
            telemetry,
            health: Mutex::default(),
        }
    }

    /// A copy of the sampler's latest view.
    pub fn health(&self) -> health::Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_health(&self, health: health::Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }
}
