//! `[ops]`: how the agent is operated: the metrics/health listener, the shutdown bound and the
//! watchdog's stall bound. Every key has a default, so the table is optional.
//!
//! These keys are read once at start: a SIGHUP reload that changes them is refused with "needs a
//! restart" (see [`crate::ops::supervise`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[ops]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSection {
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/inspect` at all.
    pub metrics: bool,
    /// Where to serve them. Loopback by default.
    pub metrics_listen: SocketAddr,
    /// A file holding a bearer token that `/metrics` and `/inspect` then require
    /// (`Authorization: Bearer <token>`); `/healthz` and `/readyz` stay open. Read at start;
    /// every user may not read it. None by default: keep the listener on loopback then.
    pub token_file: Option<PathBuf>,
    /// Upper bound of a graceful stop (SIGTERM) or of the drain before a reload (SIGHUP), in
    /// seconds. Past it the agent exits anyway: nothing is lost (uncommitted readings were not
    /// acked; the open Kafka transaction is aborted by the next start). Keep systemd's
    /// `TimeoutStopSec` above it. Values below 1 count as 1.
    pub shutdown_timeout_s: u64,
    /// The watchdog is fed only while no stage with pending work has gone this many seconds
    /// without an event (commit, retry or error). Keep it above twice the Kafka
    /// `transaction_timeout_ms` (a session start may wait that long). Values below 1 count as 1.
    pub watchdog_stall_s: u64,
}

impl Default for OpsSection {
    fn default() -> Self {
        OpsSection {
            metrics: true,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9898)),
            token_file: None,
            shutdown_timeout_s: 45,
            watchdog_stall_s: 300,
        }
    }
}
