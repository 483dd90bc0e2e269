//! Regression (issue 19): the MQTT source never unsubscribed, so a topic filter removed from the
//! configuration stayed in the persistent session and its messages filled the dead-letter
//! queue. Through the real agent binary, Mosquitto and Kafka (`read_committed`): the agent runs
//! with filters A and B, stops cleanly, messages to both are queued in its session while it is
//! down, and it restarts with only A. Every A message reaches Kafka exactly once; no B message
//! published after the stop does; nothing is dead-lettered; the queued B messages are counted
//! in `edge_mqtt_unsubscribed_dropped_total`, one for one; and B messages published after the
//! restart are never delivered at all (the agent's received count is exact).

mod ops_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_tests::Services;
use ops_support::{agent_binary, delivered, Proc, Setup};
use rumqttc::{AsyncClient, QoS};

/// B's values start here, so a B reading in Kafka is recognised by its value alone.
const B0: u64 = 1_000_000;
const TS0: u64 = 1_700_000_000_000;
/// The log line of a connect sequence the broker confirmed (`source/mqtt.rs`).
const CONFIRMED: &str = "MQTT subscriptions confirmed by the broker";

/// The agent's configuration: one MQTT source (`version` 3 or 5) subscribed to
/// `<root>/a/+/v` and, with `b`, to `<root>/b/+/v`, each with its `[[sensor]]` rule (ids
/// `a.<dev>`, `b.<dev>`); a pass-through pipeline to Kafka.
fn write_config(setup: &Setup, version: u8, b: bool) {
    let root = &setup.root;
    let mut filters = format!(r#"{{ topic = "{root}/a/+/v", qos = 1 }}"#);
    let mut rules = format!(
        "[[sensor]]\nsource = \"broker\"\ntopic = \"{root}/a/{{dev}}/v\"\nid = \"a.{{dev}}\"\n"
    );
    if b {
        filters.push_str(&format!(r#", {{ topic = "{root}/b/+/v", qos = 1 }}"#));
        rules.push_str(&format!(
            "\n[[sensor]]\nsource = \"broker\"\ntopic = \"{root}/b/{{dev}}/v\"\nid = \"b.{{dev}}\"\n"
        ));
    }
    let text = format!(
        r#"[agent]
id = "{id}"
data_dir = {data_dir:?}

[ops]
metrics_listen = "{metrics}"
shutdown_timeout_s = 20

[[mqtt]]
name = "broker"
url = "{url}"
client_id = "{client_id}"
keep_alive_s = 5
version = {version}
payload = {{ format = "json", value = "/v", timestamp = "/ts" }}
subscribe = [{filters}]

{rules}
[[pipeline]]
name = "p"
sensors = ["*"]

[kafka]
bootstrap_servers = "{bootstrap}"
transaction_timeout_ms = 10000

{topics}"#,
        id = setup.id,
        data_dir = setup.dir.path().join("data").display().to_string(),
        metrics = setup.metrics,
        url = setup.url,
        client_id = setup.client_id,
        bootstrap = setup.bootstrap,
        topics = edge_tests::config::kafka_topics(
            &setup.topic,
            &setup.topic,
            &format!("{}.progress", setup.topic)
        ),
    );
    std::fs::write(&setup.config_path, text).expect("write config");
}

/// Publishes values `values` at QoS 1 to `<root>/<level>/d<v % 4>/v`; returns the broker's
/// PUBACK count.
async fn publish(setup: &Setup, level: &str, values: std::ops::Range<u64>) -> u64 {
    let n = values.end - values.start;
    let (client, eventloop) = AsyncClient::new(
        edge_tests::mqtt::options(&edge_tests::mqtt::unique("unsub-pub"), &setup.url),
        1000,
    );
    let acks = edge_tests::mqtt::count_pubacks(eventloop, n);
    for v in values {
        let topic = format!("{}/{level}/d{}/v", setup.root, v % 4);
        let body = format!(r#"{{"v":{v},"ts":{}}}"#, TS0 + v);
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .expect("publish queued");
    }
    let acked = acks.await.expect("publisher task");
    let _ = client.disconnect().await;
    acked
}

/// Spawns the agent and waits until it is ready and the broker confirmed its subscriptions
/// (the UNSUBACKs and the SUBACK of its first connect).
fn start(setup: &Setup) -> Proc {
    let mut agent = setup.spawn(&agent_binary());
    setup.wait_ready(&mut agent, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.stderr().contains(CONFIRMED) {
        agent.assert_alive();
        assert!(
            Instant::now() < deadline,
            "subscriptions not confirmed within 30 s:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

fn counter(setup: &Setup, family: &str) -> u64 {
    setup
        .metric(&format!("{family}{{source=\"broker\"}}"))
        .unwrap_or_else(|| panic!("{family} is exported")) as u64
}

async fn a_removed_filter_is_unsubscribed_and_its_queued_messages_are_dropped_not_dead_lettered(
    version: u8,
) {
    const A_RUN1: u64 = 100; // A values 0..100, B values B0..B0+100: both configured
    const A_DOWN: u64 = 300; // A values 100..300 queued while the agent is down
    const B_DOWN: u64 = 150; // B values B0+100..B0+250 queued while the agent is down
    const A_AFTER: u64 = 400; // A values 300..400 after the restart, behind
    const B_AFTER: u64 = 100; // B values B0+250..B0+350 published after the unsubscribe
    let services = Services::from_env();
    let setup = Setup::new(&services.mqtt_url, &services.kafka_bootstrap);
    write_config(&setup, version, true);

    // Run 1: A and B configured; the agent's own persistent session subscribes both.
    let mut agent = start(&setup);
    assert_eq!(publish(&setup, "a", 0..A_RUN1).await, A_RUN1);
    assert_eq!(publish(&setup, "b", B0..B0 + 100).await, 100);
    setup.wait_drained(&mut agent, A_RUN1 + 100, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));

    // Down: the broker queues both for the session.
    assert_eq!(
        publish(&setup, "b", B0 + 100..B0 + 100 + B_DOWN).await,
        B_DOWN
    );
    assert_eq!(publish(&setup, "a", A_RUN1..A_DOWN).await, A_DOWN - A_RUN1);

    // Run 2: only A configured.
    write_config(&setup, version, false);
    let mut agent = start(&setup);
    let b_after = B0 + 100 + B_DOWN;
    assert_eq!(
        publish(&setup, "b", b_after..b_after + B_AFTER).await,
        B_AFTER
    );
    // A behind B from the same publisher: once these are in, Mosquitto delivered whatever it
    // was going to deliver of the B messages before them.
    assert_eq!(
        publish(&setup, "a", A_DOWN..A_AFTER).await,
        A_AFTER - A_DOWN
    );
    setup.wait_drained(&mut agent, A_AFTER + 100, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));

    let dropped = counter(&setup, "edge_mqtt_unsubscribed_dropped_total");
    let received = counter(&setup, "edge_mqtt_received_total");
    let inspect = setup.inspect().expect("inspect");
    println!(
        "MQTT {version}: run 2 received {received}, dropped as unsubscribed {dropped}, \
         accepted {} (both runs), rejected {}",
        inspect["accepted"], inspect["rejected"]
    );
    assert_eq!(dropped, B_DOWN, "every queued B message, counted once");
    assert_eq!(
        received,
        (A_AFTER - A_RUN1) + B_DOWN,
        "run 2 received the queued A and B and the later A: no B published after the unsubscribe"
    );
    assert_eq!(inspect["rejected"], 0, "nothing dead-lettered");
    assert_eq!(inspect["dead_letters"], 0);
    assert_eq!(inspect["accepted"], A_AFTER + 100);
    let log = agent.stderr();
    assert!(
        log.contains("unsubscribing from filters no longer configured"),
        "{log}"
    );
    assert!(
        log.contains("dropping messages on a topic whose filter was removed"),
        "the drop is logged"
    );
    agent.terminate(Duration::from_secs(30));

    let records = delivered(&setup);
    let mut seen: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in &records {
        seen.entry(r.value).or_default().push(r.sensor.clone());
    }
    let a_missing: Vec<u64> = (0..A_AFTER).filter(|v| !seen.contains_key(v)).collect();
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(v, _)| *v)
        .collect();
    let b_late: Vec<u64> = seen.keys().copied().filter(|v| *v >= B0 + 100).collect();
    edge_tests::check::assert_none("A values missing from Kafka", &a_missing);
    edge_tests::check::assert_none("values in Kafka more than once", &twice);
    edge_tests::check::assert_none("B values published after the stop in Kafka", &b_late);
    assert_eq!(
        records.len() as u64,
        A_AFTER + 100,
        "every A reading and run 1's B readings, nothing else"
    );
    for v in 0..A_AFTER {
        assert_eq!(seen[&v], [format!("a.d{}", v % 4)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_removed_from_the_config_is_unsubscribed_and_its_queued_messages_are_dropped_over_mqtt_3_1_1(
) {
    a_removed_filter_is_unsubscribed_and_its_queued_messages_are_dropped_not_dead_lettered(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_removed_from_the_config_is_unsubscribed_and_its_queued_messages_are_dropped_over_mqtt_5(
) {
    a_removed_filter_is_unsubscribed_and_its_queued_messages_are_dropped_not_dead_lettered(5).await;
}
