//! `[kafka.security]`: how a client proves who it is (SASL, or a client certificate) and whom it
//! trusts (a CA file), typed and checked before any connection, for both services.
//!
//! | key | librdkafka setting | notes |
//! | --- | --- | --- |
//! | `protocol` | `security.protocol` | `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
//! | `sasl_mechanism` | `sasl.mechanism` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`; SASL only |
//! | `username` | `sasl.username` | SASL only |
//! | `password_file` / `password_env` | `sasl.password` | one of them with SASL; a file's trailing newline is dropped |
//! | `ca_file` | `ssl.ca.location` | PEM; the system's CAs when absent; TLS only |
//! | `cert_file`, `key_file` | `ssl.certificate.location`, `ssl.key.location` | a client certificate (mTLS): both or neither; TLS only |
//!
//! # Invariants
//!
//! - The password is never in the file: it is read at start ([`Security::load_secret`]) and
//!   printed by `Debug` as `***`.
//! - A password file or key file that anyone on the machine may read is refused (mode `o+r`):
//!   group-readable (`0640`, owner root, group of the service) is the packaged layout.
//! - A librdkafka key that this section sets may not also be in `[kafka.client]`
//!   ([`Security::conflict`]): a setting is written in one place.
//! - A setting the linked librdkafka cannot honour (TLS without OpenSSL, a SASL mechanism it
//!   lacks) is found by [`missing_features`] before start, never at the first connection.

use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::config::ClientConfig;
use serde::Deserialize;

/// `[kafka.security]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    pub protocol: Protocol,
    pub sasl_mechanism: Option<Mechanism>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The SASL password, once [`Security::load_secret`] read it.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A password: compared, cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The librdkafka settings [`Security`] writes; `[kafka.client]` may not set them too.
pub const SECURITY_CLIENT_KEYS: [&str; 8] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
];

/// What a rule of [`Security::validate`] refuses: the key (`kafka.security.<key>`), and why.
pub type Refusal = (&'static str, &'static str);

impl Security {
    /// The rules that need no machine: which keys go with which protocol.
    pub fn validate(&self) -> Result<(), Refusal> {
        let sasl = self.protocol.sasl();
        let tls = self.protocol.tls();
        if sasl {
            if self.sasl_mechanism.is_none() {
                return Err((
                    "kafka.security.sasl_mechanism",
                    "is required with a SASL protocol",
                ));
            }
            if self.username.as_deref().is_none_or(str::is_empty) {
                return Err((
                    "kafka.security.username",
                    "is required with a SASL protocol",
                ));
            }
            match (&self.password_file, &self.password_env) {
                (None, None) => {
                    return Err((
                        "kafka.security.password_file",
                        "a SASL protocol needs password_file or password_env",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err((
                        "kafka.security.password_env",
                        "password_file and password_env are alternatives: set one",
                    ))
                }
                _ => {}
            }
        } else {
            for (set, key) in [
                (
                    self.sasl_mechanism.is_some(),
                    "kafka.security.sasl_mechanism",
                ),
                (self.username.is_some(), "kafka.security.username"),
                (self.password_file.is_some(), "kafka.security.password_file"),
                (self.password_env.is_some(), "kafka.security.password_env"),
            ] {
                if set {
                    return Err((key, "applies only to SASL_PLAINTEXT or SASL_SSL"));
                }
            }
        }
        if !tls {
            for (set, key) in [
                (self.ca_file.is_some(), "kafka.security.ca_file"),
                (self.cert_file.is_some(), "kafka.security.cert_file"),
                (self.key_file.is_some(), "kafka.security.key_file"),
            ] {
                if set {
                    return Err((key, "applies only to SSL or SASL_SSL"));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err((
                "kafka.security.key_file",
                "a client certificate needs its key_file",
            )),
            (None, Some(_)) => Err(("kafka.security.cert_file", "a key_file needs its cert_file")),
            _ => Ok(()),
        }
    }

    /// The first `[kafka.client]` key that this section sets too.
    pub fn conflict<'a>(&self, mut client_keys: impl Iterator<Item = &'a str>) -> Option<&'a str> {
        client_keys.find(|k| SECURITY_CLIENT_KEYS.contains(k))
    }

    /// Reads the SASL password (from `password_file`, less a trailing newline, or
    /// `password_env`) into [`Security::password`]. Refuses a password file that anyone may
    /// read, and an empty password.
    pub fn load_secret(&mut self) -> Result<(), String> {
        let password = if let Some(path) = &self.password_file {
            private(path, "password_file")?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read password_file `{}`: {e}", path.display()))?;
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text)
                .to_owned()
        } else if let Some(var) = &self.password_env {
            std::env::var(var)
                .map_err(|_| format!("environment variable `{var}` (password_env) is not set"))?
        } else {
            return Ok(());
        };
        if password.is_empty() {
            return Err("the SASL password is empty".to_owned());
        }
        self.password = Some(Secret(password));
        Ok(())
    }

    /// What the machine must have for this section: readable PEM files, a key and a password
    /// file nobody else may read, the password itself. One message per problem.
    pub fn check_machine(&self) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(pem_files(
            self.ca_file.as_deref(),
            self.cert_file.as_deref(),
            self.key_file.as_deref(),
        ));
        if let Err(problem) = self.clone().load_secret() {
            problems.push(problem);
        }
        problems
    }

