//! The Sparkplug B state machine of one source: edge nodes, their alias tables and `seq`
//! counters; a message in, what to store and what to count out. No I/O: the caller maps the
//! values, makes the dead letters and writes the node record in the message's submission.
//!
//! # Rules
//!
//! - **NBIRTH** replaces the node's record (its metrics; every device's table is dropped: a
//!   rebirth restarts the node) and restarts its `seq` at the birth's. A birth that breaks a
//!   bound (too many metrics, a name too long) still replaces the record, with an empty one, so
//!   old aliases never resolve data of the new session; the refusal is a dead letter.
//! - **DBIRTH** replaces one device's table (creating the node if no NBIRTH was seen).
//! - **NDATA/DDATA**: each metric resolves by alias (to the birth's name and datatype) or by
//!   name; numeric values (Int8..UInt64, Float, Double, Boolean as 1/0, DateTime as ms) become
//!   [`MetricValue`]s at the metric's timestamp, else the payload's, else the receive time.
//!   Unknown aliases, non-numeric and null values are [`MetricError`]s (dead letters), the
//!   message's other metrics still count. Birth values are not readings.
//! - **NDEATH/DDEATH** are counted; the aliases stay until the next birth replaces them.
//! - **NCMD/DCMD/STATE** are not data: ignored (acked, nothing stored).
//! - **seq**: per node, 0..=255 wrapping; a message whose seq is not last + 1 counts the
//!   messages skipped as gaps (a repeat of the last seq, a redelivery, counts none). After a
//!   restart the first message of each node sets the baseline.
//!
//! # Bounds
//!
//! At most [`MAX_NODES`] edge nodes per source (a birth of one more is dead-lettered) and
//! [`super::aliases::MAX_METRICS_PER_NODE`] metrics per node, names at most
//! [`super::aliases::MAX_NAME_LEN`] bytes.

use std::collections::BTreeMap;

use super::aliases::{Declared, NodeRecord, Table, MAX_METRICS_PER_NODE, MAX_NAME_LEN};
use super::proto::{self, data_type, DecodeError, Metric, Payload, Value};
use super::topic::{self, MessageType, TopicError};

/// Edge nodes one source keeps aliases for.
pub const MAX_NODES: usize = 1024;

/// A numeric metric value, before the sensor mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub name: String,
    pub ts_ms: Option<u64>,
    pub value: f64,
}

/// Why a message, or one metric of it, did not become a reading (the dead letter's reason).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("edge node {node}: birth refused, {max} edge nodes are known already")]
    TooManyNodes { node: String, max: usize },
    #[error("edge node {node}: birth declares more than {max} metrics; its aliases are cleared")]
    TooManyMetrics { node: String, max: usize },
    #[error("{node}: birth metric {index} has no name")]
    Unnamed { node: String, index: usize },
    #[error("{node}: a metric name is longer than {MAX_NAME_LEN} bytes; the birth's aliases are cleared")]
    NameTooLong { node: String },
    #[error("{node}: metric {index} has neither name nor alias")]
    NoNameNorAlias { node: String, index: usize },
    #[error("{node}: alias {alias} is unknown (no birth declared it since the last rebirth)")]
    UnknownAlias { node: String, alias: u64 },
    #[error("{node}: metric `{metric}` has no value")]
    NoValue { node: String, metric: String },
    #[error("{node}: metric `{metric}` is null")]
    Null { node: String, metric: String },
    #[error("{node}: metric `{metric}` is not numeric ({what})")]
    NotNumeric {
        node: String,
        metric: String,
        what: &'static str,
    },
    #[error("{node}: metric `{metric}` is not a finite number")]
    NotFinite { node: String, metric: String },
}

/// What the message was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Birth,
    Death,
    Data,
    /// Commands, host state: not data.
    Ignored,
    /// The topic or payload was refused as a whole.
    Refused,
}

/// What one message did.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub event: Event,
    /// `(group, edge_node)` of the message, when its topic parsed.
    pub node: Option<(String, String)>,
    pub values: Vec<MetricValue>,
    pub errors: Vec<MetricError>,
    /// The node's record to store (births only): written in the message's submission.
    pub write: Option<Vec<u8>>,
    /// Messages skipped in the node's `seq` before this one.
    pub seq_gaps: u64,
    /// Whether the node is in the table (so has counters: bounded by [`MAX_NODES`]).
    pub tracked: bool,
}

