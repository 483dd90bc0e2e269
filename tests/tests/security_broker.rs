//! The secured services of `tests/services/services.sh start --secure`, proved with peers no one
//! here wrote: Kafka's own console producer and consumer (Java, same jars as the broker) over
//! SASL_SSL with SCRAM-SHA-512, `kcat` over mTLS, `mosquitto_pub`/`mosquitto_sub` against
//! Mosquitto's listener that requires a client certificate.
//!
//! Why not kcat for SCRAM: Debian's kcat links librdkafka 2.0.2, whose SCRAM client-final
//! message repeats the client nonce; Kafka 4.x checks the nonce strictly (RFC 5802) and refuses
//! every such login as "invalid credentials" (fixed in librdkafka 2.6.1, confluentinc/librdkafka
//! PR 4895). The agent's own rdkafka bundles a fixed librdkafka; kcat is used where it works, mTLS.
//!
//! Every test uses topics of its own (`<prefix>.<unique>`): the broker's ACLs are PREFIXED, so
//! `edge.partials.<unique>` is covered by the `edge.partials` grants.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use edge_tests::kafka::unique_topic;
use edge_tests::services::{MqttMtls, SecureKafka};

fn services_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services/services.sh")
}

/// `<prefix>.<unique>`: under the ACLs' prefix, unique per test and run.
fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", unique_topic("t"))
}

/// Runs `program args` under `timeout 90`, stdin from `input`; stdout and stderr together.
/// Without cargo's `LD_LIBRARY_PATH`: it names the build's own librdkafka (no OpenSSL there),
/// which kcat would load instead of the system's.
fn run(program: &str, args: &[String], input: &str) -> (Output, String) {
    let mut child = Command::new("timeout")
        .arg("90")
        .arg(program)
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/install-deps.sh installs it)"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("the input is written");
    let output = child.wait_with_output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

// ------------------------------------------------------------------ Kafka over SASL_SSL (Java)

/// Java client properties for `user`/`password` over SASL_SSL, in `dir`.
fn scram_properties(kafka: &SecureKafka, dir: &Path, user: &str, password: &str) -> PathBuf {
    let file = dir.join(format!("{user}.properties"));
    std::fs::write(
        &file,
        format!(
            "security.protocol=SASL_SSL\n\
             sasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"{user}\" password=\"{password}\";\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={}\n",
            kafka.ca_file.display()
        ),
    )
    .expect("the client properties are written");
    file
}

/// Kafka's console producer, `--sync`: one record per line of `lines`; it exits non-zero at the
/// first send that fails.
fn console_produce(
    kafka: &SecureKafka,
    config: &Path,
    topic: &str,
    lines: &[&str],
) -> (Output, String) {
    let script = services_sh();
    let mut args = strings(&[script.to_str().expect("utf-8 path"), "console-producer"]);
    args.extend(strings(&[
        "--bootstrap-server",
        &kafka.sasl_bootstrap,
        "--topic",
        topic,
        "--producer.config",
        config.to_str().expect("utf-8 path"),
        "--max-block-ms",
        "20000",
        "--request-required-acks",
        "all",
        "--sync",
    ]));
    let mut input = lines.join("\n");
    input.push('\n');
    run("bash", &args, &input)
}

fn create_topic(kafka: &SecureKafka, topic: &str) {
    kafka.topics(&["--create", "--topic", topic, "--partitions", "1"]);
}

#[test]
fn scram_agent_a_produces_and_consumer_reads_back_in_its_group() {
    let kafka = SecureKafka::from_env();
    let dir = tempfile::tempdir().expect("a temp dir");
    let topic = unique("edge.partials");
    create_topic(&kafka, &topic);

    let agent = scram_properties(&kafka, dir.path(), "agent-a", &kafka.password("agent-a"));
    let values = ["one", "two", "three"];
    let (output, produced) = console_produce(&kafka, &agent, &topic, &values);
    assert!(
        output.status.success() && !produced.contains("Exception"),
        "agent-a's records were not all accepted:\n{produced}"
    );

    let consumer = scram_properties(&kafka, dir.path(), "consumer", &kafka.password("consumer"));
    let script = services_sh();
    let group = unique("edge-consumer");
    let (output, text) = run(
        "bash",
        &strings(&[
            script.to_str().expect("utf-8 path"),
            "console-consumer",
            "--bootstrap-server",
            &kafka.sasl_bootstrap,
            "--topic",
            &topic,
            "--group",
            &group,
            "--consumer.config",
            consumer.to_str().expect("utf-8 path"),
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout-ms",
            "30000",
        ]),
        "",
    );
    assert!(
        output.status.success(),
        "the console consumer failed:\n{text}"
    );
    let read: Vec<&str> = std::str::from_utf8(&output.stdout)
        .expect("utf-8")
        .lines()
        .collect();
    assert_eq!(
        read, values,
        "consumer (group {group}) read agent-a's three records back:\n{text}"
    );
}

