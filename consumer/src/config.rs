//! The consumer's TOML configuration. Every key is documented in
//! `configs/consumer.example.toml`.
//!
//! Unknown keys are refused (`deny_unknown_fields`), and every error names the file, the line and
//! the field: a bad configuration stops the consumer at start, never half-way through a run.
//! The settings exactly-once depends on (`isolation.level`, `enable.auto.commit`,
//! `transactional.id`, ...) cannot be overridden through `[kafka.client]`.
//!
//! Reading, parsing and locating are `edge_config_toml`'s (shared with the agent); the messages
//! are the consumer's own: `file:line:column: message` for syntax (the column in bytes, as it
//! always was) and `file:line: `field`: reason` for a broken rule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use edge_config_toml::defaults::{self, default_true};
use edge_config_toml::{LoadError, Location};
use edge_kafka::Security;
use serde::Deserialize;
use toml::Spanned;

use crate::group::{Grouping, Rule};

/// librdkafka settings the consumer sets itself; `[kafka.client]` may not change them.
pub const RESERVED_CLIENT_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "transactional.id",
    "enable.idempotence",
    "transaction.timeout.ms",
    "enable.partition.eof",
];

impl From<LoadError> for ConfigError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Read { path, source } => ConfigError::Read { file: path, source },
            LoadError::Syntax { path, at, source } => ConfigError::Parse {
                file: path,
                line: at.line,
                column: at.byte_column,
                message: source.message().to_owned(),
            },
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}: `{field}`: {reason}")]
    Invalid {
        file: PathBuf,
        line: usize,
        field: &'static str,
        reason: &'static str,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaSection,
    pub topics: Topics,
    #[serde(default)]
    pub grouping: GroupingSection,
    #[serde(default)]
    pub window: WindowSection,
    #[serde(default)]
    pub revisions: RevisionSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub ops: OpsSection,
}

/// `[kafka]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub bootstrap_servers: Spanned<String>,
    pub group_id: Spanned<String>,
    /// This instance's stable name; `transactional.id` is `{group_id}.{instance_id}` and the
    /// static group member's `group.instance.id` is `{instance_id}`.
    pub instance_id: Spanned<String>,
    #[serde(default = "defaults::u64::<60_000>")]
    pub transaction_timeout_ms: Spanned<u64>,
    #[serde(default)]
    pub client: BTreeMap<Spanned<String>, String>,
    /// TLS and SASL, typed ([`edge_kafka::security`]); plaintext when absent.
    pub security: Option<Spanned<Security>>,
}

/// `[topics]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub inputs: Spanned<Vec<String>>,
    pub finals: Spanned<String>,
    pub changelog: Spanned<String>,
    pub dead_letters: Spanned<String>,
    /// Create the output, changelog and dead-letter topics when missing.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Replication factor of created topics (the broker's default when absent).
    pub replication_factor: Option<Spanned<i32>>,
}

/// `[grouping]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupingSection {
    /// `"series"` (default): a series no rule matches is its own group; `"dead_letter"`.
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub rule: Vec<RuleSection>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Series,
    DeadLetter,
}

/// `[[grouping.rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[window]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSection {
    pub rollup_ms: Option<Spanned<i64>>,
    #[serde(default = "defaults::i64::<300_000>")]
    pub idle_timeout_ms: Spanned<i64>,
}

impl Default for WindowSection {
    fn default() -> Self {
        WindowSection {
            rollup_ms: None,
            idle_timeout_ms: defaults::i64::<300_000>(),
        }
    }
}

/// `[revisions]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "defaults::i64::<86_400_000>")]
    pub horizon_ms: Spanned<i64>,
}

impl Default for RevisionSection {
    fn default() -> Self {
        RevisionSection {
            enabled: true,
            horizon_ms: defaults::i64::<86_400_000>(),
        }
    }
}

/// `[limits]`: per assigned input partition, except the batch limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "defaults::usize::<20_000>")]
    pub max_open_windows: Spanned<usize>,
    #[serde(default = "defaults::usize::<20_000>")]
    pub max_finalized_windows: Spanned<usize>,
    #[serde(default = "defaults::usize::<100_000>")]
    pub max_sources: Spanned<usize>,
    #[serde(default = "defaults::usize::<20_000>")]
    pub batch_max_records: Spanned<usize>,
    #[serde(default = "defaults::u64::<200>")]
    pub batch_max_ms: Spanned<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open_windows: defaults::usize::<20_000>(),
            max_finalized_windows: defaults::usize::<20_000>(),
            max_sources: defaults::usize::<100_000>(),
            batch_max_records: defaults::usize::<20_000>(),
            batch_max_ms: defaults::u64::<200>(),
        }
    }
}

