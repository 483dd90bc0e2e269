//! Fault injection: what goes wrong between the simulated firmware and the agent.
//!
//! All faults are off by default and all random choices come from a seeded [`Rng`], so a faulty
//! run is as reproducible as a clean one. What each fault does:
//!
//! | fault | serial | MQTT |
//! | --- | --- | --- |
//! | `--corrupt-rate P` | each byte on the wire is replaced by a random different byte with probability `P` (the decoder drops the frame on its CRC; the device retransmits) | - |
//! | `--duplicate-rate P` | a frame is written twice with probability `P` | a reading is published twice with probability `P` (one ledger record) |
//! | `--reorder-rate P` | a frame is held back and written after the next one with probability `P` | the same for messages |
//! | `--clock-skew-ms MS` | each device's clock is off by a fixed amount drawn uniformly from `[-MS, MS]` | the same |
//! | `--clock-drift-ppm N` | every device's oscillator runs `N` parts per million fast (slow when negative): its uptime, and so its wall clock between two `TimeSync`s, gains `N` us per second ([`FaultConfig::drifted_ms`]) | - |
//! | `--burst-every S --burst-secs L --burst-factor F` | for `L` seconds out of every `S` the sample rate is multiplied by `F` | the same |
//! | `--disconnect-every S --disconnect-secs L` | for `L` seconds out of every `S` the line is cut: nothing is written or read | the connection is dropped (`EventLoop::clean`) and not re-established for `L` seconds |
//! | `--reboot-every S` | every `S` seconds one device, chosen at random, reboots: new `boot_id`, unacknowledged frames lost (ledger `reboot`) | - |
//!
//! The schedules (bursts, disconnects, reboots) are functions of the time since start, so they
//! line up across devices. A frame held back for reordering is released at the latest when the
//! next frame is written or at the next tick, so a reorder never withholds a frame forever.

use std::time::Duration;

use super::rng::Rng;

/// The faults to inject (command-line options).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct FaultConfig {
    /// Probability that a byte on the serial wire is corrupted.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub corrupt_rate: f64,
    /// Probability that a frame (serial) or message (MQTT) is sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub duplicate_rate: f64,
    /// Probability that a frame or message is held back and sent after the next one.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub reorder_rate: f64,
    /// Largest clock offset of a device, in milliseconds (each device draws its own).
    #[arg(long, default_value_t = 0)]
    pub clock_skew_ms: u64,
    /// Parts per million by which every device's clock runs fast (negative: slow), serial only;
    /// from -999,999 (nearly stopped) to 1,000,000 (twice as fast).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-999_999..=1_000_000))]
    pub clock_drift_ppm: i64,
    /// Seconds between the starts of two bursts (0: no bursts).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub burst_every: f64,
    /// Length of a burst in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    pub burst_secs: f64,
    /// Sample-rate multiplier during a burst.
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub burst_factor: f64,
    /// Seconds between the starts of two disconnects (0: never).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub disconnect_every: f64,
    /// Length of a disconnect in seconds.
    #[arg(long, default_value_t = 2.0, value_parser = non_negative)]
    pub disconnect_secs: f64,
    /// Seconds between two device reboots (0: never).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub reboot_every: f64,
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability in [0, 1]")),
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a non-negative number")),
    }
}

/// Whether `t` falls into the first `len` seconds of a period of `every` seconds; the first
/// period starts at `every`, so a run always starts clean.
fn in_window(t: Duration, every: f64, len: f64) -> bool {
    if every <= 0.0 || len <= 0.0 {
        return false;
    }
    let t = t.as_secs_f64();
    t >= every && (t % every) < len
}

impl FaultConfig {
    /// Whether the sample rate is multiplied at `elapsed` since start.
    pub fn rate_factor(&self, elapsed: Duration) -> f64 {
        if in_window(elapsed, self.burst_every, self.burst_secs) && self.burst_factor > 0.0 {
            self.burst_factor
        } else {
            1.0
        }
    }

    /// Whether the link is cut at `elapsed` since start.
    pub fn disconnected(&self, elapsed: Duration) -> bool {
        in_window(elapsed, self.disconnect_every, self.disconnect_secs)
    }

    /// How many reboots are due by `elapsed` since start.
    pub fn reboots_due(&self, elapsed: Duration) -> u64 {
        if self.reboot_every <= 0.0 {
            0
        } else {
            (elapsed.as_secs_f64() / self.reboot_every) as u64
        }
    }

    /// A drifting device's uptime after `real_ms` milliseconds of the host's: `real_ms * (1 +
    /// ppm / 10^6)`, rounded down. Never decreases as `real_ms` grows (the command line keeps
    /// the rate above zero; a rate at or below it stops the clock at 0 rather than reversing it).
    pub fn drifted_ms(&self, real_ms: u64) -> u64 {
        let rate = (1_000_000 + i128::from(self.clock_drift_ppm)).max(0);
        let ms = i128::from(real_ms) * rate / 1_000_000;
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// A device's fixed clock offset in milliseconds, drawn from `rng`.
    pub fn draw_skew_ms(&self, rng: &mut Rng) -> i64 {
        if self.clock_skew_ms == 0 {
            return 0;
        }
        let span = self.clock_skew_ms.min(i64::MAX as u64 / 2);
        rng.below(2 * span + 1) as i64 - span as i64
    }
}

/// Applies per-frame faults (corruption, duplication, reordering) to a stream of wire frames or
/// messages.
#[derive(Debug)]
pub struct Mangler<T> {
    corrupt_rate: f64,
    duplicate_rate: f64,
    reorder_rate: f64,
    rng: Rng,
    held: Option<T>,
    /// Frames or messages written twice.
    pub duplicated: u64,
    /// Frames or messages held back behind another.
    pub reordered: u64,
    /// Bytes corrupted.
    pub corrupted: u64,
}

impl<T: Clone> Mangler<T> {
    /// A mangler for `config`, drawing from `rng`.
    pub fn new(config: &FaultConfig, rng: Rng) -> Mangler<T> {
        Mangler {
            corrupt_rate: config.corrupt_rate,
            duplicate_rate: config.duplicate_rate,
            reorder_rate: config.reorder_rate,
            rng,
            held: None,
            duplicated: 0,
            reordered: 0,
            corrupted: 0,
        }
    }