    /// Writes the librdkafka settings; `sasl.password` only when [`Security::load_secret`]
    /// has read it.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if let Some(m) = self.sasl_mechanism {
            config.set("sasl.mechanism", m.as_str());
        }
        if let Some(user) = &self.username {
            config.set("sasl.username", user);
        }
        if let Some(Secret(password)) = &self.password {
            config.set("sasl.password", password);
        }
        for (path, key) in [
            (&self.ca_file, "ssl.ca.location"),
            (&self.cert_file, "ssl.certificate.location"),
            (&self.key_file, "ssl.key.location"),
        ] {
            if let Some(path) = path {
                config.set(key, path.to_string_lossy());
            }
        }
    }
}

/// What is wrong with a CA file, a client certificate and its key (each optional): unreadable,
/// no PEM of the right kind, a key any user may read. One message per problem, each naming the
/// key (`ca_file`, `cert_file`, `key_file`) and the path. Shared with the agent's MQTT sources.
pub fn pem_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, name, marker) in [
        (ca, "ca_file", "-----BEGIN CERTIFICATE-----"),
        (cert, "cert_file", "-----BEGIN CERTIFICATE-----"),
        (key, "key_file", "PRIVATE KEY-----"),
    ] {
        let Some(path) = path else { continue };
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(format!("cannot read {name} `{}`: {e}", path.display())),
            Ok(pem) if !pem.contains(marker) => problems.push(format!(
                "{name} `{}` holds no PEM `{}`",
                path.display(),
                marker.trim_matches('-')
            )),
            Ok(_) => {}
        }
    }
    if let Some(Err(problem)) = key.map(|k| private(k, "key_file")) {
        problems.push(problem);
    }
    problems
}

/// Refuses a secret file that any user of the machine may read
/// ([`edge_config_toml::secret::check_private`], the wording every service shares).
fn private(path: &Path, key: &'static str) -> Result<(), String> {
    edge_config_toml::secret::check_private(path, key).map_err(|e| e.to_string())
}

/// The librdkafka build features (`builtin.features`) that `config`'s security settings need
/// and the linked librdkafka lacks, each with the setting that needs it. Empty when all is
/// there. Asked of librdkafka itself, without connecting.
pub fn missing_features(config: &ClientConfig) -> Vec<String> {
    let builtin = builtin_features();
    let has = |f: &str| builtin.iter().any(|b| b == f);
    let mut missing = Vec::new();
    let protocol = config
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_uppercase();
    if protocol.contains("SSL") && !has("ssl") {
        missing.push(format!(
            "security.protocol = {protocol} needs TLS, and this build of librdkafka has no \
             OpenSSL (builtin.features: {})",
            builtin.join(",")
        ));
    }
    if protocol.starts_with("SASL") {
        let mechanism = config
            .get("sasl.mechanism")
            .or_else(|| config.get("sasl.mechanisms"))
            .unwrap_or("GSSAPI")
            .to_ascii_uppercase();
        let feature = match mechanism.as_str() {
            "PLAIN" => "sasl_plain",
            m if m.starts_with("SCRAM") => "sasl_scram",
            "OAUTHBEARER" => "sasl_oauthbearer",
            _ => "sasl_gssapi",
        };
        if !has(feature) {
            missing.push(format!(
                "sasl.mechanism = {mechanism} needs librdkafka's `{feature}`, which this build \
                 lacks (builtin.features: {})",
                builtin.join(",")
            ));
        }
    }
    missing
}

