//! The Sparkplug B source without a broker: births, data by alias and by name, a rebirth, a
//! restart from the stored records, the bounds, and inputs that must never panic.

use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;

use super::aliases::{key, NodeRecord};
use super::metrics::Metrics;
use super::proto::{data_type, Metric, Payload, Value};
use super::state::{MetricError, Nodes, MAX_NODES};
use super::*;
use crate::config::fixtures::config;

const CONFIG: &str = r#"
[agent]
id = "gw"
data_dir = "/unused"
[[mqtt]]
name = "sp"
url = "mqtt://127.0.0.1:1"
client_id = "agent-1"
payload = { format = "sparkplug_b" }
subscribe = [{ topic = "spBv1.0/#", qos = 1 }]
[[sensor]]
source = "sp"
topic = "spBv1.0/{group}/DDATA/{node}/{device}"
id = "{group}.{node}.{device}.{payload}"
[[sensor]]
source = "sp"
topic = "spBv1.0/{group}/NDATA/{node}"
id = "{group}.{node}.{payload}"
"#;

const MAX: usize = 64 * 1024;

fn mapper() -> Mapper {
    Mapper::new(&config(CONFIG))
}

fn source() -> (Sparkplug, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let s = Sparkplug::new("sp", MAX, Nodes::default(), metrics.clone());
    (s, metrics)
}

fn birth_metric(name: &str, alias: u64, datatype: u32, value: Value) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Metric::default()
    }
}

fn by_alias(alias: u64, ts: Option<u64>, value: Value) -> Metric {
    Metric {
        alias: Some(alias),
        timestamp: ts,
        value: Some(value),
        ..Metric::default()
    }
}

fn body(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1_000),
        metrics,
        seq: Some(seq),
    }
    .encode_to_vec()
}

fn readings(parts: &Parts) -> Vec<(String, u64, f64)> {
    parts
        .readings
        .iter()
        .map(|(r, _)| (r.sensor.clone(), r.ts_ms, r.value))
        .collect()
}

fn nbirth(seq: u64) -> Vec<u8> {
    body(
        seq,
        vec![
            birth_metric("temp", 1, data_type::DOUBLE, Value::Double(0.0)),
            birth_metric("count", 2, data_type::INT32, Value::Int(0)),
        ],
    )
}

fn dbirth(seq: u64) -> Vec<u8> {
    body(
        seq,
        vec![birth_metric("rpm", 10, data_type::FLOAT, Value::Float(0.0))],
    )
}

#[test]
fn data_by_alias_after_the_births_maps_to_the_named_sensors() {
    let (sp, metrics) = source();
    let m = mapper();
    let n = sp.parts(&m, "spBv1.0/g/NBIRTH/gw1", &nbirth(0), 5, Dedupe::SensorTs);
    assert!(
        n.readings.is_empty() && n.dead_letters.is_empty(),
        "births only declare"
    );
    assert_eq!(n.state.len(), 1);
    assert_eq!(n.state[0].key, "sparkplug/sp/g/gw1");
    let d = sp.parts(
        &m,
        "spBv1.0/g/DBIRTH/gw1/pump",
        &dbirth(1),
        5,
        Dedupe::SensorTs,
    );
    assert_eq!(d.state.len(), 1);
    let data = body(
        2,
        vec![
            by_alias(1, Some(77), Value::Double(21.5)),
            by_alias(2, None, Value::Int(-3i32 as u32)),
        ],
    );
    let p = sp.parts(&m, "spBv1.0/g/NDATA/gw1", &data, 5, Dedupe::SensorTs);
    assert_eq!(
        readings(&p),
        [
            ("g.gw1.temp".to_owned(), 77, 21.5),
            ("g.gw1.count".to_owned(), 1_000, -3.0)
        ]
    );
    let data = body(3, vec![by_alias(10, None, Value::Float(1500.0))]);
    let p = sp.parts(&m, "spBv1.0/g/DDATA/gw1/pump", &data, 5, Dedupe::SensorTs);
    assert_eq!(readings(&p), [("g.gw1.pump.rpm".to_owned(), 1_000, 1500.0)]);
    assert!(p.state.is_empty(), "data writes no aliases");
    assert_eq!(metrics.get("sp", "g", "gw1"), [2, 0, 0, 3]);
}

