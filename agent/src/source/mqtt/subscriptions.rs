//! The topic filters an MQTT source has subscribed in its persistent session, kept durable (the
//! `source_state` row `mqtt/<source>/subscriptions`) so that a filter removed from the
//! configuration is unsubscribed at the next start instead of living on in the broker's session.
//! [`Subscriptions`] is the state machine (no I/O); [`load`] reads the row.
//!
//! # Why
//!
//! A persistent session (`clean_session = false`, MQTT 5 session expiry) keeps every
//! subscription the client ever made until it unsubscribes. Before this row existed, a filter
//! dropped from `[[mqtt.subscribe]]` stayed in the session, and every message on it was
//! dead-lettered (no `[[sensor]]` rule) for as long as the session lived.
//!
//! # The connect sequence (every ConnAck)
//!
//! 1. UNSUBSCRIBE each filter of the stored row's `subscribed` list that is no longer
//!    configured (one packet per filter: rumqttc has no `unsubscribe_many`). Harmless when the
//!    broker holds no such subscription (a new session, `session_present = false`).
//! 2. SUBSCRIBE the configured filters (one packet), as before.
//! 3. When the broker has answered every one of those (UNSUBACKs, then the SUBACK: MQTT answers
//!    in order), write the new row through a submission, if it changed.
//!
//! # Late messages
//!
//! Messages queued in the session for a removed filter before the UNSUBSCRIBE took effect still
//! arrive (right after the ConnAck). [`Subscriptions::delivery`] classifies each publish's topic:
//!
//! - matched by a configured filter: [`Delivery::Configured`], processed as always;
//! - matched by no configured filter but by one this source unsubscribed (the row's
//!   `unsubscribed` list): [`Delivery::Unsubscribed`], acked and counted
//!   (`edge_mqtt_unsubscribed_dropped_total`), never dead-lettered: the operator removed it;
//! - matched by neither: [`Delivery::Unknown`], processed as always, which dead-letters it
//!   unless a `[[sensor]]` rule maps it. Such a message comes from a subscription this agent
//!   never recorded (one made before this row existed, i.e. by an agent older than it, or by
//!   another client with the same client id): it stays visible in the dead-letter topic, as it
//!   was, because nothing says the operator meant to drop it. Clearing the session once
//!   (`persistent_session = false` for one start) removes such leftovers, and with them
//!   every message the session held.
//!
//! Filters are matched by MQTT's rules ([`filter_matches`]), not by `rumqttc::matches`, which
//! refuses every topic starting with `$` even for a filter spelling that level out (`$SYS/+`);
//! a shared subscription `$share/<group>/<filter>` matches as `<filter>`.
//!
//! # Invariants and crash reasoning
//!
//! - **The row is written only after the broker answered the UNSUBSCRIBEs.** A crash before
//!   that commit leaves the old row, so the next start unsubscribes again (idempotent). A crash
//!   after it leaves nothing to unsubscribe: the broker confirmed it.
//! - **Late messages stay recognised across a crash.** Unsubscribed filters are kept in the
//!   row (newest first, at most [`MAX_UNSUBSCRIBED`]), so a queued message redelivered after a
//!   crash that followed the row's commit is still dropped, not dead-lettered. A filter
//!   configured again leaves that list.
//! - **A filter is recorded only after its SUBACK** (step 3). A crash in the milliseconds
//!   between a new filter's SUBSCRIBE and the row's commit, followed by a start whose
//!   configuration no longer has that filter, leaves it unrecorded: its messages are then
//!   [`Delivery::Unknown`] (dead-lettered, as before this row existed). Recording before
//!   subscribing would close that window but delay every subscription behind a commit, which
//!   under `backpressure` at a full quota could be indefinitely.
//! - The row commits like any submission: in order behind the messages submitted before it.
//!
//! # Subscriptions record v1 (value of `source_state`, little-endian)
//!
//! ```text
//! u8   version = 1
//! u32  count S, then S x { u16 length, filter bytes (UTF-8) }   subscribed, in configuration order
//! u32  count U, then U x { u16 length, filter bytes (UTF-8) }   unsubscribed, newest first
//! ```
//!
//! A filter is at most 65,535 bytes (an MQTT string); a longer configured filter cannot be
//! subscribed and is not recorded. Stability: a new layout gets a new version byte;
//! [`Record::decode`] refuses versions it does not know (the source then starts as if nothing
//! was recorded, logs it, and records afresh). Golden vector: `store/FORMAT.md`.

