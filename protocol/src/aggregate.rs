//! Mergeable aggregate state: the partial a gateway computes for one series and window, and the
//! final the consumer builds by merging partials.
//!
//! # What it holds
//!
//! count, sum, min, max, mean and variance (Welford's running moments, merged with Chan et al.'s
//! parallel formula, numerically stable), first and last value by timestamp, and a quantile
//! [`Sketch`] (1 % relative error, bounded size) from which p50, p90, p95 and p99 of any merge of
//! partials are read.
//!
//! # Merge laws
//!
//! `merge` is commutative and associative: exactly for count, min, max, first, last and the
//! sketch (integers, comparisons, and the sketch's canonical form); up to floating-point rounding
//! for sum, mean and variance. Ties on first/last timestamps are broken by the value (total
//! order), so even ties merge the same way in any order. The empty aggregate is the identity.
//!
//! # Encoding (version 1)
//!
//! `[0x01] ++ postcard(Aggregate)`; postcard writes the fields in declaration order, integers as
//! varints (signed ones zig-zag), `f64` as 8 little-endian bytes, `Option` as a `0x00`/`0x01`
//! tag, each sketch store as a varint length and its `(index zig-zag varint, count varint)` bins.
//! At most [`MAX_ENCODED_LEN`] bytes. Decoding refuses an unknown version, trailing bytes, and a
//! state that breaks the invariants below. Version 1 is stable: a new layout gets a new version
//! byte and decoders keep reading version 1. Golden vectors live in the tests.
//!
//! # Invariants (checked on decode)
//!
//! `count == 0` exactly when `first` and `last` are `None`, the sketch is empty and every float
//! is `+0.0` (the empty aggregate is exactly [`Aggregate::new`]); otherwise
//! `sketch.count() == count`, `min <= mean <= max` (within rounding), all floats finite,
//! `m2 >= 0`, `first.ts_ms <= last.ts_ms`.

use serde::{Deserialize, Serialize};

use crate::sketch::{Sketch, SketchError, MAX_BINS};

/// Version byte of the encoding.
pub const VERSION: u8 = 1;
/// Largest encoding: version, fixed fields, two full sketch stores of 15-byte bins.
pub const MAX_ENCODED_LEN: usize = 1 + 96 + 2 * (3 + MAX_BINS * 15) + 10;

/// Why an aggregate could not be built, encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateError {
    /// A NaN or infinite value was offered.
    NotFinite,
    /// The version byte is not one this build reads.
    UnknownVersion(u8),
    /// The bytes are not a postcard aggregate (truncated, trailing bytes, bad varint, ...).
    Malformed,
    /// The bytes decode but break an invariant of the module doc.
    Inconsistent,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl From<SketchError> for AggregateError {
    fn from(_: SketchError) -> Self {
        AggregateError::Inconsistent
    }
}

impl core::fmt::Display for AggregateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AggregateError::NotFinite => f.write_str("value is NaN or infinite"),
            AggregateError::UnknownVersion(v) => write!(f, "unknown aggregate version {v}"),
            AggregateError::Malformed => f.write_str("malformed aggregate encoding"),
            AggregateError::Inconsistent => f.write_str("aggregate breaks its invariants"),
            AggregateError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

/// A timestamped value: the first or last reading of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    pub value: f64,
}

impl Point {
    /// Total order by (timestamp, value): ties merge the same way in any order.
    fn key(&self) -> (i64, u64) {
        // f64::total_cmp as an integer key (sign-flip trick), finite values only.
        let bits = self.value.to_bits() as i64;
        let ordered = bits ^ ((((bits >> 63) as u64) >> 1) as i64);
        (self.ts_ms, ordered as u64 ^ (1 << 63))
    }
}

/// Mergeable aggregate state over finite readings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Aggregate {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    /// Sum of squared deviations from the mean (Welford's `M2`).
    m2: f64,
    first: Option<Point>,
    last: Option<Point>,
    sketch: Sketch,
}

impl Aggregate {
    /// The empty aggregate (the identity of `merge`).
    pub fn new() -> Aggregate {
        Aggregate::default()
    }

