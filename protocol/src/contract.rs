//! The Kafka record contract: the header names, the `schema` header values and the finals'
//! JSON record, the one place agent, consumer, tests and demo read and write them from.
//!
//! # Map
//!
//! | item | what |
//! | --- | --- |
//! | [`header`] | header names: `agent`, `seq`, `schema`, and the dead letters' `reason` and `source.*` |
//! | [`schema`] | every `schema` header value, one per record kind |
//! | [`Final`], [`FinalPoint`], [`final_key`] | the finals topic's JSON value and key (with the `std` feature) |
//!
//! # Records by topic
//!
//! | record | written by | `schema` | key | value |
//! | --- | --- | --- | --- | --- |
//! | partial | agent | `edge.partial` | series | [`crate::partial`] envelope (postcard `0x01 ..`, or JSON `{..}`) |
//! | reading passed through | agent | `edge.reading` | sensor id | the reading as JSON (`protocol/schemas/reading.v1.schema.json`) |
//! | late reading | agent | `edge.late` | sensor id | the reading as JSON (the same schema) |
//! | dead letter (agent) | agent | `edge.dead-letter` | the source's name | the agent's DeadLetter record v1 (`agent/src/store/FORMAT.md`): received time, source, reason and the input's bytes |
//! | dead letter (consumer) | consumer | `edge.dead-letter` | the input's key | the input's bytes, as they came; the reason in headers |
//! | progress marker | agent | `edge.progress.v1` | agent id | marker (`agent/src/forward/progress.rs`) |
//! | final | consumer | `edge.final.v1` | `{group}\|{window_start_ms}\|{window_end_ms}` | [`Final`] as JSON |
//! | changelog | consumer | none | see `consumer/src/changelog.rs` | versioned state value |
//!
//! Every record the agent sends carries `agent` (the agent id, UTF-8), `seq` (its outbox
//! sequence number, decimal ASCII) and `schema`: `(agent, seq)` is unique per record, so any
//! reader can account for every record. The consumer's dead letters carry `schema`, `reason`
//! (UTF-8 text), `source.topic`, `source.partition` and `source.offset` (decimal ASCII) and the
//! input's `agent` and `seq` when it had them. Finals carry only `schema`.
//!
//! # Final (`edge.final.v1`)
//!
//! One JSON object, fields in this order (the order is part of the contract: readers may
//! compare bytes):
//!
//! ```json
//! {"group":"g","window_start_ms":60000,"window_end_ms":120000,
//!  "window_start":"1970-01-01T00:01:00.000Z","window_end":"1970-01-01T00:02:00.000Z",
//!  "count":2,"sum":4.0,"min":1.0,"max":3.0,"mean":2.0,"stddev":1.0,
//!  "first":{"ts_ms":61000,"value":1.0},"last":{"ts_ms":62000,"value":3.0},
//!  "p50":1.0,"p90":3.0,"p95":3.0,"p99":3.0,"revision":1,
//!  "gateways":["a"],"gateways_truncated":0,"partials":2}
//! ```
//!
//! (without the line breaks; the test below holds these exact bytes).
//!
//! # Stability
//!
//! Header names and `schema` values are frozen: a reader may match them byte for byte. A record
//! whose layout changes gets a new `schema` value (`edge.final.v2`, `edge.progress.v2`); writers
//! never change what an existing value means. Fields of a [`Final`] are never removed, renamed,
//! reordered or retyped within `edge.final.v1`.

/// Header names.
pub mod header {
    /// The agent id (UTF-8) of the record's sender.
    pub const AGENT: &str = "agent";
    /// The record's outbox sequence number at its agent (decimal ASCII).
    pub const SEQ: &str = "seq";
    /// The record kind and version: one of [`super::schema`].
    pub const SCHEMA: &str = "schema";
    /// A dead letter's reason (UTF-8 text).
    pub const REASON: &str = "reason";
    /// A consumer dead letter's input topic.
    pub const SOURCE_TOPIC: &str = "source.topic";
    /// A consumer dead letter's input partition (decimal ASCII).
    pub const SOURCE_PARTITION: &str = "source.partition";
    /// A consumer dead letter's input offset (decimal ASCII).
    pub const SOURCE_OFFSET: &str = "source.offset";
}

/// `schema` header values, one per record kind.
pub mod schema {
    /// A partial aggregate (the [`crate::partial`] envelope carries its own version).
    pub const PARTIAL: &str = "edge.partial";
    /// A reading passed through without aggregation.
    pub const READING: &str = "edge.reading";
    /// A reading that arrived after its window closed.
    pub const LATE: &str = "edge.late";
    /// Input that could not be processed, with a `reason` header (agent and consumer).
    pub const DEAD_LETTER: &str = "edge.dead-letter";
    /// The agent's progress marker (version 1 of its layout).
    pub const PROGRESS: &str = "edge.progress.v1";
    /// A final aggregate ([`super::Final`], version 1).
    pub const FINAL: &str = "edge.final.v1";
}

#[cfg(feature = "std")]
pub use finals::{final_key, final_key_into, Final, FinalPoint};

