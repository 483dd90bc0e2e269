//! The merge state machine of one input partition: partials in, finals and state changes out.
//! No I/O, no clock: time comes in as arguments, so every decision is replayable.
//!
//! # Rules
//!
//! - **Windows.** A partial for `[start, end)` merges into the window of its group key (see
//!   [`crate::group`]): the same window, or with `rollup_ms` the roll-up window
//!   `[floor(start / r) * r, + r)`, which must contain the partial's window exactly (a partial
//!   straddling two roll-up windows is refused: it cannot be split).
//! - **Gateways.** Each agent seen on the partition has a watermark (the largest `watermark_ms`
//!   of its partials) and a last-seen time (the largest Kafka record timestamp of its partials:
//!   the agent's producer sets it when it sends, or the broker with `LogAppendTime`).
//! - **Time.** The partition's stream time is the largest record timestamp seen. A gateway is
//!   *active* while `now - last_seen <= idle_timeout_ms`, where `now` is the stream time, or the
//!   consumer's wall clock when the loop has caught up with the partition ([`PartitionState::tick`]).
//!   Using record time while catching up means a consumer restarted after a long stop does not
//!   see every gateway as idle and finalize everything early; the wall clock at the end means a
//!   partition whose gateways all went quiet still finalizes.
//! - **Finalization.** `F` = the minimum watermark over the active gateways (no active gateway:
//!   no bound). A window is final once `F >= end`; it is emitted with revision 0.
//! - **Revisions.** A partial for a final window merges into it and emits the merged window with
//!   `revision + 1` (partials are deltas: see `edge_protocol::partial`). A partial for a window
//!   never seen whose end is already `<= F` (a gateway back after hours offline with data nobody
//!   else had) opens it final at once: revision 0.
//! - **Horizon.** Final windows are kept while `end > clock - horizon_ms`, `clock` =
//!   `min(F, max gateway watermark)`. Past that they are dropped (a changelog tombstone) and the
//!   partition's *frontier* moves to `clock - horizon_ms`. A partial for a window that is not
//!   kept and ends at or before the frontier may belong to a window already emitted and dropped:
//!   it is **refused** ([`Refused::BeyondHorizon`]), counted, and dead-lettered by the loop with
//!   its reason, never merged into a fresh window with a wrong revision, never silently dropped.
//!
//! # Memory bound (per partition)
//!
//! At most `max_open_windows` open and `max_finalized_windows` final windows and
//! `max_gateways` gateways (and contributing ids per window). Past a cap: the open window with
//! the earliest end is finalized early (counted as forced; later partials revise it); the final
//! window with the earliest end is dropped and the frontier moves to its end (counted); the
//! gateway seen longest ago is forgotten (counted; it re-joins with its next partial). A window
//! costs about its aggregate (at most ~4.3 KiB with a full sketch, typically a few hundred
//! bytes) plus its group key and gateway ids: see the benchmark for measured figures.
//!
//! # Determinism
//!
//! Given the same partials in the same order (a partition is ordered) and no wall-clock ticks,
//! the emitted finals are the same however the stream is cut into batches: revisions count
//! partials, not emissions, and the loop emits only the newest state of a key per batch. The
//! state is fully described by [`Changes`]: replaying them into [`PartitionState::restore`]
//! yields a state that behaves identically (property-tested below).

use std::collections::{BTreeMap, BTreeSet};

use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::Partial;
use serde::{Deserialize, Serialize};

/// The state machine's settings (from `[window]`, `[revisions]`, `[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub rollup_ms: Option<i64>,
    pub idle_timeout_ms: i64,
    pub revisions: bool,
    pub horizon_ms: i64,
    pub max_open_windows: usize,
    pub max_finalized_windows: usize,
    pub max_gateways: usize,
}

/// A group's window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub group: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The merged state of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    pub aggregate: Aggregate,
    /// 0 until final; then the number of partials merged after finalization.
    pub revision: u32,
    pub finalized: bool,
    /// Contributing agents (at most `max_gateways`; `gateways_truncated` counts the rest).
    pub gateways: BTreeSet<String>,
    pub gateways_truncated: u32,
    /// Partials merged into it.
    pub partials: u64,
}

/// What the partition knows of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub watermark_ms: i64,
    pub last_seen_ms: i64,
}

/// Partition-wide clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub stream_time_ms: i64,
    /// Windows ending at or before it were dropped (or never kept).
    pub frontier_ms: i64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            stream_time_ms: i64::MIN,
            frontier_ms: i64::MIN,
        }
    }
}

/// Why a partial was not merged (the loop dead-letters it with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the partial's window does not fit one roll-up window")]
    OutsideRollup,
    #[error("the window was final and has been dropped past the revision horizon")]
    BeyondHorizon,
    #[error("the window is final and revisions are disabled")]
    AfterFinal,
}

/// Event counters (per instance, not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub merged: u64,
    pub finalized: u64,
    pub revisions: u64,
    pub forced_finalizations: u64,
    pub evicted_by_cap: u64,
    pub evicted_by_horizon: u64,
    pub gateways_forgotten: u64,
    pub refused: u64,
}

