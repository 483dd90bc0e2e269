//! Smoke test: rumqttc against the real Mosquitto started by `tests/services/services.sh`, plain
//! and over TLS: a QoS 1 round trip with manual acks, the way the agent will subscribe.

use std::time::Duration;

use edge_tests::Services;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::time::timeout;

const MESSAGES: usize = 50;

async fn round_trip(mut options: MqttOptions, mut sub_options: MqttOptions, topic: String) {
    options.set_keep_alive(Duration::from_secs(5));
    sub_options.set_keep_alive(Duration::from_secs(5));
    sub_options.set_manual_acks(true);

    let (subscriber, mut sub_loop) = AsyncClient::new(sub_options, 100);
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe is queued");
    // Wait for the SUBACK before publishing, so no message can precede the subscription.
    loop {
        match timeout(Duration::from_secs(10), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
            Err(_) => panic!("no SUBACK from the broker within 10 s"),
        }
    }

    let (publisher, mut pub_loop) = AsyncClient::new(options, 100);
    let publish = tokio::spawn(async move {
        for i in 0..MESSAGES {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .expect("publish is queued");
        }
        let mut acked = 0;
        while acked < MESSAGES {
            match timeout(Duration::from_secs(10), pub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher connection failed: {e}"),
                Err(_) => panic!("only {acked} of {MESSAGES} PUBACKs within 10 s"),
            }
        }
    });

    // Acks go through try_ack from the polling task: never await ack() where the loop is polled.
    let mut received = Vec::new();
    while received.len() < MESSAGES {
        match timeout(Duration::from_secs(10), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                received.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
                subscriber.try_ack(&p).expect("ack is queued");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
            Err(_) => panic!("only {} of {MESSAGES} messages within 10 s", received.len()),
        }
    }
    publish.await.expect("publisher task");
    let expected: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(
        received, expected,
        "every QoS 1 message arrived once, in order"
    );
}

#[tokio::test]
async fn qos1_messages_round_trip_through_mosquitto_over_plain_tcp() {
    let services = Services::from_env();
    let (host, port) = services.mqtt_host_port();
    let topic = format!("smoke/plain/{}", std::process::id());
    round_trip(
        MqttOptions::new(format!("smoke-pub-{}", std::process::id()), &host, port),
        MqttOptions::new(format!("smoke-sub-{}", std::process::id()), &host, port),
        topic,
    )
    .await;
}

#[tokio::test]
async fn qos1_messages_round_trip_through_mosquitto_over_tls() {
    let services = Services::from_env();
    let (host, port) = services.mqtts_host_port();
    let ca = std::fs::read(&services.mqtt_ca)
        .unwrap_or_else(|e| panic!("reading MQTT_CA {}: {e}", services.mqtt_ca.display()));
    let tls = || {
        Transport::Tls(TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: None,
        })
    };
    let mut publisher =
        MqttOptions::new(format!("smoke-tls-pub-{}", std::process::id()), &host, port);
    publisher.set_transport(tls());
    let mut subscriber =
        MqttOptions::new(format!("smoke-tls-sub-{}", std::process::id()), &host, port);
    subscriber.set_transport(tls());
    round_trip(
        publisher,
        subscriber,
        format!("smoke/tls/{}", std::process::id()),
    )
    .await;
}
