//! The sensor mapping: from what a source delivers (a topic, a device channel, a parsed payload)
//! to a [`Reading`] with a sensor id, calibrated value and range check. No I/O.
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
//! # Invariants
//!
//! - The first `[[sensor]]` rule (in file order) whose source and topic / device / channel match
//!   is the one applied: order in the file is the priority.
//! - A produced [`Reading`] has a non-empty sensor id of at most [`MAX_SENSOR_LEN`] bytes, a
//!   finite value inside the rule's `[min, max]`, so the ingest log never stores a value that
//!   the mapping would refuse.

use crate::config::{Config, SensorMapping};
use crate::reading::{Reading, MAX_SENSOR_LEN};
use crate::source::payload::RawReading;

/// `mqtt://host[:port]` or `mqtts://host[:port]`.
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

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A compiled sensor id template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(template: &str) -> Result<Template, &'static str> {
        if template.is_empty() {
            return Err("empty");
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => return Err("`}` without `{`"),
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after.find('}').ok_or("`{` without `}`")?;
                    let name = &after[..end];
                    if !valid_name(name) {
                        return Err("a placeholder is `{name}` with name in [A-Za-z0-9_]");
                    }
                    parts.push(Part::Var(name.to_owned()));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Template { parts })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders; the name of the first one `lookup` cannot supply is the error.
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, &str> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(name) => out.push_str(&lookup(name).ok_or(name.as_str())?),
            }
        }
        Ok(out)
    }
}

/// A `*` glob over sensor ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pieces: Vec<String>,
}

impl Glob {
    pub fn parse(glob: &str) -> Result<Glob, &'static str> {
        if glob.is_empty() {
            return Err("empty");
        }
        Ok(Glob {
            pieces: glob.split('*').map(str::to_owned).collect(),
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(i) => remaining = &remaining[i + piece.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
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
    Topic(&'a str),
    Device {
        device: u32,
        channel: u8,
    },
    /// A text line: matches rules without topic, device and channel.
    Line,
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
                (Origin::Topic(topic), Some(pattern)) => match pattern.matches(topic) {
                    Some(c) => c
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    None => continue,
                },
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
                Origin::Topic(t) => t.to_owned(),
                Origin::Device { device, channel } => format!("device {device} channel {channel}"),
                Origin::Line => "a text line".to_owned(),
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
