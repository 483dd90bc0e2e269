//! Health: what `/healthz`, `/readyz` and the systemd watchdog decide on.
//!
//! A sampler ([`run`]) looks at the counters and the database once a second and feeds a
//! [`Tracker`], a state machine with no I/O (unit-tested below with explicit instants).
//!
//! # Definitions
//!
//! - **Source state.** Each source kind owns its rule ([`crate::source::Kind::health`]: a state
//!   machine over samples of the source's counters, beside the source's code). MQTT
//!   (`source/mqtt.rs`): `connecting` until the first ConnAck, then `connected` or
//!   `disconnected` by whichever of `connects` and `connection_errors` advanced last. Serial
//!   (`source/serial.rs`): `disconnected` while `port_errors` advanced within the last 35 s
//!   (longer than its 30 s reopen backoff), else `connected`. Modbus (`source/modbus.rs`):
//!   `disconnected` after a sample with a timeout, transport or connect error, `connected` after
//!   one with only answers. (Derived from counters, so a state change is seen within about a
//!   second.)
//! - **Forwarder failing**: a session error (broker down, timeout, refused) within the last 30 s.
//! - **Stalled**: a stage *with pending work* that has shown no event for `watchdog_stall_s`.
//!   Forwarder: pending while the outbox holds records; events are commits, aborts and session
//!   errors (a forwarder retrying a dead broker is not stalled: a restart would not help).
//!   Windowing stage: pending while the ingest log holds readings; events are its commits.
//!   (The writer has no idle/backpressure signal in its counters, so it is not judged; a wedged
//!   writer shows up as the stage having nothing to do and the sources' acks stopping.)
//! - **Healthy** (`/healthz`, watchdog): the sampler ran within the last 5 s (the runtime is
//!   alive), the database answered its read, nothing is stalled. Idle with nothing pending is
//!   healthy.
//! - **Ready** (`/readyz`): healthy, a pipeline is running, every source connected, the
//!   forwarder not failing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::inspect::Snapshot;
use crate::source::SourceHealth;
pub use crate::source::SourceState;
use crate::telemetry::Telemetry;

/// How long a forwarder session error counts as "failing".
const FORWARD_FAILING_HOLD: Duration = Duration::from_secs(30);
/// A sample older than this means the sampler (or the runtime) is stuck.
pub const SAMPLE_FRESH: Duration = Duration::from_secs(5);

/// The sampler's latest view.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub sampled_at: Option<Instant>,
    /// The buffer state read in the last sample; `None` when no database is open.
    pub snapshot: Option<Snapshot>,
    /// The last database read failed.
    pub db_error: bool,
    pub sources: BTreeMap<String, SourceState>,
    pub forwarder_failing: bool,
    /// The forwarder's last session error (empty before the first).
    pub forwarder_error: String,
    /// Names of stalled stages (`forwarder`, `windowing`).
    pub stalled: Vec<&'static str>,
    pub running: bool,
}

impl Health {
    /// Why the agent is not healthy (empty: healthy).
    pub fn unhealthy(&self, now: Instant) -> Vec<String> {
        let mut why = Vec::new();
        match self.sampled_at {
            Some(t) if now.saturating_duration_since(t) <= SAMPLE_FRESH => {}
            _ => why.push("health sampler is not running".to_owned()),
        }
        if self.db_error {
            why.push("database read failed".to_owned());
        }
        why.extend(self.stalled.iter().map(|s| format!("{s} stalled")));
        why
    }

    /// Why the agent is not ready (empty: ready).
    pub fn unready(&self, now: Instant) -> Vec<String> {
        let mut why = self.unhealthy(now);
        if !self.running {
            why.push("pipeline not running".to_owned());
        } else if self.snapshot.is_none() {
            why.push("database not open".to_owned());
        }
        for (name, state) in &self.sources {
            if *state != SourceState::Connected {
                why.push(format!("source {name} {}", state.name()));
            }
        }
        if self.forwarder_failing {
            why.push(format!(
                "forwarder failing (session error within 30 s): {}",
                self.forwarder_error
            ));
        }
        why
    }
}

