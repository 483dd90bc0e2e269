//! The agent's MQTT ingest path against the real Mosquitto (`tests/services/services.sh`; the
//! test broker sets `max_queued_messages 0`, as operators must, see
//! `configs/agent.example.toml`).
//!
//! Every test counts: each published reading must be in the redb ingest log exactly once.

mod ingest_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::config::Config;
use edge_agent::ingest::{Counters, Dedupe, IngestLog, Submission};
use edge_agent::reading::Reading;
use edge_tests::mqtt::{count_pubacks, unique};
use edge_tests::Services;
use ingest_support::{each_reading, open_log};
use rumqttc::{AsyncClient, MqttOptions, QoS, Transport};
use tokio_util::sync::CancellationToken;

struct Setup {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    client_id: String,
    root: String,
}

/// Writes a config for one MQTT source subscribed to `<root>/+/v` (JSON `{"v":..,"ts":..}`),
/// sensor id = the device level of the topic.
fn setup(url: &str, ca: Option<&Path>, extra_buffer: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = unique("edge-test");
    let client_id = unique("agent");
    let ca = ca.map_or(String::new(), |p| {
        format!("ca_file = {:?}\n", p.display().to_string())
    });
    let text = format!(
        r#"
[agent]
id = "test-agent"
data_dir = {data_dir:?}

[buffer]
batch_max_ms = 5
{extra_buffer}

{source}"#,
        data_dir = dir.path().display().to_string(),
        source = edge_tests::config::mqtt_json_source(url, &client_id, &root, "{dev}", &ca),
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, text).expect("write config");
    Setup {
        dir,
        config_path,
        client_id,
        root,
    }
}

fn options(client_id: &str, url: &str, ca: Option<&Path>) -> MqttOptions {
    let (tls, rest) = match url.strip_prefix("mqtts://") {
        Some(rest) => (true, rest),
        None => (false, url.trim_start_matches("mqtt://")),
    };
    let (host, port) = rest.rsplit_once(':').expect("url has a port");
    let mut options = MqttOptions::new(client_id, host, port.parse().expect("port"));
    options.set_keep_alive(Duration::from_secs(5));
    if tls {
        let pem = std::fs::read(ca.expect("TLS needs the CA")).expect("read CA");
        options.set_transport(Transport::tls(pem, None, None));
    }
    options
}

/// Creates the agent's persistent session (same client id, `clean_session = false`) with its
/// subscription, so the broker queues everything published from now on for the agent.
async fn create_session(setup: &Setup, url: &str, ca: Option<&Path>) {
    let opts = options(&setup.client_id, url, ca);
    edge_tests::mqtt::create_session(opts, &format!("{}/+/v", setup.root)).await;
}

/// The message for reading `i`: device `d{i % devices}`, timestamp `BASE_TS + i`, value `i`.
const BASE_TS: u64 = 1_700_000_000_000;
const DEVICES: u64 = 10;

fn message(root: &str, i: u64) -> (String, String) {
    (
        format!("{root}/d{}/v", i % DEVICES),
        format!(r#"{{"v":{i},"ts":{}}}"#, BASE_TS + i),
    )
}

/// Publishes readings `0..n` at QoS 1 (plus `extra` raw bodies to the same topics) and returns
/// how many PUBACKs the broker sent: a reading the broker acked must end up in the log.
async fn publish(
    url: &str,
    ca: Option<&Path>,
    root: &str,
    n: u64,
    extra: &[&str],
    pace: Duration,
) -> u64 {
    let (client, eventloop) = AsyncClient::new(options(&unique("pub"), url, ca), 1000);
    let acks = count_pubacks(eventloop, n + extra.len() as u64);
    for i in 0..n {
        let (topic, body) = message(root, i);
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish queued");
        if i % 100 == 99 {
            tokio::time::sleep(pace).await;
        }
    }
    for body in extra {
        let topic = format!("{root}/d0/v");
        client
            .publish(topic, QoS::AtLeastOnce, false, body.as_bytes().to_vec())
            .await
            .expect("publish queued");
    }
    let acked = acks.await.expect("publisher task");
    let _ = client.disconnect().await;
    acked
}

/// Reads the whole log (in bounded batches) and returns (sensor, ts) -> copies.
fn log_contents(setup: &Setup) -> (BTreeMap<(String, u64), u64>, edge_agent::ingest::Stats) {
    let log = open_log(&setup.config_path);
    let mut copies = BTreeMap::new();
    each_reading(&log, |r| {
        *copies.entry((r.sensor, r.ts_ms)).or_insert(0) += 1
    });
    (copies, log.stats().expect("stats"))
}

fn assert_exactly_once(copies: &BTreeMap<(String, u64), u64>, n: u64) {
    let twice: Vec<_> = copies.iter().filter(|(_, c)| **c != 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "readings stored more than once: {twice:?}"
    );
    let missing: Vec<u64> = (0..n)
        .filter(|i| !copies.contains_key(&(format!("d{}", i % DEVICES), BASE_TS + i)))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acked readings missing from the log (first 10): {missing:?}"
    );
    assert_eq!(
        copies.len() as u64,
        n,
        "the log holds exactly the published readings"
    );
}

