use super::*;
use crate::config::Config;
use rumqttc::QoS;
use stop::AckLedger;

const CONFIG: &str = r#"
[agent]
id = "gw"
data_dir = "/unused"
[[mqtt]]
name = "b"
url = "mqtts://broker.example:8884"
client_id = "agent-1"
username = "edge"
password_env = "EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a"
payload = { format = "json", value = "/v", timestamp = "/ts" }
subscribe = [{ topic = "s/+/v", qos = 1 }]
[[sensor]]
source = "b"
topic = "s/{dev}/v"
id = "{dev}"
max = 100.0
"#;

use crate::config::fixtures::config;

fn task(config: &Config) -> (MqttSourceTask, mpsc::Receiver<Submission>) {
    let (submissions, rx) = mpsc::channel(4);
    let task = MqttSourceTask {
        parser: PayloadParser::new(&config.mqtt[0].payload, 1024),
        sparkplug: None,
        subscribed_before: None,
        config: config.mqtt[0].clone(),
        mapper: Arc::new(Mapper::new(config)),
        max_payload_bytes: 1024,
        submissions,
        counters: Arc::new(MqttCounters::default()),
        cancel: CancellationToken::new(),
    };
    (task, rx)
}

fn publish(topic: &str, qos: QoS, body: &str) -> Publish {
    let mut p = rumqttc::Publish::new(topic, qos, body.as_bytes().to_vec());
    p.pkid = 9;
    Publish::V311(p)
}

