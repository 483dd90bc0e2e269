//! The changelog: how a partition's state is written to the compacted changelog topic and read
//! back by the partition's next owner. No I/O (the loop and `restore` do the reading/writing).
//!
//! # Placement
//!
//! The state of input partition `p` of topic `t` goes to **changelog partition `p`** (the
//! changelog must have at least as many partitions as every input topic; checked at start), so a
//! new owner reads one changelog partition, not the whole topic.
//!
//! # Keys (UTF-8, readable with kcat)
//!
//! | record | key |
//! | --- | --- |
//! | a window | `w\|{topic}\|{partition}\|{start_ms}\|{end_ms}\|{group}` (the group last: it may hold `\|`) |
//! | a source (agent x series) | `s\|{topic}\|{partition}\|{agent length in bytes}\|{agent}{series}` |
//! | partition clocks | `m\|{topic}\|{partition}` |
//!
//! # Values (version 1)
//!
//! `[0x01] ++ postcard(value)`: [`WindowState`], [`Source`] or [`Meta`] (postcard: fields in
//! declaration order, varints, zig-zag signed, `f64` little-endian; the aggregate as in
//! `edge_protocol::aggregate`). A **tombstone** (null value) means the window or gateway was
//! dropped; compaction then removes the key. The value carries no type tag: the key's first
//! letter says which type it is.
//!
//! | value | bytes after the version byte, in order |
//! | --- | --- |
//! | window | aggregate (count varint; sum, min, max, mean, m2 as `f64` LE; first, last as `0` or `1 ++ ts_ms zig-zag varint ++ value f64 LE`; the sketch: zero count varint, positive and negative bins as a varint length and (bin zig-zag varint, count varint) pairs) ++ revision varint ++ finalized (`0`/`1`) ++ gateways (varint count, each a varint length and UTF-8, sorted) ++ gateways_truncated varint ++ partials varint |
//! | source | group (varint length, UTF-8) ++ watermark_ms zig-zag varint ++ last_seen_ms zig-zag varint |
//! | clocks | stream_time_ms ++ frontier_ms ++ swept_ms, each a zig-zag varint |
//!
//! For example the window holding one reading `(10500 ms, 2.0)` from gateway `gw`, final at
//! revision 2 after 3 partials, is (the test `values_match_the_golden_vectors` holds these
//! bytes, and those of a source and the clocks):
//!
//! ```text
//! 01                                   version 1
//! 01 00..00 40 (x4) 00..00             count 1; sum, min, max, mean 2.0; m2 0.0
//! 01 88 a4 01 00..00 40 (x2)           first, last: (10500, 2.0)
//! 00 01 46 01 00                       sketch: zero 0; positive [(bin 35, 1)]; negative []
//! 02 01 01 02 67 77 00 03              revision 2, finalized, gateways ["gw"], truncated 0, partials 3
//! ```
//!
//! Stability: version 1 is frozen (state written by one release is restored by the next); a new
//! layout gets a new version byte and readers keep reading version 1. A change to
//! `edge_protocol::aggregate`'s serde form changes this format too: the golden test fails first.
//!
//! # Invariant
//!
//! The changelog holds, for each key, the value the state had at the end of the last committed
//! transaction: every transaction writes the newest value of every key it changed (see
//! `merge::Changes`), in the same Kafka transaction as the finals and the input offsets.

use std::fmt::Write;

use edge_protocol::aggregate::Aggregate;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::merge::{Meta, Source, SourceKey, WindowKey, WindowRef, WindowState};

/// Version byte of the values.
pub const VERSION: u8 = 1;

/// A changelog record that cannot be read: the state cannot be restored (fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangelogError {
    #[error("changelog key is not one of ours: {0:?}")]
    BadKey(String),
    #[error("changelog value of {key:?} is malformed")]
    BadValue { key: String },
    #[error("changelog value of {key:?} has unknown version {version}")]
    UnknownVersion { key: String, version: u8 },
}

