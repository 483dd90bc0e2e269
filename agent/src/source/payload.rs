//! Payload parsers: a message body to [`RawReading`]s, before the sensor mapping. No I/O.
//!
//! | format | body | value | timestamp | `{payload}` (sensor) |
//! | --- | --- | --- | --- | --- |
//! | `json` | one JSON value | number at `value` pointer | number at `timestamp` pointer, in `timestamp_unit`; receive time when absent | string or number at `sensor` pointer |
//! | `senml` | SenML JSON pack (RFC 8428) | `bv + v` (`vb` as 1/0) | `bt + t` seconds, relative to now when below 2^28 | `bn + n` |
//! | `number` | a decimal number in UTF-8 | the number | receive time | none |
//! | `sparkplug_b` | not here: stateful (aliases), see `source/sparkplug.rs` | metric value | metric or payload timestamp | metric name |
//!
//! # Invariants
//!
//! - No input panics or allocates without bound: the body is capped at `max_payload_bytes`
//!   before parsing, serde_json limits nesting depth (128), and a SenML pack yields at most one
//!   reading per record of that capped body.
//! - Every produced value is finite; every timestamp fits `u64` milliseconds.
//! - Every failure is a [`PayloadError`] that says what was wrong, for the dead-letter record.

mod pick;

use pick::{Found, Pointer};
use serde_json::Value;

use crate::config::{PayloadConfig, PayloadFormat, TimestampUnit};

/// A value as the payload delivered it: before mapping, calibration and range check.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    pub sensor: Option<String>,
    pub ts_ms: Option<u64>,
    pub value: f64,
    pub seq: Option<u64>,
}

/// Why a payload yielded no readings. None is retryable: the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload is not a number")]
    NotNumber,
    #[error("payload is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("JSON has nothing at `{pointer}`")]
    Missing { pointer: String },
    #[error("JSON at `{pointer}` is not {expected}")]
    WrongType {
        pointer: String,
        expected: &'static str,
    },
    #[error("value is not a finite number")]
    NotFinite,
    #[error("timestamp is negative, not finite or out of range")]
    BadTimestamp,
    #[error("SenML pack must be a non-empty JSON array of objects")]
    SenmlShape,
    #[error("SenML record {index} has no numeric value (`v` or `vb`)")]
    SenmlNoValue { index: usize },
    #[error("SenML record {index} field `{field}` has the wrong type")]
    SenmlField { index: usize, field: &'static str },
    #[error(
        "sparkplug_b payloads are decoded by the source's Sparkplug B state, not by this parser"
    )]
    Stateful,
}

/// A compiled `[mqtt.payload]`.
#[derive(Debug, Clone)]
pub struct PayloadParser {
    format: PayloadFormat,
    value: String,
    timestamp: Option<String>,
    unit: TimestampUnit,
    sensor: Option<String>,
    seq: Option<String>,
    /// `value`, `timestamp`, `sensor`, `seq` compiled, in this order (an absent one matches
    /// nothing).
    pointers: [Pointer; 4],
    max_bytes: usize,
}

/// SenML times below this are relative to now (RFC 8428 section 4.5.3).
const SENML_RELATIVE_LIMIT: f64 = 268_435_456.0;

impl PayloadParser {
    pub fn new(config: &PayloadConfig, max_bytes: usize) -> PayloadParser {
        let pointer = |p: &Option<toml::Spanned<String>>| p.as_ref().map(|s| s.get_ref().clone());
        let value = pointer(&config.value).unwrap_or_default();
        let timestamp = pointer(&config.timestamp);
        let sensor = pointer(&config.sensor);
        let seq = pointer(&config.seq);
        let compile = |p: &Option<String>| p.as_deref().map_or_else(Pointer::nothing, Pointer::new);
        PayloadParser {
            format: config.format,
            pointers: [
                Pointer::new(&value),
                compile(&timestamp),
                compile(&sensor),
                compile(&seq),
            ],
            value,
            timestamp,
            unit: config.timestamp_unit,
            sensor,
            seq,
            max_bytes,
        }
    }

    /// Parses `body`; `now_ms` (wall clock) resolves SenML relative times.
    pub fn parse(&self, body: &[u8], now_ms: u64) -> Result<Vec<RawReading>, PayloadError> {
        if body.len() > self.max_bytes {
            return Err(PayloadError::TooLarge {
                len: body.len(),
                max: self.max_bytes,
            });
        }
        match self.format {
            PayloadFormat::Number => parse_number(body).map(|r| vec![r]),
            PayloadFormat::Json => self.parse_json(body).map(|r| vec![r]),
            PayloadFormat::Senml => parse_senml(body, now_ms),
            // Stateful (aliases from births): the MQTT source hands these to its
            // `source::sparkplug::Sparkplug`, never to this parser.
            PayloadFormat::SparkplugB => Err(PayloadError::Stateful),
        }
    }

    fn parse_json(&self, body: &[u8]) -> Result<RawReading, PayloadError> {
        self.reading(pick::pick(body, &self.pointers)?)
    }

