//! The group-committing writer task: the only code that writes the ingest log.
//!
//! Loop: wait for one [`Submission`]; gather more until `batch_max_readings` readings are
//! waiting or `batch_max` has passed; commit them in one fsync'd transaction (on a blocking
//! thread); then run the acks of exactly the submissions that committed, in order.
//!
//! # Invariants and crash reasoning
//!
//! - Acks run after `commit()` returned `Ok`, never before, never for a submission that did not
//!   commit: see invariant 1 of [`crate::ingest`].
//! - **Backpressure**: when the quota stops a submission, the writer keeps it (and every one
//!   behind it) with their acks, and stops receiving. The channel fills, sources stop being
//!   able to submit; they keep their connections alive and withhold acks, so the broker's
//!   in-flight window and the firmware's ring hold the data. Memory stays bounded by the batch
//!   plus the channel capacity. The writer retries after a trim or a backoff tick.
//! - **Write errors** (full disk, I/O): counted, logged, retried with exponential backoff
//!   (10 ms .. 5 s); the batch and its acks are kept, so nothing is acked that is not durable
//!   and nothing waiting is lost. After an I/O error the database is reopened (redb latches the
//!   failure). What is retried follows the store's one rule
//!   ([`crate::store::StoreError::is_retryable`]): corruption and a poisoned redb lock are
//!   fatal (the agent stops; systemd restarts it).
//! - **Shutdown**: on cancellation the writer stops at a safe point (between commits). Anything
//!   not committed is dropped with its ack unrun: the sources redeliver it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_protocol::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Counters, IngestError, IngestLog, Submission};
use crate::clock::unix_ms;
use crate::wake::Wake;

/// Group-commit limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_readings: usize,
    pub max_wait: Duration,
}

/// The writer's inputs.
pub struct Writer {
    pub log: IngestLog,
    /// Where `log` lives, to reopen it after an I/O error.
    pub path: PathBuf,
    pub batch: BatchLimits,
    pub counters: Arc<Counters>,
    pub submissions: mpsc::Receiver<Submission>,
    pub cancel: CancellationToken,
    /// Notified after every commit (the windowing stage waits on it); `None`: nobody waits.
    pub committed: Option<Arc<Wake>>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a writer blocked by the quota re-checks it. The windowing stage frees quota by
/// trimming the log in its own transactions (with its cursor), so the writer polls for room
/// instead of being told.
const QUOTA_RECHECK: Duration = Duration::from_millis(200);

fn weight(s: &Submission) -> usize {
    (s.readings.len() + s.dead_letters.len()).max(1)
}

impl Writer {
    /// Runs until cancelled or every sender is gone. Returns an error only when it is fatal.
    pub async fn run(mut self) -> Result<(), IngestError> {
        let mut pending: VecDeque<Submission> = VecDeque::new();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut blocked = false;
        let mut log = Some(self.log);
        let mut inputs_closed = false;
        // When the oldest submission now pending reached the writer (hop `ingest`).
        let mut first = Instant::now();
        loop {
            if pending.is_empty() {
                if inputs_closed {
                    return Ok(());
                }
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Ok(()),
                    next = self.submissions.recv() => match next {
                        Some(s) => pending.push_back(s),
                        None => return Ok(()),
                    },
                }
                first = Instant::now();
                inputs_closed = gather(&mut self.submissions, &mut pending, self.batch).await;
            }
            let Some(current) = log.take() else {
                return Ok(());
            };
            let batch: Vec<Submission> = pending.drain(..).collect();
            let now = unix_ms();
            let (current, mut batch, result) = tokio::task::spawn_blocking(move || {
                let mut current = current;
                let result = current.commit(&batch, now);
                (current, batch, result)
            })
            .await
            .map_err(|_| IngestError::WriterThread)?;
            log = Some(current);
            match result {
                Ok(done) => {
                    backoff.reset();
                    self.counters.add(&done);
                    if let Some(wake) = &self.committed {
                        wake.notify();
                    }
                    let rest = batch.split_off(done.submissions.min(batch.len()));
                    let entries: usize = batch.iter().map(weight).sum();
                    self.counters
                        .latency
                        .observe_n(first.elapsed(), entries as u64);
                    for sub in batch {
                        if let Some(ack) = sub.ack {
                            ack();
                        }
                    }
                    if rest.is_empty() {
                        if blocked {
                            tracing::info!(
                                "ingest log below its quota again: committing and acking"
                            );
                            blocked = false;
                        }
                        continue;
                    }
                    if !blocked {
                        tracing::warn!(
                            waiting = rest.len(),
                            "ingest log at its quota: withholding acks until space frees (backpressure)"
                        );
                        blocked = true;
                    }
                    pending.extend(rest);
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(QUOTA_RECHECK) => {}
                    }
                }
                Err(error) => {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    if !error.is_retryable() {
                        tracing::error!(%error, "ingest log failed fatally");
                        return Err(error);
                    }
                    let delay = backoff.next_delay();
                    tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "ingest commit failed; keeping the batch and its acks");
                    pending.extend(batch);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    if error.needs_reopen() {
                        let limits = log.as_ref().map(|l| l.limits());
                        drop(log.take());
                        if let Some(limits) = limits {
                            match reopen(&self.path, limits, &self.cancel).await {
                                Ok(reopened) => log = Some(reopened),
                                Err(IngestError::Stopped) => return Ok(()),
                                Err(fatal) => return Err(fatal),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Takes what is waiting until the batch is full or its time is up. Returns whether the
/// senders are all gone.
async fn gather(
    rx: &mut mpsc::Receiver<Submission>,
    pending: &mut VecDeque<Submission>,
    limits: BatchLimits,
) -> bool {
    let deadline = Instant::now() + limits.max_wait;
    let mut n: usize = pending.iter().map(weight).sum();
    while n < limits.max_readings {
        let next = match rx.try_recv() {
            Ok(s) => Some(s),
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => Some(s),
                    Ok(None) => return true,
                    Err(_) => None,
                }
            }
        };
        match next {
            Some(s) => {
                n += weight(&s);
                pending.push_back(s);
            }
            None => break,
        }
    }
    false
}

async fn reopen(
    path: &std::path::Path,
    limits: super::Limits,
    cancel: &CancellationToken,
) -> Result<IngestLog, IngestError> {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        match IngestLog::open(path, limits) {
            Ok(log) => return Ok(log),
            Err(error) if error.is_retryable() => {
                tracing::error!(%error, "reopening the ingest log failed; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(IngestError::Stopped),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
