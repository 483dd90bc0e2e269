//! The agent's live counters and state flags, shared by the pipeline's tasks (which only store
//! into atomics) and read by the ops endpoints ([`crate::ops`]), the benchmarks and the logs.
//!
//! Dependencies point one way: the pipeline stages and [`crate::service`] write here,
//! [`crate::ops`] reads here; nothing here knows about ops (the consumer keeps its counters the
//! same way, `consumer/src/telemetry.rs`).
//!
//! # Invariants
//!
//! - **Counters survive reloads.** One [`Telemetry`] lives as long as the process; every run of
//!   [`crate::service`] registers its tasks' counters into it, so a SIGHUP does not reset a
//!   Prometheus counter. They start at 0 with the process (Prometheus handles resets).
//! - **Observing never keeps the database open.** It is reachable from here only through a
//!   `Weak`, so a scrape cannot keep it open across a reload (redb's file lock is per handle).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use redb::Database;

use crate::forward::ForwardMetrics;
use crate::ingest::Counters;
use crate::source::Registry;
use crate::stage::StageCounters;
use crate::store::salvage::SalvageCounters;

/// Everything the endpoints show, shared by the pipeline's tasks and the ops tasks.
#[derive(Debug)]
pub struct Telemetry {
    pub started: Instant,
    pub ingest: Arc<Counters>,
    pub stage: Arc<StageCounters>,
    pub forward: Arc<ForwardMetrics>,
    /// Salvages of a damaged database (`store::salvage`).
    pub salvage: Arc<SalvageCounters>,
    /// Per source (kind and name); a reload keeps the entry of a source that still exists.
    pub sources: Registry,
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
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: Instant::now(),
            ingest: Arc::default(),
            stage: Arc::default(),
            forward: Arc::default(),
            salvage: Arc::default(),
            sources: Registry::default(),
            db: Mutex::new(Weak::new()),
            running: AtomicBool::new(false),
            ready_sent: AtomicBool::new(false),
            stage_enabled: AtomicBool::new(false),
            forward_enabled: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }
}

impl Telemetry {
    /// The running pipeline's database, for a read transaction.
    pub fn database(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(|p| p.into_inner()).upgrade()
    }

    /// Publishes (or clears) the running pipeline's database.
    pub fn set_database(&self, db: Option<&Arc<Database>>) {
        *self.db.lock().unwrap_or_else(|p| p.into_inner()) =
            db.map_or_else(Weak::new, Arc::downgrade);
    }
}
