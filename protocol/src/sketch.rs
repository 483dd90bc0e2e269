//! A DDSketch-style quantile sketch with a fixed memory bound, mergeable exactly.
//!
//! # What it guarantees
//!
//! A value `x` with `|x| >= MIN_INDEXABLE` falls in bin `i = ceil(ln|x| / ln γ)` of the store of
//! its sign, with `γ = (1 + α) / (1 - α)` and `α = RELATIVE_ACCURACY = 1 %`; smaller magnitudes
//! count as zero. Bin `i` covers `(γ^(i-1), γ^i]` and answers with `2 γ^i / (γ + 1)`, which is
//! within `α` of every value in it. So a quantile read from the sketch is within 1 % (relative)
//! of a value whose rank is the requested one, **as long as no bin was collapsed** below it.
//!
//! # Memory bound and collapsing
//!
//! Each sign keeps at most [`MAX_BINS`] bins (only the used bins go on the wire). In memory a
//! store holds only its used bins on the heap with the `alloc` feature (hosts: the agent and the
//! consumer, where a window's sketch typically has a handful of bins, so a window costs
//! hundreds of bytes, not kilobytes); without it (firmware) it is a fixed `heapless` buffer of
//! `MAX_BINS` bins, about 2 KiB. Both serialize identically (a varint length, then the bins). With 1 % accuracy, 128 bins span a factor `γ^128 ≈ 12.9` of magnitudes per
//! sign. When a store would exceed its bound, the bins **closest to zero** are folded into the
//! lowest kept bin, so high quantiles of positive data (the p90-p99 of vibration, latency or
//! temperature) stay exact to 1 % and only quantiles among the smallest magnitudes lose accuracy.
//!
//! # Invariants (checked by [`Sketch::validate`] on every decode)
//!
//! - each store's bins are sorted by strictly increasing index, every count is `> 0`, at most
//!   [`MAX_BINS`] of them, every index within `[MIN_INDEX, MAX_INDEX]`;
//! - the canonical form: a store equals "the `MAX_BINS` highest distinct indices of everything
//!   ever added, with all counts below them folded into the lowest kept bin". Insertion and
//!   merge both produce exactly this form, which is why merging is exactly associative and
//!   commutative (integer counts, no floating-point state): `merge(F(X), F(Y)) == F(X ∪ Y)`.
//!   (Proof sketch: the top-K distinct indices of `X ∪ Y` are among those of `X` and `Y`; the
//!   K-th largest of `X ∪ Y` is `>=` that of `X`, so what `X` folded lies below the union's
//!   lowest kept bin too, and ends up in it either way.)

use serde::{Deserialize, Serialize};

/// Relative accuracy `α` of a quantile read from the sketch (while no bin was collapsed).
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Bins per sign. Bounds memory: a sketch never holds more than `2 * MAX_BINS` bins.
pub const MAX_BINS: usize = 128;
/// Magnitudes below this count as zero.
pub const MIN_INDEXABLE: f64 = 1e-9;
/// `ln γ` for `γ = (1 + α) / (1 - α)`, `α = 0.01` (a test checks it against `libm`).
const LN_GAMMA: f64 = 0.020_000_666_706_669_435;
/// `γ` itself.
const GAMMA: f64 = 1.020_202_020_202_02;
/// Bin index of `MIN_INDEXABLE` (lowest possible).
pub const MIN_INDEX: i32 = -1036;
/// Bin index of `f64::MAX` (highest possible).
pub const MAX_INDEX: i32 = 35_488;

/// One bin: how many values fell into `(γ^(index-1), γ^index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bin {
    pub index: i32,
    pub count: u64,
}

/// The bins of one sign, in canonical form (see the module doc): only the used bins.
#[cfg(feature = "alloc")]
pub type Store = alloc::vec::Vec<Bin>;
/// The bins of one sign, in canonical form (see the module doc): a fixed buffer.
#[cfg(not(feature = "alloc"))]
pub type Store = heapless::Vec<Bin, MAX_BINS>;

