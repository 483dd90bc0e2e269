//! The agent and the consumer against the secured test broker (`services.sh start --secure`:
//! SASL_SSL with SCRAM-SHA-512, mTLS, `StandardAuthorizer` with no access without an ACL), with
//! `[kafka.security]` as a user writes it, and `kcat` (librdkafka's CLI, Debian's build) reading
//! back with its own principal's certificate. Counting: every reading published over MQTT is in
//! Kafka once.
//!
//! Principals and ACLs are the script's: `agent-a` may use transactional ids and groups
//! prefixed `edge-agent.gw-a`, `agent-b` those of `gw-b`, both write the `edge.partials`,
//! `edge.readings`, ... prefixes; `consumer` reads `edge.partials*` and writes `edge.finals*`
//! and `edge.consumer*`.

mod ops_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::kafka::unique_topic;
use edge_tests::services::SecureKafka;
use edge_tests::Services;
use ops_support::*;

const N: u64 = 400;

/// How the agent authenticates.
enum Auth<'a> {
    /// SCRAM-SHA-512 over TLS as `principal`, the password read from `password_file`.
    Scram {
        principal: &'a str,
        password_file: &'a Path,
    },
    /// A client certificate (mTLS) of `principal`.
    Certificate { principal: &'a str },
}

fn security_table(kafka: &SecureKafka, auth: &Auth) -> String {
    let ca = kafka.ca_file.display().to_string();
    match auth {
        Auth::Scram {
            principal,
            password_file,
        } => format!(
            "[kafka.security]\nprotocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             username = \"{principal}\"\npassword_file = {:?}\nca_file = {ca:?}\n",
            password_file.display().to_string()
        ),
        Auth::Certificate { principal } => format!(
            "[kafka.security]\nprotocol = \"SSL\"\nca_file = {ca:?}\ncert_file = {:?}\n\
             key_file = {:?}\n",
            kafka.cert_file(principal).display().to_string(),
            kafka.key_file(principal).display().to_string()
        ),
    }
}

