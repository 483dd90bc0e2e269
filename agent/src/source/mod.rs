//! Sources: turn bytes from the outside into readings, each batch with the ack it owes.
//!
//! | module | does |
//! | --- | --- |
//! | `payload` | message bodies (JSON, SenML, number) to raw values; no I/O |
//! | `mqtt` | one broker connection: poller task + acker task; acks only from the ingest commit |
//! | `serial` | one serial line: link frames (Hello, Ack after commit, TimeSync) or text lines |
//! | `modbus` | one Modbus device (TCP or RTU): register blocks polled at fixed periods, one submission per poll; `modbus::decode` turns register words into values (no I/O) |
//! | `sparkplug` | Sparkplug B payloads of an MQTT source (`format = "sparkplug_b"`): births, aliases (durable in `source_state`), deaths, `seq` gaps; the `edge_sparkplug_*` families per edge node |
//! | `link_acks` | the link's cumulative-ack rule as a state machine; no I/O |
//! | this file | the seam: [`Kind`] (what the rest of the agent knows of a source kind), [`KINDS`] (the list), the [`Registry`] of live counters, the [`SourceState`] health reads |
//!
//! # The seam
//!
//! The rest of the agent never names a source kind. A kind is one static [`Kind`] value in its
//! own file, listed in [`KINDS`]; it owns
//!
//! - its **spawning**: [`Kind::spawn`] reads the kind's tables of the configuration and returns
//!   one task per configured source ([`crate::service`] spawns whatever the list returns);
//! - its **counters**: a struct of atomics per source implementing [`SourceCounters`], kept in the
//!   process's [`Registry`] (`crate::telemetry::Telemetry::sources`) so they survive reloads;
//! - its **metric descriptions**: [`Kind::families`], one counter family per field, each with one
//!   sample per source labelled `source="name"` (rendered by [`render_families`] in the kind's
//!   list position; `deploy/OPERATIONS.md` lists them); a gauge is a field outside the
//!   families, rendered by the kind's own function after them (serial's `clock::render`,
//!   reading its counters through [`Registry::of_kind`]);
//! - its **health**: [`Kind::health`] makes a state machine per source (no I/O) that turns
//!   samples of the source's counters into a [`SourceState`]: what `/readyz`, the
//!   `edge_source_state` gauge and the watchdog's sampler ([`crate::ops::health`]) read.
//!
//! # Adding a source kind (Sparkplug B, ...)
//!
//! 1. **One new file**, `source/<kind>.rs`: the task (poll, parse, map, submit
//!    [`Submission`]s, ack only from the writer's ack after the commit: see `mqtt.rs` and
//!    `serial.rs` for the two pushed shapes, `modbus.rs` for a polled one with nothing to
//!    ack), its counters struct (`impl SourceCounters`), its
//!    [`Family`] list (names `edge_<kind>_..._total`), its health rule (`impl SourceHealth`) and
//!    `pub static KIND: Kind`.
//! 2. **Its config section**: a `[[<kind>]]` table in `config.rs` (a `Vec` field on `Config`,
//!    validated there; its `name` joins the unique source names) and, where its readings are not
//!    addressed by topic, device or line, an [`crate::mapping::Origin`] variant.
//! 3. **A list entry**: `pub mod <kind>;` here and `&<kind>::KIND` in [`KINDS`].
//!
//! Nothing in `service.rs`, `ops/` or `telemetry.rs` changes.
//!
//! # Invariants
//!
//! - A source never stops another: a task that cannot start logs and ends; the others run.
//! - A source acks (PUBACK, link `Ack`) only from its submission's ack, which the ingest writer
//!   runs after the commit that made it durable (`docs/DESIGN.md` section 2, guarantee 1).
//! - A source's counters are created on first use and kept by name across reloads; a reload
//!   forgets the sources its configuration no longer lists ([`Registry::retain`]).

/// Implements [`SourceCounters`] for a kind's struct of `AtomicU64` fields: its values are the
/// fields named, in the order of the kind's [`Kind::families`].
macro_rules! source_counters {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::source::SourceCounters for $ty {
            fn values(&self) -> Vec<u64> {
                $crate::source::load(&[$(&self.$field),*])
            }

            fn into_any(
                self: std::sync::Arc<Self>,
            ) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
                self
            }
        }
    };
}

pub mod link_acks;
pub mod modbus;
pub mod mqtt;
pub mod payload;
pub mod serial;
pub mod sparkplug;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edge_ops_http::prometheus::{escape, Out};
use redb::Database;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Submission;
use crate::mapping::Mapper;

/// Every source kind, in the order their metric families are rendered.
pub static KINDS: &[&Kind] = &[&mqtt::KIND, &serial::KIND, &modbus::KIND];

