//! The progress marker: its encoding, this database's instance id, and reading the last
//! committed marker back from Kafka.
//!
//! # Marker v1 (Kafka value; key = the agent id, UTF-8)
//!
//! ```text
//! u8  version = 1
//! u16 agent_len LE, agent     UTF-8, the agent id (equal to the key)
//! [16] instance id            random, made once per database (table `forward_meta`)
//! u64 last_seq LE             the highest outbox seq in the transaction holding the marker
//! u64 committed_unix_ms LE    the writer's wall clock when it began the commit (information)
//! ```
//!
//! Golden vector in the tests (the marker is a Kafka value, not a stored row; it is written with
//! the store's byte codec). Stability: version 1 is frozen; a new layout gets a new version
//! byte and readers keep reading version 1. A reader meeting an unknown version refuses to
//! start rather than guess (resuming from a misread seq would skip or resend records).
//!
//! # Table `forward_meta` (redb, in the agent's database; `store/FORMAT.md`)
//!
//! | key | value |
//! | --- | --- |
//! | `"instance_id"` | 16 random bytes from `/dev/urandom`, written once |
//!
//! # Reading the last marker: the last-stable-offset trap
//!
//! A `read_committed` reader sees a partition only up to its last stable offset (LSO): the first
//! offset of the oldest transaction still open there. Other agents share the progress
//! partitions, so one of them with an open transaction holds the LSO back, and our own newest
//! marker can sit above it. Stopping at the first end-of-partition would then return an older
//! marker and the agent would resend a batch that is already committed (duplicates). So, after
//! `init_transactions` (which also completes or aborts our own previous transaction), for each
//! partition we take the high watermark H with a `read_uncommitted` query (a `read_committed`
//! query answers the LSO instead, the very value we must not trust), and read until our
//! position reaches H, waiting while another producer's transaction holds the LSO below H:
//! that wait ends when the transaction ends, at the latest after its `transaction.timeout.ms`.
//! We read backwards from H in growing chunks and stop at the first chunk holding a marker of
//! ours, so start-up costs do not grow with the uncompacted tail of other agents' markers.

use std::io::Read;
use std::time::{Duration, Instant};

use edge_kafka::broker_log::{self, BrokerLog};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio_util::sync::CancellationToken;

use super::error::{kafka, BadMarker, ForwardError};
use crate::store::codec::{ByteReader, ByteWriter};
use crate::store::meta::INSTANCE_ID;
use crate::store::open_if_exists;
use crate::store::tables::FORWARD_META;

/// Version byte of the marker encoding.
pub const MARKER_VERSION: u8 = 1;

/// Which database (which outbox sequence) a marker counts in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub [u8; 16]);

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// A progress marker: everything of `instance` through `last_seq` is committed in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub agent: String,
    pub instance: InstanceId,
    pub last_seq: u64,
    pub committed_ms: u64,
}

impl Marker {
    /// The version-1 bytes of the module doc.
    pub fn encode(&self) -> Vec<u8> {
        let agent = &self.agent.as_bytes()[..self.agent.len().min(u16::MAX as usize)];
        let mut out = ByteWriter::with_capacity(35 + agent.len());
        out.u8(MARKER_VERSION)
            .bytes_u16(agent)
            .bytes(&self.instance.0)
            .u64(self.last_seq)
            .u64(self.committed_ms);
        out.into_vec()
    }

    /// Reads version-1 bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Marker, BadMarker> {
        let mut r = ByteReader::new(bytes);
        r.version(MARKER_VERSION, BadMarker::Version)?;
        let agent = std::str::from_utf8(r.bytes_u16()?)
            .map_err(|_| BadMarker::Agent)?
            .to_owned();
        let instance = r.array::<16>()?;
        let last_seq = r.u64()?;
        let committed_ms = r.u64()?;
        r.finish().map_err(|_| BadMarker::Trailing)?;
        Ok(Marker {
            agent,
            instance: InstanceId(instance),
            last_seq,
            committed_ms,
        })
    }
}

/// This database's instance id, made (from `/dev/urandom`) and stored on first use.
pub fn instance_id(db: &Database) -> Result<InstanceId, ForwardError> {
    if let Some(table) = open_if_exists(&db.begin_read()?, FORWARD_META)? {
        if let Some(v) = table.get(INSTANCE_ID)? {
            if let Ok(id) = <[u8; 16]>::try_from(v.value()) {
                return Ok(InstanceId(id));
            }
        }
    }
    let mut fresh = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut fresh))
        .map_err(ForwardError::Random)?;
    let txn = db.begin_write()?;
    let id = {
        let mut table = txn.open_table(FORWARD_META)?;
        // Another writer may have made one meanwhile: keep the first.
        let existing = table
            .get(INSTANCE_ID)?
            .and_then(|v| <[u8; 16]>::try_from(v.value()).ok());
        match existing {
            Some(id) => id,
            None => {
                table.insert(INSTANCE_ID, fresh.as_slice())?;
                fresh
            }
        }
    };
    txn.commit()?;
    Ok(InstanceId(id))
}

/// [`Wait::No`] ends once the position stood still this long.
const QUICK_LOOK_IDLE: Duration = Duration::from_millis(250);

/// First chunk read backwards from the high watermark; each further chunk is 4 times larger.
const FIRST_CHUNK: i64 = 256;