use redb::{Database, ReadableDatabase};

use crate::store::codec::{ByteReader, ByteWriter, Truncated};
use crate::store::tables::SOURCE_STATE;
use crate::store::{open_if_exists, StoreError};

/// Version byte of the subscriptions record.
pub const RECORD_VERSION: u8 = 1;
/// Unsubscribed filters a record remembers (the oldest are forgotten first).
pub const MAX_UNSUBSCRIBED: usize = 256;
/// The longest filter recorded: an MQTT UTF-8 string holds at most this many bytes.
pub const MAX_FILTER_LEN: usize = u16::MAX as usize;

/// The `source_state` key of `source`'s record. Source names hold no `/` (configuration rule).
pub fn key(source: &str) -> String {
    format!("mqtt/{source}/subscriptions")
}

/// What one source recorded of its session's subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The filters configured at the last connect the broker confirmed.
    pub subscribed: Vec<String>,
    /// Filters this source unsubscribed, newest first: late messages on them are dropped.
    pub unsubscribed: Vec<String>,
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("unknown subscriptions record version {0}")]
    Version(u8),
    #[error("subscriptions record truncated")]
    Truncated,
    #[error("a filter in the subscriptions record is not UTF-8")]
    Utf8,
    #[error("{0} bytes after the subscriptions record")]
    Trailing(usize),
}

impl From<Truncated> for BadRecord {
    fn from(_: Truncated) -> Self {
        BadRecord::Truncated
    }
}

impl Record {
    /// The bytes of record v1 (module doc). Filters over [`MAX_FILTER_LEN`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::default();
        w.u8(RECORD_VERSION);
        for list in [&self.subscribed, &self.unsubscribed] {
            let fits: Vec<&String> = list.iter().filter(|f| f.len() <= MAX_FILTER_LEN).collect();
            w.u32(fits.len() as u32);
            for filter in fits {
                w.bytes_u16(filter.as_bytes());
            }
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, BadRecord> {
        let mut r = ByteReader::new(bytes);
        r.version(RECORD_VERSION, BadRecord::Version)?;
        let subscribed = filters(&mut r)?;
        let unsubscribed = filters(&mut r)?;
        r.finish().map_err(BadRecord::Trailing)?;
        Ok(Record {
            subscribed,
            unsubscribed,
        })
    }
}

/// One list of the record. The count is not trusted for allocation: each filter takes at least
/// two bytes, so a damaged count runs out of bytes first.
fn filters(r: &mut ByteReader<'_>) -> Result<Vec<String>, BadRecord> {
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let bytes = r.bytes_u16()?;
        out.push(String::from_utf8(bytes.to_vec()).map_err(|_| BadRecord::Utf8)?);
    }
    Ok(out)
}

/// Why the record could not be loaded (a database error; a bad record is [`BadRecord`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the MQTT subscriptions record: {0}")]
    Store(#[from] StoreError),
}

crate::store::redb_errors_into!(LoadError);

/// `source`'s stored record: `Ok(None)` when none was written yet.
pub fn load(db: &Database, source: &str) -> Result<Option<Result<Record, BadRecord>>, LoadError> {
    let txn = db.begin_read()?;
    let Some(table) = open_if_exists(&txn, SOURCE_STATE)? else {
        return Ok(None);
    };
    let row = table.get(key(source).as_str())?;
    Ok(row.map(|v| Record::decode(v.value())))
}

