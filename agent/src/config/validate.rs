//! The rules a parsed [`Config`] must keep; see the module doc of [`crate::config`].

use std::collections::HashSet;
use std::ops::Range;

use toml::Spanned;

use super::{Config, Idempotency, Invalid, MqttSource, PayloadFormat};
use crate::mapping::{BrokerUrl, Glob, Template, TopicFilter, TopicPattern};

type Failure = (Range<usize>, Invalid);

fn at<T>(spanned: &Spanned<T>, problem: Invalid) -> Failure {
    (spanned.span(), problem)
}

/// Checks every cross-field rule; the first broken one is returned with its place.
pub fn validate(config: &Config) -> Result<(), Failure> {
    name(&config.agent.id, "agent.id")?;
    let buffer = &config.buffer;
    at_least(&buffer.quota_bytes, "quota_bytes", 4096)?;
    at_least(&buffer.batch_max_readings, "batch_max_readings", 1)?;
    at_least(&buffer.channel_capacity, "channel_capacity", 1)?;
    at_least(&buffer.dedupe_max_entries, "dedupe_max_entries", 1)?;
    at_least(&buffer.max_payload_bytes, "max_payload_bytes", 16)?;

    let mut seen = HashSet::new();
    for source_name in config.source_name_spans() {
        name(source_name, "name")?;
        if !seen.insert(source_name.get_ref().as_str()) {
            return Err(at(
                source_name,
                Invalid::DuplicateSource {
                    name: source_name.get_ref().clone(),
                },
            ));
        }
    }
    config.mqtt.iter().try_for_each(mqtt)?;
    config.modbus.iter().try_for_each(super::validate_modbus)?;
    config.serial.iter().try_for_each(serial)?;
    shared_serial_ports(config)?;
    for mapping in &config.sensor {
        sensor(config, mapping)?;
    }
    let mut pipelines = HashSet::new();
    for pipeline in &config.pipeline {
        name(&pipeline.name, "pipeline.name")?;
        if !pipelines.insert(pipeline.name.get_ref().as_str()) {
            return Err(at(
                &pipeline.name,
                Invalid::DuplicatePipeline {
                    name: pipeline.name.get_ref().clone(),
                },
            ));
        }
        for glob in &pipeline.sensors {
            Glob::parse(glob.get_ref()).map_err(|reason| {
                at(
                    glob,
                    Invalid::BadPattern {
                        field: "sensors",
                        what: "sensor glob",
                        reason,
                    },
                )
            })?;
        }
        if let Some(window) = &pipeline.window {
            super::validate_window(window, &config.agent.id)?;
        }
    }
    if let Some(kafka) = &config.kafka {
        super::validate_kafka(kafka)?;
    }
    Ok(())
}

pub(super) fn name(value: &Spanned<String>, field: &'static str) -> Result<(), Failure> {
    let text = value.get_ref();
    if text.is_empty() {
        return Err(at(value, Invalid::Empty { field }));
    }
    if !text.chars().all(legal_name_char) {
        return Err(at(value, Invalid::BadName { field }));
    }
    Ok(())
}

/// What agent ids, source, pipeline and topic names may hold: `[A-Za-z0-9._-]`.
pub(super) fn legal_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `value >= least`, for any integer field (signed ones too: `-1` is less than 1).
pub(super) fn at_least<T: Copy + TryInto<i128>>(
    value: &Spanned<T>,
    field: &'static str,
    least: u64,
) -> Result<(), Failure> {
    let wide: i128 = (*value.get_ref()).try_into().unwrap_or(i128::MAX);
    if wide < i128::from(least) {
        return Err(at(value, Invalid::TooSmall { field, least }));
    }
    Ok(())
}

