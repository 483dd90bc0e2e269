//! MQTT helpers for the suites (rumqttc against the test Mosquitto).

use std::time::{Duration, Instant};

use rumqttc::{v5, AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// A name no other run shares, for client ids and topics.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Client options for `mqtt://host:port` with a 5 s keepalive.
pub fn options(client_id: &str, url: &str) -> MqttOptions {
    let rest = url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').expect("the MQTT URL has a port");
    let mut options = MqttOptions::new(client_id, host, port.parse().expect("a numeric port"));
    options.set_keep_alive(Duration::from_secs(5));
    options
}

/// Creates a persistent session (`clean_session = false`) for `options`' client id subscribed
/// to `filter` at QoS 1, then disconnects: from now on the broker queues everything for it, as
/// it will for the agent that takes the session over.
pub async fn create_session(options: MqttOptions, filter: &str) {
    create_session_qos(options, filter, QoS::AtLeastOnce).await;
}

/// [`create_session`] subscribed at `qos`.
pub async fn create_session_qos(mut options: MqttOptions, filter: &str, qos: QoS) {
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe(filter, qos)
        .await
        .expect("subscribe queued");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no SUBACK within 10 s");
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("session set-up failed: {e}"),
            Err(_) => panic!("no SUBACK within 10 s"),
        }
    }
    client.disconnect().await.expect("disconnect queued");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// Polls a publisher's `eventloop` in a task until the broker has acknowledged `total` QoS 1
/// or 2 publishes (a PUBACK, or the PUBCOMP that ends a QoS 2 exchange); the task returns the
/// count. Panics on a connection error or after 30 s
/// without progress (naming how many were acked), so a stalled broker fails the test.
pub fn count_pubacks(mut eventloop: EventLoop, total: u64) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher connection failed: {e}"),
                Err(_) => panic!("publisher: no progress for 30 s ({acked}/{total} acked)"),
            }
        }
        acked
    })
}

/// [`create_session`] for MQTT 5: `clean_start = false` with a Session Expiry Interval of
/// `expiry_s` (an MQTT 5 session without one ends with its connection).
pub async fn create_session_v5(mut options: v5::MqttOptions, filter: &str, expiry_s: u32) {
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(expiry_s));
    let (client, mut eventloop) = v5::AsyncClient::new(options, 10);
    client
        .subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(v5::Event::Incoming(v5::Incoming::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("session set-up failed: {e}"),
            Err(_) => panic!("no SUBACK within 10 s"),
        }
    }
    client.disconnect().await.expect("disconnect queued");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// [`count_pubacks`] for an MQTT 5 publisher.
pub fn count_pubacks_v5(mut eventloop: v5::EventLoop, total: u64) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
                Ok(Ok(v5::Event::Incoming(v5::Incoming::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher connection failed: {e}"),
                Err(_) => panic!("publisher: no progress for 30 s ({acked}/{total} acked)"),
            }
        }
        acked
    })
}
