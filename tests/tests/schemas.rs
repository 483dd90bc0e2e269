//! The published JSON Schemas (`protocol/schemas/`) against the golden vectors and against
//! records that break them. The end-to-end suites check every final, reading and JSON partial
//! they read from Kafka with the same schemas (`edge_tests::schema`).

use std::path::Path;

use edge_tests::schema::Schema;

fn vector(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/vectors/v1")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `json` with `edit` applied to its top-level object.
fn edited(
    json: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(json).expect("JSON");
    edit(value.as_object_mut().expect("an object"));
    serde_json::to_vec(&value).expect("serialise")
}

#[test]
fn the_golden_vectors_satisfy_their_schemas() {
    Schema::Final.check(&vector("final.json"));
    Schema::Reading.check(&vector("reading.json"));
    Schema::Reading.check(&vector("reading-without-seq.json"));
    Schema::Partial.check(&vector("partial.json"));
}

#[test]
fn an_empty_window_final_with_null_statistics_is_valid() {
    let empty = edited(&vector("final.json"), |m| {
        m.insert("count".into(), 0.into());
        for k in [
            "min", "max", "mean", "stddev", "first", "last", "p50", "p90", "p95", "p99",
        ] {
            m.insert(k.into(), serde_json::Value::Null);
        }
    });
    Schema::Final.check(&empty);
}

#[test]
fn a_field_added_by_a_later_release_is_allowed() {
    let newer = edited(&vector("final.json"), |m| {
        m.insert("unit".into(), "degC".into());
    });
    Schema::Final.check(&newer);
}

#[test]
fn records_that_break_the_contract_are_refused_with_the_field_named() {
    let cases: [(Schema, Vec<u8>, &str); 6] = [
        (
            Schema::Final,
            edited(&vector("final.json"), |m| {
                m.remove("count");
            }),
            "count",
        ),
        (
            Schema::Final,
            edited(&vector("final.json"), |m| {
                m.insert("window_start".into(), "2023-11-14 22:13:20".into());
            }),
            "window_start",
        ),
        (
            Schema::Final,
            edited(&vector("final.json"), |m| {
                m.insert("revision".into(), (-1).into());
            }),
            "revision",
        ),
        (
            Schema::Reading,
            edited(&vector("reading.json"), |m| {
                m.insert("value".into(), "21.5".into());
            }),
            "value",
        ),
        (
            Schema::Reading,
            edited(&vector("reading.json"), |m| {
                m.insert("sensor".into(), "".into());
            }),
            "sensor",
        ),
        (
            Schema::Partial,
            edited(&vector("partial.json"), |m| {
                m.remove("aggregate");
            }),
            "aggregate",
        ),
    ];
    for (schema, json, field) in cases {
        let violations = schema.violations(&json);
        assert!(
            violations.iter().any(|v| v.contains(field)),
            "{schema:?} must refuse a bad `{field}`: {violations:?}"
        );
    }
    assert!(!Schema::Reading.violations(b"{not json").is_empty());
}
