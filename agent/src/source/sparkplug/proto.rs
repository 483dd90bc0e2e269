//! The Sparkplug B protobuf messages the agent reads, declared for `prost` by hand from
//! `agent/proto/sparkplug_b.proto` (Eclipse Tahu, EPL-2.0; source and commit in
//! `agent/proto/NOTICE.md`).
//!
//! # Why hand-declared, not generated
//!
//! `prost-build` needs `protoc` at build time, on every build machine including the aarch64 and
//! armv7 cross builds (`deploy/cross.sh`); generated code checked in would be a second copy of
//! the schema that nothing keeps in step. The agent reads two messages and twelve fields, so they
//! are declared here with `prost`'s derive (no build script, no `protoc`), and the test
//! `tests::every_declared_field_is_in_the_checked_in_proto` checks each declared field's
//! number, label and type against the checked-in `.proto` text. The independent check is the
//! end-to-end suite, whose payloads come from the same `.proto` compiled by Google's `protoc`
//! and serialised by Google's Python `protobuf` (`tests/peers/sparkplug_publish.py`).
//!
//! # What is left out, and why that is safe
//!
//! Protobuf decoders skip fields they do not declare, so a full Tahu payload decodes: `uuid`,
//! `body` and extensions of `Payload`; `is_historical`, `is_transient`, `metadata`,
//! `properties` and the extension value of `Metric` are skipped. The `dataset_value` and
//! `template_value` members of the value oneof are declared as raw bytes (same wire type as a
//! message), so such a metric is recognised, and dead-lettered as not numeric, without decoding
//! the nested messages (no recursion into templates).
//!
//! # Bounds
//!
//! [`decode`] refuses a body over the caller's byte limit before decoding; everything decoded
//! is then bounded by that body (a metric costs at least two bytes on the wire).

use prost::Message;

/// `org.eclipse.tahu.protobuf.Payload` (the fields the agent reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch, at sending.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0..=255, per edge node, wrapping; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

/// `org.eclipse.tahu.protobuf.Payload.Metric` (the fields the agent reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Only in births (and data sent by name).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch, at acquisition.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A Sparkplug `DataType` number (`sparkplug_b.proto`); usually only in births.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18")]
    pub value: Option<Value>,
}

/// The `value` oneof of `Metric`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// Int8/16/32 (two's complement in the low bits) and UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
    /// A `DataSet` message, kept undecoded.
    #[prost(bytes = "vec", tag = "17")]
    DataSet(Vec<u8>),
    /// A `Template` message, kept undecoded.
    #[prost(bytes = "vec", tag = "18")]
    Template(Vec<u8>),
}

/// The `DataType` numbers the agent turns into readings (the `.proto`'s enum `DataType`).
pub mod data_type {
    pub const UNKNOWN: u32 = 0;
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const DATETIME: u32 = 13;
}

/// Why a body is not a Sparkplug B payload.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a Sparkplug B protobuf payload: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Decodes a Sparkplug B payload of at most `max_bytes`. Never panics.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<Payload, DecodeError> {
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            max: max_bytes,
        });
    }
    Ok(Payload::decode(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = include_str!("../../../proto/sparkplug_b.proto");

    /// The `.proto` declarations of `message`'s own fields, comments dropped and blanks
    /// collapsed: `["optional uint64 timestamp = 1", ...]` (nested messages excluded).
    fn fields_of(message: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut path: Vec<String> = Vec::new();
        for line in PROTO.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"message") || words.first() == Some(&"oneof") {
                path.push(words.get(1).copied().unwrap_or("").to_owned());
                continue;
            }
            if line.starts_with('}') {
                path.pop();
                continue;
            }
            let inside = match path.last().map(String::as_str) {
                Some("value") => path.len() >= 2 && path[path.len() - 2] == message,
                Some(last) => last == message,
                None => false,
            };
            if inside && line.ends_with(';') && line.contains('=') {
                out.push(words.join(" ").trim_end_matches(';').trim().to_owned());
            }
        }
        out
    }

    #[test]
    fn every_declared_field_is_in_the_checked_in_proto() {
        // Mirrors the `#[prost(...)]` attributes above, one line each.
        let payload = [
            "optional uint64 timestamp = 1",
            "repeated Metric metrics = 2",
            "optional uint64 seq = 3",
        ];
        let metric = [
            "optional string name = 1",
            "optional uint64 alias = 2",
            "optional uint64 timestamp = 3",
            "optional uint32 datatype = 4",
            "optional bool is_null = 7",
            "uint32 int_value = 10",
            "uint64 long_value = 11",
            "float float_value = 12",
            "double double_value = 13",
            "bool boolean_value = 14",
            "string string_value = 15",
            "bytes bytes_value = 16",
            "DataSet dataset_value = 17",
            "Template template_value = 18",
        ];
        let (have_payload, have_metric) = (fields_of("Payload"), fields_of("Metric"));
        for f in payload {
            assert!(
                have_payload.iter().any(|h| h == f),
                "{f} not in {have_payload:?}"
            );
        }
        for f in metric {
            assert!(
                have_metric.iter().any(|h| h == f),
                "{f} not in {have_metric:?}"
            );
        }
        for (name, n) in [
            ("Int8", data_type::INT8),
            ("Int64", data_type::INT64),
            ("UInt64", data_type::UINT64),
            ("Float", data_type::FLOAT),
            ("Double", data_type::DOUBLE),
            ("Boolean", data_type::BOOLEAN),
            ("DateTime", data_type::DATETIME),
        ] {
            let line = format!("{name} = {n}");
            assert!(
                PROTO
                    .lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")
                        == format!("{line};")),
                "DataType {line}"
            );
        }
    }

    #[test]
    fn golden_bytes_decode_to_the_fields_the_proto_numbers_say() {
        // timestamp=1000 (field 1 varint), seq=7 (field 3), one metric {name "t", alias 5,
        // datatype 10, double_value 1.5}: hand-assembled from the protobuf wire rules.
        let metric = [
            0x0a, 0x01, b't', // 1: name, length-delimited
            0x10, 0x05, // 2: alias
            0x20, 0x0a, // 4: datatype
            0x69, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // 13: double, fixed64 LE 1.5
        ];
        let mut body = vec![0x08, 0xe8, 0x07, 0x18, 0x07, 0x12, metric.len() as u8];
        body.extend_from_slice(&metric);
        let p = decode(&body, 1024).unwrap();
        assert_eq!(p.timestamp, Some(1000));
        assert_eq!(p.seq, Some(7));
        assert_eq!(p.metrics.len(), 1);
        let m = &p.metrics[0];
        assert_eq!(m.name.as_deref(), Some("t"));
        assert_eq!(m.alias, Some(5));
        assert_eq!(m.datatype, Some(data_type::DOUBLE));
        assert_eq!(m.value, Some(Value::Double(1.5)));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_before_decoding() {
        assert_eq!(
            decode(&[0; 10], 9),
            Err(DecodeError::TooLarge { len: 10, max: 9 })
        );
    }
}
