//! The agent's MQTT source with a client certificate (`cert_file`, `key_file`) against
//! Mosquitto's `require_certificate true` listener (`services.sh start --secure`): every reading
//! published is in Kafka once; a certificate from a CA the broker does not know is refused, the
//! source logs the broker's TLS alert (`UnknownCA`), never connects, and `/readyz` names it.

mod ops_support;

use std::path::Path;
use std::time::{Duration, Instant};

use edge_tests::services::MqttMtls;
use edge_tests::Services;
use ops_support::*;

/// A setup whose MQTT source connects to the mTLS listener with `cert` and `key`; readers
/// publish on the plain listener of the same Mosquitto (topics are shared between listeners).
fn setup(services: &Services, mtls: &MqttMtls, cert: &Path, key: &Path) -> Setup {
    let setup = Setup::new(&services.mqtt_url, &services.kafka_bootstrap);
    let tls = format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        mtls.ca_file.display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    );
    let text = std::fs::read_to_string(&setup.config_path).expect("config");
    let source = edge_tests::config::mqtt_json_source(
        &setup.url,
        &setup.client_id,
        &setup.root,
        "{dev}",
        "",
    );
    let secured = edge_tests::config::mqtt_json_source(
        &mtls.url,
        &setup.client_id,
        &setup.root,
        "{dev}",
        &tls,
    );
    assert!(text.contains(&source), "the setup's source table");
    std::fs::write(&setup.config_path, text.replace(&source, &secured)).expect("config");
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_a_client_certificate_delivers_every_reading_once() {
    const N: u64 = 300;
    let services = Services::from_env();
    let mtls = MqttMtls::from_env();
    let setup = setup(&services, &mtls, &mtls.cert_file, &mtls.key_file);
    let mut agent = setup.spawn(&agent_binary());
    // Ready: the source connected over mTLS and subscribed.
    setup.wait_ready(&mut agent, Duration::from_secs(30));
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));
    account(&setup, N, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused_and_reported() {
    let services = Services::from_env();
    let mtls = MqttMtls::from_env();
    let setup = setup(&services, &mtls, &mtls.rogue_cert, &mtls.rogue_key);
    let mut agent = setup.spawn(&agent_binary());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = setup.get("/readyz");
        let connects = setup.metric("edge_mqtt_connects_total{source=\"broker\"}");
        let failed = matches!(&ready, Some((503, body)) if body.contains("source broker"));
        let log = agent.stderr();
        if failed && log.contains("fatal alert: UnknownCA") && connects == Some(0.0) {
            println!(
                "{}",
                log.lines().rev().find(|l| l.contains("MQTT")).unwrap_or("")
            );
            break;
        }
        agent.assert_alive();
        assert!(
            Instant::now() < deadline,
            "not refused and reported within 30 s: {ready:?}, connects {connects:?}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    agent.terminate(Duration::from_secs(30));
}
