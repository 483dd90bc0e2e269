//! `edge-agent`: the service that runs on the gateway.
//!
//! Data path (see `DESIGN.md` section 4): sources -> ingest log -> windows -> outbox -> forwarder.
//! Stages talk through bounded channels and redb tables, never through shared mutable state.
//!
//! # Map (modules arrive with their issues)
//!
//! | module | stage |
//! | --- | --- |
//! | `config` | the TOML file: sources, sensor mapping, pipelines, quota; `check-config` |
//! | `source::mqtt`, `source::serial` | turn bytes into readings, owe an ack to the source |
//! | `ingest` | group-committing redb writer; acks released only after commit; dedupe |
//! | `window` | event-time windows, watermarks, partial aggregates |
//! | `outbox` | dense-sequence records waiting for Kafka |
//! | `forward` | transactional Kafka producer, progress marker, trim after commit |
//! | `ops` | metrics, health, systemd notify and watchdog, `inspect` |
#![forbid(unsafe_code)]

/// The agent's version, as reported by `--version` and in logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
