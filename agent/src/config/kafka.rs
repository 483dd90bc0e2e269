//! `[kafka]`: where and how the forwarder delivers the outbox (see [`crate::forward`]).
//!
//! Every key is documented in `configs/agent.example.toml`. Without a `[kafka]` table the agent
//! ingests (and windows) but forwards nothing: the outbox grows to the quota.

use std::collections::BTreeMap;
use std::ops::Range;

use edge_config_toml::defaults::{self, plain, unspanned};
use edge_kafka::Security;
use serde::Deserialize;
use toml::Spanned;

use super::validate::{at_least, legal_name_char};
use super::Invalid;

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: Spanned<String>,
    /// librdkafka settings passed through as they are (TLS, SASL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. They override the forwarder's defaults
    /// (`compression.type = "zstd"`, `linger.ms`, `batch.size`, ...), except the settings
    /// exactly-once depends on, which are refused here: see [`RESERVED_CLIENT_KEYS`].
    #[serde(default)]
    pub client: BTreeMap<Spanned<String>, String>,
    /// TLS and SASL, typed ([`edge_kafka::security`]); plaintext when absent.
    pub security: Option<Spanned<Security>>,
    #[serde(default)]
    pub topics: KafkaTopics,
    /// Create missing topics (`true`, default) or refuse to start naming the missing one.
    #[serde(default = "defaults::default_true")]
    pub create_topics: bool,
    /// Partitions of topics the agent creates; the broker's `num.partitions` when absent.
    pub partitions: Option<Spanned<i32>>,
    /// Replication factor of topics the agent creates; the broker's
    /// `default.replication.factor` when absent.
    pub replication_factor: Option<Spanned<i32>>,
    /// `transaction.timeout.ms` of the producer: the broker aborts a transaction left open
    /// longer (a crashed agent's), and a reader of the progress topic waits at most about this
    /// long for another agent's open transaction. At least 1000; default 60,000.
    #[serde(default = "defaults::u64::<60_000>")]
    pub transaction_timeout_ms: Spanned<u64>,
    /// At most this many outbox records per Kafka transaction (default 10,000) ...
    #[serde(default = "defaults::usize::<10_000>")]
    pub batch_max_records: Spanned<usize>,
    /// ... and at most about this many payload bytes (one record more at most; default 8 MiB).
    #[serde(default = "defaults::usize::<8_388_608>")]
    pub batch_max_bytes: Spanned<usize>,
    /// Transactions sized by time, in ms (default 25): a transaction that is not full (fewer
    /// than `batch_max_records` records and `batch_max_bytes` bytes) starts at least this long
    /// after the previous one started, and an idle forwarder woken by the windowing stage waits
    /// this long before it reads the outbox. A full batch goes at once, so a backlog drains at
    /// full speed. Idle, the forwarder sleeps until the stage wakes it.
    #[serde(default = "plain::u64::<25>")]
    pub poll_interval_ms: u64,
    /// How partials are written to the partials topic: `"postcard"` (default: the compact
    /// version-1 envelope, `protocol/FORMAT.md`) or `"json"` (the JSON form,
    /// `protocol/schemas/partial.v1.schema.json`, for readers without edge-consumer; about six
    /// times larger). edge-consumer reads both. Applies to partials made after the change.
    #[serde(default)]
    pub partial_format: PartialFormat,
    /// Take over the progress of another instance (another database) that used this agent id.
    /// Refused by default: see `forward` ("instance id").
    #[serde(default)]
    pub adopt_agent_id: bool,
}

/// `[kafka] partial_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialFormat {
    #[default]
    Postcard,
    Json,
}

/// `[kafka.topics]`: `{pipeline}` in a name is replaced by the record's pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTopics {
    /// Windowed partial aggregates.
    pub partials: Spanned<String>,
    /// Readings of pipelines without a window, passed through.
    pub readings: Spanned<String>,
    /// Readings that arrived after their window closed.
    pub late: Spanned<String>,
    /// Input that failed parsing or mapping, with the reason.
    pub dead_letters: Spanned<String>,
    /// The compacted topic holding each agent's progress marker.
    pub progress: Spanned<String>,
}