#[test]
fn scram_agent_a_may_not_write_a_finals_topic() {
    let kafka = SecureKafka::from_env();
    let dir = tempfile::tempdir().expect("a temp dir");
    let topic = unique("edge.finals");
    create_topic(&kafka, &topic);
    let agent = scram_properties(&kafka, dir.path(), "agent-a", &kafka.password("agent-a"));
    let (output, text) = console_produce(&kafka, &agent, &topic, &["forbidden"]);
    assert!(
        !output.status.success()
            && text.contains("TopicAuthorizationException")
            && text.contains(&format!("Not authorized to access topics: [{topic}]")),
        "agent-a's write to {topic} was refused by topic authorization:\n{text}"
    );
}

#[test]
fn scram_wrong_password_is_refused() {
    let kafka = SecureKafka::from_env();
    let dir = tempfile::tempdir().expect("a temp dir");
    let topic = unique("edge.partials");
    create_topic(&kafka, &topic);
    let wrong = format!("{}x", kafka.password("agent-a"));
    let agent = scram_properties(&kafka, dir.path(), "agent-a", &wrong);
    let (output, text) = console_produce(&kafka, &agent, &topic, &["intruder"]);
    assert!(
        !output.status.success()
            && text.contains("SaslAuthenticationException")
            && text.contains("invalid credentials with SASL mechanism SCRAM-SHA-512"),
        "a wrong password was refused by SASL authentication:\n{text}"
    );
}

// ------------------------------------------------------------------ Kafka over mTLS (kcat)

/// kcat over the mTLS listener with `principal`'s certificate (`None`: none at all).
fn kcat_mtls(
    kafka: &SecureKafka,
    principal: Option<&str>,
    mode: &[&str],
    input: &str,
) -> (Output, String) {
    let mut args = strings(&["-b", &kafka.mtls_bootstrap, "-X", "security.protocol=SSL"]);
    args.push("-X".into());
    args.push(format!("ssl.ca.location={}", kafka.ca_file.display()));
    if let Some(principal) = principal {
        args.push("-X".into());
        args.push(format!(
            "ssl.certificate.location={}",
            kafka.cert_file(principal).display()
        ));
        args.push("-X".into());
        args.push(format!(
            "ssl.key.location={}",
            kafka.key_file(principal).display()
        ));
    }
    args.extend(strings(&["-X", "message.timeout.ms=15000", "-m", "15"]));
    args.extend(strings(mode));
    run("kcat", &args, input)
}

fn kcat_produce(
    kafka: &SecureKafka,
    principal: Option<&str>,
    topic: &str,
    value: &str,
) -> (Output, String) {
    kcat_mtls(
        kafka,
        principal,
        &["-P", "-t", topic],
        &format!("{value}\n"),
    )
}

#[test]
fn mtls_agent_a_certificate_writes_its_topics_only_and_foreign_certificates_are_refused() {
    let kafka = SecureKafka::from_env();
    let topic = unique("edge.partials");
    create_topic(&kafka, &topic);

    let (output, text) = kcat_produce(&kafka, Some("agent-a"), &topic, "by-certificate");
    assert!(
        output.status.success(),
        "agent-a's certificate could not produce:\n{text}"
    );
    // Read back with consumer's certificate (no group: an assigned read).
    let (output, text) = kcat_mtls(
        &kafka,
        Some("consumer"),
        &["-C", "-t", &topic, "-o", "beginning", "-c", "1", "-e"],
        "",
    );
    assert!(
        output.status.success(),
        "consumer's certificate could not read:\n{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "by-certificate",
        "the record agent-a wrote by certificate:\n{text}"
    );

    // The certificate CN=agent-a is User:agent-a: the same ACLs as its SCRAM login.
    let finals = unique("edge.finals");
    create_topic(&kafka, &finals);
    let (output, text) = kcat_produce(&kafka, Some("agent-a"), &finals, "forbidden");
    assert!(
        !output.status.success() && text.contains("Topic authorization failed"),
        "agent-a's certificate may not write {finals}:\n{text}"
    );

    // A certificate from another CA, and none at all: the handshake is refused.
    for (who, principal) in [
        ("the rogue certificate", Some("rogue")),
        ("no certificate", None),
    ] {
        let (output, text) = kcat_produce(&kafka, principal, &topic, "intruder");
        assert!(
            !output.status.success() && text.contains("SSL") && text.contains("certificate"),
            "{who} was refused by the mTLS listener:\n{text}"
        );
    }
    let (output, text) = kcat_mtls(
        &kafka,
        Some("consumer"),
        &["-C", "-t", &topic, "-o", "beginning", "-e"],
        "",
    );
    assert!(
        output.status.success(),
        "consumer's certificate could not read:\n{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "by-certificate",
        "nothing but agent-a's record reached {topic}:\n{text}"
    );
}