/// What changed since the last [`PartitionState::take_changes`]: the changelog records and the
/// finals to emit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// `None`: dropped (a tombstone).
    pub windows: Vec<(WindowKey, Option<WindowState>)>,
    pub gateways: Vec<(String, Option<Gateway>)>,
    pub meta: Option<Meta>,
    /// The newest state of each window emitted in this batch.
    pub finals: Vec<(WindowKey, WindowState)>,
}

/// One partition's state.
#[derive(Debug, Clone)]
pub struct PartitionState {
    settings: Settings,
    open: BTreeMap<WindowKey, WindowState>,
    open_by_end: BTreeSet<(i64, WindowKey)>,
    finalized: BTreeMap<WindowKey, WindowState>,
    finalized_by_end: BTreeSet<(i64, WindowKey)>,
    gateways: BTreeMap<String, Gateway>,
    meta: Meta,
    dirty_windows: BTreeSet<WindowKey>,
    dirty_gateways: BTreeSet<String>,
    dirty_meta: bool,
    emits: BTreeMap<WindowKey, WindowState>,
    pub counters: Counters,
}

impl PartitionState {
    pub fn new(settings: Settings) -> PartitionState {
        PartitionState {
            settings,
            open: BTreeMap::new(),
            open_by_end: BTreeSet::new(),
            finalized: BTreeMap::new(),
            finalized_by_end: BTreeSet::new(),
            gateways: BTreeMap::new(),
            meta: Meta::default(),
            dirty_windows: BTreeSet::new(),
            dirty_gateways: BTreeSet::new(),
            dirty_meta: false,
            emits: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    /// Rebuilds a state from its changelog records (the newest value of each key).
    pub fn restore(
        settings: Settings,
        windows: impl IntoIterator<Item = (WindowKey, WindowState)>,
        gateways: impl IntoIterator<Item = (String, Gateway)>,
        meta: Option<Meta>,
    ) -> PartitionState {
        let mut s = PartitionState::new(settings);
        for (key, state) in windows {
            s.insert(key, state);
        }
        s.gateways.extend(gateways);
        s.meta = meta.unwrap_or_default();
        s
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
    pub fn finalized_windows(&self) -> usize {
        self.finalized.len()
    }
    pub fn meta(&self) -> Meta {
        self.meta
    }

    fn insert(&mut self, key: WindowKey, state: WindowState) {
        if state.finalized {
            self.finalized_by_end.insert((key.end_ms, key.clone()));
            self.finalized.insert(key, state);
        } else {
            self.open_by_end.insert((key.end_ms, key.clone()));
            self.open.insert(key, state);
        }
    }

    /// The window a partial of `group` belongs to.
    fn window_of(&self, group: &str, p: &Partial) -> Result<WindowKey, Refused> {
        let (start_ms, end_ms) = match self.settings.rollup_ms {
            None => (p.window_start_ms, p.window_end_ms),
            Some(r) => {
                let start = p.window_start_ms.div_euclid(r).checked_mul(r);
                let end = start.and_then(|s| s.checked_add(r));
                match (start, end) {
                    (Some(s), Some(e)) if p.window_end_ms <= e => (s, e),
                    _ => return Err(Refused::OutsideRollup),
                }
            }
        };
        Ok(WindowKey {
            group: group.to_owned(),
            start_ms,
            end_ms,
        })
    }

    /// Merges one partial (its group key already computed) received in a record with timestamp
    /// `record_ts_ms`. A refused partial changes nothing.
    pub fn apply(&mut self, group: &str, p: &Partial, record_ts_ms: i64) -> Result<(), Refused> {
        let key = self.window_of(group, p)?;
        let agent = p.agent.as_str();
        if let Some(w) = self.open.get_mut(&key) {
            add(w, p, agent, self.settings.max_gateways);
        } else if let Some(w) = self.finalized.get_mut(&key) {
            if !self.settings.revisions {
                self.counters.refused += 1;
                return Err(Refused::AfterFinal);
            }
            add(w, p, agent, self.settings.max_gateways);
            w.revision = w.revision.saturating_add(1);
            self.counters.revisions += 1;
            self.emits.insert(key.clone(), w.clone());
        } else if key.end_ms <= self.meta.frontier_ms {
            self.counters.refused += 1;
            return Err(Refused::BeyondHorizon);
        } else {
            let mut w = WindowState {
                aggregate: Aggregate::new(),
                revision: 0,
                finalized: false,
                gateways: BTreeSet::new(),
                gateways_truncated: 0,
                partials: 0,
            };
            add(&mut w, p, agent, self.settings.max_gateways);
            self.insert(key.clone(), w);
            if self.open.len() > self.settings.max_open_windows {
                if let Some((_, oldest)) = self.open_by_end.first().cloned() {
                    self.finalize(oldest);
                    self.counters.forced_finalizations += 1;
                }
            }
        }
        self.counters.merged += 1;
        self.dirty_windows.insert(key);
        self.see_gateway(agent, p.watermark_ms, record_ts_ms);
        if record_ts_ms > self.meta.stream_time_ms {
            self.meta.stream_time_ms = record_ts_ms;
        }
        self.dirty_meta = true;
        self.advance(self.meta.stream_time_ms);
        Ok(())
    }

    /// Advances with the wall clock `now_ms` (the loop calls it when it has caught up with the
    /// partition): gateways silent longer than the idle timeout stop holding windows back.
    pub fn tick(&mut self, now_ms: i64) {
        self.advance(now_ms.max(self.meta.stream_time_ms));
    }

    fn see_gateway(&mut self, agent: &str, watermark_ms: i64, seen_ms: i64) {
        if let Some(g) = self.gateways.get_mut(agent) {
            g.watermark_ms = g.watermark_ms.max(watermark_ms);
            g.last_seen_ms = g.last_seen_ms.max(seen_ms);
        } else {
            if self.gateways.len() >= self.settings.max_gateways {
                let stalest = self
                    .gateways
                    .iter()
                    .min_by_key(|(id, g)| (g.last_seen_ms, (*id).clone()))
                    .map(|(id, _)| id.clone());
                if let Some(id) = stalest {
                    self.gateways.remove(&id);
                    self.dirty_gateways.insert(id);
                    self.counters.gateways_forgotten += 1;
                }
            }
            let g = Gateway {
                watermark_ms,
                last_seen_ms: seen_ms,
            };
            self.gateways.insert(agent.to_owned(), g);
        }
        self.dirty_gateways.insert(agent.to_owned());
    }

    /// `F`: the minimum watermark of the gateways active at `now_ms`; `None`: none is active.
    pub fn finalization_watermark(&self, now_ms: i64) -> Option<i64> {
        let since = now_ms.saturating_sub(self.settings.idle_timeout_ms);
        self.gateways
            .values()
            .filter(|g| g.last_seen_ms >= since)
            .map(|g| g.watermark_ms)
            .min()
    }

    fn advance(&mut self, now_ms: i64) {
        let f = self.finalization_watermark(now_ms);
        let bound = f.unwrap_or(i64::MAX);
        while let Some((end, key)) = self.open_by_end.first().cloned() {
            if end > bound {
                break;
            }
            self.finalize(key);
        }
        let max_wm = self.gateways.values().map(|g| g.watermark_ms).max();
        let clock = match (f, max_wm) {
            (Some(f), Some(m)) => f.min(m),
            (None, Some(m)) => m,
            (_, None) => return,
        };
        let frontier = clock.saturating_sub(self.settings.horizon_ms);
        if frontier > self.meta.frontier_ms {
            self.meta.frontier_ms = frontier;
            self.dirty_meta = true;
        }
        while let Some((end, key)) = self.finalized_by_end.first().cloned() {
            if end > self.meta.frontier_ms {
                break;
            }
            self.drop_final(&key);
            self.counters.evicted_by_horizon += 1;
        }
    }

    fn finalize(&mut self, key: WindowKey) {
        self.open_by_end.remove(&(key.end_ms, key.clone()));
        let Some(mut w) = self.open.remove(&key) else {
            return;
        };
        w.finalized = true;
        self.counters.finalized += 1;
        self.emits.insert(key.clone(), w.clone());
        self.dirty_windows.insert(key.clone());
        self.insert(key, w);
        if self.finalized.len() > self.settings.max_finalized_windows {
            if let Some((end, oldest)) = self.finalized_by_end.first().cloned() {
                self.drop_final(&oldest);
                self.counters.evicted_by_cap += 1;
                if end > self.meta.frontier_ms {
                    self.meta.frontier_ms = end;
                    self.dirty_meta = true;
                }
            }
        }
    }

    fn drop_final(&mut self, key: &WindowKey) {
        self.finalized_by_end.remove(&(key.end_ms, key.clone()));
        self.finalized.remove(key);
        self.dirty_windows.insert(key.clone());
    }

    /// The changelog records and finals accumulated since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let windows = std::mem::take(&mut self.dirty_windows)
            .into_iter()
            .map(|k| {
                let v = self
                    .open
                    .get(&k)
                    .or_else(|| self.finalized.get(&k))
                    .cloned();
                (k, v)
            })
            .collect();
        let gateways = std::mem::take(&mut self.dirty_gateways)
            .into_iter()
            .map(|id| {
                let g = self.gateways.get(&id).copied();
                (id, g)
            })
            .collect();
        let meta = std::mem::take(&mut self.dirty_meta).then_some(self.meta);
        let finals = std::mem::take(&mut self.emits).into_iter().collect();
        Changes {
            windows,
            gateways,
            meta,
            finals,
        }
    }
}

fn add(w: &mut WindowState, p: &Partial, agent: &str, max_gateways: usize) {
    w.aggregate.merge(&p.aggregate);
    w.partials = w.partials.saturating_add(1);
    if !w.gateways.contains(agent) {
        if w.gateways.len() < max_gateways {
            w.gateways.insert(agent.to_owned());
        } else {
            w.gateways_truncated = w.gateways_truncated.saturating_add(1);
        }
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