/// One decoded changelog entry (value `None`: a tombstone).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Window(WindowKey, Option<Box<WindowState>>),
    Source(SourceKey, Option<Source>),
    Meta(Option<Meta>),
}

pub fn window_key(topic: &str, partition: i32, k: WindowRef<'_>) -> String {
    let mut key = String::new();
    window_key_into(&mut key, topic, partition, k);
    key
}

pub fn source_key(topic: &str, partition: i32, k: &SourceKey) -> String {
    let mut key = String::new();
    source_key_into(&mut key, topic, partition, k);
    key
}

pub fn meta_key(topic: &str, partition: i32) -> String {
    let mut key = String::new();
    meta_key_into(&mut key, topic, partition);
    key
}

/// [`window_key`] written into `buf` (cleared first), which the loop reuses for every record.
pub fn window_key_into(buf: &mut String, topic: &str, partition: i32, k: WindowRef<'_>) {
    buf.clear();
    // Writing into a String cannot fail.
    let _ = write!(
        buf,
        "w|{topic}|{partition}|{}|{}|{}",
        k.start_ms, k.end_ms, k.group
    );
}

/// [`source_key`] written into `buf` (cleared first).
pub fn source_key_into(buf: &mut String, topic: &str, partition: i32, k: &SourceKey) {
    buf.clear();
    let _ = write!(
        buf,
        "s|{topic}|{partition}|{}|{}{}",
        k.agent.len(),
        k.agent,
        k.series
    );
}

/// [`meta_key`] written into `buf` (cleared first).
pub fn meta_key_into(buf: &mut String, topic: &str, partition: i32) {
    buf.clear();
    let _ = write!(buf, "m|{topic}|{partition}");
}

/// `[VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_into(&mut buf, value);
    buf
}

