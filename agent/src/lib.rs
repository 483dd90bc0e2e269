//! `edge-agent`: the service that runs on the gateway.
//!
//! Data path (see `docs/DESIGN.md` section 4): sources -> ingest log -> windows -> outbox -> forwarder.
//! Stages talk through bounded channels and redb tables, never through shared mutable state.
//!
//! # Map
//!
//! | module | stage |
//! | --- | --- |
//! | [`clock`] | the wall clock in ms since the Unix epoch (one `unix_ms` for every stage) |
//! | [`config`] | the TOML file: sources, sensor mapping, pipelines, quota; `check-config` |
//! | [`mapping`] | topic patterns, id templates, calibration and range checks (no I/O) |
//! | [`reading`] | the `Reading` value and its stored encoding |
//! | [`source`] | the seam every source kind plugs into (`source::Kind`: spawning, counters, metric families, health rule; the `KINDS` list); `payload` parsers (no I/O); `mqtt` (rumqttc, persistent session, manual acks after commit); `serial` (link frames with cumulative acks after commit, or text lines) and its `link_acks` state machine |
//! | [`store`] | the one owner of the redb file: every table, the `meta` keys, `StoreError` and its retry rule, the byte codec, `store/FORMAT.md` |
//! | [`ingest`] | the redb ingest log (`IngestLog`) and its group-committing `writer`; acks released only after commit; dedupe; quota |
//! | [`service`] | wiring for `edge-agent run`: writer, every configured source (from `source::KINDS`), stage, forwarder; one cancellation token, one tracker; knows nothing of ops |
//! | [`stage`] | the windowing task: ingest log -> windows -> outbox in one transaction per batch, with cursors, window state and trimming (exactly-once reasoning) |
//! | [`window`] | event-time windows per pipeline: the pure state machine (watermark per series, idle close, late output, revisions, open-window cap) |
//! | [`outbox`] | dense-sequence records waiting for Kafka |
//! | [`wake`] | a stage tells the next one it committed rows (writer -> stage -> forwarder), so an idle agent sleeps instead of polling |
//! | [`forward`] | transactional Kafka producer, progress marker in a compacted topic, trim after commit |
//! | [`telemetry`] | the live counters and flags the stages write and ops reads (`Telemetry`, the sources' registry); survives reloads |
//! | [`ops`] | signals (drain within a bound, SIGHUP reload), Prometheus metrics, `/healthz` `/readyz` `/inspect`, systemd notify and watchdog; depends on telemetry, service and source, never the other way |
//! | [`inspect`] | `edge-agent inspect`: the buffer state, from the file read-only or from the running agent |
//!
//! # Adding a source kind (Modbus RTU/TCP, Sparkplug B, ...)
//!
//! One new file, its config section and a list entry; nothing in `service`, `ops` or
//! `telemetry` changes. In detail (see `source/mod.rs`):
//!
//! 1. `source/<kind>.rs`: the task, its counters (`impl source::SourceCounters`), its metric
//!    families, its health rule (`impl source::SourceHealth`) and `pub static KIND: Kind`.
//! 2. `config.rs`: its `[[<kind>]]` table (a `Vec` on `Config`, validated, names unique among
//!    all sources); a `mapping::Origin` variant if its readings are addressed differently.
//! 3. `source/mod.rs`: `pub mod <kind>;` and `&<kind>::KIND` in `KINDS`.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod forward;
pub mod ingest;
pub mod inspect;
pub mod mapping;
pub mod ops;
pub mod outbox;
pub mod preflight;
pub mod reading;
pub mod service;
pub mod source;
pub mod stage;
pub mod store;
pub mod telemetry;
pub mod wake;
pub mod window;

/// The agent's version, as reported by `--version` and in logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
