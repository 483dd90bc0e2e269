//! MQTT payloads and topics: how one reading is published.
//!
//! One MQTT message carries one reading of one channel. The formats (`--payload`):
//!
//! | name | bytes (UTF-8) |
//! | --- | --- |
//! | `json` | `{"ts":1764158400123,"v":21.5}`: `ts` Unix milliseconds (integer), `v` the value |
//! | `nested` | `{"device":"dev-7","data":{"ch0":{"value":21.5,"time":1764158400123}}}`: one key under `data`, the channel name; `time` Unix milliseconds |
//! | `senml` | `[{"bn":"dev-7/","bt":1764158400.123,"n":"ch0","t":0,"v":21.5}]`: RFC 8428 SenML JSON, one record; the resolved name is `bn + n`, the time `bt + t` in seconds |
//! | `plain` | `21.5`: the value as decimal text, no timestamp (the receiver's clock applies) |
//!
//! Values are `f32` printed in their shortest round-trip form, so a receiver that parses the
//! number and converts it to `f32` gets the exact value the ledger holds. Timestamps are the
//! device's clock (including any injected skew), which is what the ledger records.
//!
//! Topics come from a template (`--topic`, default `plant/{device}/{channel}`) with the
//! placeholders `{device}` (`dev-7`), `{device_id}` (`7`), `{channel}` (`ch0`) and
//! `{channel_id}` (`0`). Device names are `dev-<device_id>`, channel names `ch<channel>`.

use core::fmt;
use core::str::FromStr;

use serde_json::json;

/// A payload format (see the module doc for the exact shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadFormat {
    /// `{"ts": <unix ms>, "v": <value>}`
    Json,
    /// `{"device": .., "data": {<channel>: {"value": .., "time": <unix ms>}}}`
    Nested,
    /// SenML JSON (RFC 8428) with base name and base time.
    Senml,
    /// The value as decimal text.
    Plain,
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Nested => "nested",
            PayloadFormat::Senml => "senml",
            PayloadFormat::Plain => "plain",
        })
    }
}

/// The name a device goes by in topics and payloads.
pub fn device_name(device_id: u32) -> String {
    format!("dev-{device_id}")
}

/// The name a channel goes by in topics and payloads.
pub fn channel_name(channel: u8) -> String {
    format!("ch{channel}")
}

/// The bytes of one reading in `format`.
pub fn encode(
    format: PayloadFormat,
    device_id: u32,
    channel: u8,
    ts_ms: u64,
    value: f32,
) -> Vec<u8> {
    let value_json = f32_json(value);
    let body = match format {
        PayloadFormat::Json => json!({ "ts": ts_ms, "v": value_json }),
        PayloadFormat::Nested => {
            let mut data = serde_json::Map::new();
            data.insert(
                channel_name(channel),
                json!({ "value": value_json, "time": ts_ms }),
            );
            json!({ "device": device_name(device_id), "data": data })
        }
        PayloadFormat::Senml => json!([{
            "bn": format!("{}/", device_name(device_id)),
            "bt": ts_ms as f64 / 1000.0,
            "n": channel_name(channel),
            "t": 0,
            "v": value_json,
        }]),
        PayloadFormat::Plain => return f32_text(value).into_bytes(),
    };
    // Serializing a `Value` built from finite numbers and strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An `f32` as a JSON number in its shortest round-trip decimal form (null if not finite).
///
/// The JSON number is the `f64` nearest to that decimal (Rust's parser rounds correctly, unlike
/// serde_json's `Number` parser without `float_roundtrip`), which serde_json writes back with
/// the same digits: the payload shows the ledger's text.
fn f32_json(value: f32) -> serde_json::Value {
    f32_text(value)
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// The value as the ledger writes it: serde_json's shortest round-trip form of an `f32`. Not
/// `Display`: when two shortest forms are equally near (19.7578125 lies halfway between
/// 19.757812 and 19.757813) the two pick differently, and a checker comparing the ledger with
/// the wire in decimal would see two values.
fn f32_text(value: f32) -> String {
    serde_json::to_string(&value).unwrap_or_default()
}

/// A topic template: literal text with `{device}`, `{device_id}`, `{channel}`, `{channel_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    template: String,
}

/// Why a topic template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic template {0:?} has an unknown placeholder (use {{device}}, {{device_id}}, {{channel}}, {{channel_id}})")]
    UnknownPlaceholder(String),
    #[error("topic template {0:?} must not be empty or contain MQTT wildcards (+, #) or NUL")]
    Invalid(String),
}

impl FromStr for TopicTemplate {
    type Err = TopicError;

    fn from_str(template: &str) -> Result<TopicTemplate, TopicError> {
        if template.is_empty() || template.contains(['+', '#', '\0']) {
            return Err(TopicError::Invalid(template.to_owned()));
        }
        let stripped = template
            .replace("{device_id}", "")
            .replace("{device}", "")
            .replace("{channel_id}", "")
            .replace("{channel}", "");
        if stripped.contains(['{', '}']) {
            return Err(TopicError::UnknownPlaceholder(template.to_owned()));
        }
        Ok(TopicTemplate {
            template: template.to_owned(),
        })
    }
}

impl Default for TopicTemplate {
    fn default() -> TopicTemplate {
        TopicTemplate {
            template: "plant/{device}/{channel}".to_owned(),
        }
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl TopicTemplate {
    /// The topic for one channel of one device.
    pub fn render(&self, device_id: u32, channel: u8) -> String {
        self.template
            .replace("{device_id}", &device_id.to_string())
            .replace("{device}", &device_name(device_id))
            .replace("{channel_id}", &channel.to_string())
            .replace("{channel}", &channel_name(channel))
    }
}
