//! The agent's configuration: one TOML file, documented key by key in
//! `configs/agent.example.toml` (a test parses that file, so the example cannot rot).
//!
//! # Shape
//!
//! | table | holds |
//! | --- | --- |
//! | `[agent]` | `id` (names the agent in Kafka headers and the transactional id), `data_dir` (the redb file lives there) |
//! | `[buffer]` | `quota_bytes`, `on_full = "backpressure" \| "drop_oldest"`, group-commit limits, dedupe bounds, payload cap |
//! | `[[mqtt]]` | one broker connection: `url` (`mqtt://` or `mqtts://`), credentials, `version` (3 = MQTT 3.1.1, or 5 with `session_expiry_s` and `user_properties`), `[[mqtt.subscribe]]`, `[mqtt.payload]` |
//! | `[[serial]]` | one serial line: `path`, `baud`, `framing = "link" \| "line"`, `time_sync_interval_s` (link only) |
//! | `[[modbus]]` | one Modbus device: `tcp = "host:port"` or `serial` (RTU: `baud`, `parity`, `stop_bits`), `unit`, `timeout_ms`, `[[modbus.block]]` reads with their `[[modbus.block.register]]`s (see [`modbus`]) |
//! | `[[sensor]]` | the sensor mapping: a topic pattern with `{captures}` (MQTT), a device channel (serial) or a register name (Modbus) to an `id` template, `unit`, `scale`, `offset`, `min`/`max` |
//! | `[[pipeline]]` | which sensors (`*` globs over sensor ids) go to which pipeline; `[pipeline.window]` (see [`WindowConfig`]): kind, size, slide, lateness, idle timeout, late policy, revisions, cap, grouping |
//! | `[ops]` | metrics listener, shutdown bound, watchdog stall bound (see [`OpsSection`]) |
//! | `[kafka]` | the forwarder: `bootstrap_servers`, `client` (librdkafka passthrough), `[kafka.topics]`, topic creation, transaction and batch limits (see [`KafkaSection`]) |
//!
//! # Invariants
//!
//! - Every table rejects unknown keys (`deny_unknown_fields`): a misspelt key is an error naming
//!   the line and the keys that are allowed, never silently ignored.
//! - A [`Config`] that [`Config::from_toml`] returned has passed [`validate`]: source names are
//!   unique, every `[[sensor]]` names a source that exists, every `{placeholder}` in an `id`
//!   template is defined for that source, topic patterns and subscriptions are well formed,
//!   `min <= max`, QoS is 0, 1 or 2. The rest of the agent relies on this and does not re-check.
//! - Every error is fatal for start-up (a configuration does not get better by retrying) and
//!   names the file, the line and column, the field and what is allowed.
//!
//! Template and topic-pattern syntax live in [`crate::mapping`], which also applies them.
//!
//! Reading the file, parsing it and locating an error ([`Location`]), the spanned defaults
//! (`defaults::u64::<60_000>`) and the glob and template language are `edge_config_toml`'s,
//! shared with the consumer; the wording of every message is the agent's ([`ConfigError`]).
//! Unit tests build their configurations from `config::fixtures` (`AGENT`, `MINIMAL`,
//! `with_agent`, `config`).

mod error;
mod kafka;
pub mod modbus;
mod ops;
mod validate;
mod window;

use std::path::{Path, PathBuf};

use edge_config_toml::defaults::{self, plain, unspanned};
use serde::Deserialize;
use toml::Spanned;

pub use error::{ConfigError, Invalid, Location};
pub use kafka::{validate_kafka, KafkaSection, KafkaTopics, PartialFormat, RESERVED_CLIENT_KEYS};
pub use modbus::{validate_modbus, ModbusSource};
pub use ops::OpsSection;
pub use validate::validate;
pub use window::{validate_window, WindowConfig, WindowKind};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    #[serde(default)]
    pub buffer: BufferSection,
    #[serde(default)]
    pub mqtt: Vec<MqttSource>,
    #[serde(default)]
    pub serial: Vec<SerialSource>,
    #[serde(default)]
    pub modbus: Vec<ModbusSource>,
    #[serde(default)]
    pub sensor: Vec<SensorMapping>,
    #[serde(default)]
    pub pipeline: Vec<Pipeline>,
    /// Where the forwarder delivers; nothing is forwarded without it.
    pub kafka: Option<KafkaSection>,
    /// Metrics listener, shutdown bound, watchdog (see [`OpsSection`]).
    #[serde(default)]
    pub ops: OpsSection,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Stable name of this gateway; must be non-empty, `[A-Za-z0-9._-]`.
    pub id: Spanned<String>,
    /// Directory holding `ingest.redb`; created when missing.
    pub data_dir: PathBuf,
}

/// What the writer does when the ingest log reaches its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Stop committing and acknowledging; sources keep their connections alive and the
    /// broker / firmware hold the data.
    Backpressure,
    /// Evict the oldest readings to make room, counting each in `dropped`.
    DropOldest,
}

