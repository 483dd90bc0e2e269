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
use rumqttc::{v5, AsyncClient, MqttOptions, QoS, Transport};
use tokio_util::sync::CancellationToken;

/// The MQTT protocol a test runs: the agent's `version` and the publisher's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    /// MQTT 5: the publisher sends the user property `line = LINE` with every message and the
    /// agent's sensor ids are `{line}.{dev}`, so every reading in the log proves the property
    /// came through.
    V5,
}

const LINE: &str = "l7";

/// Where and how a test publishes; cloned into publisher tasks.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    ca: Option<PathBuf>,
    root: String,
    version: Version,
}

struct Setup {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    client_id: String,
    target: Target,
}

/// Writes a config for one MQTT 3.1.1 source subscribed to `<root>/+/v` (JSON
/// `{"v":..,"ts":..}`), sensor id = the device level of the topic.
fn setup(url: &str, ca: Option<&Path>, extra_buffer: &str) -> Setup {
    setup_version(Version::V311, url, ca, extra_buffer, "")
}

/// [`setup`] for either version; `extra_source` goes into the `[[mqtt]]` table.
fn setup_version(
    version: Version,
    url: &str,
    ca: Option<&Path>,
    extra_buffer: &str,
    extra_source: &str,
) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = unique("edge-test");
    let client_id = unique("agent");
    let mut source_keys = ca.map_or(String::new(), |p| {
        format!("ca_file = {:?}\n", p.display().to_string())
    });
    let id = match version {
        Version::V311 => "{dev}",
        Version::V5 => {
            source_keys.push_str("version = 5\nuser_properties = [\"line\"]\n");
            "{line}.{dev}"
        }
    };
    source_keys.push_str(extra_source);
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
        source = edge_tests::config::mqtt_json_source(url, &client_id, &root, id, &source_keys),
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, text).expect("write config");
    Setup {
        dir,
        config_path,
        client_id,
        target: Target {
            url: url.to_owned(),
            ca: ca.map(Path::to_path_buf),
            root,
            version,
        },
    }
}

fn options(client_id: &str, url: &str, ca: Option<&Path>) -> MqttOptions {
    let (host, port, transport) = address(url, ca);
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(transport) = transport {
        options.set_transport(transport);
    }
    options
}

fn options_v5(client_id: &str, url: &str, ca: Option<&Path>) -> v5::MqttOptions {
    let (host, port, transport) = address(url, ca);
    let mut options = v5::MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(transport) = transport {
        options.set_transport(transport);
    }
    options
}

fn address(url: &str, ca: Option<&Path>) -> (String, u16, Option<Transport>) {
    let (tls, rest) = match url.strip_prefix("mqtts://") {
        Some(rest) => (true, rest),
        None => (false, url.trim_start_matches("mqtt://")),
    };
    let (host, port) = rest.rsplit_once(':').expect("url has a port");
    let transport = tls.then(|| {
        let pem = std::fs::read(ca.expect("TLS needs the CA")).expect("read CA");
        Transport::tls(pem, None, None)
    });
    (host.to_owned(), port.parse().expect("port"), transport)
}

/// Creates the agent's persistent session (same client id, `clean_session = false`, or for
/// MQTT 5 `clean_start = false` with `expiry_s`) with its subscription, so the broker queues
/// everything published from now on for the agent.
async fn create_session(setup: &Setup, url: &str, ca: Option<&Path>) {
    create_session_expiring(
        setup,
        url,
        ca,
        edge_agent::source::mqtt::SESSION_EXPIRY_DEFAULT_S,
    )
    .await;
}

