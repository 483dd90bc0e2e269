//! Where the test brokers are: `KAFKA_BOOTSTRAP`, `MQTT_URL`, `MQTTS_URL`, `MQTT_CA`; with
//! `services.sh start --secure` also the secured Kafka ([`SecureKafka`]) and Mosquitto's
//! client-certificate listener ([`MqttMtls`]).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Addresses of the brokers the end-to-end suites use.
#[derive(Debug, Clone)]
pub struct Services {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    pub kafka_bootstrap: String,
    /// Plain MQTT, `mqtt://127.0.0.1:18830`.
    pub mqtt_url: String,
    /// MQTT over TLS, `mqtts://127.0.0.1:18831`.
    pub mqtts_url: String,
    /// PEM file of the throw-away CA that signed the broker's TLS certificate.
    pub mqtt_ca: PathBuf,
}

/// The password-protected MQTT listener and its one user.
#[derive(Debug, Clone)]
pub struct MqttAuth {
    /// `mqtt://127.0.0.1:18832`.
    pub url: String,
    pub user: String,
    /// The user's password, alone in the file.
    pub password_file: PathBuf,
}

impl MqttAuth {
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.password_file.display()))
            .trim()
            .to_owned()
    }
}

const KEYS: [&str; 4] = ["KAFKA_BOOTSTRAP", "MQTT_URL", "MQTTS_URL", "MQTT_CA"];

impl Services {
    /// Reads the addresses from the environment, falling back to `.services/env`, and checks
    /// that each broker accepts TCP connections. Panics with instructions when one is missing:
    /// a suite that needs a broker must fail loudly, never pass by skipping.
    pub fn from_env() -> Services {
        let file = env_file_path();
        let from_file = std::fs::read_to_string(&file)
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let get = |key: &str| -> String {
            std::env::var(key)
                .ok()
                .or_else(|| from_file.get(key).cloned())
                .unwrap_or_else(|| {
                    panic!(
                        "{key} is not set and {} does not define it: start the test brokers with \
                         `tests/services/services.sh start` (or export {KEYS:?})",
                        file.display()
                    )
                })
        };
        let services = Services {
            kafka_bootstrap: get("KAFKA_BOOTSTRAP"),
            mqtt_url: get("MQTT_URL"),
            mqtts_url: get("MQTTS_URL"),
            mqtt_ca: PathBuf::from(get("MQTT_CA")),
        };
        for (what, addr) in [
            ("Kafka", first_addr(&services.kafka_bootstrap)),
            ("MQTT", url_addr(&services.mqtt_url)),
            ("MQTT over TLS", url_addr(&services.mqtts_url)),
        ] {
            require_listening(what, &addr);
        }
        services
    }

    /// The MQTT listener that requires a username and password (`MQTT_AUTH_URL`,
    /// `MQTT_AUTH_USER`, `MQTT_AUTH_PASSWORD_FILE`). Panics with instructions when the running
    /// brokers were started by an older `services.sh` without it.
    pub fn mqtt_auth(&self) -> MqttAuth {
        let from_file = std::fs::read_to_string(env_file_path())
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let get = |key: &str| {
            std::env::var(key)
                .ok()
                .or_else(|| from_file.get(key).cloned())
                .unwrap_or_else(|| {
                    panic!(
                        "{key} is not set: restart Mosquitto with this checkout's \
                         tests/services/services.sh (stop mqtt, then start) for its password listener"
                    )
                })
        };
        let auth = MqttAuth {
            url: get("MQTT_AUTH_URL"),
            user: get("MQTT_AUTH_USER"),
            password_file: PathBuf::from(get("MQTT_AUTH_PASSWORD_FILE")),
        };
        require_listening("MQTT with a password", &url_addr(&auth.url));
        auth
    }

    /// `(host, port)` of the plain MQTT listener.
    pub fn mqtt_host_port(&self) -> (String, u16) {
        host_port(&url_addr(&self.mqtt_url))
    }

    /// `(host, port)` of the TLS MQTT listener.
    pub fn mqtts_host_port(&self) -> (String, u16) {
        host_port(&url_addr(&self.mqtts_url))
    }
}

