//! The consume-merge-produce loop, exactly once. The only module that calls Kafka in steady
//! state. Everything runs on one plain thread: librdkafka's transaction calls block, so they are
//! kept off any async worker.
//!
//! # One poll batch = one transaction
//!
//! 1. Poll up to `batch_max_records` records or `batch_max_ms` (read_committed: only partials
//!    of committed agent transactions; auto-commit off). No transaction is open while polling,
//!    so a rebalance callback (which runs inside `poll`) never meets an in-flight transaction.
//! 2. Decode, group and merge each record into its partition's [`PartitionState`]; a record that
//!    cannot be merged becomes a dead letter with its reason (the loop keeps going). Partitions
//!    the loop has caught up with (EOF) are ticked with the wall clock.
//! 3. `begin_transaction`; produce the finals, the changelog records (newest value of each
//!    changed key, tombstones for dropped state) and the dead letters;
//!    `send_offsets_to_transaction` with the offsets after the batch and the consumer's group
//!    metadata; `commit_transaction`.
//!
//! # Why each partial counts exactly once
//!
//! A partial's effect (its merge into the state, the finals it causes, the changelog record of
//! the new state) and the advance of its input offset commit in the **same** transaction, so
//! they become visible together or not at all. After a crash (`kill -9` anywhere) the open
//! transaction is aborted (by our next `init_transactions` with the same `transactional.id`, or
//! by the transaction timeout), the records it wrote stay invisible to `read_committed` readers,
//! and the offset stays where the last commit left it. The next owner of the partition restores
//! the state from the changelog as of that commit ([`crate::restore`]) and reads the input from
//! that offset: the partials of the lost batch are merged once, by the new owner. When a
//! transaction fails (`commit` error, timeout, broker away), the loop aborts it and starts a new
//! session: the in-memory state, which already holds the batch, is thrown away and restored from
//! the changelog, so an aborted batch is never half-remembered.
//!
//! # Why zombies are fenced
//!
//! One transactional producer per instance (`transactional.id` = `{group_id}.{instance_id}`).
//! - A restarted instance with the same id: `init_transactions` bumps the producer epoch; the
//!   old process (if still alive) is fenced (`ProducerFenced`, fatal for it) and its open
//!   transaction aborted.
//! - An instance that lost a partition in a rebalance but does not know yet (a long pause): with
//!   KIP-447 the group coordinator checks the consumer group metadata (generation, member id)
//!   sent with `send_offsets_to_transaction`; a stale generation is refused, so the zombie's
//!   transaction cannot commit offsets and must abort, and none of its outputs or changelog
//!   records become visible. The new owner waits for stable offsets before restoring, so it never
//!   reads a state the zombie might still commit. This is why one producer per instance suffices
//!   (no producer per input partition as before KIP-447); it needs brokers >= 2.5 (we run 4.1).
//! - Revocation (eager protocol): the callback runs inside `poll`, when no transaction is open;
//!   the revoked partitions' state and any records of them not yet processed are dropped, and
//!   their next owner restores from the changelog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use edge_kafka::{BrokerLog, Throttle, TxnProducer};
use edge_protocol::contract::header;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog;
use crate::config::Config;
use crate::group::Grouping;
use crate::kafka::{self, classify, KafkaCallError};
use crate::merge::{Change, Counters, PartitionState, Settings};
use crate::output;
use crate::records::{dead_letter, merge_one, Out, Rec};
use crate::restore::{restore_partition, RestoreError};
pub use crate::telemetry::{Metrics, Phase};

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaCallError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// Fenced by a member with our `group.instance.id` 3 times within 120 s: another live
    /// process runs with our `[kafka] instance_id`.
    #[error(
        "another consumer runs with group.instance.id {instance_id:?}: it fenced this one \
         {fences} times within {}s; give each instance its own [kafka] instance_id",
        FENCE_WINDOW.as_secs()
    )]
    DuplicateInstance { instance_id: String, fences: usize },
}

