//! Capped exponential backoff: the one retry pacing every loop in edge-ingest uses.
//!
//! A pure value (no clock, no sleeping, `no_std`): the caller asks for the next delay, sleeps it
//! however its runtime sleeps, and calls [`Backoff::reset`] after a success. Each delay doubles
//! the last, from `min` up to `max`, and stays at `max` from then on.
//!
//! Not `backon` (considered in issue 15): its retry combinators own the loop around one
//! closure, while ours interleave cancellation, health flags and per-error decisions (a fatal
//! error stops, a retryable one waits), and its delay iterators have no [`Backoff::peek`] or
//! [`Backoff::reset`], which the loops use to report the next wait and to start over after a
//! success. What it would replace is this forty-line value.

use core::time::Duration;

/// Capped exponential backoff from `min` to `max`, doubling per failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`; never waits longer than `max` (a `max` below `min` is raised to it).
    pub const fn new(min: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < min.as_nanos() {
            min
        } else {
            max
        };
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it is twice as long, capped at `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = delay.checked_mul(2).unwrap_or(self.max).min(self.max);
        delay
    }

    /// The delay [`Backoff::next_delay`] would return, without advancing.
    pub const fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delays_double_from_min_and_stay_at_max() {
        let mut b = Backoff::new(MS(100), MS(1_000));
        let got: [u64; 6] = core::array::from_fn(|_| b.next_delay().as_millis() as u64);
        assert_eq!(got, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn reset_starts_again_at_min() {
        let mut b = Backoff::new(MS(50), MS(400));
        b.next_delay();
        b.next_delay();
        assert_eq!(b.peek(), MS(200));
        b.reset();
        assert_eq!(b.next_delay(), MS(50));
    }

    #[test]
    fn a_huge_max_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        b.next_delay();
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let mut b = Backoff::new(MS(300), MS(10));
        assert_eq!(b.next_delay(), MS(300));
        assert_eq!(b.next_delay(), MS(300));
    }
}
