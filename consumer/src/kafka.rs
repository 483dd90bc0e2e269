//! Kafka clients and topics: the consumer's and producer's settings, topic checks and creation,
//! and what a Kafka error means for the loop (retry the session, or stop). The base settings,
//! the transactional ones, the topic calls and the fatal-or-retryable rule are `edge_kafka`'s,
//! shared with the agent's forwarder.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_kafka::{admin_options, applies_to, create_topics, partition_count, Role, TopicError};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;

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

    /// The group coordinator fenced our consumer: a member with the same `group.instance.id`
    /// joined. A broker restart can cause this once (seen with Kafka 4.1 in a CI run: the
    /// coordinator fenced the only member while shutting down); another process configured
    /// with our `instance_id` causes it again and again ([`crate::run`] tells them apart).
    pub fn is_instance_fenced(&self) -> bool {
        match self {
            KafkaCallError::Retryable { source, .. } | KafkaCallError::Fatal { source, .. } => {
                source.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
            }
            KafkaCallError::Topic { .. } => false,
        }
    }
}

/// A poll's error event: fails when fatal, and when librdkafka says the consumer itself is dead
/// (`MessageConsumptionFatal`, say fenced by a member with our `group.instance.id`): it fetches
/// nothing more, so only a new session (a new consumer) goes on. A retryable one (a lost
/// broker, which librdkafka reconnects to and resumes fetching from by itself) is logged and
/// ridden out.
pub fn poll_error(during: &'static str, e: KafkaError) -> Result<(), KafkaCallError> {
    let consumer_dead = matches!(e, KafkaError::MessageConsumptionFatal(_));
    let e = classify(during, e);
    if !e.is_retryable() || consumer_dead {
        return Err(e);
    }
    tracing::warn!(error = %e, "{during}: error event (librdkafka retries)");
    Ok(())
}

/// Classifies `e`, raised while `during` ([`edge_kafka::is_fatal`] sorts it).
pub fn classify(during: &'static str, e: KafkaError) -> KafkaCallError {
    let fatal = edge_kafka::is_fatal(&e);
    let source = Box::new(e);
    if fatal {
        KafkaCallError::Fatal { during, source }
    } else {
        KafkaCallError::Retryable { during, source }
    }
}

/// Bootstrap and the reconnect backoff ([`edge_kafka::client_config`]: librdkafka's default
/// would retry a broker that is back up to 15 s late), `[kafka.security]`, then the user's
/// `[kafka.client]`, less
/// the settings only the other role reads ([`edge_kafka::applies_to`]: no CONFWARN).
fn base(config: &Config, role: Role) -> ClientConfig {
    let mut c = edge_kafka::client_config(config.kafka.bootstrap_servers.get_ref());
    if let Some(security) = &config.kafka.security {
        security.get_ref().apply(&mut c);
    }
    for (k, v) in &config.kafka.client {
        if applies_to(k.get_ref(), role) {
            c.set(k.get_ref(), v);
        }
    }
    c
}

/// The group consumer: `read_committed`, no auto-commit (offsets go through the producer's
/// transaction), partition EOF events (the loop's "caught up" signal).
///
/// Static membership (KIP-345): `group.instance.id` is `[kafka] instance_id`. A new session of
/// the same instance (after a failed transaction, or a restart of the process) takes over its
/// old member at once, with its partitions, instead of waiting out the old member's
/// `session.timeout.ms` in a rebalance; that wait was most of the pause after a broker restart.
/// The price: an instance that stops for good keeps its partitions until its session times
/// out (librdkafka does not leave the group for a static member), so keep `session.timeout.ms`
/// short (the example config: 10 s). With `[ops] metrics`,
/// librdkafka statistics every [`STATISTICS_INTERVAL_MS`] (the lag per partition; see
/// [`partition_lags`]) unless `[kafka.client]` sets `statistics.interval.ms` itself.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = base(config, Role::Consumer);
    c.set("group.id", config.kafka.group_id.get_ref())
        .set("group.instance.id", config.kafka.instance_id.get_ref())
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    if config.ops.metrics && c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
    }
    c
}

/// How often the group consumer's statistics (and so the lag gauges) refresh.
pub const STATISTICS_INTERVAL_MS: u64 = 5000;

/// The parts of librdkafka's statistics JSON (`STATISTICS.md` of librdkafka) the lag needs.
///
/// Not `rdkafka::statistics::Statistics`: its structs have no serde defaults, so a statistics
/// message that lacks any one of its ~150 fields (another librdkafka version, a partition
/// librdkafka has not fetched yet) would not parse at all, and the lag gauges would go blank.
/// Reading only these five fields, each with librdkafka's "invalid" default, keeps them.
#[derive(Debug, Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: BTreeMap<String, TopicStatistics>,
}