    /// What to send, in order, in place of `item` (zero, one, two or three items).
    pub fn process(&mut self, item: T) -> Vec<T> {
        let mut out = Vec::with_capacity(3);
        if self.held.is_none() && self.rng.chance(self.reorder_rate) {
            self.reordered += 1;
            self.held = Some(item);
            return out;
        }
        if self.rng.chance(self.duplicate_rate) {
            self.duplicated += 1;
            out.push(item.clone());
        }
        out.push(item);
        out.extend(self.held.take());
        out
    }

    /// The item held back for reordering, if any (call on every tick and at shutdown).
    pub fn release(&mut self) -> Option<T> {
        self.held.take()
    }
}

impl Mangler<Vec<u8>> {
    /// Corrupts bytes of `frame` in place with the configured per-byte probability.
    pub fn corrupt(&mut self, frame: &mut [u8]) {
        if self.corrupt_rate <= 0.0 {
            return;
        }
        for byte in frame.iter_mut() {
            if self.rng.chance(self.corrupt_rate) {
                // XOR with a non-zero value: the byte always changes.
                *byte ^= 1 + self.rng.below(255) as u8;
                self.corrupted += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_config_passes_every_frame_once_and_unchanged() {
        let mut m = Mangler::new(&FaultConfig::default(), Rng::new(1, 0));
        for i in 0u8..100 {
            let mut frame = vec![i, 1, 2, 0];
            m.corrupt(&mut frame);
            assert_eq!(m.process(frame), vec![vec![i, 1, 2, 0]]);
        }
        assert_eq!(m.release(), None);
    }

    #[test]
    fn duplicated_and_reordered_frames_all_come_out() {
        let config = FaultConfig {
            duplicate_rate: 0.3,
            reorder_rate: 0.3,
            ..FaultConfig::default()
        };
        let mut m = Mangler::new(&config, Rng::new(2, 0));
        let mut out = Vec::new();
        for i in 0u32..1000 {
            out.extend(m.process(i));
        }
        out.extend(m.release());
        let mut unique = out.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique, (0..1000).collect::<Vec<_>>());
        assert_eq!(out.len() as u64, 1000 + m.duplicated);
        assert!(m.duplicated > 0 && m.reordered > 0);
        assert!(out.windows(2).any(|w| w[0] > w[1]));
    }

    #[test]
    fn schedules_start_clean_and_repeat() {
        let config = FaultConfig {
            disconnect_every: 10.0,
            disconnect_secs: 2.0,
            burst_every: 5.0,
            burst_secs: 1.0,
            burst_factor: 4.0,
            reboot_every: 3.0,
            ..FaultConfig::default()
        };
        assert!(!config.disconnected(Duration::from_secs(1)));
        assert!(config.disconnected(Duration::from_millis(10_500)));
        assert!(!config.disconnected(Duration::from_millis(12_500)));
        assert!(config.disconnected(Duration::from_millis(20_100)));
        assert_eq!(config.rate_factor(Duration::from_millis(500)), 1.0);
        assert_eq!(config.rate_factor(Duration::from_millis(5_500)), 4.0);
        assert_eq!(config.reboots_due(Duration::from_secs(7)), 2);
        let mut rng = Rng::new(3, 0);
        let skewed = FaultConfig {
            clock_skew_ms: 50,
            ..FaultConfig::default()
        };
        for _ in 0..100 {
            assert!(skewed.draw_skew_ms(&mut rng).abs() <= 50);
        }
    }

    #[test]
    fn a_drifting_clock_gains_its_ppm_and_never_runs_backwards() {
        let drift = |ppm| FaultConfig {
            clock_drift_ppm: ppm,
            ..FaultConfig::default()
        };
        assert_eq!(drift(0).drifted_ms(123_456), 123_456);
        assert_eq!(drift(20_000).drifted_ms(10_000), 10_200, "2% fast");
        assert_eq!(drift(-50).drifted_ms(3_600_000), 3_599_820, "50 ppm slow");
        assert_eq!(drift(1_000_000).drifted_ms(u64::MAX), u64::MAX, "saturates");
        assert_eq!(drift(-2_000_000).drifted_ms(5_000), 0, "never reverses");
        for ppm in [-999_999, -7, 0, 3, 20_000, 1_000_000] {
            let clock = drift(ppm);
            let mut last = 0;
            for real in (0..5_000).step_by(7) {
                let now = clock.drifted_ms(real);
                assert!(now >= last, "{ppm} ppm at {real}");
                last = now;
            }
        }
    }
}
