//! Event-time windows: the pure state machine of one pipeline (no I/O, no clock of its own).
//!
//! [`Windows::push`] takes readings in ingest-log order, [`Windows::tick`] takes the wall clock
//! for idle closes, and both append [`Output`]s: closed windows as [`Partial`]s, late readings,
//! and readings that cannot be windowed. The stage task ([`crate::stage`]) feeds it from the
//! ingest log and commits its outputs, its cursor and the changed series' state
//! ([`Windows::take_dirty`]) in one redb transaction.
//!
//! # Windows
//!
//! Windows are aligned to the Unix epoch: a hopping window of `size` and `slide` (tumbling:
//! `slide == size`) starts at every multiple of `slide` and covers `[start, start + size)`.
//! `size` is a multiple of `slide`, so a reading belongs to exactly `size / slide` windows. The
//! key (series) is the sensor id, or the pipeline name with `group_by = "pipeline"`.
//!
//! # Watermark: per series, and why
//!
//! Each series keeps `watermark = max event time seen - allowed_lateness` (never decreasing).
//! It is per series, not per pipeline, because the series are different devices with their own
//! clocks: a device whose clock runs an hour ahead would, with a pipeline-wide watermark, make
//! every other device's readings late. Per series, a skewed clock only shifts its own windows.
//! The cost is that a silent series never advances its own watermark, which is what the idle
//! timeout is for.
//!
//! # Closing
//!
//! A window closes (and emits its partial, revision 0) when its series' watermark reaches its
//! end. **Idle close**: [`Windows::tick`] closes every open window of a series that has seen no
//! reading for `idle_timeout` of wall-clock time, by advancing the series' watermark to the end
//! of its newest open window; from then on the ordinary rule applies, so a reading for such a
//! window is late. The wall-clock "last seen" instants are not persisted: after a restart every
//! series gets a fresh idle period (a backlog in the log must not be declared idle because the
//! agent was down). Idle closes change only the state, which the stage commits with the
//! partials they emit, so replay never repeats or undoes them (see [`crate::stage`]).
//!
//! # Late readings and revisions
//!
//! A reading that misses at least one of its windows (closed already) is late: `late = "forward"`
//! emits it raw ([`Output::Late`]), `"drop"` counts it. With revisions enabled
//! (`revision_horizon_ms`), a series remembers `(window start, last revision)` of windows closed
//! within the horizon (`end + horizon > watermark`; older ones are forgotten, so memory stays
//! bounded); a reading for such a window reopens it as an open window with `revision + 1`
//! holding only the new readings (a delta, see `edge_protocol::partial`). A reopened window
//! closes again as soon as the series' watermark advances (or by idle close), so a burst of
//! late readings becomes one delta.
//!
//! # Bounded memory
//!
//! At most `max_open_windows` windows are open per pipeline. Opening one more first force-closes
//! the open window with the oldest start (ties: smallest series), emitting it and counting it
//! in `forced_closes`; later readings for it are treated like readings for any closed window.
//! Closed-window records are bounded by the horizon (per series: `horizon / slide` of them,
//! pruned as its watermark advances). A series with nothing open and nothing remembered costs
//! one map entry (its id and watermark) and is never forgotten, so that a reading for one of its
//! closed windows stays late; their number is bounded by the sensor mapping, not here.
//!
//! # Determinism
//!
//! Outputs depend only on the sequence of `push` and `tick` calls and their arguments: state
//! lives in `BTreeMap`s and is iterated in key order, never in hash order.

use std::collections::{BTreeMap, BTreeSet};

use edge_protocol::aggregate::Aggregate;
use edge_protocol::partial::{Partial, MAX_AGENT_LEN, MAX_SERIES_LEN};
use serde::{Deserialize, Serialize};

use crate::reading::Reading;

/// What happens to a reading that missed a closed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Emit it raw as [`Output::Late`] (the late topic).
    Forward,
    /// Count it and drop it.
    Drop,
}

