//! The device's wall clock: uptime plus the offset the agent's `TimeSync`s give it. No I/O, no
//! clock of its own (the caller passes the uptime `now_ms`), `no_std`.
//!
//! # Behaviour
//!
//! - **Unsynced.** Until the first `TimeSync` of a boot the clock has no offset: a reading is
//!   stamped with the uptime (the agent recognises stamps below 2000-01-01 as uptime).
//! - **First sync.** The offset becomes `unix_ms - now_ms` exactly.
//! - **Later syncs** (the agent sends one every `time_sync_interval_s`, and one with every answer
//!   to a `Hello`; on a shared bus every device hears them all, whoever they answered): a sync
//!   that finds the clock behind steps it forward at once; one that finds it ahead does not step
//!   it back but **slews**: from then on the clock runs at half speed (each stamp gives back at
//!   most half the uptime since the previous one) until the surplus is gone. A newer sync
//!   replaces what is left of an older one's surplus.
//!
//! # Invariants
//!
//! 1. **Stamps never go backwards.** Between two calls of [`WallClock::stamp`] at uptimes
//!    `u1 <= u2` the stamp grows by at least `(u2 - u1) - (u2 - u1) / 2`: strictly when the
//!    uptime did (`u2 > u1`), whatever syncs arrived in between. The simulator's runner advances
//!    the uptime of every reading of one channel, so a device's `(channel, ts_ms)` stays unique
//!    (its ledger relies on it).
//! 2. The surplus shrinks only through stamps: a device that samples faster than once every 2 ms
//!    has no uptime to spare and slews only in its gaps. Its clock is never behind the newest
//!    sync for longer than it takes to stamp once (forward steps are immediate).
//! 3. No call panics: offsets are modulo 2^64 (`wrapping`), the surplus is read as a signed
//!    difference, so a sync more than 2^63 ms ahead counts as ahead and is stepped to.

/// Uptime-to-unix offset of one boot and what is left to slew (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    /// `unix_ms - uptime_ms` (mod 2^64) in use, once a `TimeSync` arrived.
    offset: Option<u64>,
    /// Milliseconds still to take back from `offset` (a sync found the clock ahead).
    surplus_ms: u64,
    /// Uptime of the previous stamp or sync: the next stamp may give back half the time since.
    since_ms: u64,
}

impl WallClock {
    /// A clock that has not been synced (stamps are uptime).
    pub const fn new() -> Self {
        Self {
            offset: None,
            surplus_ms: 0,
            since_ms: 0,
        }
    }

    /// Takes a `TimeSync` of `unix_ms` received at uptime `now_ms`.
    pub fn sync(&mut self, now_ms: u64, unix_ms: u64) {
        let target = unix_ms.wrapping_sub(now_ms);
        let ahead = self.offset.map_or(0, |o| o.wrapping_sub(target) as i64);
        if ahead > 0 {
            self.surplus_ms = ahead as u64;
        } else {
            self.offset = Some(target);
            self.surplus_ms = 0;
        }
        self.since_ms = self.since_ms.max(now_ms);
    }

    /// The stamp of a reading taken at uptime `now_ms`: unix ms once synced, else the uptime.
    /// Gives back part of a surplus (see the module doc), so call it once per reading.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let Some(offset) = self.offset.as_mut() else {
            return now_ms;
        };
        let give_back = (now_ms.saturating_sub(self.since_ms) / 2).min(self.surplus_ms);
        *offset = offset.wrapping_sub(give_back);
        self.surplus_ms -= give_back;
        self.since_ms = self.since_ms.max(now_ms);
        now_ms.wrapping_add(*offset)
    }

    /// Whether a `TimeSync` has arrived (stamps are unix ms).
    pub fn synced(&self) -> bool {
        self.offset.is_some()
    }

    /// The offset in use (`unix_ms - uptime_ms`, mod 2^64), once synced.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// Milliseconds the clock is still ahead of the newest sync (being slewed away).
    pub fn surplus_ms(&self) -> u64 {
        self.surplus_ms
    }
}

#[cfg(test)]
mod tests {
    use super::WallClock;

    const UNIX: u64 = 1_700_000_000_000;

    #[test]
    fn an_unsynced_clock_stamps_the_uptime_and_the_first_sync_sets_unix_time() {
        let mut clock = WallClock::new();
        assert_eq!(clock.stamp(1_000), 1_000);
        clock.sync(2_000, UNIX);
        assert_eq!(clock.stamp(2_500), UNIX + 500);
        assert_eq!(clock.offset(), Some(UNIX - 2_000));
    }

    #[test]
    fn a_later_sync_that_finds_the_clock_behind_steps_it_forward_at_once() {
        let mut clock = WallClock::new();
        clock.sync(0, UNIX);
        clock.sync(10_000, UNIX + 10_300); // the device's clock ran 300 ms slow
        assert_eq!(clock.stamp(10_000), UNIX + 10_300);
        assert_eq!(clock.surplus_ms(), 0);
    }

    #[test]
    fn a_later_sync_that_finds_the_clock_ahead_is_slewed_in_at_half_speed() {
        let mut clock = WallClock::new();
        clock.sync(0, UNIX);
        assert_eq!(clock.stamp(9_990), UNIX + 9_990);
        clock.sync(10_000, UNIX + 9_800); // the device's clock ran 200 ms fast
        assert_eq!(clock.surplus_ms(), 200);
        assert_eq!(clock.stamp(10_000), UNIX + 10_000, "no step back");
        assert_eq!(clock.stamp(10_100), UNIX + 10_050, "half speed");
        assert_eq!(clock.stamp(10_300), UNIX + 10_150, "still half speed");
        assert_eq!(clock.surplus_ms(), 50);
        assert_eq!(
            clock.stamp(11_000),
            UNIX + 10_800,
            "the newest sync's time exactly"
        );
    }

    #[test]
    fn a_newer_sync_replaces_the_surplus_of_an_older_one() {
        let mut clock = WallClock::new();
        clock.sync(0, UNIX);
        clock.sync(1_000, UNIX + 900); // 100 ahead
        clock.stamp(1_040); // gives back 20
        clock.sync(1_040, UNIX + 1_040); // on time after all: the 80 left are in the past
        assert_eq!(clock.surplus_ms(), 0);
        assert_eq!(clock.stamp(1_100), UNIX + 1_100);
    }

    #[test]
    fn stamps_never_go_backwards_whatever_the_syncs_say() {
        // A clock 2% fast, resynced every 250 ms, sampled at uneven uptimes (some 1 ms apart).
        let mut clock = WallClock::new();
        let mut last = None;
        let mut uptime = 0u64;
        for i in 0..20_000u64 {
            uptime += 1 + (i * 7919) % 5;
            if i % 50 == 0 {
                let real = uptime * 100 / 102;
                clock.sync(uptime, UNIX + real);
            }
            let stamp = clock.stamp(uptime);
            if let Some(prev) = last {
                assert!(stamp > prev, "uptime {uptime}: {prev} then {stamp}");
            }
            last = Some(stamp);
        }
        let real = uptime * 100 / 102;
        let error = last.unwrap_or(0).abs_diff(UNIX + real);
        assert!(error < 50, "the clock stays near the syncs: {error} ms off");
    }

    #[test]
    fn syncs_from_the_far_future_or_the_epoch_never_panic() {
        let mut clock = WallClock::new();
        for (now, unix) in [(u64::MAX, 0), (0, u64::MAX), (5, 0), (u64::MAX, u64::MAX)] {
            clock.sync(now, unix);
            let _ = clock.stamp(now);
            let _ = clock.stamp(now.wrapping_add(1));
        }
    }
}