/// One source kind, as the rest of the agent sees it. One `static` per kind, listed in [`KINDS`].
pub struct Kind {
    /// The kind's name (its `[[table]]` in the configuration).
    pub name: &'static str,
    /// Its counter families, in exposition order; [`SourceCounters::values`] answers in this order.
    pub families: &'static [Family],
    /// The names of the configured sources of this kind.
    pub names: fn(&Config) -> Vec<String>,
    /// One task per configured source of this kind, registering its counters in `cx.registry`.
    pub spawn: fn(&Config, &Context<'_>) -> Vec<Task>,
    /// A fresh health state machine for one source of this kind.
    pub health: fn() -> Box<dyn SourceHealth>,
}

impl Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kind").field("name", &self.name).finish()
    }
}

/// One Prometheus counter family a kind exports (one sample per source).
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

/// A source's task, ready for the service's tracker.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What every source task gets from the service.
pub struct Context<'a> {
    pub mapper: Arc<Mapper>,
    pub submissions: mpsc::Sender<Submission>,
    pub cancel: CancellationToken,
    pub registry: &'a Registry,
    /// The agent's database: sources read their `source_state` rows from it at start (they
    /// write them only through submissions).
    pub database: Arc<Database>,
}

/// Every task of every configured source, in [`KINDS`] order.
pub fn spawn_all(config: &Config, cx: &Context<'_>) -> Vec<Task> {
    KINDS.iter().flat_map(|k| (k.spawn)(config, cx)).collect()
}

/// The live counters of one source of some kind (implemented with `source_counters!`).
pub trait SourceCounters: Any + Debug + Send + Sync {
    /// One value per family of its kind ([`Kind::families`]), in that order.
    fn values(&self) -> Vec<u64>;
    /// For the [`Registry`] to hand back the concrete type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// The values of `fields` now, in order (for [`SourceCounters::values`]).
pub fn load(fields: &[&AtomicU64]) -> Vec<u64> {
    fields.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// A source's connection, as its kind's [`SourceHealth`] derives it from the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    Connecting,
    Connected,
    Disconnected,
}

impl SourceState {
    /// Every state, in the order the `edge_source_state` series are rendered.
    pub const ALL: [SourceState; 3] = [
        SourceState::Connecting,
        SourceState::Connected,
        SourceState::Disconnected,
    ];

    /// The `state` label value and the gauge value (1 connected, 0 otherwise).
    pub fn name(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Connected => "connected",
            SourceState::Disconnected => "disconnected",
        }
    }
}

/// A kind's health rule for one source: a state machine over samples of its counters. No I/O.
pub trait SourceHealth: Debug + Send {
    /// Folds in one sample (`values` as [`SourceCounters::values`]) taken at `now`.
    fn observe(&mut self, now: Instant, values: &[u64]) -> SourceState;
}

/// A registry entry's key: the kind's name and the source's name.
type Key = (&'static str, String);

/// The counters of every source, by kind and name; lives as long as the process.
#[derive(Debug, Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<Key, Arc<dyn SourceCounters>>>,
    /// Sparkplug B counters, per edge node (labelled by node, so not a [`Kind`] family).
    pub sparkplug: Arc<sparkplug::metrics::Metrics>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Arc<dyn SourceCounters>>> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of source `name` of `kind`, created on first use.
    pub fn counters<C: SourceCounters + Default>(&self, kind: &Kind, name: &str) -> Arc<C> {
        let mut map = self.map();
        let key = (kind.name, name.to_owned());
        if let Some(found) = map
            .get(&key)
            .and_then(|c| c.clone().into_any().downcast().ok())
        {
            return found;
        }
        let fresh = Arc::new(C::default());
        map.insert(key, fresh.clone());
        fresh
    }

    /// Forgets the sources `config` no longer has.
    pub fn retain(&self, config: &Config) {
        let keep: Vec<Key> = KINDS
            .iter()
            .flat_map(|k| (k.names)(config).into_iter().map(|n| (k.name, n)))
            .collect();
        self.map().retain(|key, _| keep.contains(key));
        self.sparkplug.retain(|source| {
            config.mqtt.iter().any(|m| {
                m.name.get_ref() == source
                    && m.payload.format == crate::config::PayloadFormat::SparkplugB
            })
        });
    }

    /// The counters of every source of `kind`, as their concrete type (for a kind's gauges,
    /// which are not counter families), sorted by name.
    pub fn of_kind<C: SourceCounters>(&self, kind: &Kind) -> Vec<(String, Arc<C>)> {
        let map = self.map();
        let of_kind = map.iter().filter(|((k, _), _)| *k == kind.name);
        of_kind
            .filter_map(|((_, name), c)| {
                Some((name.clone(), c.clone().into_any().downcast().ok()?))
            })
            .collect()
    }

    /// Every source's kind, name and counter values now (sorted by kind, then name).
    pub fn sample(&self) -> Vec<(&'static str, String, Vec<u64>)> {
        self.map()
            .iter()
            .map(|((kind, name), c)| (*kind, name.clone(), c.values()))
            .collect()
    }
}

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// Every kind's counter families, each with one sample per source of that kind (families are
/// written even when no source of the kind is configured), then the serial sources' clock
/// offset gauge ([`serial::clock`]), then the Sparkplug B families.
pub fn render_families(o: &mut Out, registry: &Registry) {
    let sample = registry.sample();
    for kind in KINDS {
        for (i, family) in kind.families.iter().enumerate() {
            o.head(family.name, "counter", family.help);
            for (_, source, values) in sample.iter().filter(|s| s.0 == kind.name) {
                let labels = format!("source=\"{}\"", escape(source));
                o.labelled(family.name, &labels, values.get(i).copied().unwrap_or(0));
            }
        }
    }
    serial::clock::render(o, registry);
    registry.sparkplug.render(o);
}

