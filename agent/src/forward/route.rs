//! Routing: which topic an outbox record goes to, and the headers it carries. No I/O.
//!
//! | kind | topic (from `[kafka.topics]`) | `schema` header |
//! | --- | --- | --- |
//! | partial | `partials` | `edge.partial` |
//! | reading (passed through) | `readings` | `edge.reading` |
//! | late reading | `late` | `edge.late` |
//! | dead letter | `dead_letters` | `edge.dead-letter` |
//! | progress marker | `progress` | `edge.progress.v1` |
//!
//! `{pipeline}` in a topic name is replaced by the record's route (its pipeline). The `schema`
//! header names the record kind; partials and readings carry their own version inside the
//! payload (the envelope of `edge_protocol`), the marker's version is in its name and its first
//! byte. Headers `agent` (the agent id, UTF-8) and `seq` (the outbox sequence number, decimal
//! ASCII) let any reader account for every record: `(agent, seq)` is unique per record. The
//! names and values are [`edge_protocol::contract`]'s, the one contract agent and consumer share.

use std::collections::HashMap;

use edge_protocol::contract::{header, schema as schemas};
use rdkafka::message::{Header, OwnedHeaders};

use crate::config::KafkaTopics;
use crate::outbox::RecordKind;

/// `schema` header of progress markers.
pub const PROGRESS_SCHEMA: &str = schemas::PROGRESS;

/// The `schema` header of a record kind.
pub fn schema(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Partial => schemas::PARTIAL,
        RecordKind::Reading => schemas::READING,
        RecordKind::Late => schemas::LATE,
        RecordKind::DeadLetter => schemas::DEAD_LETTER,
    }
}

/// Topic names per kind, with `{pipeline}` expanded once per (kind, pipeline) and kept.
#[derive(Debug, Clone)]
pub struct Routes {
    partials: String,
    readings: String,
    late: String,
    dead_letters: String,
    progress: String,
    expanded: HashMap<(RecordKind, String), String>,
}

impl Routes {
    pub fn new(topics: &KafkaTopics) -> Routes {
        Routes {
            partials: topics.partials.get_ref().clone(),
            readings: topics.readings.get_ref().clone(),
            late: topics.late.get_ref().clone(),
            dead_letters: topics.dead_letters.get_ref().clone(),
            progress: topics.progress.get_ref().clone(),
            expanded: HashMap::new(),
        }
    }

    /// The compacted topic of progress markers.
    pub fn progress(&self) -> &str {
        &self.progress
    }

    fn template(&self, kind: RecordKind) -> &str {
        match kind {
            RecordKind::Partial => &self.partials,
            RecordKind::Reading => &self.readings,
            RecordKind::Late => &self.late,
            RecordKind::DeadLetter => &self.dead_letters,
        }
    }

    /// The topic of a record of `kind` from pipeline `route`.
    pub fn topic(&mut self, kind: RecordKind, route: &str) -> &str {
        if !self.template(kind).contains("{pipeline}") {
            return self.template(kind);
        }
        let key = (kind, route.to_owned());
        if !self.expanded.contains_key(&key) {
            let topic = self.template(kind).replace("{pipeline}", route);
            self.expanded.insert(key.clone(), topic);
        }
        self.expanded.get(&key).map_or("", String::as_str)
    }

    /// Every topic the configured pipelines can reach, plus the progress topic: what the
    /// forwarder checks (or creates) before its first transaction.
    pub fn known_topics<'a>(
        &self,
        pipelines: impl Iterator<Item = &'a str> + Clone,
    ) -> Vec<String> {
        let mut out = vec![self.progress.clone(), self.dead_letters.clone()];
        for template in [&self.partials, &self.readings, &self.late] {
            if template.contains("{pipeline}") {
                out.extend(pipelines.clone().map(|p| template.replace("{pipeline}", p)));
            } else {
                out.push(template.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Headers `agent`, `seq`, `schema`.
pub fn headers(agent: &str, seq: u64, schema: &str) -> OwnedHeaders {
    let seq = seq.to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: header::AGENT,
            value: Some(agent.as_bytes()),
        })
        .insert(Header {
            key: header::SEQ,
            value: Some(seq.as_bytes()),
        })
        .insert(Header {
            key: header::SCHEMA,
            value: Some(schema.as_bytes()),
        })
}
