//! The MQTT transport against the real Mosquitto started by `tests/services/services.sh start`.
//! These tests fail (never skip) when the broker is not there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_tests::Services;
use firmware_sim::runner::mqtt::{self, MqttConfig};
use firmware_sim::runner::payload::PayloadFormat;
use firmware_sim::runner::{Ledger, LedgerRecord, RunConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}

fn ledger_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.jsonl", unique(name)))
}

/// A subscriber to `filter`; returns the channel its publishes arrive on once SUBACK came.
async fn subscribe(
    host: &str,
    port: u16,
    tls_ca: Option<&PathBuf>,
    filter: &str,
) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut options = MqttOptions::new(unique("fwsim-sub"), host, port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(ca) = tls_ca {
        let ca = std::fs::read(ca).expect("read the test CA");
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe(filter, QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber lost the broker: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("SUBACK within 10 s")
        .expect("subscriber task alive");
    rx
}

/// Receives until `expected` messages arrived and then 500 ms of quiet (to catch duplicates).
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    expected: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let wait = if got.len() >= expected {
            Duration::from_millis(500)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(message)) => got.push(message),
            _ => return got,
        }
    }
}

fn ledger_messages(path: &Path) -> Vec<(String, u64, f32)> {
    let records = Ledger::read(path).expect("read the ledger");
    assert!(
        matches!(records.last(), Some(LedgerRecord::End { clean: true, .. })),
        "the ledger ends with a clean end record"
    );
    records
        .into_iter()
        .filter_map(|r| match r {
            LedgerRecord::Mqtt {
                topic,
                ts_ms,
                value,
                ..
            } => Some((topic, ts_ms, value)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn qos1_json_messages_reach_a_subscriber_exactly_once_each() {
    let services = Services::from_env();
    let (host, port) = services.mqtt_host_port();
    let prefix = unique("fwsim-qos1");
    let mut rx = subscribe(&host, port, None, &format!("{prefix}/#")).await;

    let ledger = ledger_path("fwsim-qos1");
    let mut run = RunConfig::new(3, 400.0, 11);
    run.channels = 2;
    run.count = Some(300);
    run.ledger = Some(ledger.clone());
    let mut config = MqttConfig::new(&services.mqtt_url);
    config.topic = format!("{prefix}/{{device}}/{{channel}}").parse().unwrap();
    config.qos = 1;
    config.payload = PayloadFormat::Json;
    config.client_id = Some(unique("fwsim-pub"));
    let summary = mqtt::run(&run, &config, CancellationToken::new())
        .await
        .expect("the run succeeds");
    assert_eq!(summary.readings, 900);
    assert!(summary.drained, "every publish was acknowledged");

    let sent = ledger_messages(&ledger);
    assert_eq!(sent.len(), 900);
    let received = collect(&mut rx, sent.len()).await;
    let mut counts: HashMap<(String, u64, u32), usize> = HashMap::new();
    for (topic, payload) in &received {
        let json: serde_json::Value = serde_json::from_slice(payload).expect("JSON payload");
        let ts = json["ts"].as_u64().expect("ts");
        let v = json["v"].as_f64().expect("v") as f32;
        *counts.entry((topic.clone(), ts, v.to_bits())).or_default() += 1;
    }
    for (topic, ts, value) in &sent {
        let n = counts
            .get(&(topic.clone(), *ts, value.to_bits()))
            .copied()
            .unwrap_or(0);
        assert_eq!(n, 1, "{topic} ts={ts} v={value} arrived {n} times");
    }
    assert_eq!(
        received.len(),
        sent.len(),
        "nothing arrived that the ledger lacks"
    );
    let _ = std::fs::remove_file(ledger);
}

#[tokio::test]
async fn qos2_senml_over_tls_with_duplicates_and_reordering_delivers_every_ledger_reading() {
    let services = Services::from_env();
    let (host, port) = services.mqtts_host_port();
    let prefix = unique("fwsim-tls");
    let mut rx = subscribe(&host, port, Some(&services.mqtt_ca), &format!("{prefix}/#")).await;

    let ledger = ledger_path("fwsim-tls");
    let mut run = RunConfig::new(2, 300.0, 12);
    run.count = Some(150);
    run.ledger = Some(ledger.clone());
    run.faults.duplicate_rate = 0.1;
    run.faults.reorder_rate = 0.1;
    run.faults.clock_skew_ms = 5_000;
    let mut config = MqttConfig::new(&services.mqtts_url);
    config.ca = Some(services.mqtt_ca.clone());
    config.topic = format!("{prefix}/{{device_id}}/{{channel_id}}")
        .parse()
        .unwrap();
    config.qos = 2;
    config.payload = PayloadFormat::Senml;
    config.client_id = Some(unique("fwsim-pub-tls"));
    let summary = mqtt::run(&run, &config, CancellationToken::new())
        .await
        .expect("the run succeeds");
    assert!(summary.drained);

    let sent = ledger_messages(&ledger);
    assert_eq!(sent.len(), 300);
    // Duplicates are injected on purpose: at least one copy of each, and no strangers.
    let received = collect(&mut rx, sent.len() + 1).await;
    let mut counts: HashMap<(String, u64, u32), usize> = HashMap::new();
    for (topic, payload) in &received {
        let json: serde_json::Value = serde_json::from_slice(payload).expect("SenML payload");
        let record = &json[0];
        let ts = (record["bt"].as_f64().expect("bt") * 1000.0).round() as u64;
        let v = record["v"].as_f64().expect("v") as f32;
        *counts.entry((topic.clone(), ts, v.to_bits())).or_default() += 1;
    }
    for (topic, ts, value) in &sent {
        let n = counts
            .get(&(topic.clone(), *ts, value.to_bits()))
            .copied()
            .unwrap_or(0);
        assert!(
            (1..=2).contains(&n),
            "{topic} ts={ts} v={value} arrived {n} times"
        );
    }
    assert_eq!(
        received.len() as u64,
        summary.frames,
        "one message per publish"
    );
    assert!(received.len() > sent.len(), "some duplicates were injected");
    let _ = std::fs::remove_file(ledger);
}

#[tokio::test]
async fn dropped_connections_at_qos1_lose_nothing_from_the_ledger() {
    let services = Services::from_env();
    let (host, port) = services.mqtt_host_port();
    let prefix = unique("fwsim-drop");
    let mut rx = subscribe(&host, port, None, &format!("{prefix}/#")).await;

    let ledger = ledger_path("fwsim-drop");
    let mut run = RunConfig::new(2, 400.0, 13);
    run.count = Some(600);
    run.ledger = Some(ledger.clone());
    run.faults.disconnect_every = 0.5;
    run.faults.disconnect_secs = 0.25;
    let mut config = MqttConfig::new(&services.mqtt_url);
    config.topic = format!("{prefix}/{{device}}/{{channel}}").parse().unwrap();
    config.qos = 1;
    config.payload = PayloadFormat::Nested;
    config.client_id = Some(unique("fwsim-pub-drop"));
    let summary = mqtt::run(&run, &config, CancellationToken::new())
        .await
        .expect("the run succeeds");
    assert!(summary.drained, "{summary:?}");

    let sent = ledger_messages(&ledger);
    assert_eq!(sent.len(), 1_200);
    let received = collect(&mut rx, sent.len()).await;
    let mut counts: HashMap<(String, u64, u32), usize> = HashMap::new();
    for (topic, payload) in &received {
        let json: serde_json::Value = serde_json::from_slice(payload).expect("nested JSON");
        let device = json["device"].as_str().expect("device");
        let (channel, point) = json["data"]
            .as_object()
            .and_then(|m| m.iter().next())
            .expect("one channel under data");
        assert!(topic.ends_with(&format!("/{device}/{channel}")), "{topic}");
        let ts = point["time"].as_u64().expect("time");
        let v = point["value"].as_f64().expect("value") as f32;
        *counts.entry((topic.clone(), ts, v.to_bits())).or_default() += 1;
    }
    for (topic, ts, value) in &sent {
        let n = counts
            .get(&(topic.clone(), *ts, value.to_bits()))
            .copied()
            .unwrap_or(0);
        assert!(n >= 1, "{topic} ts={ts} v={value} never arrived");
    }
    let _ = std::fs::remove_file(ledger);
}
