//! The sensor mapping: from what a source delivers (a topic, a device channel, a parsed payload
//! or a Modbus register) to a [`Reading`] with a sensor id, calibrated value and range check.
//! No I/O.
//!
//! # Syntax
//!
//! - **Topic pattern** (`[[sensor]] topic`): MQTT levels split by `/`. A level is a literal,
//!   `{name}` (captures that level; names are `[A-Za-z0-9_]`, each once), `+` (any one level,
//!   not captured) or, as the last level only, `#` (any rest, possibly empty).
//! - **Id template** (`[[sensor]] id`): literal text with `{name}` placeholders. `{` and `}` are
//!   only allowed as placeholder delimiters.
//! - **Sensor glob** (`[[pipeline]] sensors`): literal text where `*` matches any run.
//!
//! The id template and the sensor glob are the language the consumer's grouping rules speak too:
//! both live in `edge_config_toml` ([`Template`], [`Glob`]) and are re-exported here.
//!
//! # Topics: why not `rumqttc::matches` / `rumqttc::valid_filter`
//!
//! [`TopicFilter::parse`] accepts exactly the filters `rumqttc::valid_filter` accepts (a test
//! checks it over generated filters), but it also says *why* a filter is refused, which the
//! configuration error shows; `valid_filter` only says no. [`TopicPattern::matches`] is not an
//! MQTT filter match: it captures `{name}` levels, and it matches a topic starting with `$`
//! when the pattern spells that level out (`$SYS/{what}`), where `rumqttc::matches` refuses
//! every `$` topic, even for the filter `$SYS/+`. For plain filters on other topics the two
//! agree (tested), so the hand-written matcher stays, with that difference pinned.
//!
//! # Broker URLs: why not the `url` crate
//!
//! [`BrokerUrl::parse`] accepts `mqtt[s]://host[:port][/]`, with IPv6 literals in brackets
//! (`mqtt://[::1]`, `mqtt://[::1]:1883`; the host keeps its brackets, which is how rumqttc
//! joins host and port for the TCP connect). `url` would accept more (user info, paths,
//! queries, fragments, an empty port, upper-case schemes), so keeping the refusals would take a
//! check for each on top of it, and it would bring `idna` and its Unicode tables into the
//! gateway binary: more code and more bytes than the parser below.
//!
//! # Invariants
//!
//! - The first `[[sensor]]` rule (in file order) whose source and topic / device / channel match
//!   is the one applied: order in the file is the priority.
//! - A produced [`Reading`] has a non-empty sensor id of at most [`MAX_SENSOR_LEN`] bytes, a
//!   finite value inside the rule's `[min, max]`, so the ingest log never stores a value that
//!   the mapping would refuse.

use edge_config_toml::valid_name;
pub use edge_config_toml::{Glob, Template};

use crate::config::{Config, SensorMapping};
use crate::reading::{Reading, MAX_SENSOR_LEN};
use crate::source::payload::RawReading;

/// `mqtt://host[:port]` or `mqtts://host[:port]`; `host` may be an IPv6 literal in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, &'static str> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err("scheme must be mqtt:// or mqtts://");
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(url) = BrokerUrl::ipv6(tls, rest) {
            return url;
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| "bad port")?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err("bad host");
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// `[v6]` or `[v6]:port`, when the brackets hold an IPv6 address; `None` leaves the text
    /// to the host-and-port rules above (which accept `[v6]:port` the same way, and refused
    /// `[v6]` without a port before IPv6 literals were understood).
    fn ipv6(tls: bool, rest: &str) -> Option<Result<BrokerUrl, &'static str>> {
        let (address, after) = rest.strip_prefix('[')?.split_once(']')?;
        address.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            _ => match after.strip_prefix(':')?.parse() {
                Ok(port) => port,
                Err(_) => return Some(Err("bad port")),
            },
        };
        Some(Ok(BrokerUrl {
            tls,
            host: format!("[{address}]"),
            port,
        }))
    }
}

/// A subscription filter, checked against the MQTT rules for `+` and `#`.
pub struct TopicFilter;

impl TopicFilter {
    pub fn parse(filter: &str) -> Result<(), &'static str> {
        if filter.is_empty() {
            return Err("empty");
        }
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err("`#` must be a whole level and the last one");
            }
            if level.contains('+') && *level != "+" {
                return Err("`+` must be a whole level");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
}

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<TopicPattern, &'static str> {
        if pattern.is_empty() {
            return Err("empty");
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if !valid_name(name) {
                    return Err("a capture is `{name}` with name in [A-Za-z0-9_]");
                }
                if levels.contains(&Level::Capture(name.to_owned())) {
                    return Err("a capture name is used twice");
                }
                Level::Capture(name.to_owned())
            } else if *part == "+" {
                Level::Any
            } else if *part == "#" {
                if i + 1 != parts.len() {
                    return Err("`#` must be the last level");
                }
                Level::Rest
            } else if part.contains(['{', '}', '+', '#']) {
                return Err("`{`, `}`, `+`, `#` may only form a whole level");
            } else {
                Level::Literal((*part).to_owned())
            };
            levels.push(level);
        }
        Ok(TopicPattern { levels })
    }

    /// Names of the captures, in order.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The captures when `topic` matches, `None` otherwise.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut captures = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(captures),
                Level::Literal(lit) => {
                    if parts.next()? != lit {
                        return None;
                    }
                }
                Level::Any => {
                    parts.next()?;
                }
                Level::Capture(name) => captures.push((name.as_str(), parts.next()?)),
            }
        }
        parts.next().is_none().then_some(captures)
    }
}

