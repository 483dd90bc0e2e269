//! The windowing stage: ingest log -> windows -> outbox, one redb transaction per batch.
//!
//! Each [`Stage::step`] reads at most `batch` readings from its cursor and at most `batch`
//! dead letters from theirs (bounded memory however long the backlog), routes each reading to
//! the first pipeline whose globs match, feeds windowed pipelines' [`Windows`] and turns the
//! rest into pass-through records; when it has caught up with the log it also runs the idle
//! close. Then **one** write transaction:
//!
//! 1. appends every output to the outbox (partials, pass-through and late readings, dead
//!    letters from the ingest log and from unwindowable readings),
//! 2. advances both cursors in `meta`,
//! 3. stores the state of every series the batch changed in `window_series`,
//! 4. trims the ingest rows behind the cursors (freeing quota),
//!
//! and commits with fsync.
//!
//! # Why each window is emitted exactly once across crashes
//!
//! - The partial of a window, the state in which that window is no longer open, and the cursor
//!   past the readings that closed it commit together or not at all (redb transactions are
//!   atomic and durable). A crash before the commit leaves the previous state, cursor and
//!   outbox, as if the batch had never been read; a crash after it has all three.
//! - After a restart the stage loads the committed state and reads from the committed cursor.
//!   The state machine is deterministic (`window` module doc), so replaying the same readings
//!   from the same state gives the same outputs; nothing before the cursor is ever replayed, so
//!   no committed output can be produced again.
//! - Idle closes depend on the wall clock, so a replay need not repeat the closes an
//!   uncommitted attempt made. That is safe because an idle close is nothing but a change to
//!   the state (the series' watermark moves to the window's end), committed in the same
//!   transaction as the partial it emitted: once committed, the window is closed in the stored
//!   state and a later reading for it is late (or a revision), never a second revision 0; if
//!   not committed, neither the partial nor the close exists. Replay can therefore neither
//!   double-close nor reopen a window.
//! - The outbox has its own dense sequence and the forwarder delivers it exactly once
//!   (`outbox`, `forward`), which completes the chain to Kafka.
//!
//! # Tables (in the shared database, version 1; bytes and golden vectors: `store/FORMAT.md`)
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | `"window_next_reading"`, `"window_next_dead_letter"` | `u64` next sequence to read |
//! | `window_shape` | `&str` pipeline name | [`WindowShape`]: `u8 version = 1`, `i64 size_ms LE`, `i64 slide_ms LE`: the shape its series rows were written with |
//! | `window_series` | `(&str pipeline, &str series)` (redb tuple key) | a row of [`Windows::take_dirty`]: `u8 version = 1` ++ postcard(watermark, open windows, closed records) |
//!
//! One row per series, rewritten only when a batch changed that series, so a commit writes
//! state in proportion to what the batch touched, not to everything open. The total is bounded
//! by `max_open_windows`, the revision horizon and the number of series. When the stored size or
//! slide differs from the configuration, the stored windows are closed and emitted in the first
//! commit, the pipeline's rows are removed in it, and the pipeline starts afresh.
//!
//! # Record payloads
//!
//! - `Partial`: `edge_protocol::partial` version 1 bytes, key = series.
//! - `Reading` / `Late`: JSON `{"sensor": .., "ts": <ms>, "value": .., "seq": <u64 or null>}`,
//!   key = sensor id, route = pipeline.
//! - `DeadLetter`: the ingest log's DeadLetter record v1 (`store/FORMAT.md`), key = source
//!   (read with [`DeadLetter::decode`]);
//!   unwindowable readings become such a record with source `window:<pipeline>`, the reason,
//!   and the stored Reading record as the payload.
//!
//! # Errors
//!
//! A failed step discards the in-memory machines and reloads state and cursors from the
//! database (the last commit), so memory never runs ahead of what is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use edge_protocol::backoff::Backoff;
use edge_protocol::partial::{Partial, MAX_ENCODED_LEN};
use redb::{Database, Durability, ReadableDatabase};

use crate::config::{Config, PartialFormat};
use crate::ingest::{DeadLetter, IngestError, IngestLog};
use crate::mapping::Glob;
use crate::outbox::{self, OutboxError, OutboxRecord, RecordKind};
use crate::reading::Reading;
use crate::store::meta::{
    self as keys, WINDOW_NEXT_DEAD_LETTER as NEXT_DEAD_LETTER, WINDOW_NEXT_READING as NEXT_READING,
};
use crate::store::rows::WindowShape;
use crate::store::tables::{META, WINDOW_SERIES, WINDOW_SHAPE};
use crate::store::{redb_errors_into, StoreError};
use crate::wake::Wake;
use crate::window::{Counts, Output, WindowError, Windows};