/// What a series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// One series per sensor id.
    #[default]
    Sensor,
    /// One series for the whole pipeline, named after it.
    Pipeline,
}

/// One pipeline's windowing, validated (see [`WindowSpec::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub allowed_lateness_ms: i64,
    pub idle_timeout_ms: u64,
    pub late: LatePolicy,
    /// `Some(h)`: closed windows within `h` of the watermark may be revised.
    pub revision_horizon_ms: Option<i64>,
    pub max_open_windows: usize,
    pub group_by: Grouping,
}

/// Why a [`WindowSpec`] or a stored state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window size must be positive and a multiple of the slide (size {size_ms}, slide {slide_ms})")]
    BadShape { size_ms: i64, slide_ms: i64 },
    #[error("`{field}` must not be negative")]
    Negative { field: &'static str },
    #[error("`max_open_windows` must be at least 1")]
    NoWindows,
    #[error("name `{name}` is longer than {max} bytes")]
    TooLong { name: String, max: usize },
    #[error("stored window state is unreadable (version {version})")]
    State { version: u8 },
}

impl WindowSpec {
    /// Checks the rules of the module doc.
    pub fn new(spec: WindowSpec) -> Result<WindowSpec, WindowError> {
        let (size_ms, slide_ms) = (spec.size_ms, spec.slide_ms);
        if size_ms <= 0 || slide_ms <= 0 || slide_ms > size_ms || size_ms % slide_ms != 0 {
            return Err(WindowError::BadShape { size_ms, slide_ms });
        }
        if spec.allowed_lateness_ms < 0 {
            return Err(WindowError::Negative {
                field: "allowed_lateness_ms",
            });
        }
        if spec.revision_horizon_ms.is_some_and(|h| h < 0) {
            return Err(WindowError::Negative {
                field: "revision_horizon_ms",
            });
        }
        if spec.max_open_windows == 0 {
            return Err(WindowError::NoWindows);
        }
        Ok(spec)
    }

    /// Starts of the windows holding event time `ts`, oldest first; `None` if they overflow.
    pub fn windows_of(&self, ts: i64) -> Option<impl Iterator<Item = i64> + '_> {
        if self.slide_ms <= 0 || self.size_ms < self.slide_ms {
            return None; // an unvalidated spec: no windows rather than a panic
        }
        let last = ts.div_euclid(self.slide_ms).checked_mul(self.slide_ms)?;
        let n = self.size_ms / self.slide_ms;
        let first = last.checked_sub((n - 1).checked_mul(self.slide_ms)?)?;
        last.checked_add(self.size_ms)?;
        Some((0..n).map(move |i| first + i * self.slide_ms))
    }
}

/// What the machine emits, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A closed (or re-closed) window.
    Partial(Box<Partial>),
    /// A reading that missed a closed window, with `late = "forward"`.
    Late(Reading),
    /// A reading that cannot be windowed: event time beyond the representable range, or a
    /// series key too long for the partial envelope. Goes to the dead-letter output.
    Rejected(Reading, Unwindowable),
}

/// Why a reading cannot be windowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unwindowable {
    #[error("event time is outside the windowable range")]
    TimeRange,
    #[error("series key is longer than {MAX_SERIES_LEN} bytes")]
    SeriesTooLong,
}