/// Whether `topic` is matched by the subscription `filter` (MQTT 3.1.1 section 4.7, the same
/// in MQTT 5): `+` is one level, a final `#` is the rest including the parent level, and a
/// filter starting with a wildcard does not match a topic starting with `$`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = shared_filter(filter);
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// `$share/<group>/<filter>` delivers topics matching `<filter>`.
fn shared_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// What a publish on a topic is, for this source ([module doc](self), "Late messages").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Configured,
    Unsubscribed,
    Unknown,
}

/// The requests of one connect sequence, in the order they are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// One UNSUBSCRIBE each.
    pub unsubscribe: Vec<String>,
    /// One SUBSCRIBE, `(filter, qos)`; none when empty.
    pub subscribe: Vec<(String, u8)>,
}

/// The acks the current connection still owes us for its connect sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    unsubacks: usize,
    subacks: usize,
}

/// One source's subscriptions across its connections. No I/O: the poller feeds it ConnAcks,
/// UNSUBACKs, SUBACKs and connection losses, sends the [`Requests`] it returns through the
/// acker, and submits the [`Record`]s it returns as `source_state` rows.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    configured: Vec<(String, u8)>,
    /// The row as last written (or as loaded).
    stored: Record,
    /// The row to write once the broker confirmed the connect sequence.
    target: Record,
    /// Filters still to unsubscribe (emptied once the broker confirmed them).
    unsubscribe: Vec<String>,
    pending: Option<Pending>,
}

impl Subscriptions {
    /// From the configured `(filter, qos)` pairs and the stored record (`None`: never written,
    /// or unreadable). A filter configured twice is subscribed once, at its first QoS.
    pub fn new(configured: &[(String, u8)], stored: Option<Record>) -> Subscriptions {
        let mut unique: Vec<(String, u8)> = Vec::new();
        for (filter, qos) in configured {
            if !unique.iter().any(|(f, _)| f == filter) {
                unique.push((filter.clone(), *qos));
            }
        }
        let stored = stored.unwrap_or_default();
        let is_configured = |f: &String| unique.iter().any(|(c, _)| c == f);
        let mut unsubscribe: Vec<String> = Vec::new();
        for filter in stored.subscribed.iter().filter(|f| !is_configured(f)) {
            if !unsubscribe.contains(filter) {
                unsubscribe.push(filter.clone());
            }
        }
        let mut unsubscribed = unsubscribe.clone();
        for filter in stored.unsubscribed.iter().filter(|f| !is_configured(f)) {
            if !unsubscribed.contains(filter) {
                unsubscribed.push(filter.clone());
            }
        }
        unsubscribed.truncate(MAX_UNSUBSCRIBED);
        let target = Record {
            subscribed: unique
                .iter()
                .map(|(f, _)| f.clone())
                .filter(|f| f.len() <= MAX_FILTER_LEN)
                .collect(),
            unsubscribed,
        };
        Subscriptions {
            configured: unique,
            stored,
            target,
            unsubscribe,
            pending: None,
        }
    }

    /// A ConnAck: the requests to send now, and the row to write when there is nothing to wait
    /// for (no request at all).
    pub fn connected(&mut self) -> (Requests, Option<Record>) {
        let requests = Requests {
            unsubscribe: self.unsubscribe.clone(),
            subscribe: self.configured.clone(),
        };
        self.pending = Some(Pending {
            unsubacks: requests.unsubscribe.len(),
            subacks: usize::from(!requests.subscribe.is_empty()),
        });
        let row = self.settle();
        (requests, row)
    }

    /// An UNSUBACK arrived; the row to write if it completed the connect sequence.
    pub fn unsubscribed(&mut self) -> Option<Record> {
        if let Some(p) = &mut self.pending {
            p.unsubacks = p.unsubacks.saturating_sub(1);
        }
        self.settle()
    }