    /// Adds one reading. Refuses NaN and infinities, which would poison every later merge.
    pub fn add(&mut self, ts_ms: i64, value: f64) -> Result<(), AggregateError> {
        if !value.is_finite() {
            return Err(AggregateError::NotFinite);
        }
        let one = Aggregate {
            count: 1,
            sum: value,
            min: value,
            max: value,
            mean: value,
            m2: 0.0,
            first: Some(Point { ts_ms, value }),
            last: Some(Point { ts_ms, value }),
            sketch: Sketch::new(),
        };
        // The moments through `merge`, the sketch directly (no one-value sketch to build).
        self.merge(&one);
        self.sketch.add(value);
        Ok(())
    }

    /// Folds `other` into `self` (Chan et al.'s parallel update for the moments).
    pub fn merge(&mut self, other: &Aggregate) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * (nb / n);
        self.m2 += other.m2 + delta * delta * (na * nb / n);
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first = pick(self.first, other.first, |a, b| a.key() <= b.key());
        self.last = pick(self.last, other.last, |a, b| a.key() >= b.key());
        self.sketch.merge(&other.sketch);
    }

    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }
    /// Population variance.
    pub fn variance(&self) -> Option<f64> {
        (self.count > 0).then(|| self.m2 / self.count as f64)
    }
    /// Population standard deviation.
    pub fn stddev(&self) -> Option<f64> {
        self.variance().map(libm::sqrt)
    }
    pub fn first(&self) -> Option<Point> {
        self.first
    }
    pub fn last(&self) -> Option<Point> {
        self.last
    }
    /// The value at quantile `q` in `0.0..=1.0`, within 1 % (see [`Sketch`]), clamped to the
    /// exact `[min, max]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let estimate = self.sketch.quantile(q)?;
        Some(estimate.clamp(self.min, self.max))
    }
    pub fn sketch(&self) -> &Sketch {
        &self.sketch
    }

    /// Writes the version-1 encoding into `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, AggregateError> {
        let (version, body) = out
            .split_first_mut()
            .ok_or(AggregateError::BufferTooSmall)?;
        *version = VERSION;
        let used = postcard::to_slice(self, body)
            .map_err(|_| AggregateError::BufferTooSmall)?
            .len();
        Ok(1 + used)
    }

    /// Reads an encoding written by [`Aggregate::encode`] (any supported version).
    pub fn decode(bytes: &[u8]) -> Result<Aggregate, AggregateError> {
        let (&version, body) = bytes.split_first().ok_or(AggregateError::Malformed)?;
        if version != VERSION {
            return Err(AggregateError::UnknownVersion(version));
        }
        let (aggregate, rest): (Aggregate, _) =
            postcard::take_from_bytes(body).map_err(|_| AggregateError::Malformed)?;
        if !rest.is_empty() {
            return Err(AggregateError::Malformed);
        }
        aggregate.validate()?;
        Ok(aggregate)
    }

    /// Checks the invariants of the module doc.
    pub fn validate(&self) -> Result<(), AggregateError> {
        self.sketch.validate()?;
        let floats = [self.sum, self.min, self.max, self.mean, self.m2];
        let points = [self.first, self.last];
        let consistent = if self.count == 0 {
            // The empty aggregate is exactly `Aggregate::new()`: no stray floats (a NaN mean
            // would poison every merge that later adds readings).
            floats.iter().all(|f| f.to_bits() == 0)
                && points.iter().all(Option::is_none)
                && self.sketch.count() == 0
        } else {
            let slack = 1e-9 * (self.min.abs().max(self.max.abs()) + 1.0);
            floats.iter().all(|f| f.is_finite())
                && points
                    .iter()
                    .all(|p| p.is_some_and(|p| p.value.is_finite()))
                && self.sketch.count() == self.count
                && self.min <= self.max
                && self.mean >= self.min - slack
                && self.mean <= self.max + slack
                && self.m2 >= 0.0
                && matches!((self.first, self.last), (Some(f), Some(l)) if f.ts_ms <= l.ts_ms)
        };
        if consistent {
            Ok(())
        } else {
            Err(AggregateError::Inconsistent)
        }
    }
}

