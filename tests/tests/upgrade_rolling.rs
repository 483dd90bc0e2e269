//! A rolling upgrade, counted: the previous release (`v0.1.0`, built from its release commit by
//! `edge_tests::upgrade`) and this tree, mixed the ways a fleet mixes them.
//!
//! 1. The **old agent** ingests MQTT readings, windows them and forwards partials; it is killed
//!    with SIGKILL mid-stream (after it committed partials to Kafka).
//! 2. The **new agent** starts on the old agent's database (opened in place, nothing migrated
//!    by hand) and its progress in Kafka, and takes the rest of the stream.
//! 3. A **new consumer** group and an **old consumer** group each merge the partials of both
//!    agents into finals.
//!
//! Every reading is accounted for: the partials in Kafka hold each reading exactly once, and
//! both consumers' finals equal the batch computation over what was published (count, min,
//! max, first, last exactly; sums and quantiles up to rounding), so old agent -> new consumer
//! and new agent -> old consumer both hold, across a crash in the middle of the upgrade.

mod consumer_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use consumer_support::{check_final, now_ms, reference, Cell, Reading, Setup};
use edge_protocol::partial::Partial;
use edge_tests::http::free_port;
use edge_tests::kafka::{read_committed, unique_topic};
use edge_tests::mqtt::{count_pubacks, options, unique};
use edge_tests::upgrade::{self, Release};
use edge_tests::Services;
use rumqttc::{AsyncClient, QoS};

const N: u64 = 3_000;
const SENSORS: u64 = 5;
/// Event time between two readings; each sensor gets one every `SENSORS * STEP_MS`.
const STEP_MS: i64 = 20;
const WINDOW_MS: i64 = 1_000;

/// The agent's file for both releases (only keys both know: the file an operator keeps through
/// the upgrade): `source`, one pipeline of 1 s tumbling windows with revisions, Kafka topics
/// named from `prefix`.
fn agent_config(
    id: &str,
    data_dir: &std::path::Path,
    source: &str,
    bootstrap: &str,
    prefix: &str,
) -> String {
    format!(
        r#"[agent]
id = "{id}"
data_dir = {data:?}

[ops]
metrics_listen = "{metrics}"

[buffer]
batch_max_ms = 5

{source}
[[pipeline]]
name = "all"
sensors = ["*"]
[pipeline.window]
kind = "tumbling"
size_ms = {WINDOW_MS}
idle_timeout_ms = 2000
revisions = true

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000
{topics}"#,
        data = data_dir.display().to_string(),
        metrics = free_port(),
        topics = edge_tests::config::kafka_topics(
            &format!("{prefix}.readings"),
            prefix,
            &format!("{prefix}.progress")
        ),
    )
}

struct Fleet {
    dir: tempfile::TempDir,
    agent_id: String,
    client_id: String,
    root: String,
    partials: String,
    config: PathBuf,
    base_ms: i64,
}

impl Fleet {
    fn new(bootstrap: &str, mqtt_url: &str) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent_id = unique_topic("upgrade-agent");
        let client_id = unique("upgrade-agent");
        let root = unique("upgrade");
        let prefix = unique_topic("upgrade");
        let text = agent_config(
            &agent_id,
            &dir.path().join("data"),
            &edge_tests::config::mqtt_json_source(mqtt_url, &client_id, &root, "{dev}", ""),
            bootstrap,
            &prefix,
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).expect("write config");
        Fleet {
            dir,
            agent_id,
            client_id,
            root,
            partials: format!("{prefix}.partials"),
            config,
            base_ms: (now_ms() / 60_000 - 30) * 60_000,
        }
    }

    /// Reading `i`: sensor `d{i % SENSORS}`, event time `base + i * STEP_MS`, a value from `i`.
    fn reading(&self, i: u64) -> (String, i64, f64) {
        (
            format!("d{}", i % SENSORS),
            self.base_ms + i as i64 * STEP_MS,
            (i % 97) as f64 + 0.25,
        )
    }

    /// What the consumers must compute: every reading in its (sensor, window) cell.
    fn cells(&self) -> Vec<Cell> {
        let mut cells: BTreeMap<(String, i64), Cell> = BTreeMap::new();
        for i in 0..N {
            let (sensor, ts, value) = self.reading(i);
            let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
            cells
                .entry((sensor.clone(), start))
                .or_insert_with(|| Cell {
                    gateway: self.agent_id.clone(),
                    series: sensor,
                    start_ms: start,
                    end_ms: start + WINDOW_MS,
                    readings: Vec::new(),
                })
                .readings
                .push(Reading { ts_ms: ts, value });
        }
        cells.into_values().collect()
    }

    fn spawn(&self, release: &Release) -> std::process::Child {
        edge_tests::bins::spawn_agent(&release.agent, &self.config)
    }

    /// The committed partials: (series, window start) -> readings counted, summed over
    /// revisions; and how many partial records there are.
    fn counted(&self, bootstrap: &str) -> (BTreeMap<(String, i64), u64>, usize) {
        let records =
            read_committed(bootstrap, &self.partials, Duration::from_secs(10)).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for r in &records {
            let p = Partial::decode(r.payload.as_deref().unwrap_or_default())
                .expect("a partial either release can read");
            *counts
                .entry((p.series.to_string(), p.window_start_ms))
                .or_insert(0) += p.aggregate.count();
        }
        (counts, records.len())
    }
}

fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_agent_crashes_mid_upgrade_new_agent_resumes_its_database_and_both_consumers_count_every_reading(
) {
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.clone();
    let old = upgrade::previous();
    let new = upgrade::current();
    let fleet = Fleet::new(&bootstrap, &services.mqtt_url);
    edge_tests::mqtt::create_session(
        options(&fleet.client_id, &services.mqtt_url),
        &format!("{}/+/v", fleet.root),
    )
    .await;

    // 1. The old agent takes the first part of the stream.
    let mut old_agent = fleet.spawn(&old);
    let (client, eventloop) = AsyncClient::new(options(&unique("pub"), &services.mqtt_url), 1000);
    let acks = count_pubacks(eventloop, N);
    let publish = |from: u64, to: u64| {
        let client = client.clone();
        let messages: Vec<_> = (from..to)
            .map(|i| {
                let (sensor, ts, value) = fleet.reading(i);
                (
                    format!("{}/{sensor}/v", fleet.root),
                    format!(r#"{{"v":{value},"ts":{ts}}}"#),
                )
            })
            .collect();
        async move {
            for (k, (topic, body)) in messages.into_iter().enumerate() {
                client
                    .publish(topic, QoS::AtLeastOnce, false, body)
                    .await
                    .expect("publish queued");
                if k % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    publish(0, N / 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let before_kill = loop {
        let (_, records) = fleet.counted(&bootstrap);
        if records > 0 {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "the old agent forwarded no partial in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = old_agent.kill();
    let _ = old_agent.wait();

    // 2. The new agent on the old agent's database takes the rest.
    let mut new_agent = fleet.spawn(&new);
    publish(N / 2, N).await;
    assert_eq!(
        acks.await.expect("publisher"),
        N,
        "the broker acked every publish"
    );
    let expected_cells = fleet.cells();
    let mut expected_counts = BTreeMap::new();
    for c in &expected_cells {
        expected_counts.insert((c.series.clone(), c.start_ms), c.readings.len() as u64);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let (counts, records) = loop {
        let (counts, records) = fleet.counted(&bootstrap);
        let total: u64 = counts.values().sum();
        if total >= N || Instant::now() > deadline {
            break (counts, records);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    stop(&mut new_agent);
    println!(
        "partials: {before_kill} from the old agent before its SIGKILL, {records} in all; readings counted {}",
        counts.values().sum::<u64>()
    );
    assert!(
        records > before_kill,
        "the new agent forwarded partials too"
    );
    assert_eq!(
        counts, expected_counts,
        "every reading in exactly one partial, across the crash and the upgrade"
    );

    // 3. Both releases' consumers merge both releases' partials.
    let expected = reference(&expected_cells, None);
    for (name, release) in [("new", &new), ("old", &old)] {
        let setup = Setup::on_input(
            &bootstrap,
            &format!("upgrade-{name}-consumer"),
            &fleet.partials,
        );
        let config = setup.config(name, 3_000, "", "", "");
        let mut consumer = setup.spawn_binary(&release.consumer, &config, name);
        let finals = setup.wait_for_finals(&expected, Duration::from_secs(90));
        let _ = consumer.kill();
        let _ = consumer.wait();
        assert_eq!(
            finals.len(),
            expected.len(),
            "{name} consumer: no extra windows"
        );
        for (key, r) in &expected {
            check_final(key, &finals[key], r);
        }
        println!(
            "{name} consumer: {} finals equal the reference",
            finals.len()
        );
    }
    drop(fleet.dir);
}

/// `tests/fixtures/v0.1.0/ingest.redb` (see its README): 500 readings a v0.1.0 agent ingested
/// and windowed into 50 partials it never sent. This release opens the file in place and
/// forwards those partials: each reading counted once, in its window.
#[test]
fn a_database_written_by_v0_1_0_is_forwarded_by_this_release_exactly_once() {
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v0.1.0/ingest.redb");
    std::fs::copy(&fixture, data.join("ingest.redb")).expect("copy the fixture");
    let prefix = unique_topic("upgrade-fixture");
    // A source nobody publishes to: the readings are already in the file.
    let silent = edge_tests::config::mqtt_json_source(
        &services.mqtt_url,
        &unique("fixture-gw"),
        &unique("fixture-silent"),
        "{dev}",
        "",
    );
    let text = agent_config(
        &unique_topic("fixture-gw"),
        &data,
        &silent,
        bootstrap,
        &prefix,
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).expect("write config");
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for i in 0..500i64 {
        let ts = 1_700_000_000_000 + 20 * i;
        *expected
            .entry((format!("d{}", i % 5), ts.div_euclid(1000) * 1000))
            .or_insert(0) += 1;
    }
    let mut agent = edge_tests::bins::spawn_agent(&upgrade::current().agent, &config);
    let partials = format!("{prefix}.partials");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (counts, records) = loop {
        let records =
            read_committed(bootstrap, &partials, Duration::from_secs(10)).unwrap_or_default();
        let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for r in &records {
            let p = Partial::decode(r.payload.as_deref().unwrap_or_default()).expect("a partial");
            *counts
                .entry((p.series.to_string(), p.window_start_ms))
                .or_insert(0) += p.aggregate.count();
        }
        if counts.values().sum::<u64>() >= 500 || Instant::now() > deadline {
            break (counts, records.len());
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    stop(&mut agent);
    assert_eq!(
        records, 50,
        "the 50 partials v0.1.0 left in its outbox, each once"
    );
    assert_eq!(
        counts, expected,
        "every reading of the old database, in its window, once"
    );
}
