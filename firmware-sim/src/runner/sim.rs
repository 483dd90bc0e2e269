//! What every transport shares: the run options, the per-device sampler and the rate schedule.
//!
//! A device samples its channels round-robin: `--rate R` is readings per second per device,
//! across all of its channels (`--channels C`; channel `i` follows the `i mod len`-th
//! `--model`). Timestamps are the host's Unix clock plus the device's skew, made strictly
//! increasing per channel, so `(device, channel, ts_ms)` identifies a reading for the whole run
//! (the sampler outlives reboots).

use std::path::PathBuf;
use std::time::Duration;

use super::faults::FaultConfig;
use super::ledger::unix_ms_now;
use super::models::{Model, ModelSpec};
use super::rng::Rng;

/// Options every transport shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Device id of the first device; the others count up from it.
    #[arg(long, default_value_t = 1)]
    pub first_device: u32,
    /// Channels per device.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub channels: u8,
    /// Sensor models, `KIND[:KEY=VALUE]...` (sine, walk, step, counter); channel i uses model
    /// i mod count. Repeat the option for several.
    #[arg(long = "model", default_value = "sine")]
    pub models: Vec<ModelSpec>,
    /// Readings per second per device (all channels together).
    #[arg(long, default_value_t = 10.0, value_parser = positive_rate)]
    pub rate: f64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many readings per device.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed for every random choice (models, faults, boot ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the ledger of everything sent (JSON lines) to this file.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub progress_secs: f64,
    /// After the last reading, wait this long for outstanding acknowledgements.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    #[command(flatten)]
    pub faults: FaultConfig,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{text:?} is not a positive rate")),
    }
}

impl RunConfig {
    /// A configuration with defaults, for tests and benchmarks.
    pub fn new(devices: u32, rate: f64, seed: u64) -> RunConfig {
        RunConfig {
            devices,
            first_device: 1,
            channels: 1,
            models: vec![ModelSpec::Counter {
                start: 0.0,
                increment: 1.0,
                wrap: 1e9,
            }],
            rate,
            duration: None,
            count: None,
            seed,
            ledger: None,
            progress_secs: 0.0,
            drain_timeout: 10.0,
            faults: FaultConfig::default(),
        }
    }

    /// The device ids of this run.
    pub fn device_ids(&self) -> impl Iterator<Item = u32> {
        let first = self.first_device;
        (0..self.devices).map(move |i| first.wrapping_add(i))
    }

    /// How long the run may last, if bounded by time.
    pub fn duration(&self) -> Option<Duration> {
        // Out-of-range values (negative, NaN, beyond `Duration`) mean "no time limit".
        self.duration
            .and_then(|d| Duration::try_from_secs_f64(d).ok())
    }

    /// The drain timeout as a duration.
    pub fn drain(&self) -> Duration {
        // At most an hour; NaN counts as the hour, negative values as zero.
        Duration::try_from_secs_f64(self.drain_timeout.min(3600.0)).unwrap_or(Duration::ZERO)
    }
}

/// One device's channels, models and clock.
#[derive(Debug)]
pub struct Sampler {
    pub device_id: u32,
    models: Vec<Model>,
    last_ts: Vec<u64>,
    next_channel: usize,
    skew_ms: i64,
    rng: Rng,
    start_unix_ms: u64,
    /// Readings sampled so far.
    pub sampled: u64,
}

/// One sampled reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub channel: u8,
    pub ts_ms: u64,
    pub value: f32,
}

impl Sampler {
    /// The sampler of `device_id`, with its random stream derived from `config.seed`.
    pub fn new(config: &RunConfig, device_id: u32) -> Sampler {
        let mut rng = Rng::new(config.seed, u64::from(device_id));
        let skew_ms = config.faults.draw_skew_ms(&mut rng);
        let specs = if config.models.is_empty() {
            vec![ModelSpec::Sine {
                offset: 20.0,
                amplitude: 5.0,
                period_s: 60.0,
                noise: 0.2,
            }]
        } else {
            config.models.clone()
        };
        let models = (0..usize::from(config.channels))
            .map(|i| Model::new(specs[i % specs.len()], &mut rng))
            .collect();
        Sampler {
            device_id,
            models,
            last_ts: vec![0; usize::from(config.channels)],
            next_channel: 0,
            skew_ms,
            rng,
            start_unix_ms: unix_ms_now(),
            sampled: 0,
        }
    }

