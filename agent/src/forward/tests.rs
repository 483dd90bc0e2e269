//! Unit tests of the forwarder's pure parts: marker encoding (golden vector), routing,
//! headers, client settings, error classes, the instance id. The Kafka behaviour is tested
//! against the real broker in `tests/tests/forward_*.rs`.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;

use super::error::{BadMarker, ForwardError};
use super::producer::{producer_config, reader_config, transactional_id};
use super::progress::{instance_id, InstanceId, Marker};
use super::route::{headers, schema, Routes};
use crate::config::{Config, KafkaSection};
use crate::outbox::RecordKind;

fn kafka_config(extra: &str) -> KafkaSection {
    let text = format!(
        "[agent]\nid = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[[pipeline]]\nname = \"temps\"\nsensors = [\"*\"]\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n{extra}"
    );
    Config::from_toml(Path::new("test.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .kafka
        .expect("a [kafka] table")
}

fn config_error(extra: &str) -> String {
    let text = format!(
        "[agent]\nid = \"gw-1\"\ndata_dir = \"/tmp/x\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n{extra}"
    );
    match Config::from_toml(Path::new("test.toml"), &text) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_marker_encodes_to_the_golden_bytes_and_back() {
    let marker = Marker {
        agent: "gw".to_owned(),
        instance: InstanceId([0xAB; 16]),
        last_seq: 0x0102_0304_0506_0708,
        committed_ms: 1_700_000_000_000,
    };
    let mut golden = vec![1u8, 2, 0, b'g', b'w'];
    golden.extend_from_slice(&[0xAB; 16]);
    golden.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
    golden.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    assert_eq!(marker.encode(), golden);
    assert_eq!(Marker::decode(&golden), Ok(marker));
}

#[test]
fn a_marker_of_an_unknown_version_or_wrong_length_is_refused() {
    let good = Marker {
        agent: "a".to_owned(),
        instance: InstanceId([1; 16]),
        last_seq: 9,
        committed_ms: 1,
    }
    .encode();
    let mut v2 = good.clone();
    v2[0] = 2;
    assert_eq!(Marker::decode(&v2), Err(BadMarker::Version(2)));
    assert_eq!(
        Marker::decode(&good[..good.len() - 1]),
        Err(BadMarker::Truncated)
    );
    let mut long = good;
    long.push(0);
    assert_eq!(Marker::decode(&long), Err(BadMarker::Trailing));
    assert_eq!(Marker::decode(&[]), Err(BadMarker::Truncated));
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Marker::decode(&bytes);
    }

    #[test]
    fn every_marker_round_trips(agent in "[a-z0-9._-]{0,40}", id in any::<[u8; 16]>(), seq in any::<u64>(), ms in any::<u64>()) {
        let m = Marker { agent, instance: InstanceId(id), last_seq: seq, committed_ms: ms };
        prop_assert_eq!(Marker::decode(&m.encode()), Ok(m));
    }
}

#[test]
fn topics_follow_kind_and_expand_the_pipeline() {
    let kafka = kafka_config(
        "[kafka.topics]\npartials = \"p.{pipeline}\"\nreadings = \"raw\"\nprogress = \"prog\"\n",
    );
    let mut routes = Routes::new(&kafka.topics);
    assert_eq!(routes.topic(RecordKind::Partial, "temps"), "p.temps");
    assert_eq!(routes.topic(RecordKind::Partial, "other"), "p.other");
    assert_eq!(routes.topic(RecordKind::Reading, "temps"), "raw");
    assert_eq!(routes.topic(RecordKind::Late, "temps"), "edge.late");
    assert_eq!(
        routes.topic(RecordKind::DeadLetter, ""),
        "edge.dead-letters"
    );
    assert_eq!(routes.progress(), "prog");
    assert_eq!(
        routes.known_topics(["temps"].into_iter()),
        vec!["edge.dead-letters", "edge.late", "p.temps", "prog", "raw"]
    );
}

#[test]
fn every_record_carries_agent_seq_and_schema_headers() {
    let h = headers("gw-1", 42, schema(RecordKind::Partial));
    let pairs: Vec<(String, Vec<u8>)> = h
        .iter()
        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("agent".to_owned(), b"gw-1".to_vec()),
            ("seq".to_owned(), b"42".to_vec()),
            ("schema".to_owned(), b"edge.partial".to_vec()),
        ]
    );
}

#[test]
fn the_producer_is_transactional_idempotent_and_zstd_unless_passthrough_overrides_tuning() {
    let kafka = kafka_config(
        "transaction_timeout_ms = 20000\n[kafka.client]\n\"compression.type\" = \"lz4\"\n\"security.protocol\" = \"SSL\"\n",
    );
    let config = producer_config(&kafka, "gw-1");
    assert_eq!(config.get("transactional.id"), Some("edge-agent.gw-1"));
    assert_eq!(transactional_id("gw-1"), "edge-agent.gw-1");
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("acks"), Some("all"));
    assert_eq!(config.get("transaction.timeout.ms"), Some("20000"));
    assert_eq!(config.get("message.timeout.ms"), Some("20000"));
    assert_eq!(config.get("compression.type"), Some("lz4"));
    assert_eq!(config.get("security.protocol"), Some("SSL"));
    let reader = reader_config(&kafka, "gw-1");
    assert_eq!(reader.get("security.protocol"), Some("SSL"));
    assert_eq!(reader.get("compression.type"), None);
    assert_eq!(
        producer_config(&kafka_config(""), "gw-1").get("compression.type"),
        Some("zstd")
    );
}

