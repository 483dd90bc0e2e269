//! Sensor models: what a simulated channel measures.
//!
//! A model is sampled at a time `t` (seconds since the device booted) with the device's seeded
//! [`Rng`], so a run is deterministic for a seed. Every model stays inside [`ModelSpec::range`]:
//! noise is clamped to 4 standard deviations, the random walk reflects at its bounds, and the
//! counter wraps.
//!
//! On the command line a model is `KIND[:KEY=VALUE]...`, for example `sine`,
//! `sine:offset=20:amplitude=5:period=60:noise=0.2`, `walk:start=50:step=0.5:drift=0.01:min=0:max=100`,
//! `step:low=0:high=1:period=10`, `counter:start=0:increment=1:wrap=65536`. Unknown keys are
//! refused with the key named.

use core::fmt;
use core::str::FromStr;

use super::rng::Rng;

/// A model and its parameters, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelSpec {
    /// `offset + amplitude * sin(2 pi t / period + phase) + noise * N(0,1)`.
    Sine {
        offset: f64,
        amplitude: f64,
        period_s: f64,
        noise: f64,
    },
    /// `x += drift + step * N(0,1)` per sample, reflected into `[min, max]`.
    Walk {
        start: f64,
        step: f64,
        drift: f64,
        min: f64,
        max: f64,
    },
    /// A square wave: `low` for the first half of each period, `high` for the second.
    Step { low: f64, high: f64, period_s: f64 },
    /// `start, start + increment, ...`, back to `start` once it would reach `wrap`.
    Counter {
        start: f64,
        increment: f64,
        wrap: f64,
    },
}

/// Why a model specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelSpecError {
    #[error("unknown sensor model {0:?} (expected sine, walk, step or counter)")]
    UnknownKind(String),
    #[error("sensor model {kind}: unknown parameter {key:?}")]
    UnknownKey { kind: &'static str, key: String },
    #[error("sensor model parameter {0:?} is not KEY=NUMBER")]
    BadParameter(String),
    #[error("sensor model {0}: parameters out of range (periods > 0, min <= max, wrap > start)")]
    OutOfRange(&'static str),
}

impl FromStr for ModelSpec {
    type Err = ModelSpecError;

    fn from_str(text: &str) -> Result<ModelSpec, ModelSpecError> {
        let mut parts = text.split(':');
        let kind = parts.next().unwrap_or_default();
        let mut spec = match kind {
            "sine" => ModelSpec::Sine {
                offset: 20.0,
                amplitude: 5.0,
                period_s: 60.0,
                noise: 0.2,
            },
            "walk" => ModelSpec::Walk {
                start: 50.0,
                step: 0.5,
                drift: 0.0,
                min: 0.0,
                max: 100.0,
            },
            "step" => ModelSpec::Step {
                low: 0.0,
                high: 1.0,
                period_s: 10.0,
            },
            "counter" => ModelSpec::Counter {
                start: 0.0,
                increment: 1.0,
                wrap: 65536.0,
            },
            other => return Err(ModelSpecError::UnknownKind(other.to_owned())),
        };
        let name = spec.kind();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ModelSpecError::BadParameter(part.to_owned()))?;
            let value: f64 = value
                .parse()
                .map_err(|_| ModelSpecError::BadParameter(part.to_owned()))?;
            if !value.is_finite() {
                return Err(ModelSpecError::BadParameter(part.to_owned()));
            }
            let slot = match (&mut spec, key) {
                (ModelSpec::Sine { offset, .. }, "offset") => offset,
                (ModelSpec::Sine { amplitude, .. }, "amplitude") => amplitude,
                (ModelSpec::Sine { period_s, .. }, "period") => period_s,
                (ModelSpec::Sine { noise, .. }, "noise") => noise,
                (ModelSpec::Walk { start, .. }, "start") => start,
                (ModelSpec::Walk { step, .. }, "step") => step,
                (ModelSpec::Walk { drift, .. }, "drift") => drift,
                (ModelSpec::Walk { min, .. }, "min") => min,
                (ModelSpec::Walk { max, .. }, "max") => max,
                (ModelSpec::Step { low, .. }, "low") => low,
                (ModelSpec::Step { high, .. }, "high") => high,
                (ModelSpec::Step { period_s, .. }, "period") => period_s,
                (ModelSpec::Counter { start, .. }, "start") => start,
                (ModelSpec::Counter { increment, .. }, "increment") => increment,
                (ModelSpec::Counter { wrap, .. }, "wrap") => wrap,
                _ => {
                    return Err(ModelSpecError::UnknownKey {
                        kind: name,
                        key: key.to_owned(),
                    })
                }
            };
            *slot = value;
        }
        let valid = match spec {
            ModelSpec::Sine {
                period_s, noise, ..
            } => period_s > 0.0 && noise >= 0.0,
            ModelSpec::Walk {
                start,
                step,
                min,
                max,
                ..
            } => min <= max && step >= 0.0 && (min..=max).contains(&start),
            ModelSpec::Step { period_s, .. } => period_s > 0.0,
            ModelSpec::Counter {
                start,
                increment,
                wrap,
            } => wrap > start && increment >= 0.0,
        };
        if valid {
            Ok(spec)
        } else {
            Err(ModelSpecError::OutOfRange(name))
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ModelSpec::Sine {
                offset,
                amplitude,
                period_s,
                noise,
            } => write!(
                f,
                "sine:offset={offset}:amplitude={amplitude}:period={period_s}:noise={noise}"
            ),
            ModelSpec::Walk {
                start,
                step,
                drift,
                min,
                max,
            } => write!(
                f,
                "walk:start={start}:step={step}:drift={drift}:min={min}:max={max}"
            ),
            ModelSpec::Step {
                low,
                high,
                period_s,
            } => write!(f, "step:low={low}:high={high}:period={period_s}"),
            ModelSpec::Counter {
                start,
                increment,
                wrap,
            } => write!(f, "counter:start={start}:increment={increment}:wrap={wrap}"),
        }
    }
}