/// How far [`read_last`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Up to the high watermark, waiting at most this long for open transactions to end: the
    /// authoritative read.
    ForHighWatermark(Duration),
    /// Only what is readable now (up to the last stable offset): a quick look that may miss
    /// the newest marker, good enough to see whose markers these are.
    No,
}

/// Reads the newest committed marker keyed `agent` in `topic`. `None`: this agent never
/// committed one (or, with [`Wait::No`], none is readable yet).
pub fn read_last(
    client: &ClientConfig,
    topic: &str,
    agent: &str,
    wait: Wait,
    cancel: &CancellationToken,
) -> Result<Option<Marker>, ForwardError> {
    let timeout = Duration::from_secs(10);
    let mut watermarks_config = client.clone();
    watermarks_config.set("isolation.level", "read_uncommitted");
    let watermarks: BaseConsumer<BrokerLog> =
        broker_log::create(&watermarks_config).map_err(kafka("creating a consumer"))?;
    let mut reader_config = client.clone();
    reader_config
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let reader: BaseConsumer<BrokerLog> =
        broker_log::create(&reader_config).map_err(kafka("creating a consumer"))?;
    let metadata = watermarks
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka("reading progress topic metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ForwardError::MissingTopic {
            topic: topic.to_owned(),
        });
    }
    let mut newest: Option<Marker> = None;
    for partition in partitions {
        // A read_uncommitted query answers the high watermark (a read_committed one would
        // answer the last stable offset).
        let (low, high) = watermarks
            .fetch_watermarks(topic, partition, timeout)
            .map_err(kafka("reading progress watermarks"))?;
        let scan = Scan {
            reader: &reader,
            topic,
            partition,
            agent,
            high,
            wait,
        };
        let found = newest_in_partition(&scan, low, cancel)?;
        // Several partitions hold markers only if the topic's partition count changed; the
        // newest commit wins.
        if let Some(m) = found {
            if newest
                .as_ref()
                .is_none_or(|n| (m.committed_ms, m.last_seq) > (n.committed_ms, n.last_seq))
            {
                newest = Some(m);
            }
        }
    }
    Ok(newest)
}

/// One partition being searched.
struct Scan<'a> {
    reader: &'a BaseConsumer<BrokerLog>,
    topic: &'a str,
    partition: i32,
    agent: &'a str,
    high: i64,
    wait: Wait,
}

fn newest_in_partition(
    scan: &Scan<'_>,
    low: i64,
    cancel: &CancellationToken,
) -> Result<Option<Marker>, ForwardError> {
    let mut end = scan.high;
    let mut chunk = FIRST_CHUNK;
    while end > low {
        let start = end.saturating_sub(chunk).max(low);
        let found = read_range(scan, start, end, cancel)?;
        if found.is_some() {
            return Ok(found);
        }
        end = start;
        chunk = chunk.saturating_mul(4);
    }
    Ok(None)
}

/// The last marker keyed `agent` in offsets `[start, end)`, reading until the position reaches
/// `end` (or, with [`Wait::No`], until the end of what is readable).
fn read_range(
    scan: &Scan<'_>,
    start: i64,
    end: i64,
    cancel: &CancellationToken,
) -> Result<Option<Marker>, ForwardError> {
    let (topic, partition) = (scan.topic, scan.partition);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka("assigning the progress partition"))?;
    scan.reader
        .assign(&assignment)
        .map_err(kafka("assigning the progress partition"))?;
    let lso_wait = match scan.wait {
        Wait::ForHighWatermark(d) => d,
        Wait::No => Duration::from_secs(10),
    };
    let deadline = Instant::now() + lso_wait;
    let mut found = None;
    let mut position = start;
    // Wait::No: the end of what is readable is where the position, once known, stops moving.
    let mut moved: Option<Instant> = None;
    loop {
        if scan.wait == Wait::No && moved.is_some_and(|t| t.elapsed() > QUICK_LOOK_IDLE) {
            return Ok(found);
        }
        if position >= end {
            return Ok(found);
        }
        if cancel.is_cancelled() {
            return Err(ForwardError::Cancelled);
        }
        if Instant::now() >= deadline {
            return Err(ForwardError::ProgressTimeout {
                topic: topic.to_owned(),
                partition,
                position,
                high: scan.high,
                waited: lso_wait,
            });
        }
        match scan.reader.poll(Duration::from_millis(100)) {
            Some(Err(KafkaError::PartitionEOF(_))) if scan.wait == Wait::No => return Ok(found),
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(kafka("reading the progress topic")(e)),
            Some(Ok(m)) if m.offset() < end && m.key() == Some(scan.agent.as_bytes()) => {
                let bytes = m.payload().unwrap_or_default();
                let marker = Marker::decode(bytes).map_err(|reason| ForwardError::BadMarker {
                    topic: topic.to_owned(),
                    partition,
                    offset: m.offset(),
                    reason,
                })?;
                found = Some(marker);
            }
            Some(Ok(_)) => {}
        }
        // The position also moves past aborted records and transaction markers, which the
        // reader never returns as messages.
        if let Ok(list) = scan.reader.position() {
            if let Some(Offset::Offset(p)) =
                list.find_partition(topic, partition).map(|e| e.offset())
            {
                if p > position || moved.is_none() {
                    position = position.max(p);
                    moved = Some(Instant::now());
                }
            }
        }
    }
}