impl RunError {
    /// A new session may succeed (the loop retries these itself).
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Kafka(e) => e.is_retryable(),
            RunError::Restore(RestoreError::Kafka(e)) => e.is_retryable(),
            RunError::Restore(RestoreError::Timeout { .. }) => true,
            RunError::Restore(RestoreError::Changelog(_)) => false,
            RunError::DuplicateInstance { .. } => false,
        }
    }

    fn is_instance_fenced(&self) -> bool {
        matches!(self, RunError::Kafka(e) if e.is_instance_fenced())
    }

    /// For a failed Kafka call or a restore that timed out: why librdkafka's last broker
    /// connection failed, if it logged that within [`BROKER_FAILURE_WINDOW`] (a refused
    /// connection, a SASL authentication error, a TLS handshake failure; the call itself says
    /// only `BrokerTransportFailure` or timed out).
    fn broker_failure(&self) -> Option<String> {
        match self {
            RunError::Kafka(KafkaCallError::Retryable { .. } | KafkaCallError::Fatal { .. })
            | RunError::Restore(RestoreError::Kafka(_) | RestoreError::Timeout { .. }) => {
                edge_kafka::recent_failure(BROKER_FAILURE_WINDOW)
            }
            _ => None,
        }
    }
}

/// How far back a broker failure logged by librdkafka is taken as the reason of a failed
/// session: longer than the longest call that waits on a broker (60 s), shorter than an old
/// outage. The agent's forwarder takes the same bound.
const BROKER_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What a failed session reports (its log line, `/readyz`'s last session error): the error,
/// and the broker's reason beside it when librdkafka logged one, in the agent's words.
fn session_report(error: &RunError, broker_failure: Option<String>) -> String {
    match broker_failure {
        Some(why) => format!("{error}; the last broker connection failed: {why}"),
        None => error.to_string(),
    }
}

/// How many fences by a member with our `group.instance.id` within [`FENCE_WINDOW`] mean a
/// twin process rather than a broker restart (which fences once, if at all).
const FENCES_FOR_A_TWIN: usize = 3;
const FENCE_WINDOW: Duration = Duration::from_secs(120);

/// Remembers when our consumer was fenced by a member with our `group.instance.id`.
#[derive(Default)]
struct Fences(std::collections::VecDeque<Instant>);

impl Fences {
    /// Records a fence at `now`; how many fell within [`FENCE_WINDOW`] up to it.
    fn record(&mut self, now: Instant) -> usize {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > FENCE_WINDOW)
        {
            self.0.pop_front();
        }
        self.0.push_back(now);
        self.0.len()
    }
}

/// Bound on one Kafka call of a restore (stable offsets, the changelog read).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on one call of a transaction (send, offsets, delivery, commit, abort): a commit takes
/// tens of ms, so a call still blocked after this long has lost its broker, and the session
/// ends (its transaction aborted) instead of waiting out a minute.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);

/// An input partition: (topic, partition).
pub type Tp = (String, i32);

#[derive(Debug)]
enum Event {
    Assigned(Vec<Tp>),
    Revoked(Vec<Tp>),
}

/// Records rebalance events; the loop acts on them right after `poll` returns. Keeps the lag
/// per partition from librdkafka's latest statistics (they arrive inside `poll` too, every
/// `statistics.interval.ms`) until the loop takes it.
#[derive(Default)]
struct Ctx {
    events: Mutex<Vec<Event>>,
    lag: Mutex<Option<BTreeMap<Tp, i64>>>,
}

impl ClientContext for Ctx {
    /// As every client of both services: to `tracing`, a broker failure remembered for the
    /// session's report ([`edge_kafka::BrokerLog`]).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        BrokerLog.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }
    fn stats_raw(&self, statistics: &[u8]) {
        match kafka::partition_lags(statistics) {
            Ok(lags) => {
                if let Ok(mut lag) = self.lag.lock() {
                    *lag = Some(lags);
                }
            }
            Err(error) => tracing::debug!(%error, "unreadable librdkafka statistics"),
        }
    }
}

