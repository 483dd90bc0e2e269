//! The merge state machine of one input partition: partials in, finals and state changes out.
//! No I/O, no clock: time comes in as arguments, so every decision is replayable.
//!
//! # Rules
//!
//! - **Windows.** A partial for `[start, end)` merges into the window of its group key (see
//!   [`crate::group`]): the same window, or with `rollup_ms` the roll-up window
//!   `[floor(start / r) * r, + r)`, which must contain the partial's window exactly (a partial
//!   straddling two roll-up windows is refused: it cannot be split).
//! - **Sources.** A source is one (agent, series) pair. It has a watermark (the largest
//!   `watermark_ms` of its partials) and a last-seen time (the largest Kafka record timestamp of
//!   its partials: set by the agent's producer when it sends, or by the broker with
//!   `LogAppendTime`). Watermarks are kept per series, not per agent, because the agent's
//!   watermark is per series: an agent's partial for series `t1` up to time T says nothing about
//!   its partial for `t2` of the same window, which may be the next record.
//! - **Time.** The partition's stream time is the largest record timestamp seen. A source is
//!   *active* while `now - last_seen <= idle_timeout_ms`, where `now` is the stream time, or the
//!   consumer's wall clock when the loop has caught up with the partition ([`PartitionState::tick`]).
//!   Record time while catching up means a consumer restarted after a long stop does not see
//!   every gateway as idle and finalize everything early; the wall clock at the end means a
//!   partition whose gateways all went quiet still finalizes. Idleness is re-checked for every
//!   group each time stream time advances by `idle_timeout_ms / 8` (and at every tick), so a
//!   silent gateway stops holding windows back at most that much later than its timeout.
//! - **Finalization.** For group `G`, `F(G)` = the minimum watermark over the active sources
//!   whose series belongs to `G` (none active: no bound). A window of `G` is final once
//!   `F(G) >= end`; it is emitted with revision 0. A source not seen yet holds nothing back (so
//!   right after a cold start the first window may be final before every gateway's partial:
//!   later partials revise it).
//! - **Revisions.** A partial for a final window merges into it and emits the merged window with
//!   `revision + 1` (partials are deltas: see `edge_protocol::partial`). A partial for a window
//!   never seen whose end is already `<= F(G)` (a gateway back after hours offline with data
//!   nobody else had) opens it final at once: revision 0.
//! - **Horizon.** The partition's event-time clock is the minimum watermark of all active
//!   sources (the largest watermark when none is active). Final windows are kept while
//!   `end > clock - horizon_ms`; past that they are dropped (a changelog tombstone) and the
//!   partition's *frontier* moves to `clock - horizon_ms`. A partial for a window that is not
//!   kept and ends at or before the frontier may belong to a window already emitted and dropped:
//!   it is **refused** ([`Refused::BeyondHorizon`]), counted, and dead-lettered by the loop with
//!   its reason, never merged into a fresh window with a wrong revision, never silently dropped.
//!
//! # Memory bound (per partition)
//!
//! At most `max_open_windows` open and `max_finalized_windows` final windows and
//! `max_sources` sources (and contributing agent ids per window). Past a cap: the open window
//! with the earliest end is finalized early (counted as forced; later partials revise it); the
//! final window with the earliest end is dropped and the frontier moves to its end (counted);
//! the source seen longest ago is forgotten (counted; it re-joins with its next partial). A
//! window costs a few hundred bytes: its aggregate (the sketch holds only its used bins), its
//! agent ids and its entries in the window indexes; the group name is shared by all of the
//! group's windows. The benchmark prints the measured figure (about 0.8 KB of RSS per open
//! window with 4 readings).
//!
//! # Determinism
//!
//! Given the same partials in the same order (a partition is ordered) and no wall-clock ticks,
//! the emitted finals are the same however the stream is cut into batches: revisions count
//! partials, not emissions, and the loop emits only the newest state of a key per batch. The
//! state is fully described by [`Changes`]: replaying them into [`PartitionState::restore`]
//! yields a state that behaves identically (property-tested below).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

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
    pub max_sources: usize,
}

/// A group's window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub group: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A window's key borrowed from the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRef<'a> {
    pub group: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl WindowRef<'_> {
    pub fn to_owned(self) -> WindowKey {
        WindowKey {
            group: self.group.to_owned(),
            start_ms: self.start_ms,
            end_ms: self.end_ms,
        }
    }
}

impl WindowKey {
    pub fn borrowed(&self) -> WindowRef<'_> {
        WindowRef {
            group: &self.group,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
        }
    }
}

