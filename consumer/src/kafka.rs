//! Kafka clients and topics: the consumer's and producer's settings, topic checks and creation,
//! and what a Kafka error means for the loop (retry the session, or stop).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;

/// A Kafka call that failed, and whether a new session may succeed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCallError {
    /// Worth a new session (broker away, transaction aborted, rebalance race, timeout).
    #[error("Kafka: {during}: {source}")]
    Retryable {
        during: &'static str,
        source: Box<KafkaError>,
    },
    /// Stop: fenced by a newer instance with our `transactional.id`, misconfiguration,
    /// authorization.
    #[error("Kafka (fatal): {during}: {source}")]
    Fatal {
        during: &'static str,
        source: Box<KafkaError>,
    },
    /// A topic the consumer needs is missing or too small.
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

impl KafkaCallError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, KafkaCallError::Retryable { .. })
    }
}

/// Classifies `e`, raised while `during`.
pub fn classify(during: &'static str, e: KafkaError) -> KafkaCallError {
    let fatal = match &e {
        KafkaError::Transaction(t) => t.is_fatal(),
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => true,
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::Fatal
            )
        ),
    };
    let source = Box::new(e);
    if fatal {
        KafkaCallError::Fatal { during, source }
    } else {
        KafkaCallError::Retryable { during, source }
    }
}

fn base(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set(
        "bootstrap.servers",
        config.kafka.bootstrap_servers.get_ref(),
    );
    for (k, v) in &config.kafka.client {
        c.set(k.get_ref(), v);
    }
    c
}

/// The group consumer: `read_committed`, no auto-commit (offsets go through the producer's
/// transaction), partition EOF events (the loop's "caught up" signal).
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", config.kafka.group_id.get_ref())
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    c
}

/// The changelog reader used to restore a partition: assign-only, never commits.
pub fn restore_config(config: &Config) -> ClientConfig {
    let mut c = base(config);
    c.set(
        "group.id",
        format!("{}.restore", config.kafka.group_id.get_ref()),
    )
    .set("isolation.level", "read_committed")
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true")
    .set("auto.offset.reset", "earliest");
    c
}

/// The instance's one transactional producer: `transactional.id` = `{group_id}.{instance_id}`.
///
/// `retry.backoff.ms` defaults to 10 here (librdkafka: 100): right after a commit the broker
/// answers the next transaction's first `AddPartitionsToTxn` with `CONCURRENT_TRANSACTIONS`
/// while it writes the markers, and the retry backoff then sets the pace of back-to-back
/// transactions. `[kafka.client]` may set it.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("retry.backoff.ms", "10");
    let user = base(config);
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    c.set(
        "transactional.id",
        format!(
            "{}.{}",
            config.kafka.group_id.get_ref(),
            config.kafka.instance_id.get_ref()
        ),
    )
    .set("enable.idempotence", "true")
    .set("acks", "all")
    .set(
        "transaction.timeout.ms",
        config.kafka.transaction_timeout_ms.get_ref().to_string(),
    );
    c
}

/// Checks the topics, creating the outputs when `[topics] create` allows: the changelog must
/// have at least as many partitions as every input topic (state of input partition `p` lives
/// in changelog partition `p`). Returns the input topics' partition counts.
pub fn prepare_topics(
    config: &Config,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, KafkaCallError> {
    let probe: BaseConsumer = base(config)
        .create()
        .map_err(|e| classify("creating a metadata client", e))?;
    let count = |topic: &str| -> Result<Option<i32>, KafkaCallError> {
        let md = probe
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| classify("fetching topic metadata", e))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
    };
    let mut inputs = BTreeMap::new();
    for topic in config.topics.inputs.get_ref() {
        let n = count(topic)?.ok_or_else(|| KafkaCallError::Topic {
            topic: topic.clone(),
            reason: "input topic does not exist".into(),
        })?;
        inputs.insert(topic.clone(), n);
    }
    let needed = inputs.values().copied().max().unwrap_or(1);
    let t = &config.topics;
    let wanted = [
        (t.finals.get_ref(), "compact"),
        (t.changelog.get_ref(), "compact"),
        (t.dead_letters.get_ref(), "delete"),
    ];
    for (topic, policy) in wanted {
        if count(topic)?.is_none() {
            if !t.create {
                return Err(KafkaCallError::Topic {
                    topic: topic.clone(),
                    reason: "does not exist and [topics] create = false".into(),
                });
            }
            create(config, topic, needed, policy, timeout)?;
        }
    }
    let changelog = t.changelog.get_ref();
    match count(changelog)? {
        Some(n) if n >= needed => Ok(inputs),
        found => Err(KafkaCallError::Topic {
            topic: changelog.clone(),
            reason: format!(
                "has {} partitions; it needs at least {needed} (the inputs' largest count)",
                found.unwrap_or(0)
            ),
        }),
    }
}

fn create(
    config: &Config,
    topic: &str,
    partitions: i32,
    policy: &str,
    timeout: Duration,
) -> Result<(), KafkaCallError> {
    let admin: AdminClient<DefaultClientContext> = base(config)
        .create()
        .map_err(|e| classify("creating an admin client", e))?;
    let replication = match &config.topics.replication_factor {
        Some(r) => TopicReplication::Fixed(*r.get_ref()),
        None => TopicReplication::Fixed(-1),
    };
    let new = NewTopic::new(topic, partitions, replication).set("cleanup.policy", policy);
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| KafkaCallError::Topic {
            topic: topic.into(),
            reason: "no runtime for the admin client".into(),
        })?;
    let results = runtime
        .block_on(admin.create_topics([&new], &options))
        .map_err(|e| classify("creating a topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(classify("creating a topic", KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}