/// The `edge_source_connected` and `edge_source_state` gauges of every source.
pub fn render_states(o: &mut Out, states: &BTreeMap<String, SourceState>) {
    o.family(
        "edge_source_connected",
        "gauge",
        "1 while the source is connected (see ops::health for how it is derived).",
        states.iter().map(|(name, state)| {
            let connected = u8::from(*state == SourceState::Connected);
            (format!("source=\"{}\"", escape(name)), connected)
        }),
    );
    o.family(
        "edge_source_state",
        "gauge",
        "The source's connection state (one series per state, 1 for the current).",
        states.iter().flat_map(|(name, state)| {
            SourceState::ALL.map(|s| {
                let labels = format!("source=\"{}\",state=\"{}\"", escape(name), s.name());
                (labels, u8::from(*state == s))
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// One source of each kind (inline tables: the same file as `[agent]`, `[[mqtt]]`, ...).
    const CONFIG: &str = r#"
agent = { id = "gw", data_dir = "/unused" }
mqtt = [{ name = "plant", url = "mqtt://127.0.0.1:1", client_id = "c", payload = { format = "json", value = "/v" }, subscribe = [{ topic = "s/+/v", qos = 1 }] }]
serial = [{ name = "rs485", path = "/dev/null", framing = "line" }]
modbus = [{ name = "plc", tcp = "127.0.0.1:1", block = [{ kind = "holding", address = 0, count = 1, register = [{ name = "r", address = 0, type = "u16" }] }] }]
"#;

    #[test]
    fn every_kind_names_its_own_counter_families() {
        let mut seen = Vec::new();
        for kind in KINDS {
            assert!(
                kind.name.chars().all(|c| c.is_ascii_lowercase()),
                "{kind:?}"
            );
            for f in kind.families {
                let prefix = format!("edge_{}_", kind.name);
                assert!(f.name.starts_with(&prefix), "{} of {kind:?}", f.name);
                assert!(f.name.ends_with("_total"), "{} is a counter", f.name);
                assert!(!seen.contains(&f.name), "{} twice", f.name);
                seen.push(f.name);
            }
        }
    }

    #[test]
    fn counters_are_kept_by_name_across_reloads_until_a_source_leaves_the_file() {
        let config =
            Config::from_toml(Path::new("t.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
        let r = Registry::default();
        let a: Arc<mqtt::MqttCounters> = r.counters(&mqtt::KIND, "plant");
        a.received.store(5, Ordering::Relaxed);
        let again: Arc<mqtt::MqttCounters> = r.counters(&mqtt::KIND, "plant");
        assert!(Arc::ptr_eq(&a, &again));
        let _: Arc<serial::SerialCounters> = r.counters(&serial::KIND, "rs485");
        let _: Arc<serial::SerialCounters> = r.counters(&serial::KIND, "gone");
        r.retain(&config);
        let names: Vec<_> = r.sample().into_iter().map(|(k, n, _)| (k, n)).collect();
        assert_eq!(
            names,
            [("mqtt", "plant".to_owned()), ("serial", "rs485".to_owned())]
        );
        assert_eq!(r.sample()[0].2, [5, 0, 0, 0, 0]);
        let _: Arc<modbus::ModbusCounters> = r.counters(&modbus::KIND, "plc");
        assert_eq!(r.sample()[0].0, "modbus", "sorted by kind");
        assert_eq!(r.sample()[0].2, [0; 7]);
    }

    #[test]
    fn the_configured_list_spawns_one_task_per_source_of_every_kind() {
        let config =
            Config::from_toml(Path::new("t.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::default();
        let (submissions, _rx) = mpsc::channel(1);
        let dir = tempfile::tempdir().unwrap();
        let database = Database::create(dir.path().join("db.redb")).unwrap();
        let cx = Context {
            mapper: Arc::new(Mapper::new(&config)),
            submissions,
            cancel: CancellationToken::new(),
            registry: &registry,
            database: Arc::new(database),
        };
        assert_eq!(spawn_all(&config, &cx).len(), 3);
        assert_eq!(registry.sample().len(), 3, "counters registered at spawn");
    }
}
