//! [`Wake`]: one stage tells the next that it committed new rows, so the next one sleeps while
//! there is nothing to do instead of looking every few milliseconds.
//!
//! The ingest writer wakes the windowing stage after each commit of readings; the stage wakes
//! the forwarder after each commit that appended outbox records. Both waiting stages run on
//! blocking threads, hence a `Condvar`, not a tokio primitive.
//!
//! Invariant (no lost wake-up): a waiter reads [`Wake::generation`] *before* it looks at the
//! database and passes that value to [`Wake::wait_past`]. A commit that lands after the look
//! has bumped the generation, so the wait returns at once. The wait is also bounded by a
//! timeout, which the waiters use for their own timers (idle window closes, the forwarder's
//! heartbeat) and to notice cancellation; a missing notify would cost latency, never data.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A generation counter with a condition variable.
#[derive(Debug, Default)]
pub struct Wake {
    state: Mutex<State>,
    moved: Condvar,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    /// When the first notify since the last [`Wake::take_since`] came (a latency's start).
    since: Option<Instant>,
}

impl Wake {
    /// Called after a commit: wakes every waiter.
    pub fn notify(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.generation = state.generation.wrapping_add(1);
        state.since.get_or_insert_with(Instant::now);
        self.moved.notify_all();
    }

    /// The current generation: read it before looking for work.
    pub fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// When the oldest notify not yet taken came, and forgets it: the waiter's measure of how
    /// long committed work waited for it (one waiter per `Wake`).
    pub fn take_since(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .since
            .take()
    }

    /// Sleeps until the generation is no longer `seen` or `timeout` passed; `true` when it moved.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.generation == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .moved
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_commit_after_the_look_ends_the_wait_at_once() {
        let wake = Wake::default();
        let seen = wake.generation();
        wake.notify();
        let started = Instant::now();
        assert!(wake.wait_past(seen, Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn without_a_commit_the_wait_ends_at_its_timeout() {
        let wake = Wake::default();
        let seen = wake.generation();
        let started = Instant::now();
        assert!(!wake.wait_past(seen, Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn take_since_gives_the_oldest_notify_not_taken_yet_once() {
        let wake = Wake::default();
        assert_eq!(wake.take_since(), None);
        let before = Instant::now();
        wake.notify();
        std::thread::sleep(Duration::from_millis(5));
        wake.notify(); // Later: the first one is the start of the wait.
        let since = wake.take_since().expect("a notify");
        assert!(since >= before && since + Duration::from_millis(5) <= Instant::now());
        assert_eq!(wake.take_since(), None);
    }

    #[test]
    fn a_commit_on_another_thread_wakes_the_waiter() {
        let wake = Arc::new(Wake::default());
        let seen = wake.generation();
        let notifier = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                wake.notify();
            })
        };
        assert!(wake.wait_past(seen, Duration::from_secs(10)));
        notifier.join().expect("notifier");
    }
}
