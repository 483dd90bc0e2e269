//! The finals: JSON records on a compacted topic, readable by kcat, Spark, Flink and kafka-ui as
//! they are. No I/O.
//!
//! # Record
//!
//! Key: `{group}|{window_start_ms}|{window_end_ms}` (UTF-8), so compaction keeps the newest
//! revision of each window. Value: one JSON object:
//!
//! ```json
//! {"group":"plant7.line2.temperature","window_start_ms":60000,"window_end_ms":120000,
//!  "window_start":"1970-01-01T00:01:00.000Z","window_end":"1970-01-01T00:02:00.000Z",
//!  "count":12,"sum":250.5,"min":19.5,"max":22.0,"mean":20.875,"stddev":0.7,
//!  "first":{"ts_ms":60100,"value":19.5},"last":{"ts_ms":119900,"value":21.0},
//!  "p50":20.9,"p90":21.7,"p95":21.9,"p99":22.0,"revision":0,
//!  "gateways":["gw-a","gw-b"],"gateways_truncated":0,"partials":6}
//! ```
//!
//! `min` .. `p99` are `null` only for an empty window (never emitted in practice). Quantiles are
//! within 1 % relative error (`edge_protocol::sketch`); the others are exact up to floating-point
//! rounding. `revision` 0 is the first final; each partial merged afterwards adds 1. Headers:
//! `schema = edge.final.v1`. The record type, its key, its field order and its stability are
//! [`edge_protocol::contract`]'s (with golden bytes); this module fills it from a window.

use edge_protocol::contract::{final_key, final_key_into, schema};
pub use edge_protocol::contract::{Final, FinalPoint as PointJson};

use crate::merge::{WindowRef, WindowState};

/// `schema` header value of a final.
pub const SCHEMA: &str = schema::FINAL;

/// The record key of a window's final.
pub fn key(k: WindowRef<'_>) -> String {
    final_key(k.group, k.start_ms, k.end_ms)
}

/// [`key`] written into `buf` (cleared first), which the loop reuses for every record.
pub fn key_into(buf: &mut String, k: WindowRef<'_>) {
    final_key_into(buf, k.group, k.start_ms, k.end_ms);
}

/// The JSON value of a window's final.
pub fn value(k: WindowRef<'_>, w: &WindowState) -> Vec<u8> {
    let mut buf = Vec::new();
    value_into(&mut buf, k, w);
    buf
}

/// [`value`] written into `buf` (cleared first).
pub fn value_into(buf: &mut Vec<u8>, k: WindowRef<'_>, w: &WindowState) {
    let a = &w.aggregate;
    let point = |p: Option<edge_protocol::aggregate::Point>| {
        p.map(|p| PointJson {
            ts_ms: p.ts_ms,
            value: p.value,
        })
    };
    let f = Final {
        group: k.group.to_owned(),
        window_start_ms: k.start_ms,
        window_end_ms: k.end_ms,
        window_start: iso8601(k.start_ms),
        window_end: iso8601(k.end_ms),
        count: a.count(),
        sum: a.sum(),
        min: a.min(),
        max: a.max(),
        mean: a.mean(),
        stddev: a.stddev(),
        first: point(a.first()),
        last: point(a.last()),
        p50: a.quantile(0.5),
        p90: a.quantile(0.9),
        p95: a.quantile(0.95),
        p99: a.quantile(0.99),
        revision: w.revision,
        gateways: w.gateways.iter().cloned().collect(),
        gateways_truncated: w.gateways_truncated,
        partials: w.partials,
    };
    buf.clear();
    // Finite floats, strings and integers into a Vec: serializing cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &f);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC) of Unix milliseconds, through the `time` crate.
///
/// RFC 3339 has four-digit years only, so an instant outside `0000-01-01T00:00:00.000Z` ..=
/// `9999-12-31T23:59:59.999Z` is written as the nearer of the two (a reader that parses dates
/// never sees a malformed one); the record's `*_ms` fields carry the exact number either way.
pub fn iso8601(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    const FIRST_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let nanos = i128::from(ms.clamp(FIRST_MS, LAST_MS)) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        // Unreachable: the clamp keeps the instant inside the range `time` formats.
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::WindowKey;
    use edge_protocol::aggregate::Aggregate;

    #[test]
    fn iso8601_formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso8601(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(iso8601(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso8601(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    /// Golden bytes of a whole final: field order, number formatting, dates. A failure here
    /// means the finals' JSON changed for every reader of the topic.
    #[test]
    fn a_final_matches_the_golden_bytes() {
        let k = WindowKey {
            group: "plant7.t".into(),
            start_ms: 1_767_225_600_000,
            end_ms: 1_767_225_660_000,
        };
        let w = final_window(&[(10_500, 2.0)], 0, &["gw-a", "gw-b"]);
        let got = String::from_utf8(value(k.borrowed(), &w)).unwrap();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: &str = concat!(
        r#"{"group":"plant7.t","window_start_ms":1767225600000,"window_end_ms":1767225660000,"#,
        r#""window_start":"2026-01-01T00:00:00.000Z","window_end":"2026-01-01T00:01:00.000Z","#,
        r#""count":1,"sum":2.0,"min":2.0,"max":2.0,"mean":2.0,"stddev":0.0,"#,
        r#""first":{"ts_ms":10500,"value":2.0},"last":{"ts_ms":10500,"value":2.0},"#,
        r#""p50":2.0,"p90":2.0,"p95":2.0,"p99":2.0,"revision":0,"#,
        r#""gateways":["gw-a","gw-b"],"gateways_truncated":0,"partials":2}"#
    );

    /// A final window of `readings`, from `gateways`, after 2 partials.
    fn final_window(readings: &[(i64, f64)], revision: u32, gateways: &[&str]) -> WindowState {
        let mut aggregate = Aggregate::new();
        for &(t, v) in readings {
            aggregate.add(t, v).unwrap();
        }
        WindowState {
            aggregate,
            revision,
            finalized: true,
            gateways: gateways.iter().map(|g| (*g).to_owned()).collect(),
            gateways_truncated: 0,
            partials: 2,
        }
    }

    #[test]
    fn a_final_is_one_json_object_with_every_field() {
        let k = WindowKey {
            group: "g".into(),
            start_ms: 60_000,
            end_ms: 120_000,
        };
        let w = final_window(&[(61_000, 1.0), (62_000, 3.0)], 1, &["a"]);
        assert_eq!(key(k.borrowed()), "g|60000|120000");
        let v: serde_json::Value = serde_json::from_slice(&value(k.borrowed(), &w)).unwrap();
        assert_eq!(v["window_start"], "1970-01-01T00:01:00.000Z");
        assert_eq!(v["count"], 2);
        assert_eq!(v["sum"], 4.0);
        assert_eq!(v["mean"], 2.0);
        assert_eq!(v["stddev"], 1.0);
        assert_eq!(v["first"]["value"], 1.0);
        assert_eq!(v["last"]["ts_ms"], 62_000);
        assert_eq!(v["revision"], 1);
        assert_eq!(v["gateways"][0], "a");
        for q in ["p50", "p90", "p95", "p99"] {
            assert!(v[q].as_f64().is_some(), "{q}");
        }
    }
}