impl Effect {
    fn refused(node: Option<(String, String)>, error: MetricError) -> Effect {
        Effect {
            event: Event::Refused,
            node,
            values: Vec::new(),
            errors: vec![error],
            write: None,
            seq_gaps: 0,
            tracked: false,
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    record: NodeRecord,
    /// The last `seq` seen; `None` until a message sets it (after a restart or an NDEATH).
    last_seq: Option<u8>,
}

/// Every edge node of one source.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: BTreeMap<(String, String), Node>,
}

impl Nodes {
    /// Starts from stored records (`seq` unknown until each node's next message).
    pub fn restore(records: impl IntoIterator<Item = ((String, String), NodeRecord)>) -> Nodes {
        Nodes {
            nodes: records
                .into_iter()
                .take(MAX_NODES)
                .map(|(k, record)| {
                    (
                        k,
                        Node {
                            record,
                            last_seq: None,
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The stored form of a node's record (for tests and `inspect`).
    pub fn record(&self, group: &str, node: &str) -> Option<&NodeRecord> {
        self.nodes
            .get(&(group.to_owned(), node.to_owned()))
            .map(|n| &n.record)
    }

    /// Handles one publish (`body` at most `max_bytes`).
    pub fn handle(&mut self, topic: &str, body: &[u8], max_bytes: usize) -> Effect {
        let t = match topic::parse(topic) {
            Ok(t) => t,
            Err(e) => return Effect::refused(None, e.into()),
        };
        let key = (t.group.to_owned(), t.edge_node.to_owned());
        let mut effect = Effect {
            event: Event::Ignored,
            node: Some(key.clone()),
            values: Vec::new(),
            errors: Vec::new(),
            write: None,
            seq_gaps: 0,
            tracked: false,
        };
        if matches!(
            t.kind,
            MessageType::NCmd | MessageType::DCmd | MessageType::State
        ) {
            effect.node = None;
            return effect;
        }
        let payload = match proto::decode(body, max_bytes) {
            Ok(p) => p,
            Err(e) => return Effect::refused(Some(key), e.into()),
        };
        let label = match t.device {
            Some(d) => format!("{}/{}/{d}", t.group, t.edge_node),
            None => format!("{}/{}", t.group, t.edge_node),
        };
        if !self.nodes.contains_key(&key) {
            if !matches!(t.kind, MessageType::NBirth | MessageType::DBirth) {
                // Data or a death of a node never born here: resolve by name only, no state.
                effect.event = match t.kind {
                    MessageType::NDeath | MessageType::DDeath => Event::Death,
                    _ => Event::Data,
                };
                if effect.event == Event::Data {
                    resolve(&payload, None, &label, &mut effect);
                }
                return effect;
            }
            if self.nodes.len() >= MAX_NODES {
                return Effect::refused(
                    Some(key),
                    MetricError::TooManyNodes {
                        node: label,
                        max: MAX_NODES,
                    },
                );
            }
        }
        let node = self.nodes.entry(key).or_default();
        effect.tracked = true;
        let seq = payload.seq.map(|s| (s % 256) as u8);
        match t.kind {
            MessageType::NBirth => {
                effect.event = Event::Birth;
                let table = declare(&payload, &label, 0, &mut effect.errors);
                node.record = NodeRecord {
                    node: table,
                    devices: BTreeMap::new(),
                };
                node.last_seq = seq;
                effect.write = Some(node.record.encode());
            }
            MessageType::DBirth => {
                effect.event = Event::Birth;
                effect.seq_gaps = node.observe(seq);
                let device = t.device.unwrap_or_default().to_owned();
                let others =
                    node.record.metrics() - node.record.devices.get(&device).map_or(0, Table::len);
                let table = declare(&payload, &label, others, &mut effect.errors);
                node.record.devices.insert(device, table);
                effect.write = Some(node.record.encode());
            }
            MessageType::NDeath => {
                effect.event = Event::Death;
                node.last_seq = None;
            }
            MessageType::DDeath => {
                effect.event = Event::Death;
                effect.seq_gaps = node.observe(seq);
            }
            _ => {
                effect.event = Event::Data;
                effect.seq_gaps = node.observe(seq);
                let table = match t.device {
                    Some(d) => node.record.devices.get(d),
                    None => Some(&node.record.node),
                };
                resolve(&payload, table, &label, &mut effect);
            }
        }
        effect
    }
}

impl Node {
    /// Folds in a data/death/device-birth `seq`; returns the messages skipped.
    fn observe(&mut self, seq: Option<u8>) -> u64 {
        let Some(seq) = seq else { return 0 };
        let gaps = match self.last_seq {
            Some(last) if seq != last => u64::from(seq.wrapping_sub(last.wrapping_add(1))),
            _ => 0,
        };
        self.last_seq = Some(seq);
        gaps
    }
}

/// The birth's declarations, or an empty table (with the reason in `errors`) when a bound is
/// broken; `others` metrics of the node are declared already.
fn declare(payload: &Payload, label: &str, others: usize, errors: &mut Vec<MetricError>) -> Table {
    if others + payload.metrics.len() > MAX_METRICS_PER_NODE {
        errors.push(MetricError::TooManyMetrics {
            node: label.to_owned(),
            max: MAX_METRICS_PER_NODE,
        });
        return Table::default();
    }
    let mut declared = Vec::with_capacity(payload.metrics.len());
    for (index, m) in payload.metrics.iter().enumerate() {
        let Some(name) = &m.name else {
            errors.push(MetricError::Unnamed {
                node: label.to_owned(),
                index,
            });
            continue;
        };
        if name.len() > MAX_NAME_LEN {
            errors.push(MetricError::NameTooLong {
                node: label.to_owned(),
            });
            return Table::default();
        }
        declared.push(Declared {
            name: name.clone(),
            alias: m.alias,
            datatype: m.datatype.unwrap_or(data_type::UNKNOWN),
        });
    }
    Table::new(declared)
}

/// Resolves every metric of a data message against `table` into `effect`.
fn resolve(payload: &Payload, table: Option<&Table>, label: &str, effect: &mut Effect) {
    for (index, m) in payload.metrics.iter().enumerate() {
        let declared = match (m.alias, &m.name) {
            (Some(alias), _) => match table.and_then(|t| t.by_alias(alias)) {
                Some(d) => Some(d),
                None if m.name.is_none() => {
                    effect.errors.push(MetricError::UnknownAlias {
                        node: label.to_owned(),
                        alias,
                    });
                    continue;
                }
                None => None,
            },
            (None, Some(name)) => table.and_then(|t| t.by_name(name)),
            (None, None) => {
                effect.errors.push(MetricError::NoNameNorAlias {
                    node: label.to_owned(),
                    index,
                });
                continue;
            }
        };
        let name = match (&m.name, declared) {
            (Some(n), _) => n.clone(),
            (None, Some(d)) => d.name.clone(),
            (None, None) => continue, // unreachable by the match above
        };
        let datatype = m
            .datatype
            .or(declared.map(|d| d.datatype))
            .unwrap_or(data_type::UNKNOWN);
        match numeric(m, datatype) {
            Ok(value) if value.is_finite() => effect.values.push(MetricValue {
                name,
                ts_ms: m.timestamp.or(payload.timestamp),
                value,
            }),
            Ok(_) => effect.errors.push(MetricError::NotFinite {
                node: label.to_owned(),
                metric: name,
            }),
            Err(what) => effect.errors.push(match what {
                NotANumber::Null => MetricError::Null {
                    node: label.to_owned(),
                    metric: name,
                },
                NotANumber::Missing => MetricError::NoValue {
                    node: label.to_owned(),
                    metric: name,
                },
                NotANumber::Kind(what) => MetricError::NotNumeric {
                    node: label.to_owned(),
                    metric: name,
                    what,
                },
            }),
        }
    }
}

enum NotANumber {
    Null,
    Missing,
    Kind(&'static str),
}

/// The metric's value as a number, signed integers read with `datatype`'s width.
fn numeric(m: &Metric, datatype: u32) -> Result<f64, NotANumber> {
    if m.is_null == Some(true) {
        return Err(NotANumber::Null);
    }
    Ok(match m.value.as_ref().ok_or(NotANumber::Missing)? {
        Value::Int(v) => match datatype {
            data_type::INT8 => f64::from(*v as u8 as i8),
            data_type::INT16 => f64::from(*v as u16 as i16),
            data_type::INT32 | data_type::INT64 => f64::from(*v as i32),
            _ => f64::from(*v),
        },
        Value::Long(v) => match datatype {
            data_type::INT8 | data_type::INT16 | data_type::INT32 | data_type::INT64 => {
                *v as i64 as f64
            }
            _ => *v as f64,
        },
        Value::Float(v) => f64::from(*v),
        Value::Double(v) => *v,
        Value::Boolean(b) => f64::from(u8::from(*b)),
        Value::String(_) => return Err(NotANumber::Kind("a string")),
        Value::Bytes(_) => return Err(NotANumber::Kind("bytes")),
        Value::DataSet(_) => return Err(NotANumber::Kind("a DataSet")),
        Value::Template(_) => return Err(NotANumber::Kind("a Template")),
    })
}