/// One sample of the counters the tracker judges.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Per source name: its kind ([`crate::source::Kind::name`]) and its counter values
    /// ([`crate::source::SourceCounters::values`]).
    pub sources: BTreeMap<String, (&'static str, Vec<u64>)>,
    pub forward_enabled: bool,
    /// Commits + aborts + session errors of the forwarder.
    pub forward_events: u64,
    pub forward_errors: u64,
    /// The last of them ([`crate::forward::ForwardMetrics::last_error`]).
    pub forward_last_error: String,
    pub stage_enabled: bool,
    pub stage_commits: u64,
    /// `None`: no database open, or the read failed (`db_error`).
    pub snapshot: Option<Snapshot>,
    pub db_error: bool,
    pub running: bool,
}

/// A counter of stage events and when it last moved; a stage with pending work whose counter
/// stands still for longer than the stall bound is stalled.
#[derive(Debug, Clone, Copy)]
struct Progress {
    value: u64,
    changed: Instant,
}

impl Progress {
    /// Folds in `value` at `now`; returns whether the stage is stalled: `pending` work and no
    /// event for longer than `stall`. Idle is healthy: the stall clock starts when work appears.
    fn stalled(
        seen: &mut Option<Progress>,
        value: u64,
        pending: bool,
        now: Instant,
        stall: Duration,
    ) -> bool {
        let p = seen.get_or_insert(Progress {
            value,
            changed: now,
        });
        if value != p.value || !pending {
            *p = Progress {
                value,
                changed: now,
            };
        }
        pending && now.saturating_duration_since(p.changed) > stall
    }
}

/// The state machine behind [`Health`]. No I/O.
#[derive(Debug)]
pub struct Tracker {
    stall: Duration,
    /// Per source name: its kind and its kind's health rule.
    sources: BTreeMap<String, (&'static str, Box<dyn SourceHealth>)>,
    forward_events: Option<Progress>,
    /// Forwarder session errors seen, and when they last grew (never: `None`). No `Instant`
    /// arithmetic: on a gateway just booted the monotonic clock is near zero.
    forward_errors: Option<(u64, Option<Instant>)>,
    stage_commits: Option<Progress>,
}

impl Tracker {
    pub fn new(stall: Duration) -> Tracker {
        Tracker {
            stall,
            sources: BTreeMap::new(),
            forward_events: None,
            forward_errors: None,
            stage_commits: None,
        }
    }

