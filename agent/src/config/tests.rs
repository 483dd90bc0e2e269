use std::path::Path;

use super::fixtures::{self, MINIMAL};
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("agent.toml"), text)
}

/// The refusal message of `text`, after checking it mentions every one of `words`.
fn message_mentions(text: &str, words: &[&str]) -> String {
    let message = error_of(text).to_string();
    for word in words {
        assert!(message.contains(word), "{word}: {message}");
    }
    message
}

fn error_of(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("accepted a bad configuration:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn the_example_configuration_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.example.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.mqtt.is_empty() && !config.serial.is_empty());
    assert!(!config.sensor.is_empty() && !config.pipeline.is_empty());
}

#[test]
fn a_minimal_configuration_gets_the_documented_defaults() {
    let config = fixtures::minimal();
    assert_eq!(config.buffer.on_full, OnFull::Backpressure);
    assert_eq!(*config.buffer.quota_bytes.get_ref(), 256 * 1024 * 1024);
    assert!(config.mqtt[0].persistent_session);
    assert_eq!(config.mqtt[0].idempotency, Idempotency::SensorTs);
    assert_eq!(*config.mqtt[0].subscribe[0].qos.get_ref(), 1);
}

#[test]
fn an_unknown_key_is_refused_with_its_line_field_and_the_allowed_keys() {
    let text = MINIMAL.replace(
        "data_dir = \"/tmp/edge\"",
        "data_dir = \"/tmp/edge\"\ndata_dri = 1",
    );
    let error = error_of(&text);
    let at = error.location().expect("has a place");
    assert_eq!(at.line, 5);
    assert_eq!(at.key.as_deref(), Some("data_dri"));
    let message = error.to_string();
    assert!(message.starts_with("agent.toml:5:"), "{message}");
    assert!(
        message.contains("data_dri") && message.contains("data_dir"),
        "{message}"
    );
}

#[test]
fn a_wrong_type_names_the_line_and_the_field() {
    let text = MINIMAL.replace("qos = 1", "qos = \"one\"");
    let error = error_of(&text);
    let at = error.location().expect("has a place");
    assert_eq!(at.line, 11);
    assert_eq!(at.key.as_deref(), Some("subscribe"));
    assert!(error.to_string().contains("agent.toml:11:"), "{error}");
}

#[test]
fn an_unknown_on_full_policy_lists_the_allowed_ones() {
    let text = format!("{MINIMAL}\n[buffer]\non_full = \"drop_newest\"\n");
    message_mentions(&text, &["backpressure", "drop_oldest", "field `on_full`"]);
}

#[test]
fn an_undefined_placeholder_is_refused_with_the_allowed_names() {
    let text = MINIMAL.replace(
        "id = \"{site}.{device}.temp\"",
        "id = \"{site}.{room}.temp\"",
    );
    let error = error_of(&text);
    let ConfigError::Invalid { at, problem, .. } = &error else {
        panic!("wrong error: {error}");
    };
    match &**problem {
        Invalid::UnknownPlaceholder { name, allowed } => {
            assert_eq!(at.line, 16);
            assert_eq!(at.key.as_deref(), Some("id"));
            assert_eq!(name, "room");
            assert!(allowed.contains(&"site".to_owned()) && allowed.contains(&"device".to_owned()));
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn a_mapping_to_an_unknown_source_names_the_defined_sources() {
    let text = MINIMAL.replace("source = \"broker\"", "source = \"brokr\"");
    message_mentions(&text, &["brokr", "\"broker\"", "agent.toml:14:"]);
}

#[test]
fn an_empty_range_is_refused_at_max() {
    let text = MINIMAL.replace("max = 125.0", "max = -50.0");
    let error = error_of(&text);
    assert!(matches!(error.problem(), Some(Invalid::EmptyRange { .. })));
    assert_eq!(error.location().map(|l| l.line), Some(18));
}

#[test]
fn bad_urls_qos_and_topic_filters_are_refused() {
    for (from, to, expect) in [
        ("mqtt://127.0.0.1:1883", "http://x", "url"),
        ("mqtt://127.0.0.1:1883", "mqtt://h:99999", "url"),
        ("qos = 1", "qos = 3", "qos"),
        ("plant/+/+/temp\"", "plant/#/temp\"", "topic"),
        (
            "plant/{site}/{device}/temp",
            "plant/{site}/{site}/temp",
            "topic",
        ),
    ] {
        message_mentions(&MINIMAL.replace(from, to), &[expect]);
    }
}

#[test]
fn a_window_must_be_a_table() {
    let text =
        format!("{MINIMAL}\n[[pipeline]]\nname = \"p\"\nsensors = [\"*\"]\nwindow = \"10s\"\n");
    message_mentions(&text, &["window"]);
}

#[test]
fn duplicate_source_names_are_refused() {
    let text = format!(
        "{MINIMAL}\n[[serial]]\nname = \"broker\"\npath = \"/dev/ttyUSB0\"\nframing = \"link\"\n"
    );
    assert!(matches!(
        error_of(&text).problem(),
        Some(Invalid::DuplicateSource { .. })
    ));
}

#[test]
fn a_serial_mapping_may_use_device_and_channel_but_not_topic() {
    let serial = "\n[[serial]]\nname = \"rs485\"\npath = \"/dev/ttyUSB0\"\nframing = \"link\"\n";
    let good = format!(
        "{MINIMAL}{serial}\n[[sensor]]\nsource = \"rs485\"\nid = \"dev{{device}}.ch{{channel}}\"\n"
    );
    parse(&good).unwrap_or_else(|e| panic!("{e}"));
    let bad =
        format!("{MINIMAL}{serial}\n[[sensor]]\nsource = \"rs485\"\ntopic = \"a/b\"\nid = \"x\"\n");
    assert!(matches!(
        error_of(&bad).problem(),
        Some(Invalid::WrongSourceKind { .. })
    ));
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_file() {
    let error = Config::load(Path::new("/nonexistent/agent.toml")).expect_err("fails");
    assert!(error.to_string().contains("/nonexistent/agent.toml"));
    assert!(error.location().is_none());
}