/// Inserts `bin` at `at`, or gives it back when the store holds `MAX_BINS` bins already.
fn try_insert(store: &mut Store, at: usize, bin: Bin) -> Result<(), Bin> {
    if store.len() >= MAX_BINS {
        return Err(bin);
    }
    #[cfg(feature = "alloc")]
    store.insert(at, bin);
    #[cfg(not(feature = "alloc"))]
    store.insert(at, bin)?;
    Ok(())
}

/// Appends `bin`, or gives it back when the store holds `MAX_BINS` bins already.
fn try_push(store: &mut Store, bin: Bin) -> Result<(), Bin> {
    let at = store.len();
    try_insert(store, at, bin)
}

/// Why a decoded sketch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SketchError {
    /// Bins not strictly increasing, a zero count, or an index out of range.
    MalformedBins,
}

/// A quantile sketch over finite `f64` values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sketch {
    /// Values with `|x| < MIN_INDEXABLE`.
    pub zero: u64,
    /// Bins of positive values.
    pub positive: Store,
    /// Bins of negative values, indexed by magnitude.
    pub negative: Store,
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Sketch {
        Sketch::default()
    }

    /// Counts one finite value. (Non-finite values are refused by the aggregate before this.)
    pub fn add(&mut self, value: f64) {
        let magnitude = libm::fabs(value);
        if magnitude.is_nan() || magnitude < MIN_INDEXABLE {
            self.zero = self.zero.saturating_add(1);
            return;
        }
        let bin = Bin {
            index: index_of(magnitude),
            count: 1,
        };
        let store = if value > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        match store.binary_search_by_key(&bin.index, |b| b.index) {
            Ok(at) => store[at].count = store[at].count.saturating_add(1),
            Err(at) => {
                if let Err(bin) = try_insert(store, at, bin) {
                    // Full: the canonical form keeps the MAX_BINS highest indices and folds the
                    // rest into the lowest kept bin.
                    if at == 0 {
                        store[0].count = store[0].count.saturating_add(bin.count);
                    } else {
                        let lowest = store.remove(0);
                        let _ = try_insert(store, at - 1, bin);
                        store[0].count = store[0].count.saturating_add(lowest.count);
                    }
                }
            }
        }
    }

    /// Folds `other` into `self`: afterwards `self` is the sketch of both inputs' values.
    pub fn merge(&mut self, other: &Sketch) {
        self.zero = self.zero.saturating_add(other.zero);
        merge_into(&mut self.positive, &other.positive);
        merge_into(&mut self.negative, &other.negative);
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        let sum = |s: &Store| s.iter().fold(0u64, |acc, b| acc.saturating_add(b.count));
        self.zero
            .saturating_add(sum(&self.positive))
            .saturating_add(sum(&self.negative))
    }

    /// The value at quantile `q` (`0.0..=1.0`, clamped), or `None` when empty. Uses the lower
    /// rank `floor(q * (count - 1))`, like DDSketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (count - 1) as f64) as u64;
        let mut seen = 0u64;
        for bin in self.negative.iter().rev() {
            seen += bin.count;
            if seen > rank {
                return Some(-value_of(bin.index));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for bin in self.positive.iter() {
            seen += bin.count;
            if seen > rank {
                return Some(value_of(bin.index));
            }
        }
        // Unreachable while counts are consistent; answer the largest value rather than panic.
        self.positive
            .last()
            .map(|b| value_of(b.index))
            .or(Some(0.0))
    }

    /// Checks the invariants of the module doc; decoders call it on untrusted input.
    pub fn validate(&self) -> Result<(), SketchError> {
        for store in [&self.positive, &self.negative] {
            let in_range = store.len() <= MAX_BINS
                && store
                    .iter()
                    .all(|b| b.count > 0 && (MIN_INDEX..=MAX_INDEX).contains(&b.index));
            let increasing = store.windows(2).all(|w| w[0].index < w[1].index);
            if !in_range || !increasing {
                return Err(SketchError::MalformedBins);
            }
        }
        Ok(())
    }
}

/// `ceil(ln(magnitude) / ln γ)`, clamped to the index range; `magnitude >= MIN_INDEXABLE`.
fn index_of(magnitude: f64) -> i32 {
    let index = libm::ceil(libm::log(magnitude) / LN_GAMMA);
    (index as i32).clamp(MIN_INDEX, MAX_INDEX)
}