/// [`encode`] written into `buf` (cleared first), which the loop reuses for every record.
pub fn encode_into<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    buf.push(VERSION);
    // Serializing our own in-memory types into a Vec cannot fail.
    if let Ok(done) = postcard::to_extend(value, std::mem::take(buf)) {
        *buf = done;
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ChangelogError> {
    let bad = || ChangelogError::BadValue {
        key: key.to_owned(),
    };
    let (&version, body) = bytes.split_first().ok_or_else(bad)?;
    if version != VERSION {
        return Err(ChangelogError::UnknownVersion {
            key: key.to_owned(),
            version,
        });
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(value)
}

/// Decodes a record of `topic`/`partition`'s state; `Ok(None)` for another partition's record.
pub fn decode_entry(
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Entry>, ChangelogError> {
    let key = std::str::from_utf8(key)
        .map_err(|_| ChangelogError::BadKey(String::from_utf8_lossy(key).into_owned()))?;
    let bad_key = || ChangelogError::BadKey(key.to_owned());
    let mut parts = key.splitn(4, '|');
    let (Some(kind), Some(t), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_key());
    };
    let p: i32 = p.parse().map_err(|_| bad_key())?;
    if t != topic || p != partition {
        return Ok(None);
    }
    let rest = parts.next();
    let entry = match (kind, rest) {
        ("w", Some(rest)) => {
            let mut f = rest.splitn(3, '|');
            let (Some(s), Some(e), Some(group)) = (f.next(), f.next(), f.next()) else {
                return Err(bad_key());
            };
            let k = WindowKey {
                group: group.to_owned(),
                start_ms: s.parse().map_err(|_| bad_key())?,
                end_ms: e.parse().map_err(|_| bad_key())?,
            };
            let v = value
                .map(|v| decode::<WindowState>(key, v).map(Box::new))
                .transpose()?;
            if let Some(w) = &v {
                // The aggregate went through serde, not Aggregate::decode: check its invariants.
                let mut buf = vec![0u8; edge_protocol::aggregate::MAX_ENCODED_LEN];
                let ok = w
                    .aggregate
                    .encode(&mut buf)
                    .ok()
                    .and_then(|n| Aggregate::decode(&buf[..n]).ok());
                if ok.is_none() {
                    return Err(ChangelogError::BadValue {
                        key: key.to_owned(),
                    });
                }
            }
            Entry::Window(k, v)
        }
        ("s", Some(rest)) => {
            let (len, names) = rest.split_once('|').ok_or_else(bad_key)?;
            let len: usize = len.parse().map_err(|_| bad_key())?;
            if !names.is_char_boundary(len.min(names.len())) || len > names.len() {
                return Err(bad_key());
            }
            let (agent, series) = names.split_at(len);
            let k = SourceKey {
                agent: agent.to_owned(),
                series: series.to_owned(),
            };
            Entry::Source(k, value.map(|v| decode::<Source>(key, v)).transpose()?)
        }
        ("m", None) => Entry::Meta(value.map(|v| decode::<Meta>(key, v)).transpose()?),
        _ => return Err(bad_key()),
    };
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn window() -> (WindowKey, WindowState) {
        window_with_reading_at(5)
    }

    /// Window `a|b` [-10, 10) with one reading (`ts_ms`, 2.0) from gateway `gw`, final at
    /// revision 2 after 3 partials.
    fn window_with_reading_at(ts_ms: i64) -> (WindowKey, WindowState) {
        let mut aggregate = Aggregate::new();
        aggregate.add(ts_ms, 2.0).unwrap();
        let k = WindowKey {
            group: "a|b".into(),
            start_ms: -10,
            end_ms: 10,
        };
        let w = WindowState {
            aggregate,
            revision: 2,
            finalized: true,
            gateways: BTreeSet::from(["gw".to_owned()]),
            gateways_truncated: 0,
            partials: 3,
        };
        (k, w)
    }

    #[test]
    fn entries_round_trip_through_key_and_value() {
        let (k, w) = window();
        let key = window_key("in", 3, k.borrowed());
        assert_eq!(key, "w|in|3|-10|10|a|b");
        let e = decode_entry("in", 3, key.as_bytes(), Some(&encode(&w))).unwrap();
        assert_eq!(e, Some(Entry::Window(k.clone(), Some(Box::new(w)))));
        let e = decode_entry("in", 3, key.as_bytes(), None).unwrap();
        assert_eq!(e, Some(Entry::Window(k, None)));
        let g = Source {
            group: "grp".into(),
            watermark_ms: 7,
            last_seen_ms: 9,
        };
        let sk = SourceKey {
            agent: "g|w".into(),
            series: "s|1".into(),
        };
        let key = source_key("in", 3, &sk);
        assert_eq!(key, "s|in|3|3|g|ws|1");
        let e = decode_entry("in", 3, key.as_bytes(), Some(&encode(&g))).unwrap();
        assert_eq!(e, Some(Entry::Source(sk, Some(g))));
        let m = Meta {
            stream_time_ms: 1,
            frontier_ms: -1,
            swept_ms: 0,
        };
        let e = decode_entry("in", 3, meta_key("in", 3).as_bytes(), Some(&encode(&m))).unwrap();
        assert_eq!(e, Some(Entry::Meta(Some(m))));
    }

    /// Golden vector: the version-1 bytes of a source, the partition clocks and a window. A
    /// failure here means the stored format changed: bump VERSION, keep reading version 1.
    #[test]
    fn values_match_the_golden_vectors() {
        let (k, w) = window_with_reading_at(10_500);
        let two = [0, 0, 0, 0, 0, 0, 0, 0x40];
        let mut golden = vec![1, 1]; // version, count 1
        for _ in 0..4 {
            golden.extend_from_slice(&two); // sum, min, max, mean
        }
        golden.extend_from_slice(&[0; 8]); // m2
        for _ in 0..2 {
            golden.extend_from_slice(&[1, 0x88, 0xa4, 0x01]); // first, last: ts 10500 ...
            golden.extend_from_slice(&two); // ... value 2.0
        }
        golden.extend_from_slice(&[0, 1, 0x46, 1, 0]); // sketch
        golden.extend_from_slice(&[2, 1, 1, 2, b'g', b'w', 0, 3]);
        assert_eq!(encode(&w), golden);
        let key = window_key("in", 0, k.borrowed());
        let back = decode_entry("in", 0, key.as_bytes(), Some(&golden)).unwrap();
        assert_eq!(back, Some(Entry::Window(k, Some(Box::new(w)))));

        let g = Source {
            group: "g".into(),
            watermark_ms: 21_000,
            last_seen_ms: -1,
        };
        assert_eq!(encode(&g), [1, 1, b'g', 0x90, 0xc8, 0x02, 0x01]);
        // The loop encodes the borrowed form: the same bytes.
        let borrowed = crate::merge::SourceRef {
            group: "g",
            watermark_ms: 21_000,
            last_seen_ms: -1,
        };
        assert_eq!(encode(&borrowed), encode(&g));
        assert_eq!(decode::<Source>("s", &encode(&g)), Ok(g));
        let m = Meta {
            stream_time_ms: 1,
            frontier_ms: 0,
            swept_ms: -2,
        };
        assert_eq!(encode(&m), [1, 2, 0, 3]);
        assert_eq!(decode::<Meta>("m", &[1, 2, 0, 3]), Ok(m));
    }

    /// The checked-in changelog records of `protocol/tests/vectors/v1` (key and value as a
    /// release wrote them): a new owner running this build restores each to the state it held.
    /// `EDGE_BLESS_VECTORS=1` writes a missing one; vectors are never edited.
    #[test]
    fn changelog_records_on_file_restore_to_their_state() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/vectors/v1");
        let (k, w) = window_with_reading_at(10_500);
        let source_key_value = SourceKey {
            agent: "gw".into(),
            series: "s|1".into(),
        };
        let g = Source {
            group: "g".into(),
            watermark_ms: 21_000,
            last_seen_ms: -1,
        };
        let m = Meta {
            stream_time_ms: 1,
            frontier_ms: 0,
            swept_ms: -2,
        };
        let cases = [
            (
                "changelog-window",
                window_key("in", 0, k.borrowed()),
                encode(&w),
                Entry::Window(k.clone(), Some(Box::new(w))),
            ),
            (
                "changelog-source",
                source_key("in", 0, &source_key_value),
                encode(&g),
                Entry::Source(source_key_value.clone(), Some(g)),
            ),
            (
                "changelog-clocks",
                meta_key("in", 0),
                encode(&m),
                Entry::Meta(Some(m)),
            ),
        ];
        for (name, key, value, expected) in cases {
            let (key_path, value_path) = (
                dir.join(format!("{name}.key")),
                dir.join(format!("{name}.bin")),
            );
            if !value_path.exists() && std::env::var_os("EDGE_BLESS_VECTORS").is_some() {
                std::fs::write(&key_path, key.as_bytes()).unwrap();
                std::fs::write(&value_path, &value).unwrap();
            }
            let read = |p: &std::path::Path| {
                std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            };
            let (key_on_file, value_on_file) = (read(&key_path), read(&value_path));
            assert_eq!(
                decode_entry("in", 0, &key_on_file, Some(&value_on_file)),
                Ok(Some(expected)),
                "{name}"
            );
            assert_eq!(
                (key.as_bytes(), value.as_slice()),
                (&key_on_file[..], &value_on_file[..]),
                "{name}: version 1 is current, so this build writes the vector"
            );
        }
    }

    #[test]
    fn other_partitions_records_are_skipped_and_garbage_is_refused() {
        let key = meta_key("in", 4);
        assert_eq!(decode_entry("in", 3, key.as_bytes(), None), Ok(None));
        assert!(decode_entry("in", 3, b"x", None).is_err());
        let key = meta_key("in", 3);
        assert!(decode_entry("in", 3, key.as_bytes(), Some(&[2, 0, 0])).is_err());
        assert!(decode_entry("in", 3, key.as_bytes(), Some(&[1, 0, 0, 0, 9])).is_err());
    }
}