/// The secured Kafka broker of `tests/services/services.sh start --secure`: a separate
/// single-node broker, TLS on every listener (CA in `ca_file`), StandardAuthorizer with no ACL
/// meaning denied. `agent-a`, `agent-b`, `consumer` and `admin` (a super user) are both SCRAM
/// users and certificate CNs (`User:<name>` either way); their ACLs are in `services.sh`
/// (`kafka_secure_acls`).
#[derive(Debug, Clone)]
pub struct SecureKafka {
    /// SASL_SSL, SCRAM-SHA-512 only: `127.0.0.1:19095` (`KAFKA_SECURE_SASL`).
    pub sasl_bootstrap: String,
    /// SSL with a client certificate required: `127.0.0.1:19096` (`KAFKA_SECURE_MTLS`).
    pub mtls_bootstrap: String,
    /// PEM of the throw-away CA that signed the broker's and the clients' certificates.
    pub ca_file: PathBuf,
    /// `<name>.password`, `<name>.crt`, `<name>.key` per principal; `rogue.crt`/`rogue.key`
    /// are signed by a CA the broker does not trust.
    pub clients: PathBuf,
    /// The admin's client properties for Kafka's own tools (`--command-config`).
    pub admin_config: PathBuf,
}

impl SecureKafka {
    /// Reads `KAFKA_SECURE_*` from the environment, falling back to `.services/env`, and checks
    /// that both listeners accept TCP connections. Panics with instructions when missing.
    pub fn from_env() -> SecureKafka {
        let get = secure_getter("the secured Kafka broker");
        let kafka = SecureKafka {
            sasl_bootstrap: get("KAFKA_SECURE_SASL"),
            mtls_bootstrap: get("KAFKA_SECURE_MTLS"),
            ca_file: PathBuf::from(get("KAFKA_SECURE_CA")),
            clients: PathBuf::from(get("KAFKA_SECURE_CLIENTS")),
            admin_config: PathBuf::from(get("KAFKA_SECURE_ADMIN_CONFIG")),
        };
        require_listening_secure("the secured Kafka (SASL_SSL)", &kafka.sasl_bootstrap);
        require_listening_secure("the secured Kafka (mTLS)", &kafka.mtls_bootstrap);
        kafka
    }

    /// The file holding `principal`'s SCRAM-SHA-512 password alone.
    pub fn password_file(&self, principal: &str) -> PathBuf {
        self.clients.join(format!("{principal}.password"))
    }

    /// `principal`'s SCRAM-SHA-512 password.
    pub fn password(&self, principal: &str) -> String {
        let file = self.password_file(principal);
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_owned()
    }

    /// `principal`'s certificate (PEM, CN=`principal`); `"rogue"` is the untrusted one.
    pub fn cert_file(&self, principal: &str) -> PathBuf {
        self.clients.join(format!("{principal}.crt"))
    }

    /// `principal`'s private key (unencrypted PKCS#8 PEM, mode 0600).
    pub fn key_file(&self, principal: &str) -> PathBuf {
        self.clients.join(format!("{principal}.key"))
    }

    /// Kafka's AclCommand as admin (`services.sh acl ARGS`): e.g. `["--add",
    /// "--allow-principal", "User:agent-a", "--operation", "Write", "--topic", "t"]`. Panics with
    /// its output when it fails.
    pub fn acl(&self, args: &[&str]) {
        services_sh("acl", args);
    }

    /// Kafka's TopicCommand as admin (`services.sh topics ARGS`), e.g. `["--create", "--topic",
    /// "t"]`. Panics with its output when it fails.
    pub fn topics(&self, args: &[&str]) {
        services_sh("topics", args);
    }

    /// Creates SCRAM-SHA-512 user `user` with `password`, or sets a new password
    /// (`kafka-configs --alter --add-config`, as admin).
    pub fn set_scram_password(&self, user: &str, password: &str) {
        let config = format!("SCRAM-SHA-512=[password={password}]");
        services_sh(
            "configs",
            &[
                "--alter",
                "--add-config",
                &config,
                "--entity-type",
                "users",
                "--entity-name",
                user,
            ],
        );
    }
}

