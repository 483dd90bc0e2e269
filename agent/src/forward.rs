//! The forwarder: delivers the outbox to Kafka exactly once, with a transactional producer and a
//! progress marker committed in the same transaction as the records.
//!
//! # Loop
//!
//! A *session* is one producer's life: create the producer (`transactional.id =
//! edge-agent.<agent id>`, `acks=all`, idempotence, zstd), `init_transactions`, read this
//! agent's last committed marker from Kafka, trim the local outbox through it, then repeat:
//! read a bounded batch after the last delivered seq ([`outbox::read_after`]), begin a
//! transaction, send each record (topic by kind and pipeline, key = the record's key, headers
//! `agent`, `seq`, `schema`; see [`route`]), send the marker naming the batch's last seq, commit,
//! then [`outbox::trim_through`]. It runs on a blocking thread of its own: librdkafka's
//! transaction calls block. The producer's life cycle (bounded init, begin, send, delivery
//! wait, commit, abort, fencing detection), the base client settings and the topic calls are
//! `edge_kafka`'s, shared with the consumer; the header and schema names are
//! `edge_protocol::contract`'s. Trims are fsynced at most once a second and at a
//! clean stop (see `outbox` invariant 3 for why the others need none).
//!
//! # Where the progress marker lives: a compacted topic
//!
//! Markers go to a compacted topic (`edge.progress` by default, `cleanup.policy=compact`,
//! `segment.ms` 10 min so the cleaner gets to run), keyed by agent id, value encoded as in
//! [`progress`] (agent id, instance id, last seq). Compaction keeps the newest marker of every
//! agent forever, however long the agent is away.
//!
//! Rejected: a transactional offset commit (`send_offsets_to_transaction`) for a per-agent
//! consumer group. Group offsets of an empty group expire after `offsets.retention.minutes`
//! (7 days by default), so an agent that crashed between commit and trim and stayed down for a
//! week would find no progress and resend its last batch; and it would need a consumer group per
//! agent on the cluster. The compacted topic has neither problem; its one trap (a
//! `read_committed` reader sees only up to the last stable offset, which other agents' open
//! transactions hold back) is handled in [`progress::read_last`] by reading up to the high
//! watermark taken after `init_transactions`. `tests/tests/forward_progress.rs` shows on the
//! real broker that an aborted marker is invisible, that a committed one is found behind
//! another producer's open transaction, and that the agent resumes after it.
//!
//! # Invariants and crash reasoning
//!
//! 1. **The marker commits in the same transaction as the records**, so for a `read_committed`
//!    reader the marker naming seq `n` exists exactly when records `..= n` (of this instance)
//!    do. Kafka's committed marker is therefore the truth about what was delivered; local state
//!    is only a cache that may lag.
//! 2. **Trim after commit.** The outbox loses a record only after the transaction holding it
//!    committed. A crash before the commit: `init_transactions` of the next session aborts the
//!    open transaction (its records stay invisible), the marker still names the previous batch,
//!    and the batch is sent again. A crash after the commit and before the trim: the marker
//!    names the batch, the next session trims through it and resumes after it. Nothing is lost,
//!    nothing appears twice.
//! 3. **Progress is read after `init_transactions`.** That call waits until our previous
//!    producer's transaction is completed or aborted, so the marker read afterwards cannot be
//!    overtaken by a commit still in flight.
//! 4. **Every failure ends the session.** After an error the open transaction is aborted (if
//!    possible) and the next session starts again from Kafka's committed marker, never from what
//!    this process believed. An ambiguous commit (timed out: did it happen?) is settled the same
//!    way.
//! 5. **Fencing is fatal.** A second producer with our transactional id fences ours; the agent
//!    stops with "fenced: another agent with id X took over" instead of fencing it back. An
//!    idle forwarder commits a marker-only transaction every [`IDLE_HEARTBEAT`] so that it
//!    notices too.
//! 6. **One instance per agent id.** Markers carry the instance id of the database that wrote
//!    them; a marker of another instance (two gateways with one id, a replaced disk) or one ahead
//!    of this outbox (a database restored from a backup) stops the agent, because resuming from
//!    it would skip this outbox's records. `kafka.adopt_agent_id = true` takes the id over.
//! 7. **Bounded memory.** One batch (`batch_max_records`, `batch_max_bytes`) at a time;
//!    librdkafka's queue is bounded by `queue.buffering.max.*`.
//! 8. **Outages.** Broker errors and timeouts are retried forever with capped backoff (100 ms to
//!    5 s); meanwhile the outbox grows, counting into the ingest quota, which then applies
//!    backpressure upstream. Shutdown is checked between batches; an open transaction commits
//!    or fails within [`COMMIT_TIMEOUT`] (30 s), and a failed one is aborted within 10 s more,
//!    so a stop takes at most about 40 s even with the broker gone (what is not committed is
//!    sent again by the next start).