#[derive(Debug, Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: BTreeMap<String, PartitionStatistics>,
}

#[derive(Debug, Deserialize)]
struct PartitionStatistics {
    partition: i32,
    #[serde(default = "invalid_offset")]
    app_offset: i64,
    #[serde(default = "invalid_offset")]
    committed_offset: i64,
    #[serde(default = "invalid_offset")]
    lo_offset: i64,
    #[serde(default = "invalid_offset")]
    ls_offset: i64,
}

fn invalid_offset() -> i64 {
    -1001
}

/// Records behind the end of each partition the statistics know a position for: the last
/// stable offset (the end a `read_committed` reader can reach) minus the next offset the loop
/// will read (`app_offset`: the last record handed to the loop + 1; before the first record,
/// the committed offset the consumer started from, or without one the partition's low
/// watermark, where `auto.offset.reset = earliest` starts). Partitions without a known end or
/// position are left out (librdkafka's internal partition -1 too). Transaction markers occupy
/// offsets, but librdkafka moves `app_offset` past a marker once the loop polls over it, so a
/// drained partition shows 0.
pub fn partition_lags(json: &[u8]) -> Result<BTreeMap<(String, i32), i64>, serde_json::Error> {
    let stats: Statistics = serde_json::from_slice(json)?;
    let mut out = BTreeMap::new();
    for (topic, t) in stats.topics {
        for p in t.partitions.into_values() {
            let position = match [p.app_offset, p.committed_offset, p.lo_offset]
                .into_iter()
                .find(|o| *o >= 0)
            {
                Some(o) => o,
                None => continue,
            };
            if p.partition < 0 || p.ls_offset < 0 {
                continue;
            }
            out.insert(
                (topic.clone(), p.partition),
                (p.ls_offset - position).max(0),
            );
        }
    }
    Ok(out)
}

/// The changelog reader used to restore a partition: assign-only, never commits.
///
/// `fetch.wait.max.ms` 10 (librdkafka: 500): the reader only reads to the partition's end, and
/// at the end a fetch waits that long on the broker for data that will not come before the
/// end-of-partition event; with the default, a restore took about 1 s per partition even
/// when the changelog was nearly empty.
pub fn restore_config(config: &Config) -> ClientConfig {
    let mut c = base(config, Role::Consumer);
    c.set(
        "group.id",
        format!("{}.restore", config.kafka.group_id.get_ref()),
    )
    .set("fetch.wait.max.ms", "10")
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
    let user = base(config, Role::Producer);
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    let id = format!(
        "{}.{}",
        config.kafka.group_id.get_ref(),
        config.kafka.instance_id.get_ref()
    );
    edge_kafka::set_transactional(&mut c, &id, *config.kafka.transaction_timeout_ms.get_ref());
    c
}