#[test]
fn a_good_message_becomes_a_reading_whose_ack_goes_to_the_acker() {
    let config = config(CONFIG);
    let (task, _rx) = task(&config);
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let ledger = Arc::new(AckLedger::default());
    let s = task.submission(
        publish("s/d1/v", QoS::AtLeastOnce, r#"{"v":5,"ts":7}"#),
        Dedupe::SensorTs,
        &commands,
        &ledger,
    );
    assert_eq!(s.readings.len(), 1);
    assert_eq!(
        (s.readings[0].0.sensor.as_str(), s.readings[0].0.ts_ms),
        ("d1", 7)
    );
    assert!(s.dead_letters.is_empty());
    assert!(
        command_rx.try_recv().is_err(),
        "nothing is acked before the commit"
    );
    assert_eq!(ledger.owed(), 1, "owed from the moment it is built");
    (s.ack.expect("QoS 1 owes an ack"))();
    assert!(matches!(command_rx.try_recv(), Ok(Command::Ack(Publish::V311(p))) if p.pkid == 9));
    assert_eq!((ledger.owed(), ledger.ran()), (0, 1));
}

#[test]
fn unparsable_or_unmappable_messages_become_dead_letters_with_an_ack() {
    let config = config(CONFIG);
    let (task, _rx) = task(&config);
    let (commands, _command_rx) = mpsc::unbounded_channel();
    let ledger = Arc::new(AckLedger::default());
    for (topic, body, reason) in [
        ("s/d1/v", "{oops", "not JSON"),
        ("s/d1/v", r#"{"v":500,"ts":1}"#, "outside"),
        ("elsewhere", r#"{"v":1,"ts":1}"#, "no [[sensor]] rule"),
    ] {
        let s = task.submission(
            publish(topic, QoS::AtLeastOnce, body),
            Dedupe::SensorTs,
            &commands,
            &ledger,
        );
        assert!(s.readings.is_empty(), "{body}");
        assert_eq!(s.dead_letters.len(), 1);
        assert!(
            s.dead_letters[0].reason.contains(reason),
            "{}",
            s.dead_letters[0].reason
        );
        assert_eq!(s.dead_letters[0].payload, body.as_bytes());
        assert!(
            s.ack.is_some(),
            "a bad message is acked once its dead letter is durable"
        );
    }
}

#[test]
fn qos0_messages_owe_no_ack() {
    let config = config(CONFIG);
    let (task, _rx) = task(&config);
    let (commands, _c) = mpsc::unbounded_channel();
    let ledger = Arc::new(AckLedger::default());
    let s = task.submission(
        publish("s/d1/v", QoS::AtMostOnce, r#"{"v":5,"ts":7}"#),
        Dedupe::SensorTs,
        &commands,
        &ledger,
    );
    assert!(s.ack.is_none());
    assert_eq!(ledger.owed(), 0);
}

#[test]
fn options_ask_for_a_persistent_session_and_manual_acks() {
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
            "",
        )
        .replace("mqtts://", "mqtt://");
    let settings = || MqttSourceTask::settings(&config(&text).mqtt[0], 1024).unwrap();
    let options = session::options_v311(settings());
    assert!(!options.clean_session());
    assert!(options.manual_acks());
    assert_eq!(
        options.broker_address(),
        ("broker.example".to_owned(), 8884)
    );
    assert_eq!(
        options.credentials().map(|l| l.username),
        Some("edge".to_owned())
    );
}

#[test]
fn mqtt5_options_keep_the_session_for_its_expiry_and_ack_manually() {
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
            "version = 5\n",
        )
        .replace("mqtts://", "mqtt://");
    let options =
        session::options_v5(MqttSourceTask::settings(&config(&text).mqtt[0], 1024).unwrap());
    assert!(!options.clean_start());
    assert!(options.manual_acks());
    assert_eq!(
        options.session_expiry_interval(),
        Some(SESSION_EXPIRY_DEFAULT_S),
        "a persistent MQTT 5 session must outlive the connection"
    );
    assert_eq!(options.max_packet_size(), Some(2 * 1024 + 65_536));
    assert_eq!(
        options.credentials().map(|l| l.username),
        Some("edge".to_owned())
    );

    let set = text.replace("version = 5\n", "version = 5\nsession_expiry_s = 3600\n");
    let options =
        session::options_v5(MqttSourceTask::settings(&config(&set).mqtt[0], 1024).unwrap());
    assert_eq!(options.session_expiry_interval(), Some(3600));

    let clean = text.replace("version = 5\n", "version = 5\npersistent_session = false\n");
    let options =
        session::options_v5(MqttSourceTask::settings(&config(&clean).mqtt[0], 1024).unwrap());
    assert!(options.clean_start());
    assert_eq!(options.session_expiry_interval(), Some(0));
}

fn publish5(topic: &str, body: &str, properties: &[(&str, &str)]) -> Publish {
    use rumqttc::v5::mqttbytes::v5::{Publish as P5, PublishProperties};
    let props = PublishProperties {
        user_properties: properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..PublishProperties::default()
    };
    let mut p = P5::new(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        body.as_bytes().to_vec(),
        Some(props),
    );
    p.pkid = 3;
    Publish::V5(Box::new(p))
}

#[test]
fn listed_mqtt5_user_properties_fill_the_id_template_and_a_missing_one_is_a_dead_letter() {
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
            "version = 5\nuser_properties = [\"site\", \"line\"]\n",
        )
        .replace("id = \"{dev}\"", "id = \"{site}.{line}.{dev}\"");
    let config = config(&text);
    let (task, _rx) = task(&config);
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let ledger = Arc::new(AckLedger::default());
    let body = r#"{"v":5,"ts":7}"#;
    // A property sent twice counts once (the first); unlisted ones are ignored.
    let props = [
        ("line", "l2"),
        ("site", "north"),
        ("line", "l9"),
        ("other", "x"),
    ];
    let s = task.submission(
        publish5("s/d1/v", body, &props),
        Dedupe::SensorTs,
        &commands,
        &ledger,
    );
    assert!(s.dead_letters.is_empty(), "{:?}", s.dead_letters);
    assert_eq!(s.readings[0].0.sensor, "north.l2.d1");
    (s.ack.expect("QoS 1 owes an ack"))();
    assert!(matches!(command_rx.try_recv(), Ok(Command::Ack(Publish::V5(p))) if p.pkid == 3));

    let s = task.submission(
        publish5("s/d1/v", body, &[("site", "north")]),
        Dedupe::SensorTs,
        &commands,
        &ledger,
    );
    assert!(s.readings.is_empty());
    assert!(
        s.dead_letters[0].reason.contains("line"),
        "{}",
        s.dead_letters[0].reason
    );
    assert!(s.ack.is_some(), "acked once the dead letter is durable");
}

#[test]
fn an_mqtt5_topic_that_is_not_utf8_is_a_dead_letter() {
    use rumqttc::v5::mqttbytes::v5::Publish as P5;
    let config = config(&CONFIG.replace(
        "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
        "version = 5\n",
    ));
    let (task, _rx) = task(&config);
    let (commands, _c) = mpsc::unbounded_channel();
    let ledger = Arc::new(AckLedger::default());
    let mut p = P5::new(
        "s/x/v",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        b"1".to_vec(),
        None,
    );
    p.topic = vec![b's', b'/', 0xff, b'/', b'v'].into();
    let s = task.submission(
        Publish::V5(Box::new(p)),
        Dedupe::SensorTs,
        &commands,
        &ledger,
    );
    assert!(s.readings.is_empty());
    assert!(
        s.dead_letters[0].reason.contains("UTF-8"),
        "{}",
        s.dead_letters[0].reason
    );
}

#[test]
fn a_missing_password_variable_or_ca_file_is_a_start_error_naming_it() {
    let err = MqttSourceTask::settings(&config(CONFIG).mqtt[0], 1024)
        .err()
        .expect("a start error");
    assert!(
        err.to_string()
            .contains("EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a"),
        "{err}"
    );
    let text = CONFIG.replace(
        "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"",
        "ca_file = \"/nonexistent/ca.pem\"",
    );
    let err = MqttSourceTask::settings(&config(&text).mqtt[0], 1024)
        .err()
        .expect("a start error");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// `CONFIG` over plain MQTT with its password in `pw` (`s3cret` and a newline) of `mode`.
fn with_password_file(dir: &tempfile::TempDir, mode: u32) -> (std::path::PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"",
            &format!("password_file = {:?}", file.display().to_string()),
        )
        .replace("mqtts://", "mqtt://");
    (file, text)
}

#[test]
fn a_password_file_loses_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = with_password_file(&dir, 0o600);
    let settings = MqttSourceTask::settings(&config(&text).mqtt[0], 1024).unwrap();
    let login = session::options_v311(settings)
        .credentials()
        .expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("edge", "s3cret")
    );
}