/// An agent setup whose id is `gw-<who>-...` and whose topics are under the ACL'd prefixes;
/// `window` makes the pipeline windowed (partials), else it passes readings through.
fn setup(
    services: &Services,
    kafka: &SecureKafka,
    auth: &Auth,
    agent: &str,
    window: &str,
) -> Setup {
    let suffix = unique_topic("sec");
    let bootstrap = match auth {
        Auth::Scram { .. } => kafka.sasl_bootstrap.clone(),
        Auth::Certificate { .. } => kafka.mtls_bootstrap.clone(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        config_path: dir.path().join("agent.toml"),
        dir,
        id: format!("{agent}-{suffix}"),
        client_id: unique_topic("sec-client"),
        root: unique_topic("sec-root"),
        url: services.mqtt_url.clone(),
        bootstrap,
        topic: format!("edge.readings.{suffix}"),
        metrics: free_port(),
    };
    let text = format!(
        r#"[agent]
id = "{id}"
data_dir = {data_dir:?}

[ops]
metrics_listen = "{metrics}"
shutdown_timeout_s = 20

{source}
[[pipeline]]
name = "p"
sensors = ["*"]
{window}

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000
replication_factor = 1

{security}
[kafka.topics]
readings = "{readings}"
partials = "edge.partials.{suffix}"
late = "edge.late.{suffix}"
dead_letters = "edge.dead-letters.{suffix}"
progress = "edge.progress.{suffix}"
"#,
        id = setup.id,
        data_dir = setup.dir.path().join("data").display().to_string(),
        metrics = setup.metrics,
        source = edge_tests::config::mqtt_json_source(
            &setup.url,
            &setup.client_id,
            &setup.root,
            "{dev}",
            ""
        ),
        bootstrap = setup.bootstrap,
        security = security_table(kafka, auth),
        readings = setup.topic,
    );
    std::fs::write(&setup.config_path, text).expect("write config");
    setup
}

/// A pass-through setup of agent `gw-<x>-...` authenticating as `principal` with SCRAM and the
/// password the script made for it.
fn scram_setup(services: &Services, kafka: &SecureKafka, principal: &str, agent: &str) -> Setup {
    let password_file = kafka.password_file(principal);
    let auth = Auth::Scram {
        principal,
        password_file: &password_file,
    };
    setup(services, kafka, &auth, agent, "")
}

/// The suffix shared by the setup's topics (`edge.readings.<suffix>`).
fn suffix(setup: &Setup) -> &str {
    setup.topic.strip_prefix("edge.readings.").expect("suffix")
}

/// `kcat -C` over mTLS with `principal`'s certificate, `read_committed`: each record's key and
/// value. (Debian's kcat links librdkafka 2.0.2, whose SCRAM Kafka 4.x refuses: see
/// `security_broker.rs`; a certificate is as much its own credential.)
fn kcat_read(
    kafka: &SecureKafka,
    principal: &str,
    topic: &str,
) -> Result<Vec<(String, String)>, String> {
    let output = Command::new("kcat")
        .args(["-C", "-b", &kafka.mtls_bootstrap, "-t", topic, "-e", "-q"])
        .args(["-f", "%k\\t%s\\n", "-m", "20"])
        .args(["-X", "security.protocol=SSL"])
        .arg("-X")
        .arg(format!("ssl.ca.location={}", kafka.ca_file.display()))
        .arg("-X")
        .arg(format!(
            "ssl.certificate.location={}",
            kafka.cert_file(principal).display()
        ))
        .arg("-X")
        .arg(format!(
            "ssl.key.location={}",
            kafka.key_file(principal).display()
        ))
        .args(["-X", "isolation.level=read_committed"])
        // cargo's LD_LIBRARY_PATH names the build's own librdkafka, not kcat's.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map_err(|e| format!("kcat: {e} (scripts/install-deps.sh installs it)"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// The readings of the setup's topic, read by the admin (kcat), accounted: `0..n` once each.
fn account_secure(kafka: &SecureKafka, setup: &Setup, n: u64) {
    let records = kcat_read(kafka, "admin", &setup.topic).unwrap_or_else(|e| panic!("{e}"));
    let delivered: Vec<Delivered> = records
        .iter()
        .map(|(_, v)| {
            edge_tests::schema::Schema::Reading.check(v.as_bytes());
            let json: serde_json::Value = serde_json::from_str(v).expect("JSON reading");
            Delivered {
                sensor: json["sensor"].as_str().expect("sensor").to_owned(),
                ts: json["ts"].as_u64().expect("ts"),
                value: json["value"].as_f64().expect("value") as u64,
            }
        })
        .collect();
    account_delivered(&delivered, n, 0);
}

/// Waits until the agent's stderr holds `needle`.
fn wait_logged(agent: &mut Proc, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = agent.stderr();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not logged within {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `/readyz` answers 503 naming `why` (the health sampler runs every second).
fn wait_unready(setup: &Setup, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = setup.get("/readyz");
        if matches!(&ready, Some((503, body)) if body.contains(why)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz does not say `{why}`: {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_sasl_ssl_forwards_every_reading_once() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    let setup = scram_setup(&services, &kafka, "agent-a", "gw-a");
    create_session(&setup).await;
    let mut agent = setup.spawn(&agent_binary());
    setup.wait_ready(&mut agent, Duration::from_secs(60));
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));
    account_secure(&kafka, &setup, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_mtls_feeds_a_consumer_over_mtls_and_kcat_reads_the_finals_as_the_consumer() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    let auth = Auth::Certificate {
        principal: "agent-b",
    };
    let window = "[pipeline.window]\nkind = \"tumbling\"\nsize_ms = 1000\nidle_timeout_ms = 1000\n";
    let setup = setup(&services, &kafka, &auth, "gw-b", window);
    let suffix = suffix(&setup).to_owned();
    create_session(&setup).await;
    let mut agent = setup.spawn(&agent_binary());
    setup.wait_ready(&mut agent, Duration::from_secs(60));
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);

    let finals = format!("edge.finals.{suffix}");
    let consumer_toml = setup.dir.path().join("consumer.toml");
    std::fs::write(
        &consumer_toml,
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "edge-consumer.{suffix}"
instance_id = "c1"
transaction_timeout_ms = 10000
{security}
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
inputs = ["edge.partials.{suffix}"]
finals = "{finals}"
changelog = "edge.consumer.changelog.{suffix}"
dead_letters = "edge.consumer.dead-letters.{suffix}"
replication_factor = 1
[window]
idle_timeout_ms = 1000
[ops]
metrics = false
"#,
            bootstrap = kafka.mtls_bootstrap,
            security = security_table(
                &kafka,
                &Auth::Certificate {
                    principal: "consumer"
                }
            ),
        ),
    )
    .expect("write consumer config");
    let log = setup.dir.path().join("consumer.log");
    let mut consumer = Killed(
        Command::new(edge_tests::bins::workspace_binary(
            "edge-consumer",
            "edge-consumer",
        ))
        .args(["run", "--config"])
        .arg(&consumer_toml)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn edge-consumer"),
    );

    // Every reading is in exactly one final window: the counts of the newest final per key
    // add up to N, read by kcat with the consumer's own certificate.
    let deadline = Instant::now() + Duration::from_secs(120);
    let total = loop {
        let mut newest = std::collections::BTreeMap::new();
        for (key, value) in kcat_read(&kafka, "consumer", &finals).unwrap_or_default() {
            let json: serde_json::Value = serde_json::from_str(&value).expect("JSON final");
            newest.insert(key, json["count"].as_u64().expect("count"));
        }
        let total: u64 = newest.values().sum();
        if total >= N || Instant::now() > deadline {
            break total;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let consumer_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        total, N,
        "the finals' counts; consumer log:\n{consumer_log}"
    );
    agent.terminate(Duration::from_secs(30));
    consumer.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_with_the_listener_and_the_mechanism() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let auth = Auth::Scram {
        principal: "agent-a",
        password_file: &wrong,
    };
    let setup = setup(&services, &kafka, &auth, "gw-a", "");
    let mut agent = setup.spawn(&agent_binary());
    // librdkafka logs the failure when the broker answers the SASL exchange; on a loaded machine
    // the TLS handshake before it has taken longer than the first metadata call's 15 s.
    let log = wait_logged(
        &mut agent,
        "invalid credentials with SASL mechanism SCRAM-SHA-512",
        Duration::from_secs(90),
    );
    let line = log
        .lines()
        .find(|l| l.contains("invalid credentials"))
        .expect("the line");
    println!("{line}");
    assert!(line.contains("SASL authentication error"), "{line}");
    assert!(
        line.contains(&kafka.sasl_bootstrap),
        "names the listener: {line}"
    );
    // The call that failed says only that the transport failed; the forwarder adds the reason
    // librdkafka logged, so /readyz names the mechanism too.
    wait_unready(
        &setup,
        "invalid credentials with SASL mechanism SCRAM-SHA-512",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_using_another_agents_transactional_id_is_refused_by_the_broker() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    // agent-b's credentials, agent-a's id: transactional id edge-agent.gw-a-... is not agent-b's.
    let setup = scram_setup(&services, &kafka, "agent-b", "gw-a");
    create_session(&setup).await;
    let mut agent = setup.spawn(&agent_binary());
    let log = wait_logged(
        &mut agent,
        "Transactional Id authorization failed",
        Duration::from_secs(60),
    );
    assert!(
        log.contains(&kafka.sasl_bootstrap),
        "names the listener: {log}"
    );
    wait_unready(&setup, "Transactional Id authorization failed");
    assert_eq!(publish(&setup, 0, 50, Duration::ZERO).await, 50);
    std::thread::sleep(Duration::from_secs(3));
    let s = setup.inspect().expect("inspect");
    assert_eq!(
        s["outbox_records"].as_u64(),
        Some(50),
        "all held in the outbox: {s}"
    );
    agent.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_acl_holds_everything_in_the_outbox_until_granted_then_drains_once() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    let setup = scram_setup(&services, &kafka, "agent-a", "gw-a");
    // A DENY on this test's readings topic alone beats the prefixed ALLOW.
    let deny = [
        "--deny-principal",
        "User:agent-a",
        "--operation",
        "Write",
        "--topic",
        setup.topic.as_str(),
    ];
    let mut add = vec!["--add", "--force"];
    add.extend(deny);
    kafka.acl(&add);
    create_session(&setup).await;
    let mut agent = setup.spawn(&agent_binary());
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);
    let log = wait_logged(&mut agent, "authoriz", Duration::from_secs(60));
    let s = setup.inspect().expect("inspect");
    assert_eq!(
        s["outbox_records"].as_u64(),
        Some(N),
        "held in the outbox: {s}\n{log}"
    );
    wait_unready(&setup, "Topic authorization failed");

    let mut remove = vec!["--remove", "--force"];
    remove.extend(deny);
    kafka.acl(&remove);
    setup.wait_drained(&mut agent, N, Duration::from_secs(90));
    agent.terminate(Duration::from_secs(30));
    account_secure(&kafka, &setup, N);
}

/// A child killed when dropped (a failing assertion leaves no consumer behind).
struct Killed(Child);

impl Killed {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_takes_effect_on_sighup_with_nothing_lost_or_doubled() {
    let services = Services::from_env();
    let kafka = SecureKafka::from_env();
    // A principal of this test's own, so changing its password disturbs no other test.
    let user = unique_topic("rot");
    kafka.set_scram_password(&user, "first-password");
    let principal = format!("User:{user}");
    let txn = format!("edge-agent.{user}");
    for acl in [
        vec!["--operation", "All", "--topic", "edge."],
        vec![
            "--operation",
            "Write",
            "--operation",
            "Describe",
            "--transactional-id",
            &txn,
        ],
        vec!["--operation", "Read", "--group", &txn],
    ] {
        let mut args = vec!["--add", "--allow-principal", &principal];
        args.extend(acl);
        args.extend(["--resource-pattern-type", "prefixed"]);
        kafka.acl(&args);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("kafka-password");
    let write_password = |password: &str| {
        std::fs::write(&password_file, format!("{password}\n")).expect("write");
        std::fs::set_permissions(
            &password_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
    };
    write_password("first-password");
    let auth = Auth::Scram {
        principal: &user,
        password_file: &password_file,
    };
    let setup = setup(&services, &kafka, &auth, &user, "");
    create_session(&setup).await;
    let mut agent = setup.spawn(&agent_binary());
    setup.wait_ready(&mut agent, Duration::from_secs(60));
    assert_eq!(publish(&setup, 0, N / 2, Duration::ZERO).await, N / 2);
    setup.wait_drained(&mut agent, N / 2, Duration::from_secs(60));

    // Rotate: the broker knows only the new password from now on; the file gets it, SIGHUP.
    kafka.set_scram_password(&user, "second-password");
    write_password("second-password");
    let sessions = |agent: &Proc| agent.stderr().matches("forwarder: session started").count();
    let before = sessions(&agent);
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(60);
    while sessions(&agent) <= before {
        agent.assert_alive();
        assert!(
            Instant::now() < deadline,
            "no new session after SIGHUP:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(publish(&setup, N / 2, N, Duration::ZERO).await, N / 2);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));
    account_secure(&kafka, &setup, N);
}