/// librdkafka also reports partition EOF as a global error: routine here, not worth a line at
/// ERROR level on every catch-up. A lost broker connection is reported on every failed
/// reconnect of each of the three clients (about 20 a second during an outage) and librdkafka
/// retries it: a warning every 10 s per kind, with the count held back.
pub(crate) fn quiet_error(error: KafkaError, reason: &str) {
    static CONNECTION: LazyLock<Throttle> =
        LazyLock::new(|| Throttle::new(Duration::from_secs(10)));
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::PartitionEOF) => {}
        Some(code) if edge_kafka::is_connection_loss(code) => {
            if let Some(held_back) = CONNECTION.admit(code) {
                tracing::warn!(%error, reason, held_back, "broker connection lost; librdkafka reconnects");
            }
        }
        _ => tracing::error!(%error, reason, "librdkafka error"),
    }
}

/// The changelog reader's context: as quiet about EOF as the consumer's.
#[derive(Default)]
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        BrokerLog.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        quiet_error(error, reason);
    }
}

impl ConsumerContext for Quiet {}

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            if let Ok(mut ev) = self.events.lock() {
                ev.push(Event::Revoked(tps(tpl)));
            }
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            if let Ok(mut ev) = self.events.lock() {
                ev.push(Event::Assigned(tps(tpl)));
            }
        }
    }
}

/// Runs until `stop` is set (between transactions) or a fatal error. Retryable errors start a
/// new session after a pause.
pub fn run(config: &Config, stop: &AtomicBool, metrics: &Metrics) -> Result<(), RunError> {
    let result = sessions(config, stop, metrics);
    metrics.set_phase(Phase::Stopped);
    result
}

fn sessions(config: &Config, stop: &AtomicBool, metrics: &Metrics) -> Result<(), RunError> {
    let mut fences = Fences::default();
    loop {
        metrics.sessions.fetch_add(1, Ordering::Relaxed);
        metrics.set_phase(Phase::Starting);
        metrics.progressed();
        let result = session(config, stop, metrics);
        // The session's state is gone with it: nothing is owned until the next assignment.
        metrics.assigned_partitions.store(0, Ordering::Relaxed);
        metrics.open_windows.store(0, Ordering::Relaxed);
        metrics.finalized_windows.store(0, Ordering::Relaxed);
        metrics.sources.store(0, Ordering::Relaxed);
        metrics
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let result = match result {
            Err(e) if e.is_instance_fenced() => match fences.record(Instant::now()) {
                n if n >= FENCES_FOR_A_TWIN => Err(RunError::DuplicateInstance {
                    instance_id: config.kafka.instance_id.get_ref().clone(),
                    fences: n,
                }),
                _ => Err(e),
            },
            other => other,
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                let report = session_report(&e, e.broker_failure());
                tracing::warn!(error = %report, "session failed; starting a new one");
                metrics.session_errors.fetch_add(1, Ordering::Relaxed);
                metrics.set_phase(Phase::Retrying);
                metrics.progressed();
                *metrics.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((metrics.started.elapsed().as_millis() as u64, report));
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn add_counters(a: Counters, b: Counters) -> Counters {
    Counters {
        merged: a.merged + b.merged,
        finalized: a.finalized + b.finalized,
        revisions: a.revisions + b.revisions,
        forced_finalizations: a.forced_finalizations + b.forced_finalizations,
        evicted_by_cap: a.evicted_by_cap + b.evicted_by_cap,
        evicted_by_horizon: a.evicted_by_horizon + b.evicted_by_horizon,
        sources_forgotten: a.sources_forgotten + b.sources_forgotten,
        refused: a.refused + b.refused,
    }
}

/// The wall clock in the merge's signed unit (event times are `i64` ms).
fn wall_ms() -> i64 {
    i64::try_from(crate::telemetry::unix_ms()).unwrap_or(i64::MAX)
}

struct Session<'a> {
    config: &'a Config,
    settings: Settings,
    grouping: Grouping,
    consumer: BaseConsumer<Ctx>,
    reader: BaseConsumer<Quiet>,
    producer: TxnProducer,
    states: HashMap<Tp, PartitionState>,
    caught_up: BTreeSet<Tp>,
    eof_seen: BTreeSet<Tp>,
    metrics: &'a Metrics,
    /// Each owned partition's [`Counters`] as last added to `metrics` (after a commit).
    exported: HashMap<Tp, Counters>,
}

fn session(config: &Config, stop: &AtomicBool, metrics: &Metrics) -> Result<(), RunError> {
    kafka::prepare_topics(config, Duration::from_secs(15))?;
    let producer = TxnProducer::create(&kafka::producer_config(config))
        .map_err(|e| classify("creating the producer", e))?;
    producer
        .init(CALL_TIMEOUT)
        .map_err(|e| classify("initialising transactions", e))?;
    let consumer: BaseConsumer<Ctx> = kafka::consumer_config(config)
        .create_with_context(Ctx::default())
        .map_err(|e| classify("creating the consumer", e))?;
    let reader: BaseConsumer<Quiet> = kafka::restore_config(config)
        .create_with_context(Quiet)
        .map_err(|e| classify("creating the changelog reader", e))?;
    let topics: Vec<&str> = config
        .topics
        .inputs
        .get_ref()
        .iter()
        .map(String::as_str)
        .collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| classify("subscribing", e))?;
    tracing::info!(topics = ?topics, "consumer session started");
    metrics.set_phase(Phase::Joining);
    metrics.progressed();
    let mut s = Session {
        config,
        settings: config.merge_settings(),
        grouping: config.grouping(),
        consumer,
        reader,
        producer,
        states: HashMap::new(),
        caught_up: BTreeSet::new(),
        eof_seen: BTreeSet::new(),
        metrics,
        exported: HashMap::new(),
    };
    let mut last_log = Instant::now();
    let mut rules = 0; // The generation of SIGHUP-reloaded rules merged under (crate::reload).
    while !stop.load(Ordering::Relaxed) {
        if let Some(grouping) = metrics.reload.newer(&mut rules) {
            s.grouping = grouping; // Between transactions: the next batch merges under it.
        }
        let batch = s.poll_batch()?;
        s.transact(batch)?;
        metrics.progressed();
        s.take_lag();
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let c = s
                .states
                .values()
                .fold(Counters::default(), |a, st| add_counters(a, st.counters));
            tracing::info!(
                merged = metrics.merged.load(Ordering::Relaxed),
                finals = metrics.finals.load(Ordering::Relaxed),
                dead_letters = metrics.dead_letters.load(Ordering::Relaxed),
                transactions = metrics.transactions.load(Ordering::Relaxed),
                open_windows = metrics.open_windows.load(Ordering::Relaxed),
                final_windows = metrics.finalized_windows.load(Ordering::Relaxed),
                revisions = c.revisions,
                forced_finalizations = c.forced_finalizations,
                evicted_by_cap = c.evicted_by_cap,
                evicted_by_horizon = c.evicted_by_horizon,
                sources_forgotten = c.sources_forgotten,
                refused = c.refused,
                "progress (state counters: partitions owned now)"
            );
        }
    }
    tracing::info!("stopping between transactions");
    Ok(())
}