/// The representative of bin `index`: `2 γ^index / (γ + 1)`, within `α` of the whole bin.
fn value_of(index: i32) -> f64 {
    2.0 * libm::exp(f64::from(index) * LN_GAMMA) / (GAMMA + 1.0)
}

/// Merges canonical `b` into canonical `a`. When every index of `b` is already in `a` (the usual
/// case once a window has seen its range of values) the counts are added in place, with no
/// new store.
fn merge_into(a: &mut Store, b: &[Bin]) {
    if b.is_empty() {
        return;
    }
    let mut at = 0;
    let in_place =
        b.iter().all(
            |bin| match a[at..].binary_search_by_key(&bin.index, |x| x.index) {
                Ok(i) => {
                    at += i;
                    true
                }
                Err(_) => false,
            },
        );
    if in_place {
        let mut at = 0;
        for bin in b {
            while a[at].index != bin.index {
                at += 1;
            }
            a[at].count = a[at].count.saturating_add(bin.count);
        }
    } else {
        *a = merge_stores(a, b);
    }
}

/// The canonical merge of two canonical stores: the `MAX_BINS` highest distinct indices of the
/// union, every lower count folded into the lowest kept bin.
fn merge_stores(a: &[Bin], b: &[Bin]) -> Store {
    // Walk both from the top (highest index) down; `descending` is built high-to-low.
    #[cfg(feature = "alloc")]
    let mut descending = Store::with_capacity((a.len() + b.len()).min(MAX_BINS));
    #[cfg(not(feature = "alloc"))]
    let mut descending = Store::new();
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 || j > 0 {
        let next = match (
            i.checked_sub(1).map(|k| a[k]),
            j.checked_sub(1).map(|k| b[k]),
        ) {
            (Some(x), Some(y)) if x.index == y.index => {
                i -= 1;
                j -= 1;
                Bin {
                    index: x.index,
                    count: x.count.saturating_add(y.count),
                }
            }
            (Some(x), Some(y)) if x.index > y.index => {
                i -= 1;
                x
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                j -= 1;
                y
            }
            (Some(x), None) => {
                i -= 1;
                x
            }
            (None, None) => break,
        };
        if let Err(bin) = try_push(&mut descending, next) {
            // Full: fold into the lowest kept bin (the last pushed).
            if let Some(lowest) = descending.last_mut() {
                lowest.count = lowest.count.saturating_add(bin.count);
            }
        }
    }
    descending.reverse();
    descending
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn the_gamma_constants_match_the_stated_accuracy() {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        assert!((GAMMA - gamma).abs() < 1e-15);
        assert!((LN_GAMMA - libm::log(gamma)).abs() < 1e-15);
        assert_eq!(index_of(MIN_INDEXABLE), MIN_INDEX);
        assert_eq!(
            libm::ceil(libm::log(f64::MAX) / LN_GAMMA) as i32,
            MAX_INDEX,
            "MAX_INDEX is the index of f64::MAX"
        );
    }

    #[test]
    fn every_value_is_answered_within_the_relative_accuracy() {
        for &x in &[1e-6, 0.5, 1.0, 3.75, 100.0, 12_345.678, 1e12] {
            let mut sketch = Sketch::new();
            sketch.add(x);
            sketch.add(-x);
            let high = sketch.quantile(1.0).unwrap();
            let low = sketch.quantile(0.0).unwrap();
            assert!(
                (high - x).abs() <= RELATIVE_ACCURACY * x * 1.000_001,
                "{x} -> {high}"
            );
            assert!(
                (low + x).abs() <= RELATIVE_ACCURACY * x * 1.000_001,
                "-{x} -> {low}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_ramp_are_within_one_percent() {
        let mut sketch = Sketch::new();
        for i in 1..=10_000 {
            sketch.add(f64::from(i));
        }
        for (q, exact) in [
            (0.5, 5_000.0),
            (0.9, 9_000.0),
            (0.95, 9_500.0),
            (0.99, 9_900.0),
        ] {
            let got = sketch.quantile(q).unwrap();
            assert!(
                (got - exact).abs() <= 0.0101 * exact,
                "p{} = {got}, exact {exact}",
                q * 100.0
            );
        }
        assert_eq!(sketch.count(), 10_000);
    }

    #[test]
    fn a_wide_range_collapses_the_smallest_magnitudes_and_keeps_high_quantiles() {
        let mut sketch = Sketch::new();
        // 1e-10 .. 1e10 spans far more than 128 bins.
        for e in -100..=100 {
            for _ in 0..10 {
                sketch.add(libm::pow(10.0, f64::from(e) / 10.0));
            }
        }
        assert_eq!(sketch.positive.len(), MAX_BINS);
        assert_eq!(sketch.count(), 2010);
        let p99 = sketch.quantile(0.99).unwrap();
        let exact = libm::pow(10.0, 9.8); // rank floor(0.99 * 2009) = 1988: the 199th of 201 values
        assert!(
            (p99 - exact).abs() <= 0.0101 * exact,
            "p99 {p99} vs {exact}"
        );
        sketch.validate().unwrap();
    }

    #[test]
    fn an_empty_sketch_has_no_quantiles() {
        assert_eq!(Sketch::new().quantile(0.5), None);
    }

    #[test]
    fn validation_refuses_unsorted_or_empty_bins() {
        let mut sketch = Sketch::new();
        try_push(&mut sketch.positive, Bin { index: 5, count: 1 }).unwrap();
        try_push(&mut sketch.positive, Bin { index: 5, count: 1 }).unwrap();
        assert_eq!(sketch.validate(), Err(SketchError::MalformedBins));
        let mut zero = Sketch::new();
        try_push(&mut zero.negative, Bin { index: 1, count: 0 }).unwrap();
        assert_eq!(zero.validate(), Err(SketchError::MalformedBins));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn validation_refuses_a_heap_store_longer_than_the_bound() {
        // A heap store takes any length a decoder reads; the bound is validate's to enforce.
        let mut sketch = Sketch::new();
        sketch.positive = (0..=MAX_BINS as i32)
            .map(|index| Bin { index, count: 1 })
            .collect();
        assert_eq!(sketch.validate(), Err(SketchError::MalformedBins));
        sketch.positive.remove(0);
        assert_eq!(sketch.validate(), Ok(()));
    }

    fn sketch_of(values: &[f64]) -> Sketch {
        let mut s = Sketch::new();
        values.iter().for_each(|&v| s.add(v));
        s
    }

    fn values() -> impl Strategy<Value = Vec<f64>> {
        // Wide magnitudes, both signs, zeros: enough to force collapsing.
        prop::collection::vec(
            prop_oneof![
                (-30.0f64..30.0).prop_map(|e| libm::pow(10.0, e / 3.0)),
                (-30.0f64..30.0).prop_map(|e| -libm::pow(10.0, e / 3.0)),
                Just(0.0),
                -100.0f64..100.0,
            ],
            0..400,
        )
    }

    proptest! {
        #[test]
        fn merging_is_the_sketch_of_the_union(a in values(), b in values()) {
            let mut merged = sketch_of(&a);
            merged.merge(&sketch_of(&b));
            let union: Vec<f64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(&merged, &sketch_of(&union));
            prop_assert!(merged.validate().is_ok());
        }

        #[test]
        fn merging_is_commutative_and_associative(a in values(), b in values(), c in values()) {
            let (sa, sb, sc) = (sketch_of(&a), sketch_of(&b), sketch_of(&c));
            let mut ab = sa.clone();
            ab.merge(&sb);
            let mut ba = sb.clone();
            ba.merge(&sa);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(&sc);
            let mut bc = sb.clone();
            bc.merge(&sc);
            let mut a_bc = sa.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
        }

        #[test]
        fn stores_never_exceed_their_bound(a in values()) {
            let s = sketch_of(&a);
            prop_assert!(s.positive.len() <= MAX_BINS && s.negative.len() <= MAX_BINS);
            prop_assert_eq!(s.count(), a.len() as u64);
        }
    }
}
