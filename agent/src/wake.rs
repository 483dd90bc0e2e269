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
    generation: Mutex<u64>,
    moved: Condvar,
}

impl Wake {
    /// Called after a commit: wakes every waiter.
    pub fn notify(&self) {
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *generation = generation.wrapping_add(1);
        self.moved.notify_all();
    }

    /// The current generation: read it before looking for work.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until the generation is no longer `seen` or `timeout` passed; `true` when it moved.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        while *generation == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            generation = self
                .moved
                .wait_timeout(generation, left)
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