/// librdkafka's `builtin.features`, e.g. `["gzip", "snappy", "ssl", "sasl", ...]`.
pub fn builtin_features() -> Vec<String> {
    ClientConfig::new()
        .create_native_config()
        .ok()
        .and_then(|native| native.get("builtin.features").ok())
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Security {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const SCRAM: &str = "protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
                         username = \"gw-7\"\npassword_env = \"EDGE_TEST_KAFKA_PW_3b1\"\n";

    #[test]
    fn a_sasl_ssl_section_sets_the_librdkafka_keys() {
        let mut s = parse(&format!("{SCRAM}ca_file = \"/etc/ca.pem\"\n"));
        assert_eq!(s.validate(), Ok(()));
        s.password = Some(Secret("pw".into()));
        let mut c = ClientConfig::new();
        s.apply(&mut c);
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("gw-7"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert!(!format!("{s:?}").contains("\"pw\""), "{s:?}");
    }

    #[test]
    fn each_protocol_refuses_the_keys_of_another() {
        let cases = [
            ("protocol = \"SASL_SSL\"\n", "sasl_mechanism"),
            (
                "protocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\n",
                "username",
            ),
            (
                "protocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n",
                "password_file",
            ),
            (
                &format!("{SCRAM}password_file = \"/p\"\n"),
                "password_env",
            ),
            ("protocol = \"SSL\"\nusername = \"u\"\n", "username"),
            ("protocol = \"SASL_PLAINTEXT\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"X\"\nca_file = \"/c\"\n", "ca_file"),
            ("protocol = \"SSL\"\ncert_file = \"/c\"\n", "key_file"),
            ("protocol = \"SSL\"\nkey_file = \"/k\"\n", "cert_file"),
        ];
        for (text, key) in cases {
            let refused = parse(text).validate().expect_err(text);
            assert_eq!(
                refused.0,
                format!("kafka.security.{key}"),
                "{text}: {refused:?}"
            );
        }
        assert_eq!(
            parse("protocol = \"SSL\"\ncert_file = \"/c\"\nkey_file = \"/k\"\n").validate(),
            Ok(())
        );
    }

    #[test]
    fn an_unknown_mechanism_or_key_is_a_parse_error() {
        let e = toml::from_str::<Security>("protocol = \"SASL_SSL\"\nsasl_mechanism = \"MD5\"\n")
            .expect_err("refused");
        assert!(e.to_string().contains("SCRAM-SHA-512"), "{e}");
        toml::from_str::<Security>("protocol = \"SSL\"\npassword = \"x\"\n").expect_err("refused");
    }

    #[test]
    fn a_client_key_set_here_too_is_a_conflict() {
        let s = parse("protocol = \"SSL\"\n");
        let keys = ["linger.ms", "ssl.ca.location"];
        assert_eq!(s.conflict(keys.into_iter()), Some("ssl.ca.location"));
        assert_eq!(s.conflict(["linger.ms"].into_iter()), None);
    }

    #[test]
    fn a_password_file_loses_its_newline_and_must_not_be_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let text = format!(
            "protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\n\
             password_file = {:?}\n",
            file.display().to_string()
        );
        let mut s = parse(&text);
        s.load_secret().expect("loads");
        assert_eq!(s.password, Some(Secret("s3cret".into())));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = parse(&text).load_secret().expect_err("world-readable");
        assert!(e.contains("readable by every user (mode 644)"), "{e}");
    }

    #[test]
    fn an_unset_password_variable_and_missing_files_are_named() {
        let s = parse(&format!(
            "{SCRAM}ca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/nonexistent/c.pem\"\n\
             key_file = \"/nonexistent/k.pem\"\n"
        ));
        let problems = s.check_machine().join("\n");
        for expected in [
            "cannot read ca_file `/nonexistent/ca.pem`",
            "cannot read cert_file `/nonexistent/c.pem`",
            "cannot read key_file `/nonexistent/k.pem`",
            "`EDGE_TEST_KAFKA_PW_3b1` (password_env) is not set",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn a_key_file_holding_no_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "not a key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let s = parse(&format!(
            "protocol = \"SSL\"\ncert_file = {0:?}\nkey_file = {0:?}\n",
            key.display().to_string()
        ));
        let problems = s.check_machine().join("\n");
        assert!(
            problems.contains("holds no PEM `BEGIN CERTIFICATE`"),
            "{problems}"
        );
        assert!(
            problems.contains("holds no PEM `PRIVATE KEY`"),
            "{problems}"
        );
    }

    #[test]
    fn this_build_has_tls_and_scram() {
        let features = builtin_features();
        for needed in ["ssl", "sasl_scram", "sasl_plain"] {
            assert!(
                features.iter().any(|f| f == needed),
                "{needed}: {features:?}"
            );
        }
        let mut c = ClientConfig::new();
        c.set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512");
        assert_eq!(missing_features(&c), Vec::<String>::new());
        c.set("sasl.mechanism", "GSSAPI");
        let missing = missing_features(&c).join("\n");
        assert!(missing.contains("`sasl_gssapi`"), "{missing}");
    }
}