#[test]
fn a_rebirth_replaces_the_node_aliases_and_forgets_its_devices() {
    let (sp, _) = source();
    let m = mapper();
    sp.parts(&m, "spBv1.0/g/NBIRTH/gw1", &nbirth(0), 5, Dedupe::SensorTs);
    sp.parts(
        &m,
        "spBv1.0/g/DBIRTH/gw1/pump",
        &dbirth(1),
        5,
        Dedupe::SensorTs,
    );
    // The new session swaps the aliases of temp and count.
    let rebirth = body(
        0,
        vec![
            birth_metric("temp", 2, data_type::DOUBLE, Value::Double(0.0)),
            birth_metric("count", 1, data_type::INT32, Value::Int(0)),
        ],
    );
    sp.parts(&m, "spBv1.0/g/NBIRTH/gw1", &rebirth, 5, Dedupe::SensorTs);
    let data = body(1, vec![by_alias(2, None, Value::Double(9.0))]);
    let p = sp.parts(&m, "spBv1.0/g/NDATA/gw1", &data, 5, Dedupe::SensorTs);
    assert_eq!(readings(&p), [("g.gw1.temp".to_owned(), 1_000, 9.0)]);
    let data = body(2, vec![by_alias(10, None, Value::Float(1.0))]);
    let p = sp.parts(&m, "spBv1.0/g/DDATA/gw1/pump", &data, 5, Dedupe::SensorTs);
    assert!(p.readings.is_empty(), "the device was not born again");
    assert_eq!(p.dead_letters.len(), 1);
    assert!(
        p.dead_letters[0].reason.contains("alias 10 is unknown"),
        "{:?}",
        p.dead_letters
    );
}

#[test]
fn the_stored_record_restores_the_aliases_after_a_restart() {
    let (sp, _) = source();
    let m = mapper();
    let mut stored = Vec::new();
    for (topic, b) in [
        ("spBv1.0/g/NBIRTH/gw1", nbirth(0)),
        ("spBv1.0/g/DBIRTH/gw1/pump", dbirth(1)),
    ] {
        stored.extend(sp.parts(&m, topic, &b, 5, Dedupe::SensorTs).state);
    }
    // The last write of a key is what the database holds.
    let last = stored.last().unwrap();
    assert_eq!(last.key, key("sp", "g", "gw1"));
    let record = NodeRecord::decode(&last.value).unwrap();
    assert_eq!(record.metrics(), 3);
    let restarted = Sparkplug::new(
        "sp",
        MAX,
        Nodes::restore([(("g".to_owned(), "gw1".to_owned()), record)]),
        Arc::new(Metrics::default()),
    );
    let data = body(9, vec![by_alias(10, None, Value::Float(3.0))]);
    let p = restarted.parts(&m, "spBv1.0/g/DDATA/gw1/pump", &data, 5, Dedupe::SensorTs);
    assert_eq!(readings(&p), [("g.gw1.pump.rpm".to_owned(), 1_000, 3.0)]);
}

#[test]
fn the_alias_table_survives_a_real_database_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
    let (sp, _) = source();
    let parts = sp.parts(
        &mapper(),
        "spBv1.0/g/NBIRTH/gw1",
        &nbirth(0),
        5,
        Dedupe::SensorTs,
    );
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(crate::store::tables::SOURCE_STATE).unwrap();
        for w in &parts.state {
            t.insert(w.key.as_str(), w.value.as_slice()).unwrap();
        }
        // Another source's row must not be read as this source's.
        t.insert("sparkplug/sp2/g/gw1", [0u8].as_slice()).unwrap();
    }
    txn.commit().unwrap();
    let loaded = Sparkplug::open(&db, "sp", MAX, Arc::new(Metrics::default())).unwrap();
    let data = body(1, vec![by_alias(1, None, Value::Double(4.0))]);
    let p = loaded.parts(&mapper(), "spBv1.0/g/NDATA/gw1", &data, 5, Dedupe::SensorTs);
    assert_eq!(readings(&p), [("g.gw1.temp".to_owned(), 1_000, 4.0)]);
}