/// The point `keep_a(a, b)` prefers, when both exist.
fn pick(
    a: Option<Point>,
    b: Option<Point>,
    keep_a: impl Fn(&Point, &Point) -> bool,
) -> Option<Point> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if keep_a(&a, &b) { a } else { b }),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn aggregate_of(readings: &[(i64, f64)]) -> Aggregate {
        let mut a = Aggregate::new();
        for &(ts, v) in readings {
            a.add(ts, v).unwrap();
        }
        a
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_same(a: &Aggregate, b: &Aggregate) {
        assert_eq!(a.count, b.count);
        assert_eq!(a.min(), b.min());
        assert_eq!(a.max(), b.max());
        assert_eq!(a.first, b.first);
        assert_eq!(a.last, b.last);
        assert_eq!(a.sketch, b.sketch);
        assert!(close(a.sum, b.sum), "sum {} vs {}", a.sum, b.sum);
        assert!(close(a.mean, b.mean), "mean {} vs {}", a.mean, b.mean);
        assert!(close(a.m2, b.m2), "m2 {} vs {}", a.m2, b.m2);
    }

    #[test]
    fn statistics_match_a_direct_computation() {
        let readings = [
            (10, 2.0),
            (20, 4.0),
            (30, 4.0),
            (40, 4.0),
            (50, 5.0),
            (60, 5.0),
            (70, 7.0),
            (80, 9.0),
        ];
        let a = aggregate_of(&readings);
        assert_eq!(a.count(), 8);
        assert_eq!(a.sum(), 40.0);
        assert_eq!(a.mean(), Some(5.0));
        assert_eq!(a.variance(), Some(4.0));
        assert_eq!(a.stddev(), Some(2.0));
        assert_eq!(a.min(), Some(2.0));
        assert_eq!(a.max(), Some(9.0));
        assert_eq!(
            a.first(),
            Some(Point {
                ts_ms: 10,
                value: 2.0
            })
        );
        assert_eq!(
            a.last(),
            Some(Point {
                ts_ms: 80,
                value: 9.0
            })
        );
    }

    #[test]
    fn first_and_last_follow_event_time_not_arrival_order() {
        let a = aggregate_of(&[(50, 1.0), (10, 2.0), (90, 3.0), (30, 4.0)]);
        assert_eq!(a.first().map(|p| p.value), Some(2.0));
        assert_eq!(a.last().map(|p| p.value), Some(3.0));
    }

    #[test]
    fn variance_stays_accurate_for_large_offsets() {
        // The naive sum-of-squares formula loses everything here; Welford/Chan does not.
        let base = 1e9;
        let readings: Vec<(i64, f64)> = (0..1000).map(|i| (i, base + (i % 2) as f64)).collect();
        let halves = readings.split_at(500);
        let mut a = aggregate_of(halves.0);
        a.merge(&aggregate_of(halves.1));
        assert!(
            (a.variance().unwrap() - 0.25).abs() < 1e-6,
            "{:?}",
            a.variance()
        );
    }

    #[test]
    fn non_finite_values_are_refused_and_change_nothing() {
        let mut a = aggregate_of(&[(1, 1.0)]);
        assert_eq!(a.add(2, f64::NAN), Err(AggregateError::NotFinite));
        assert_eq!(a.add(2, f64::INFINITY), Err(AggregateError::NotFinite));
        assert_eq!(a, aggregate_of(&[(1, 1.0)]));
    }

    #[test]
    fn the_empty_aggregate_is_the_identity_of_merge() {
        let a = aggregate_of(&[(1, 3.0), (2, -1.5)]);
        let mut left = Aggregate::new();
        left.merge(&a);
        let mut right = a.clone();
        right.merge(&Aggregate::new());
        assert_eq!(left, a);
        assert_eq!(right, a);
    }

    /// Golden vectors: these bytes are the stable version-1 encoding. If this test fails, the
    /// wire format changed: bump VERSION and keep a decoder for version 1 instead.
    #[test]
    fn encoding_matches_the_golden_vectors() {
        let empty = Aggregate::new();
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = empty.encode(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &[
                1, // version
                0, // count
                0, 0, 0, 0, 0, 0, 0, 0, // sum
                0, 0, 0, 0, 0, 0, 0, 0, // min
                0, 0, 0, 0, 0, 0, 0, 0, // max
                0, 0, 0, 0, 0, 0, 0, 0, // mean
                0, 0, 0, 0, 0, 0, 0, 0, // m2
                0, 0, // first, last: None
                0, 0, 0, // sketch: zero count, no positive bins, no negative bins
            ]
        );

        let two = aggregate_of(&[(1_000, 1.0), (2_000, -2.0)]);
        let n = two.encode(&mut buf).unwrap();
        let expected: &[u8] = &[
            1, // version
            2, // count
            0, 0, 0, 0, 0, 0, 0xf0, 0xbf, // sum -1.0
            0, 0, 0, 0, 0, 0, 0, 0xc0, // min -2.0
            0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // max 1.0
            0, 0, 0, 0, 0, 0, 0xe0, 0xbf, // mean -0.5
            0, 0, 0, 0, 0, 0, 0x12, 0x40, // m2 4.5
            1, 0xd0, 0x0f, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, // first: Some(ts 1000 zig-zag, 1.0)
            1, 0xa0, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0xc0, // last: Some(ts 2000 zig-zag, -2.0)
            0,    // sketch zero count
            1, 0, 1, // positive: one bin, index 0 (1.0), count 1
            1, 0x46, 1, // negative: one bin, index 35 (zig-zag 70 = 0x46), count 1
        ];
        assert_eq!(&buf[..n], expected);
        assert_eq!(Aggregate::decode(expected).unwrap(), two);
    }

    #[test]
    fn decoding_refuses_unknown_versions_truncation_and_trailing_bytes() {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = aggregate_of(&[(5, 5.0)]).encode(&mut buf).unwrap();
        let mut wrong = buf;
        wrong[0] = 9;
        assert_eq!(
            Aggregate::decode(&wrong[..n]),
            Err(AggregateError::UnknownVersion(9))
        );
        assert_eq!(
            Aggregate::decode(&buf[..n - 1]),
            Err(AggregateError::Malformed)
        );
        assert_eq!(
            Aggregate::decode(&buf[..n + 1]),
            Err(AggregateError::Malformed)
        );
        assert_eq!(Aggregate::decode(&[]), Err(AggregateError::Malformed));
    }

    /// Regression (found by the partial_decoder fuzz target): an empty aggregate carrying a NaN
    /// mean decoded fine, and would have poisoned every later merge.
    #[test]
    fn decoding_refuses_an_empty_aggregate_with_stray_floats() {
        let mut a = Aggregate::new();
        a.mean = f64::NAN;
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = a.encode(&mut buf).unwrap();
        assert_eq!(
            Aggregate::decode(&buf[..n]),
            Err(AggregateError::Inconsistent)
        );
    }

    #[test]
    fn decoding_refuses_a_count_that_disagrees_with_the_sketch() {
        let mut a = aggregate_of(&[(5, 5.0)]);
        a.count = 7;
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = a.encode(&mut buf).unwrap();
        assert_eq!(
            Aggregate::decode(&buf[..n]),
            Err(AggregateError::Inconsistent)
        );
    }

    #[test]
    fn the_json_form_round_trips() {
        let a = aggregate_of(&[(1, 1.5), (2, 2.5), (3, -4.0)]);
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("\"count\":3"), "{json}");
        let back: Aggregate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    fn readings() -> impl Strategy<Value = Vec<(i64, f64)>> {
        prop::collection::vec((0i64..1_000, -1e6f64..1e6), 0..200)
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in readings(), b in readings()) {
            let (x, y) = (aggregate_of(&a), aggregate_of(&b));
            let mut xy = x.clone();
            xy.merge(&y);
            let mut yx = y.clone();
            yx.merge(&x);
            assert_same(&xy, &yx);
        }

        #[test]
        fn merge_is_associative(a in readings(), b in readings(), c in readings()) {
            let (x, y, z) = (aggregate_of(&a), aggregate_of(&b), aggregate_of(&c));
            let mut xy_z = x.clone();
            xy_z.merge(&y);
            xy_z.merge(&z);
            let mut yz = y.clone();
            yz.merge(&z);
            let mut x_yz = x.clone();
            x_yz.merge(&yz);
            assert_same(&xy_z, &x_yz);
        }

        #[test]
        fn merged_partials_equal_the_aggregate_of_all_readings(a in readings(), split in 0usize..200) {
            let split = split.min(a.len());
            let mut merged = aggregate_of(&a[..split]);
            merged.merge(&aggregate_of(&a[split..]));
            assert_same(&merged, &aggregate_of(&a));
        }

        #[test]
        fn any_aggregate_round_trips_through_its_encoding(a in readings()) {
            let agg = aggregate_of(&a);
            let mut buf = [0u8; MAX_ENCODED_LEN];
            let n = agg.encode(&mut buf).unwrap();
            prop_assert_eq!(Aggregate::decode(&buf[..n]).unwrap(), agg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Aggregate::decode(&bytes);
        }
    }
}