/// Produces with kcat as `principal` until `accepted(outcome)` holds; ACL changes reach the
/// broker's authorizer through the metadata log, a moment after the admin's call returns.
fn produce_until(kafka: &SecureKafka, principal: &str, topic: &str, want_success: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (output, text) = kcat_produce(kafka, Some(principal), topic, "acl-check");
        let denied = text.contains("Topic authorization failed");
        if want_success && output.status.success() {
            return text;
        }
        if !want_success && !output.status.success() && denied {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{principal}'s write to {topic} did not {} within 30 s:\n{text}",
            if want_success {
                "succeed"
            } else {
                "fail with a topic authorization error"
            }
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn acl_remove_denies_a_write_and_add_restores_it() {
    let kafka = SecureKafka::from_env();
    // Outside every prefix the broker grants: only this test's literal ACLs apply.
    let topic = unique("acl-test");
    create_topic(&kafka, &topic);
    let grant = |action: &str, ops: &[&str]| {
        let mut args = vec![
            action,
            "--force",
            "--allow-principal",
            "User:agent-b",
            "--topic",
            topic.as_str(),
        ];
        for op in ops {
            args.extend(["--operation", op]);
        }
        kafka.acl(&args);
    };

    let (output, text) = kcat_produce(&kafka, Some("agent-b"), &topic, "before");
    assert!(
        !output.status.success() && text.contains("Topic authorization failed"),
        "without an ACL agent-b may not write {topic}:\n{text}"
    );
    grant("--add", &["Write", "Describe"]);
    produce_until(&kafka, "agent-b", &topic, true);
    grant("--remove", &["Write"]);
    produce_until(&kafka, "agent-b", &topic, false);
    grant("--add", &["Write"]);
    produce_until(&kafka, "agent-b", &topic, true);
    grant("--remove", &["Write", "Describe"]);
}

// ------------------------------------------------------------------ Mosquitto, client certificates

fn mosquitto_args(mtls: &MqttMtls, cert: Option<(&Path, &Path)>) -> Vec<String> {
    let (host, port) = mtls.host_port();
    let mut args = strings(&["-h", &host, "-p", &port.to_string(), "--cafile"]);
    args.push(mtls.ca_file.display().to_string());
    if let Some((cert, key)) = cert {
        args.extend(["--cert".to_owned(), cert.display().to_string()]);
        args.extend(["--key".to_owned(), key.display().to_string()]);
    }
    args
}

#[test]
fn mqtt_client_certificate_round_trips_and_others_are_refused() {
    let mtls = MqttMtls::from_env();
    let topic = format!("secure/{}", unique_topic("mtls"));
    let good = Some((mtls.cert_file.as_path(), mtls.key_file.as_path()));

    // A persistent session (clean session off) subscribed at QoS 1 first (-E: exit once the
    // SUBACK is in), so the message waits for the subscriber whatever the timing.
    let client_id = unique_topic("mtls-sub");
    let session = |extra: &[&str]| {
        let mut args = mosquitto_args(&mtls, good);
        args.extend(strings(&["-i", &client_id, "-c", "-q", "1", "-t", &topic]));
        args.extend(strings(extra));
        run("mosquitto_sub", &args, "")
    };
    let (output, text) = session(&["-E"]);
    assert!(
        output.status.success(),
        "mosquitto_sub with the client certificate could not subscribe:\n{text}"
    );

    let payload = format!("hello-{}", std::process::id());
    let mut pub_args = mosquitto_args(&mtls, good);
    pub_args.extend(strings(&["-t", &topic, "-q", "1", "-m", &payload]));
    let (output, text) = run("mosquitto_pub", &pub_args, "");
    assert!(
        output.status.success(),
        "mosquitto_pub with the client certificate failed:\n{text}"
    );

    let (output, text) = session(&["-C", "1", "-W", "30"]);
    assert!(
        output.status.success(),
        "mosquitto_sub with the client certificate received nothing:\n{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        payload,
        "the message arrived as published:\n{text}"
    );

    // No certificate, and one signed by another CA: the connection is refused.
    let rogue = Some((mtls.rogue_cert.as_path(), mtls.rogue_key.as_path()));
    for (who, cert) in [("no certificate", None), ("the rogue certificate", rogue)] {
        let mut args = mosquitto_args(&mtls, cert);
        args.extend(strings(&["-t", &topic, "-q", "1", "-m", "intruder"]));
        let (output, text) = run("mosquitto_pub", &args, "");
        assert!(
            !output.status.success() && text.contains("Error"),
            "mosquitto_pub with {who} was refused, exit {:?}:\n{text}",
            output.status.code()
        );
        let mut args = mosquitto_args(&mtls, cert);
        args.extend(strings(&["-t", &topic, "-C", "1", "-W", "5"]));
        let (output, text) = run("mosquitto_sub", &args, "");
        // Refused, not timed out (-W): a connected subscriber would wait and exit 27.
        assert!(
            !output.status.success() && text.contains("Error") && !text.contains("Timed out"),
            "mosquitto_sub with {who} was refused, exit {:?}:\n{text}",
            output.status.code()
        );
    }
}