fn mqtt(source: &MqttSource) -> Result<(), Failure> {
    let url =
        BrokerUrl::parse(source.url.get_ref()).map_err(|_| at(&source.url, Invalid::BadUrl))?;
    if let Some(ca) = &source.ca_file {
        if !url.tls {
            return Err((ca.span(), Invalid::CaWithoutTls));
        }
    }
    match (&source.cert_file, &source.key_file) {
        (None, None) => {}
        (Some(f), _) | (None, Some(f)) => {
            let whole = source.cert_file.is_some() && source.key_file.is_some();
            if !whole || !url.tls || source.ca_file.is_none() {
                return Err((f.span(), Invalid::ClientCertificate));
            }
        }
    }
    if source.client_id.get_ref().is_empty() {
        return Err(at(&source.client_id, Invalid::Empty { field: "client_id" }));
    }
    if let (Some(env), Some(_)) = (&source.password_env, &source.password_file) {
        return Err(at(env, Invalid::TwoPasswords));
    }
    for sub in &source.subscribe {
        TopicFilter::parse(sub.topic.get_ref()).map_err(|reason| {
            at(
                &sub.topic,
                Invalid::BadPattern {
                    field: "topic",
                    what: "MQTT topic filter",
                    reason,
                },
            )
        })?;
        if *sub.qos.get_ref() > 2 {
            return Err(at(
                &sub.qos,
                Invalid::BadQos {
                    qos: *sub.qos.get_ref(),
                },
            ));
        }
    }
    let payload = &source.payload;
    for (pointer, field) in [
        (&payload.value, "payload.value"),
        (&payload.timestamp, "payload.timestamp"),
        (&payload.sensor, "payload.sensor"),
        (&payload.seq, "payload.seq"),
    ] {
        if let Some(p) = pointer {
            if payload.format == PayloadFormat::SparkplugB {
                return Err(at(p, Invalid::PointerWithSparkplug { field }));
            }
            if !(p.get_ref().is_empty() || p.get_ref().starts_with('/')) {
                return Err(at(p, Invalid::BadPointer { field }));
            }
        }
    }
    if payload.format == PayloadFormat::Json && payload.value.is_none() {
        return Err(at(&source.name, Invalid::MissingValuePointer));
    }
    if source.idempotency == Idempotency::PayloadSeq && payload.seq.is_none() {
        return Err(at(&source.name, Invalid::SeqKeyWithoutSeq));
    }
    mqtt_version(source)
}

/// `version` is 3 or 5, and the MQTT 5 keys are only set with `version = 5`; a user property
/// named in `user_properties` is a valid placeholder name, named once, and not a reserved one.
fn mqtt_version(source: &MqttSource) -> Result<(), Failure> {
    let version = *source.version.get_ref();
    if version != 3 && version != 5 {
        return Err(at(&source.version, Invalid::BadMqttVersion { version }));
    }
    if version == 5 {
        for (i, name) in source.user_properties.iter().enumerate() {
            let text = name.get_ref();
            if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(at(name, Invalid::BadUserProperty { name: text.clone() }));
            }
            if RESERVED_PLACEHOLDERS.contains(&text.as_str())
                || source.user_properties[..i]
                    .iter()
                    .any(|n| n.get_ref() == text)
            {
                return Err(at(
                    name,
                    Invalid::ReservedUserProperty { name: text.clone() },
                ));
            }
        }
        return Ok(());
    }
    if let Some(expiry) = &source.session_expiry_s {
        return Err(at(
            expiry,
            Invalid::NeedsMqtt5 {
                field: "session_expiry_s",
            },
        ));
    }
    if let Some(name) = source.user_properties.first() {
        return Err(at(
            name,
            Invalid::NeedsMqtt5 {
                field: "user_properties",
            },
        ));
    }
    Ok(())
}

/// Placeholders every MQTT rule has: a user property cannot take their names.
const RESERVED_PLACEHOLDERS: [&str; 2] = ["source", "payload"];

/// `time_sync_interval_s` is for link framing and at most a day.
fn serial(source: &super::SerialSource) -> Result<(), Failure> {
    let Some(interval) = &source.time_sync_interval_s else {
        return Ok(());
    };
    let field = "time_sync_interval_s";
    if source.framing == super::SerialFraming::Line {
        let reason = "is for `framing = \"link\"` (text lines get no TimeSync)";
        return Err(at(interval, Invalid::BadSerial { field, reason }));
    }
    if *interval.get_ref() > super::MAX_TIME_SYNC_INTERVAL_S {
        let reason = "must be at most 86400 (a day; 0 turns the periodic TimeSync off)";
        return Err(at(interval, Invalid::BadSerial { field, reason }));
    }
    Ok(())
}

/// One task owns a serial port: a Modbus RTU device on a port that another `[[modbus]]` or a
/// `[[serial]]` source also uses is refused (several units on one RS-485 line are not supported
/// yet).
fn shared_serial_ports(config: &Config) -> Result<(), Failure> {
    let mut taken: Vec<String> = config
        .serial
        .iter()
        .map(|s| s.path.to_string_lossy().into_owned())
        .collect();
    for port in config.modbus.iter().filter_map(|m| m.serial.as_ref()) {
        if taken.contains(port.get_ref()) {
            return Err(at(
                port,
                Invalid::SharedSerialPort {
                    path: port.get_ref().clone(),
                },
            ));
        }
        taken.push(port.get_ref().clone());
    }
    Ok(())
}

enum Kind<'c> {
    Mqtt(&'c MqttSource),
    Serial,
    Modbus(&'c super::ModbusSource),
}

impl Kind<'_> {
    /// The kind's name in messages.
    fn label(&self) -> &'static str {
        match self {
            Kind::Mqtt(_) => "MQTT",
            Kind::Serial => "serial",
            Kind::Modbus(_) => "Modbus",
        }
    }
}