/// Why a delivered value did not become a reading (it is counted as rejected and
/// dead-lettered with this reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("no [[sensor]] rule of source `{source_name}` matches `{what}`")]
    NoRule { source_name: String, what: String },
    #[error("the payload does not provide `{{{name}}}` for the sensor id")]
    MissingPlaceholder { name: String },
    #[error("sensor id is empty or longer than {MAX_SENSOR_LEN} bytes")]
    BadSensorId,
    #[error("value {value} of `{sensor}` is outside [{min}, {max}]")]
    OutOfRange {
        sensor: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("value of `{sensor}` is not a finite number")]
    NotFinite { sensor: String },
}

/// One compiled `[[sensor]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    source: String,
    topic: Option<TopicPattern>,
    device: Option<u32>,
    channel: Option<u8>,
    register: Option<String>,
    id: Template,
    pub unit: Option<String>,
    scale: f64,
    offset: f64,
    min: f64,
    max: f64,
}

/// Where a value came from, for template placeholders.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// An MQTT message: its topic (captures) and the MQTT 5 user properties its source lists
    /// (`{name}` placeholders; empty for MQTT 3.1.1).
    Topic {
        topic: &'a str,
        properties: &'a [(String, String)],
    },
    Device {
        device: u32,
        channel: u8,
    },
    /// A text line: matches rules without topic, device and channel.
    Line,
    /// A Modbus register, by its configured name: matches rules whose `register` is absent or
    /// this name; `{register}` in the id template.
    Register(&'a str),
}

impl<'a> Origin<'a> {
    /// A message without user properties (MQTT 3.1.1, or none listed).
    pub fn topic(topic: &'a str) -> Origin<'a> {
        Origin::Topic {
            topic,
            properties: &[],
        }
    }
}

/// All rules of a configuration, compiled.
#[derive(Debug, Clone, Default)]
pub struct Mapper {
    rules: Vec<Rule>,
}

impl Mapper {
    /// Compiles the (already validated) mapping of `config`.
    pub fn new(config: &Config) -> Mapper {
        Mapper {
            rules: config.sensor.iter().filter_map(Rule::compile).collect(),
        }
    }

    /// Maps one raw value delivered by `source` from `origin`; `received_ms` stands in for a
    /// missing timestamp.
    pub fn map(
        &self,
        source: &str,
        origin: Origin<'_>,
        raw: &RawReading,
        received_ms: u64,
    ) -> Result<Reading, MapError> {
        for rule in self.rules.iter().filter(|r| r.source == source) {
            let captures = match (origin, &rule.topic) {
                (Origin::Topic { topic, properties }, Some(pattern)) => {
                    match pattern.matches(topic) {
                        Some(c) => c
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .chain(properties.iter().cloned())
                            .collect(),
                        None => continue,
                    }
                }
                (Origin::Device { device, channel }, None) => {
                    if rule.device.is_some_and(|d| d != device)
                        || rule.channel.is_some_and(|c| c != channel)
                    {
                        continue;
                    }
                    vec![
                        ("device".to_owned(), device.to_string()),
                        ("channel".to_owned(), channel.to_string()),
                    ]
                }
                (Origin::Register(name), None) => {
                    if rule.register.as_deref().is_some_and(|r| r != name) {
                        continue;
                    }
                    vec![("register".to_owned(), name.to_owned())]
                }
                (Origin::Line, None) => {
                    if rule.device.is_some() || rule.channel.is_some() {
                        continue;
                    }
                    Vec::new()
                }
                _ => continue,
            };
            return rule.apply(&captures, raw, received_ms);
        }
        Err(MapError::NoRule {
            source_name: source.to_owned(),
            what: match origin {
                Origin::Topic { topic, .. } => topic.to_owned(),
                Origin::Device { device, channel } => format!("device {device} channel {channel}"),
                Origin::Line => "a text line".to_owned(),
                Origin::Register(name) => format!("register {name}"),
            },
        })
    }
}

impl Rule {
    fn compile(mapping: &SensorMapping) -> Option<Rule> {
        Some(Rule {
            source: mapping.source.get_ref().clone(),
            topic: match &mapping.topic {
                Some(t) => Some(TopicPattern::parse(t.get_ref()).ok()?),
                None => None,
            },
            device: mapping.device,
            channel: mapping.channel,
            register: mapping.register.as_ref().map(|r| r.get_ref().clone()),
            id: Template::parse(mapping.id.get_ref()).ok()?,
            unit: mapping.unit.clone(),
            scale: mapping.scale,
            offset: mapping.offset,
            min: mapping
                .min
                .as_ref()
                .map_or(f64::NEG_INFINITY, |m| *m.get_ref()),
            max: mapping.max.as_ref().map_or(f64::INFINITY, |m| *m.get_ref()),
        })
    }

    fn apply(
        &self,
        captures: &[(String, String)],
        raw: &RawReading,
        received_ms: u64,
    ) -> Result<Reading, MapError> {
        let sensor = self
            .id
            .render(|name| match name {
                "source" => Some(self.source.clone()),
                "payload" => raw.sensor.clone(),
                _ => captures
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
            })
            .map_err(|name| MapError::MissingPlaceholder {
                name: name.to_owned(),
            })?;
        if sensor.is_empty() || sensor.len() > MAX_SENSOR_LEN {
            return Err(MapError::BadSensorId);
        }
        let value = raw.value * self.scale + self.offset;
        if !value.is_finite() {
            return Err(MapError::NotFinite { sensor });
        }
        if value < self.min || value > self.max {
            return Err(MapError::OutOfRange {
                sensor,
                value,
                min: self.min,
                max: self.max,
            });
        }
        Ok(Reading {
            sensor,
            ts_ms: raw.ts_ms.unwrap_or(received_ms),
            value,
            seq: raw.seq,
        })
    }
}

#[cfg(test)]
mod tests;
