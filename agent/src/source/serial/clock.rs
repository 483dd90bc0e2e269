//! The device clocks of a serial line as the agent sees them: the `edge_serial_clock_offset_ms`
//! gauge and the rule that computes it (no I/O).
//!
//! # What the gauge says
//!
//! `edge_serial_clock_offset_ms{source}` = the device timestamp of the newest reading of the
//! last `Readings` frame handed to the ingest writer **minus** the agent's clock when the frame
//! was received, in milliseconds: positive when the device's clock is ahead of the gateway's.
//!
//! - Only wall-clock stamps count: a reading stamped below 2000-01-01 carries the device's uptime
//!   (no `TimeSync` yet this boot, [`super::UPTIME_LIMIT_MS`]) and says nothing about its clock.
//!   A frame with none leaves the gauge as it was; a source without any has no sample.
//! - It is not the clock error alone: it also holds the negative of the time the reading spent
//!   getting here, i.e. the wait in the device before its frame went out (up to a flush
//!   interval), the link latency (a 290-byte frame takes 25 ms at 115,200 baud) and, for a frame
//!   retransmitted or sent from a backlog after an outage, the outage: expect a few tens of ms
//!   below the true offset, and large negative values while a backlog drains.
//! - A drifting device moves it steadily between syncs (`ppm / 1000` ms per second); each
//!   `TimeSync` (every `time_sync_interval_s`, and with each answer to a `Hello`) brings the
//!   device back, so the gauge jumps back: at once for a slow device, within about twice the
//!   surplus for a fast one, which slews its clock in rather than stepping it back. Watch its
//!   peak just before a resync to see the drift per interval.
//! - With several devices on one line it is the device whose frame was stored last.
//! - Duplicates (frames already settled) do not count, nor do frames refused under backpressure
//!   (`busy`: their retransmit will) or frames from a device beyond the line's device limit.

use std::sync::atomic::{AtomicI64, Ordering};

use edge_ops_http::prometheus::{escape, Out};
use edge_protocol::link::Reading;

use super::{SerialCounters, KIND, UPTIME_LIMIT_MS};
use crate::source::Registry;

/// The gauge's name and help (rendered after the kinds' counter families).
pub const FAMILY: (&str, &str) = (
    "edge_serial_clock_offset_ms",
    "Device timestamp of the newest reading of the last serial frame minus its receive time (ms; includes the link latency).",
);

/// The offset of a frame's newest wall-clock reading from `received_ms` (unix ms), if it has
/// one (see the module doc). Saturates instead of overflowing.
pub fn offset_ms(readings: &[Reading], received_ms: u64) -> Option<i64> {
    let newest = readings
        .iter()
        .map(|r| r.ts_ms)
        .filter(|ts| *ts >= UPTIME_LIMIT_MS)
        .max()?;
    let diff = i128::from(newest) - i128::from(received_ms);
    Some(i64::try_from(diff).unwrap_or(if diff > 0 { i64::MAX } else { i64::MIN }))
}

/// The latest offset of one source; [`i64::MIN`] stands for "none yet" (a real offset never
/// gets there: it would be 292 million years).
#[derive(Debug)]
pub struct ClockOffset(AtomicI64);

impl Default for ClockOffset {
    fn default() -> Self {
        ClockOffset(AtomicI64::new(i64::MIN))
    }
}

impl ClockOffset {
    pub fn set(&self, offset_ms: i64) {
        self.0.store(offset_ms.max(i64::MIN + 1), Ordering::Relaxed);
    }

    /// The latest offset, `None` before the first wall-clock reading.
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v != i64::MIN)
    }
}

/// Writes the gauge family: its head, and one sample per serial source that has an offset.
pub fn render(o: &mut Out, registry: &Registry) {
    let (name, help) = FAMILY;
    o.head(name, "gauge", help);
    for (source, counters) in registry.of_kind::<SerialCounters>(&KIND) {
        if let Some(offset) = counters.clock_offset.get() {
            o.labelled(name, &format!("source=\"{}\"", escape(&source)), offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts_ms: u64) -> Reading {
        Reading {
            channel: 0,
            ts_ms,
            value: 0.0,
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn the_offset_is_the_newest_wall_clock_stamp_minus_the_receive_time() {
        let frame = [reading(NOW - 30), reading(NOW + 45), reading(NOW + 20)];
        assert_eq!(offset_ms(&frame, NOW), Some(45), "device ahead");
        assert_eq!(offset_ms(&frame[..1], NOW), Some(-30), "device behind");
    }

    #[test]
    fn uptime_stamps_say_nothing_about_the_clock() {
        assert_eq!(offset_ms(&[reading(5_000), reading(6_000)], NOW), None);
        assert_eq!(offset_ms(&[], NOW), None);
        let mixed = [reading(9_000_000), reading(NOW - 7)];
        assert_eq!(offset_ms(&mixed, NOW), Some(-7), "synced within the frame");
        let limit = [reading(UPTIME_LIMIT_MS)];
        assert_eq!(
            offset_ms(&limit, UPTIME_LIMIT_MS),
            Some(0),
            "2000-01-01 is a date"
        );
    }

    #[test]
    fn extreme_stamps_saturate() {
        assert_eq!(offset_ms(&[reading(u64::MAX)], 0), Some(i64::MAX));
        assert_eq!(
            offset_ms(&[reading(UPTIME_LIMIT_MS)], u64::MAX),
            Some(i64::MIN)
        );
    }

    #[test]
    fn a_source_shows_no_offset_until_it_has_one_and_then_the_latest() {
        let gauge = ClockOffset::default();
        assert_eq!(gauge.get(), None);
        gauge.set(-12);
        gauge.set(40);
        assert_eq!(gauge.get(), Some(40));
        gauge.set(i64::MIN);
        assert_eq!(gauge.get(), Some(i64::MIN + 1), "never mistaken for none");
    }
}
