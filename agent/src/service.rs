//! Wiring: opens the ingest log, starts the writer and every source, and stops them together.
//!
//! Sources are started from the configured list through the seam in [`crate::source`]
//! (`source::spawn_all` over `source::KINDS`): this file names no source kind. It reports into a
//! [`Telemetry`] and knows nothing of the ops endpoints or systemd: the supervisor
//! ([`crate::ops::supervise`]) passes the `ready` callback that announces `READY=1`.
//!
//! One shutdown path: a [`CancellationToken`] cloned into every task and a [`TaskTracker`]
//! awaited until they drain. The writer stops between commits and the sources stop polling;
//! whatever was not committed was not acked, so the brokers redeliver it on the next start.
//! When the run ends without an error and the last database handle is closed, the clean-close
//! mark is written (`store::salvage::clean`), so the next start opens the file without reading
//! all of it; any other end leaves no mark and the next start checks the whole file.
//!
//! With a `[kafka]` table the forwarder ([`crate::forward`]) drains the outbox on a blocking
//! thread of its own; a fatal forwarder error (fenced, another instance's progress, a missing
//! topic) stops the whole agent with that error.
//!
//! The windowing stage ([`crate::stage`]) consumes the log on a blocking thread: windows,
//! pass-through, late readings and dead letters go to the outbox in the transaction that
//! advances its cursor and trims the log (which frees quota: the writer re-checks it). A fatal
//! stage error (corruption) stops the whole agent with that error. Without any `[[pipeline]]`
//! the stage does not run: the agent only ingests (commissioning, tests) and the log fills to
//! its quota.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::Database;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::forward::{ForwardError, Forwarder};
use crate::ingest::writer::{BatchLimits, Writer};
use crate::ingest::{Counters, IngestError, IngestLog, Limits};
use crate::mapping::Mapper;
use crate::source::{self, Context};
use crate::stage::{Stage, StageCounters, StageError};
use crate::store::salvage;
use crate::telemetry::Telemetry;
use crate::wake::Wake;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("ingest log: {0}")]
    Ingest(#[from] IngestError),
    /// Fatal for the forwarder: fenced, another instance's progress, a missing topic, ...
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("the forwarder's thread failed")]
    ForwarderThread,
    /// The windowing stage's blocking thread panicked.
    #[error("the windowing stage's thread failed")]
    StageThread,
    /// The task running [`run_with_telemetry`] panicked (seen by [`crate::ops::supervise`]).
    #[error("the pipeline's task failed")]
    PipelineTask,
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// The ingest limits a configuration asks for.
pub fn limits(config: &Config) -> Limits {
    Limits {
        quota_bytes: *config.buffer.quota_bytes.get_ref(),
        on_full: config.buffer.on_full,
        dedupe_max_entries: *config.buffer.dedupe_max_entries.get_ref(),
        dedupe_max_age_ms: config.buffer.dedupe_max_age_s.saturating_mul(1000),
    }
}

/// Runs the ingest path until `cancel` fires (or the writer fails fatally).
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), ServiceError> {
    run_with_counters(config, cancel, Arc::new(Counters::default())).await
}

/// [`run`], publishing the ingest counters into `counters` as it goes.
pub async fn run_with_counters(
    config: Config,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) -> Result<(), ServiceError> {
    let telemetry = Telemetry {
        ingest: counters,
        ..Telemetry::default()
    };
    run_with_telemetry(config, cancel, Arc::new(telemetry), || {}).await
}