    /// Folds one sample in and returns the view it gives.
    pub fn observe(&mut self, now: Instant, o: Observation) -> Health {
        let mut sources = BTreeMap::new();
        self.sources
            .retain(|name, (kind, _)| o.sources.get(name).is_some_and(|s| s.0 == *kind));
        for (name, (kind, values)) in &o.sources {
            let Some(k) = crate::source::kind(kind) else {
                continue;
            };
            let (_, rule) = self
                .sources
                .entry(name.clone())
                .or_insert_with(|| (k.name, (k.health)()));
            sources.insert(name.clone(), rule.observe(now, values));
        }
        let mut stalled = Vec::new();
        let forwarder_failing = if o.forward_enabled {
            let errors = self.forward_errors.get_or_insert((o.forward_errors, None));
            if o.forward_errors != errors.0 {
                *errors = (o.forward_errors, Some(now));
            }
            let pending = o.snapshot.as_ref().is_some_and(|s| s.outbox_records > 0);
            let events = &mut self.forward_events;
            if Progress::stalled(events, o.forward_events, pending, now, self.stall) {
                stalled.push("forwarder");
            }
            (errors.1).is_some_and(|t| now.saturating_duration_since(t) < FORWARD_FAILING_HOLD)
        } else {
            false
        };
        if o.stage_enabled {
            let pending = o.snapshot.as_ref().is_some_and(|s| s.log_readings > 0);
            let commits = &mut self.stage_commits;
            if Progress::stalled(commits, o.stage_commits, pending, now, self.stall) {
                stalled.push("windowing");
            }
        }
        if !o.running {
            // Draining or restarting for a reload: no stage is expected to move.
            stalled.clear();
            self.forward_events = None;
            self.stage_commits = None;
        }
        Health {
            sampled_at: Some(now),
            snapshot: o.snapshot,
            db_error: o.db_error,
            sources,
            forwarder_failing,
            forwarder_error: o.forward_last_error,
            stalled,
            running: o.running,
        }
    }
}

/// Reads one [`Observation`] from the telemetry (a short read transaction on the database).
pub fn observe(t: &Telemetry) -> Observation {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let sources = t
        .sources
        .sample()
        .into_iter()
        .map(|(kind, name, values)| (name, (kind, values)))
        .collect();
    let f = &t.forward;
    let (snapshot, db_error) = match t.database() {
        None => (None, false),
        Some(db) => match crate::inspect::snapshot(&*db) {
            Ok(s) => (Some(s), false),
            Err(error) => {
                tracing::warn!(%error, "health: reading the buffer state failed");
                (None, true)
            }
        },
    };
    Observation {
        sources,
        forward_enabled: t.forward_enabled.load(Ordering::Relaxed),
        forward_events: get(&f.transactions_committed)
            + get(&f.transactions_aborted)
            + get(&f.session_errors),
        forward_errors: get(&f.session_errors),
        forward_last_error: f.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        stage_enabled: t.stage_enabled.load(Ordering::Relaxed),
        stage_commits: get(&t.stage.commits),
        snapshot,
        db_error,
        running: t.running.load(Ordering::Relaxed),
    }
}

/// How often the sampler looks at the agent, unless the watchdog asks for more often.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often it looks during start-up, until the first ready verdict (at most for
/// [`STARTUP_FAST_FOR`]): `/readyz` turns ready within this of the agent being ready, not a
/// whole [`SAMPLE_EVERY`] later (issue 18: time to ready after a restart).
const STARTUP_TICK: Duration = Duration::from_millis(50);
/// The longest start-up sampled at [`STARTUP_TICK`] (a broker down at start keeps the agent
/// unready for longer; it is then sampled at the usual pace).
const STARTUP_FAST_FOR: Duration = Duration::from_secs(60);

/// Paces `WATCHDOG=1` pings at `every` (half of `WatchdogSec`) on a sampler ticking at `tick`.
///
/// Invariant: while healthy, two pings are never more than `every + tick` apart, so
/// `WatchdogSec = 2 * every` is never missed as long as `tick <= every` (the sampler ticks at
/// `min(SAMPLE_EVERY, every)`, never faster than every 100 ms). A ping is due once
/// `every - tick / 2` has passed: ticks jitter by a few milliseconds either way, and an exact
/// `>= every` would skip every other tick whenever one lands a hair early, stretching the gap to
/// `2 * every` (the whole `WatchdogSec`).
#[derive(Debug)]
pub(crate) struct Watchdog {
    every: Duration,
    tick: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    pub(crate) fn new(every: Duration, tick: Duration) -> Self {
        Watchdog {
            every,
            tick,
            last: None,
        }
    }

    /// Whether a ping is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        let slack = self.every.saturating_sub(self.tick / 2);
        self.last
            .is_none_or(|p| now.saturating_duration_since(p) >= slack)
    }

    /// Records a ping sent at `now`.
    pub(crate) fn pinged(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// Samples once a second (or at the watchdog's pace, when faster; every `STARTUP_TICK` during
/// start-up until the first ready verdict) until `stop` fires; feeds the systemd watchdog while
/// healthy.
pub async fn run(shared: Arc<Shared>, stall: Duration, stop: CancellationToken) {
    let mut tracker = Tracker::new(stall.max(Duration::from_secs(1)));
    let every = edge_ops_http::notify::watchdog_interval();
    let period = every.map_or(SAMPLE_EVERY, |e| {
        e.clamp(Duration::from_millis(100), SAMPLE_EVERY)
    });
    let mut watchdog = every.map(|e| Watchdog::new(e, period));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut startup = tokio::time::interval(STARTUP_TICK);
    startup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut starting = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = startup.tick(), if starting => {}
        }
        let t = shared.telemetry.clone();
        // The database read may block on the disk: keep it off the runtime's workers.
        let Ok(o) = tokio::task::spawn_blocking(move || observe(&t)).await else {
            continue;
        };
        let now = Instant::now();
        let health = tracker.observe(now, o);
        starting = starting
            && !health.unready(now).is_empty()
            && now.saturating_duration_since(started) < STARTUP_FAST_FOR;
        let sick = health.unhealthy(now);
        shared.set_health(health);
        let armed = shared.telemetry.ready_sent.load(Ordering::Relaxed);
        if let (Some(w), true) = (watchdog.as_mut(), armed) {
            let due = w.due(now);
            if due && sick.is_empty() {
                edge_ops_http::notify::notify("WATCHDOG=1");
                w.pinged(now);
            } else if due {
                tracing::error!(reasons = ?sick, "not feeding the systemd watchdog");
            }
        }
    }
}

#[cfg(test)]
mod tests;
