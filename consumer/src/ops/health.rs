//! What `/healthz` and `/readyz` decide on: predicates over one [`View`] of the loop's
//! [`Metrics`], with no I/O (unit-tested below with explicit ages).
//!
//! # Definitions
//!
//! - **Progress**: the loop handled a poll batch (committed it, or found it empty: an idle loop
//!   comes round every `batch_max_ms`), restored a partition from the changelog, or started or
//!   failed a session.
//! - **Healthy** (`/healthz`): progress within `[ops] health_stall_s`. A loop retrying a broker
//!   that is away is healthy (it fails a session and starts a new one; restarting the process
//!   would not help), a loop stuck in a call or wedged is not. Every Kafka call of the loop is
//!   bounded (60 s each; a transaction makes at most four such waits, a restore two per
//!   partition), so a working loop stays well inside the default 300 s.
//! - **Ready** (`/readyz`): healthy, and the current session's partition assignment has been
//!   received and every assigned partition restored ([`Phase::Running`]). An instance assigned
//!   no partition (more instances than input partitions) is ready: a standby member of the
//!   group. A rebalance makes the instance unready from the revocation until the new assignment
//!   is restored.

use std::time::Duration;

use crate::telemetry::{Metrics, Phase};

/// The loop's state as the endpoints judge it, read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    /// Since the loop's last progress.
    pub progress_age: Duration,
    /// `[ops] health_stall_s`.
    pub stall: Duration,
    /// The last retryable session error, and how long ago it happened. A failed Kafka call
    /// carries the broker's reason when librdkafka logged one within a minute of it
    /// ("...; the last broker connection failed: ...", `run::session_report`).
    pub last_error: Option<(Duration, String)>,
}

impl View {
    /// Reads `m` now.
    pub fn of(m: &Metrics, stall: Duration) -> View {
        let now = m.started.elapsed();
        let last_error = m
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(at, e)| (now.saturating_sub(Duration::from_millis(*at)), e.clone()));
        View {
            phase: m.phase(),
            progress_age: m.progress_age(),
            stall,
            last_error,
        }
    }

    /// Why the consumer is not healthy (empty: healthy).
    pub fn unhealthy(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.progress_age > self.stall {
            why.push(format!(
                "no progress of the consume loop for {} s (bound: health_stall_s = {}), phase {}",
                self.progress_age.as_secs(),
                self.stall.as_secs(),
                self.phase.name()
            ));
        }
        why
    }

    /// Why the consumer is not ready (empty: ready).
    pub fn unready(&self) -> Vec<String> {
        let mut why = self.unhealthy();
        let phase = match self.phase {
            Phase::Running => None,
            Phase::Starting => Some("starting a session (topics, clients, fencing)"),
            Phase::Joining => Some("waiting for a partition assignment (group join or rebalance)"),
            Phase::Restoring => Some("restoring assigned partitions from the changelog"),
            Phase::Retrying => Some("session failed; a new one starts shortly"),
            Phase::Stopped => Some("stopped"),
        };
        if let Some(phase) = phase {
            why.push(phase.to_owned());
            if let Some((ago, error)) = &self.last_error {
                why.push(format!(
                    "last session error {} s ago: {error}",
                    ago.as_secs()
                ));
            }
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(phase: Phase, progress_age_s: u64) -> View {
        View {
            phase,
            progress_age: Duration::from_secs(progress_age_s),
            stall: Duration::from_secs(300),
            last_error: None,
        }
    }

    #[test]
    fn a_loop_that_progressed_within_the_bound_is_healthy_in_any_phase() {
        for phase in Phase::ALL {
            assert!(view(phase, 0).unhealthy().is_empty(), "{phase:?}");
            assert!(view(phase, 300).unhealthy().is_empty(), "{phase:?}");
        }
    }

    #[test]
    fn a_loop_without_progress_past_the_bound_is_unhealthy_and_unready_with_the_reason() {
        let v = view(Phase::Running, 301);
        assert_eq!(
            v.unhealthy(),
            ["no progress of the consume loop for 301 s (bound: health_stall_s = 300), phase running"]
        );
        assert_eq!(v.unready(), v.unhealthy());
    }

    #[test]
    fn only_a_running_session_is_ready() {
        assert!(view(Phase::Running, 1).unready().is_empty());
        for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Running) {
            let why = view(phase, 1).unready();
            assert_eq!(why.len(), 1, "{phase:?}: {why:?}");
        }
        assert_eq!(
            view(Phase::Joining, 1).unready(),
            ["waiting for a partition assignment (group join or rebalance)"]
        );
    }

    #[test]
    fn the_last_session_error_is_a_reason_only_while_not_running() {
        let mut v = view(Phase::Retrying, 1);
        v.last_error = Some((Duration::from_secs(4), "Kafka: polling: broker down".into()));
        assert_eq!(
            v.unready(),
            [
                "session failed; a new one starts shortly",
                "last session error 4 s ago: Kafka: polling: broker down"
            ]
        );
        v.phase = Phase::Running;
        assert!(v.unready().is_empty());
    }

    #[test]
    fn a_view_of_fresh_metrics_is_starting_and_healthy() {
        let m = Metrics::default();
        let v = View::of(&m, Duration::from_secs(300));
        assert_eq!(v.phase, Phase::Starting);
        assert!(v.unhealthy().is_empty());
        assert_eq!(
            v.unready(),
            ["starting a session (topics, clients, fencing)"]
        );
    }
}