/// Runs the agent in-process until `done` says so (or 60 s pass), then stops it.
async fn run_in_process(setup: &Setup, done: impl Fn(&Counters) -> bool) -> Arc<Counters> {
    let config = Config::load(&setup.config_path).unwrap_or_else(|e| panic!("{e}"));
    let counters = Arc::new(Counters::default());
    let cancel = CancellationToken::new();
    let agent = tokio::spawn(edge_agent::service::run_with_counters(
        config,
        cancel.clone(),
        counters.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&counters) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let acks of the last commit reach the broker before stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    agent
        .await
        .expect("agent task")
        .expect("agent stopped cleanly");
    counters
}

async fn ingest_all(url: &str, ca: Option<&Path>) {
    const N: u64 = 2_000;
    let setup = setup(url, ca, "");
    create_session(&setup, url, ca).await;
    assert_eq!(
        publish(url, ca, &setup.root, N, &[], Duration::ZERO).await,
        N
    );
    let counters = run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), N);
    let (copies, stats) = log_contents(&setup);
    assert_exactly_once(&copies, N);
    assert_eq!((stats.accepted, stats.rejected), (N, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_qos1_reading_lands_in_the_log_exactly_once() {
    let services = Services::from_env();
    ingest_all(&services.mqtt_url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_source_with_a_ca_file_ingests_every_reading() {
    let services = Services::from_env();
    ingest_all(&services.mqtts_url, Some(&services.mqtt_ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_the_rest_still_lands() {
    const N: u64 = 300;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "max_payload_bytes = 1024");
    create_session(&setup, url, None).await;
    let oversize = format!(r#"{{"v":1,"ts":1,"pad":"{}"}}"#, "x".repeat(2000));
    let bad = [
        "{not json",
        r#"{"v":"hot","ts":1}"#,
        r#"{"ts":5}"#,
        "",
        oversize.as_str(),
    ];
    assert_eq!(
        publish(url, None, &setup.root, N, &bad, Duration::ZERO).await,
        N + bad.len() as u64
    );
    let counters = run_in_process(&setup, |c| {
        c.accepted.load(Ordering::Relaxed) >= N
            && c.rejected.load(Ordering::Relaxed) >= bad.len() as u64
    })
    .await;
    assert_eq!(counters.rejected.load(Ordering::Relaxed), bad.len() as u64);
    let (copies, stats) = log_contents(&setup);
    assert_exactly_once(&copies, N);
    assert_eq!(stats.dead_letters, bad.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_committed_but_never_acked_before_a_crash_are_redelivered_and_dropped_once() {
    // The crash window of the ack-after-commit rule: the commit landed, the PUBACK did not. The
    // broker redelivers; the dedupe index (same file, survives restart) must drop the copies.
    const N: u64 = 500;
    const COMMITTED: u64 = 200;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "");
    create_session(&setup, url, None).await;
    assert_eq!(
        publish(url, None, &setup.root, N, &[], Duration::ZERO).await,
        N
    );
    {
        let config = Config::load(&setup.config_path).expect("config");
        let mut log = IngestLog::open(&config.ingest_path(), edge_agent::service::limits(&config))
            .expect("log");
        let batch: Vec<Submission> = (0..COMMITTED)
            .map(|i| Submission {
                readings: vec![(
                    Reading {
                        sensor: format!("d{}", i % DEVICES),
                        ts_ms: BASE_TS + i,
                        value: i as f64,
                        seq: None,
                    },
                    Dedupe::SensorTs,
                )],
                dead_letters: Vec::new(),
                state: Vec::new(),
                ack: None,
            })
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        assert_eq!(
            log.commit(&batch, now_ms).expect("commit").accepted,
            COMMITTED
        );
    }
    let counters = run_in_process(&setup, |c| {
        c.accepted.load(Ordering::Relaxed) + c.duplicate.load(Ordering::Relaxed) >= N
    })
    .await;
    assert_eq!(counters.duplicate.load(Ordering::Relaxed), COMMITTED);
    assert_eq!(counters.accepted.load(Ordering::Relaxed), N - COMMITTED);
    let (copies, _) = log_contents(&setup);
    assert_exactly_once(&copies, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_tiny_quota_the_agent_stops_acking_and_mosquitto_holds_the_rest() {
    const N: u64 = 1_000;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "quota_bytes = 4096\non_full = \"backpressure\"");
    create_session(&setup, url, None).await;
    assert_eq!(
        publish(url, None, &setup.root, N, &[], Duration::ZERO).await,
        N
    );
    // Nothing drains the log: ingest stops at the quota and stays there.
    let started = Instant::now();
    let first = run_in_process(&setup, |_| started.elapsed() > Duration::from_secs(3)).await;
    let accepted = first.accepted.load(Ordering::Relaxed);
    let (_, stats) = log_contents(&setup);
    assert!(
        accepted > 0 && accepted < 100,
        "stopped at the quota: {accepted} accepted"
    );
    assert!(
        stats.log_bytes <= 4096,
        "log within its quota: {} bytes",
        stats.log_bytes
    );
    assert_eq!(stats.dropped, 0);
    // Space frees (here: the operator raises the quota): every reading arrives, exactly once.
    let text = std::fs::read_to_string(&setup.config_path).expect("config");
    std::fs::write(
        &setup.config_path,
        text.replace("quota_bytes = 4096", "quota_bytes = 67108864"),
    )
    .expect("config");
    run_in_process(&setup, |c| {
        c.accepted.load(Ordering::Relaxed) >= N - accepted
    })
    .await;
    let (copies, _) = log_contents(&setup);
    assert_exactly_once(&copies, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_does_not_stop_the_others() {
    const N: u64 = 300;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "");
    // One source whose broker refuses connections (retried with backoff forever) and one that
    // cannot start (its password variable is missing).
    let mut text = std::fs::read_to_string(&setup.config_path).expect("config");
    text.push_str(
        r#"
[[mqtt]]
name = "refused"
url = "mqtt://127.0.0.1:1"
client_id = "nobody-1"
payload = { format = "number" }
subscribe = [{ topic = "x" }]

[[mqtt]]
name = "no-password"
url = "mqtt://127.0.0.1:1"
client_id = "nobody-2"
username = "u"
password_env = "EDGE_TEST_PASSWORD_THAT_IS_NOT_SET"
payload = { format = "number" }
subscribe = [{ topic = "x" }]
"#,
    );
    std::fs::write(&setup.config_path, text).expect("config");
    create_session(&setup, url, None).await;
    assert_eq!(
        publish(url, None, &setup.root, N, &[], Duration::ZERO).await,
        N
    );
    run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    let (copies, _) = log_contents(&setup);
    assert_exactly_once(&copies, N);
}

/// `target/debug/edge-agent`, built on demand (the binary under test, not a stand-in).
fn agent_binary() -> PathBuf {
    edge_tests::bins::workspace_binary("edge-agent", "edge-agent")
}

fn spawn_agent(bin: &Path, setup: &Setup) -> Child {
    edge_tests::bins::spawn_agent(bin, &setup.config_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_sigkill_mid_stream_loses_and_duplicates_nothing() {
    const N: u64 = 50_000;
    const KILLS: usize = 20;
    let services = Services::from_env();
    let url = services.mqtt_url.clone();
    let bin = agent_binary();
    let setup = setup(&url, None, "");
    create_session(&setup, &url, None).await;
    let root = setup.root.clone();
    let publisher =
        tokio::spawn(
            async move { publish(&url, None, &root, N, &[], Duration::from_millis(75)).await },
        );

    edge_tests::schedule::kill_repeatedly(KILLS, || spawn_agent(&bin, &setup)).await;
    assert_eq!(
        publisher.await.expect("publisher"),
        N,
        "the broker acked every publish"
    );

    // Quiet period: run to completion, stopping gracefully to read the log, until all is in.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut agent = spawn_agent(&bin, &setup);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(agent.id().to_string())
            .status();
        agent.wait().expect("reap agent");
        let (copies, stats) = log_contents(&setup);
        if copies.len() as u64 >= N || Instant::now() > deadline {
            println!(
                "log: {} readings, {} duplicates dropped by the dedupe index",
                stats.readings, stats.duplicate
            );
            assert_exactly_once(&copies, N);
            break;
        }
    }
    drop(setup.dir);
}
