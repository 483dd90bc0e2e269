//! The `edge_sparkplug_*` counter families: one sample per (source, group, edge node), kept in
//! the process's source [`crate::source::Registry`] so they survive reloads.
//!
//! Bounded: a node gets counters only once the source's state has accepted it
//! (`state::MAX_NODES` per source); a reload forgets the sources no longer configured.

use std::collections::BTreeMap;
use std::sync::Mutex;

use edge_ops_http::prometheus::{escape, Out};

/// The families, in exposition order (`deploy/OPERATIONS.md` lists them).
pub const FAMILIES: [(&str, &str); 4] = [
    (
        "edge_sparkplug_births_total",
        "Sparkplug B NBIRTH and DBIRTH messages, per edge node.",
    ),
    (
        "edge_sparkplug_deaths_total",
        "Sparkplug B NDEATH and DDEATH messages, per edge node.",
    ),
    (
        "edge_sparkplug_seq_gaps_total",
        "Sparkplug B messages missing from an edge node's seq (0..255, wrapping).",
    ),
    (
        "edge_sparkplug_metrics_total",
        "Sparkplug B data metrics that became readings or dead letters, per edge node.",
    ),
];

/// One edge node's counts, in [`FAMILIES`] order.
pub type Counts = [u64; 4];

/// `(source, group, edge node)`.
type Key = (String, String, String);

/// Every edge node's counters.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<BTreeMap<Key, Counts>>);

impl Metrics {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Counts>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `counts` to the node's counters (creating them).
    pub fn add(&self, source: &str, group: &str, node: &str, counts: Counts) {
        let mut map = self.map();
        let entry = map
            .entry((source.to_owned(), group.to_owned(), node.to_owned()))
            .or_default();
        for (total, n) in entry.iter_mut().zip(counts) {
            *total = total.saturating_add(n);
        }
    }

    /// The node's counters now (zero when unknown).
    pub fn get(&self, source: &str, group: &str, node: &str) -> Counts {
        self.map()
            .get(&(source.to_owned(), group.to_owned(), node.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Forgets the sources `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.map().retain(|(source, _, _), _| keep(source));
    }

    /// Writes the families (heads even when empty).
    pub fn render(&self, o: &mut Out) {
        let map = self.map();
        for (i, (name, help)) in FAMILIES.iter().enumerate() {
            o.head(name, "counter", help);
            for ((source, group, node), counts) in map.iter() {
                let labels = format!(
                    "source=\"{}\",group=\"{}\",edge_node=\"{}\"",
                    escape(source),
                    escape(group),
                    escape(node)
                );
                o.labelled(name, &labels, counts[i]);
            }
        }
    }
}