/// The Kafka password file and the key files were refused when every user could read them; the
/// MQTT `password_file` was read whatever its mode.
#[test]
fn a_password_file_every_user_may_read_is_a_start_error_naming_it_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (file, text) = with_password_file(&dir, 0o644);
    let err = MqttSourceTask::settings(&config(&text).mqtt[0], 1024)
        .err()
        .expect("a start error");
    assert!(matches!(err, MqttError::Secret { .. }), "{err:?}");
    let name = config(&text).mqtt[0].name.get_ref().clone();
    assert_eq!(
        err.to_string(),
        format!(
            "source `{name}`: password_file `{}` is readable by every user (mode 644): \
             `chmod o-r` it (0600, or 0640 with the service's group)",
            file.display()
        )
    );
}

/// A scripted MQTT 3.1.1 broker on loopback for one connection: answers CONNECT (session
/// present) and SUBSCRIBE, then sends QoS 1 publishes numbered from 1 when told, reports every
/// PUBACK and the DISCONNECT it reads, and closes the connection after a DISCONNECT, as
/// Mosquitto does.
mod fake_broker {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Seen {
        PubAck(u16),
        Disconnect,
    }

    pub struct Broker {
        pub port: u16,
        /// How many more publishes to send.
        pub send: mpsc::UnboundedSender<u16>,
        pub seen: mpsc::UnboundedReceiver<Seen>,
    }

    async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let header = stream.read_u8().await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = stream.read_u8().await.ok()?;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.ok()?;
        Some((header, body))
    }

    fn packet(header: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![header];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn publish(pkid: u16) -> Vec<u8> {
        let topic = b"s/d1/v";
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(format!(r#"{{"v":1,"ts":{pkid}}}"#).as_bytes());
        packet(0x32, &body)
    }

    pub async fn start() -> Broker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (send, mut to_send) = mpsc::unbounded_channel::<u16>();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (mut stream, mut next_pkid, mut subscribed) = (stream, 1u16, false);
            loop {
                tokio::select! {
                    n = to_send.recv(), if subscribed => {
                        for _ in 0..n.unwrap_or(0) {
                            stream.write_all(&publish(next_pkid)).await.expect("write");
                            next_pkid += 1;
                        }
                    }
                    p = read_packet(&mut stream) => match p {
                        None => return,
                        Some((header, body)) => match header >> 4 {
                            1 => stream.write_all(&packet(0x20, &[1, 0])).await.expect("connack"),
                            8 => {
                                let reply = [body[0], body[1], 1];
                                stream.write_all(&packet(0x90, &reply)).await.expect("suback");
                                subscribed = true;
                            }
                            4 => {
                                let pkid = u16::from_be_bytes([body[0], body[1]]);
                                let _ = seen_tx.send(Seen::PubAck(pkid));
                            }
                            14 => {
                                let _ = seen_tx.send(Seen::Disconnect);
                                return; // closes the connection, as Mosquitto does
                            }
                            _ => {} // PINGREQ and the like
                        },
                    },
                }
            }
        });
        Broker { port, send, seen }
    }
}

