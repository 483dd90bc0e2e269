//! Sparkplug B over MQTT (`[mqtt.payload] format = "sparkplug_b"`): an MQTT source whose
//! publishes are Sparkplug B protobuf payloads on `spBv1.0/<group>/<type>/<edge_node>[/<device>]`.
//!
//! | module | does |
//! | --- | --- |
//! | [`proto`] | the protobuf messages (prost, declared from the checked-in Tahu `.proto`; why not generated: there) |
//! | [`topic`] | the topic namespace |
//! | [`state`] | the state machine: births, deaths, aliases, `seq` gaps; no I/O |
//! | [`aliases`] | the alias tables and their stored record (format there) |
//! | [`metrics`] | the `edge_sparkplug_*` families, per edge node |
//! | this file | [`Sparkplug`]: one source's state, loaded from the database at start, turning a publish into a submission's readings, dead letters and `source_state` rows |
//!
//! # Mapping to sensor ids
//!
//! A data metric goes through the source's `[[sensor]]` rules like any MQTT reading: the rule's
//! `topic` pattern matches the publish's topic (so `{group}`, `{node}`, `{device}` captures come
//! from the Sparkplug levels: `spBv1.0/{group}/DDATA/{node}/{device}`), and the metric's name
//! (from the message, or from its birth when sent by alias) is `{payload}`, as a SenML name is.
//! NDATA topics have no device level, so node metrics need a rule of their own
//! (`spBv1.0/{group}/NDATA/{node}`). Births only declare: their values are not readings.
//!
//! # Durability of the alias tables, and crash reasoning
//!
//! The aliases a birth declares are applied to the in-memory [`state::Nodes`] when the publish
//! is parsed (on the poller, so the data that follows at once resolves), and the node's whole
//! record is put in the birth's own [`Submission`]'s `state` rows. The ingest writer commits
//! those rows in the same fsync'd transaction as the submission's dead letters, and the birth's
//! PUBACK runs only after that commit (guarantee 1). Therefore:
//!
//! - **Crash before the birth's commit**: the birth was not acked; with QoS 1/2 and the
//!   persistent session the broker redelivers it, before any later message of that node (MQTT
//!   keeps a session's order), so the restarted source learns the aliases again before it
//!   reads the data. Data committed before the crash was resolved with the right aliases.
//! - **Crash after the commit**: the record is on disk; [`Sparkplug::open`] loads it at the
//!   next start (and at every reload), so data by alias still resolves.
//! - Submissions commit in arrival order, so a record on disk is never older than the aliases
//!   used by committed data, and a rebirth's record replaces the old one atomically.
//! - **QoS 0 births** (the Sparkplug default) are never redelivered: one lost in a crash before
//!   its commit leaves the node's previous aliases (or none) until the node's next birth; its
//!   data meanwhile dead-letters as unknown aliases (never mapped to a wrong name unless the
//!   node reused an old alias number for another metric). Subscribe with QoS 1 to close this.
//!   The agent is not a Sparkplug primary host: it never sends a Rebirth command.
//!
//! `seq` baselines are not stored: after a restart the first message of each node sets it.
//!
//! # Bounds
//!
//! Payloads are capped at `buffer.max_payload_bytes` before decoding; at most
//! [`state::MAX_NODES`] edge nodes per source and [`aliases::MAX_METRICS_PER_NODE`] metrics
//! per node, names at most [`aliases::MAX_NAME_LEN`] bytes: a source's tables stay below a
//! few hundred MB in the very worst case, a few KB per node in practice.
//!
//! [`Submission`]: crate::ingest::Submission

pub mod aliases;
pub mod metrics;
pub mod proto;
pub mod state;
pub mod topic;

use std::sync::{Arc, Mutex};

use redb::Database;

use crate::config::{MqttSource, PayloadFormat};
use crate::ingest::{DeadLetter, Dedupe, StateWrite};
use crate::mapping::{Mapper, Origin};
use crate::reading::Reading;
use crate::source::payload::RawReading;
use crate::source::Context;

use aliases::LoadError;
use metrics::Metrics;
use state::{Event, Nodes};

/// One Sparkplug B source's state.
#[derive(Debug)]
pub struct Sparkplug {
    source: String,
    max_bytes: usize,
    /// Only the source's poller locks it (uncontended); a mutex so the source stays `Sync`.
    nodes: Mutex<Nodes>,
    metrics: Arc<Metrics>,
}

