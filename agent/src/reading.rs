//! [`Reading`]: one calibrated sensor value, the unit the ingest log stores.
//!
//! # Stored encoding (version 1; the `readings` table's value, see `store/FORMAT.md`)
//!
//! ```text
//! offset size field
//! 0      1    version = 1
//! 1      1    flags: bit 0 = seq present; other bits 0
//! 2      8    ts_ms    u64 little-endian (milliseconds since the Unix epoch, event time)
//! 10     8    value    f64 little-endian IEEE-754 bits
//! 18     8    seq      u64 little-endian (only when flags bit 0)
//! ..     2    sensor length u16 little-endian (1..=MAX_SENSOR_LEN)
//! ..     n    sensor id, UTF-8
//! ```
//!
//! Little-endian because these bytes are values, never compared as keys. Stability: version 1 is
//! read forever; a new layout gets a new version byte and the decoder keeps reading the old.

use crate::store::codec::{ByteReader, ByteWriter, Truncated};

/// Longest sensor id, in bytes.
pub const MAX_SENSOR_LEN: usize = 256;

/// One sensor value at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The sensor id produced by the mapping's template.
    pub sensor: String,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Calibrated value (`raw * scale + offset`), finite.
    pub value: f64,
    /// Device sequence number, when the payload carries one.
    pub seq: Option<u64>,
}

/// Why stored bytes are not a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown flag bits {0:#04x}")]
    Flags(u8),
    #[error("sensor id is not UTF-8 or has a bad length")]
    Sensor,
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

const VERSION: u8 = 1;
const FLAG_SEQ: u8 = 1;

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        DecodeError::Truncated
    }
}

impl Reading {
    /// Bytes of [`Reading::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        2 + 8 + 8 + if self.seq.is_some() { 8 } else { 0 } + 2 + self.sensor.len()
    }

    /// The stored encoding (module doc). The mapping guarantees the sensor length bound; a
    /// longer id is truncated at a character boundary rather than panicking.
    pub fn encode(&self) -> Vec<u8> {
        let mut sensor = self.sensor.as_str();
        let mut cut = sensor.len().min(MAX_SENSOR_LEN);
        while !sensor.is_char_boundary(cut) {
            cut -= 1;
        }
        sensor = &sensor[..cut];
        let mut out = ByteWriter::with_capacity(self.encoded_len());
        out.u8(VERSION)
            .u8(if self.seq.is_some() { FLAG_SEQ } else { 0 })
            .u64(self.ts_ms)
            .f64(self.value);
        if let Some(seq) = self.seq {
            out.u64(seq);
        }
        out.bytes_u16(sensor.as_bytes());
        out.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Reading, DecodeError> {
        let mut r = ByteReader::new(bytes);
        r.version(VERSION, DecodeError::Version)?;
        let flags = r.u8()?;
        if flags & !FLAG_SEQ != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let ts_ms = r.u64()?;
        let value = r.f64()?;
        let seq = if flags & FLAG_SEQ != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let len = usize::from(r.u16()?);
        if len == 0 || len > MAX_SENSOR_LEN {
            return Err(DecodeError::Sensor);
        }
        let sensor = r.take(len).map_err(|Truncated| DecodeError::Sensor)?;
        r.finish().map_err(DecodeError::Trailing)?;
        let sensor = std::str::from_utf8(sensor).map_err(|_| DecodeError::Sensor)?;
        Ok(Reading {
            sensor: sensor.to_owned(),
            ts_ms,
            value,
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_vector_of_version_1_is_stable() {
        let reading = Reading {
            sensor: "s1".into(),
            ts_ms: 0x0102_0304_0506_0708,
            value: 1.5,
            seq: Some(7),
        };
        let bytes = reading.encode();
        assert_eq!(
            bytes,
            [
                1, 1, // version, flags
                8, 7, 6, 5, 4, 3, 2, 1, // ts_ms LE
                0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // 1.5f64 LE
                7, 0, 0, 0, 0, 0, 0, 0, // seq LE
                2, 0, b's', b'1',
            ]
        );
        assert_eq!(bytes.len(), reading.encoded_len());
        assert_eq!(Reading::decode(&bytes), Ok(reading));
    }

    #[test]
    fn truncated_and_padded_records_are_errors() {
        let bytes = Reading {
            sensor: "abc".into(),
            ts_ms: 1,
            value: 2.0,
            seq: None,
        }
        .encode();
        for cut in 0..bytes.len() {
            assert!(Reading::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Reading::decode(&padded), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn any_reading_round_trips(sensor in "[a-z0-9./_-]{1,64}", ts_ms: u64, value in -1e12f64..1e12, seq: Option<u64>) {
            let reading = Reading { sensor, ts_ms, value, seq };
            prop_assert_eq!(Reading::decode(&reading.encode()), Ok(reading));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Reading::decode(&bytes);
        }
    }
}
