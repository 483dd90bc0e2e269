//! The process's life under systemd: signals, `sd_notify` and the watchdog, on a thread of
//! their own beside the loop ([`crate::run`] runs on the main thread and looks at `stop` and
//! at [`Metrics::reload`] between transactions). Notifications go through
//! `edge_ops_http::notify` (shared with the agent); without `$NOTIFY_SOCKET` they are no-ops.
//!
//! # What systemd is told, and when
//!
//! - **`READY=1`** once the first Kafka session has started: the topics checked, the
//!   transactional producer initialised (a predecessor with the same `instance_id` is fenced
//!   and its open transaction aborted) and the group subscribed (phase `joining` or later).
//!   Not later: the group assignment and the restore from the changelog can take minutes with
//!   a large state, and are what `/readyz` reports. A consumer that cannot reach Kafka at start
//!   never sends it, so systemd's `TimeoutStartSec` fails the start and `Restart=` tries again.
//! - **`STOPPING=1`** on SIGTERM or SIGINT; the loop stops between transactions.
//! - **`RELOADING=1`** on SIGHUP (after the first `READY=1`), then **`READY=1`** once the
//!   reload is decided: refused (a bad file, or one changing more than `[grouping]`: see
//!   [`crate::reload`]), or applied and taken by the loop (it takes new rules before its next
//!   batch; when no session is merging, for instance while one is retrying, `READY=1` follows
//!   after at most [`TAKE_WAIT`] and the next session starts with the new rules).
//! - **`WATCHDOG=1`** every half `WatchdogSec` (`$WATCHDOG_USEC`), from the first `READY=1`
//!   on (through reloads and the stop), while [`super::health`] finds the loop healthy: it
//!   progressed within `[ops] health_stall_s`. A loop stuck in a call stops the pings and
//!   systemd restarts it; a loop retrying a broker that is away keeps them (a restart would
//!   not help).
//!
//! # Reload
//!
//! The file is read and validated first ([`crate::reload::load`]); a refused file is logged
//! with its reason (file, line and field, or the table that needs a restart), counted in
//! `edge_consumer_reload_failures_total`, and the running rules stay. An accepted one is
//! counted in `edge_consumer_reloads_total` and handed to the loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edge_ops_http::notify::{notify, watchdog_interval};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use super::health::View;
use super::OpsError;
use crate::config::Config;
use crate::telemetry::{Metrics, Phase};

/// How often the supervisor looks at the loop (first session started, reload taken, watchdog
/// due).
const TICK: Duration = Duration::from_millis(100);

/// How long `READY=1` after a reload waits for the loop to take the new rules.
pub const TAKE_WAIT: Duration = Duration::from_secs(10);

/// The running supervisor; [`Supervisor::stop`] (or dropping it) ends its thread.
#[derive(Debug)]
pub struct Supervisor {
    done: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Supervisor {
    /// Installs the SIGTERM, SIGINT and SIGHUP handlers now (so a signal arriving from here on
    /// is never the default action: SIGHUP's would kill the process) and supervises from a
    /// thread of its own. `config` is the file at `path` as the loop runs it.
    pub fn start(
        path: PathBuf,
        config: Config,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> Result<Supervisor, OpsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OpsError::Thread)?;
        let signals = {
            let _entered = runtime.enter();
            let install = |kind: SignalKind, signal_name: &'static str| {
                signal(kind).map_err(|source| OpsError::Signal {
                    signal: signal_name,
                    source,
                })
            };
            Signals {
                term: install(SignalKind::terminate(), "SIGTERM")?,
                int: install(SignalKind::interrupt(), "SIGINT")?,
                hup: install(SignalKind::hangup(), "SIGHUP")?,
            }
        };
        let (done, finished) = watch::channel(false);
        let state = State {
            path,
            stall: Duration::from_secs(*config.ops.health_stall_s.get_ref()),
            config,
            metrics,
            stop,
            notices: Notices::new(watchdog_interval()),
        };
        let thread = std::thread::Builder::new()
            .name("supervise".into())
            .spawn(move || runtime.block_on(state.run(signals, finished)))
            .map_err(OpsError::Thread)?;
        Ok(Supervisor {
            done,
            thread: Some(thread),
        })
    }

    /// Ends the thread (after the loop stopped) and joins it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.done.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct State {
    path: PathBuf,
    /// The configuration the loop runs (the last file accepted).
    config: Config,
    /// `[ops] health_stall_s` (the watchdog's health rule).
    stall: Duration,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    notices: Notices,
}