    /// The device's clock offset in milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms
    }

    /// A random 32-bit number from the device's stream (boot ids).
    pub fn random_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }

    /// The device's clock now: host Unix milliseconds plus skew.
    pub fn now_ms(&self) -> u64 {
        unix_ms_now().saturating_add_signed(self.skew_ms)
    }

    /// The next channel in turn and its value at `clock_ms` (milliseconds of the device's
    /// clock); the caller stamps the time (the serial device core does).
    pub fn next_value(&mut self, clock_ms: u64) -> (u8, f32) {
        let index = self.next_channel % self.models.len().max(1);
        self.next_channel = index + 1;
        let value = self.models[index].sample(clock_ms as f64 / 1000.0, &mut self.rng);
        self.sampled += 1;
        (index as u8, value)
    }

    /// Samples the next channel in turn, stamped with the host clock plus skew.
    pub fn sample(&mut self) -> Sample {
        let index = self.next_channel % self.models.len().max(1);
        self.next_channel = index + 1;
        let ts_ms = self.now_ms().max(self.last_ts[index].saturating_add(1));
        self.last_ts[index] = ts_ms;
        let t_s = ts_ms.saturating_sub(self.start_unix_ms) as f64 / 1000.0;
        let value = self.models[index].sample(t_s, &mut self.rng);
        self.sampled += 1;
        Sample {
            channel: index as u8,
            ts_ms,
            value,
        }
    }
}

/// Turns a rate and elapsed time into a number of readings due, with bursts.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate: f64,
    budget: f64,
    last: Duration,
}

impl Schedule {
    /// A schedule of `rate` readings per second.
    pub fn new(rate: f64) -> Schedule {
        Schedule {
            rate,
            budget: 0.0,
            last: Duration::ZERO,
        }
    }

    /// Readings due between the previous call and `elapsed` (at most `cap`, to bound work per
    /// tick after a stall; the rest is not carried over).
    pub fn due(&mut self, elapsed: Duration, faults: &FaultConfig, cap: u64) -> u64 {
        let dt = elapsed.saturating_sub(self.last).as_secs_f64();
        self.last = elapsed;
        self.budget += dt * self.rate * faults.rate_factor(elapsed);
        let n = self.budget.floor().max(0.0);
        self.budget -= n;
        (n as u64).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_releases_the_rate_and_multiplies_it_during_bursts() {
        let faults = FaultConfig {
            burst_every: 10.0,
            burst_secs: 1.0,
            burst_factor: 5.0,
            ..FaultConfig::default()
        };
        let mut schedule = Schedule::new(100.0);
        let mut total = 0;
        for ms in 1..=1_000u64 {
            total += schedule.due(Duration::from_millis(ms), &faults, u64::MAX);
        }
        assert!((99..=100).contains(&total), "{total} in the first second");
        let mut schedule = Schedule::new(100.0);
        let mut burst = 0;
        schedule.due(Duration::from_secs(10), &faults, u64::MAX);
        for ms in 1..=1_000u64 {
            burst += schedule.due(Duration::from_millis(10_000 + ms), &faults, u64::MAX);
        }
        assert!(
            (499..=500).contains(&burst),
            "{burst} during a burst second"
        );
    }

    #[test]
    fn a_sampler_stamps_each_channel_strictly_increasing() {
        let mut config = RunConfig::new(1, 10.0, 3);
        config.channels = 3;
        let mut sampler = Sampler::new(&config, 1);
        let mut last = [0u64; 3];
        for _ in 0..3_000 {
            let s = sampler.sample();
            assert!(s.ts_ms > last[usize::from(s.channel)]);
            last[usize::from(s.channel)] = s.ts_ms;
        }
        assert_eq!(sampler.sampled, 3_000);
    }

    #[test]
    fn absurd_durations_mean_no_limit_instead_of_a_panic() {
        let mut config = RunConfig::new(1, 10.0, 3);
        for d in [f64::NAN, -1.0, 1e300, f64::INFINITY] {
            config.duration = Some(d);
            assert_eq!(config.duration(), None);
        }
        config.duration = Some(1.5);
        assert_eq!(config.duration(), Some(Duration::from_millis(1_500)));
        config.drain_timeout = f64::NAN;
        let _ = config.drain();
    }
}
