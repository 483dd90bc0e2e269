//! The loop's live [`Metrics`] and [`Phase`]: written by [`crate::run`] (atomic stores only),
//! read from other threads by the ops endpoints ([`crate::ops`]), the benchmark and the logs.
//! One input goes the other way: [`Metrics::reload`], the grouping rules a SIGHUP reload hands
//! the loop (it takes them between transactions; see [`crate::reload`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::reload::Rules;

/// Live counters and the loop's state, readable from another thread (the ops endpoints, the
/// benchmark, logs). Counters count the effects of committed transactions since the process
/// started; gauges describe the partitions owned now. The loop only stores into atomics (and, once
/// per batch at most, swaps one small map): observing never slows it down.
#[derive(Debug)]
pub struct Metrics {
    pub merged: AtomicU64,
    pub finals: AtomicU64,
    pub dead_letters: AtomicU64,
    pub transactions: AtomicU64,
    pub restored_partitions: AtomicU64,
    pub open_windows: AtomicU64,
    pub finalized_windows: AtomicU64,
    pub sessions: AtomicU64,
    /// Sessions ended by a retryable error (a new one followed).
    pub session_errors: AtomicU64,
    /// Sources (agent x series) tracked by the partitions owned now.
    pub sources: AtomicU64,
    /// Input partitions owned now (assigned and restored).
    pub assigned_partitions: AtomicU64,
    /// Events of the merge state machines ([`crate::merge::Counters`]), committed.
    pub windows_finalized: AtomicU64,
    pub revisions: AtomicU64,
    pub forced_finalizations: AtomicU64,
    pub evicted_by_cap: AtomicU64,
    pub evicted_by_horizon: AtomicU64,
    pub sources_forgotten: AtomicU64,
    /// Time from `begin_transaction` to a successful `commit_transaction`, summed, and the last.
    pub transaction_us_sum: AtomicU64,
    pub transaction_us_last: AtomicU64,
    /// Wall clock (Unix ms) of the last successful commit; 0: none yet.
    pub last_commit_unix_ms: AtomicU64,
    /// Milliseconds after `started` of the loop's last sign of life (see `Metrics::progressed`).
    pub progress_ms: AtomicU64,
    phase: AtomicU8,
    /// The last retryable session error and when it happened (ms after `started`).
    pub last_error: Mutex<Option<(u64, String)>>,
    /// Records behind the end of each owned input partition (read_committed: its last stable
    /// offset), from librdkafka's statistics; empty until they first arrive.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Reloaded grouping rules for the loop, and the reload counters.
    pub reload: Rules,
    pub started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            merged: AtomicU64::new(0),
            finals: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            restored_partitions: AtomicU64::new(0),
            open_windows: AtomicU64::new(0),
            finalized_windows: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            session_errors: AtomicU64::new(0),
            sources: AtomicU64::new(0),
            assigned_partitions: AtomicU64::new(0),
            windows_finalized: AtomicU64::new(0),
            revisions: AtomicU64::new(0),
            forced_finalizations: AtomicU64::new(0),
            evicted_by_cap: AtomicU64::new(0),
            evicted_by_horizon: AtomicU64::new(0),
            sources_forgotten: AtomicU64::new(0),
            transaction_us_sum: AtomicU64::new(0),
            transaction_us_last: AtomicU64::new(0),
            last_commit_unix_ms: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            phase: AtomicU8::new(Phase::Starting as u8),
            last_error: Mutex::new(None),
            lag: Mutex::new(BTreeMap::new()),
            reload: Rules::default(),
            started: Instant::now(),
        }
    }
}

/// Where the loop is; `/readyz` answers 200 only in [`Phase::Running`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// No session yet: creating topics and clients, fencing the previous producer.
    Starting,
    /// Subscribed; waiting for the group to assign partitions (join or rebalance).
    Joining,
    /// Restoring newly assigned partitions from the changelog.
    Restoring,
    /// Assigned partitions restored (possibly none: more instances than partitions); merging.
    Running,
    /// A session failed with a retryable error; a new one starts shortly.
    Retrying,
    /// Stopped (signal or fatal error).
    Stopped,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Starting,
        Phase::Joining,
        Phase::Restoring,
        Phase::Running,
        Phase::Retrying,
        Phase::Stopped,
    ];

    /// The `phase` label value.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Joining => "joining",
            Phase::Restoring => "restoring",
            Phase::Running => "running",
            Phase::Retrying => "retrying",
            Phase::Stopped => "stopped",
        }
    }
}

impl Metrics {
    pub fn phase(&self) -> Phase {
        let v = self.phase.load(Ordering::Relaxed);
        Phase::ALL
            .into_iter()
            .find(|p| *p as u8 == v)
            .unwrap_or(Phase::Stopped)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// How long ago the loop last showed progress: a poll batch handled (committed or empty), a
    /// partition restored, a session started or failed. Counted from `started` before the first.
    pub fn progress_age(&self) -> Duration {
        let at = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    pub(crate) fn progressed(&self) {
        self.progress_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Wall clock, ms since the Unix epoch (0 if the clock reads before 1970): the unit of
/// [`Metrics::last_commit_unix_ms`].
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
