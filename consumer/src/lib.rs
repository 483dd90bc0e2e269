//! `edge-consumer`: finishes the gateways' partial aggregates (see `docs/DESIGN.md` section 6).
//!
//! # Map
//!
//! | module | holds | I/O |
//! | --- | --- | --- |
//! | [`config`] | the TOML file: Kafka, topics, grouping, roll-up, idle timeout, revisions, limits | file |
//! | [`group`] | series key -> group key (glob rules with captures) | none |
//! | [`merge`] | one partition's state machine: merge by (group, window), per-gateway watermarks, finalization, revisions, horizon, caps | none |
//! | [`changelog`] | the changelog topic's keys and versioned values | none |
//! | [`output`] | the finals' JSON and keys (the record type is `edge_protocol::contract::Final`) | none |
//! | [`records`] | decoding a partial (postcard or JSON), grouping and merging it; dead letters | none |
//! | [`kafka`] | client settings, topic checks and creation, error classes (on `edge_kafka`, shared with the agent) | Kafka |
//! | [`restore`] | a new owner rebuilds a partition's state from the changelog | Kafka |
//! | [`run`] | the loop: one poll batch = one transaction (finals, changelog, dead letters, offsets) | Kafka |
//! | [`telemetry`] | the loop's live counters, gauges and phase, read from other threads | none |
//! | [`reload`] | SIGHUP reload: which tables a reload may change (`[grouping]` only), the slot the loop takes new rules from between transactions | none |
//! | [`ops`] | `/metrics` (Prometheus), `/healthz`, `/readyz` on a loopback port, from the loop's metrics; signals, systemd notify and watchdog | HTTP, signals |
//!
//! Exactly-once reasoning lives in [`run`] and [`restore`]; the rules of finalization, idle
//! gateways, revisions and the memory bound in [`merge`].
#![forbid(unsafe_code)]

pub mod changelog;
pub mod config;
pub mod group;
pub mod kafka;
pub mod merge;
pub mod ops;
pub mod output;
pub mod records;
pub mod reload;
pub mod restore;
pub mod run;
pub mod telemetry;

/// The consumer's version, as reported by `--version` and in logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
