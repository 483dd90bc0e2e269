use std::path::Path;

use super::*;
use crate::config::Config;

fn raw(value: f64) -> RawReading {
    RawReading {
        sensor: None,
        ts_ms: Some(1_000),
        value,
        seq: None,
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
fn templates_render_placeholders_and_name_the_missing_one() {
    let t = Template::parse("x.{a}.{b}").unwrap();
    assert_eq!(t.placeholders().collect::<Vec<_>>(), ["a", "b"]);
    let lookup = |n: &str| (n == "a").then(|| "1".to_owned());
    assert_eq!(t.render(lookup), Err("b"));
    assert_eq!(t.render(|n: &str| Some(n.to_uppercase())).unwrap(), "x.A.B");
}

#[test]
fn globs_match_any_run_for_each_star() {
    let g = Glob::parse("plant.*.temp*").unwrap();
    assert!(g.matches("plant.a.temp"));
    assert!(g.matches("plant.a.b.temp2"));
    assert!(!g.matches("plant.temp"));
    assert!(!g.matches("xplant.a.temp"));
    assert!(Glob::parse("*").unwrap().matches(""));
    assert!(!Glob::parse("ab*ba").unwrap().matches("aba"));
}

#[test]
fn broker_urls_default_their_ports_by_scheme() {
    assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
    let tls = BrokerUrl::parse("mqtts://h:18831/").unwrap();
    assert!(tls.tls && tls.port == 18831 && tls.host == "h");
    assert!(BrokerUrl::parse("tcp://h").is_err());
    assert!(BrokerUrl::parse("mqtt://:1").is_err());
}

const CONFIG: &str = r##"
[agent]
id = "gw"
data_dir = "/tmp/x"
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
    Mapper::new(&Config::from_toml(Path::new("t.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn a_topic_maps_to_its_sensor_id_with_calibration() {
    let mut r = raw(20.0);
    r.sensor = Some("temp".into());
    let reading = mapper()
        .map("b", Origin::Topic("site/kitchen/t"), &r, 5)
        .unwrap();
    assert_eq!(reading.sensor, "kitchen.temp");
    assert_eq!(reading.value, 3.0);
    assert_eq!(reading.ts_ms, 1_000);
}

#[test]
fn values_outside_the_valid_range_are_rejected() {
    let mut r = raw(200.0);
    r.sensor = Some("temp".into());
    let err = mapper()
        .map("b", Origin::Topic("site/k/t"), &r, 5)
        .unwrap_err();
    assert!(matches!(err, MapError::OutOfRange { value, .. } if value == 21.0));
}

#[test]
fn a_missing_payload_sensor_or_unmatched_topic_is_an_error_not_a_guess() {
    let m = mapper();
    assert_eq!(
        m.map("b", Origin::Topic("site/k/t"), &raw(1.0), 5),
        Err(MapError::MissingPlaceholder {
            name: "payload".into()
        })
    );
    assert!(matches!(
        m.map("b", Origin::Topic("elsewhere"), &raw(1.0), 5),
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