/// `[buffer]`: the ingest log's limits. Every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferSection {
    /// Upper bound on the ingest log's readings, in estimated bytes (see `ingest` for the
    /// estimate).
    pub quota_bytes: Spanned<u64>,
    pub on_full: OnFull,
    /// Group commit: at most this many readings per write transaction.
    pub batch_max_readings: Spanned<usize>,
    /// Group commit: wait at most this long for more readings once one is waiting (default
    /// 20: each commit is an fsync and rewrites the pages it touches, so fewer, larger commits
    /// cost less CPU per reading; an ack waits at most this much longer).
    pub batch_max_ms: u64,
    /// Capacity (in messages) of the channel from the sources to the writer.
    pub channel_capacity: Spanned<usize>,
    /// The dedupe index keeps this many keys (plus at most one commit's: it evicts a commit's
    /// keys at a time) ...
    pub dedupe_max_entries: Spanned<u64>,
    /// ... and forgets keys older than this.
    pub dedupe_max_age_s: u64,
    /// Payloads larger than this are rejected (dead-lettered) without parsing.
    pub max_payload_bytes: Spanned<usize>,
}

impl Default for BufferSection {
    fn default() -> Self {
        BufferSection {
            quota_bytes: unspanned(256 * 1024 * 1024),
            on_full: OnFull::Backpressure,
            batch_max_readings: unspanned(1000),
            batch_max_ms: 20,
            channel_capacity: unspanned(1024),
            dedupe_max_entries: unspanned(1_000_000),
            dedupe_max_age_s: 7 * 24 * 3600,
            max_payload_bytes: unspanned(64 * 1024),
        }
    }
}

/// `[[mqtt]]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// Unique among all sources; `[[sensor]]` tables refer to it.
    pub name: Spanned<String>,
    /// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (default 8883).
    pub url: Spanned<String>,
    pub client_id: Spanned<String>,
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<Spanned<String>>,
    /// File whose contents (trailing newline removed) are the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://`; the system roots when absent.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// A client certificate (PEM) for brokers that require one (Mosquitto's
    /// `require_certificate`); with `key_file` and `ca_file`.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// The certificate's private key (PEM, PKCS#8 or RSA/EC); not readable by every user.
    pub key_file: Option<Spanned<PathBuf>>,
    /// Default 30.
    #[serde(default = "plain::u64::<30>")]
    pub keep_alive_s: u64,
    /// `clean_session = false`: the broker keeps subscriptions and unacknowledged messages while
    /// the agent is away. Turning it off gives up redelivery after a crash.
    #[serde(default = "defaults::default_true")]
    pub persistent_session: bool,
    /// How redeliveries are recognised.
    #[serde(default)]
    pub idempotency: Idempotency,
    /// MQTT protocol version: 3 (MQTT 3.1.1, the default) or 5.
    #[serde(default = "defaults::u8::<3>")]
    pub version: Spanned<u8>,
    /// MQTT 5 only: how long the broker keeps the persistent session (its subscriptions and
    /// unacknowledged messages) after the agent disconnects. Default 604800 (7 days) with
    /// `persistent_session`, 0 without.
    pub session_expiry_s: Option<Spanned<u32>>,
    /// MQTT 5 only: user properties of a message made available to the `[[sensor]]` id
    /// templates of this source as `{name}` placeholders.
    #[serde(default)]
    pub user_properties: Vec<Spanned<String>>,
    pub payload: PayloadConfig,
    pub subscribe: Vec<Subscription>,
}

/// The dedupe key of an MQTT reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idempotency {
    /// (sensor id, timestamp): a sensor reports one value per instant.
    #[default]
    SensorTs,
    /// (sensor id, the payload's `seq` field): requires `payload.seq`.
    PayloadSeq,
}

/// `[[mqtt.subscribe]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// An MQTT topic filter (`+` and `#` wildcards).
    pub topic: Spanned<String>,
    /// 0, 1 or 2. Only QoS 1 and 2 are redelivered after a crash. Default 1.
    #[serde(default = "defaults::u8::<1>")]
    pub qos: Spanned<u8>,
}

/// `[mqtt.payload]`: how a message body becomes readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    pub format: PayloadFormat,
    /// JSON pointer (RFC 6901) to the value; `json` only.
    pub value: Option<Spanned<String>>,
    /// JSON pointer to the timestamp; receive time when absent or missing.
    pub timestamp: Option<Spanned<String>>,
    /// Unit of the JSON timestamp.
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// JSON pointer to a sensor name, available as `{payload}` in `id` templates.
    pub sensor: Option<Spanned<String>>,
    /// JSON pointer to a device sequence number (dedupe key and gap counting).
    pub seq: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON object; pointers pick value, timestamp, sensor and seq.
    Json,
    /// SenML JSON (RFC 8428): a pack of records; each record's resolved name is `{payload}`.
    Senml,
    /// The body is one decimal number in UTF-8; the timestamp is the receive time.
    Number,
    /// Sparkplug B protobuf on `spBv1.0/...` topics (`source/sparkplug.rs`): each data
    /// metric's name (by alias from its birth) is `{payload}`; no JSON pointers.
    SparkplugB,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    #[default]
    Ms,
    S,
}