/// Checks the topics, creating the outputs when `[topics] create` allows: the changelog must
/// have at least as many partitions as every input topic (state of input partition `p` lives
/// in changelog partition `p`). Returns the input topics' partition counts.
pub fn prepare_topics(
    config: &Config,
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, KafkaCallError> {
    let probe: BaseConsumer<edge_kafka::BrokerLog> =
        edge_kafka::broker_log::create(&base(config, Role::Consumer))
            .map_err(|e| classify("creating a metadata client", e))?;
    let count = |topic: &str| -> Result<Option<i32>, KafkaCallError> {
        let n = partition_count(probe.client(), topic, timeout)
            .map_err(|e| classify("fetching topic metadata", e))?;
        Ok(n.map(|n| n as i32))
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
    let replication = match &config.topics.replication_factor {
        Some(r) => TopicReplication::Fixed(*r.get_ref()),
        None => TopicReplication::Fixed(-1),
    };
    let new = NewTopic::new(topic, partitions, replication).set("cleanup.policy", policy);
    // An admin client is a producer handle to librdkafka.
    create_topics(
        &base(config, Role::Producer),
        [&new],
        &admin_options(timeout),
    )
    .map_err(|e| match e {
        TopicError::Client(e) => classify("creating an admin client", e),
        TopicError::Runtime(_) => KafkaCallError::Topic {
            topic: topic.into(),
            reason: "no runtime for the admin client".into(),
        },
        TopicError::Request(e) => classify("creating a topic", e),
        TopicError::Refused { code, .. } => classify("creating a topic", KafkaError::AdminOp(code)),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;

    fn parse(text: &str) -> Config {
        Config::parse(std::path::Path::new("c.toml"), text).unwrap()
    }

    #[test]
    fn lag_is_the_last_stable_offset_minus_the_position_of_each_known_partition() {
        let json = br#"{"name": "c#consumer-1", "type": "consumer", "topics": {
          "in": {"topic": "in", "partitions": {
            "0": {"partition": 0, "app_offset": 40, "committed_offset": 10, "ls_offset": 52, "hi_offset": 60},
            "1": {"partition": 1, "app_offset": -1001, "committed_offset": 7, "ls_offset": 7},
            "2": {"partition": 2, "app_offset": -1001, "committed_offset": -1001, "ls_offset": 9},
            "4": {"partition": 4, "app_offset": -1001, "committed_offset": -1001, "lo_offset": 3, "ls_offset": 9},
            "3": {"partition": 3, "app_offset": 5, "committed_offset": 5, "ls_offset": -1001},
            "-1": {"partition": -1, "app_offset": -1001, "committed_offset": -1001, "ls_offset": -1001}
          }},
          "other": {"topic": "other", "partitions": {
            "0": {"partition": 0, "app_offset": 12, "committed_offset": -1001, "ls_offset": 11}
          }}
        }}"#;
        let lags = partition_lags(json).unwrap();
        let expected: BTreeMap<(String, i32), i64> = [
            (("in".to_owned(), 0), 12),
            (("in".to_owned(), 1), 0),
            (("in".to_owned(), 4), 6),
            (("other".to_owned(), 0), 0),
        ]
        .into();
        assert_eq!(lags, expected);
    }

    #[test]
    fn statistics_without_topics_give_no_lag_and_garbage_is_an_error() {
        assert!(partition_lags(br#"{"name": "x", "brokers": {}}"#)
            .unwrap()
            .is_empty());
        assert!(partition_lags(b"not json").is_err());
    }

    #[test]
    fn every_client_retries_a_lost_broker_at_least_once_a_second_unless_the_user_says_otherwise() {
        let ours = parse(MINIMAL);
        for c in [
            consumer_config(&ours),
            producer_config(&ours),
            restore_config(&ours),
        ] {
            assert_eq!(c.get("reconnect.backoff.max.ms"), Some("1000"));
        }
        let theirs = parse(&MINIMAL.replace(
            "[topics]",
            "[kafka.client]\n\"reconnect.backoff.max.ms\" = \"30000\"\n[topics]",
        ));
        for c in [
            consumer_config(&theirs),
            producer_config(&theirs),
            restore_config(&theirs),
        ] {
            assert_eq!(c.get("reconnect.backoff.max.ms"), Some("30000"));
        }
    }

    /// Regression: `session.timeout.ms` and `heartbeat.interval.ms` from `[kafka.client]` went
    /// to the producer too, and librdkafka logged a CONFWARN for each at every session.
    #[test]
    fn each_client_gets_only_the_passthrough_settings_of_its_role() {
        let c = parse(&MINIMAL.replace(
            "[topics]",
            "[kafka.client]\n\"session.timeout.ms\" = \"6000\"\n\"linger.ms\" = \"5\"\n\
             \"client.id\" = \"x\"\n[topics]",
        ));
        let (consumer, producer) = (consumer_config(&c), producer_config(&c));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(restore_config(&c).get("linger.ms"), None);
        assert_eq!(consumer.get("client.id"), Some("x"));
        assert_eq!(producer.get("client.id"), Some("x"));
    }

    #[test]
    fn the_group_member_is_static_and_named_by_the_instance_id() {
        let c = parse(MINIMAL);
        assert_eq!(consumer_config(&c).get("group.instance.id"), Some("a"));
        // The changelog reader is no group member at all.
        assert_eq!(restore_config(&c).get("group.instance.id"), None);
    }

    #[test]
    fn statistics_are_asked_for_only_with_metrics_and_never_over_the_users_interval() {
        let on = consumer_config(&parse(MINIMAL));
        assert_eq!(on.get("statistics.interval.ms"), Some("5000"));
        let off = consumer_config(&parse(&format!("{MINIMAL}[ops]\nmetrics = false\n")));
        assert_eq!(off.get("statistics.interval.ms"), None);
        let user = MINIMAL.replace(
            "[topics]",
            "[kafka.client]\n\"statistics.interval.ms\" = \"60000\"\n[topics]",
        );
        let user = consumer_config(&parse(&user));
        assert_eq!(user.get("statistics.interval.ms"), Some("60000"));
    }
}
