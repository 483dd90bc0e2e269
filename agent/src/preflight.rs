//! `check-config`'s checks of the machine and the Kafka client settings: what a valid file can
//! still get wrong on the gateway it is deployed to. The file itself is checked by
//! [`crate::config`] first; these run after, unless `--no-environment` (a file checked on a
//! laptop or in a config repository, away from its gateway) skips the machine checks.
//!
//! | check | when it fails |
//! | --- | --- |
//! | `password_env` | the variable is unset or empty (the source would not start) |
//! | `password_file`, `ca_file`, `cert_file`, `key_file` | the file cannot be read; a CA or certificate file holds no PEM certificate, a key file no PEM key; a password or key file every user may read |
//! | `[ops] token_file` | unreadable, empty, or readable by every user |
//! | `data_dir` | it is not a writable directory and cannot be created (the agent would not start) |
//! | serial and Modbus RTU ports | the device node is missing: a **warning** only (a USB adapter may be plugged in later; the source retries) |
//! | `[kafka.client]` | librdkafka refuses a setting (unknown key, bad value), asked without connecting (always checked) |
//! | `[kafka.security]`, `[kafka.client]` | TLS or a SASL mechanism this build of librdkafka lacks (its `builtin.features`; always checked) |
//! | `[kafka.security]` files | a CA, certificate or key file is unreadable or holds no PEM; a key or password file anyone may read; `password_env` unset |
//!
//! No check connects to anything.

use std::path::Path;

use crate::config::Config;
use crate::forward::producer::{producer_config, reader_config};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// An error stops the agent (or a source) from starting; a warning may resolve itself.
    pub error: bool,
    pub message: String,
}

impl Finding {
    fn error(message: String) -> Finding {
        Finding {
            error: true,
            message,
        }
    }

    fn warning(message: String) -> Finding {
        Finding {
            error: false,
            message,
        }
    }
}

/// Every finding for `config`; `environment = false` skips the machine checks.
pub fn check(config: &Config, environment: bool) -> Vec<Finding> {
    let mut findings = kafka_settings(config);
    if environment {
        findings.extend(machine(config));
    }
    findings
}

/// librdkafka's verdict on the producer's and the progress reader's settings, as the
/// forwarder will build them.
fn kafka_settings(config: &Config) -> Vec<Finding> {
    let Some(kafka) = &config.kafka else {
        return Vec::new();
    };
    let agent = config.agent.id.get_ref();
    let mut findings = Vec::new();
    for (client, settings) in [
        ("producer", producer_config(kafka, agent)),
        ("progress reader", reader_config(kafka, agent)),
    ] {
        if let Err(error) = settings.create_native_config() {
            findings.push(Finding::error(format!(
                "[kafka.client]: librdkafka refuses the {client}'s settings: {error}"
            )));
        }
    }
    findings.extend(
        unsupported_kafka_settings(config)
            .into_iter()
            .map(|m| Finding::error(format!("[kafka]: {m}"))),
    );
    findings
}

/// Security settings the linked librdkafka cannot honour ([`edge_kafka::missing_features`]):
/// `run` refuses to start on any, as `check-config` does.
pub fn unsupported_kafka_settings(config: &Config) -> Vec<String> {
    match &config.kafka {
        Some(kafka) => {
            edge_kafka::missing_features(&producer_config(kafka, config.agent.id.get_ref()))
        }
        None => Vec::new(),
    }
}

fn machine(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(Err(problem)) = config
        .ops
        .token_file
        .as_deref()
        .map(edge_ops_http::Token::read)
    {
        findings.push(Finding::error(format!("[ops]: {problem}")));
    }
    if let Some(security) = config.kafka.as_ref().and_then(|k| k.security.as_ref()) {
        for problem in security.get_ref().check_machine() {
            findings.push(Finding::error(format!("[kafka.security]: {problem}")));
        }
    }
    for source in &config.mqtt {
        let name = source.name.get_ref();
        if let Some(var) = &source.password_env {
            let var = var.get_ref();
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                findings.push(Finding::error(format!(
                    "source `{name}`: environment variable `{var}` (password_env) is not set"
                )));
            }
        }
        if let Some(path) = &source.password_file {
            if let Err(e) = std::fs::read(path) {
                findings.push(Finding::error(format!(
                    "source `{name}`: cannot read password_file `{}`: {e}",
                    path.display()
                )));
            } else if let Err(e) = edge_config_toml::secret::check_private(path, "password_file") {
                findings.push(Finding::error(format!("source `{name}`: {e}")));
            }
        }
        for problem in edge_kafka::pem_files(
            path(&source.ca_file),
            path(&source.cert_file),
            path(&source.key_file),
        ) {
            findings.push(Finding::error(format!("source `{name}`: {problem}")));
        }
    }
    let ports = config
        .serial
        .iter()
        .map(|s| (s.name.get_ref(), s.path.as_path()))
        .chain(config.modbus.iter().filter_map(|m| {
            let port = m.serial.as_ref()?;
            Some((m.name.get_ref(), Path::new(port.get_ref().as_str())))
        }));
    for (name, port) in ports {
        if !port.exists() {
            findings.push(Finding::warning(format!(
                "source `{name}`: serial port `{}` does not exist (yet); the source retries until it does",
                port.display()
            )));
        }
    }
    if let Some(problem) = data_dir_problem(&config.agent.data_dir) {
        findings.push(Finding::error(format!(
            "data_dir `{}`: {problem}",
            config.agent.data_dir.display()
        )));
    }
    findings
}