    /// The reading from what the pointers `value`, `timestamp`, `sensor`, `seq` found.
    fn reading(&self, found: [Option<Found>; 4]) -> Result<RawReading, PayloadError> {
        let [value, ts, sensor, seq] = found;
        let value = number(value, &self.value)?.ok_or_else(|| missing(&self.value))?;
        if !value.is_finite() {
            return Err(PayloadError::NotFinite);
        }
        let ts_ms = match &self.timestamp {
            Some(p) => match number(ts, p)? {
                Some(t) => Some(to_ms(t, self.unit == TimestampUnit::S)?),
                None => None,
            },
            None => None,
        };
        let sensor = match &self.sensor {
            Some(p) => Some(match sensor {
                Some(Found::String(s)) => s,
                Some(Found::Number(n)) => n.to_string(),
                Some(_) => return Err(wrong(p, "a string or number")),
                None => return Err(missing(p)),
            }),
            None => None,
        };
        let seq = match &self.seq {
            Some(p) => match seq {
                Some(Found::Number(n)) if n.is_u64() => n.as_u64(),
                Some(_) => return Err(wrong(p, "an unsigned integer")),
                None => None,
            },
            None => None,
        };
        Ok(RawReading {
            sensor,
            ts_ms,
            value,
            seq,
        })
    }
}

fn missing(pointer: &str) -> PayloadError {
    PayloadError::Missing {
        pointer: pointer.to_owned(),
    }
}

fn wrong(pointer: &str, expected: &'static str) -> PayloadError {
    PayloadError::WrongType {
        pointer: pointer.to_owned(),
        expected,
    }
}

/// The number `pointer` found, `None` when absent or null; anything else is an error.
fn number(found: Option<Found>, pointer: &str) -> Result<Option<f64>, PayloadError> {
    match found {
        None | Some(Found::Null) => Ok(None),
        Some(Found::Number(n)) => n.as_f64().map(Some).ok_or(PayloadError::NotFinite),
        Some(_) => Err(wrong(pointer, "a number")),
    }
}

/// Converts a timestamp in ms (or s when `seconds`) to whole milliseconds.
fn to_ms(t: f64, seconds: bool) -> Result<u64, PayloadError> {
    let ms = if seconds { t * 1000.0 } else { t };
    // 2^63 keeps the cast exact-enough and far beyond any real clock.
    if !ms.is_finite() || !(0.0..9.2e18).contains(&ms) {
        return Err(PayloadError::BadTimestamp);
    }
    Ok(ms.round() as u64)
}

fn parse_number(body: &[u8]) -> Result<RawReading, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
    let value: f64 = text.trim().parse().map_err(|_| PayloadError::NotNumber)?;
    if !value.is_finite() {
        return Err(PayloadError::NotFinite);
    }
    Ok(RawReading {
        sensor: None,
        ts_ms: None,
        value,
        seq: None,
    })
}

fn parse_senml(body: &[u8], now_ms: u64) -> Result<Vec<RawReading>, PayloadError> {
    let doc: Value = serde_json::from_slice(body)?;
    let records = match doc {
        Value::Array(records) if !records.is_empty() => records,
        _ => return Err(PayloadError::SenmlShape),
    };
    let mut base_name = String::new();
    let mut base_time = 0.0f64;
    let mut base_value = 0.0f64;
    let mut out = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let Value::Object(fields) = record else {
            return Err(PayloadError::SenmlShape);
        };
        let field = |name: &'static str| fields.get(name);
        let num = |name: &'static str| -> Result<Option<f64>, PayloadError> {
            match field(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(Some)
                    .ok_or(PayloadError::SenmlField { index, field: name }),
            }
        };
        let text = |name: &'static str| -> Result<Option<&str>, PayloadError> {
            match field(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(PayloadError::SenmlField { index, field: name }),
            }
        };
        if let Some(bn) = text("bn")? {
            base_name = bn.to_owned();
        }
        if let Some(bt) = num("bt")? {
            base_time = bt;
        }
        if let Some(bv) = num("bv")? {
            base_value = bv;
        }
        let value = match (num("v")?, field("vb")) {
            (Some(v), _) => base_value + v,
            (None, Some(Value::Bool(b))) => f64::from(u8::from(*b)),
            (None, Some(_)) => return Err(PayloadError::SenmlField { index, field: "vb" }),
            (None, None) => return Err(PayloadError::SenmlNoValue { index }),
        };
        if !value.is_finite() {
            return Err(PayloadError::NotFinite);
        }
        let name = format!("{base_name}{}", text("n")?.unwrap_or(""));
        let t = base_time + num("t")?.unwrap_or(0.0);
        let ts_ms = if t.abs() < SENML_RELATIVE_LIMIT {
            let abs = now_ms as f64 + t * 1000.0;
            to_ms(abs, false)?
        } else {
            to_ms(t, true)?
        };
        out.push(RawReading {
            sensor: (!name.is_empty()).then_some(name),
            ts_ms: Some(ts_ms),
            value,
            seq: None,
        });
    }
    Ok(out)
}

/// What the pointers find in the document parsed into a `serde_json::Value`, as this module
/// read JSON before [`pick`]: the oracle its tests compare with.
#[cfg(test)]
fn parse_json_by_value(p: &PayloadParser, body: &[u8]) -> Result<RawReading, PayloadError> {
    let doc: Value = serde_json::from_slice(body)?;
    let at = |pointer: Option<&str>| {
        Some(match doc.pointer(pointer?)? {
            Value::Null => Found::Null,
            Value::Bool(_) => Found::Bool,
            Value::Number(n) => Found::Number(n.clone()),
            Value::String(s) => Found::String(s.clone()),
            Value::Array(_) | Value::Object(_) => Found::Container,
        })
    };
    p.reading([
        at(Some(&p.value)),
        at(p.timestamp.as_deref()),
        at(p.sensor.as_deref()),
        at(p.seq.as_deref()),
    ])
}

#[cfg(test)]
mod tests;