impl State {
    async fn run(mut self, mut signals: Signals, mut finished: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sent = tokio::select! {
                _ = finished.wait_for(|done| *done) => return,
                _ = signals.term.recv() => self.stopping("SIGTERM"),
                _ = signals.int.recv() => self.stopping("SIGINT"),
                _ = signals.hup.recv() => self.reload(Instant::now()),
                _ = tick.tick() => {
                    let m = &self.metrics;
                    let healthy = || View::of(m, self.stall).unhealthy();
                    self.notices.look(Instant::now(), m.phase(), m.reload.taken(), healthy)
                }
            };
            for state in sent {
                notify(state);
            }
        }
    }

    fn stopping(&mut self, signal: &str) -> Vec<&'static str> {
        tracing::info!(signal, "stopping between transactions");
        self.stop.store(true, Ordering::Relaxed);
        vec!["STOPPING=1"]
    }

    fn reload(&mut self, now: Instant) -> Vec<&'static str> {
        let file = self.path.display().to_string();
        match crate::reload::load(&self.path, &self.config) {
            Ok(new) => {
                let generation = self.metrics.reload.publish(new.grouping());
                tracing::info!(%file, rules = new.grouping.rule.len(),
                    "SIGHUP: [grouping] reloaded; the loop takes it before its next batch");
                self.config = new;
                self.notices.reload_published(generation, now)
            }
            Err(error) => {
                self.metrics.reload.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "SIGHUP: reload refused; keeping the running configuration");
                self.notices.reload_refused()
            }
        }
    }
}

/// When to tell systemd what (see the module doc). No I/O: each call returns the
/// notifications to send now.
#[derive(Debug)]
struct Notices {
    /// `READY=1` sent (the watchdog is armed).
    ready: bool,
    /// An accepted reload waiting for the loop: its generation and when it was published.
    reload: Option<(u64, Instant)>,
    watchdog: Option<Watchdog>,
}

#[derive(Debug)]
struct Watchdog {
    /// Half `WatchdogSec`.
    every: Duration,
    pinged: Option<Instant>,
    /// The last "not feeding" line (one per `every`).
    complained: Option<Instant>,
}

impl Watchdog {
    fn due(&self, last: Option<Instant>, now: Instant) -> bool {
        last.is_none_or(|l| now.saturating_duration_since(l) >= self.every)
    }
}

impl Notices {
    /// `every`: half `WatchdogSec`, when systemd asked for pings.
    fn new(every: Option<Duration>) -> Notices {
        Notices {
            ready: false,
            reload: None,
            watchdog: every.map(|every| Watchdog {
                every,
                pinged: None,
                complained: None,
            }),
        }
    }