/// Mosquitto's listener that requires a client certificate (`start --secure`): TLS, the
/// certificate's CN is the username; no certificate, or one from another CA, is refused.
#[derive(Debug, Clone)]
pub struct MqttMtls {
    /// `mqtts://127.0.0.1:18833` (`MQTT_MTLS_URL`).
    pub url: String,
    /// PEM of the CA that signed the broker's and the client's certificates.
    pub ca_file: PathBuf,
    /// CN=edge-test-client, signed by `ca_file`.
    pub cert_file: PathBuf,
    /// Its key (unencrypted PKCS#8 PEM, mode 0600).
    pub key_file: PathBuf,
    /// Signed by a CA Mosquitto does not know.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl MqttMtls {
    /// Reads `MQTT_MTLS_*` from the environment, falling back to `.services/env`, and checks the
    /// listener accepts TCP connections. Panics with instructions when missing.
    pub fn from_env() -> MqttMtls {
        let get = secure_getter("Mosquitto's mTLS listener");
        let mtls = MqttMtls {
            url: get("MQTT_MTLS_URL"),
            ca_file: PathBuf::from(get("MQTT_MTLS_CA")),
            cert_file: PathBuf::from(get("MQTT_MTLS_CERT")),
            key_file: PathBuf::from(get("MQTT_MTLS_KEY")),
            rogue_cert: PathBuf::from(get("MQTT_MTLS_ROGUE_CERT")),
            rogue_key: PathBuf::from(get("MQTT_MTLS_ROGUE_KEY")),
        };
        require_listening_secure("MQTT with client certificates", &url_addr(&mtls.url));
        mtls
    }

    /// `(host, port)` of the listener.
    pub fn host_port(&self) -> (String, u16) {
        host_port(&url_addr(&self.url))
    }
}

const START_SECURE: &str = "start the brokers with `tests/services/services.sh start --secure`";

/// A reader of `KEY` from the environment, else `.services/env`, that panics with instructions.
fn secure_getter(what: &'static str) -> impl Fn(&str) -> String {
    let file = env_file_path();
    let from_file = std::fs::read_to_string(&file)
        .map(|text| parse_env_file(&text))
        .unwrap_or_default();
    move |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| from_file.get(key).cloned().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| {
                panic!(
                    "{key} ({what}) is not set and {} does not define it: {START_SECURE}",
                    file.display()
                )
            })
    }
}

fn require_listening_secure(what: &str, addr: &str) {
    let reachable = addr.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable,
        "{what} is not listening on {addr}: {START_SECURE}"
    );
}

/// `tests/services/services.sh <cmd> <args>`; panics with its output when it fails.
fn services_sh(cmd: &str, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/services.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("bash {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "services.sh {cmd} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `.services/env` at the workspace root (this crate lives in `tests/`).
pub fn env_file_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".services")
        .join("env")
}

/// Parses `export KEY=value` / `KEY=value` lines; `#` starts a comment line.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            Some((
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect()
}

fn first_addr(bootstrap: &str) -> String {
    bootstrap.split(',').next().unwrap_or_default().to_owned()
}

fn url_addr(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

fn host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("address {addr:?} has no port"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("address {addr:?} has a bad port"));
    (host.to_owned(), port)
}

fn require_listening(what: &str, addr: &str) {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("{what} address {addr:?} does not resolve: {e}"))
        .collect();
    let reachable = resolved
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{what} is not listening on {addr}: start the test brokers with \
         `tests/services/services.sh start`"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_parse_with_and_without_export() {
        let parsed = parse_env_file("# comment\nexport A=1\nB=\"two\"\n\n");
        assert_eq!(parsed.get("A").map(String::as_str), Some("1"));
        assert_eq!(parsed.get("B").map(String::as_str), Some("two"));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn url_addresses_lose_their_scheme() {
        assert_eq!(url_addr("mqtts://127.0.0.1:18831"), "127.0.0.1:18831");
        assert_eq!(
            host_port("127.0.0.1:18830"),
            ("127.0.0.1".to_owned(), 18830)
        );
    }
}
