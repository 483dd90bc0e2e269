//! `edge-consumer`: finishes the gateways' partial aggregates (see `DESIGN.md` section 6).
//!
//! # Map (modules arrive with the consumer issue)
//!
//! | module | holds |
//! | --- | --- |
//! | `config` | input topics, group id, output topic, grouping, roll-up, idle timeout |
//! | `merge` | partials merged by (group key, window); per-gateway watermarks; finalization and revisions |
//! | `state` | per-partition state, its compacted changelog and restore on assignment |
//! | `run` | the transactional consume-merge-produce loop (outputs, changelog, offsets in one transaction) |
#![forbid(unsafe_code)]

/// The consumer's version, as reported by `--version` and in logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