/// The merged state of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    pub aggregate: Aggregate,
    /// 0 until final; then the number of partials merged after finalization.
    pub revision: u32,
    pub finalized: bool,
    /// Contributing agents (at most `max_sources`; `gateways_truncated` counts the rest).
    pub gateways: BTreeSet<String>,
    pub gateways_truncated: u32,
    /// Partials merged into it.
    pub partials: u64,
}

/// One (agent, series) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceKey {
    pub agent: String,
    pub series: String,
}

/// What the partition knows of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub group: String,
    pub watermark_ms: i64,
    pub last_seen_ms: i64,
}

/// A [`Source`] borrowed from the state. Serializes to the same bytes as a [`Source`] with
/// the same fields (postcard writes `&str` and `String` alike), so the changelog encodes it
/// without an owned copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SourceRef<'a> {
    pub group: &'a str,
    pub watermark_ms: i64,
    pub last_seen_ms: i64,
}

impl SourceRef<'_> {
    pub fn to_owned(self) -> Source {
        Source {
            group: self.group.to_owned(),
            watermark_ms: self.watermark_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// Partition-wide clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub stream_time_ms: i64,
    /// Windows ending at or before it were dropped (or never kept).
    pub frontier_ms: i64,
    /// Stream time of the last idleness sweep over every group.
    pub swept_ms: i64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            stream_time_ms: i64::MIN,
            frontier_ms: i64::MIN,
            swept_ms: i64::MIN,
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
    pub sources_forgotten: u64,
    pub refused: u64,
}

/// What changed since the last [`PartitionState::take_changes`]: the changelog records and the
/// finals to emit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// `None`: dropped (a tombstone).
    pub windows: Vec<(WindowKey, Option<WindowState>)>,
    pub sources: Vec<(SourceKey, Option<Source>)>,
    pub meta: Option<Meta>,
    /// The newest state of each window emitted in this batch.
    pub finals: Vec<(WindowKey, WindowState)>,
}

/// One change handed out by [`PartitionState::take_changes_with`]; `None`: dropped (a
/// changelog tombstone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    Window(WindowRef<'a>, Option<&'a WindowState>),
    Source(&'a SourceKey, Option<SourceRef<'a>>),
    Meta(Meta),
    /// The newest state of a window emitted in this batch.
    Final(WindowRef<'a>, &'a WindowState),
}

/// A window inside the state: the group's interned name (cloning it is a reference count, not
/// an allocation) and the bounds. Ordered like [`WindowKey`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Wk {
    group: Name,
    start_ms: i64,
    end_ms: i64,
}

impl Wk {
    fn borrowed(&self) -> WindowRef<'_> {
        WindowRef {
            group: &self.group,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
        }
    }
}

/// The state's hash maps: foldhash (seeded per process) instead of SipHash, which was a tenth
/// of the merge's time; keys are names from our own agents, so the weaker flooding resistance
/// is acceptable (the caps bound every map anyway).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// An interned group name.
type Name = Arc<str>;

/// A source inside the state.
#[derive(Debug, Clone)]
struct Src {
    key: SourceKey,
    group: Name,
    watermark_ms: i64,
    last_seen_ms: i64,
}

