//! The process's life: start the ops tasks and the pipeline, then react to signals.
//!
//! # Signals
//!
//! - **SIGTERM / SIGINT: drain.** `STOPPING=1`, then the pipeline's one cancellation token
//!   fires ([`crate::service`]): sources stop reading (nothing un-committed was acked, so the
//!   brokers and firmware keep it), the writer and the windowing stage stop at their next commit
//!   boundary, the forwarder stops between batches: a Kafka transaction already sent finishes
//!   its commit (bounded by `forward::COMMIT_TIMEOUT`), none is left open. If the drain takes
//!   longer than `ops.shutdown_timeout_s` the process exits anyway with an error: still nothing
//!   is lost or doubled, because the next start's `init_transactions` aborts an open
//!   transaction and resumes from Kafka's committed marker, and un-acked input is redelivered.
//! - **SIGHUP: reload.** The file is read and validated first. A bad file is refused (the error
//!   names file, line, column and field), counted in `edge_agent_reload_failures_total`, and the
//!   running pipeline is not touched. A file that changes `[agent]` (`id`, `data_dir`) or
//!   `[ops]` is refused too: those need a restart. Otherwise the reload is a drain exactly like
//!   SIGTERM's, then the pipeline starts again from the new file on the same database: sources,
//!   the sensor mapping, `[[pipeline]]`s (open windows continue where their shape is unchanged;
//!   see `stage.rs` for changed shapes), `[buffer]` and `[kafka]` all take effect. Buffered data
//!   is in redb throughout, so a reload loses nothing; ingest pauses for the drain and the
//!   forwarder's session start (about a second or two against a local broker).
//!
//!   **A mapping change doubles nothing on a clean drain** (pinned by
//!   `tests/tests/ops_signals.rs`): the MQTT source flushes the acks of every committed message
//!   and disconnects before it stops (`source/mqtt/stop.rs`), so the broker redelivers nothing
//!   that was stored. Only an unconfirmed stop (logged "acks not confirmed": the broker was
//!   away, or the 5 s flush bound passed) or a crash can still let a redelivered message be
//!   stored again under a new sensor id (the dedupe key is sensor id + timestamp); it is never
//!   lost and never twice under one id.
//!
//! # Invariants
//!
//! - One pipeline at a time: the next starts only after the previous one's tasks have all
//!   ended and its database handle is released (redb's file lock is per handle).
//! - Counters, the metrics listener and the health sampler outlive reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_ops_http::notify;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{OpsError, Shared, Telemetry};
use crate::config::Config;
use crate::service::{self, ServiceError};

enum Next {
    Ended(Result<Result<(), ServiceError>, tokio::task::JoinError>),
    Stop,
    Reload(Box<Config>),
}

/// Runs the agent from `path` (already loaded as `config`) until a signal stops it.
pub async fn run(path: PathBuf, config: Config) -> Result<(), OpsError> {
    let telemetry = Arc::new(Telemetry::default());
    let shared = Arc::new(Shared::new(telemetry.clone()));
    let ops = config.ops.clone();
    let ops_stop = CancellationToken::new();
    let _guard = ops_stop.clone().drop_guard();
    let token = match &ops.token_file {
        Some(path) => Some(edge_ops_http::Token::read(path).map_err(OpsError::Token)?),
        None => None,
    };
    if ops.metrics {
        match TcpListener::bind(ops.metrics_listen).await {
            Ok(listener) => {
                tracing::info!(listen = %ops.metrics_listen, token = token.is_some(), "serving /metrics /healthz /readyz /inspect");
                if token.is_none() && !ops.metrics_listen.ip().is_loopback() {
                    tracing::warn!(listen = %ops.metrics_listen,
                        "/metrics and /inspect answer anyone who reaches this address: set [ops] token_file");
                }
                tokio::spawn(super::http::serve(
                    listener,
                    shared.clone(),
                    token,
                    ops_stop.clone(),
                ));
            }
            Err(source) => {
                let error = OpsError::Bind {
                    addr: ops.metrics_listen,
                    source,
                };
                tracing::error!(%error, "running without the metrics listener");
            }
        }
    }
    let stall = Duration::from_secs(ops.watchdog_stall_s.max(1));
    tokio::spawn(super::health::run(shared, stall, ops_stop.clone()));
    let installs = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| OpsError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = installs(SignalKind::terminate(), "SIGTERM")?;
    let mut int = installs(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = installs(SignalKind::hangup(), "SIGHUP")?;
    let bound = Duration::from_secs(ops.shutdown_timeout_s.max(1));
    let mut config = config;
    loop {
        let cancel = CancellationToken::new();
        let t = telemetry.clone();
        // systemd arms the watchdog at READY: the sampler feeds it from then on.
        let ready = move || {
            notify::notify("READY=1");
            t.ready_sent.store(true, Ordering::Relaxed);
        };
        let mut pipeline: JoinHandle<Result<(), ServiceError>> = tokio::spawn(
            service::run_with_telemetry(config.clone(), cancel.clone(), telemetry.clone(), ready),
        );
        let next = loop {
            tokio::select! {
                joined = &mut pipeline => break Next::Ended(joined),
                _ = term.recv() => break Next::Stop,
                _ = int.recv() => break Next::Stop,
                _ = hup.recv() => match reloaded(&path, &config) {
                    Ok(new) => break Next::Reload(Box::new(new)),
                    Err(error) => {
                        telemetry.reload_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "SIGHUP: reload refused; keeping the running configuration");
                    }
                },
            }
        };
        let new = match next {
            Next::Ended(Ok(result)) => return result.map_err(OpsError::from),
            Next::Ended(Err(_)) => return Err(ServiceError::PipelineTask.into()),
            Next::Stop => {
                tracing::info!(bound_s = bound.as_secs(), "stopping: draining");
                notify::notify("STOPPING=1");
                return drain(pipeline, &cancel, bound).await;
            }
            Next::Reload(new) => new,
        };
        tracing::info!(file = %path.display(), "SIGHUP: reloading: draining the pipeline");
        notify::notify("RELOADING=1");
        let held = telemetry
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        drain(pipeline, &cancel, bound).await?;
        // The database handle must be gone before the next pipeline opens the file.
        let mut waited = Duration::ZERO;
        while held.strong_count() > 0 && waited < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        config = *new;
        telemetry.sources.retain(&config);
        telemetry.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!("SIGHUP: reload applied; pipeline restarting");
    }
}

