//! Every table of the agent's database, declared once. Layouts: `FORMAT.md`. The comment on
//! each names who writes it; anyone may read any table.

use redb::TableDefinition;

/// `u64` seq -> Reading record v1. Written by the ingest writer; trimmed by the stage.
pub const READINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("readings");
/// `u64` dead-letter seq -> DeadLetter record v1. Written by the ingest writer; trimmed by the
/// stage.
pub const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// Dedupe key bytes -> `u64` seq of the reading that first carried it. Ingest writer.
pub const DEDUPE: TableDefinition<&[u8], u64> = TableDefinition::new("dedupe");
/// `u64` seq -> `inserted_unix_ms` ++ dedupe key: the index's eviction order as agents before
/// v0.2 wrote it, one row per key. The ingest writer evicts its rows first and writes none.
pub const DEDUPE_AGE: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_age");
/// `u64` first seq -> dedupe group v1: the keys one ingest commit inserted, when: the index's
/// eviction order since v0.2, one row per commit. Ingest writer.
pub const DEDUPE_GROUP: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_group");
/// Sensor id -> last device seq seen (upstream gap counting). Ingest writer.
pub const UPSTREAM_SEQ: TableDefinition<&str, u64> = TableDefinition::new("upstream_seq");
/// Source-owned key -> bytes: state a source keeps durable beside its readings, written only
/// through a submission (`Submission::state`) by the ingest writer, so it commits with the
/// message that carried it. Keys start with the owning kind (`sparkplug/...`: the Sparkplug B
/// alias tables, `source/sparkplug/aliases.rs`).
pub const SOURCE_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("source_state");
/// Name -> `u64`: counters, sequences and cursors of every stage (keys: [`super::meta`]).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Pipeline name -> the window shape its series rows were written with. Windowing stage.
pub const WINDOW_SHAPE: TableDefinition<&str, &[u8]> = TableDefinition::new("window_shape");
/// (pipeline, series) -> one series' window state. Windowing stage.
pub const WINDOW_SERIES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("window_series");
/// `u64` outbox seq -> outbox record v1. Appended by the stage, trimmed by the forwarder.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Name -> bytes: the forwarder's own values (key [`super::meta::INSTANCE_ID`]).
pub const FORWARD_META: TableDefinition<&str, &[u8]> = TableDefinition::new("forward_meta");
