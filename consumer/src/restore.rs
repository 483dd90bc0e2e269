//! Restore: a new owner of input partition `p` rebuilds its state from changelog partition `p`
//! before it processes any record of `p`.
//!
//! # Why this is the state as of the committed input offset
//!
//! Every transaction writes the finals, the newest value of each changed state key, and the input
//! offsets, and commits them atomically. So for a `read_committed` reader the changelog holds
//! exactly the state that goes with the committed offset of `p`, provided no transaction that
//! touches `p` is still open. The loop first asks for the committed offsets of the newly
//! assigned partitions: under `read_committed` librdkafka asks the coordinator for *stable*
//! offsets (KIP-447), which waits while a previous owner's transaction with offsets for `p` is
//! pending. A previous owner whose offsets were not yet sent can no longer send them: the
//! coordinator refuses its `TxnOffsetCommit` (old generation), so it must abort, and its
//! changelog records are never visible. Reading the changelog partition up to its end for a
//! `read_committed` reader (the last stable offset) therefore yields the state that belongs to
//! the committed offset: nothing counted twice, nothing missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{decode_entry, ChangelogError, Entry};
use crate::kafka::{classify, poll_error, KafkaCallError};
use crate::merge::{Meta, PartitionState, Settings, Source, SourceKey, WindowKey, WindowState};

/// Why a partition could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Kafka(#[from] KafkaCallError),
    /// A changelog record is unreadable: fatal, the state cannot be trusted.
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
    #[error("restoring {topic}/{partition} did not reach the changelog's end within {timeout:?}")]
    Timeout {
        topic: String,
        partition: i32,
        timeout: Duration,
    },
}

/// Reads changelog partition `partition` from the start to its end and rebuilds the state of
/// input `topic`/`partition`. Returns the state and the number of changelog records read.
pub fn restore_partition<C: ConsumerContext>(
    reader: &BaseConsumer<C>,
    changelog: &str,
    topic: &str,
    partition: i32,
    settings: &Settings,
    timeout: Duration,
) -> Result<(PartitionState, u64), RestoreError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, partition, Offset::Beginning)
        .map_err(|e| classify("assigning the changelog", e))?;
    reader
        .assign(&tpl)
        .map_err(|e| classify("assigning the changelog", e))?;
    let mut windows: BTreeMap<WindowKey, WindowState> = BTreeMap::new();
    let mut sources: BTreeMap<SourceKey, Source> = BTreeMap::new();
    let mut meta: Option<Meta> = None;
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(RestoreError::Timeout {
                topic: topic.into(),
                partition,
                timeout,
            });
        }
        match reader.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            // A lost broker shows up here as error events that librdkafka retries by itself
            // (it resumes fetching where it stopped): wait for it, bounded by the deadline.
            Some(Err(e)) => poll_error("reading the changelog", e)?,
            Some(Ok(m)) => {
                read += 1;
                let Some(key) = m.key() else { continue };
                match decode_entry(topic, partition, key, m.payload())? {
                    None => {}
                    Some(Entry::Window(k, Some(w))) => {
                        windows.insert(k, *w);
                    }
                    Some(Entry::Window(k, None)) => {
                        windows.remove(&k);
                    }
                    Some(Entry::Source(k, Some(s))) => {
                        sources.insert(k, s);
                    }
                    Some(Entry::Source(k, None)) => {
                        sources.remove(&k);
                    }
                    Some(Entry::Meta(m)) => meta = m,
                }
            }
        }
    }
    reader
        .unassign()
        .map_err(|e| classify("unassigning the changelog", e))?;
    let state = PartitionState::restore(settings.clone(), windows, sources, meta);
    Ok((state, read))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;
    use crate::changelog::{encode, meta_key, source_key};
    use crate::merge::tests::settings;

    /// librdkafka's mock cluster stands in for a broker that goes away and comes back; the
    /// transactional behaviour it lacks plays no part here.
    #[test]
    fn a_broker_lost_and_back_during_a_restore_only_delays_it() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("cl", 1, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let source = |n: u8| SourceKey {
            agent: "gw".into(),
            series: format!("s{n}"),
        };
        let value = Source {
            group: "g".into(),
            watermark_ms: 7,
            last_seen_ms: 9,
        };
        let meta = Meta {
            stream_time_ms: 42,
            frontier_ms: 40,
            swept_ms: 0,
        };
        let records: Vec<(String, Option<Vec<u8>>)> = vec![
            (source_key("in", 0, &source(1)), Some(encode(&value))),
            (source_key("in", 0, &source(2)), Some(encode(&value))),
            (source_key("in", 0, &source(1)), None),
            (source_key("in", 1, &source(3)), Some(encode(&value))),
            (meta_key("in", 0), Some(encode(&meta))),
        ];
        for (key, payload) in &records {
            let mut r = BaseRecord::<str, [u8]>::to("cl").key(key.as_str());
            if let Some(p) = payload {
                r = r.payload(p.as_slice());
            }
            producer.send(r).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "restore")
            .set("enable.partition.eof", "true")
            .set("reconnect.backoff.max.ms", "100")
            .create()
            .unwrap();
        cluster.broker_down(1).unwrap();
        // The reader meets the lost broker first (errors on its queue), then the broker is back.
        let restore = std::thread::spawn(move || {
            restore_partition(&reader, "cl", "in", 0, &settings(), Duration::from_secs(30))
        });
        std::thread::sleep(Duration::from_millis(1500));
        cluster.broker_up(1).unwrap();
        let (state, read) = restore.join().unwrap().unwrap();
        assert_eq!(read, records.len() as u64);
        assert_eq!(state.sources(), 1);
        assert_eq!(state.meta(), meta);
    }
}