/// Cancels the pipeline and waits for it, at most `bound`.
async fn drain(
    mut pipeline: JoinHandle<Result<(), ServiceError>>,
    cancel: &CancellationToken,
    bound: Duration,
) -> Result<(), OpsError> {
    cancel.cancel();
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(bound, &mut pipeline).await {
        Ok(Ok(result)) => {
            tracing::info!(
                drain_ms = started.elapsed().as_millis() as u64,
                "pipeline drained"
            );
            result.map_err(OpsError::from)
        }
        Ok(Err(_)) => Err(ServiceError::PipelineTask.into()),
        Err(_) => {
            tracing::error!(
                bound_s = bound.as_secs(),
                "drain exceeded its bound; exiting anyway (un-acked input is redelivered, an open \
                 Kafka transaction is aborted by the next start)"
            );
            Err(OpsError::DrainTimeout {
                seconds: bound.as_secs(),
            })
        }
    }
}

/// The file at `path`, when it is valid and only changes what a reload can apply.
fn reloaded(path: &Path, running: &Config) -> Result<Config, ReloadRefused> {
    let mut new = Config::load(path)?;
    new.load_secrets().map_err(ReloadRefused::Secret)?;
    if new.agent.id.get_ref() != running.agent.id.get_ref() {
        return Err(ReloadRefused::NeedsRestart { field: "agent.id" });
    }
    if new.agent.data_dir != running.agent.data_dir {
        return Err(ReloadRefused::NeedsRestart {
            field: "agent.data_dir",
        });
    }
    if new.ops != running.ops {
        return Err(ReloadRefused::NeedsRestart { field: "ops" });
    }
    Ok(new)
}

/// Why a SIGHUP did not apply the file.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Secret(String),
    #[error("the file changes `{field}`, which needs a restart")]
    NeedsRestart { field: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_overruns_its_bound_gives_up_with_drain_timeout() {
        let cancel = CancellationToken::new();
        // A pipeline that ignores cancellation (a commit hanging on a dead disk, say).
        let pipeline = tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let started = tokio::time::Instant::now();
        let result = drain(pipeline, &cancel, Duration::from_secs(45)).await;
        assert!(matches!(
            result,
            Err(OpsError::DrainTimeout { seconds: 45 })
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(45));
        assert!(cancel.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_within_its_bound_returns_the_pipelines_result() {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let pipeline = tokio::spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await; // the last commit
            Ok(())
        });
        assert!(drain(pipeline, &cancel, Duration::from_secs(45))
            .await
            .is_ok());
    }

    #[test]
    fn a_reload_that_changes_the_agent_id_or_ops_is_refused_and_a_bad_file_names_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        let base = format!(
            "[agent]\nid = \"a\"\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        );
        std::fs::write(&path, &base).expect("write");
        let running = Config::load(&path).expect("valid");
        std::fs::write(&path, base.replace("id = \"a\"", "id = \"b\"")).expect("write");
        assert!(matches!(
            reloaded(&path, &running),
            Err(ReloadRefused::NeedsRestart { field: "agent.id" })
        ));
        std::fs::write(&path, format!("{base}[ops]\nmetrics = false\n")).expect("write");
        assert!(matches!(
            reloaded(&path, &running),
            Err(ReloadRefused::NeedsRestart { field: "ops" })
        ));
        std::fs::write(&path, format!("{base}[buffer]\nbogus = 1\n")).expect("write");
        let error = reloaded(&path, &running).expect_err("bad file").to_string();
        assert!(
            error.contains("agent.toml:5:1") && error.contains("bogus"),
            "{error}"
        );
        std::fs::write(&path, format!("{base}[buffer]\nbatch_max_ms = 7\n")).expect("write");
        assert_eq!(
            reloaded(&path, &running)
                .expect("applies")
                .buffer
                .batch_max_ms,
            7
        );
    }
}