fn sensor(config: &Config, mapping: &super::SensorMapping) -> Result<(), Failure> {
    let wanted = mapping.source.get_ref();
    let kind = config
        .mqtt
        .iter()
        .find(|m| m.name.get_ref() == wanted)
        .map(Kind::Mqtt)
        .or_else(|| {
            config
                .serial
                .iter()
                .find(|s| s.name.get_ref() == wanted)
                .map(|_| Kind::Serial)
        })
        .or_else(|| {
            config
                .modbus
                .iter()
                .find(|m| m.name.get_ref() == wanted)
                .map(Kind::Modbus)
        })
        .ok_or_else(|| {
            at(
                &mapping.source,
                Invalid::UnknownSource {
                    name: wanted.clone(),
                    defined: config.source_names().map(str::to_owned).collect(),
                },
            )
        })?;
    // Each addressing field belongs to one kind of source.
    let actual = kind.label();
    let foreign = |field, owner| Invalid::WrongSourceKind {
        field,
        kind: owner,
        source_name: wanted.clone(),
        actual,
    };
    if let (Some(register), false) = (&mapping.register, matches!(kind, Kind::Modbus(_))) {
        return Err(at(register, foreign("register", "Modbus")));
    }
    if let (Some(topic), false) = (&mapping.topic, matches!(kind, Kind::Mqtt(_))) {
        return Err(at(topic, foreign("topic", "MQTT")));
    }
    let serial_fields = mapping.device.is_some() || mapping.channel.is_some();
    if serial_fields && !matches!(kind, Kind::Serial) {
        return Err(at(&mapping.source, foreign("device/channel", "serial")));
    }
    let mut allowed: Vec<String> = RESERVED_PLACEHOLDERS.map(String::from).to_vec();
    match kind {
        Kind::Mqtt(source) => {
            let topic = mapping.topic.as_ref().ok_or_else(|| {
                at(
                    &mapping.source,
                    Invalid::MissingTopic {
                        source_name: wanted.clone(),
                    },
                )
            })?;
            let pattern = TopicPattern::parse(topic.get_ref()).map_err(|reason| {
                at(
                    topic,
                    Invalid::BadPattern {
                        field: "topic",
                        what: "topic pattern",
                        reason,
                    },
                )
            })?;
            if let Some(clash) = pattern
                .capture_names()
                .find(|c| source.user_properties.iter().any(|p| p.get_ref() == c))
            {
                return Err(at(
                    topic,
                    Invalid::CaptureIsUserProperty {
                        name: clash.to_owned(),
                    },
                ));
            }
            allowed.extend(pattern.capture_names().map(str::to_owned));
            allowed.extend(source.user_properties.iter().map(|p| p.get_ref().clone()));
        }
        Kind::Serial => allowed.extend(["device".into(), "channel".into()]),
        Kind::Modbus(source) => {
            if let Some(register) = &mapping.register {
                let defined: Vec<String> = source
                    .registers()
                    .map(|(_, r)| r.name.get_ref().clone())
                    .collect();
                if !defined.contains(register.get_ref()) {
                    return Err(at(
                        register,
                        Invalid::UnknownRegister {
                            name: register.get_ref().clone(),
                            source_name: wanted.clone(),
                            defined,
                        },
                    ));
                }
            }
            // `{payload}` means nothing here (a register has no payload sensor name).
            allowed = vec!["source".into(), "register".into()];
        }
    }
    let template = Template::parse(mapping.id.get_ref()).map_err(|reason| {
        at(
            &mapping.id,
            Invalid::BadPattern {
                field: "id",
                what: "sensor id template",
                reason,
            },
        )
    })?;
    if let Some(unknown) = template
        .placeholders()
        .find(|p| !allowed.iter().any(|a| a == p))
    {
        return Err(at(
            &mapping.id,
            Invalid::UnknownPlaceholder {
                name: unknown.to_owned(),
                allowed,
            },
        ));
    }
    for (bound, field) in [(&mapping.min, "min"), (&mapping.max, "max")] {
        if let Some(b) = bound {
            if !b.get_ref().is_finite() {
                return Err(at(b, Invalid::NotFinite { field }));
            }
        }
    }
    if let (Some(min), Some(max)) = (&mapping.min, &mapping.max) {
        if min.get_ref() > max.get_ref() {
            return Err(at(
                max,
                Invalid::EmptyRange {
                    min: *min.get_ref(),
                    max: *max.get_ref(),
                },
            ));
        }
    }
    if !mapping.scale.is_finite() || !mapping.offset.is_finite() {
        return Err(at(
            &mapping.id,
            Invalid::NotFinite {
                field: "scale/offset",
            },
        ));
    }
    Ok(())
}
