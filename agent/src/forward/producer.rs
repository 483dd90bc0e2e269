//! Kafka clients of the forwarder: the transactional producer's settings, the reader's
//! settings, and the topics (checked, or created when allowed). The base settings, the
//! transactional ones and the topic calls are `edge_kafka`'s, shared with the consumer.

use std::time::Duration;

use edge_kafka::broker_log::{self, BrokerLog};
use edge_kafka::{admin_options, create_topics, partition_count, TopicError};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use super::error::{kafka, ForwardError};
use crate::config::KafkaSection;

/// Settings the forwarder picks for throughput; `[kafka.client]` may override each.
pub const PRODUCER_DEFAULTS: [(&str, &str); 9] = [
    ("compression.type", "zstd"),
    // A transaction's first AddPartitionsToTxn is often answered CONCURRENT_TRANSACTIONS while
    // the broker still writes the previous one's markers; librdkafka retries it after
    // retry.backoff.ms (default 100 ms): a delay on every transaction that follows another.
    ("retry.backoff.ms", "10"),
    // ... and backs off exponentially up to retry.backoff.max.ms (default 1 s): keep it short.
    ("retry.backoff.max.ms", "100"),
    // Small requests (EndTxn, AddPartitionsToTxn) must not wait for delayed ACKs.
    ("socket.nagle.disable", "true"),
    ("linger.ms", "5"),
    ("batch.size", "1000000"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "200000"),
    // A cap on librdkafka's copy of unsent payloads: twice the default `batch_max_bytes`, so a
    // transaction never waits on it, and a bound on memory whatever `[kafka.client]` batches
    // (a full queue makes `send` serve delivery reports and retry, never fail).
    ("queue.buffering.max.kbytes", "16384"),
];

/// Settings of the progress topic when the agent creates it: compacted (one marker per agent
/// survives), with segments rolled every 10 minutes so the cleaner can compact them (the
/// active segment is never compacted).
pub const PROGRESS_TOPIC_CONFIG: [(&str, &str); 3] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// `transactional.id` of agent `agent`.
pub fn transactional_id(agent: &str) -> String {
    format!("edge-agent.{agent}")
}

/// Longest wait between two connection attempts to a broker, in ms (`[kafka.client]` may set
/// it); see [`edge_kafka::RECONNECT_BACKOFF_MAX_MS`].
pub use edge_kafka::RECONNECT_BACKOFF_MAX_MS;

/// Settings every client of the forwarder shares: bootstrap, the reconnect backoff (the
/// passthrough, applied after this, may override it), `[kafka.security]`.
fn common(kafka: &KafkaSection) -> ClientConfig {
    let mut config = edge_kafka::client_config(kafka.bootstrap_servers.get_ref());
    if let Some(security) = &kafka.security {
        security.get_ref().apply(&mut config);
    }
    config
}

fn passthrough(config: &mut ClientConfig, kafka: &KafkaSection) {
    for (key, value) in &kafka.client {
        config.set(key.get_ref(), value);
    }
}

/// The transactional producer's settings.
pub fn producer_config(kafka: &KafkaSection, agent: &str) -> ClientConfig {
    let mut config = common(kafka);
    for (key, value) in PRODUCER_DEFAULTS {
        config.set(key, value);
    }
    let txn_timeout = *kafka.transaction_timeout_ms.get_ref();
    // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
    config.set("message.timeout.ms", txn_timeout.to_string());
    passthrough(&mut config, kafka);
    edge_kafka::set_transactional(&mut config, &transactional_id(agent), txn_timeout);
    config
}

/// Settings of the progress reader and the metadata queries. Producer-only passthrough keys
/// are left out (librdkafka would warn about each).
pub fn reader_config(kafka: &KafkaSection, agent: &str) -> ClientConfig {
    let mut config = common(kafka);
    for (key, value) in &kafka.client {
        let key = key.get_ref();
        let producer_only = PRODUCER_DEFAULTS.iter().any(|(k, _)| *k == key)
            || key.starts_with("queue.buffering")
            || key == "message.timeout.ms"
            || key == "retries";
        if !producer_only {
            config.set(key, value);
        }
    }
    config
        .set("group.id", format!("edge-agent.{agent}.progress-reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    config
}

/// Makes sure every topic in `topics` exists: creates the missing ones when allowed (the
/// progress topic compacted), else fails naming the first missing one.
pub fn ensure_topics(
    kafka: &KafkaSection,
    reader: &ClientConfig,
    topics: &[String],
    progress_topic: &str,
) -> Result<(), ForwardError> {
    let timeout = Duration::from_secs(15);
    let consumer: BaseConsumer<BrokerLog> =
        broker_log::create(reader).map_err(kafka_err("creating a client"))?;
    let mut missing = Vec::new();
    for topic in topics {
        let exists = partition_count(consumer.client(), topic, timeout)
            .map_err(kafka_err("reading topic metadata"))?
            .is_some();
        if !exists {
            missing.push(topic.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !kafka.create_topics {
        return Err(ForwardError::MissingTopic {
            topic: missing.swap_remove(0),
        });
    }
    let partitions = kafka.partitions.as_ref().map_or(-1, |p| *p.get_ref());
    let replication = kafka
        .replication_factor
        .as_ref()
        .map_or(-1, |r| *r.get_ref());
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|topic| {
            let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
            if topic == progress_topic {
                for (key, value) in PROGRESS_TOPIC_CONFIG {
                    new = new.set(key, value);
                }
            }
            new
        })
        .collect();
    let log = |created: Vec<String>| {
        for topic in created {
            tracing::info!(topic, "created Kafka topic");
        }
    };
    match create_topics(reader, &new, &admin_options(timeout)) {
        Ok(created) => {
            log(created);
            Ok(())
        }
        Err(TopicError::Client(source)) => Err(kafka_err("creating an admin client")(source)),
        Err(TopicError::Runtime(io)) => Err(ForwardError::Runtime(io)),
        Err(TopicError::Request(source)) => Err(kafka_err("creating topics")(source)),
        Err(TopicError::Refused { code, created, .. }) => {
            log(created);
            Err(kafka_err("creating topics")(KafkaError::AdminOp(code)))
        }
    }
}

fn kafka_err(during: &'static str) -> impl Fn(KafkaError) -> ForwardError {
    kafka(during)
}
