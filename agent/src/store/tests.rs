//! Golden vectors: every stored row type, encoded from a fixed value and compared with the
//! bytes checked in to `FORMAT.md` (read from the file itself, so the document and the test
//! cannot drift apart), then decoded back. A failure means a stored format changed: give it a
//! new version instead of editing the vector.

use redb::Value;

use super::rows::{DedupeAge, DedupeGroup, WindowShape};
use crate::ingest::{DeadLetter, Dedupe};
use crate::outbox::{OutboxRecord, RecordKind};
use crate::reading::Reading;
use crate::window::{Grouping, LatePolicy, WindowSpec, Windows};

const FORMAT: &str = include_str!("FORMAT.md");

/// The bytes of every `golden NAME = ..` line of FORMAT.md, in order.
fn golden(name: &str) -> Vec<u8> {
    let prefix = format!("golden {name} = ");
    let bytes: Vec<u8> = FORMAT
        .lines()
        .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .flat_map(|hex| hex.split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte in FORMAT.md"))
        .collect();
    assert!(!bytes.is_empty(), "FORMAT.md has no golden vector `{name}`");
    bytes
}

fn redb_bytes<V: Value>(v: &V::SelfType<'_>) -> Vec<u8> {
    V::as_bytes(v).as_ref().to_vec()
}

const TS: u64 = 0x0102_0304_0506_0708;

#[test]
fn u64_keys_and_values_are_redbs_little_endian() {
    assert_eq!(redb_bytes::<u64>(&7), golden("u64"));
    assert_eq!(u64::from_bytes(&golden("u64")), 7);
}

#[test]
fn str_keys_are_their_utf8_bytes() {
    let key = super::meta::NEXT_SEQ;
    assert_eq!(redb_bytes::<&str>(&key), golden("str"));
    assert_eq!(<&str>::from_bytes(&golden("str")), key);
}

#[test]
fn a_reading_row_matches_its_golden_vector() {
    let reading = Reading {
        sensor: "s1".into(),
        ts_ms: TS,
        value: 1.5,
        seq: Some(7),
    };
    assert_eq!(reading.encode(), golden("readings"));
    assert_eq!(Reading::decode(&golden("readings")), Ok(reading));
}

#[test]
fn a_dead_letter_row_matches_its_golden_vector() {
    let dead = DeadLetter::new(TS, "mq", &"bad", &[0xff, 0x00]);
    assert_eq!(dead.encode(), golden("dead_letters"));
    assert_eq!(DeadLetter::decode(&golden("dead_letters")), Ok(dead));
}

#[test]
fn dedupe_keys_match_their_golden_vectors() {
    let frame = Dedupe::Frame {
        device: 1,
        boot: 2,
        seq: 3,
        index: 4,
    };
    let mut reading = Reading {
        sensor: "ab".into(),
        ts_ms: 258,
        value: 0.0,
        seq: None,
    };
    assert_eq!(frame.key(&reading), Some(golden("dedupe_frame")));
    assert_eq!(
        Dedupe::SensorTs.key(&reading),
        Some(golden("dedupe_ts_sensor"))
    );
    assert_eq!(
        Dedupe::SensorTs.legacy_key(&reading),
        Some(golden("dedupe_sensor_ts"))
    );
    assert_eq!(
        Dedupe::SensorSeq.key(&reading),
        Some(golden("dedupe_ts_sensor")),
        "no seq: by time"
    );
    reading.seq = Some(5);
    assert_eq!(
        Dedupe::SensorSeq.key(&reading),
        Some(golden("dedupe_sensor_seq"))
    );
}

#[test]
fn a_dedupe_age_row_matches_its_golden_vector() {
    let key = golden("dedupe_frame");
    let age = DedupeAge {
        inserted_ms: TS,
        key: &key,
    };
    assert_eq!(age.encode(), golden("dedupe_age"));
    assert_eq!(DedupeAge::decode(&golden("dedupe_age")), age);
}

#[test]
fn a_dedupe_group_row_matches_its_golden_vector() {
    let mut group = DedupeGroup::new(TS);
    group.push(&golden("dedupe_frame"), 5);
    group.push(&golden("dedupe_ts_sensor"), 7);
    assert_eq!(group.encode(), golden("dedupe_group"));
    let decoded = DedupeGroup::decode(&golden("dedupe_group")).unwrap();
    assert_eq!(decoded, group);
    assert_eq!(decoded.last_seq, 7);
    let keys: Vec<&[u8]> = decoded.keys().collect();
    assert_eq!(keys, [golden("dedupe_frame"), golden("dedupe_ts_sensor")]);
    // Cut short anywhere, or with a byte after the last key: refused, never misread.
    let bytes = golden("dedupe_group");
    for len in 0..bytes.len() {
        assert!(DedupeGroup::decode(&bytes[..len]).is_err(), "cut at {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(DedupeGroup::decode(&longer).is_err());
}

#[test]
fn a_window_shape_row_matches_its_golden_vector() {
    let shape = WindowShape {
        size_ms: 60_000,
        slide_ms: 15_000,
    };
    assert_eq!(shape.encode(), golden("window_shape"));
    assert_eq!(WindowShape::decode(&golden("window_shape")), Ok(shape));
}

fn tumbling_1s() -> Windows {
    let spec = WindowSpec {
        size_ms: 1_000,
        slide_ms: 1_000,
        allowed_lateness_ms: 0,
        idle_timeout_ms: 60_000,
        late: LatePolicy::Forward,
        revision_horizon_ms: None,
        max_open_windows: 10,
        group_by: Grouping::Sensor,
    };
    Windows::new(spec, "p", "a").expect("spec")
}

#[test]
fn a_window_series_row_matches_its_golden_vector() {
    let key = ("p", "s1");
    assert_eq!(
        redb_bytes::<(&str, &str)>(&key),
        golden("window_series_key")
    );
    assert_eq!(
        <(&str, &str)>::from_bytes(&golden("window_series_key")),
        key
    );

    let mut windows = tumbling_1s();
    let reading = Reading {
        sensor: "s1".into(),
        ts_ms: 1_500,
        value: 2.0,
        seq: None,
    };
    let mut out = Vec::new();
    windows.push(&reading, 0, &mut out);
    assert!(out.is_empty(), "nothing closes yet");
    let rows = windows.take_dirty();
    assert_eq!(rows, vec![("s1".to_owned(), golden("window_series"))]);

    let mut restored = tumbling_1s();
    restored
        .restore_series("s1", &golden("window_series"), 0)
        .expect("the golden row decodes");
    assert_eq!(restored.encode_state(), windows.encode_state());
}

#[test]
fn an_outbox_row_matches_its_golden_vector() {
    let record = OutboxRecord {
        kind: RecordKind::Partial,
        created_ms: TS,
        route: "p".into(),
        key: b"k1".to_vec(),
        payload: vec![0xaa, 0xbb],
    };
    assert_eq!(record.encode().expect("fits"), golden("outbox"));
    assert_eq!(OutboxRecord::decode(&golden("outbox")), Ok(record));
}

#[test]
fn a_forward_meta_row_matches_its_golden_vector() {
    let id: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(redb_bytes::<&[u8]>(&id.as_slice()), golden("forward_meta"));
    assert_eq!(<&[u8]>::from_bytes(&golden("forward_meta")), id);
}

#[test]
fn every_golden_vector_in_format_md_is_under_test() {
    let tested = [
        "u64",
        "str",
        "readings",
        "dead_letters",
        "dedupe_frame",
        "dedupe_sensor_ts",
        "dedupe_sensor_seq",
        "dedupe_ts_sensor",
        "dedupe_age",
        "dedupe_group",
        "window_shape",
        "window_series_key",
        "window_series",
        "outbox",
        "forward_meta",
        "source_state_sparkplug",
        "source_state_mqtt_subscriptions",
    ];
    for line in FORMAT.lines() {
        if let Some(rest) = line.trim().strip_prefix("golden ") {
            let name = rest.split(" = ").next().unwrap_or_default();
            assert!(tested.contains(&name), "golden `{name}` has no test");
        }
    }
}

#[test]
fn a_dead_letter_with_damaged_bytes_is_an_error_not_a_panic() {
    let bytes = golden("dead_letters");
    for cut in 0..bytes.len() {
        assert!(DeadLetter::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(DeadLetter::decode(&padded).is_err());
}

proptest::proptest! {
    /// The fuzz target's property (`agent/fuzz`, `stored_records`), run here on stable: a
    /// damaged dead letter is an error, never a panic, and whatever decodes re-encodes to the
    /// same bytes.
    #[test]
    fn arbitrary_bytes_never_panic_the_dead_letter_decoder(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        if let Ok(dead) = DeadLetter::decode(&bytes) {
            proptest::prop_assert_eq!(dead.encode(), bytes);
        }
    }

    #[test]
    fn any_dead_letter_round_trips(
        received_ms: u64,
        source in "[a-z:-]{0,20}",
        reason in "\\PC{0,40}",
        payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2_000),
    ) {
        let dead = DeadLetter::new(received_ms, &source, &reason, &payload);
        proptest::prop_assert_eq!(DeadLetter::decode(&dead.encode()), Ok(dead));
    }
}

/// Regression: the retry rule for redb errors existed five times and the copies disagreed (the
/// ingest log retried a poisoned lock, the stage and the forwarder did not). Every stage's
/// error now delegates to [`super::StoreError::is_retryable`].
#[test]
fn every_stage_error_retries_the_database_by_the_one_rule() {
    use crate::forward::ForwardError;
    use crate::ingest::IngestError;
    use crate::outbox::OutboxError;
    use crate::stage::StageError;
    use redb::StorageError;

    let cases: [(fn() -> StorageError, bool); 4] = [
        (
            || StorageError::Io(std::io::Error::other("disk full")),
            true,
        ),
        (|| StorageError::PreviousIo, true),
        (
            || StorageError::LockPoisoned(std::panic::Location::caller()),
            false,
        ),
        (|| StorageError::Corrupted("bad page".into()), false),
    ];
    for (make, retryable) in cases {
        let name = make().to_string();
        assert_eq!(
            super::StoreError::from(make()).is_retryable(),
            retryable,
            "{name}"
        );
        assert_eq!(
            IngestError::from(make()).is_retryable(),
            retryable,
            "{name}"
        );
        assert_eq!(
            IngestError::from(make()).needs_reopen(),
            retryable,
            "{name}"
        );
        assert_eq!(
            OutboxError::from(make()).is_retryable(),
            retryable,
            "{name}"
        );
        assert_eq!(StageError::from(make()).is_retryable(), retryable, "{name}");
        let via_outbox = StageError::Outbox(OutboxError::from(make()));
        assert_eq!(via_outbox.is_retryable(), retryable, "{name}");
        assert_eq!(
            ForwardError::from(make()).is_retryable(),
            retryable,
            "{name}"
        );
        let via_outbox = ForwardError::Outbox(OutboxError::from(make()));
        assert_eq!(via_outbox.is_retryable(), retryable, "{name}");
    }
}

#[test]
fn a_sparkplug_node_record_matches_its_golden_vector() {
    use crate::source::sparkplug::aliases::{Declared, NodeRecord, Table};
    let record = NodeRecord {
        node: Table::new(vec![Declared {
            name: "t".into(),
            alias: Some(5),
            datatype: 10,
        }]),
        devices: [(
            "d".to_owned(),
            Table::new(vec![Declared {
                name: "r".into(),
                alias: None,
                datatype: 9,
            }]),
        )]
        .into(),
    };
    assert_eq!(record.encode(), golden("source_state_sparkplug"));
    assert_eq!(
        NodeRecord::decode(&golden("source_state_sparkplug")),
        Ok(record)
    );
}

#[test]
fn an_mqtt_subscriptions_record_matches_its_golden_vector() {
    use crate::source::mqtt::subscriptions::Record;
    let record = Record {
        subscribed: vec!["a/+".into()],
        unsubscribed: vec!["b/#".into()],
    };
    assert_eq!(record.encode(), golden("source_state_mqtt_subscriptions"));
    assert_eq!(
        Record::decode(&golden("source_state_mqtt_subscriptions")),
        Ok(record)
    );
}
