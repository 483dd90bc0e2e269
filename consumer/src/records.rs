//! Input and output records of the loop: decoding a partial (postcard envelope or JSON),
//! grouping and merging it, and the dead letter of a record that cannot be merged. No Kafka
//! calls.

use edge_protocol::contract::{header, schema};
use edge_protocol::partial::Partial;
use rdkafka::message::{Header, OwnedHeaders};

use crate::config::Config;
use crate::group::Grouping;
use crate::merge::PartitionState;

/// `schema` header of dead letters.
pub const DEAD_LETTER_SCHEMA: &str = schema::DEAD_LETTER;

/// One input record, owned.
pub(crate) struct Rec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub ts_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A dead letter, owned until the transaction produces it (its topic borrowed from the config;
/// the state's changes are produced straight from the state, see `run::produce_changes`).
pub(crate) struct Out<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// Decodes, groups and merges one record; the dead-letter reason when it cannot be merged.
pub(crate) fn merge_one(
    state: &mut PartitionState,
    grouping: &Grouping,
    rec: &Rec,
) -> Result<(), String> {
    if let Some((_, found)) = rec.headers.iter().find(|(k, _)| k == header::SCHEMA) {
        if found != schema::PARTIAL.as_bytes() {
            return Err(format!(
                "unexpected schema header {:?}",
                String::from_utf8_lossy(found)
            ));
        }
    }
    let payload = rec.payload.as_deref().ok_or("no payload")?;
    let partial = decode(payload)?;
    let group = grouping
        .group(&partial.series)
        .ok_or("no grouping rule matches the series and unmatched = \"dead_letter\"")?;
    let ts = rec.ts_ms.ok_or("the record has no timestamp")?;
    state.apply(&group, &partial, ts).map_err(|e| e.to_string())
}

/// The version-1 postcard envelope, or the JSON form (a payload starting with `{`).
pub fn decode(payload: &[u8]) -> Result<Partial, String> {
    if payload.first() == Some(&b'{') {
        let p: Partial =
            serde_json::from_slice(payload).map_err(|e| format!("malformed JSON partial: {e}"))?;
        if p.window_start_ms >= p.window_end_ms {
            return Err("window start is not before its end".into());
        }
        p.aggregate
            .validate()
            .map_err(|e| format!("partial's aggregate: {e}"))?;
        return Ok(p);
    }
    Partial::decode(payload).map_err(|e| e.to_string())
}

pub(crate) fn dead_letter<'a>(config: &'a Config, rec: &Rec, reason: &str) -> Out<'a> {
    let partition = rec.partition.to_string();
    let offset = rec.offset.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: header::SCHEMA,
            value: Some(DEAD_LETTER_SCHEMA),
        })
        .insert(Header {
            key: header::REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: header::SOURCE_TOPIC,
            value: Some(&rec.topic),
        })
        .insert(Header {
            key: header::SOURCE_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: header::SOURCE_OFFSET,
            value: Some(&offset),
        });
    for (k, v) in &rec.headers {
        if k == header::AGENT || k == header::SEQ {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
    }
    Out {
        topic: config.topics.dead_letters.get_ref(),
        partition: None,
        key: rec.key.clone().unwrap_or_default(),
        payload: rec.payload.clone(),
        headers: Some(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Settings;
    use edge_protocol::aggregate::Aggregate;

    fn sample() -> Partial {
        let mut aggregate = Aggregate::new();
        aggregate.add(5, 2.5).unwrap();
        Partial {
            series: "s".try_into().unwrap(),
            window_start_ms: 0,
            window_end_ms: 10,
            agent: "gw".try_into().unwrap(),
            watermark_ms: 10,
            revision: 0,
            aggregate,
        }
    }

    fn rec(payload: Vec<u8>, schema: &str) -> Rec {
        Rec {
            topic: "in".into(),
            partition: 0,
            offset: 7,
            ts_ms: Some(1),
            key: Some(b"s".to_vec()),
            payload: Some(payload),
            headers: vec![("schema".into(), schema.as_bytes().to_vec())],
        }
    }

    fn state() -> PartitionState {
        PartitionState::new(Settings {
            rollup_ms: None,
            idle_timeout_ms: 1000,
            revisions: true,
            horizon_ms: 1000,
            max_open_windows: 10,
            max_finalized_windows: 10,
            max_sources: 10,
        })
    }

    #[test]
    fn the_json_form_decodes_like_the_postcard_envelope() {
        let json = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(decode(&json), Ok(sample()));
        let mut buf = [0u8; edge_protocol::partial::MAX_ENCODED_LEN];
        let n = sample().encode(&mut buf).unwrap();
        assert_eq!(decode(&buf[..n]), Ok(sample()));
    }

    #[test]
    fn a_record_with_another_schema_or_garbage_gets_a_reason_and_changes_nothing() {
        let mut st = state();
        let g = Grouping::default();
        let json = serde_json::to_vec(&sample()).unwrap();
        let e = merge_one(&mut st, &g, &rec(json.clone(), "edge.reading")).unwrap_err();
        assert!(e.contains("unexpected schema header"), "{e}");
        let e = merge_one(&mut st, &g, &rec(vec![2, 0], "edge.partial")).unwrap_err();
        assert_eq!(e, "unknown partial version 2");
        assert_eq!(st.take_changes(), crate::merge::Changes::default());
        merge_one(&mut st, &g, &rec(json, "edge.partial")).unwrap();
        assert_eq!(st.counters.merged, 1);
    }
}
