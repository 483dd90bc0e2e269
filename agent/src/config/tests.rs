use std::path::Path;
use std::time::Duration;

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
fn the_periodic_time_sync_defaults_to_ten_minutes_on_link_lines_and_is_checked() {
    let serial = |framing: &str, extra: &str| {
        format!("{MINIMAL}\n[[serial]]\nname = \"rs485\"\npath = \"/dev/ttyUSB0\"\nframing = \"{framing}\"\n{extra}")
    };
    let interval =
        |text: &str| parse(text).unwrap_or_else(|e| panic!("{e}")).serial[0].time_sync_interval();
    assert_eq!(
        interval(&serial("link", "")),
        Some(Duration::from_secs(600))
    );
    assert_eq!(
        interval(&serial("link", "time_sync_interval_s = 2\n")),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        interval(&serial("link", "time_sync_interval_s = 0\n")),
        None,
        "0 turns it off"
    );
    assert_eq!(
        interval(&serial("line", "")),
        None,
        "text lines have no TimeSync"
    );
    for (framing, value) in [("line", "60"), ("link", "86401")] {
        let text = serial(framing, &format!("time_sync_interval_s = {value}\n"));
        let error = error_of(&text);
        assert!(
            matches!(
                error.problem(),
                Some(Invalid::BadSerial {
                    field: "time_sync_interval_s",
                    ..
                })
            ),
            "{error}"
        );
        let line = text
            .lines()
            .position(|l| l.starts_with("time_sync"))
            .map(|i| i + 1);
        assert_eq!(error.location().map(|l| l.line), line, "{error}");
    }
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_file() {
    let error = Config::load(Path::new("/nonexistent/agent.toml")).expect_err("fails");
    assert!(error.to_string().contains("/nonexistent/agent.toml"));
    assert!(error.location().is_none());
}

/// A Modbus TCP device with a holding block and a coil block. Tests replace within a line.
const MODBUS: &str = r#"[agent]
id = "gw"
data_dir = "/unused"

[[modbus]]
name = "plc"
tcp = "127.0.0.1:502"

[[modbus.block]]
kind = "holding"
address = 100
count = 4

[[modbus.block.register]]
name = "temp"
address = 100
type = "f32"

[[modbus.block]]
kind = "coils"
address = 0
count = 8

[[modbus.block.register]]
name = "pump"
address = 7
type = "bool"

[[sensor]]
source = "plc"
register = "temp"
id = "plc.{register}"
"#;

/// The refusal of `text`: its problem, line and field.
fn modbus_refusal(text: &str) -> (Invalid, usize, Option<String>) {
    let error = error_of(text);
    let at = error.location().expect("has a place").clone();
    let problem = error
        .problem()
        .unwrap_or_else(|| panic!("not a broken rule: {error}"))
        .clone();
    assert!(
        error
            .to_string()
            .starts_with(&format!("agent.toml:{}:", at.line)),
        "{error}"
    );
    (problem, at.line, at.key)
}

#[test]
fn a_modbus_device_parses_with_its_defaults() {
    let config = parse(MODBUS).unwrap_or_else(|e| panic!("{e}"));
    let plc = &config.modbus[0];
    assert_eq!(*plc.unit.get_ref(), 1);
    assert_eq!(*plc.timeout_ms.get_ref(), 1000);
    assert_eq!(*plc.block[0].period_ms.get_ref(), 1000);
    assert_eq!(plc.block[0].register[0].word_order, modbus::Order::Big);
    assert_eq!(
        plc.transport(),
        modbus::ModbusTransport::Tcp("127.0.0.1:502".into())
    );
    assert!(config.source_names().any(|n| n == "plc"));
    let rtu = MODBUS.replace(
        "tcp = \"127.0.0.1:502\"",
        "serial = \"/dev/ttyUSB0\"\nbaud = 9600\nparity = \"none\"\nstop_bits = 2",
    );
    let config = parse(&rtu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.modbus[0].transport(),
        modbus::ModbusTransport::Rtu {
            path: "/dev/ttyUSB0".into(),
            baud: 9600,
            parity: modbus::Parity::None,
            stop_bits: 2
        }
    );
}

#[test]
fn a_modbus_device_needs_exactly_one_of_tcp_and_serial() {
    let both = MODBUS.replace(
        "tcp = \"127.0.0.1:502\"",
        "tcp = \"127.0.0.1:502\"\nserial = \"/dev/ttyUSB0\"",
    );
    assert_eq!(
        modbus_refusal(&both),
        (Invalid::ModbusTransport, 8, Some("serial".into()))
    );
    let neither = MODBUS.replace("tcp = \"127.0.0.1:502\"", "");
    assert_eq!(
        modbus_refusal(&neither),
        (Invalid::ModbusTransport, 6, Some("name".into()))
    );
    let (problem, line, _) = modbus_refusal(&MODBUS.replace("127.0.0.1:502", "127.0.0.1"));
    assert_eq!((problem, line), (Invalid::BadModbusAddress, 7));
    let (problem, line, key) =
        modbus_refusal(&MODBUS.replace("tcp = \"127.0.0.1:502\"", "tcp = \"h:1\"\nbaud = 9600"));
    assert_eq!(
        (problem, line, key.as_deref()),
        (Invalid::RtuOnly { field: "baud" }, 8, Some("baud"))
    );
    let bad_stop = MODBUS.replace(
        "tcp = \"127.0.0.1:502\"",
        "serial = \"/dev/ttyUSB0\"\nstop_bits = 3",
    );
    assert_eq!(
        modbus_refusal(&bad_stop).0,
        Invalid::BadStopBits { stop_bits: 3 }
    );
}

#[test]
fn a_register_type_that_does_not_fit_its_block_is_refused_at_type() {
    let (problem, line, key) = modbus_refusal(&MODBUS.replace("type = \"bool\"", "type = \"u16\""));
    assert!(
        matches!(
            problem,
            Invalid::BadRegisterType {
                data_type: "u16",
                kind: "coils",
                ..
            }
        ),
        "{problem}"
    );
    assert_eq!((line, key.as_deref()), (27, Some("type")));
    let (problem, line, _) = modbus_refusal(&MODBUS.replace("type = \"f32\"", "type = \"bool\""));
    assert!(matches!(
        problem,
        Invalid::BadRegisterType {
            kind: "holding",
            ..
        }
    ));
    assert_eq!(line, 17);
}

#[test]
fn an_unknown_data_type_is_refused_with_the_allowed_ones() {
    let text = MODBUS.replace("type = \"f32\"", "type = \"float\"");
    let error = error_of(&text);
    assert_eq!(error.location().map(|l| l.line), Some(17));
    let message = error.to_string();
    for word in ["float", "u16", "i32", "f64", "bool"] {
        assert!(message.contains(word), "{word}: {message}");
    }
}

#[test]
fn a_register_outside_its_block_is_refused_at_its_address() {
    // An f32 at the block's last register would need one past it.
    let (problem, line, key) =
        modbus_refusal(&MODBUS.replace("address = 100\ntype", "address = 103\ntype"));
    assert_eq!(
        problem,
        Invalid::RegisterOutsideBlock {
            name: "temp".into(),
            width: 2,
            first: 100,
            last: 103
        }
    );
    assert_eq!((line, key.as_deref()), (16, Some("address")));
    let before = MODBUS.replace("address = 100\ntype", "address = 99\ntype");
    assert!(matches!(
        modbus_refusal(&before).0,
        Invalid::RegisterOutsideBlock { .. }
    ));
    let coil = MODBUS.replace("address = 7", "address = 8");
    assert_eq!(modbus_refusal(&coil).1, 26);
}

#[test]
fn overlapping_blocks_of_one_kind_are_refused_and_of_two_kinds_accepted() {
    let second = "\n[[modbus.block]]\nkind = \"holding\"\naddress = 103\ncount = 2\n\n\
                  [[modbus.block.register]]\nname = \"x\"\naddress = 104\ntype = \"u16\"\n";
    let text = MODBUS.replace("\n[[sensor]]", &format!("{second}\n[[sensor]]"));
    let (problem, line, key) = modbus_refusal(&text);
    assert_eq!(
        problem,
        Invalid::OverlappingBlocks {
            kind: "holding",
            address: 100,
            count: 4
        }
    );
    assert_eq!((line, key.as_deref()), (31, Some("address")));
    let input = text.replace(
        "kind = \"holding\"\naddress = 103",
        "kind = \"input\"\naddress = 103",
    );
    parse(&input).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn block_sizes_periods_and_register_names_are_checked() {
    let (problem, line, _) = modbus_refusal(&MODBUS.replace("count = 4", "count = 126"));
    assert_eq!(
        (problem, line),
        (
            Invalid::BlockTooLarge {
                kind: "holding",
                most: 125
            },
            12
        )
    );
    let (problem, _, _) = modbus_refusal(&MODBUS.replace("count = 4", "count = 0"));
    assert!(matches!(problem, Invalid::TooSmall { field: "count", .. }));
    let (problem, _, _) =
        modbus_refusal(&MODBUS.replace("address = 0\ncount = 8", "address = 65530\ncount = 8"));
    assert_eq!(problem, Invalid::BlockPastAddressSpace);
    let (problem, _, _) = modbus_refusal(&MODBUS.replace("count = 4", "count = 4\nperiod_ms = 5"));
    assert!(matches!(
        problem,
        Invalid::TooSmall {
            field: "period_ms",
            ..
        }
    ));
    let (problem, line, _) = modbus_refusal(&MODBUS.replace("name = \"pump\"", "name = \"temp\""));
    assert_eq!(
        (problem, line),
        (
            Invalid::DuplicateRegister {
                name: "temp".into()
            },
            25
        )
    );
}

#[test]
fn a_modbus_sensor_rule_names_an_existing_register_and_only_modbus_placeholders() {
    let (problem, line, key) =
        modbus_refusal(&MODBUS.replace("register = \"temp\"", "register = \"tmp\""));
    assert!(
        matches!(problem, Invalid::UnknownRegister { ref name, .. } if name == "tmp"),
        "{problem}"
    );
    assert_eq!((line, key.as_deref()), (31, Some("register")));
    let (problem, _, _) = modbus_refusal(&MODBUS.replace("plc.{register}", "plc.{channel}"));
    assert!(matches!(problem, Invalid::UnknownPlaceholder { .. }));
    let (problem, _, _) = modbus_refusal(&MODBUS.replace(
        "register = \"temp\"",
        "register = \"temp\"\ntopic = \"a/b\"",
    ));
    assert!(matches!(
        problem,
        Invalid::WrongSourceKind { field: "topic", .. }
    ));
    let (problem, _, _) =
        modbus_refusal(&MODBUS.replace("register = \"temp\"", "register = \"temp\"\ndevice = 1"));
    assert!(
        matches!(
            problem,
            Invalid::WrongSourceKind {
                field: "device/channel",
                kind: "serial",
                actual: "Modbus",
                ..
            }
        ),
        "{problem}"
    );
    // `register` on an MQTT rule.
    let mqtt = MINIMAL.replace("min = -40.0", "register = \"temp\"\nmin = -40.0");
    assert!(matches!(
        error_of(&mqtt).problem(),
        Some(Invalid::WrongSourceKind {
            field: "register",
            ..
        })
    ));
}

#[test]
fn modbus_source_names_join_the_unique_source_names() {
    let text = format!(
        "{MODBUS}\n[[serial]]\nname = \"plc\"\npath = \"/dev/ttyUSB1\"\nframing = \"line\"\n"
    );
    assert!(matches!(
        error_of(&text).problem(),
        Some(Invalid::DuplicateSource { .. })
    ));
}

#[test]
fn a_modbus_device_on_a_serial_port_another_source_uses_is_refused() {
    let rtu = MODBUS.replace("tcp = \"127.0.0.1:502\"", "serial = \"/dev/ttyUSB0\"");
    let text = format!(
        "{rtu}\n[[serial]]\nname = \"line\"\npath = \"/dev/ttyUSB0\"\nframing = \"line\"\n"
    );
    let (problem, line, key) = modbus_refusal(&text);
    assert_eq!(
        (problem, line, key.as_deref()),
        (
            Invalid::SharedSerialPort {
                path: "/dev/ttyUSB0".into()
            },
            7,
            Some("serial")
        )
    );
    parse(&text.replace("path = \"/dev/ttyUSB0\"", "path = \"/dev/ttyUSB1\""))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn mqtt5_keys_need_version_5_and_user_properties_become_placeholders() {
    let v5 = |extra: &str| {
        MINIMAL.replace(
            "client_id = \"agent-gw-1\"",
            &format!("client_id = \"agent-gw-1\"\n{extra}"),
        )
    };
    let config =
        parse(&v5("version = 5\nuser_properties = [\"line\"]")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(*config.mqtt[0].version.get_ref(), 5);
    assert_eq!(
        *fixtures::minimal().mqtt[0].version.get_ref(),
        3,
        "3.1.1 by default"
    );
    let uses_line = v5("version = 5\nuser_properties = [\"line\"]").replace(
        "id = \"{site}.{device}.temp\"",
        "id = \"{site}.{line}.{device}\"",
    );
    parse(&uses_line).unwrap_or_else(|e| panic!("{e}"));
    // Without the property listed, `{line}` is unknown.
    message_mentions(
        &uses_line.replace("user_properties = [\"line\"]", ""),
        &["`{line}`", "allowed"],
    );
    for (extra, expect) in [
        ("version = 4", "`version` must be 3 (MQTT 3.1.1) or 5"),
        (
            "session_expiry_s = 60",
            "`session_expiry_s` is an MQTT 5 feature",
        ),
        (
            "user_properties = [\"line\"]",
            "`user_properties` is an MQTT 5 feature",
        ),
        (
            "version = 5\nuser_properties = [\"a-b\"]",
            "user property `a-b`",
        ),
        ("version = 5\nuser_properties = [\"payload\"]", "reserved"),
        (
            "version = 5\nuser_properties = [\"x\", \"x\"]",
            "listed twice",
        ),
        (
            "version = 5\nuser_properties = [\"site\"]",
            "also a user property",
        ),
    ] {
        let message = message_mentions(&v5(extra), &[expect]);
        assert!(message.contains("agent.toml:"), "{message}");
    }
}

#[test]
fn a_sparkplug_payload_with_a_json_pointer_is_refused_at_that_pointer() {
    let text = MINIMAL.replace(
        "payload = { format = \"json\", value = \"/v\", timestamp = \"/ts\" }",
        "payload = { format = \"sparkplug_b\", value = \"/v\" }",
    );
    let message = message_mentions(&text, &["payload.value", "sparkplug_b", "JSON pointer"]);
    assert!(message.starts_with("agent.toml:"), "{message}");
    let ok = MINIMAL.replace(
        "payload = { format = \"json\", value = \"/v\", timestamp = \"/ts\" }",
        "payload = { format = \"sparkplug_b\" }",
    );
    assert_eq!(
        parse(&ok).unwrap_or_else(|e| panic!("{e}")).mqtt[0]
            .payload
            .format,
        PayloadFormat::SparkplugB
    );
}