pub mod error;
pub mod producer;
pub mod progress;
pub mod route;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_kafka::TxnProducer;
use edge_protocol::backoff::Backoff;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseRecord;
use redb::{Database, Durability};
use tokio_util::sync::CancellationToken;

use error::kafka;
pub use error::ForwardError;
use progress::{InstanceId, Marker};
use route::Routes;

use crate::clock::unix_ms;
use crate::config::{Config, KafkaSection};
use crate::outbox::{self, OutboxRecord};
use crate::wake::Wake;

/// Upper bound of one `commit_transaction` (and of `init_transactions`).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of aborting after an error.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the forwarder goes without an fsync of its outbox trims; trims in between commit
/// without one (`outbox` invariant 3: a crash brings back only records Kafka has, which the next
/// session trims again). Saves an fsync per Kafka transaction (issue 18; slow on eMMC).
const TRIM_SYNC_EVERY: Duration = Duration::from_secs(1);
/// An idle forwarder commits a marker-only transaction this often, to notice fencing.
pub const IDLE_HEARTBEAT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counters of the forwarder, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    pub transactions_committed: AtomicU64,
    pub records_committed: AtomicU64,
    /// Payload bytes committed.
    pub bytes_committed: AtomicU64,
    /// Highest outbox seq known committed in Kafka (from a commit or the marker read at start).
    pub last_committed_seq: AtomicU64,
    /// Duration of the last `commit_transaction`, in microseconds ...
    pub commit_latency_us_last: AtomicU64,
    /// ... the sum over all commits (mean = sum / transactions_committed) ...
    pub commit_latency_us_sum: AtomicU64,
    /// ... and the longest.
    pub commit_latency_us_max: AtomicU64,
    pub transactions_aborted: AtomicU64,
    /// Sessions that ended in a retryable error (each is followed by a backoff).
    pub session_errors: AtomicU64,
    /// The last of those errors, as logged (`/readyz` says it while the forwarder is failing:
    /// a missing ACL, a wrong password, an unreachable broker).
    pub last_error: std::sync::Mutex<String>,
    /// Hop `kafka`: from the windowing step that appended a record to the outbox (its
    /// `created_ms`, wall clock) to the commit of the Kafka transaction that carried it, once
    /// per record.
    pub latency: edge_ops_http::prometheus::Histogram,
}

/// The forwarder's inputs.
pub struct Forwarder {
    pub agent: String,
    pub kafka: KafkaSection,
    /// Pipeline names, to check (or create) their topics at start.
    pub pipelines: Vec<String>,
    pub db: Arc<Database>,
    pub metrics: Arc<ForwardMetrics>,
    /// Notified by the windowing stage after each commit that appended outbox records: an idle
    /// forwarder waits on it ([`crate::wake`]) up to [`IDLE_HEARTBEAT`], so whoever sets it also
    /// notifies it on cancellation (the service does); `None`: it looks again every
    /// `poll_interval_ms`.
    pub outbox_appended: Option<Arc<Wake>>,
}

impl Forwarder {
    /// The forwarder a configuration asks for; `None` without a `[kafka]` table.
    pub fn from_config(
        config: &Config,
        db: Arc<Database>,
        metrics: Arc<ForwardMetrics>,
    ) -> Option<Forwarder> {
        Some(Forwarder {
            agent: config.agent.id.get_ref().clone(),
            kafka: config.kafka.clone()?,
            pipelines: config
                .pipeline
                .iter()
                .map(|p| p.name.get_ref().clone())
                .collect(),
            db,
            metrics,
            outbox_appended: None,
        })
    }

