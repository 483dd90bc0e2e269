use proptest::prelude::*;

use super::*;
use crate::config::fixtures;

fn raw(value: f64) -> RawReading {
    RawReading {
        sensor: None,
        ts_ms: Some(1_000),
        value,
        seq: None,
    }
}

/// [`raw`] from the payload's sensor `temp`.
fn temp(value: f64) -> RawReading {
    RawReading {
        sensor: Some("temp".into()),
        ..raw(value)
    }
}

#[test]
fn topic_patterns_capture_named_levels_and_honour_wildcards() {
    let p = TopicPattern::parse("plant/{site}/+/{dev}/#").unwrap();
    assert_eq!(
        p.matches("plant/a/x/d1/t/u"),
        Some(vec![("site", "a"), ("dev", "d1")])
    );
    assert_eq!(
        p.matches("plant/a/x/d1"),
        Some(vec![("site", "a"), ("dev", "d1")])
    );
    assert_eq!(p.matches("plant/a/x"), None);
    assert_eq!(p.matches("other/a/x/d1"), None);
    let exact = TopicPattern::parse("a/{b}").unwrap();
    assert_eq!(exact.matches("a/b/c"), None);
    assert_eq!(exact.matches("a/"), Some(vec![("b", "")]));
}

#[test]
fn malformed_patterns_and_templates_are_refused() {
    for bad in ["", "a/#/b", "a/{b", "a/x{b}", "a/{b}/{b}", "a/b+"] {
        assert!(TopicPattern::parse(bad).is_err(), "{bad}");
    }
    for bad in ["", "{", "}", "a{b", "{a-b}", "{}"] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
    for bad in ["", "a/#/b", "a/b#", "a+/b"] {
        assert!(TopicFilter::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn broker_urls_default_their_ports_by_scheme() {
    assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
    let tls = BrokerUrl::parse("mqtts://h:18831/").unwrap();
    assert!(tls.tls && tls.port == 18831 && tls.host == "h");
    assert!(BrokerUrl::parse("tcp://h").is_err());
    assert!(BrokerUrl::parse("mqtt://:1").is_err());
}

#[test]
fn broker_urls_take_ipv6_literals_in_brackets_with_or_without_a_port() {
    let url = |s: &str| BrokerUrl::parse(s).map(|u| (u.tls, u.host, u.port));
    assert_eq!(url("mqtt://[::1]:1884"), Ok((false, "[::1]".into(), 1884)));
    assert_eq!(url("mqtt://[::1]"), Ok((false, "[::1]".into(), 1883)));
    assert_eq!(
        url("mqtts://[fe80::1]/"),
        Ok((true, "[fe80::1]".into(), 8883))
    );
    for bad in ["mqtt://[::1]:", "mqtt://[::1]:x", "mqtt://[::1]x"] {
        assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
    }
}

/// The set the parser accepted before IPv6 literals, pinned so the bracket rule only adds.
#[test]
fn broker_urls_keep_what_they_accepted_and_refused() {
    let url = |s: &str| BrokerUrl::parse(s).map(|u| (u.tls, u.host, u.port));
    assert_eq!(url("mqtt://h:1"), Ok((false, "h".into(), 1)));
    assert_eq!(url("mqtt://[zz]"), Ok((false, "[zz]".into(), 1883)));
    // Unbracketed colons split at the last one, as they always did (host `:`, `[:`).
    assert_eq!(url("mqtt://::1"), Ok((false, ":".into(), 1)));
    assert_eq!(url("mqtt://[::1"), Ok((false, "[:".into(), 1)));
    for bad in [
        "MQTT://h",
        "mqtt://",
        "mqtt://h:",
        "mqtt://h:99999",
        "mqtt://u@h",
        "mqtt://h/x",
        "mqtt://h//",
        "http://h",
    ] {
        assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn topic_patterns_follow_the_mqtt_edge_cases() {
    let m = |p: &str, t: &str| TopicPattern::parse(p).unwrap().matches(t).is_some();
    // `#` also matches the parent level; `+` matches an empty level.
    assert!(m("a/#", "a") && m("a/#", "a/b/c") && m("#", "a/b"));
    assert!(m("a/+/c", "a//c") && !m("a/+", "a/b/c") && !m("a/+", "a"));
    // A pattern that spells out a `$` level matches it (rumqttc::matches never does); a
    // wildcard-only pattern matches `$` topics too (the broker does not deliver them to one).
    assert!(m("$SYS/{what}", "$SYS/load") && m("+/load", "$SYS/load"));
    assert!(!rumqttc::matches("$SYS/load", "$SYS/+"));
}

proptest! {
    /// `TopicFilter::parse` refuses exactly what rumqttc refuses (and says why).
    #[test]
    fn topic_filters_are_refused_exactly_as_rumqttc_refuses_them(filter in "[a+#/$]{0,8}") {
        prop_assert_eq!(TopicFilter::parse(&filter).is_ok(), rumqttc::valid_filter(&filter));
    }

    /// Without captures and `$` topics, a topic pattern is an MQTT filter: it matches what
    /// rumqttc::matches matches.
    #[test]
    fn plain_patterns_match_as_rumqttc_matches(
        filter in "[ab+#/]{1,7}",
        topic in "[ab/]{0,7}",
    ) {
        prop_assume!(rumqttc::valid_filter(&filter));
        let pattern = TopicPattern::parse(&filter).unwrap();
        prop_assert_eq!(pattern.matches(&topic).is_some(), rumqttc::matches(&topic, &filter));
    }
}

const SECTIONS: &str = r##"
[[mqtt]]
name = "b"
url = "mqtt://h"
client_id = "c"
payload = { format = "json", value = "/v", sensor = "/id" }
subscribe = [{ topic = "#" }]
[[serial]]
name = "s"
path = "/dev/null"
framing = "link"
[[sensor]]
source = "b"
topic = "site/{room}/t"
id = "{room}.{payload}"
scale = 0.1
offset = 1.0
min = 0.0
max = 10.0
[[sensor]]
source = "s"
device = 7
id = "d{device}.c{channel}"
"##;

fn mapper() -> Mapper {
    Mapper::new(&fixtures::config(&fixtures::with_agent(SECTIONS)))
}

#[test]
fn a_topic_maps_to_its_sensor_id_with_calibration() {
    let reading = mapper()
        .map("b", Origin::topic("site/kitchen/t"), &temp(20.0), 5)
        .unwrap();
    assert_eq!(reading.sensor, "kitchen.temp");
    assert_eq!(reading.value, 3.0);
    assert_eq!(reading.ts_ms, 1_000);
}

#[test]
fn values_outside_the_valid_range_are_rejected() {
    let err = mapper()
        .map("b", Origin::topic("site/k/t"), &temp(200.0), 5)
        .unwrap_err();
    assert!(matches!(err, MapError::OutOfRange { value, .. } if value == 21.0));
}

#[test]
fn a_missing_payload_sensor_or_unmatched_topic_is_an_error_not_a_guess() {
    let m = mapper();
    assert_eq!(
        m.map("b", Origin::topic("site/k/t"), &raw(1.0), 5),
        Err(MapError::MissingPlaceholder {
            name: "payload".into()
        })
    );
    assert!(matches!(
        m.map("b", Origin::topic("elsewhere"), &raw(1.0), 5),
        Err(MapError::NoRule { .. })
    ));
}

#[test]
fn serial_channels_map_by_device_and_use_receive_time_when_untimed() {
    let m = mapper();
    let mut r = raw(2.5);
    r.ts_ms = None;
    let reading = m
        .map(
            "s",
            Origin::Device {
                device: 7,
                channel: 3,
            },
            &r,
            99,
        )
        .unwrap();
    assert_eq!((reading.sensor.as_str(), reading.ts_ms), ("d7.c3", 99));
    assert!(m
        .map(
            "s",
            Origin::Device {
                device: 8,
                channel: 3
            },
            &r,
            99
        )
        .is_err());
}

#[test]
fn modbus_registers_map_by_name_first_rule_first_with_the_register_placeholder() {
    let sections = r#"
[[modbus]]
name = "plc"
tcp = "127.0.0.1:502"
[[modbus.block]]
kind = "holding"
address = 0
count = 2
[[modbus.block.register]]
name = "a"
address = 0
type = "u16"
[[modbus.block.register]]
name = "b"
address = 1
type = "u16"

[[sensor]]
source = "plc"
register = "b"
id = "special"
scale = 2.0

[[sensor]]
source = "plc"
id = "{source}.{register}"
"#;
    let m = Mapper::new(&fixtures::config(&fixtures::with_agent(sections)));
    let a = m.map("plc", Origin::Register("a"), &raw(1.0), 5).unwrap();
    let b = m.map("plc", Origin::Register("b"), &raw(1.0), 5).unwrap();
    assert_eq!((a.sensor.as_str(), a.value), ("plc.a", 1.0));
    assert_eq!((b.sensor.as_str(), b.value), ("special", 2.0));
    assert!(matches!(
        m.map("other", Origin::Register("a"), &raw(1.0), 5),
        Err(MapError::NoRule { ref what, .. }) if what == "register a"
    ));
}