impl Src {
    fn borrowed(&self) -> SourceRef<'_> {
        SourceRef {
            group: &self.group,
            watermark_ms: self.watermark_ms,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// One partition's state.
///
/// Layout for the hot path (one partial: one window lookup, one source lookup, one pass over
/// its group's sources): windows and sources live in hash maps; group names are interned
/// (`names`), sources are keyed by one string `len(agent):agent series` built in a reused
/// buffer, so a partial for a known window and source allocates nothing. The ordered sets
/// (`*_by_end`) serve the caps and the horizon; the dirty sets are sorted when taken, so the
/// changelog and the finals come out in key order (deterministic).
#[derive(Debug, Clone)]
pub struct PartitionState {
    settings: Settings,
    names: HashSet<Name>,
    open: HashMap<Wk, WindowState>,
    open_by_end: BTreeSet<(i64, Wk)>,
    open_by_group: HashMap<Name, BTreeSet<(i64, i64)>>,
    finalized: HashMap<Wk, WindowState>,
    finalized_by_end: BTreeSet<(i64, Wk)>,
    sources: HashMap<Box<str>, Src>,
    sources_by_group: HashMap<Name, Vec<Box<str>>>,
    meta: Meta,
    dirty_windows: HashSet<Wk>,
    dirty_sources: HashSet<Box<str>>,
    dirty_meta: bool,
    /// Windows to emit as finals (their newest state is read when the changes are taken).
    emits: HashSet<Wk>,
    /// Emitted windows dropped before the changes were taken: their last state.
    emits_dropped: HashMap<Wk, WindowState>,
    /// Scratch buffer for source keys.
    scratch: String,
    pub counters: Counters,
}

/// The `sources` key of (agent, series): unambiguous for any two strings.
fn source_id(buf: &mut String, agent: &str, series: &str) {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(buf, "{}:{agent}{series}", agent.len());
}

impl PartitionState {
    pub fn new(settings: Settings) -> PartitionState {
        PartitionState {
            settings,
            names: HashSet::default(),
            open: HashMap::default(),
            open_by_end: BTreeSet::new(),
            open_by_group: HashMap::default(),
            finalized: HashMap::default(),
            finalized_by_end: BTreeSet::new(),
            sources: HashMap::default(),
            sources_by_group: HashMap::default(),
            meta: Meta::default(),
            dirty_windows: HashSet::default(),
            dirty_sources: HashSet::default(),
            dirty_meta: false,
            emits: HashSet::default(),
            emits_dropped: HashMap::default(),
            scratch: String::new(),
            counters: Counters::default(),
        }
    }

    /// Rebuilds a state from its changelog records (the newest value of each key).
    pub fn restore(
        settings: Settings,
        windows: impl IntoIterator<Item = (WindowKey, WindowState)>,
        sources: impl IntoIterator<Item = (SourceKey, Source)>,
        meta: Option<Meta>,
    ) -> PartitionState {
        let mut s = PartitionState::new(settings);
        for (key, state) in windows {
            let key = Wk {
                group: s.intern(&key.group),
                start_ms: key.start_ms,
                end_ms: key.end_ms,
            };
            s.insert(key, state);
        }
        for (key, source) in sources {
            let mut id = std::mem::take(&mut s.scratch);
            source_id(&mut id, &key.agent, &key.series);
            let src = Src {
                group: s.intern(&source.group),
                key,
                watermark_ms: source.watermark_ms,
                last_seen_ms: source.last_seen_ms,
            };
            s.insert_source(id.as_str().into(), src);
            s.scratch = id;
        }
        s.meta = meta.unwrap_or_default();
        s
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
    pub fn finalized_windows(&self) -> usize {
        self.finalized.len()
    }
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The interned name of `group`.
    fn intern(&mut self, group: &str) -> Name {
        if let Some(name) = self.names.get(group) {
            return name.clone();
        }
        let name: Name = group.into();
        self.names.insert(name.clone());
        name
    }

    fn insert(&mut self, key: Wk, state: WindowState) {
        if state.finalized {
            self.finalized_by_end.insert((key.end_ms, key.clone()));
            self.finalized.insert(key, state);
        } else {
            self.open_by_end.insert((key.end_ms, key.clone()));
            self.open_by_group
                .entry(key.group.clone())
                .or_default()
                .insert((key.end_ms, key.start_ms));
            self.open.insert(key, state);
        }
    }

    fn insert_source(&mut self, id: Box<str>, src: Src) {
        self.sources_by_group
            .entry(src.group.clone())
            .or_default()
            .push(id.clone());
        self.sources.insert(id, src);
    }

    /// The window a partial of `group` belongs to.
    fn window_of(&mut self, group: &str, p: &Partial) -> Result<Wk, Refused> {
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
        Ok(Wk {
            group: self.intern(group),
            start_ms,
            end_ms,
        })
    }

    /// Merges one partial (its group key already computed) received in a record with timestamp
    /// `record_ts_ms`. A refused partial changes nothing.
    pub fn apply(&mut self, group: &str, p: &Partial, record_ts_ms: i64) -> Result<(), Refused> {
        let key = self.window_of(group, p)?;
        let agent = p.agent.as_str();
        let cap = self.settings.max_sources;
        if let Some(w) = self.open.get_mut(&key) {
            add(w, p, agent, cap);
        } else if let Some(w) = self.finalized.get_mut(&key) {
            if !self.settings.revisions {
                self.counters.refused += 1;
                return Err(Refused::AfterFinal);
            }
            add(w, p, agent, cap);
            w.revision = w.revision.saturating_add(1);
            self.counters.revisions += 1;
            self.emits.insert(key.clone());
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
            add(&mut w, p, agent, cap);
            self.insert(key.clone(), w);
            if self.open.len() > self.settings.max_open_windows {
                if let Some((_, oldest)) = self.open_by_end.first().cloned() {
                    self.finalize(oldest);
                    self.counters.forced_finalizations += 1;
                }
            }
        }
        self.counters.merged += 1;
        let group = key.group.clone();
        self.dirty_windows.insert(key);
        self.see_source(
            agent,
            p.series.as_str(),
            &group,
            p.watermark_ms,
            record_ts_ms,
        );
        if record_ts_ms > self.meta.stream_time_ms {
            self.meta.stream_time_ms = record_ts_ms;
        }
        self.dirty_meta = true;
        let now = self.meta.stream_time_ms;
        let step = (self.settings.idle_timeout_ms / 8).max(1);
        if now.saturating_sub(self.meta.swept_ms) >= step {
            self.meta.swept_ms = now;
            self.sweep(now);
        } else {
            self.finalize_group(&group, now);
        }
        Ok(())
    }

    /// Advances with the wall clock `now_ms` (the loop calls it when it has caught up with the
    /// partition): sources silent longer than the idle timeout stop holding windows back.
    /// A tick changes the state (and so the changelog) only when it finalizes or drops
    /// something: an idle partition writes nothing.
    pub fn tick(&mut self, now_ms: i64) {
        self.sweep(now_ms.max(self.meta.stream_time_ms));
    }

    fn see_source(&mut self, agent: &str, series: &str, group: &Name, wm: i64, seen_ms: i64) {
        let mut id = std::mem::take(&mut self.scratch);
        source_id(&mut id, agent, series);
        if let Some(s) = self.sources.get_mut(id.as_str()) {
            s.watermark_ms = s.watermark_ms.max(wm);
            s.last_seen_ms = s.last_seen_ms.max(seen_ms);
            if s.group != *group {
                // The grouping rules changed (a reload): the source now holds back its new
                // group's windows, no longer its old group's.
                let old = std::mem::replace(&mut s.group, group.clone());
                if let Some(ids) = self.sources_by_group.get_mut(&old) {
                    ids.retain(|i| **i != *id);
                    if ids.is_empty() {
                        self.sources_by_group.remove(&old);
                    }
                }
                self.sources_by_group
                    .entry(group.clone())
                    .or_default()
                    .push(id.as_str().into());
            }
            if !self.dirty_sources.contains(id.as_str()) {
                self.dirty_sources.insert(id.as_str().into());
            }
        } else {
            if self.sources.len() >= self.settings.max_sources {
                let stalest = self
                    .sources
                    .iter()
                    .min_by(|(_, a), (_, b)| {
                        (a.last_seen_ms, &a.key).cmp(&(b.last_seen_ms, &b.key))
                    })
                    .map(|(k, _)| k.clone());
                if let Some(k) = stalest {
                    if let Some(old) = self.sources.remove(&k) {
                        if let Some(ids) = self.sources_by_group.get_mut(&old.group) {
                            ids.retain(|i| *i != k);
                            if ids.is_empty() {
                                self.sources_by_group.remove(&old.group);
                            }
                        }
                    }
                    self.dirty_sources.insert(k);
                    self.counters.sources_forgotten += 1;
                }
            }
            let src = Src {
                key: SourceKey {
                    agent: agent.to_owned(),
                    series: series.to_owned(),
                },
                group: group.clone(),
                watermark_ms: wm,
                last_seen_ms: seen_ms,
            };
            let boxed: Box<str> = id.as_str().into();
            self.dirty_sources.insert(boxed.clone());
            self.insert_source(boxed, src);
        }
        self.scratch = id;
    }

    fn is_active(&self, last_seen_ms: i64, now_ms: i64) -> bool {
        last_seen_ms >= now_ms.saturating_sub(self.settings.idle_timeout_ms)
    }

    /// `F(group)`: the minimum watermark of the group's sources active at `now_ms`; `None`:
    /// none is active.
    pub fn finalization_watermark(&self, group: &str, now_ms: i64) -> Option<i64> {
        self.sources_by_group
            .get(group)?
            .iter()
            .filter_map(|k| self.sources.get(k))
            .filter(|s| self.is_active(s.last_seen_ms, now_ms))
            .map(|s| s.watermark_ms)
            .min()
    }

    fn finalize_group(&mut self, group: &Name, now_ms: i64) {
        let bound = self
            .finalization_watermark(group, now_ms)
            .unwrap_or(i64::MAX);
        loop {
            let Some(&(end, start)) = self.open_by_group.get(group).and_then(|s| s.first()) else {
                return;
            };
            if end > bound {
                return;
            }
            self.finalize(Wk {
                group: group.clone(),
                start_ms: start,
                end_ms: end,
            });
        }
    }

    /// Every group's finalization and the horizon, at `now_ms`.
    fn sweep(&mut self, now_ms: i64) {
        let mut groups: Vec<Name> = self.open_by_group.keys().cloned().collect();
        groups.sort_unstable();
        for g in groups {
            self.finalize_group(&g, now_ms);
        }
        let active_min = self
            .sources
            .values()
            .filter(|s| self.is_active(s.last_seen_ms, now_ms))
            .map(|s| s.watermark_ms)
            .min();
        let clock = match active_min {
            Some(c) => c,
            None => match self.sources.values().map(|s| s.watermark_ms).max() {
                Some(c) => c,
                None => return,
            },
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
        // Names no window or source refers to any more.
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    fn finalize(&mut self, key: Wk) {
        self.open_by_end.remove(&(key.end_ms, key.clone()));
        if let Some(set) = self.open_by_group.get_mut(&key.group) {
            set.remove(&(key.end_ms, key.start_ms));
            if set.is_empty() {
                self.open_by_group.remove(&key.group);
            }
        }
        let Some(mut w) = self.open.remove(&key) else {
            return;
        };
        w.finalized = true;
        self.counters.finalized += 1;
        self.emits.insert(key.clone());
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

    fn drop_final(&mut self, key: &Wk) {
        self.finalized_by_end.remove(&(key.end_ms, key.clone()));
        if let Some(w) = self.finalized.remove(key) {
            if self.emits.remove(key) {
                self.emits_dropped.insert(key.clone(), w);
            }
        }
        self.dirty_windows.insert(key.clone());
    }

    /// The changelog records and finals accumulated since the last call, in key order, owned
    /// (tests and tools; the loop borrows them through [`PartitionState::take_changes_with`]).
    pub fn take_changes(&mut self) -> Changes {
        let mut c = Changes::default();
        self.take_changes_with(|change| match change {
            Change::Window(k, w) => c.windows.push((k.to_owned(), w.cloned())),
            Change::Source(k, s) => c.sources.push((k.clone(), s.map(SourceRef::to_owned))),
            Change::Meta(m) => c.meta = Some(m),
            Change::Final(k, w) => c.finals.push((k.to_owned(), w.clone())),
        });
        c
    }

    /// Whether [`PartitionState::take_changes_with`] has anything to hand out.
    pub fn has_changes(&self) -> bool {
        self.dirty_meta
            || !self.dirty_windows.is_empty()
            || !self.dirty_sources.is_empty()
            || !self.emits.is_empty()
            || !self.emits_dropped.is_empty()
    }

    /// Hands each change accumulated since the last call to `f`, borrowed from the state (no
    /// window is cloned): the windows, then the sources, then the meta record, then the finals,
    /// each in key order (deterministic).
    pub fn take_changes_with(&mut self, mut f: impl FnMut(Change<'_>)) {
        let mut dirty: Vec<Wk> = self.dirty_windows.drain().collect();
        dirty.sort_unstable();
        for k in &dirty {
            let w = self.open.get(k).or_else(|| self.finalized.get(k));
            f(Change::Window(k.borrowed(), w));
        }
        let ids: Vec<Box<str>> = self.dirty_sources.drain().collect();
        let mut dirty: Vec<(Cow<'_, SourceKey>, Option<SourceRef<'_>>)> = ids
            .iter()
            .map(|id| match self.sources.get(id) {
                Some(s) => (Cow::Borrowed(&s.key), Some(s.borrowed())),
                None => (Cow::Owned(forgotten_key(id)), None),
            })
            .collect();
        dirty.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, s) in dirty {
            f(Change::Source(&k, s));
        }
        if std::mem::take(&mut self.dirty_meta) {
            f(Change::Meta(self.meta));
        }
        let mut emits: Vec<Wk> = self.emits.drain().collect();
        emits.extend(self.emits_dropped.keys().cloned());
        emits.sort_unstable();
        for k in &emits {
            if let Some(w) = self.emits_dropped.remove(k) {
                f(Change::Final(k.borrowed(), &w));
            } else if let Some(w) = self.finalized.get(k) {
                f(Change::Final(k.borrowed(), w));
            }
        }
    }
}

/// The (agent, series) of a `sources` key (`len(agent):agent series`).
fn forgotten_key(id: &str) -> SourceKey {
    let (len, rest) = id.split_once(':').unwrap_or(("0", id));
    let at = len.parse::<usize>().unwrap_or(0);
    // `source_id` wrote `len` bytes of agent: always a char boundary.
    let (agent, series) = match (rest.get(..at), rest.get(at..)) {
        (Some(agent), Some(series)) => (agent, series),
        _ => ("", rest),
    };
    SourceKey {
        agent: agent.to_owned(),
        series: series.to_owned(),
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
pub(crate) mod tests;