    /// Runs sessions until `cancel` fires (`Ok`) or an error no retry can fix. Blocks: call it
    /// on a thread of its own (`spawn_blocking`).
    pub fn run(self, cancel: CancellationToken) -> Result<(), ForwardError> {
        outbox::create(&self.db)?;
        let instance = progress::instance_id(&self.db)?;
        let mut state = Session {
            routes: Routes::new(&self.kafka.topics),
            ensured: HashSet::new(),
            producer_config: producer::producer_config(&self.kafka, &self.agent),
            reader_config: producer::reader_config(&self.kafka, &self.agent),
            instance,
            forwarder: &self,
        };
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match state.run(&cancel, &mut backoff) {
                Ok(()) | Err(ForwardError::Cancelled) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    self.metrics.session_errors.fetch_add(1, Ordering::Relaxed);
                    let report = match error.broker_failure() {
                        Some(why) => format!("{error}; the last broker connection failed: {why}"),
                        None => error.to_string(),
                    };
                    if let Ok(mut last) = self.metrics.last_error.lock() {
                        last.clone_from(&report);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %report, retry_in_ms = delay.as_millis() as u64, "forwarder: retrying");
                    sleep(delay, &cancel);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What a session needs; lives across sessions so topic checks are not repeated.
struct Session<'f> {
    routes: Routes,
    ensured: HashSet<String>,
    producer_config: ClientConfig,
    reader_config: ClientConfig,
    instance: InstanceId,
    forwarder: &'f Forwarder,
}

impl Session<'_> {
    fn run(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ForwardError> {
        let f = self.forwarder;
        let t0 = Instant::now();
        if self.ensured.is_empty() {
            let topics = self
                .routes
                .known_topics(f.pipelines.iter().map(String::as_str));
            producer::ensure_topics(
                &f.kafka,
                &self.reader_config,
                &topics,
                self.routes.progress(),
            )?;
            self.ensured.extend(topics);
        }
        // Before fencing anyone: a quick look at whose markers carry our id, so a second
        // gateway with the same id refuses to start without stopping the first.
        // Best effort: when it fails, the authoritative read below still checks.
        let glance = progress::read_last(
            &self.reader_config,
            self.routes.progress(),
            &f.agent,
            progress::Wait::No,
            cancel,
        );
        match glance {
            Ok(Some(m)) => {
                self.check_instance(&m)?;
            }
            Ok(None) => {}
            Err(ForwardError::Cancelled) => return Err(ForwardError::Cancelled),
            Err(error) => tracing::debug!(%error, "forwarder: no quick look at the progress"),
        }
        let t1 = Instant::now();
        let producer =
            TxnProducer::create(&self.producer_config).map_err(kafka("creating the producer"))?;
        producer
            .init(COMMIT_TIMEOUT)
            .map_err(|e| self.classify(&producer, "initialising transactions", e))?;
        let t2 = Instant::now();
        let mut last = self.resume_point(cancel)?;
        tracing::info!(
            topics_and_glance_ms = (t1 - t0).as_millis() as u64,
            init_transactions_ms = (t2 - t1).as_millis() as u64,
            progress_ms = t2.elapsed().as_millis() as u64,
            "forwarder: session started"
        );
        outbox::trim_through(&f.db, last, Durability::Immediate)?;
        let mut last_sync = Instant::now();
        f.metrics.last_committed_seq.store(last, Ordering::Relaxed);
        let kafka = &f.kafka;
        let max_records = *kafka.batch_max_records.get_ref();
        let max_bytes = *kafka.batch_max_bytes.get_ref();
        let idle = Duration::from_millis(kafka.poll_interval_ms.max(1));
        let mut last_commit = Instant::now();
        // When the last transaction with records began: one that is not full begins at least
        // `idle` later ([`gather_for`]).
        let mut last_start: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                // A clean stop leaves the trims on disk (a crash would leave them to the marker).
                outbox::trim_through(&f.db, last, Durability::Immediate)?;
                return Ok(());
            }
            // Read before looking at the outbox ([`crate::wake`]: no lost wake-up).
            let seen = f.outbox_appended.as_ref().map(|w| w.generation());
            let mut batch = outbox::read_after(&f.db, last, max_records, max_bytes)?;
            if let Some(wait) = gather_for(&batch, last_start, idle, max_records, max_bytes) {
                sleep(wait, cancel);
                batch = outbox::read_after(&f.db, last, max_records, max_bytes)?;
            }
            let Some(&(through, _)) = batch.last() else {
                // An idle producer cannot notice that it was fenced; a marker-only transaction
                // now and then does (and changes nothing: the marker names the same seq).
                if last_commit.elapsed() >= IDLE_HEARTBEAT {
                    self.deliver(&producer, &[], last)?;
                    last_commit = Instant::now();
                }
                match (&f.outbox_appended, seen) {
                    // Asleep until the stage appends (then `idle` more, so the records of the
                    // next few commits go in one transaction) or the heartbeat is due. The
                    // service's cancellation wakes it too (issue 18: no idle polling).
                    (Some(wake), Some(seen)) => {
                        let heartbeat = IDLE_HEARTBEAT.saturating_sub(last_commit.elapsed());
                        if wake.wait_past(seen, heartbeat) {
                            sleep(idle, cancel);
                        }
                    }
                    _ => sleep(idle, cancel),
                }
                continue;
            };
            self.ensure_batch_topics(&batch)?;
            last_start = Some(Instant::now());
            self.deliver(&producer, &batch, through)?;
            last_commit = Instant::now();
            backoff.reset();
            last = through;
            let durability = if last_sync.elapsed() >= TRIM_SYNC_EVERY {
                last_sync = Instant::now();
                Durability::Immediate
            } else {
                Durability::None
            };
            outbox::trim_through(&f.db, through, durability)?;
        }
    }