/// What one publish becomes: the parts of its submission.
#[derive(Debug, Default)]
pub struct Parts {
    pub readings: Vec<(Reading, Dedupe)>,
    pub dead_letters: Vec<DeadLetter>,
    pub state: Vec<StateWrite>,
}

impl Sparkplug {
    /// The state of MQTT source `source` when its format is `sparkplug_b` (`None` otherwise),
    /// its stored aliases loaded. When the database cannot be read the source still starts,
    /// without stored aliases (logged as an error): its data by alias dead-letters as unknown
    /// until each node's next birth, never maps to a wrong name.
    pub fn for_source(
        source: &MqttSource,
        cx: &Context<'_>,
        max_bytes: usize,
    ) -> Option<Arc<Sparkplug>> {
        if source.payload.format != PayloadFormat::SparkplugB {
            return None;
        }
        let name = source.name.get_ref();
        let metrics = cx.registry.sparkplug.clone();
        Some(Arc::new(
            match Sparkplug::open(&cx.database, name, max_bytes, metrics.clone()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(
                        source = name,
                        %error,
                        "Sparkplug B aliases not loaded; starting without them"
                    );
                    Sparkplug::new(name, max_bytes, Nodes::default(), metrics)
                }
            },
        ))
    }

    /// Loads `source`'s stored alias tables. A record that does not decode is logged and left
    /// out (that node's data dead-letters until its next birth); a database error is returned.
    pub fn open(
        db: &Database,
        source: &str,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Sparkplug, LoadError> {
        let mut records = Vec::new();
        for ((group, node), record) in aliases::load(db, source)? {
            match record {
                Ok(r) => records.push(((group, node), r)),
                Err(error) => tracing::error!(
                    source,
                    group,
                    edge_node = node,
                    %error,
                    "stored Sparkplug B aliases unreadable; waiting for the node's next birth"
                ),
            }
        }
        let nodes = Nodes::restore(records);
        tracing::info!(
            source,
            edge_nodes = nodes.len(),
            "Sparkplug B aliases loaded"
        );
        Ok(Sparkplug::new(source, max_bytes, nodes, metrics))
    }

    /// A source starting from `nodes` (tests, fuzzing).
    pub fn new(source: &str, max_bytes: usize, nodes: Nodes, metrics: Arc<Metrics>) -> Sparkplug {
        Sparkplug {
            source: source.to_owned(),
            max_bytes,
            nodes: Mutex::new(nodes),
            metrics,
        }
    }

    /// Turns one publish into submission parts: readings through `mapper`, one dead letter per
    /// refused message or metric, and a birth's node record. `now_ms` stands in for missing
    /// timestamps. Never panics.
    pub fn parts(
        &self,
        mapper: &Mapper,
        topic: &str,
        body: &[u8],
        now_ms: u64,
        dedupe: Dedupe,
    ) -> Parts {
        let effect = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).handle(
            topic,
            body,
            self.max_bytes,
        );
        let name = self.source.as_str();
        let mut parts = Parts::default();
        for v in &effect.values {
            let raw = RawReading {
                sensor: Some(v.name.clone()),
                ts_ms: v.ts_ms,
                value: v.value,
                seq: None,
            };
            match mapper.map(name, Origin::topic(topic), &raw, now_ms) {
                Ok(reading) => parts.readings.push((reading, dedupe)),
                Err(error) => parts
                    .dead_letters
                    .push(DeadLetter::new(now_ms, name, &error, body)),
            }
        }
        for error in &effect.errors {
            tracing::debug!(source = name, topic, %error, "Sparkplug B metric dead-lettered");
            parts
                .dead_letters
                .push(DeadLetter::new(now_ms, name, error, body));
        }
        if let Some((group, node)) = &effect.node {
            if let Some(value) = effect.write {
                parts.state.push(StateWrite {
                    key: aliases::key(name, group, node),
                    value,
                });
            }
            if effect.seq_gaps > 0 {
                tracing::warn!(
                    source = name,
                    group,
                    edge_node = node,
                    missing = effect.seq_gaps,
                    "Sparkplug B seq gap"
                );
            }
            let counts = [
                u64::from(effect.event == Event::Birth),
                u64::from(effect.event == Event::Death),
                effect.seq_gaps,
                (effect.values.len() + effect.errors.len()) as u64,
            ];
            if effect.tracked {
                self.metrics.add(name, group, node, counts);
            }
        }
        parts
    }
}

#[cfg(test)]
mod tests;
