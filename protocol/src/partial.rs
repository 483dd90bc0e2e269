//! The partial-aggregate record: what a gateway sends to Kafka for one series and window.
//!
//! # Meaning
//!
//! A [`Partial`] carries the [`Aggregate`] of the readings of `series` with event time in
//! `[window_start_ms, window_end_ms)` that agent `agent` had when it emitted the record, and the
//! agent's watermark at that moment. `revision` is 0 for the first emission of a window. When late
//! data reopens a window that was already emitted (allowed by the pipeline's lateness policy), the
//! agent emits `revision + 1` carrying **only the readings that arrived since the previous
//! emission**: revisions are deltas, never replacements. A consumer therefore merges every
//! partial it receives exactly once, whatever its revision, and the merge of all revisions of a
//! window is the aggregate of all its readings.
//!
//! # Encoding (version 1)
//!
//! `[0x01] ++ postcard(Partial)`: fields in declaration order; strings as a varint length and
//! UTF-8 bytes; `i64` zig-zag varints, `u32` varints; the aggregate as in
//! [`crate::aggregate`] (its fields inline, without its own version byte: the envelope's version
//! covers both). At most [`MAX_ENCODED_LEN`] bytes. Decoding refuses an unknown version,
//! trailing bytes, an empty or inverted window, and an aggregate that breaks its invariants.
//! Stability: version 1 is frozen; a new layout gets a new version byte and decoders keep
//! reading version 1. The same struct has a JSON form through serde (field names as here).

use serde::{Deserialize, Serialize};

use crate::aggregate::{self, Aggregate, AggregateError};

/// Version byte of the encoding.
pub const VERSION: u8 = 1;
/// Longest series key, bytes of UTF-8.
pub const MAX_SERIES_LEN: usize = 128;
/// Longest agent id, bytes of UTF-8.
pub const MAX_AGENT_LEN: usize = 64;
/// Largest encoding.
pub const MAX_ENCODED_LEN: usize =
    1 + (2 + MAX_SERIES_LEN) + 2 * 10 + (1 + MAX_AGENT_LEN) + 10 + 5 + aggregate::MAX_ENCODED_LEN;

/// Why a partial could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialError {
    /// The version byte is not one this build reads.
    UnknownVersion(u8),
    /// The bytes are not a postcard partial (truncated, trailing bytes, string too long, ...).
    Malformed,
    /// `window_start_ms >= window_end_ms`.
    EmptyWindow,
    /// The aggregate breaks its invariants.
    Aggregate(AggregateError),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl core::fmt::Display for PartialError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PartialError::UnknownVersion(v) => write!(f, "unknown partial version {v}"),
            PartialError::Malformed => f.write_str("malformed partial encoding"),
            PartialError::EmptyWindow => f.write_str("window start is not before its end"),
            PartialError::Aggregate(e) => write!(f, "partial's aggregate: {e}"),
            PartialError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl From<AggregateError> for PartialError {
    fn from(e: AggregateError) -> Self {
        PartialError::Aggregate(e)
    }
}

/// One series' aggregate over one event-time window, from one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// The series key (a sensor id, or a configured grouping).
    pub series: heapless::String<MAX_SERIES_LEN>,
    /// Window start, Unix ms, inclusive.
    pub window_start_ms: i64,
    /// Window end, Unix ms, exclusive.
    pub window_end_ms: i64,
    /// The emitting agent's id.
    pub agent: heapless::String<MAX_AGENT_LEN>,
    /// The agent's event-time watermark when it emitted this record, Unix ms.
    pub watermark_ms: i64,
    /// 0 for the first emission; each later delta of the same window counts up.
    pub revision: u32,
    /// The readings' aggregate (the delta since the previous revision).
    pub aggregate: Aggregate,
}