    /// A reload was handed to the loop as generation `generation`.
    fn reload_published(&mut self, generation: u64, now: Instant) -> Vec<&'static str> {
        self.reload = Some((generation, now));
        self.when_ready(&["RELOADING=1"])
    }

    /// A reload was refused: nothing changed.
    fn reload_refused(&mut self) -> Vec<&'static str> {
        self.when_ready(&["RELOADING=1", "READY=1"])
    }

    /// Before the first `READY=1` a reload says nothing (systemd is still waiting for the start).
    fn when_ready(&self, states: &[&'static str]) -> Vec<&'static str> {
        match self.ready {
            true => states.to_vec(),
            false => Vec::new(),
        }
    }

    /// Once per tick, at `now`: the loop's `phase`, the reload generation it has `taken`, and
    /// why it is unhealthy (asked only when a ping is due).
    fn look(
        &mut self,
        now: Instant,
        phase: Phase,
        taken: u64,
        unhealthy: impl FnOnce() -> Vec<String>,
    ) -> Vec<&'static str> {
        let mut out = Vec::new();
        if let Some((generation, at)) = self.reload {
            let took = taken >= generation;
            if took || now.saturating_duration_since(at) >= TAKE_WAIT {
                match took {
                    true => tracing::info!(
                        "reload applied: partials merged from now on are grouped by the new rules"
                    ),
                    false => tracing::warn!(phase = phase.name(), wait_s = TAKE_WAIT.as_secs(),
                        "reload published, not taken yet (no session merging); the next batch takes it"),
                }
                self.reload = None;
                out.extend(self.when_ready(&["READY=1"]));
            }
        }
        if !self.ready && matches!(phase, Phase::Joining | Phase::Restoring | Phase::Running) {
            tracing::info!("first Kafka session started: READY=1");
            out.push("READY=1");
            self.ready = true;
        }
        let ready = self.ready;
        let Some(w) = self.watchdog.as_mut().filter(|_| ready) else {
            return out;
        };
        if w.due(w.pinged, now) {
            let sick = unhealthy();
            if sick.is_empty() {
                out.push("WATCHDOG=1");
                w.pinged = Some(now);
            } else if w.due(w.complained, now) {
                tracing::error!(reasons = ?sick, "not feeding the systemd watchdog");
                w.complained = Some(now);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn fine() -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn ready_once_the_first_session_started_and_never_before() {
        let t0 = Instant::now();
        let mut n = Notices::new(None);
        for phase in [Phase::Starting, Phase::Retrying, Phase::Stopped] {
            assert!(n.look(t0, phase, 0, fine).is_empty(), "{phase:?}");
        }
        assert_eq!(n.look(t0, Phase::Joining, 0, fine), ["READY=1"]);
        assert!(n.look(t0 + S, Phase::Running, 0, fine).is_empty(), "once");
        assert!(n.look(t0 + S, Phase::Retrying, 0, fine).is_empty(), "once");
    }

    #[test]
    fn the_watchdog_is_fed_every_half_timeout_from_ready_on_and_only_while_healthy() {
        let t0 = Instant::now();
        let mut n = Notices::new(Some(5 * S));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(
            n.look(at(0), Phase::Starting, 0, fine).is_empty(),
            "not armed"
        );
        assert_eq!(
            n.look(at(1), Phase::Running, 0, fine),
            ["READY=1", "WATCHDOG=1"]
        );
        assert!(n.look(at(3), Phase::Running, 0, fine).is_empty(), "not due");
        assert_eq!(n.look(at(6), Phase::Running, 0, fine), ["WATCHDOG=1"]);
        let sick = || vec!["no progress".to_owned()];
        assert!(
            n.look(at(11), Phase::Running, 0, sick).is_empty(),
            "unhealthy"
        );
        assert!(n.look(at(12), Phase::Running, 0, sick).is_empty());
        // Healthy again: a ping at once (the last was 6 s ago), not a full period later.
        assert_eq!(n.look(at(12), Phase::Running, 0, fine), ["WATCHDOG=1"]);
        // Healthy is asked only when a ping is due.
        let never = || -> Vec<String> { panic!("asked while no ping is due") };
        assert!(n.look(at(13), Phase::Running, 0, never).is_empty());
    }

    #[test]
    fn a_reload_is_reloading_then_ready_once_the_loop_took_it_or_was_refused() {
        let t0 = Instant::now();
        let mut n = Notices::new(None);
        // Before READY a reload says nothing.
        assert!(n.reload_refused().is_empty());
        assert!(n.reload_published(1, t0).is_empty());
        assert_eq!(n.look(t0, Phase::Running, 1, fine), ["READY=1"]);
        assert_eq!(n.reload_refused(), ["RELOADING=1", "READY=1"]);
        assert_eq!(n.reload_published(2, t0), ["RELOADING=1"]);
        assert!(
            n.look(t0 + S, Phase::Running, 1, fine).is_empty(),
            "not taken"
        );
        assert_eq!(n.look(t0 + 2 * S, Phase::Running, 2, fine), ["READY=1"]);
        assert!(
            n.look(t0 + 3 * S, Phase::Running, 2, fine).is_empty(),
            "once"
        );
        // A loop that does not take it (a session retrying): READY after TAKE_WAIT anyway.
        assert_eq!(n.reload_published(3, t0), ["RELOADING=1"]);
        assert!(n
            .look(t0 + TAKE_WAIT - S, Phase::Retrying, 2, fine)
            .is_empty());
        assert_eq!(
            n.look(t0 + TAKE_WAIT, Phase::Retrying, 2, fine),
            ["READY=1"]
        );
    }
}