impl Session<'_> {
    fn poll_batch(&mut self) -> Result<Vec<Rec>, RunError> {
        let limits = &self.config.limits;
        let deadline = Instant::now() + Duration::from_millis(*limits.batch_max_ms.get_ref());
        let mut batch: Vec<Rec> = Vec::new();
        let mut last: Option<(String, i32, bool)> = None;
        while batch.len() < *limits.batch_max_records.get_ref() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let polled = match self.consumer.poll(left) {
                None => None,
                Some(Ok(m)) => Some(Ok(Rec {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    ts_ms: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers: edge_kafka::owned_headers(&m),
                })),
                Some(Err(e)) => Some(Err(e)),
            };
            if self.handle_events(&mut batch)? {
                last = None;
            }
            match polled {
                None => {}
                Some(Ok(rec)) => {
                    // Records come in runs of one partition: it is looked up once a run.
                    let owned = match &last {
                        Some((t, p, owned)) if *t == rec.topic && *p == rec.partition => *owned,
                        _ => {
                            let tp = (rec.topic.clone(), rec.partition);
                            let owned = self.states.contains_key(&tp);
                            if owned {
                                self.caught_up.remove(&tp);
                            }
                            last = Some((tp.0, tp.1, owned));
                            owned
                        }
                    };
                    if owned {
                        batch.push(rec);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // EOF names only the partition: every owned input partition numbered `p`.
                    let owned: Vec<Tp> =
                        self.states.keys().filter(|tp| tp.1 == p).cloned().collect();
                    self.eof_seen.extend(owned);
                }
                Some(Err(e)) => kafka::poll_error("polling", e)?,
            }
        }
        // librdkafka reports EOF when its fetcher reaches the end, which can be before the
        // fetched records were handed out. A partition counts as caught up (wall-clock ticks)
        // once its EOF was seen and a batch then ended by time, not by size: the local queue was
        // drained, so every record fetched up to that end has been processed.
        if batch.len() < *limits.batch_max_records.get_ref() {
            for tp in std::mem::take(&mut self.eof_seen) {
                if self.states.contains_key(&tp) {
                    tracing::debug!(topic = %tp.0, partition = tp.1, "caught up");
                    self.caught_up.insert(tp);
                }
            }
        }
        Ok(batch)
    }

    /// Acts on the rebalance events since the last call; whether there were any.
    fn handle_events(&mut self, batch: &mut Vec<Rec>) -> Result<bool, RunError> {
        let events: Vec<Event> = match self.consumer.context().events.lock() {
            Ok(mut ev) => std::mem::take(&mut *ev),
            Err(_) => Vec::new(),
        };
        let any = !events.is_empty();
        for event in events {
            match event {
                Event::Revoked(tps) => {
                    tracing::info!(partitions = ?tps, "partitions revoked");
                    self.metrics.set_phase(Phase::Joining);
                    for tp in &tps {
                        self.states.remove(tp);
                        self.caught_up.remove(tp);
                        self.eof_seen.remove(tp);
                        self.exported.remove(tp);
                    }
                    batch.retain(|r| !tps.contains(&(r.topic.clone(), r.partition)));
                    let mut lag = self.metrics.lag.lock().unwrap_or_else(|p| p.into_inner());
                    lag.retain(|tp, _| !tps.contains(tp));
                }
                Event::Assigned(tps) => {
                    self.metrics.set_phase(Phase::Restoring);
                    self.restore(&tps)?;
                    self.metrics.set_phase(Phase::Running);
                }
            }
        }
        if any {
            self.metrics
                .assigned_partitions
                .store(self.states.len() as u64, Ordering::Relaxed);
            self.metrics.open_windows.store(
                self.states.values().map(|s| s.open_windows() as u64).sum(),
                Ordering::Relaxed,
            );
        }
        Ok(any)
    }

    /// Waits for stable committed offsets of `tps` (see `restore`), then restores each.
    fn restore(&mut self, tps: &[Tp]) -> Result<(), RunError> {
        if tps.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in tps {
            tpl.add_partition(t, *p);
        }
        self.consumer
            .committed_offsets(tpl, CALL_TIMEOUT)
            .map_err(|e| classify("fetching stable committed offsets", e))?;
        let changelog = self.config.topics.changelog.get_ref();
        let mut records = 0;
        for (t, p) in tps {
            let (state, n) =
                restore_partition(&self.reader, changelog, t, *p, &self.settings, CALL_TIMEOUT)?;
            records += n;
            self.exported.insert((t.clone(), *p), state.counters);
            self.states.insert((t.clone(), *p), state);
            self.metrics
                .restored_partitions
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.progressed();
        }
        tracing::info!(partitions = ?tps, changelog_records = records,
            ms = started.elapsed().as_millis() as u64, "partitions assigned and restored");
        Ok(())
    }

    /// Merges `batch` and commits its effects and offsets in one transaction.
    fn transact(&mut self, batch: Vec<Rec>) -> Result<(), RunError> {
        let t_merge = Instant::now();
        let mut outs: Vec<Out> = Vec::new();
        let mut offsets: BTreeMap<Tp, i64> = BTreeMap::new();
        let mut merged = 0u64;
        let mut dead = 0u64;
        // Records come in runs of one partition: its key and state are looked up once a run.
        let (states, grouping) = (&mut self.states, &self.grouping);
        let mut run: Option<(Tp, Option<&mut PartitionState>)> = None;
        for rec in batch {
            let same = matches!(&run, Some(((t, p), _)) if *t == rec.topic && *p == rec.partition);
            if !same {
                let tp = (rec.topic.clone(), rec.partition);
                offsets.insert(tp.clone(), rec.offset + 1);
                let state = states.get_mut(&tp);
                run = Some((tp, state));
            } else if let Some((tp, _)) = &run {
                if let Some(next) = offsets.get_mut(tp) {
                    *next = rec.offset + 1;
                }
            }
            let Some((_, Some(state))) = &mut run else {
                continue;
            };
            match merge_one(state, grouping, &rec) {
                Ok(()) => merged += 1,
                Err(reason) => {
                    dead += 1;
                    tracing::warn!(topic = %rec.topic, partition = rec.partition,
                        offset = rec.offset, %reason, "dead letter");
                    outs.push(dead_letter(self.config, &rec, &reason));
                }
            }
        }
        tracing::debug!(?offsets, caught_up = ?self.caught_up, merged, dead, "batch merged");
        let now = wall_ms();
        for tp in &self.caught_up {
            if let Some(state) = self.states.get_mut(tp) {
                state.tick(now);
            }
        }
        if outs.is_empty()
            && offsets.is_empty()
            && !self.states.values().any(PartitionState::has_changes)
        {
            return Ok(());
        }
        tracing::debug!(
            merge_ms = t_merge.elapsed().as_millis() as u64,
            "batch merged and ticked"
        );
        let started = Instant::now();
        let finals = self.commit(outs, &offsets)?;
        let us = started.elapsed().as_micros() as u64;
        let m = self.metrics;
        m.transaction_us_sum.fetch_add(us, Ordering::Relaxed);
        m.transaction_us_last.store(us, Ordering::Relaxed);
        m.last_commit_unix_ms
            .store(wall_ms().max(0) as u64, Ordering::Relaxed);
        m.transactions.fetch_add(1, Ordering::Relaxed);
        m.merged.fetch_add(merged, Ordering::Relaxed);
        m.finals.fetch_add(finals, Ordering::Relaxed);
        m.dead_letters.fetch_add(dead, Ordering::Relaxed);
        m.open_windows.store(
            self.states.values().map(|s| s.open_windows() as u64).sum(),
            Ordering::Relaxed,
        );
        m.finalized_windows.store(
            self.states
                .values()
                .map(|s| s.finalized_windows() as u64)
                .sum(),
            Ordering::Relaxed,
        );
        m.sources.store(
            self.states.values().map(|s| s.sources() as u64).sum(),
            Ordering::Relaxed,
        );
        self.export_counters();
        Ok(())
    }

    /// Adds what the state machines counted since the last commit to `metrics` (committed
    /// effects only: an aborted batch ends the session, and its state and counters with it).
    fn export_counters(&mut self) {
        let m = self.metrics;
        for (tp, state) in &self.states {
            let now = state.counters;
            let before = match self.exported.get_mut(tp) {
                Some(seen) => std::mem::replace(seen, now),
                None => {
                    self.exported.insert(tp.clone(), now);
                    Counters::default()
                }
            };
            for (total, now, before) in [
                (&m.windows_finalized, now.finalized, before.finalized),
                (&m.revisions, now.revisions, before.revisions),
                (
                    &m.forced_finalizations,
                    now.forced_finalizations,
                    before.forced_finalizations,
                ),
                (&m.evicted_by_cap, now.evicted_by_cap, before.evicted_by_cap),
                (
                    &m.evicted_by_horizon,
                    now.evicted_by_horizon,
                    before.evicted_by_horizon,
                ),
                (
                    &m.sources_forgotten,
                    now.sources_forgotten,
                    before.sources_forgotten,
                ),
            ] {
                total.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
            }
        }
    }

    /// Publishes the lag of the owned partitions from the latest statistics, if new ones came.
    fn take_lag(&mut self) {
        let fresh = match self.consumer.context().lag.lock() {
            Ok(mut lag) => lag.take(),
            Err(_) => None,
        };
        if let Some(fresh) = fresh {
            let owned = fresh
                .into_iter()
                .filter(|(tp, _)| self.states.contains_key(tp))
                .collect();
            *self.metrics.lag.lock().unwrap_or_else(|p| p.into_inner()) = owned;
        }
    }

    /// Produces the dead letters `outs` and every partition's changes (changelog records and
    /// finals) in one transaction with `offsets`, and commits it; the number of finals.
    fn commit(&mut self, outs: Vec<Out<'_>>, offsets: &BTreeMap<Tp, i64>) -> Result<u64, RunError> {
        let p = &self.producer;
        let t0 = Instant::now();
        p.begin()
            .map_err(|e| classify("beginning a transaction", e))?;
        let result = (|| -> Result<u64, KafkaCallError> {
            for out in outs {
                let payload = out.payload.as_deref();
                send(p, out.topic, out.partition, &out.key, payload, out.headers)?;
            }
            let finals = produce_changes(p, self.config, &mut self.states)?;
            if !offsets.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for ((t, part), o) in offsets {
                    tpl.add_partition_offset(t, *part, Offset::Offset(*o))
                        .map_err(|e| classify("listing offsets", e))?;
                }
                let meta = self.consumer.group_metadata().ok_or_else(|| {
                    classify(
                        "reading the group metadata",
                        KafkaError::Global(RDKafkaErrorCode::State),
                    )
                })?;
                p.send_offsets(&tpl, &meta, TXN_TIMEOUT)
                    .map_err(|e| classify("sending offsets to the transaction", e))?;
            }
            // Wait for the delivery reports ourselves with short polls: the flush inside
            // commit_transaction otherwise costs about 100 ms per transaction here. Past the
            // deadline the commit below waits (and fails) by itself.
            let t_sent = Instant::now();
            let _ = p.wait_delivered(TXN_TIMEOUT);
            let t1 = Instant::now();
            p.commit(TXN_TIMEOUT)
                .map_err(|e| classify("committing a transaction", e))?;
            tracing::debug!(
                finals,
                produce_and_offsets_ms = (t_sent - t0).as_millis() as u64,
                deliver_ms = (t1 - t_sent).as_millis() as u64,
                commit_ms = t1.elapsed().as_millis() as u64,
                "transaction committed"
            );
            Ok(finals)
        })();
        result.map_err(|e| {
            // Abort (unless fenced: then the broker already did) and let the caller start a new
            // session, which restores the state this batch had already changed in memory.
            if e.is_retryable() {
                if let Err(abort) = p.abort(TXN_TIMEOUT) {
                    tracing::warn!(error = %abort, "abort failed");
                }
            }
            e.into()
        })
    }
}

