//! The agent's dead letters reach the dead-letter topic in Kafka: bad MQTT messages among good
//! ones, through the real agent binary, Mosquitto and Kafka (`read_committed`). Each bad message
//! is one record with the agent's headers, and its value is the agent's DeadLetter record v1
//! (`agent/src/store/FORMAT.md`): source, reason and the original bytes, so nothing of the
//! input is lost; the good messages are all delivered, once.

mod ops_support;

use std::time::Duration;

use edge_agent::ingest::DeadLetter;
use edge_tests::kafka::read_committed;
use edge_tests::Services;
use ops_support::*;
use rumqttc::{AsyncClient, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_become_dead_letter_records_in_kafka_with_reason_and_original_bytes() {
    const N: u64 = 300;
    let services = Services::from_env();
    let (_bin, setup, mut agent) = ready_agent(&services).await;
    let bad: [(&str, &[u8]); 3] = [
        ("not JSON", b"{not json"),
        ("is not a number", br#"{"v":"hot","ts":1700000000000}"#),
        ("not JSON", &[0xff, 0xfe, b'{']),
    ];
    let (client, eventloop) = AsyncClient::new(
        edge_tests::mqtt::options(&edge_tests::mqtt::unique("dl-pub"), &setup.url),
        100,
    );
    let acks = edge_tests::mqtt::count_pubacks(eventloop, bad.len() as u64);
    for (_, body) in &bad {
        client
            .publish(
                format!("{}/d1/v", setup.root),
                QoS::AtLeastOnce,
                false,
                body.to_vec(),
            )
            .await
            .expect("publish queued");
    }
    assert_eq!(acks.await.expect("publisher"), bad.len() as u64);
    assert_eq!(publish(&setup, 0, N, Duration::ZERO).await, N);
    setup.wait_drained(&mut agent, N, Duration::from_secs(60));
    agent.terminate(Duration::from_secs(30));

    account(&setup, N, 0);
    let dead = read_committed(
        &setup.bootstrap,
        &format!("{}.dead", setup.topic),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.len(), bad.len(), "one record per bad message");
    for (record, (reason, body)) in dead.iter().zip(&bad) {
        assert_eq!(
            record.header("schema"),
            Some(b"edge.dead-letter".as_slice())
        );
        assert_eq!(record.header("agent"), Some(setup.id.as_bytes()));
        assert!(record.header("seq").is_some());
        assert_eq!(
            record.key.as_deref(),
            Some(b"broker".as_slice()),
            "keyed by source"
        );
        let letter = DeadLetter::decode(record.payload.as_deref().unwrap_or_default())
            .expect("a DeadLetter record v1");
        assert_eq!(letter.source, "broker");
        assert!(
            letter.reason.contains(reason),
            "{reason}: {}",
            letter.reason
        );
        assert_eq!(letter.payload, *body, "the original bytes");
    }
}