/// Wall clock, ms since the Unix epoch (the one [`crate::clock::unix_ms`], kept here for
/// callers that name it `stage::unix_ms`).
pub use crate::clock::unix_ms;

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("windowing stage: {0}")]
    Store(#[from] StoreError),
    #[error("windowing stage: {0}")]
    Ingest(#[from] IngestError),
    #[error("windowing stage: {0}")]
    Outbox(#[from] OutboxError),
    #[error("windowing stage: pipeline `{pipeline}`: {source}")]
    Window {
        pipeline: String,
        #[source]
        source: WindowError,
    },
    #[error("windowing stage: a partial does not encode: {0}")]
    Partial(edge_protocol::partial::PartialError),
}

impl StageError {
    /// Whether a retry (after reloading from the last commit) can succeed.
    /// The database parts delegate to [`StoreError::is_retryable`]'s one rule.
    pub fn is_retryable(&self) -> bool {
        match self {
            StageError::Store(e) => e.is_retryable(),
            StageError::Ingest(e) => e.is_retryable(),
            StageError::Outbox(e) => e.is_retryable(),
            StageError::Window { .. } | StageError::Partial(_) => false,
        }
    }
}

redb_errors_into!(StageError);

/// What the stage did, since start (published after each commit).
#[derive(Debug, Default)]
pub struct StageCounters {
    pub readings: AtomicU64,
    pub passed_through: AtomicU64,
    pub unrouted: AtomicU64,
    pub dead_letters: AtomicU64,
    pub partials: AtomicU64,
    pub windows_closed: AtomicU64,
    pub idle_closes: AtomicU64,
    pub forced_closes: AtomicU64,
    pub revisions: AtomicU64,
    pub late_forwarded: AtomicU64,
    pub late_dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub commits: AtomicU64,
    /// Hop `window`: from the ingest commit the stage was woken for (the oldest one it had not
    /// yet taken in) to the stage's commit of those readings, once per reading.
    pub latency: edge_ops_http::prometheus::Histogram,
}

struct Route {
    name: String,
    globs: Vec<Glob>,
    windows: Option<Windows>,
    /// The stored shape differed: remove the pipeline's series rows in the next commit.
    reset: bool,
}

/// The exclusive upper bound of `pipeline`'s keys in `window_series`: the smallest string
/// above the name (names never hold NUL: they are `[A-Za-z0-9._-]`).
fn after(pipeline: &str) -> String {
    format!("{pipeline}\u{0}")
}

/// The windowing stage over one database.
pub struct Stage {
    db: Arc<Database>,
    config: Arc<Config>,
    routes: Vec<Route>,
    next_reading: u64,
    next_dead_letter: u64,
    batch: usize,
    pending: Vec<OutboxRecord>,
    pub counters: Arc<StageCounters>,
    /// Notified by the ingest writer after each commit: a caught-up stage waits on it
    /// ([`crate::wake`]) up to 10 s when no window is open, so whoever sets it also notifies it
    /// on cancellation (the service does); `None`: it looks again every `POLL` (20 ms).
    pub readings_committed: Option<Arc<Wake>>,
    /// Notified after each commit that appended outbox records (the forwarder waits on it).
    pub outbox_appended: Option<Arc<Wake>>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub readings: usize,
    pub dead_letters: usize,
    pub records: usize,
    /// Fewer than `batch` readings were waiting: the log is drained.
    pub caught_up: bool,
}

impl Stage {
    /// Loads cursors and window state from `db` (creating the tables when missing).
    pub fn open(
        db: Arc<Database>,
        config: Arc<Config>,
        batch: usize,
        now_ms: u64,
    ) -> Result<Stage, StageError> {
        outbox::create(&db)?;
        let txn = db.begin_write()?;
        txn.open_table(WINDOW_SHAPE)?;
        txn.open_table(WINDOW_SERIES)?;
        txn.open_table(META)?;
        txn.commit()?;
        let mut stage = Stage {
            db,
            config,
            routes: Vec::new(),
            next_reading: 0,
            next_dead_letter: 0,
            batch: batch.max(1),
            pending: Vec::new(),
            counters: Arc::new(StageCounters::default()),
            readings_committed: None,
            outbox_appended: None,
        };
        stage.reload(now_ms)?;
        Ok(stage)
    }

    /// Rebuilds routes, machines and cursors from the last commit.
    fn reload(&mut self, now_ms: u64) -> Result<(), StageError> {
        self.pending.clear();
        self.routes.clear();
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        self.next_reading = keys::get(&meta, NEXT_READING)?;
        self.next_dead_letter = keys::get(&meta, NEXT_DEAD_LETTER)?;
        let shapes = txn.open_table(WINDOW_SHAPE)?;
        let rows = txn.open_table(WINDOW_SERIES)?;
        let agent = self.config.agent.id.get_ref().as_str();
        for pipeline in &self.config.pipeline {
            let name = pipeline.name.get_ref().clone();
            let window_error = |source| StageError::Window {
                pipeline: name.clone(),
                source,
            };
            // Globs were validated with the configuration; an unparsable one matches nothing.
            let globs = pipeline
                .sensors
                .iter()
                .filter_map(|g| Glob::parse(g.get_ref()).ok())
                .collect();
            let mut reset = false;
            let windows = match &pipeline.window {
                None => None,
                Some(w) => {
                    let spec = w.spec();
                    let mut windows =
                        Windows::new(spec.clone(), &name, agent).map_err(window_error)?;
                    if let Some(row) = shapes.get(name.as_str())? {
                        let WindowShape { size_ms, slide_ms } = WindowShape::decode(row.value())
                            .map_err(|bad| {
                                window_error(WindowError::State {
                                    version: bad.version,
                                })
                            })?;
                        let mut old = spec.clone();
                        (old.size_ms, old.slide_ms) = (size_ms, slide_ms);
                        let mut stored = Windows::new(old, &name, agent).map_err(window_error)?;
                        let upper = after(&name);
                        for row in rows.range((name.as_str(), "")..(upper.as_str(), ""))? {
                            let (key, value) = row?;
                            let (_, series) = key.value();
                            stored
                                .restore_series(series, value.value(), now_ms)
                                .map_err(window_error)?;
                        }
                        if (size_ms, slide_ms) == (spec.size_ms, spec.slide_ms) {
                            windows = stored;
                        } else {
                            tracing::warn!(
                                pipeline = name,
                                "window shape changed: closing the stored windows"
                            );
                            let mut out = Vec::new();
                            stored.close_all(&mut out);
                            self.pending.extend(records(
                                &name,
                                out,
                                now_ms,
                                self.partial_format(),
                            )?);
                            reset = true;
                        }
                    }
                    Some(windows)
                }
            };
            self.routes.push(Route {
                name,
                globs,
                windows,
                reset,
            });
        }
        Ok(())
    }

    /// One batch: read, window, commit. `now_ms` is the wall clock (idle closes, `created_ms`).
    /// On error the stage has reloaded the last commit; the caller backs off and retries.
    pub fn step(&mut self, now_ms: u64) -> Result<Step, StageError> {
        let result = self.try_step(now_ms);
        if result.is_err() {
            if let Err(error) = self.reload(now_ms) {
                tracing::warn!(%error, "reloading the windowing stage failed");
            }
        }
        result
    }

    fn try_step(&mut self, now_ms: u64) -> Result<Step, StageError> {
        let readings = IngestLog::readings_in(&self.db, self.next_reading, self.batch)?;
        let dead = IngestLog::dead_letters_in(&self.db, self.next_dead_letter, self.batch)?;
        let mut step = Step {
            readings: readings.len(),
            dead_letters: dead.len(),
            records: 0,
            caught_up: readings.len() < self.batch,
        };
        let mut records = std::mem::take(&mut self.pending);
        for (_, reading) in &readings {
            self.route(reading, now_ms, &mut records)?;
        }
        if step.caught_up {
            let format = self.partial_format();
            for route in &mut self.routes {
                if let Some(w) = &mut route.windows {
                    let mut out = Vec::new();
                    w.tick(now_ms, &mut out);
                    records.extend(self::records(&route.name, out, now_ms, format)?);
                }
            }
        }
        for (_, bytes) in &dead {
            records.push(OutboxRecord {
                kind: RecordKind::DeadLetter,
                created_ms: now_ms,
                route: String::new(),
                key: dead_letter_source(bytes),
                payload: bytes.clone(),
            });
        }
        step.records = records.len();
        let reset = self.routes.iter().any(|r| r.reset);
        if readings.is_empty() && dead.is_empty() && records.is_empty() && !reset {
            return Ok(step);
        }
        let last_reading = readings.last().map(|(seq, _)| *seq);
        let last_dead = dead.last().map(|(seq, _)| *seq);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        outbox::append(&txn, &records)?;
        {
            let mut meta = txn.open_table(META)?;
            if let Some(seq) = last_reading {
                meta.insert(NEXT_READING, seq.saturating_add(1))?;
            }
            if let Some(seq) = last_dead {
                meta.insert(NEXT_DEAD_LETTER, seq.saturating_add(1))?;
            }
            let mut shapes = txn.open_table(WINDOW_SHAPE)?;
            let mut rows = txn.open_table(WINDOW_SERIES)?;
            for route in &mut self.routes {
                let Some(w) = &mut route.windows else {
                    continue;
                };
                let name = route.name.as_str();
                if route.reset {
                    let upper = after(name);
                    rows.retain_in((name, "")..(upper.as_str(), ""), |_, _| false)?;
                }
                let changed = w.take_dirty();
                if changed.is_empty() && !route.reset {
                    continue;
                }
                let spec = w.spec();
                let shape = WindowShape {
                    size_ms: spec.size_ms,
                    slide_ms: spec.slide_ms,
                };
                shapes.insert(name, shape.encode().as_slice())?;
                for (series, row) in changed {
                    rows.insert((name, series.as_str()), row.as_slice())?;
                }
            }
        }
        IngestLog::trim_in(&txn, last_reading, last_dead)?;
        txn.commit()?;
        if !records.is_empty() {
            if let Some(wake) = &self.outbox_appended {
                wake.notify();
            }
        }
        if let Some(seq) = last_reading {
            self.next_reading = seq.saturating_add(1);
        }
        if let Some(seq) = last_dead {
            self.next_dead_letter = seq.saturating_add(1);
        }
        self.publish(&step, &records);
        Ok(step)
    }

    fn route(
        &mut self,
        reading: &Reading,
        now_ms: u64,
        records: &mut Vec<OutboxRecord>,
    ) -> Result<(), StageError> {
        let format = self.partial_format();
        let Some(route) = self
            .routes
            .iter_mut()
            .find(|r| r.globs.iter().any(|g| g.matches(&reading.sensor)))
        else {
            self.counters.unrouted.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        match &mut route.windows {
            None => {
                self.counters.passed_through.fetch_add(1, Ordering::Relaxed);
                records.push(reading_record(
                    RecordKind::Reading,
                    &route.name,
                    reading,
                    now_ms,
                ));
            }
            Some(w) => {
                let mut out = Vec::new();
                w.push(reading, now_ms, &mut out);
                records.extend(self::records(&route.name, out, now_ms, format)?);
            }
        }
        Ok(())
    }

    fn publish(&mut self, step: &Step, records: &[OutboxRecord]) {
        let c = &self.counters;
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        add(&c.commits, 1);
        add(&c.readings, step.readings as u64);
        add(&c.dead_letters, step.dead_letters as u64);
        let partials = records
            .iter()
            .filter(|r| r.kind == RecordKind::Partial)
            .count();
        add(&c.partials, partials as u64);
        for route in &mut self.routes {
            route.reset = false;
            if let Some(w) = &mut route.windows {
                let n: Counts = std::mem::take(&mut w.counts);
                add(&c.windows_closed, n.windows_closed);
                add(&c.idle_closes, n.idle_closes);
                add(&c.forced_closes, n.forced_closes);
                add(&c.revisions, n.revisions);
                add(&c.late_forwarded, n.late_forwarded);
                add(&c.late_dropped, n.late_dropped);
                add(&c.rejected, n.rejected);
            }
        }
    }

    /// `[kafka] partial_format` (postcard when there is no `[kafka]`).
    fn partial_format(&self) -> PartialFormat {
        self.config
            .kafka
            .as_ref()
            .map_or(PartialFormat::default(), |k| k.partial_format)
    }

    /// How long a caught-up stage may sleep without a commit: [`IDLE_TICK`] while a window is
    /// open (an idle close is due by the wall clock) or a record waits, else [`IDLE_WAIT_MAX`].
    fn idle_wait(&self) -> std::time::Duration {
        let open = self
            .routes
            .iter()
            .any(|r| r.windows.as_ref().is_some_and(|w| w.open_windows() > 0));
        match open || !self.pending.is_empty() {
            true => IDLE_TICK,
            false => IDLE_WAIT_MAX,
        }
    }

    /// Open windows per pipeline, for metrics.
    pub fn open_windows(&self) -> Vec<(String, usize)> {
        self.routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.windows.as_ref()?.open_windows())))
            .collect()
    }
}

const POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// How long a caught-up stage with open windows sleeps without a commit: the granularity of
/// idle window closes (wall clock).
const IDLE_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a caught-up stage with nothing open sleeps without a commit. Only a safety net:
/// the writer's commit and the service's cancellation wake it ([`crate::wake`]), and a wake-up
/// that found nothing to do costs two read transactions (issue 18: idle CPU).
const IDLE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Stage {
    /// Steps until `cancel` fires (checked between commits: a safe point), polling every 20 ms
    /// when caught up. Retryable errors back off (20 ms .. 5 s) and retry from the last commit;
    /// any other error is returned (fatal).
    pub fn run(mut self, cancel: &tokio_util::sync::CancellationToken) -> Result<(), StageError> {
        let mut backoff = Backoff::new(POLL, BACKOFF_MAX);
        // When the oldest ingest commit not yet windowed was notified (hop `window`).
        let mut oldest: Option<std::time::Instant> = None;
        while !cancel.is_cancelled() {
            // Read before the step looks at the log ([`crate::wake`]: no lost wake-up).
            let seen = self.readings_committed.as_ref().map(|w| w.generation());
            if let Some(wake) = &self.readings_committed {
                oldest = oldest.or(wake.take_since());
            }
            match self.step(unix_ms()) {
                Ok(step) => {
                    backoff.reset();
                    if let Some(t) = oldest.filter(|_| step.readings > 0) {
                        let n = step.readings as u64;
                        self.counters.latency.observe_n(t.elapsed(), n);
                    }
                    if step.caught_up {
                        oldest = None;
                    }
                    if step.caught_up && step.dead_letters < self.batch {
                        match (&self.readings_committed, seen) {
                            (Some(wake), Some(seen)) => {
                                wake.wait_past(seen, self.idle_wait());
                            }
                            _ => std::thread::sleep(POLL),
                        }
                    }
                }
                Err(error) if error.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "windowing step failed; retrying from the last commit");
                    std::thread::sleep(delay);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The outbox records of a machine's outputs.
fn records(
    pipeline: &str,
    out: Vec<Output>,
    now_ms: u64,
    format: PartialFormat,
) -> Result<Vec<OutboxRecord>, StageError> {
    let mut records = Vec::with_capacity(out.len());
    let mut buf = vec![0u8; MAX_ENCODED_LEN];
    for o in out {
        records.push(match o {
            Output::Partial(p) => partial_record(pipeline, &p, now_ms, format, &mut buf)?,
            Output::Late(r) => reading_record(RecordKind::Late, pipeline, &r, now_ms),
            Output::Rejected(r, why) => {
                let source = format!("window:{pipeline}");
                let dead = DeadLetter::new(now_ms, &source, &why, &r.encode());
                OutboxRecord {
                    kind: RecordKind::DeadLetter,
                    created_ms: now_ms,
                    route: String::new(),
                    key: source.into_bytes(),
                    payload: dead.encode(),
                }
            }
        });
    }
    Ok(records)
}

fn partial_record(
    pipeline: &str,
    p: &Partial,
    now_ms: u64,
    format: PartialFormat,
    buf: &mut [u8],
) -> Result<OutboxRecord, StageError> {
    let payload = match format {
        PartialFormat::Postcard => {
            let n = p.encode(buf).map_err(StageError::Partial)?;
            buf[..n].to_vec()
        }
        // Serialising a partial (strings, integers, finite floats) into a Vec cannot fail.
        PartialFormat::Json => serde_json::to_vec(p).unwrap_or_default(),
    };
    Ok(OutboxRecord {
        kind: RecordKind::Partial,
        created_ms: now_ms,
        route: pipeline.to_owned(),
        key: p.series.as_bytes().to_vec(),
        payload,
    })
}

/// The pass-through / late JSON of the module doc.
pub fn reading_json(reading: &Reading) -> Vec<u8> {
    serde_json::json!({
        "sensor": reading.sensor,
        "ts": reading.ts_ms,
        "value": reading.value,
        "seq": reading.seq,
    })
    .to_string()
    .into_bytes()
}

fn reading_record(
    kind: RecordKind,
    pipeline: &str,
    reading: &Reading,
    now_ms: u64,
) -> OutboxRecord {
    OutboxRecord {
        kind,
        created_ms: now_ms,
        route: pipeline.to_owned(),
        key: reading.sensor.as_bytes().to_vec(),
        payload: reading_json(reading),
    }
}

/// The source name inside a stored DeadLetter record v1 (empty when unreadable), read by the
/// format's one decoder.
fn dead_letter_source(record: &[u8]) -> Vec<u8> {
    DeadLetter::decode(record)
        .map(|dead| dead.source.into_bytes())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