/// Counters since the machine was created (process lifetime; not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub windows_closed: u64,
    pub idle_closes: u64,
    pub forced_closes: u64,
    pub revisions: u64,
    pub late_forwarded: u64,
    pub late_dropped: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenWindow {
    revision: u32,
    aggregate: Aggregate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeriesState {
    /// Never decreases; `i64::MIN` before the first reading.
    watermark: i64,
    /// Open windows by start.
    open: BTreeMap<i64, OpenWindow>,
    /// Windows closed but still revisable or force-closed ahead of the watermark:
    /// start -> last emitted revision.
    closed: BTreeMap<i64, u32>,
    /// Wall clock of the last reading (not persisted).
    #[serde(skip)]
    last_seen_ms: u64,
}

impl SeriesState {
    fn new() -> SeriesState {
        SeriesState {
            watermark: i64::MIN,
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            last_seen_ms: 0,
        }
    }
}

/// Version byte of [`Windows::take_dirty`]'s rows and [`Windows::encode_state`] (the
/// `window_series` value: layout and golden vector in `store/FORMAT.md`).
pub const STATE_VERSION: u8 = 1;

/// The windows of one pipeline.
#[derive(Debug, Clone)]
pub struct Windows {
    spec: WindowSpec,
    pipeline: String,
    agent: heapless::String<MAX_AGENT_LEN>,
    series: BTreeMap<String, SeriesState>,
    /// Every open window as (start, series): the force-close order.
    by_start: BTreeSet<(i64, String)>,
    /// Series whose persisted state changed since the last [`Windows::take_dirty`].
    dirty: BTreeSet<String>,
    pub counts: Counts,
}

impl Windows {
    /// An empty machine for pipeline `pipeline`, emitting partials as agent `agent`.
    pub fn new(spec: WindowSpec, pipeline: &str, agent: &str) -> Result<Windows, WindowError> {
        let too_long = |name: &str, max| WindowError::TooLong {
            name: name.to_owned(),
            max,
        };
        if spec.group_by == Grouping::Pipeline && pipeline.len() > MAX_SERIES_LEN {
            return Err(too_long(pipeline, MAX_SERIES_LEN));
        }
        Ok(Windows {
            spec: WindowSpec::new(spec)?,
            pipeline: pipeline.to_owned(),
            agent: heapless::String::try_from(agent).map_err(|_| too_long(agent, MAX_AGENT_LEN))?,
            series: BTreeMap::new(),
            by_start: BTreeSet::new(),
            dirty: BTreeSet::new(),
            counts: Counts::default(),
        })
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Open windows right now (at most `max_open_windows`).
    pub fn open_windows(&self) -> usize {
        self.by_start.len()
    }

    /// Feeds one reading seen at wall-clock `now_ms`.
    pub fn push(&mut self, reading: &Reading, now_ms: u64, out: &mut Vec<Output>) {
        let key = match self.spec.group_by {
            Grouping::Sensor => reading.sensor.as_str(),
            Grouping::Pipeline => self.pipeline.as_str(),
        };
        if key.len() > MAX_SERIES_LEN {
            return self.reject(reading, Unwindowable::SeriesTooLong, out);
        }
        let Some(ts) = i64::try_from(reading.ts_ms).ok() else {
            return self.reject(reading, Unwindowable::TimeRange, out);
        };
        let Some(starts) = self.spec.windows_of(ts) else {
            return self.reject(reading, Unwindowable::TimeRange, out);
        };
        let starts: Vec<i64> = starts.collect();
        let key = key.to_owned();
        self.series
            .entry(key.clone())
            .or_insert_with(SeriesState::new)
            .last_seen_ms = now_ms;
        if !self.dirty.contains(&key) {
            self.dirty.insert(key.clone());
        }
        let mut missed = false;
        for start in starts {
            let Some(s) = self.series.get(&key) else {
                return;
            };
            let (watermark, open, closed) = (
                s.watermark,
                s.open.contains_key(&start),
                s.closed.get(&start).copied(),
            );
            let end = start + self.spec.size_ms;
            let revision = if open {
                None
            } else if let Some(last) = closed {
                if self.spec.revision_horizon_ms.is_none() {
                    missed = true;
                    continue;
                }
                Some(last.saturating_add(1))
            } else if end > watermark {
                Some(0)
            } else {
                missed = true;
                continue;
            };
            if let Some(revision) = revision {
                self.open_window(&key, start, revision, out);
            }
            let window = self
                .series
                .get_mut(&key)
                .and_then(|s| s.open.get_mut(&start));
            if let Some(w) = window {
                // Values are finite (the mapping guarantees it); a NaN would only be refused.
                let _ = w.aggregate.add(ts, reading.value);
            }
        }
        if missed {
            match self.spec.late {
                LatePolicy::Forward => {
                    self.counts.late_forwarded += 1;
                    out.push(Output::Late(reading.clone()));
                }
                LatePolicy::Drop => self.counts.late_dropped += 1,
            }
        }
        let advanced = ts.saturating_sub(self.spec.allowed_lateness_ms);
        let Some(s) = self.series.get_mut(&key) else {
            return;
        };
        if advanced > s.watermark {
            s.watermark = advanced;
            self.close_through(&key, out);
        }
    }

    /// Idle close: closes every open window of each series silent for `idle_timeout` at
    /// wall-clock `now_ms`. The stage calls it only when it has caught up with the log.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let timeout = self.spec.idle_timeout_ms;
        let idle: Vec<String> = self
            .series
            .iter()
            .filter(|(_, s)| !s.open.is_empty() && now_ms.saturating_sub(s.last_seen_ms) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            let before = self.counts.windows_closed;
            self.close_series(&key, out);
            self.counts.idle_closes += self.counts.windows_closed - before;
        }
    }

    /// Closes every open window now, as if every series were idle. For a pipeline whose window
    /// shape changed in the configuration: its old windows are sent, then it starts afresh.
    pub fn close_all(&mut self, out: &mut Vec<Output>) {
        let keys: Vec<String> = self.series.keys().cloned().collect();
        for key in keys {
            self.close_series(&key, out);
        }
    }

    /// Advances `key`'s watermark to the end of its newest open window and closes them all.
    fn close_series(&mut self, key: &str, out: &mut Vec<Output>) {
        let size = self.spec.size_ms;
        if let Some(s) = self.series.get_mut(key) {
            let newest_end = s.open.keys().next_back().map(|start| start + size);
            if let Some(end) = newest_end.filter(|end| *end > s.watermark) {
                s.watermark = end;
            }
        }
        self.close_through(key, out);
    }

    fn reject(&mut self, reading: &Reading, why: Unwindowable, out: &mut Vec<Output>) {
        self.counts.rejected += 1;
        out.push(Output::Rejected(reading.clone(), why));
    }

    fn open_window(&mut self, key: &str, start: i64, revision: u32, out: &mut Vec<Output>) {
        while self.by_start.len() >= self.spec.max_open_windows {
            let Some((old_start, old_key)) = self.by_start.first().cloned() else {
                break;
            };
            self.counts.forced_closes += 1;
            self.close_one(&old_key, old_start, out);
        }
        let s = self
            .series
            .entry(key.to_owned())
            .or_insert_with(SeriesState::new);
        s.closed.remove(&start);
        s.open.insert(
            start,
            OpenWindow {
                revision,
                aggregate: Aggregate::new(),
            },
        );
        self.by_start.insert((start, key.to_owned()));
    }

    /// Closes every open window of `key` whose end the watermark reached (all reopened ones
    /// included: their ends are behind it), oldest first, then forgets expired closed records.
    fn close_through(&mut self, key: &str, out: &mut Vec<Output>) {
        let size = self.spec.size_ms;
        let due: Vec<i64> = match self.series.get(key) {
            Some(s) => s
                .open
                .keys()
                .copied()
                .take_while(|start| start.saturating_add(size) <= s.watermark)
                .collect(),
            None => return,
        };
        for start in due {
            self.close_one(key, start, out);
        }
        let horizon = self.spec.revision_horizon_ms.unwrap_or(0);
        if let Some(s) = self.series.get_mut(key) {
            let watermark = s.watermark;
            s.closed
                .retain(|start, _| start.saturating_add(size).saturating_add(horizon) > watermark);
        }
    }

    fn close_one(&mut self, key: &str, start: i64, out: &mut Vec<Output>) {
        let Some(s) = self.series.get_mut(key) else {
            return;
        };
        let Some(window) = s.open.remove(&start) else {
            return;
        };
        self.by_start.remove(&(start, key.to_owned()));
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_owned());
        }
        let end = start + self.spec.size_ms;
        let revisable = self
            .spec
            .revision_horizon_ms
            .is_some_and(|h| end.saturating_add(h) > s.watermark);
        if revisable || end > s.watermark {
            s.closed.insert(start, window.revision);
        }
        self.counts.windows_closed += 1;
        if window.revision > 0 {
            self.counts.revisions += 1;
        }
        let Ok(series) = heapless::String::try_from(key) else {
            return; // unreachable: keys are checked against MAX_SERIES_LEN on entry
        };
        out.push(Output::Partial(Box::new(Partial {
            series,
            window_start_ms: start,
            window_end_ms: end,
            agent: self.agent.clone(),
            watermark_ms: s.watermark,
            revision: window.revision,
            aggregate: window.aggregate,
        })));
    }

    /// The series whose state changed since the last call, each with its persisted row:
    /// `[STATE_VERSION] ++ postcard(watermark, open windows with revision and aggregate, closed
    /// records)`. The stage writes exactly these rows in the transaction that commits the
    /// outputs of the same changes.
    pub fn take_dirty(&mut self) -> Vec<(String, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|key| {
                let s = self.series.get(&key)?;
                let mut row = vec![STATE_VERSION];
                // Serialising plain data into a Vec cannot fail.
                row.extend_from_slice(&postcard::to_allocvec(s).ok()?);
                Some((key, row))
            })
            .collect()
    }

    /// Restores one row of [`Windows::take_dirty`]; the series gets a fresh idle period
    /// starting at `now_ms`.
    pub fn restore_series(
        &mut self,
        key: &str,
        row: &[u8],
        now_ms: u64,
    ) -> Result<(), WindowError> {
        let mut s: SeriesState = state_body(row)?;
        if !self.acceptable(key, &s) {
            return Err(WindowError::State {
                version: STATE_VERSION,
            });
        }
        s.last_seen_ms = now_ms;
        for start in s.open.keys() {
            self.by_start.insert((*start, key.to_owned()));
        }
        self.series.insert(key.to_owned(), s);
        Ok(())
    }

    /// A restored series must fit the envelope, hold valid aggregates, and not overflow.
    fn acceptable(&self, key: &str, s: &SeriesState) -> bool {
        key.len() <= MAX_SERIES_LEN
            && s.open.values().all(|w| w.aggregate.validate().is_ok())
            && s.open
                .keys()
                .all(|start| start.checked_add(self.spec.size_ms).is_some())
    }

    /// The whole state in one blob (tests and the benchmark): `[STATE_VERSION] ++ postcard(map
    /// series -> (watermark, open
    /// windows with revision and aggregate, closed records))`. Bounded by `max_open_windows`
    /// and the revision horizon.
    pub fn encode_state(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        // Serialising a BTreeMap of plain data into a Vec cannot fail.
        if let Ok(body) = postcard::to_allocvec(&self.series) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Restores [`Windows::encode_state`] output; every series gets a fresh idle period
    /// starting at `now_ms`.
    pub fn restore_state(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), WindowError> {
        let mut series: BTreeMap<String, SeriesState> = state_body(bytes)?;
        let broken = series.iter().any(|(key, s)| !self.acceptable(key, s));
        if broken {
            return Err(WindowError::State {
                version: STATE_VERSION,
            });
        }
        self.by_start.clear();
        for (key, s) in series.iter_mut() {
            s.last_seen_ms = now_ms;
            for start in s.open.keys() {
                self.by_start.insert((*start, key.clone()));
            }
        }
        self.series = series;
        Ok(())
    }
}

/// Reads `[STATE_VERSION] ++ postcard(T)` (`store/FORMAT.md`, window state row v1); the error
/// carries the version byte seen (0 when empty).
fn state_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WindowError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or(WindowError::State { version: 0 })?;
    if version != STATE_VERSION {
        return Err(WindowError::State { version });
    }
    postcard::from_bytes(body).map_err(|_| WindowError::State { version })
}

#[cfg(test)]
mod tests;