impl Default for KafkaTopics {
    fn default() -> Self {
        let name = |s: &str| unspanned(s.to_owned());
        KafkaTopics {
            partials: name("edge.partials"),
            readings: name("edge.readings"),
            late: name("edge.late"),
            dead_letters: name("edge.dead-letters"),
            progress: name("edge.progress"),
        }
    }
}

/// librdkafka settings the forwarder sets itself, because exactly-once depends on them.
pub const RESERVED_CLIENT_KEYS: [&str; 6] = [
    "bootstrap.servers",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "transaction.timeout.ms",
    "isolation.level",
];

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// The `[kafka]` rules: names, limits, reserved client settings.
pub fn validate_kafka(kafka: &KafkaSection) -> Result<(), (Range<usize>, Invalid)> {
    let fail = |span: Range<usize>, problem| Err((span, problem));
    if kafka.bootstrap_servers.get_ref().trim().is_empty() {
        return fail(
            kafka.bootstrap_servers.span(),
            Invalid::Empty {
                field: "kafka.bootstrap_servers",
            },
        );
    }
    for key in kafka.client.keys() {
        if RESERVED_CLIENT_KEYS.contains(&key.get_ref().as_str()) {
            return fail(
                key.span(),
                Invalid::ReservedClientSetting {
                    key: key.get_ref().clone(),
                    reserved: RESERVED_CLIENT_KEYS.to_vec(),
                },
            );
        }
    }
    if let Some(security) = &kafka.security {
        if let Err((key, reason)) = security.get_ref().validate() {
            return fail(security.span(), Invalid::Security { key, reason });
        }
        let keys = kafka.client.keys().map(|k| k.get_ref().as_str());
        if let Some(key) = security.get_ref().conflict(keys) {
            let span = kafka
                .client
                .keys()
                .find(|k| k.get_ref() == key)
                .map(|k| k.span());
            return fail(
                span.unwrap_or(security.span()),
                Invalid::SecurityClientSetting {
                    key: key.to_owned(),
                },
            );
        }
    }
    let t = &kafka.topics;
    for (name, field) in [
        (&t.partials, "topics.partials"),
        (&t.readings, "topics.readings"),
        (&t.late, "topics.late"),
        (&t.dead_letters, "topics.dead_letters"),
        (&t.progress, "topics.progress"),
    ] {
        // `{pipeline}` expands to a pipeline name, itself `[A-Za-z0-9._-]`.
        let expanded = name.get_ref().replace("{pipeline}", "p");
        if expanded.is_empty() {
            return fail(name.span(), Invalid::Empty { field });
        }
        if !expanded.chars().all(legal_name_char) || expanded.len() > MAX_TOPIC_LEN {
            return fail(name.span(), Invalid::BadName { field });
        }
    }
    if t.progress.get_ref().contains("{pipeline}") || t.dead_letters.get_ref().contains('{') {
        let span = if t.progress.get_ref().contains('{') {
            t.progress.span()
        } else {
            t.dead_letters.span()
        };
        return fail(span, Invalid::BadName { field: "topics" });
    }
    for (value, field) in [
        (&kafka.partitions, "kafka.partitions"),
        (&kafka.replication_factor, "kafka.replication_factor"),
    ] {
        if let Some(value) = value {
            at_least(value, field, 1)?;
        }
    }
    at_least(
        &kafka.transaction_timeout_ms,
        "kafka.transaction_timeout_ms",
        1000,
    )?;
    at_least(&kafka.batch_max_records, "kafka.batch_max_records", 1)?;
    at_least(&kafka.batch_max_bytes, "kafka.batch_max_bytes", 1)
}