async fn create_session_expiring(setup: &Setup, url: &str, ca: Option<&Path>, expiry_s: u32) {
    let filter = format!("{}/+/v", setup.target.root);
    match setup.target.version {
        Version::V311 => {
            let opts = options(&setup.client_id, url, ca);
            edge_tests::mqtt::create_session(opts, &filter).await;
        }
        Version::V5 => {
            let opts = options_v5(&setup.client_id, url, ca);
            edge_tests::mqtt::create_session_v5(opts, &filter, expiry_s).await;
        }
    }
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
async fn publish(target: &Target, n: u64, extra: &[&str], pace: Duration) -> u64 {
    let bodies = (0..n).map(|i| message(&target.root, i)).chain(
        extra
            .iter()
            .map(|b| (format!("{}/d0/v", target.root), (*b).to_owned())),
    );
    match target.version {
        Version::V311 => {
            let opts = options(&unique("pub"), &target.url, target.ca.as_deref());
            let (client, eventloop) = AsyncClient::new(opts, 1000);
            let acks = count_pubacks(eventloop, n + extra.len() as u64);
            for (i, (topic, body)) in bodies.enumerate() {
                client
                    .publish(topic, QoS::AtLeastOnce, false, body)
                    .await
                    .expect("publish queued");
                if i % 100 == 99 {
                    tokio::time::sleep(pace).await;
                }
            }
            let acked = acks.await.expect("publisher task");
            let _ = client.disconnect().await;
            acked
        }
        Version::V5 => {
            let opts = options_v5(&unique("pub"), &target.url, target.ca.as_deref());
            let (client, eventloop) = v5::AsyncClient::new(opts, 1000);
            let acks = edge_tests::mqtt::count_pubacks_v5(eventloop, n + extra.len() as u64);
            let properties = v5::mqttbytes::v5::PublishProperties {
                user_properties: vec![("line".to_owned(), LINE.to_owned())],
                ..Default::default()
            };
            for (i, (topic, body)) in bodies.enumerate() {
                client
                    .publish_with_properties(
                        topic,
                        v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        body,
                        properties.clone(),
                    )
                    .await
                    .expect("publish queued");
                if i % 100 == 99 {
                    tokio::time::sleep(pace).await;
                }
            }
            let acked = acks.await.expect("publisher task");
            let _ = client.disconnect().await;
            acked
        }
    }
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

impl Setup {
    /// The sensor id of reading `i` in the log.
    fn sensor(&self, i: u64) -> String {
        match self.target.version {
            Version::V311 => format!("d{}", i % DEVICES),
            Version::V5 => format!("{LINE}.d{}", i % DEVICES),
        }
    }

    /// Every one of readings `0..n` is in `copies` once, and nothing else is.
    fn assert_exactly_once(&self, copies: &BTreeMap<(String, u64), u64>, n: u64) {
        let twice: Vec<_> = copies.iter().filter(|(_, c)| **c != 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "readings stored more than once: {twice:?}"
        );
        let missing: Vec<u64> = (0..n)
            .filter(|i| !copies.contains_key(&(self.sensor(*i), BASE_TS + i)))
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

async fn ingest_all(version: Version, url: &str, ca: Option<&Path>) {
    const N: u64 = 2_000;
    let setup = setup_version(version, url, ca, "", "");
    create_session(&setup, url, ca).await;
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    let counters = run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), N);
    let (copies, stats) = log_contents(&setup);
    setup.assert_exactly_once(&copies, N);
    assert_eq!((stats.accepted, stats.rejected), (N, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_qos1_reading_lands_in_the_log_exactly_once() {
    let services = Services::from_env();
    ingest_all(Version::V311, &services.mqtt_url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_mqtt5_reading_lands_once_named_by_its_user_property() {
    let services = Services::from_env();
    ingest_all(Version::V5, &services.mqtt_url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_source_with_a_ca_file_ingests_every_reading() {
    let services = Services::from_env();
    ingest_all(Version::V311, &services.mqtts_url, Some(&services.mqtt_ca)).await;
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
        publish(&setup.target, N, &bad, Duration::ZERO).await,
        N + bad.len() as u64
    );
    let counters = run_in_process(&setup, |c| {
        c.accepted.load(Ordering::Relaxed) >= N
            && c.rejected.load(Ordering::Relaxed) >= bad.len() as u64
    })
    .await;
    assert_eq!(counters.rejected.load(Ordering::Relaxed), bad.len() as u64);
    let (copies, stats) = log_contents(&setup);
    setup.assert_exactly_once(&copies, N);
    assert_eq!(stats.dead_letters, bad.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_committed_but_never_acked_before_a_crash_are_redelivered_and_dropped_once() {
    redelivered_after_commit_and_dropped_once(Version::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_readings_committed_but_never_acked_are_redelivered_and_dropped_once() {
    redelivered_after_commit_and_dropped_once(Version::V5).await;
}

/// The crash window of the ack-after-commit rule: the commit landed, the PUBACK did not. The
/// broker redelivers; the dedupe index (same file, survives restart) must drop the copies.
async fn redelivered_after_commit_and_dropped_once(version: Version) {
    const N: u64 = 500;
    const COMMITTED: u64 = 200;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup_version(version, url, None, "", "");
    create_session(&setup, url, None).await;
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    {
        let config = Config::load(&setup.config_path).expect("config");
        let mut log = IngestLog::open(&config.ingest_path(), edge_agent::service::limits(&config))
            .expect("log");
        let batch: Vec<Submission> = (0..COMMITTED)
            .map(|i| Submission {
                readings: vec![(
                    Reading {
                        sensor: setup.sensor(i),
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
    setup.assert_exactly_once(&copies, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_tiny_quota_the_agent_stops_acking_and_mosquitto_holds_the_rest() {
    const N: u64 = 1_000;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "quota_bytes = 4096\non_full = \"backpressure\"");
    create_session(&setup, url, None).await;
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
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
    setup.assert_exactly_once(&copies, N);
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
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    let (copies, _) = log_contents(&setup);
    setup.assert_exactly_once(&copies, N);
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
    killed_mid_stream(Version::V311, 50_000, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_agent_killed_with_sigkill_mid_stream_loses_and_duplicates_nothing() {
    killed_mid_stream(Version::V5, 20_000, 10).await;
}

/// Publishes `n` readings, paced, while the agent is killed with SIGKILL `kills` times, then
/// runs it until all are in: each exactly once.
async fn killed_mid_stream(version: Version, n: u64, kills: usize) {
    let services = Services::from_env();
    let url = services.mqtt_url.clone();
    let bin = agent_binary();
    let setup = setup_version(version, &url, None, "", "");
    create_session(&setup, &url, None).await;
    let target = setup.target.clone();
    let publisher =
        tokio::spawn(async move { publish(&target, n, &[], Duration::from_millis(75)).await });

    edge_tests::schedule::kill_repeatedly(kills, || spawn_agent(&bin, &setup)).await;
    assert_eq!(
        publisher.await.expect("publisher"),
        n,
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
        if copies.len() as u64 >= n || Instant::now() > deadline {
            println!(
                "log: {} readings, {} duplicates dropped by the dedupe index",
                stats.readings, stats.duplicate
            );
            setup.assert_exactly_once(&copies, n);
            break;
        }
    }
    drop(setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_session_is_kept_for_session_expiry_s_and_forgotten_after() {
    const N: u64 = 50;
    const EXPIRY_S: u32 = 5;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup_version(
        Version::V5,
        url,
        None,
        "",
        &format!("session_expiry_s = {EXPIRY_S}\n"),
    );
    create_session_expiring(&setup, url, None, EXPIRY_S).await;
    // Within the expiry the broker keeps the session: what it queued arrives.
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    let counters = run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), N);
    // The agent disconnected; once the expiry has passed the broker has dropped the session
    // and its subscription, so nothing published now is queued for the agent. (Had the
    // session been kept, the same readings would come back and count as duplicates.)
    tokio::time::sleep(Duration::from_secs(u64::from(EXPIRY_S) + 2)).await;
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    let started = Instant::now();
    let counters = run_in_process(&setup, |_| started.elapsed() > Duration::from_secs(3)).await;
    assert_eq!(
        (
            counters.accepted.load(Ordering::Relaxed),
            counters.duplicate.load(Ordering::Relaxed)
        ),
        (0, 0),
        "an expired session delivers nothing"
    );
    let (copies, _) = log_contents(&setup);
    setup.assert_exactly_once(&copies, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senml_packs_published_at_qos2_land_once_per_record_under_their_resolved_names() {
    const PACKS: u64 = 300;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = unique("edge-senml");
    let client_id = unique("agent");
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"[agent]
id = "test-agent"
data_dir = {data:?}

[buffer]
batch_max_ms = 5

[[mqtt]]
name = "broker"
url = "{url}"
client_id = "{client_id}"
keep_alive_s = 5
payload = {{ format = "senml" }}
subscribe = [{{ topic = "{root}/senml", qos = 2 }}]

[[sensor]]
source = "broker"
topic = "{root}/senml"
id = "{{payload}}"
"#,
            data = dir.path().display().to_string(),
        ),
    )
    .expect("write config");
    let setup = Setup {
        dir,
        config_path,
        client_id: client_id.clone(),
        target: Target {
            url: url.clone(),
            ca: None,
            root: root.clone(),
            version: Version::V311,
        },
    };
    edge_tests::mqtt::create_session_qos(
        options(&client_id, url, None),
        &format!("{root}/senml"),
        QoS::ExactlyOnce,
    )
    .await;
    // Pack i: device d{i % 10}, base time BASE + i seconds, two records (temp = i, hum = 2i).
    // At most 20 QoS 2 exchanges open at once: with rumqttc's default (100) Mosquitto reset the
    // publisher's connection at once (its max_inflight_messages is 20).
    let mut publisher = options(&unique("pub"), url, None);
    publisher.set_inflight(20);
    let (client, eventloop) = AsyncClient::new(publisher, 1000);
    let acks = count_pubacks(eventloop, PACKS);
    for i in 0..PACKS {
        let pack = format!(
            r#"[{{"bn":"urn:dev:d{}:","bt":{},"n":"temp","v":{i}}},{{"n":"hum","v":{}}}]"#,
            i % 10,
            BASE_TS / 1000 + i,
            2 * i
        );
        client
            .publish(format!("{root}/senml"), QoS::ExactlyOnce, false, pack)
            .await
            .expect("publish queued");
    }
    assert_eq!(
        acks.await.expect("publisher"),
        PACKS,
        "every QoS 2 exchange completed"
    );
    let _ = client.disconnect().await;
    let counters =
        run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= 2 * PACKS).await;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), 2 * PACKS);
    assert_eq!(counters.rejected.load(Ordering::Relaxed), 0);
    let log = open_log(&setup.config_path);
    let mut values = BTreeMap::new();
    each_reading(&log, |r| {
        *values
            .entry((r.sensor, r.ts_ms, r.value as u64))
            .or_insert(0u32) += 1;
    });
    let expected: BTreeMap<_, _> = (0..PACKS)
        .flat_map(|i| {
            let ts = (BASE_TS / 1000 + i) * 1000;
            [
                ((format!("urn:dev:d{}:temp", i % 10), ts, i), 1),
                ((format!("urn:dev:d{}:hum", i % 10), ts, 2 * i), 1),
            ]
        })
        .collect();
    assert_eq!(
        values, expected,
        "each SenML record once, named bn + n, at bt + t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_drop_oldest_a_full_quota_keeps_the_newest_readings_and_counts_every_eviction() {
    const N: u64 = 1_000;
    let services = Services::from_env();
    let url = &services.mqtt_url;
    let setup = setup(url, None, "quota_bytes = 4096\non_full = \"drop_oldest\"");
    create_session(&setup, url, None).await;
    assert_eq!(publish(&setup.target, N, &[], Duration::ZERO).await, N);
    // Nothing drains the log: every reading is acked (never pushed back), the oldest evicted.
    let counters = run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    assert_eq!(counters.accepted.load(Ordering::Relaxed), N, "all acked");
    let (copies, stats) = log_contents(&setup);
    assert!(
        stats.log_bytes <= 4096,
        "within the quota: {} bytes",
        stats.log_bytes
    );
    assert_eq!(
        stats.dropped + copies.len() as u64,
        N,
        "every reading is either kept or counted as dropped"
    );
    assert!(stats.dropped > 0 && !copies.is_empty());
    // The kept ones are the newest: exactly the last `kept` readings, once each.
    let kept = copies.len() as u64;
    for i in N - kept..N {
        assert_eq!(
            copies.get(&(setup.sensor(i), BASE_TS + i)),
            Some(&1),
            "reading {i} (among the newest {kept}) kept once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_broker_that_checks_passwords_the_right_one_ingests_and_a_wrong_one_gets_nothing()
{
    const N: u64 = 500;
    let services = Services::from_env();
    let auth = services.mqtt_auth();
    let password = auth.password();
    let with_password = |id: &str| {
        let mut o = options(id, &auth.url, None);
        o.set_credentials(auth.user.clone(), password.clone());
        o
    };
    let credentials = |password_file: &Path| {
        format!(
            "username = {:?}\npassword_file = {:?}\n",
            auth.user,
            password_file.display().to_string()
        )
    };
    let wrong = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(wrong.path(), "not-the-password\n").expect("write");
    // The agent refuses a password file every user may read; the services' own copy may be one.
    let right = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(right.path(), format!("{password}\n")).expect("write");
    let setup = setup_version(
        Version::V311,
        &auth.url,
        None,
        "",
        &credentials(wrong.path()),
    );
    edge_tests::mqtt::create_session(
        with_password(&setup.client_id),
        &format!("{}/+/v", setup.target.root),
    )
    .await;
    // The publisher authenticates too; the broker queues everything for the agent's session.
    let (client, eventloop) = AsyncClient::new(with_password(&unique("pub")), 1000);
    let acks = count_pubacks(eventloop, N);
    for i in 0..N {
        let (topic, body) = message(&setup.target.root, i);
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish queued");
    }
    assert_eq!(acks.await.expect("publisher"), N);
    let _ = client.disconnect().await;

    // A wrong password: the broker refuses the connection, nothing arrives, the agent retries.
    let started = Instant::now();
    let refused = run_in_process(&setup, |_| started.elapsed() > Duration::from_secs(3)).await;
    assert_eq!(
        refused.accepted.load(Ordering::Relaxed),
        0,
        "nothing without the password"
    );

    // The right one (from its file, trailing newline dropped): everything, once.
    let text = std::fs::read_to_string(&setup.config_path).expect("config");
    std::fs::write(
        &setup.config_path,
        text.replace(&credentials(wrong.path()), &credentials(right.path())),
    )
    .expect("config");
    run_in_process(&setup, |c| c.accepted.load(Ordering::Relaxed) >= N).await;
    let (copies, _) = log_contents(&setup);
    setup.assert_exactly_once(&copies, N);
}