/// [`run`], registering every task's counters and the database in `telemetry` (the ops
/// endpoints read them) and calling `ready` once the tasks run (the supervisor announces
/// `READY=1` to systemd there).
pub async fn run_with_telemetry(
    config: Config,
    cancel: CancellationToken,
    telemetry: Arc<Telemetry>,
    ready: impl FnOnce(),
) -> Result<(), ServiceError> {
    let counters = telemetry.ingest.clone();
    let path = config.ingest_path();
    let log = IngestLog::open(&path, limits(&config))?;
    if let Some(report) = log.salvage_report() {
        telemetry.salvage.record(report);
    }
    let database = log.database();
    let closed = Arc::downgrade(&database);
    let stage = match config.pipeline.is_empty() {
        true => None,
        false => Some(Stage::open(
            database.clone(),
            Arc::new(config.clone()),
            *config.buffer.batch_max_readings.get_ref(),
            crate::clock::unix_ms(),
        )?),
    };
    // Each stage wakes the next after a commit (`crate::wake`): writer -> stage -> forwarder.
    let readings_committed = Arc::new(Wake::default());
    let outbox_appended = Arc::new(Wake::default());
    let stage = stage.map(|mut stage| {
        stage.counters = telemetry.stage.clone();
        stage.readings_committed = Some(readings_committed.clone());
        stage.outbox_appended = Some(outbox_appended.clone());
        stage
    });
    let stage_counters: Option<Arc<StageCounters>> = stage.as_ref().map(|s| s.counters.clone());
    let (submissions, submissions_rx) = mpsc::channel(*config.buffer.channel_capacity.get_ref());
    let tracker = TaskTracker::new();
    let writer = Writer {
        log,
        path,
        batch: BatchLimits {
            max_readings: *config.buffer.batch_max_readings.get_ref(),
            max_wait: Duration::from_millis(config.buffer.batch_max_ms),
        },
        counters: counters.clone(),
        submissions: submissions_rx,
        cancel: cancel.clone(),
        committed: Some(readings_committed.clone()),
    };
    let writer = tracker.spawn(writer.run());

    // Every configured source of every kind, from the kinds' own list (`source::KINDS`).
    let cx = Context {
        mapper: Arc::new(Mapper::new(&config)),
        submissions: submissions.clone(),
        cancel: cancel.clone(),
        registry: &telemetry.sources,
        database: database.clone(),
    };
    for task in source::spawn_all(&config, &cx) {
        tracker.spawn(task);
    }
    drop(cx);
    let stage_task = stage.map(|stage| {
        let cancel = cancel.clone();
        tracker.spawn_blocking(move || {
            let result = stage.run(&cancel);
            if let Err(error) = &result {
                tracing::error!(%error, "windowing stage failed fatally; stopping");
                cancel.cancel();
            }
            result
        })
    });
    // The forwarder (with a `[kafka]` table) drains the outbox on a blocking thread of its own.
    telemetry.set_database(Some(&database));
    telemetry
        .stage_enabled
        .store(stage_task.is_some(), Ordering::Relaxed);
    let forwarder =
        Forwarder::from_config(&config, database, telemetry.forward.clone()).map(|mut f| {
            f.outbox_appended = Some(outbox_appended.clone());
            let cancel = cancel.clone();
            tracker.spawn_blocking(move || f.run(cancel))
        });
    // A cancellation wakes the sleeping stage and forwarder at once.
    tracker.spawn({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            readings_committed.notify();
            outbox_appended.notify();
        }
    });
    drop(submissions);
    tracker.close();
    telemetry
        .forward_enabled
        .store(forwarder.is_some(), Ordering::Relaxed);
    telemetry.running.store(true, Ordering::Relaxed);
    ready();
    tracing::info!(
        agent = config.agent.id.get_ref().as_str(),
        "edge-agent ingesting"
    );

    let writer_result = |joined: Result<Result<(), IngestError>, _>| match joined {
        Ok(result) => result.map_err(ServiceError::from),
        Err(_) => Err(ServiceError::Ingest(IngestError::WriterThread)),
    };
    let forwarder_result = |joined: Result<Result<(), ForwardError>, _>| match joined {
        Ok(result) => result.map_err(ServiceError::from),
        Err(_) => Err(ServiceError::ForwarderThread),
    };
    let result = match forwarder {
        None => writer_result(writer.await),
        // Whichever stops first with an error stops the agent. A writer without sources ends at
        // once; the forwarder then keeps draining until cancelled.
        Some(mut forwarder) => {
            let mut writer = writer;
            tokio::select! {
                joined = &mut writer => match writer_result(joined) {
                    Ok(()) if !cancel.is_cancelled() => forwarder_result(forwarder.await),
                    other => other,
                },
                joined = &mut forwarder => forwarder_result(joined),
            }
        }
    };
    cancel.cancel();
    telemetry.running.store(false, Ordering::Relaxed);
    tracker.wait().await;
    telemetry.set_database(None);
    let stage_result = match stage_task {
        None => Ok(()),
        Some(task) => match task.await {
            Ok(r) => r.map_err(ServiceError::from),
            Err(_) => Err(ServiceError::StageThread),
        },
    };
    if let Some(c) = stage_counters {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            readings = get(&c.readings),
            windows_closed = get(&c.windows_closed),
            idle_closes = get(&c.idle_closes),
            forced_closes = get(&c.forced_closes),
            revisions = get(&c.revisions),
            late_forwarded = get(&c.late_forwarded),
            late_dropped = get(&c.late_dropped),
            "windowing stage stopped"
        );
    }
    let result = result.and(stage_result);
    if result.is_ok() {
        mark_clean(config.ingest_path(), closed).await;
    }
    result
}

/// After a clean stop, once the last handle of the database is gone (a health sample or
/// `/inspect` may hold one for a moment), writes the clean-close mark so the next start may skip
/// the full integrity check ([`crate::store::salvage::clean`]). Best effort: without the mark
/// the next start checks the whole file, as after a crash.
async fn mark_clean(path: std::path::PathBuf, db: Weak<Database>) {
    for _ in 0..200 {
        if db.strong_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if db.strong_count() > 0 {
        tracing::warn!("the database is still open: the next start checks it in full");
        return;
    }
    match tokio::task::spawn_blocking(move || salvage::mark_clean(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "no clean-close mark: the next start checks the database in full")
        }
        Err(_) => tracing::warn!("no clean-close mark: its thread failed"),
    }
}