impl ModelSpec {
    /// The model's name on the command line.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::Sine { .. } => "sine",
            ModelSpec::Walk { .. } => "walk",
            ModelSpec::Step { .. } => "step",
            ModelSpec::Counter { .. } => "counter",
        }
    }

    /// The closed interval every sample of this model lies in.
    pub fn range(&self) -> (f64, f64) {
        match *self {
            ModelSpec::Sine {
                offset,
                amplitude,
                noise,
                ..
            } => {
                let half = amplitude.abs() + 4.0 * noise;
                (offset - half, offset + half)
            }
            ModelSpec::Walk { min, max, .. } => (min, max),
            ModelSpec::Step { low, high, .. } => (low.min(high), low.max(high)),
            ModelSpec::Counter { start, wrap, .. } => (start, wrap),
        }
    }
}

/// A model with its running state, for one channel of one device.
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    phase: f64,
    walk: f64,
    count: f64,
}

impl Model {
    /// A fresh model; `rng` chooses the sine's phase, so channels of one kind differ.
    pub fn new(spec: ModelSpec, rng: &mut Rng) -> Model {
        let walk = match spec {
            ModelSpec::Walk { start, .. } => start,
            _ => 0.0,
        };
        let count = match spec {
            ModelSpec::Counter { start, .. } => start,
            _ => 0.0,
        };
        Model {
            spec,
            phase: rng.unit() * 2.0 * core::f64::consts::PI,
            walk,
            count,
        }
    }

    /// The specification this model follows.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// One sample at `t_s` seconds; always inside `self.spec().range()`.
    pub fn sample(&mut self, t_s: f64, rng: &mut Rng) -> f32 {
        let value = match self.spec {
            ModelSpec::Sine {
                offset,
                amplitude,
                period_s,
                noise,
            } => {
                let angle = 2.0 * core::f64::consts::PI * t_s / period_s + self.phase;
                offset + amplitude * angle.sin() + noise * rng.normal()
            }
            ModelSpec::Walk {
                step,
                drift,
                min,
                max,
                ..
            } => {
                let mut next = self.walk + drift + step * rng.normal();
                // Reflect at the bounds; a step larger than the interval lands on the bound.
                if next > max {
                    next = max - (next - max);
                }
                if next < min {
                    next = min + (min - next);
                }
                self.walk = next.max(min).min(max);
                self.walk
            }
            ModelSpec::Step {
                low,
                high,
                period_s,
            } => {
                if (t_s / period_s).fract() < 0.5 {
                    low
                } else {
                    high
                }
            }
            ModelSpec::Counter {
                start,
                increment,
                wrap,
            } => {
                let value = self.count;
                let next = self.count + increment;
                self.count = if next >= wrap { start } else { next };
                value
            }
        };
        let (lo, hi) = self.spec.range();
        // f32 rounding may step just outside an f64 bound; clamp in f32 terms too. (`max`/`min`
        // rather than `clamp`, which panics on inverted bounds.)
        (value.max(lo).min(hi) as f32).max(lo as f32).min(hi as f32)
    }
}