/// Why the agent could not keep its database in `dir`, if it could not: it must be a writable
/// directory, or creatable under the nearest existing ancestor.
fn data_dir_problem(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|a| a.exists())?;
    if !existing.is_dir() {
        return Some(format!("`{}` is not a directory", existing.display()));
    }
    // Writable: try it (permission bits do not tell for root, ACLs or read-only mounts).
    let probe = existing.join(format!(".edge-agent-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("cannot write in `{}`: {e}", existing.display())),
    }
}

fn path(file: &Option<toml::Spanned<std::path::PathBuf>>) -> Option<&Path> {
    file.as_ref().map(|f| f.get_ref().as_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures;

    fn findings(extra_mqtt: &str, kafka: &str, environment: bool) -> Vec<Finding> {
        let text = fixtures::MINIMAL.replace(
            "client_id = \"agent-gw-1\"",
            &format!("client_id = \"agent-gw-1\"\n{extra_mqtt}"),
        ) + kafka;
        check(&fixtures::config(&text), environment)
    }

    #[test]
    fn a_good_machine_has_no_findings() {
        assert_eq!(findings("", "", true), Vec::new());
    }

    #[test]
    fn missing_secrets_and_files_are_errors_naming_source_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let f = findings(
            "password_env = \"EDGE_PREFLIGHT_UNSET_91c2\"\nusername = \"u\"\n",
            "",
            true,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].error && f[0].message.contains("EDGE_PREFLIGHT_UNSET_91c2"),
            "{f:?}"
        );
        let f = findings(
            "password_file = \"/nonexistent/pw\"\nusername = \"u\"\n",
            "",
            true,
        );
        assert!(
            f[0].error && f[0].message.contains("/nonexistent/pw"),
            "{f:?}"
        );
        // A password file every user may read: refused like the Kafka one, naming the fix.
        use std::os::unix::fs::PermissionsExt;
        let open = dir.path().join("mqtt-password");
        std::fs::write(&open, "s3cret\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_open = || {
            let source = format!(
                "password_file = {:?}\nusername = \"u\"\n",
                open.display().to_string()
            );
            findings(&source, "", true)
        };
        let f = with_open();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].error
                && f[0].message.contains(&format!(
                    "password_file `{}` is readable by every user (mode 644): `chmod o-r` it",
                    open.display()
                )),
            "{f:?}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(with_open(), Vec::new());
        let tls = |ca: &str| {
            fixtures::MINIMAL
                .replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
                .replace(
                    "client_id = \"agent-gw-1\"",
                    &format!("client_id = \"agent-gw-1\"\nca_file = {ca:?}"),
                )
        };
        let f = check(
            &fixtures::config(&tls(&not_pem.display().to_string())),
            true,
        );
        assert!(
            f[0].error && f[0].message.contains("holds no PEM `BEGIN CERTIFICATE`"),
            "{f:?}"
        );
        let f = check(&fixtures::config(&tls("/nonexistent/ca.pem")), true);
        assert!(f[0].message.contains("cannot read ca_file"), "{f:?}");

        // A client certificate whose key every user may read.
        let key = dir.path().join("client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let with_cert = tls("/nonexistent/ca.pem").replace(
            "client_id = \"agent-gw-1\"",
            &format!(
                "client_id = \"agent-gw-1\"\ncert_file = \"/nonexistent/c.pem\"\nkey_file = {:?}",
                key.display().to_string()
            ),
        );
        let all = check(&fixtures::config(&with_cert), true)
            .iter()
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("cannot read cert_file `/nonexistent/c.pem`"),
            "{all}"
        );
        assert!(
            all.contains("key_file") && all.contains("readable by every user"),
            "{all}"
        );
        assert!(
            check(&fixtures::config(&tls("/nonexistent/ca.pem")), false).is_empty(),
            "--no-environment skips the machine"
        );
    }

    #[test]
    fn librdkafka_refuses_an_unknown_or_bad_setting_without_connecting() {
        let kafka = "\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[kafka.client]\n";
        assert!(findings("", kafka, false).is_empty());
        let f = findings("", &format!("{kafka}\"linger.ms\" = \"soon\"\n"), false);
        assert!(f.iter().all(|f| f.error) && !f.is_empty(), "{f:?}");
        assert!(f[0].message.contains("linger.ms"), "{f:?}");
        let f = findings("", &format!("{kafka}\"no.such.setting\" = \"1\"\n"), false);
        assert!(f[0].message.contains("no.such.setting"), "{f:?}");
    }

    #[test]
    fn a_data_dir_that_cannot_be_made_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        assert!(data_dir_problem(&dir.path().join("new/sub")).is_none());
        assert!(data_dir_problem(&file.join("data"))
            .unwrap()
            .contains("not a directory"));
    }
}