#[test]
fn every_client_retries_a_lost_broker_at_least_once_a_second_unless_passthrough_says_otherwise() {
    let ours = kafka_config("");
    for config in [producer_config(&ours, "gw-1"), reader_config(&ours, "gw-1")] {
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("1000"));
    }
    let theirs = kafka_config("[kafka.client]\n\"reconnect.backoff.max.ms\" = \"30000\"\n");
    for config in [
        producer_config(&theirs, "gw-1"),
        reader_config(&theirs, "gw-1"),
    ] {
        assert_eq!(config.get("reconnect.backoff.max.ms"), Some("30000"));
    }
}

#[test]
fn settings_exactly_once_depends_on_cannot_be_passed_through() {
    let e = config_error("[kafka.client]\n\"enable.idempotence\" = \"false\"\n");
    assert!(
        e.contains("enable.idempotence") && e.contains("reserved"),
        "{e}"
    );
    let e = config_error("[kafka.client]\n\"transactional.id\" = \"x\"\n");
    assert!(e.contains("transactional.id"), "{e}");
}

#[test]
fn bad_kafka_settings_are_refused_with_their_line() {
    let e = config_error("[kafka.topics]\nprogress = \"has space\"\n");
    assert!(e.contains(":7:") && e.contains("topics.progress"), "{e}");
    let e = config_error("transaction_timeout_ms = 10\n");
    assert!(e.contains("transaction_timeout_ms"), "{e}");
    let e = config_error("bogus = 1\n");
    assert!(e.contains("bogus"), "{e}");
    let e = config_error("[kafka.topics]\nprogress = \"p.{pipeline}\"\n");
    assert!(e.contains("topics"), "{e}");
}

#[test]
fn fencing_and_foreign_progress_are_fatal_and_broker_trouble_is_retryable() {
    let fenced = ForwardError::Fenced {
        agent: "gw-1".to_owned(),
        transactional_id: "edge-agent.gw-1".to_owned(),
    };
    assert!(!fenced.is_retryable());
    assert!(fenced
        .to_string()
        .starts_with("fenced: another agent with id gw-1 took over"));
    let foreign = ForwardError::ForeignInstance {
        agent: "gw-1".to_owned(),
        topic: "edge.progress".to_owned(),
        ours: InstanceId([1; 16]),
        theirs: InstanceId([2; 16]),
    };
    assert!(!foreign.is_retryable());
    let text = foreign.to_string();
    assert!(
        text.contains(&"01".repeat(16)) && text.contains(&"02".repeat(16)),
        "{text}"
    );
    assert!(!ForwardError::MissingTopic {
        topic: "t".to_owned()
    }
    .is_retryable());
    let down = ForwardError::Kafka {
        during: "committing",
        source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
    };
    assert!(down.is_retryable());
    assert!(ForwardError::Aborted(Box::new(down)).is_retryable());
    assert!(ForwardError::is_fenced_code(
        RDKafkaErrorCode::ProducerFenced
    ));
    assert!(!ForwardError::is_fenced_code(
        RDKafkaErrorCode::RequestTimedOut
    ));
}

#[test]
fn the_instance_id_is_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.redb");
    let first = {
        let db = Arc::new(redb::Database::create(&path).expect("db"));
        let a = instance_id(&db).expect("made");
        assert_eq!(instance_id(&db).expect("read"), a);
        a
    };
    let db = redb::Database::create(&path).expect("reopen");
    assert_eq!(instance_id(&db).expect("read after reopen"), first);
    let other = redb::Database::create(dir.path().join("other.redb")).expect("db");
    assert_ne!(instance_id(&other).expect("made"), first);
}

fn outbox_batch(records: usize, payload: usize) -> Vec<(u64, crate::outbox::OutboxRecord)> {
    (0..records as u64)
        .map(|seq| {
            let record = crate::outbox::OutboxRecord {
                kind: RecordKind::Reading,
                created_ms: 0,
                route: "raw".into(),
                key: Vec::new(),
                payload: vec![0; payload],
            };
            (seq + 1, record)
        })
        .collect()
}

#[test]
fn transactions_are_sized_by_records_bytes_and_time() {
    use std::time::{Duration, Instant};
    let interval = Duration::from_millis(25);
    let just_now = Some(Instant::now());
    let small = outbox_batch(3, 10);
    // A partial batch soon after the last transaction began waits for the rest of the interval.
    let wait = super::gather_for(&small, just_now, interval, 100, 1000).expect("waits");
    assert!(
        wait <= interval && wait > Duration::from_millis(5),
        "{wait:?}"
    );
    // Nothing to wait for: no transaction yet, the interval passed, or nothing to send.
    assert_eq!(super::gather_for(&small, None, interval, 100, 1000), None);
    let long_ago = Instant::now().checked_sub(Duration::from_millis(30));
    assert_eq!(
        super::gather_for(&small, long_ago, interval, 100, 1000),
        None
    );
    assert_eq!(super::gather_for(&[], just_now, interval, 100, 1000), None);
    // A full batch, by records or by bytes, goes at once: a backlog drains without waiting.
    assert_eq!(super::gather_for(&small, just_now, interval, 3, 1000), None);
    assert_eq!(super::gather_for(&small, just_now, interval, 100, 30), None);
}