#[test]
fn unknown_aliases_and_non_numeric_values_are_dead_letters_and_the_rest_still_reads() {
    let (sp, _) = source();
    let m = mapper();
    let birth = body(
        0,
        vec![
            birth_metric("temp", 1, data_type::DOUBLE, Value::Double(0.0)),
            birth_metric("label", 3, 12, Value::String("x".into())),
        ],
    );
    sp.parts(&m, "spBv1.0/g/NBIRTH/gw1", &birth, 5, Dedupe::SensorTs);
    let null = Metric {
        alias: Some(1),
        is_null: Some(true),
        ..Metric::default()
    };
    let data = body(
        1,
        vec![
            by_alias(99, None, Value::Double(1.0)),
            by_alias(3, None, Value::String("hello".into())),
            null,
            Metric::default(),
            by_alias(1, None, Value::Double(2.0)),
        ],
    );
    let p = sp.parts(&m, "spBv1.0/g/NDATA/gw1", &data, 5, Dedupe::SensorTs);
    assert_eq!(readings(&p), [("g.gw1.temp".to_owned(), 1_000, 2.0)]);
    let reasons: Vec<&str> = p.dead_letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("alias 99 is unknown"));
    assert!(reasons[1].contains("`label` is not numeric (a string)"));
    assert!(reasons[2].contains("`temp` is null"));
    assert!(reasons[3].contains("neither name nor alias"));
}

#[test]
fn garbage_and_foreign_topics_are_one_dead_letter_each() {
    let (sp, _) = source();
    let m = mapper();
    let p = sp.parts(
        &m,
        "spBv1.0/g/NDATA/gw1",
        &[0xff, 0xff, 0xff],
        5,
        Dedupe::SensorTs,
    );
    assert_eq!(p.dead_letters.len(), 1);
    assert!(p.dead_letters[0]
        .reason
        .contains("not a Sparkplug B protobuf payload"));
    let p = sp.parts(&m, "plant/x", &nbirth(0), 5, Dedupe::SensorTs);
    assert!(p.dead_letters[0].reason.contains("not a Sparkplug B topic"));
    let p = sp.parts(&m, "spBv1.0/g/NCMD/gw1", &[0xff], 5, Dedupe::SensorTs);
    assert!(
        p.dead_letters.is_empty() && p.readings.is_empty(),
        "commands are not data"
    );
}

#[test]
fn signed_integers_are_read_with_the_birth_datatype() {
    let (sp, _) = source();
    let m = mapper();
    let birth = body(
        0,
        vec![
            birth_metric("i8", 1, data_type::INT8, Value::Int(0)),
            birth_metric("i16", 2, data_type::INT16, Value::Int(0)),
            birth_metric("i64", 3, data_type::INT64, Value::Long(0)),
            birth_metric("u32", 4, data_type::UINT32, Value::Int(0)),
            birth_metric("on", 5, data_type::BOOLEAN, Value::Boolean(false)),
        ],
    );
    sp.parts(&m, "spBv1.0/g/NBIRTH/gw1", &birth, 5, Dedupe::SensorTs);
    let data = body(
        1,
        vec![
            by_alias(1, None, Value::Int(0xff)),
            by_alias(2, None, Value::Int(0xffff_8000)),
            by_alias(3, None, Value::Long(-5i64 as u64)),
            by_alias(4, None, Value::Int(u32::MAX)),
            by_alias(5, None, Value::Boolean(true)),
        ],
    );
    let p = sp.parts(&m, "spBv1.0/g/NDATA/gw1", &data, 5, Dedupe::SensorTs);
    let values: Vec<f64> = readings(&p).into_iter().map(|r| r.2).collect();
    assert_eq!(values, [-1.0, -32768.0, -5.0, 4_294_967_295.0, 1.0]);
}

#[test]
fn seq_gaps_are_counted_per_node_and_a_repeat_is_not_a_gap() {
    let (sp, metrics) = source();
    let m = mapper();
    sp.parts(
        &m,
        "spBv1.0/g/NBIRTH/gw1",
        &nbirth(254),
        5,
        Dedupe::SensorTs,
    );
    sp.parts(&m, "spBv1.0/g/NBIRTH/gw2", &nbirth(0), 5, Dedupe::SensorTs);
    let data = |seq| body(seq, vec![by_alias(1, None, Value::Double(1.0))]);
    for (node, seq) in [("gw1", 255), ("gw1", 0), ("gw1", 0), ("gw1", 3), ("gw2", 1)] {
        sp.parts(
            &m,
            &format!("spBv1.0/g/NDATA/{node}"),
            &data(seq),
            5,
            Dedupe::SensorTs,
        );
    }
    assert_eq!(
        metrics.get("sp", "g", "gw1")[2],
        2,
        "1 and 2 missing; 255 -> 0 wraps"
    );
    assert_eq!(metrics.get("sp", "g", "gw2")[2], 0);
    let death = Payload::default().encode_to_vec();
    sp.parts(&m, "spBv1.0/g/NDEATH/gw1", &death, 5, Dedupe::SensorTs);
    sp.parts(&m, "spBv1.0/g/DDEATH/gw2/pump", &death, 5, Dedupe::SensorTs);
    assert_eq!(metrics.get("sp", "g", "gw1")[1], 1);
    assert_eq!(metrics.get("sp", "g", "gw2")[1], 1);
}