/// Produces every partition's changes straight into the open transaction: the changelog record
/// of each changed window, source and clock, and the finals; the number of finals. Keys and
/// values are encoded into two buffers reused for every record (librdkafka copies them), so a
/// change costs no allocation of its own. After an error the remaining changes are taken but
/// not produced: the caller aborts, and the session's state is thrown away with them.
fn produce_changes(
    p: &TxnProducer,
    config: &Config,
    states: &mut HashMap<Tp, PartitionState>,
) -> Result<u64, KafkaCallError> {
    let changelog_topic = config.topics.changelog.get_ref().as_str();
    let finals_topic = config.topics.finals.get_ref().as_str();
    let (mut key, mut value) = (String::new(), Vec::new());
    let mut finals = 0u64;
    let mut failed = None;
    for ((topic, partition), state) in states.iter_mut() {
        let part = Some(*partition);
        state.take_changes_with(|change| {
            if failed.is_some() {
                return;
            }
            let sent = match change {
                Change::Window(k, w) => {
                    changelog::window_key_into(&mut key, topic, *partition, k);
                    if let Some(w) = w {
                        changelog::encode_into(&mut value, w);
                    }
                    let payload = w.map(|_| value.as_slice());
                    send(p, changelog_topic, part, key.as_bytes(), payload, None)
                }
                Change::Source(k, s) => {
                    changelog::source_key_into(&mut key, topic, *partition, k);
                    if let Some(s) = &s {
                        changelog::encode_into(&mut value, s);
                    }
                    let payload = s.map(|_| value.as_slice());
                    send(p, changelog_topic, part, key.as_bytes(), payload, None)
                }
                Change::Meta(m) => {
                    changelog::meta_key_into(&mut key, topic, *partition);
                    changelog::encode_into(&mut value, &m);
                    send(p, changelog_topic, part, key.as_bytes(), Some(&value), None)
                }
                Change::Final(k, w) => {
                    finals += 1;
                    output::key_into(&mut key, k);
                    output::value_into(&mut value, k, w);
                    let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                        key: header::SCHEMA,
                        value: Some(output::SCHEMA),
                    });
                    send(
                        p,
                        finals_topic,
                        None,
                        key.as_bytes(),
                        Some(&value),
                        Some(headers),
                    )
                }
            };
            if let Err(e) = sent {
                failed = Some(e);
            }
        });
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(finals),
    }
}

