//! The MQTT payload encoders produce the shapes documented in `runner::payload`.

use firmware_sim::runner::ledger::LedgerReading;
use firmware_sim::runner::payload::{self, PayloadFormat, TopicTemplate};
use serde_json::Value;

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("payload is JSON")
}

#[test]
fn json_payload_is_ts_and_v() {
    let v = parse(&payload::encode(
        PayloadFormat::Json,
        7,
        0,
        1_764_158_400_123,
        21.5,
    ));
    assert_eq!(
        v,
        serde_json::json!({"ts": 1_764_158_400_123u64, "v": 21.5})
    );
}

#[test]
fn nested_payload_keys_the_channel_under_data() {
    let v = parse(&payload::encode(
        PayloadFormat::Nested,
        7,
        3,
        1_764_158_400_123,
        -4.25,
    ));
    assert_eq!(
        v,
        serde_json::json!({"device": "dev-7", "data": {"ch3": {"value": -4.25, "time": 1_764_158_400_123u64}}})
    );
}

#[test]
fn senml_payload_is_one_record_with_base_name_and_base_time() {
    let v = parse(&payload::encode(
        PayloadFormat::Senml,
        7,
        1,
        1_764_158_400_123,
        0.5,
    ));
    let records = v.as_array().expect("SenML is an array");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["bn"], "dev-7/");
    assert_eq!(r["n"], "ch1");
    assert_eq!(r["t"], 0);
    assert_eq!(r["v"], 0.5);
    let bt = r["bt"].as_f64().expect("bt is a number");
    assert_eq!((bt * 1000.0).round() as u64, 1_764_158_400_123);
}

#[test]
fn plain_payload_is_the_number_as_text() {
    let bytes = payload::encode(PayloadFormat::Plain, 7, 0, 1, 21.5);
    assert_eq!(bytes, b"21.5");
}

#[test]
fn values_parse_back_to_the_same_f32_in_every_format() {
    let awkward = [
        0.1f32,
        1.0 / 3.0,
        f32::MIN_POSITIVE,
        123_456.79,
        -0.0,
        3.4e38,
    ];
    for value in awkward {
        let json = parse(&payload::encode(PayloadFormat::Json, 1, 0, 5, value));
        assert_eq!(json["v"].as_f64().unwrap() as f32, value);
        let nested = parse(&payload::encode(PayloadFormat::Nested, 1, 0, 5, value));
        assert_eq!(
            nested["data"]["ch0"]["value"].as_f64().unwrap() as f32,
            value
        );
        let senml = parse(&payload::encode(PayloadFormat::Senml, 1, 0, 5, value));
        assert_eq!(senml[0]["v"].as_f64().unwrap() as f32, value);
        let plain = payload::encode(PayloadFormat::Plain, 1, 0, 5, value);
        let text = std::str::from_utf8(&plain).unwrap();
        assert_eq!(text.parse::<f32>().unwrap(), value);
    }
}

/// The ledger and the wire write one value with the same digits, ties included: 19.7578125 is
/// halfway between the shortest forms 19.757812 and 19.757813 (before, the ledger wrote the
/// first and the payload the second), then 100,000 pseudo-random finite `f32`s. A checker that
/// reads both as numbers, or the plain payload as text, sees one value.
#[test]
fn the_payload_writes_a_value_with_the_ledgers_digits() {
    // 19.7578125 exactly (written as a sum: clippy takes the literal for excessive precision).
    const TIE: f32 = 19.75 + 1.0 / 128.0;
    let mut values = vec![TIE, 0.5, 21.0, -3.25, 1e-7, f32::MIN_POSITIVE];
    let mut x = 0x1234_5678u32;
    while values.len() < 100_000 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let v = f32::from_bits(x);
        if v.is_finite() {
            values.push(v);
        }
    }
    for value in values {
        let line = serde_json::to_string(&LedgerReading {
            channel: 0,
            ts_ms: 5,
            value,
        })
        .unwrap();
        let ledger = line
            .strip_prefix(r#"{"channel":0,"ts_ms":5,"value":"#)
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap();
        let plain = payload::encode(PayloadFormat::Plain, 1, 0, 5, value);
        assert_eq!(std::str::from_utf8(&plain).unwrap(), ledger, "{value:e}");
        // The JSON payloads carry the f64 nearest to the ledger's decimal (serde_json may write
        // it in another notation, never with other digits): read as f64 they are equal.
        let json = payload::encode(PayloadFormat::Json, 1, 0, 5, value);
        let v = std::str::from_utf8(&json)
            .unwrap()
            .strip_prefix(r#"{"ts":5,"v":"#)
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap()
            .parse::<f64>()
            .unwrap();
        assert_eq!(v, ledger.parse::<f64>().unwrap(), "{value:e}");
    }
    assert_eq!(
        payload::encode(PayloadFormat::Plain, 1, 0, 5, TIE),
        b"19.757812"
    );
}

#[test]
fn topic_templates_fill_every_placeholder() {
    let t: TopicTemplate = "site/{device_id}/{device}/{channel}/{channel_id}"
        .parse()
        .unwrap();
    assert_eq!(t.render(42, 3), "site/42/dev-42/ch3/3");
    assert_eq!(TopicTemplate::default().render(1, 0), "plant/dev-1/ch0");
}

#[test]
fn topic_templates_with_wildcards_or_unknown_placeholders_are_refused() {
    assert!("plant/+/{channel}".parse::<TopicTemplate>().is_err());
    assert!("plant/#".parse::<TopicTemplate>().is_err());
    assert!("plant/{sensor}".parse::<TopicTemplate>().is_err());
    assert!("".parse::<TopicTemplate>().is_err());
}