    /// The seq to resume after, from the marker in Kafka; checks the instance.
    fn resume_point(&self, cancel: &CancellationToken) -> Result<u64, ForwardError> {
        let f = self.forwarder;
        let topic = self.routes.progress();
        // Other producers' transactions end within their transaction timeout (the broker's
        // `transaction.max.timeout.ms` caps it at 15 min by default); we wait for twice ours.
        let lso_wait =
            Duration::from_millis(f.kafka.transaction_timeout_ms.get_ref().saturating_mul(2));
        let marker = progress::read_last(
            &self.reader_config,
            topic,
            &f.agent,
            progress::Wait::ForHighWatermark(lso_wait),
            cancel,
        )?;
        let stats = outbox::stats(&f.db)?;
        let last = match &marker {
            None => 0,
            Some(m) => self.check_instance(m)?,
        };
        tracing::info!(
            agent = f.agent,
            resume_after = last,
            outbox_depth = stats.depth,
            "forwarder: progress read from Kafka"
        );
        Ok(last)
    }

    /// Where a marker lets this instance resume: its seq when it is ours and within the outbox;
    /// 0 when another instance's (or one ahead of us) is adopted; else the refusal.
    fn check_instance(&self, m: &Marker) -> Result<u64, ForwardError> {
        let f = self.forwarder;
        let next_seq = outbox::stats(&f.db)?.next_seq;
        let foreign = m.instance != self.instance;
        let ahead = m.last_seq >= next_seq;
        if (foreign || ahead) && f.kafka.adopt_agent_id {
            tracing::warn!(agent = f.agent, theirs = %m.instance, ours = %self.instance,
                marker_seq = m.last_seq, "forwarder: adopting the agent id's progress (kafka.adopt_agent_id)");
            Ok(0)
        } else if foreign {
            Err(ForwardError::ForeignInstance {
                agent: f.agent.clone(),
                topic: self.routes.progress().to_owned(),
                ours: self.instance,
                theirs: m.instance,
            })
        } else if ahead {
            Err(ForwardError::MarkerAhead {
                agent: f.agent.clone(),
                marker_seq: m.last_seq,
                next_seq,
            })
        } else {
            Ok(m.last_seq)
        }
    }