/// Enqueues one record into the open transaction (librdkafka copies key and payload).
fn send(
    p: &TxnProducer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<(), KafkaCallError> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(key);
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    if let Some(part) = partition {
        record = record.partition(part);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    p.send(record, TXN_TIMEOUT)
        .map_err(|e| classify("producing", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_fences_within_the_window_mean_a_twin_and_older_ones_are_forgotten() {
        let mut fences = Fences::default();
        let t0 = Instant::now();
        assert_eq!(fences.record(t0), 1);
        assert_eq!(fences.record(t0 + Duration::from_secs(60)), 2);
        // The first fence has left the window by the third: a broker restart now and then.
        assert_eq!(fences.record(t0 + Duration::from_secs(121)), 2);
        assert_eq!(
            fences.record(t0 + Duration::from_secs(130)),
            FENCES_FOR_A_TWIN
        );
    }

    #[test]
    fn a_twin_is_named_by_the_instance_id_and_ends_the_process() {
        let e = RunError::DuplicateInstance {
            instance_id: "a".into(),
            fences: 3,
        };
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "another consumer runs with group.instance.id \"a\": it fenced this one 3 times \
             within 120s; give each instance its own [kafka] instance_id"
        );
    }

    #[test]
    fn a_fatal_consumption_error_ends_the_session_and_a_lost_broker_does_not() {
        let fenced = kafka::poll_error(
            "polling",
            KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId),
        )
        .unwrap_err();
        assert!(fenced.is_retryable() && fenced.is_instance_fenced());
        assert!(RunError::from(fenced).is_instance_fenced());
        assert!(kafka::poll_error(
            "polling",
            KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)
        )
        .is_ok());
    }

    /// `/readyz` said "session failed" and "Kafka: fetching topic metadata: ... transport
    /// failure" while the broker refused us; why (librdkafka's `FAIL` line, logged from its
    /// broker thread to the consumer's own client contexts) was in no answer.
    #[test]
    fn a_failed_session_reports_the_brokers_reason_beside_its_error() {
        let e = RunError::from(classify(
            "fetching topic metadata",
            KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
        ));
        assert!(e.is_retryable());
        let why = "sasl_ssl://b:9095/bootstrap: SASL authentication error: invalid credentials";
        assert_eq!(
            session_report(&e, Some(why.to_owned())),
            format!("{e}; the last broker connection failed: {why}")
        );
        assert_eq!(session_report(&e, None), e.to_string());

        // The consumer's and the changelog reader's contexts remember the line, and a failed
        // Kafka call takes it; an error of ours (a twin instance) does not.
        Ctx::default().log(RDKafkaLogLevel::Error, "FAIL", why);
        assert_eq!(e.broker_failure().as_deref(), Some(why));
        Quiet.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "b:9092/1: Connection refused",
        );
        assert_eq!(
            e.broker_failure().as_deref(),
            Some("b:9092/1: Connection refused")
        );
        let twin = RunError::DuplicateInstance {
            instance_id: "a".into(),
            fences: 3,
        };
        assert_eq!(twin.broker_failure(), None);

        // What `/readyz` answers while the next session is pending.
        let view = crate::ops::health::View {
            phase: Phase::Retrying,
            progress_age: Duration::from_secs(1),
            stall: Duration::from_secs(300),
            last_error: Some((
                Duration::from_secs(4),
                session_report(&e, e.broker_failure()),
            )),
        };
        assert_eq!(
            view.unready(),
            [
                "session failed; a new one starts shortly".to_owned(),
                format!(
                    "last session error 4 s ago: Kafka: fetching topic metadata: {}; the last \
                     broker connection failed: b:9092/1: Connection refused",
                    KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure)
                ),
            ]
        );
    }
}