impl Partial {
    /// Writes the version-1 encoding into `out` and returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, PartialError> {
        let (version, body) = out.split_first_mut().ok_or(PartialError::BufferTooSmall)?;
        *version = VERSION;
        let used = postcard::to_slice(self, body)
            .map_err(|_| PartialError::BufferTooSmall)?
            .len();
        Ok(1 + used)
    }

    /// Reads an encoding written by [`Partial::encode`] (any supported version).
    pub fn decode(bytes: &[u8]) -> Result<Partial, PartialError> {
        let (&version, body) = bytes.split_first().ok_or(PartialError::Malformed)?;
        if version != VERSION {
            return Err(PartialError::UnknownVersion(version));
        }
        let (partial, rest): (Partial, _) =
            postcard::take_from_bytes(body).map_err(|_| PartialError::Malformed)?;
        if !rest.is_empty() {
            return Err(PartialError::Malformed);
        }
        if partial.window_start_ms >= partial.window_end_ms {
            return Err(PartialError::EmptyWindow);
        }
        partial.aggregate.validate()?;
        Ok(partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Partial {
        let mut aggregate = Aggregate::new();
        aggregate.add(10_500, 2.0).unwrap();
        Partial {
            series: heapless::String::try_from("s1").unwrap(),
            window_start_ms: 10_000,
            window_end_ms: 20_000,
            agent: heapless::String::try_from("gw").unwrap(),
            watermark_ms: 21_000,
            revision: 0,
            aggregate,
        }
    }

    /// Golden vector: the stable version-1 bytes. A failure here means the wire format changed:
    /// bump VERSION and keep decoding version 1 instead.
    #[test]
    fn encoding_matches_the_golden_vector() {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = sample().encode(&mut buf).unwrap();
        let expected: &[u8] = &[
            1, // version
            2, b's', b'1', // series
            0xa0, 0x9c, 0x01, // window start 10000 (zig-zag 20000)
            0xc0, 0xb8, 0x02, // window end 20000 (zig-zag 40000)
            2, b'g', b'w', // agent
            0x90, 0xc8, 0x02, // watermark 21000 (zig-zag 42000)
            0,    // revision
            1,    // aggregate: count 1
            0, 0, 0, 0, 0, 0, 0, 0x40, // sum 2.0
            0, 0, 0, 0, 0, 0, 0, 0x40, // min
            0, 0, 0, 0, 0, 0, 0, 0x40, // max
            0, 0, 0, 0, 0, 0, 0, 0x40, // mean
            0, 0, 0, 0, 0, 0, 0, 0, // m2
            1, 0x88, 0xa4, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x40, // first (10500, 2.0)
            1, 0x88, 0xa4, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x40, // last
            0,    // sketch zero count
            1, 0x46, 1, // positive: bin 35 (2.0), count 1
            0, // negative: none
        ];
        assert_eq!(&buf[..n], expected);
        assert_eq!(Partial::decode(expected).unwrap(), sample());
    }

    #[test]
    fn decoding_refuses_an_inverted_window_and_an_unknown_version() {
        let mut p = sample();
        p.window_end_ms = p.window_start_ms;
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(Partial::decode(&buf[..n]), Err(PartialError::EmptyWindow));
        buf[0] = 2;
        assert_eq!(
            Partial::decode(&buf[..n]),
            Err(PartialError::UnknownVersion(2))
        );
    }

    #[test]
    fn the_largest_partial_fits_the_stated_bound() {
        let mut p = sample();
        p.series.clear();
        p.agent.clear();
        for _ in 0..MAX_SERIES_LEN {
            p.series.push('x').unwrap();
        }
        for _ in 0..MAX_AGENT_LEN {
            p.agent.push('y').unwrap();
        }
        (p.window_start_ms, p.window_end_ms, p.watermark_ms) = (i64::MIN, i64::MAX, i64::MIN);
        p.revision = u32::MAX;
        // Both sketch stores full: values spread over many magnitudes, both signs.
        p.aggregate = Aggregate::new();
        for e in -400..400 {
            let v = libm::pow(1.03, f64::from(e));
            p.aggregate.add(i64::MAX - 1, v * 1e9).unwrap();
            p.aggregate.add(i64::MIN + 1, -v * 1e9).unwrap();
        }
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = p
            .encode(&mut buf)
            .expect("the bound holds the largest partial");
        assert_eq!(Partial::decode(&buf[..n]).unwrap(), p);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
            let _ = Partial::decode(&bytes);
        }

        #[test]
        fn flipping_any_bit_never_panics_and_never_decodes_to_the_same_bytes(at in 0usize..96, bit in 0u8..8) {
            let mut buf = [0u8; MAX_ENCODED_LEN];
            let n = sample().encode(&mut buf).unwrap();
            let at = at % n;
            buf[at] ^= 1 << bit;
            // Compared by re-encoding, bit for bit: a flipped sign bit turns an `m2` of 0.0 into
            // -0.0, which `==` on f64 calls equal (found by CI).
            if let Ok(p) = Partial::decode(&buf[..n]) {
                let mut again = [0u8; MAX_ENCODED_LEN];
                let m = p.encode(&mut again).unwrap();
                let mut original = [0u8; MAX_ENCODED_LEN];
                let k = sample().encode(&mut original).unwrap();
                prop_assert_ne!(&again[..m], &original[..k]);
            }
        }
    }
}