#[test]
fn a_birth_past_the_node_limit_is_refused_and_counts_nothing() {
    let mut nodes = Nodes::default();
    for i in 0..MAX_NODES {
        let e = nodes.handle(&format!("spBv1.0/g/NBIRTH/n{i}"), &nbirth(0), MAX);
        assert!(e.errors.is_empty());
    }
    let e = nodes.handle("spBv1.0/g/NBIRTH/one-more", &nbirth(0), MAX);
    assert!(matches!(e.errors[..], [MetricError::TooManyNodes { .. }]));
    assert!(!e.tracked && e.write.is_none());
    assert_eq!(nodes.len(), MAX_NODES);
}

#[test]
fn a_birth_with_a_name_too_long_clears_the_old_aliases() {
    let mut nodes = Nodes::default();
    nodes.handle("spBv1.0/g/NBIRTH/n", &nbirth(0), MAX);
    let long = "x".repeat(aliases::MAX_NAME_LEN + 1);
    let bad = body(
        0,
        vec![birth_metric(
            &long,
            1,
            data_type::DOUBLE,
            Value::Double(0.0),
        )],
    );
    let e = nodes.handle("spBv1.0/g/NBIRTH/n", &bad, MAX);
    assert!(matches!(e.errors[..], [MetricError::NameTooLong { .. }]));
    assert_eq!(nodes.record("g", "n").map(NodeRecord::metrics), Some(0));
    let e = nodes.handle(
        "spBv1.0/g/NDATA/n",
        &body(1, vec![by_alias(1, None, Value::Double(1.0))]),
        MAX,
    );
    assert!(e.values.is_empty(), "old alias 1 no longer resolves");
}

#[test]
fn a_node_record_round_trips_and_damaged_bytes_are_errors() {
    let mut nodes = Nodes::default();
    nodes.handle("spBv1.0/g/NBIRTH/n", &nbirth(0), MAX);
    let e = nodes.handle("spBv1.0/g/DBIRTH/n/d", &dbirth(1), MAX);
    let bytes = e.write.unwrap();
    let record = NodeRecord::decode(&bytes).unwrap();
    assert_eq!(record.encode(), bytes);
    for cut in 0..bytes.len() {
        assert!(NodeRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert!(NodeRecord::decode(&v2).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_on_any_sparkplug_topic_never_panic(
        topic in prop::sample::select(vec![
            "spBv1.0/g/NBIRTH/n", "spBv1.0/g/DBIRTH/n/d", "spBv1.0/g/NDATA/n",
            "spBv1.0/g/DDATA/n/d", "spBv1.0/g/NDEATH/n", "spBv1.0/g/DDEATH/n/d", "x/y",
        ]),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let (sp, _) = source();
        let _ = sp.parts(&mapper(), topic, &body, 5, Dedupe::SensorTs);
    }

    #[test]
    fn arbitrary_bytes_as_a_node_record_decode_or_fail_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = NodeRecord::decode(&bytes);
    }

    #[test]
    fn any_sequence_of_well_formed_messages_never_panics(
        steps in prop::collection::vec(
            (0usize..6, 0u64..300, prop::collection::vec((0u64..6, any::<u32>(), 0u32..20, any::<bool>()), 0..6)),
            0..20,
        ),
    ) {
        let kinds = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"];
        let (sp, _) = source();
        let m = mapper();
        for (kind, seq, metrics) in steps {
            let topic = match kind {
                1 | 3 | 5 => format!("spBv1.0/g/{}/n/d", kinds[kind]),
                _ => format!("spBv1.0/g/{}/n", kinds[kind]),
            };
            let metrics = metrics
                .into_iter()
                .map(|(alias, v, dt, named)| Metric {
                    name: named.then(|| format!("m{alias}")),
                    alias: Some(alias),
                    datatype: Some(dt),
                    value: Some(match dt % 4 {
                        0 => Value::Int(v),
                        1 => Value::Long(u64::from(v) << 20),
                        2 => Value::Float(f32::from_bits(v)),
                        _ => Value::Double(f64::from(v)),
                    }),
                    ..Metric::default()
                })
                .collect();
            let parts = sp.parts(&m, &topic, &body(seq, metrics), 5, Dedupe::SensorTs);
            for (r, _) in &parts.readings {
                prop_assert!(r.value.is_finite());
            }
        }
    }
}