#[cfg(feature = "std")]
mod finals {
    use serde::{Deserialize, Serialize};
    use std::string::String;
    use std::vec::Vec;

    /// A first or last reading of a final.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub struct FinalPoint {
        pub ts_ms: i64,
        pub value: f64,
    }

    /// The JSON value of a final (`schema` = [`super::schema::FINAL`]). `min` .. `p99` are
    /// `null` only for an empty window; `revision` 0 is the first final of a window, each
    /// partial merged afterwards adds 1.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Final {
        pub group: String,
        pub window_start_ms: i64,
        pub window_end_ms: i64,
        /// `window_start_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
        pub window_start: String,
        pub window_end: String,
        pub count: u64,
        pub sum: f64,
        pub min: Option<f64>,
        pub max: Option<f64>,
        pub mean: Option<f64>,
        pub stddev: Option<f64>,
        pub first: Option<FinalPoint>,
        pub last: Option<FinalPoint>,
        pub p50: Option<f64>,
        pub p90: Option<f64>,
        pub p95: Option<f64>,
        pub p99: Option<f64>,
        pub revision: u32,
        /// Agents whose partials went into the window (sorted, capped).
        pub gateways: Vec<String>,
        /// Agents left out of `gateways` by the cap.
        pub gateways_truncated: u32,
        /// Partials merged into the window.
        pub partials: u64,
    }

    /// The record key of a window's final: `{group}|{window_start_ms}|{window_end_ms}` (UTF-8),
    /// so compaction keeps the newest revision of each window.
    pub fn final_key(group: &str, window_start_ms: i64, window_end_ms: i64) -> String {
        let mut key = String::new();
        final_key_into(&mut key, group, window_start_ms, window_end_ms);
        key
    }

    /// [`final_key`] written into `buf` (cleared first), for a writer that reuses one buffer.
    pub fn final_key_into(buf: &mut String, group: &str, window_start_ms: i64, window_end_ms: i64) {
        use core::fmt::Write;
        buf.clear();
        // Writing into a String cannot fail.
        let _ = write!(buf, "{group}|{window_start_ms}|{window_end_ms}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_schema_values_are_the_frozen_ones() {
        assert_eq!(
            [header::AGENT, header::SEQ, header::SCHEMA],
            ["agent", "seq", "schema"]
        );
        assert_eq!(
            [
                schema::PARTIAL,
                schema::READING,
                schema::LATE,
                schema::DEAD_LETTER,
                schema::PROGRESS,
                schema::FINAL
            ],
            [
                "edge.partial",
                "edge.reading",
                "edge.late",
                "edge.dead-letter",
                "edge.progress.v1",
                "edge.final.v1"
            ]
        );
    }
}

#[cfg(all(test, feature = "std"))]
mod final_tests {
    use super::*;
    use std::borrow::ToOwned;
    use std::vec;

    /// The exact bytes of the module doc's example.
    const GOLDEN_FINAL: &str = concat!(
        r#"{"group":"g","window_start_ms":60000,"window_end_ms":120000,"#,
        r#""window_start":"1970-01-01T00:01:00.000Z","window_end":"1970-01-01T00:02:00.000Z","#,
        r#""count":2,"sum":4.0,"min":1.0,"max":3.0,"mean":2.0,"stddev":1.0,"#,
        r#""first":{"ts_ms":61000,"value":1.0},"last":{"ts_ms":62000,"value":3.0},"#,
        r#""p50":1.0,"p90":3.0,"p95":3.0,"p99":3.0,"revision":1,"#,
        r#""gateways":["a"],"gateways_truncated":0,"partials":2}"#
    );

    fn sample() -> Final {
        Final {
            group: "g".to_owned(),
            window_start_ms: 60_000,
            window_end_ms: 120_000,
            window_start: "1970-01-01T00:01:00.000Z".to_owned(),
            window_end: "1970-01-01T00:02:00.000Z".to_owned(),
            count: 2,
            sum: 4.0,
            min: Some(1.0),
            max: Some(3.0),
            mean: Some(2.0),
            stddev: Some(1.0),
            first: Some(FinalPoint {
                ts_ms: 61_000,
                value: 1.0,
            }),
            last: Some(FinalPoint {
                ts_ms: 62_000,
                value: 3.0,
            }),
            p50: Some(1.0),
            p90: Some(3.0),
            p95: Some(3.0),
            p99: Some(3.0),
            revision: 1,
            gateways: vec!["a".to_owned()],
            gateways_truncated: 0,
            partials: 2,
        }
    }

    #[test]
    fn a_final_serializes_to_the_golden_bytes_and_back() {
        assert_eq!(serde_json::to_string(&sample()).unwrap(), GOLDEN_FINAL);
        let back: Final = serde_json::from_str(GOLDEN_FINAL).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn an_empty_window_writes_null_for_what_it_lacks() {
        let f = Final {
            count: 0,
            sum: 0.0,
            min: None,
            first: None,
            ..sample()
        };
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains(r#""min":null"#) && json.contains(r#""first":null"#));
    }

    #[test]
    fn the_key_names_group_and_window() {
        assert_eq!(final_key("a|b", -5, 10), "a|b|-5|10");
    }
}