/// `[[serial]]`: one serial line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSource {
    pub name: Spanned<String>,
    pub path: PathBuf,
    /// Default 115,200.
    #[serde(default = "plain::u32::<115_200>")]
    pub baud: u32,
    pub framing: SerialFraming,
    /// `framing = "link"` only: seconds between two `TimeSync` frames on the line, on top of
    /// the one answering each `Hello`; 0 sends only those. At most [`MAX_TIME_SYNC_INTERVAL_S`].
    /// Default [`DEFAULT_TIME_SYNC_INTERVAL_S`] (see [`SerialSource::time_sync_interval`]).
    pub time_sync_interval_s: Option<Spanned<u64>>,
}

/// Default `time_sync_interval_s`: 10 minutes, in which a 50 ppm crystal drifts 30 ms.
pub const DEFAULT_TIME_SYNC_INTERVAL_S: u64 = 600;
/// Largest `time_sync_interval_s`: a day.
pub const MAX_TIME_SYNC_INTERVAL_S: u64 = 86_400;

impl SerialSource {
    /// How often the periodic `TimeSync` goes out; `None` when there is none (`0`, or text
    /// lines, which have no `TimeSync`).
    pub fn time_sync_interval(&self) -> Option<std::time::Duration> {
        let seconds = self
            .time_sync_interval_s
            .as_ref()
            .map_or(DEFAULT_TIME_SYNC_INTERVAL_S, |s| *s.get_ref());
        let link = self.framing == SerialFraming::Link;
        (link && seconds > 0).then(|| std::time::Duration::from_secs(seconds))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialFraming {
    /// `edge_protocol::link` frames: Hello, Readings, Ack after commit, TimeSync.
    Link,
    /// Text lines `sensor,ts_ms,value`.
    Line,
}

/// `[[sensor]]`: maps what a source delivers to a sensor id and calibrates the value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorMapping {
    /// Name of an `[[mqtt]]`, `[[serial]]` or `[[modbus]]` source.
    pub source: Spanned<String>,
    /// MQTT: a topic pattern; `{name}` captures one level, `+` matches one, a final `#` the rest.
    pub topic: Option<Spanned<String>>,
    /// Serial: only this device id (any device when absent).
    pub device: Option<u32>,
    /// Serial (`link` framing): only this channel (any channel when absent).
    pub channel: Option<u8>,
    /// Modbus: only the register of this name (any register of the source when absent).
    pub register: Option<Spanned<String>>,
    /// Sensor id template: `{capture}` from the topic, `{payload}` (sensor from the payload),
    /// `{source}`; serial adds `{device}` and `{channel}`, Modbus `{register}`.
    pub id: Spanned<String>,
    pub unit: Option<String>,
    /// `value * scale + offset` is stored.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Valid range of the calibrated value (inclusive); outside it a reading is rejected.
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
}

fn default_scale() -> f64 {
    1.0
}

/// `[[pipeline]]`: which sensors go where. A reading goes to the first pipeline (in file order)
/// with a matching glob; one that matches none is counted as unrouted and not forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: Spanned<String>,
    /// Globs over sensor ids; `*` matches any run of characters.
    pub sensors: Vec<Spanned<String>>,
    /// `[pipeline.window]`; without it readings pass through unchanged.
    pub window: Option<WindowConfig>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml(path, &edge_config_toml::read(path)?)
    }

    /// Reads what the file only names: the Kafka SASL password (`[kafka.security]`
    /// `password_file` or `password_env`). Run before the forwarder starts; `check-config
    /// --no-environment` never does.
    pub fn load_secrets(&mut self) -> Result<(), String> {
        match self.kafka.as_mut().and_then(|k| k.security.as_mut()) {
            Some(security) => security
                .get_mut()
                .load_secret()
                .map_err(|e| format!("[kafka.security]: {e}")),
            None => Ok(()),
        }
    }

    /// Parses and validates `text`; `path` is only used to name the file in errors.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = edge_config_toml::parse(path, text)?;
        validate(&config).map_err(|(span, problem)| ConfigError::Invalid {
            path: path.to_owned(),
            at: Location::of(text, span.start),
            problem: Box::new(problem),
        })?;
        Ok(config)
    }

    /// All source names: MQTT, serial, then Modbus.
    pub fn source_names(&self) -> impl Iterator<Item = &str> {
        self.source_name_spans().map(|n| n.get_ref().as_str())
    }

    /// All source names with their places in the file, in [`Config::source_names`] order.
    pub fn source_name_spans(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.mqtt
            .iter()
            .map(|m| &m.name)
            .chain(self.serial.iter().map(|s| &s.name))
            .chain(self.modbus.iter().map(|m| &m.name))
    }

    /// `data_dir/ingest.redb`.
    pub fn ingest_path(&self) -> PathBuf {
        self.agent.data_dir.join("ingest.redb")
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
