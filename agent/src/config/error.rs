//! Configuration errors: every one names the file, line, column, field and what is allowed.
//!
//! The place is an [`edge_config_toml::Location`] (shared with the consumer); the wording is the
//! agent's own.

use std::path::PathBuf;

use edge_config_toml::LoadError;
pub use edge_config_toml::Location;

/// Why a configuration file was refused. All variants are fatal: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, an unknown key or a missing one (toml's message says which
    /// keys or values are allowed).
    #[error("{}:{at}: {}", path.display(), source.message())]
    Syntax {
        path: PathBuf,
        at: Location,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Well-formed TOML that breaks a rule of [`super::validate`].
    #[error("{}:{at}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        at: Location,
        #[source]
        problem: Box<Invalid>,
    },
}

impl ConfigError {
    /// The broken rule, for [`ConfigError::Invalid`].
    pub fn problem(&self) -> Option<&Invalid> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// Where in the file, when the error has a place.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => Some(at),
        }
    }
}

impl From<LoadError> for ConfigError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Read { path, source } => ConfigError::Read { path, source },
            LoadError::Syntax { path, at, source } => ConfigError::Syntax { path, at, source },
        }
    }
}

/// A broken rule, with what would be allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("`{field}` must not be empty")]
    Empty { field: &'static str },
    #[error("`{field}` may only hold letters, digits, `.`, `_` and `-`")]
    BadName { field: &'static str },
    #[error("source name `{name}` is used twice; source names must be unique")]
    DuplicateSource { name: String },
    #[error("`source = \"{name}\"` names no source; defined sources: {defined:?}")]
    UnknownSource { name: String, defined: Vec<String> },
    #[error("`url` must be `mqtt://host[:port]` or `mqtts://host[:port]`")]
    BadUrl,
    #[error("`cert_file` and `key_file` go together, with an `mqtts://` url and a `ca_file`")]
    ClientCertificate,
    #[error("`ca_file` needs an `mqtts://` url")]
    CaWithoutTls,
    #[error("`password_env` and `password_file` are alternatives: set at most one")]
    TwoPasswords,
    #[error("`qos` must be 0, 1 or 2, not {qos}")]
    BadQos { qos: u8 },
    #[error("`{field}` is not a valid {what}: {reason}")]
    BadPattern {
        field: &'static str,
        what: &'static str,
        reason: &'static str,
    },
    #[error("`id` uses `{{{name}}}`, which is not defined here; allowed: {allowed:?}")]
    UnknownPlaceholder { name: String, allowed: Vec<String> },
    #[error("`{field}` must be a JSON pointer: empty or starting with `/`")]
    BadPointer { field: &'static str },
    #[error("`version` must be 3 (MQTT 3.1.1) or 5 (MQTT 5), not {version}")]
    BadMqttVersion { version: u8 },
    #[error("`{field}` is an MQTT 5 feature: set `version = 5` on this source")]
    NeedsMqtt5 { field: &'static str },
    #[error("user property `{name}` cannot be a placeholder: use letters, digits and `_`")]
    BadUserProperty { name: String },
    #[error("user property `{name}` is listed twice or takes a reserved placeholder name (`source`, `payload`)")]
    ReservedUserProperty { name: String },
    #[error("the topic pattern captures `{{{name}}}`, which is also a user property of this source; rename one")]
    CaptureIsUserProperty { name: String },
    #[error("`{field}` is a JSON pointer; `format = \"sparkplug_b\"` takes none (metric names come from the payload and its births)")]
    PointerWithSparkplug { field: &'static str },
    #[error("`payload.value` is required for `format = \"json\"`")]
    MissingValuePointer,
    #[error("`idempotency = \"payload_seq\"` needs `payload.seq`")]
    SeqKeyWithoutSeq,
    #[error("`min` ({min}) is greater than `max` ({max})")]
    EmptyRange { min: f64, max: f64 },
    #[error("`{field}` must be a finite number")]
    NotFinite { field: &'static str },
    #[error("`{field}` must be at least {least}")]
    TooSmall { field: &'static str, least: u64 },
    #[error("`{field}` is for {kind} sources; source `{source_name}` is {actual}")]
    WrongSourceKind {
        field: &'static str,
        kind: &'static str,
        source_name: String,
        actual: &'static str,
    },
    #[error("a `[[sensor]]` for MQTT source `{source_name}` needs `topic`")]
    MissingTopic { source_name: String },
    #[error("`window.{field}` {reason}")]
    BadWindow {
        field: &'static str,
        reason: &'static str,
    },
    #[error("pipeline name `{name}` is used twice")]
    DuplicatePipeline { name: String },
    #[error("a `[[modbus]]` device needs exactly one of `tcp = \"host:port\"` (Modbus TCP) and `serial = \"/dev/...\"` (Modbus RTU)")]
    ModbusTransport,
    #[error("`tcp` must be `host:port`")]
    BadModbusAddress,
    #[error("`{field}` is for Modbus RTU devices (`serial = ...`); this one uses `tcp`")]
    RtuOnly { field: &'static str },
    #[error("`stop_bits` must be 1 or 2, not {stop_bits}")]
    BadStopBits { stop_bits: u8 },
    #[error("a `{kind}` block reads at most {most} per request")]
    BlockTooLarge { kind: &'static str, most: u16 },
    #[error("the block ends past the last Modbus address (65535)")]
    BlockPastAddressSpace,
    #[error("this `{kind}` block overlaps the one at address {address} (count {count}); blocks of one kind must not overlap")]
    OverlappingBlocks {
        kind: &'static str,
        address: u16,
        count: u16,
    },
    #[error("`type = \"{data_type}\"` does not fit a `{kind}` block; allowed: {allowed:?}")]
    BadRegisterType {
        data_type: &'static str,
        kind: &'static str,
        allowed: &'static [&'static str],
    },
    #[error(
        "register `{name}` ({width} wide) is not inside its block (addresses {first}..={last})"
    )]
    RegisterOutsideBlock {
        name: String,
        width: u16,
        first: u16,
        last: u16,
    },
    #[error("`{field}` {reason}")]
    BadSerial {
        field: &'static str,
        reason: &'static str,
    },
    #[error("serial port `{path}` is already used by another source; one source per port (several Modbus units on one line are not supported yet)")]
    SharedSerialPort { path: String },
    #[error("register name `{name}` is used twice in this device")]
    DuplicateRegister { name: String },
    #[error("`register = \"{name}\"` names no register of Modbus source `{source_name}`; its registers: {defined:?}")]
    UnknownRegister {
        name: String,
        source_name: String,
        defined: Vec<String>,
    },
    #[error("`kafka.client.\"{key}\"` is set by the forwarder itself (exactly-once depends on it); reserved: {reserved:?}")]
    ReservedClientSetting {
        key: String,
        reserved: Vec<&'static str>,
    },
    #[error("`{key}` {reason}")]
    Security {
        key: &'static str,
        reason: &'static str,
    },
    #[error("`kafka.client.\"{key}\"` is also set by [kafka.security]: set it in one place")]
    SecurityClientSetting { key: String },
}