    /// Checks (or creates) topics of routes seen for the first time.
    fn ensure_batch_topics(&mut self, batch: &[(u64, OutboxRecord)]) -> Result<(), ForwardError> {
        let mut new = Vec::new();
        for (_, record) in batch {
            let topic = self.routes.topic(record.kind, &record.route);
            if !self.ensured.contains(topic) && !new.iter().any(|t: &String| t == topic) {
                new.push(topic.to_owned());
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let f = self.forwarder;
        producer::ensure_topics(&f.kafka, &self.reader_config, &new, self.routes.progress())?;
        self.ensured.extend(new);
        Ok(())
    }

    /// One transaction: the batch and the marker naming `through`. On failure the transaction
    /// is aborted (when the producer still can) and the error returned.
    fn deliver(
        &mut self,
        producer: &TxnProducer,
        batch: &[(u64, OutboxRecord)],
        through: u64,
    ) -> Result<(), ForwardError> {
        producer
            .begin()
            .map_err(|e| self.classify(producer, "beginning a transaction", e))?;
        let started = Instant::now();
        let result = self.send_batch(producer, batch, through).and_then(|bytes| {
            // Delivery reports in 1 ms steps first: see `edge_kafka::txn`.
            producer
                .wait_delivered(COMMIT_TIMEOUT)
                .map_err(|e| ("waiting for delivery", e))?;
            producer
                .commit(COMMIT_TIMEOUT)
                .map(|()| bytes)
                .map_err(|e| ("committing a transaction", e))
        });
        let m = &self.forwarder.metrics;
        match result {
            Ok(bytes) => {
                let us = started.elapsed().as_micros() as u64;
                m.transactions_committed.fetch_add(1, Ordering::Relaxed);
                m.records_committed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                m.bytes_committed.fetch_add(bytes, Ordering::Relaxed);
                m.last_committed_seq.store(through, Ordering::Relaxed);
                m.commit_latency_us_last.store(us, Ordering::Relaxed);
                m.commit_latency_us_sum.fetch_add(us, Ordering::Relaxed);
                m.commit_latency_us_max.fetch_max(us, Ordering::Relaxed);
                let now = unix_ms();
                for run in batch.chunk_by(|a, b| a.1.created_ms == b.1.created_ms) {
                    let waited = Duration::from_millis(now.saturating_sub(run[0].1.created_ms));
                    m.latency.observe_n(waited, run.len() as u64);
                }
                Ok(())
            }
            Err((during, e)) => {
                let error = self.classify(producer, during, e);
                if !error.is_retryable() {
                    return Err(error);
                }
                match producer.abort(ABORT_TIMEOUT) {
                    Ok(()) => {
                        m.transactions_aborted.fetch_add(1, Ordering::Relaxed);
                        Err(ForwardError::Aborted(Box::new(error)))
                    }
                    // The producer is unusable or the broker away: the next session's
                    // `init_transactions` aborts the transaction.
                    Err(abort) => match self.classify(producer, "aborting", abort) {
                        fenced @ ForwardError::Fenced { .. } => Err(fenced),
                        _ => Err(error),
                    },
                }
            }
        }
    }

    /// Sends every record and the marker; returns the payload bytes sent.
    fn send_batch(
        &mut self,
        producer: &TxnProducer,
        batch: &[(u64, OutboxRecord)],
        through: u64,
    ) -> Result<u64, (&'static str, KafkaError)> {
        let agent = self.forwarder.agent.as_str();
        let mut bytes = 0u64;
        for (i, (seq, record)) in batch.iter().enumerate() {
            let topic = self.routes.topic(record.kind, &record.route);
            let mut out = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(record.payload.as_slice())
                .headers(route::headers(agent, *seq, route::schema(record.kind)));
            if !record.key.is_empty() {
                out = out.key(record.key.as_slice());
            }
            send(producer, out)?;
            bytes += record.payload.len() as u64;
            if i % 1024 == 1023 {
                producer.serve();
            }
        }
        let marker = Marker {
            agent: agent.to_owned(),
            instance: self.instance,
            last_seq: through,
            committed_ms: unix_ms(),
        }
        .encode();
        let out = BaseRecord::<[u8], [u8]>::to(self.routes.progress())
            .key(agent.as_bytes())
            .payload(marker.as_slice())
            .headers(route::headers(agent, through, route::PROGRESS_SCHEMA));
        send(producer, out)?;
        Ok(bytes)
    }

    /// Turns a Kafka error into a [`ForwardError`], recognising fencing.
    fn classify(
        &self,
        producer: &TxnProducer,
        during: &'static str,
        e: KafkaError,
    ) -> ForwardError {
        if producer.fenced(&e) {
            ForwardError::Fenced {
                agent: self.forwarder.agent.clone(),
                transactional_id: producer::transactional_id(&self.forwarder.agent),
            }
        } else {
            ForwardError::Kafka { during, source: e }
        }
    }
}

/// Enqueues one record, waiting (polling) while librdkafka's queue is full.
fn send(
    producer: &TxnProducer,
    record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), (&'static str, KafkaError)> {
    producer
        .send(record, COMMIT_TIMEOUT)
        .map_err(|e| ("sending a record", e))
}

/// Sleeps `d`, waking early when `cancel` fires.
/// Transactions are sized by records, bytes and time: a full batch (`max_records` or
/// `max_bytes`) goes at once, so a backlog drains at full speed; a smaller one waits until
/// `interval` has passed since the previous transaction with records began, so a steady stream
/// makes at most one transaction per `interval` instead of one per commit of the stage. Returns
/// how much longer to wait, if at all.
fn gather_for(
    batch: &[(u64, OutboxRecord)],
    last_start: Option<Instant>,
    interval: Duration,
    max_records: usize,
    max_bytes: usize,
) -> Option<Duration> {
    if batch.is_empty() || batch.len() >= max_records {
        return None;
    }
    // Payload bytes: a little less than the encoded rows `read_after` counts, so a batch cut by
    // bytes may wait once more; never a record lost or late by more than `interval`.
    let bytes: usize = batch.iter().map(|(_, r)| r.payload.len()).sum();
    if bytes >= max_bytes {
        return None;
    }
    let left = interval.checked_sub(last_start?.elapsed())?;
    (!left.is_zero()).then_some(left)
}

fn sleep(d: Duration, cancel: &CancellationToken) {
    let until = Instant::now() + d;
    while !cancel.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

#[cfg(test)]
mod tests;
