use std::path::Path;

use super::*;
use crate::config::Config;

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

fn config(text: &str) -> Config {
    Config::from_toml(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn task(config: &Config) -> (MqttSourceTask, mpsc::Receiver<Submission>) {
    let (submissions, rx) = mpsc::channel(4);
    let task = MqttSourceTask {
        parser: PayloadParser::new(&config.mqtt[0].payload, 1024),
        config: config.mqtt[0].clone(),
        mapper: Arc::new(Mapper::new(config)),
        max_payload_bytes: 1024,
        submissions,
        counters: Arc::new(SourceCounters::default()),
        cancel: CancellationToken::new(),
    };
    (task, rx)
}

fn publish(topic: &str, qos: QoS, body: &str) -> Publish {
    let mut p = Publish::new(topic, qos, body.as_bytes().to_vec());
    p.pkid = 9;
    p
}

#[test]
fn a_good_message_becomes_a_reading_whose_ack_goes_to_the_acker() {
    let config = config(CONFIG);
    let (task, _rx) = task(&config);
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let s = task.submission(
        publish("s/d1/v", QoS::AtLeastOnce, r#"{"v":5,"ts":7}"#),
        Dedupe::SensorTs,
        &commands,
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
    (s.ack.expect("QoS 1 owes an ack"))();
    assert!(matches!(command_rx.try_recv(), Ok(Command::Ack(p)) if p.pkid == 9));
}

#[test]
fn unparsable_or_unmappable_messages_become_dead_letters_with_an_ack() {
    let config = config(CONFIG);
    let (task, _rx) = task(&config);
    let (commands, _command_rx) = mpsc::unbounded_channel();
    for (topic, body, reason) in [
        ("s/d1/v", "{oops", "not JSON"),
        ("s/d1/v", r#"{"v":500,"ts":1}"#, "outside"),
        ("elsewhere", r#"{"v":1,"ts":1}"#, "no [[sensor]] rule"),
    ] {
        let s = task.submission(
            publish(topic, QoS::AtLeastOnce, body),
            Dedupe::SensorTs,
            &commands,
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
    let s = task.submission(
        publish("s/d1/v", QoS::AtMostOnce, r#"{"v":5,"ts":7}"#),
        Dedupe::SensorTs,
        &commands,
    );
    assert!(s.ack.is_none());
}

#[test]
fn options_ask_for_a_persistent_session_and_manual_acks() {
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"\n",
            "",
        )
        .replace("mqtts://", "mqtt://");
    let options = MqttSourceTask::options(&config(&text).mqtt[0], 1024).unwrap();
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
fn a_missing_password_variable_or_ca_file_is_a_start_error_naming_it() {
    let err = MqttSourceTask::options(&config(CONFIG).mqtt[0], 1024).unwrap_err();
    assert!(
        err.to_string()
            .contains("EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a"),
        "{err}"
    );
    let text = CONFIG.replace(
        "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"",
        "ca_file = \"/nonexistent/ca.pem\"",
    );
    let err = MqttSourceTask::options(&config(&text).mqtt[0], 1024).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn a_password_file_loses_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    let text = CONFIG
        .replace(
            "password_env = \"EDGE_TEST_MQTT_PASSWORD_UNSET_7f3a\"",
            &format!("password_file = {:?}", file.display().to_string()),
        )
        .replace("mqtts://", "mqtt://");
    let options = MqttSourceTask::options(&config(&text).mqtt[0], 1024).unwrap();
    let login = options.credentials().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("edge", "s3cret")
    );
}