/// `[ops]`: the observability listener (see [`crate::ops`]). Every key has a default, so the
/// table is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    /// Serve `/metrics`, `/healthz` and `/readyz` at all.
    #[serde(default = "default_true")]
    pub metrics: bool,
    /// Where to serve them. Loopback by default. An address that cannot be bound is logged and
    /// the consumer runs without the endpoints.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// A file holding a bearer token `/metrics` then requires (`Authorization: Bearer
    /// <token>`); `/healthz` and `/readyz` stay open. Read at start.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `/healthz` answers 503 once the loop has shown no progress (a poll batch handled, a
    /// partition restored, a session started or failed) for this many seconds.
    #[serde(default = "defaults::u64::<300>")]
    pub health_stall_s: Spanned<u64>,
}

impl Default for OpsSection {
    fn default() -> Self {
        OpsSection {
            metrics: true,
            metrics_listen: default_metrics_listen(),
            token_file: None,
            health_stall_s: defaults::u64::<300>(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9899))
}
impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Config::parse(file, &edge_config_toml::read(file)?)
    }

    /// Reads what the file only names: the SASL password of `[kafka.security]`. Run before the
    /// first session.
    pub fn load_secrets(&mut self) -> Result<(), String> {
        match self.kafka.security.as_mut() {
            Some(security) => security
                .get_mut()
                .load_secret()
                .map_err(|e| format!("[kafka.security]: {e}")),
            None => Ok(()),
        }
    }

    /// Parses and validates `text` (named `file` in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = edge_config_toml::parse(file, text)?;
        config
            .validate()
            .map_err(|(span, field, reason)| ConfigError::Invalid {
                file: file.to_owned(),
                line: Location::of(text, span.start).line,
                field,
                reason,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (Range<usize>, &'static str, &'static str)> {
        let k = &self.kafka;
        let nonempty = |s: &Spanned<String>, field| {
            if s.get_ref().trim().is_empty() {
                Err((s.span(), field, "must not be empty"))
            } else {
                Ok(())
            }
        };
        nonempty(&k.bootstrap_servers, "kafka.bootstrap_servers")?;
        nonempty(&k.group_id, "kafka.group_id")?;
        nonempty(&k.instance_id, "kafka.instance_id")?;
        if *k.transaction_timeout_ms.get_ref() < 1000 {
            return Err((
                k.transaction_timeout_ms.span(),
                "kafka.transaction_timeout_ms",
                "must be at least 1000",
            ));
        }
        for key in k.client.keys() {
            if RESERVED_CLIENT_KEYS.contains(&key.get_ref().as_str()) {
                return Err((
                    key.span(),
                    "kafka.client",
                    "sets a key the consumer sets itself (exactly-once or static membership depends on it; the list is in configs/consumer.example.toml)",
                ));
            }
        }
        if let Some(security) = &k.security {
            security
                .get_ref()
                .validate()
                .map_err(|(field, reason)| (security.span(), field, reason))?;
            let keys = k.client.keys().map(|key| key.get_ref().as_str());
            if let Some(key) = security.get_ref().conflict(keys) {
                let span = k
                    .client
                    .keys()
                    .find(|c| c.get_ref() == key)
                    .map(|c| c.span());
                return Err((
                    span.unwrap_or(security.span()),
                    "kafka.client",
                    "sets a key [kafka.security] sets too: set it in one place",
                ));
            }
        }
        let t = &self.topics;
        if t.inputs.get_ref().is_empty() || t.inputs.get_ref().iter().any(|s| s.is_empty()) {
            return Err((
                t.inputs.span(),
                "topics.inputs",
                "must list at least one non-empty topic",
            ));
        }
        nonempty(&t.finals, "topics.finals")?;
        nonempty(&t.changelog, "topics.changelog")?;
        nonempty(&t.dead_letters, "topics.dead_letters")?;
        let outs = [&t.finals, &t.changelog, &t.dead_letters];
        for out in outs {
            if t.inputs.get_ref().contains(out.get_ref()) {
                return Err((out.span(), "topics", "an output topic is also an input"));
            }
        }
        if t.changelog.get_ref() == t.finals.get_ref()
            || t.changelog.get_ref() == t.dead_letters.get_ref()
        {
            return Err((
                t.changelog.span(),
                "topics.changelog",
                "must be a topic of its own",
            ));
        }
        if let Some(r) = &t.replication_factor {
            if *r.get_ref() < 1 {
                return Err((r.span(), "topics.replication_factor", "must be at least 1"));
            }
        }
        for rule in &self.grouping.rule {
            if let Err(reason) = Rule::new(rule.pattern.get_ref(), rule.key.get_ref()) {
                return Err((rule.key.span(), "grouping.rule", reason));
            }
        }
        let w = &self.window;
        if let Some(r) = &w.rollup_ms {
            if *r.get_ref() < 1 {
                return Err((r.span(), "window.rollup_ms", "must be at least 1"));
            }
        }
        if *w.idle_timeout_ms.get_ref() < 1 {
            return Err((
                w.idle_timeout_ms.span(),
                "window.idle_timeout_ms",
                "must be at least 1",
            ));
        }
        if *self.revisions.horizon_ms.get_ref() < 0 {
            return Err((
                self.revisions.horizon_ms.span(),
                "revisions.horizon_ms",
                "must not be negative",
            ));
        }
        let l = &self.limits;
        for (v, field) in [
            (&l.max_open_windows, "limits.max_open_windows"),
            (&l.max_finalized_windows, "limits.max_finalized_windows"),
            (&l.max_sources, "limits.max_sources"),
            (&l.batch_max_records, "limits.batch_max_records"),
        ] {
            if *v.get_ref() < 1 {
                return Err((v.span(), field, "must be at least 1"));
            }
        }
        let stall = &self.ops.health_stall_s;
        if *stall.get_ref() < 1 {
            return Err((stall.span(), "ops.health_stall_s", "must be at least 1"));
        }
        if stall.get_ref().saturating_mul(1000) <= *l.batch_max_ms.get_ref() {
            // An idle loop shows progress once per poll batch.
            return Err((
                stall.span(),
                "ops.health_stall_s",
                "must be longer than limits.batch_max_ms",
            ));
        }
        Ok(())
    }

    /// The grouping, built from validated rules.
    pub fn grouping(&self) -> Grouping {
        let rules = self
            .grouping
            .rule
            .iter()
            .filter_map(|r| Rule::new(r.pattern.get_ref(), r.key.get_ref()).ok())
            .collect();
        Grouping::new(rules, self.grouping.unmatched == Unmatched::DeadLetter)
    }

    /// The merge state machine's settings.
    pub fn merge_settings(&self) -> crate::merge::Settings {
        crate::merge::Settings {
            rollup_ms: self.window.rollup_ms.as_ref().map(|r| *r.get_ref()),
            idle_timeout_ms: *self.window.idle_timeout_ms.get_ref(),
            revisions: self.revisions.enabled,
            horizon_ms: *self.revisions.horizon_ms.get_ref(),
            max_open_windows: *self.limits.max_open_windows.get_ref(),
            max_finalized_windows: *self.limits.max_finalized_windows.get_ref(),
            max_sources: *self.limits.max_sources.get_ref(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid configuration (other modules' tests build on it too).
    pub(crate) const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
group_id = "g"
instance_id = "a"
[topics]
inputs = ["in"]
finals = "out"
changelog = "cl"
dead_letters = "dl"
"#;

    #[test]
    fn the_example_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/consumer.example.toml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_minimal_configuration_takes_the_defaults() {
        let c = Config::parse(Path::new("c.toml"), MINIMAL).unwrap();
        assert!(c.revisions.enabled);
        assert_eq!(c.merge_settings().rollup_ms, None);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let text = format!("{MINIMAL}[window]\nidle_timeout = 5\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:12:"), "{e}");
        assert!(e.contains("idle_timeout"), "{e}");
    }

    /// Pinned when locating moved to `edge_config_toml`: the consumer's syntax errors have
    /// always counted the column in bytes (the agent's count characters).
    #[test]
    fn a_syntax_error_counts_its_column_in_bytes() {
        let text = MINIMAL.replace("instance_id = \"a\"", "instance_id = \"\u{e9}a");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "c.toml:5:19: invalid basic string, expected `\"`");
    }

    #[test]
    fn a_missing_file_is_refused_naming_it() {
        let e = Config::load(Path::new("/nonexistent/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/c.toml: cannot read: "), "{e}");
    }

    #[test]
    fn a_security_section_is_typed_checked_and_reaches_every_client() {
        let secure = MINIMAL.replace(
            "[topics]",
            "[kafka.security]\nprotocol = \"SSL\"\nca_file = \"/etc/ca.pem\"\n\
             cert_file = \"/etc/c.pem\"\nkey_file = \"/etc/c.key\"\n[topics]",
        );
        let config = Config::parse(Path::new("c.toml"), &secure).expect("valid");
        for client in [
            crate::kafka::consumer_config(&config),
            crate::kafka::producer_config(&config),
            crate::kafka::restore_config(&config),
        ] {
            assert_eq!(client.get("security.protocol"), Some("SSL"));
            assert_eq!(client.get("ssl.key.location"), Some("/etc/c.key"));
        }
        let bad = secure.replace("key_file = \"/etc/c.key\"\n", "");
        let e = Config::parse(Path::new("c.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`kafka.security.key_file`: a client certificate needs its key_file"),
            "{e}"
        );
        let twice = secure.replace(
            "[topics]",
            "[kafka.client]\n\"ssl.key.location\" = \"/x\"\n[topics]",
        );
        let e = Config::parse(Path::new("c.toml"), &twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sets a key [kafka.security] sets too"), "{e}");
    }

    #[test]
    fn a_reserved_client_key_is_refused_naming_the_field() {
        let text = MINIMAL.replace(
            "[topics]",
            "[kafka.client]\n\"isolation.level\" = \"read_uncommitted\"\n[topics]",
        );
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":7: `kafka.client`"), "{e}");
        assert!(e.contains("sets itself"), "{e}");
    }

    /// `group.instance.id` is `instance_id`: a second name for the same member is refused.
    #[test]
    fn group_instance_id_in_the_client_table_is_refused() {
        let text = MINIMAL.replace(
            "[topics]",
            "[kafka.client]\n\"group.instance.id\" = \"k\"\n[topics]",
        );
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":7: `kafka.client`"), "{e}");
    }

    #[test]
    fn ops_defaults_serve_on_loopback_port_9899() {
        let c = Config::parse(Path::new("c.toml"), MINIMAL).unwrap();
        assert!(c.ops.metrics);
        assert_eq!(c.ops.metrics_listen, "127.0.0.1:9899".parse().unwrap());
        assert!(c.ops.metrics_listen.ip().is_loopback());
        assert_eq!(*c.ops.health_stall_s.get_ref(), 300);
    }

    #[test]
    fn an_ops_table_sets_its_keys() {
        let text = format!(
            "{MINIMAL}[ops]\nmetrics = false\nmetrics_listen = \"[::1]:9000\"\nhealth_stall_s = 60\n"
        );
        let c = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert!(!c.ops.metrics);
        assert_eq!(c.ops.metrics_listen, "[::1]:9000".parse().unwrap());
        assert_eq!(*c.ops.health_stall_s.get_ref(), 60);
    }

    #[test]
    fn an_unknown_ops_key_is_refused_with_its_line() {
        let text = format!("{MINIMAL}[ops]\nmetrics = true\nlisten = \"127.0.0.1:1\"\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:13:"), "{e}");
        assert!(e.contains("unknown field `listen`"), "{e}");
    }

    #[test]
    fn a_bad_metrics_address_is_refused_with_its_line() {
        let text = format!("{MINIMAL}[ops]\nmetrics_listen = \"localhost\"\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:12:"), "{e}");
        assert!(e.contains("socket address"), "{e}");
    }

    #[test]
    fn a_health_stall_of_zero_or_shorter_than_a_batch_is_refused_naming_the_field() {
        let text = format!("{MINIMAL}[ops]\nhealth_stall_s = 0\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "c.toml:12: `ops.health_stall_s`: must be at least 1");
        let text = format!("{MINIMAL}[limits]\nbatch_max_ms = 5000\n[ops]\nhealth_stall_s = 5\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "c.toml:14: `ops.health_stall_s`: must be longer than limits.batch_max_ms"
        );
    }

    #[test]
    fn a_bad_grouping_template_is_refused() {
        let text = format!("{MINIMAL}[[grouping.rule]]\nmatch = \"a.*\"\nkey = \"{{2}}\"\n");
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`grouping.rule`"), "{e}");
    }
}