fn plain_config(port: u16) -> Config {
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
            "",
        )
        .replace("username = \"edge\"\n", "")
        .replace(
            "mqtts://broker.example:8884",
            &format!("mqtt://127.0.0.1:{port}"),
        );
    config(&text)
}

async fn next_seen(broker: &mut fake_broker::Broker) -> fake_broker::Seen {
    tokio::time::timeout(Duration::from_secs(5), broker.seen.recv())
        .await
        .expect("the broker saw something within 5 s")
        .expect("broker running")
}

/// The next `n` submissions of messages (the subscriptions record written after the SUBACK is
/// no message: skipped).
async fn submissions(rx: &mut mpsc::Receiver<Submission>, n: usize) -> Vec<Submission> {
    let mut out = Vec::new();
    while out.len() < n {
        let s = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("submitted within 5 s")
            .expect("source running");
        if s.readings.is_empty() && s.dead_letters.is_empty() && !s.state.is_empty() {
            continue;
        }
        out.push(s);
    }
    out
}

/// Regression: a stop used to drop the event loop at once, so the acks of the writer's last
/// commit (which completes just after the cancellation) never reached the broker, and it
/// redelivered those committed messages to the next session (doubled after a mapping change).
#[tokio::test]
async fn a_stop_flushes_the_acks_of_commits_that_finish_after_it_then_disconnects() {
    let mut broker = fake_broker::start().await;
    let config = plain_config(broker.port);
    let (task, mut rx) = task(&config);
    let cancel = task.cancel.clone();
    let source = tokio::spawn(task.run());
    broker.send.send(6).unwrap();
    let mut subs = submissions(&mut rx, 6).await;

    // Committed while running: acked at once.
    for s in subs.drain(..3) {
        (s.ack.expect("QoS 1"))();
    }
    for pkid in 1..=3 {
        assert_eq!(
            next_seen(&mut broker).await,
            fake_broker::Seen::PubAck(pkid)
        );
    }

    // The stop begins with 4 and 5 in the writer's last commit and 6 not committed.
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.send.send(1).unwrap(); // 7 arrives during the stop: never submitted, never acked
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        broker.seen.try_recv().is_err(),
        "no DISCONNECT while acks are owed"
    );
    assert!(!source.is_finished(), "the source waits for the commit");
    let uncommitted = subs.pop().expect("6");
    for s in subs {
        (s.ack.expect("QoS 1"))();
    }
    drop(uncommitted);

    assert_eq!(next_seen(&mut broker).await, fake_broker::Seen::PubAck(4));
    assert_eq!(next_seen(&mut broker).await, fake_broker::Seen::PubAck(5));
    assert_eq!(next_seen(&mut broker).await, fake_broker::Seen::Disconnect);
    tokio::time::timeout(Duration::from_millis(500), source)
        .await
        .expect("the source ends when the broker closes, not at a timeout")
        .expect("task")
        .expect("started");
    assert!(rx.try_recv().is_err(), "nothing submitted after the stop");
}

#[tokio::test]
async fn a_stop_whose_commit_never_finishes_gives_up_at_its_deadline_without_disconnect() {
    let mut broker = fake_broker::start().await;
    let config = plain_config(broker.port);
    let settings = MqttSourceTask::settings(&config.mqtt[0], 1024).expect("settings");
    let (client, mut eventloop) = session::connect(Version::V311, settings, 16);
    loop {
        if let Event::ConnAck { .. } = eventloop.poll().await.expect("connects") {
            break;
        }
    }
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        while let Some(c) = command_rx.recv().await {
            if let Command::Disconnect = c {
                let _ = client.disconnect().await;
            }
        }
    });
    let ledger = Arc::new(AckLedger::default());
    let _stuck = ledger.owe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let report =
        stop::flush_and_disconnect(&mut eventloop, &commands, &ledger, true, deadline).await;
    assert_eq!(report.outcome, stop::Outcome::TimedOut);
    assert!(!report.acks_confirmed());
    assert_eq!(report.owed, 1);
    assert!(report.elapsed >= Duration::from_millis(300));
    drop(eventloop);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), broker.seen.recv())
            .await
            .expect("the broker sees the connection end"),
        None,
        "the connection ends without DISCONNECT"
    );
    acker.abort();
}