    /// A SUBACK arrived (granted or refused: the configuration is what gets recorded); the row
    /// to write if it completed the connect sequence.
    pub fn subscribed(&mut self) -> Option<Record> {
        if let Some(p) = &mut self.pending {
            // MQTT answers in order: a SUBACK sent after the UNSUBSCRIBEs means they were done.
            p.unsubacks = 0;
            p.subacks = p.subacks.saturating_sub(1);
        }
        self.settle()
    }

    /// The connection was lost: whatever was not confirmed is asked again at the next ConnAck.
    pub fn disconnected(&mut self) {
        self.pending = None;
    }

    fn settle(&mut self) -> Option<Record> {
        match self.pending {
            Some(Pending {
                unsubacks: 0,
                subacks: 0,
            }) => {
                self.pending = None;
                self.unsubscribe.clear();
                (self.stored != self.target).then(|| {
                    self.stored = self.target.clone();
                    self.target.clone()
                })
            }
            _ => None,
        }
    }

    /// How a publish on `topic` is treated (module doc, "Late messages").
    pub fn delivery(&self, topic: &str) -> Delivery {
        if self
            .configured
            .iter()
            .any(|(f, _)| filter_matches(f, topic))
        {
            Delivery::Configured
        } else if self
            .target
            .unsubscribed
            .iter()
            .any(|f| filter_matches(f, topic))
        {
            Delivery::Unsubscribed
        } else {
            Delivery::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn configured(list: &[&str]) -> Vec<(String, u8)> {
        list.iter().map(|s| ((*s).to_owned(), 1)).collect()
    }

    fn record(subscribed: &[&str], unsubscribed: &[&str]) -> Record {
        Record {
            subscribed: filters(subscribed),
            unsubscribed: filters(unsubscribed),
        }
    }

    #[test]
    fn a_stored_filter_no_longer_configured_is_unsubscribed_before_the_configured_are_subscribed() {
        let mut s = Subscriptions::new(
            &configured(&["a/+", "c/#"]),
            Some(record(&["a/+", "b/+"], &[])),
        );
        let (requests, row) = s.connected();
        assert_eq!(requests.unsubscribe, filters(&["b/+"]));
        assert_eq!(requests.subscribe, configured(&["a/+", "c/#"]));
        assert_eq!(row, None, "nothing is written before the broker answered");
        assert_eq!(s.unsubscribed(), None, "the SUBACK is still owed");
        assert_eq!(s.subscribed(), Some(record(&["a/+", "c/#"], &["b/+"])));
    }

    #[test]
    fn the_row_is_written_after_the_unsuback_when_nothing_is_configured() {
        let mut s = Subscriptions::new(&[], Some(record(&["a/+", "b/+"], &[])));
        let (requests, row) = s.connected();
        assert_eq!(requests.unsubscribe, filters(&["a/+", "b/+"]));
        assert!(requests.subscribe.is_empty());
        assert_eq!(row, None);
        assert_eq!(s.unsubscribed(), None, "one UNSUBACK of two");
        assert_eq!(s.unsubscribed(), Some(record(&[], &["a/+", "b/+"])));
    }

    #[test]
    fn a_connection_lost_before_the_unsuback_unsubscribes_again_at_the_next_connack() {
        let mut s = Subscriptions::new(&configured(&["a/+"]), Some(record(&["a/+", "b/+"], &[])));
        let _ = s.connected();
        s.disconnected();
        assert_eq!(s.subscribed(), None, "a stray SUBACK of the old connection");
        let (requests, _) = s.connected();
        assert_eq!(requests.unsubscribe, filters(&["b/+"]));
        assert_eq!(s.subscribed(), Some(record(&["a/+"], &["b/+"])));
        let (again, row) = s.connected();
        assert!(
            again.unsubscribe.is_empty(),
            "confirmed once, not asked again"
        );
        assert_eq!(
            again.subscribe,
            configured(&["a/+"]),
            "subscribed at every connect"
        );
        assert_eq!(
            s.subscribed(),
            None,
            "the row is unchanged: not written again"
        );
        assert_eq!(row, None);
    }

    #[test]
    fn a_first_start_records_the_configured_filters_after_the_suback() {
        let mut s = Subscriptions::new(&configured(&["a/+", "a/+"]), None);
        let (requests, row) = s.connected();
        assert!(requests.unsubscribe.is_empty());
        assert_eq!(
            requests.subscribe,
            configured(&["a/+"]),
            "a filter listed twice is sent once"
        );
        assert_eq!(row, None);
        assert_eq!(s.subscribed(), Some(record(&["a/+"], &[])));
    }

    #[test]
    fn a_source_with_nothing_configured_or_recorded_sends_and_writes_nothing() {
        let mut s = Subscriptions::new(&[], None);
        assert_eq!(s.connected(), (Requests::default(), None));
    }

    #[test]
    fn an_unsubscribed_filter_configured_again_leaves_the_unsubscribed_list() {
        let s = Subscriptions::new(
            &configured(&["b/+"]),
            Some(record(&["a/+"], &["b/+", "c/+"])),
        );
        assert_eq!(s.target, record(&["b/+"], &["a/+", "c/+"]));
        assert_eq!(s.delivery("b/1"), Delivery::Configured);
        assert_eq!(s.delivery("a/1"), Delivery::Unsubscribed);
        assert_eq!(
            s.delivery("c/1"),
            Delivery::Unsubscribed,
            "remembered across runs"
        );
        assert_eq!(s.delivery("d/1"), Delivery::Unknown, "never ours");
    }

    #[test]
    fn the_unsubscribed_list_keeps_the_newest_filters_up_to_its_bound() {
        let old: Vec<String> = (0..MAX_UNSUBSCRIBED).map(|i| format!("old/{i}")).collect();
        let stored = Record {
            subscribed: filters(&["new"]),
            unsubscribed: old.clone(),
        };
        let s = Subscriptions::new(&[], Some(stored));
        assert_eq!(s.target.unsubscribed.len(), MAX_UNSUBSCRIBED);
        assert_eq!(s.target.unsubscribed[0], "new");
        assert_eq!(s.target.unsubscribed[1..], old[..MAX_UNSUBSCRIBED - 1]);
    }

    #[test]
    fn filters_match_by_the_mqtt_rules() {
        let cases = [
            ("a/+/v", "a/1/v", true),
            ("a/+/v", "a/1/w", false),
            ("a/+/v", "a/1/v/x", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/+", "$SYS/x", true),
            ("a", "a", true),
            ("a", "b", false),
            ("$share/g/a/+", "a/1", true),
            ("$share/g/a/+", "b/1", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }

    #[test]
    fn a_record_round_trips_and_refuses_damage() {
        let r = record(&["a/+", "c/#"], &["b/+"]);
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Ok(r));
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Record::decode(&padded), Err(BadRecord::Trailing(1)));
        let mut version = bytes;
        version[0] = 2;
        assert_eq!(Record::decode(&version), Err(BadRecord::Version(2)));
        assert_eq!(
            Record::decode(&[1, 1, 0, 0, 0, 1, 0, 0xff, 0, 0, 0, 0]),
            Err(BadRecord::Utf8)
        );
    }

    #[test]
    fn a_filter_longer_than_an_mqtt_string_is_not_recorded() {
        let long = "x".repeat(MAX_FILTER_LEN + 1);
        let r = Record {
            subscribed: vec![long, "a".into()],
            unsubscribed: Vec::new(),
        };
        assert_eq!(Record::decode(&r.encode()), Ok(record(&["a"], &[])));
    }

    #[test]
    fn the_key_names_the_kind_and_the_source() {
        assert_eq!(key("plant"), "mqtt/plant/subscriptions");
    }

    proptest::proptest! {
        /// Arbitrary bytes decode to an error or to a record that re-encodes to them.
        #[test]
        fn any_bytes_decode_to_an_error_or_re_encode_to_themselves(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)
        ) {
            if let Ok(r) = Record::decode(&bytes) {
                proptest::prop_assert_eq!(r.encode(), bytes);
            }
        }
    }
}
