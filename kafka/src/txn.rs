//! The transactional producer's life cycle, as both services run it: create, `init` (fences
//! any zombie with our `transactional.id` and aborts its open transaction), then per
//! transaction `begin`, `send` each record, `wait_delivered`, `commit`; after an error `abort`.
//! Every call is bounded by the deadline the caller gives.
//!
//! # Why the delivery reports are served here
//!
//! `commit_transaction` flushes by itself, but rdkafka's flush polls in steps that always last
//! 100 ms, which would add 100 ms to every transaction; [`TxnProducer::wait_delivered`] serves
//! the reports in 1 ms steps first and leaves it nothing to wait for.
//!
//! # Why no timed `poll` here
//!
//! rdkafka's `BaseProducer::poll(t)` keeps polling until `t` has passed, and hands librdkafka
//! the time left in whole milliseconds, rounded down: the last millisecond of every call is a
//! busy loop (`clock_gettime` and the queue's mutex), so `poll(1 ms)` spins for all of it. The
//! waits here ([`TxnProducer::serve_for`]) poll without waiting and sleep in between: a 10 s marker-only
//! heartbeat of the agent's idle forwarder cost 10-25 ms of CPU spinning in `wait_delivered`.
//!
//! # Fencing
//!
//! A second producer with our `transactional.id` bumps the epoch; every call of ours then fails
//! with a fatal fencing error, or librdkafka records one as the producer's fatal error while
//! the call itself says something vaguer. [`TxnProducer::fenced`] looks at both.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

use crate::broker_log::{self, BrokerLog};
use crate::errors::{fenced_code, FENCED};

/// The pause between two looks at the delivery reports while a transaction's records are on
/// their way: short enough that the commit follows the last report within a fraction of a
/// millisecond, long enough that waiting costs no CPU worth measuring.
pub const DELIVERY_STEP: Duration = Duration::from_micros(200);

/// How long one slice of [`TxnProducer::abort`] waits before the delivery reports are served.
pub const ABORT_STEP: Duration = Duration::from_millis(50);

/// One transactional producer (settings from [`crate::set_transactional`]).
pub struct TxnProducer {
    producer: BaseProducer<BrokerLog>,
}

impl TxnProducer {
    /// Creates the producer; no broker is contacted yet.
    pub fn create(config: &ClientConfig) -> Result<TxnProducer, KafkaError> {
        Ok(TxnProducer {
            producer: broker_log::create(config)?,
        })
    }

    /// `init_transactions`: waits until our previous producer's transaction is completed or
    /// aborted, and fences it.
    pub fn init(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.init_transactions(timeout)
    }

    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    /// Enqueues one record, serving delivery reports (10 ms polls) while librdkafka's queue is
    /// full, for at most `timeout`.
    pub fn send<K, P>(
        &self,
        mut record: BaseRecord<'_, K, P>,
        timeout: Duration,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    self.serve_for(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Adds the consumer's offsets to the open transaction (consume-transform-produce).
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        self.producer
            .send_offsets_to_transaction(offsets, group, timeout)
    }

    /// Serves delivery reports in 1 ms steps until every message is acknowledged; a
    /// `Flush(OperationTimedOut)` error after `timeout`.
    pub fn wait_delivered(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            self.serve_for(DELIVERY_STEP);
        }
        Ok(())
    }

    pub fn commit(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.commit_transaction(timeout)
    }

    /// `abort_transaction`, serving delivery reports while it waits.
    ///
    /// librdkafka's abort purges what is queued and then waits until every purged or in-flight
    /// message has had its delivery report *served*; on a `BaseProducer` only our own `poll`
    /// serves them, and nobody polls while the call blocks. So one long call fails after its
    /// whole timeout with "Failed to flush all outstanding messages ... the event queue must be
    /// polled" (seen in the demo's consumer after a broker restart: the session then hung for
    /// the rest of a minute). Instead the abort is called in [`ABORT_STEP`] slices, each a
    /// retriable timeout in librdkafka's terms (the abort goes on in the background), with the
    /// reports served in between, until it completes or `timeout` has passed.
    pub fn abort(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(ABORT_STEP);
            match self.producer.abort_transaction(step) {
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && Instant::now() < deadline =>
                {
                    self.serve_for(Duration::from_millis(1));
                }
                done => return done,
            }
        }
    }

    /// Serves the delivery reports that are there, without waiting. (`poll(0)` serves one
    /// event: poll again while that lowered the count of records in flight.)
    pub fn serve(&self) {
        loop {
            let before = self.producer.in_flight_count();
            self.producer.poll(Duration::ZERO);
            let after = self.producer.in_flight_count();
            if after == 0 || after >= before {
                return;
            }
        }
    }

    /// Serves the reports that are there, then sleeps `pause` (no spinning: see the module
    /// documentation), then serves again.
    pub fn serve_for(&self, pause: Duration) {
        self.serve();
        std::thread::sleep(pause);
        self.serve();
    }

    /// Whether `error` (raised by a call of this producer) means another producer with our
    /// `transactional.id` fenced ours: the error says so, or the producer's fatal error does.
    pub fn fenced(&self, error: &KafkaError) -> bool {
        fenced_code(error).is_some()
            || self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| FENCED.contains(&code))
    }

    /// The producer itself.
    pub fn producer(&self) -> &BaseProducer<BrokerLog> {
        &self.producer
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::*;
    use crate::{client_config, set_transactional};

    /// librdkafka's mock cluster accepts every transactional call (it does not hide aborted
    /// records, which plays no part here): the life cycle runs end to end without a broker.
    /// A mock cluster with topic `t` and an initialized transactional producer on it (the
    /// cluster lives as long as the producer is used).
    fn mock_producer(id: &str) -> (MockCluster<'static, DefaultProducerContext>, TxnProducer) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let mut config = client_config(&cluster.bootstrap_servers());
        set_transactional(&mut config, id, 10_000);
        let p = TxnProducer::create(&config).unwrap();
        p.init(Duration::from_secs(10)).unwrap();
        (cluster, p)
    }

    #[test]
    fn a_transaction_runs_init_begin_send_wait_commit_and_another_aborts() {
        let (_cluster, p) = mock_producer("edge-kafka.test");
        let timeout = Duration::from_secs(10);
        p.begin().unwrap();
        for i in 0..3u8 {
            p.send(BaseRecord::<[u8], [u8]>::to("t").payload(&[i][..]), timeout)
                .unwrap();
        }
        p.wait_delivered(timeout).unwrap();
        assert_eq!(p.producer().in_flight_count(), 0);
        p.commit(timeout).unwrap();
        p.begin().unwrap();
        p.send(
            BaseRecord::<[u8], [u8]>::to("t").payload(&b"x"[..]),
            timeout,
        )
        .unwrap();
        // librdkafka's abort wants the delivery reports served first.
        p.wait_delivered(timeout).unwrap();
        p.abort(timeout).unwrap();
        let plain = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        assert!(!p.fenced(&plain));
    }

    /// Regression: an abort with delivery reports still unserved failed after its whole timeout
    /// ("Failed to flush all outstanding messages ... the event queue must be polled"), so the
    /// consumer's session hung after a broker restart instead of starting over.
    #[test]
    fn an_abort_with_unserved_delivery_reports_serves_them_and_completes() {
        let (_cluster, p) = mock_producer("edge-kafka.abort");
        let timeout = Duration::from_secs(10);
        p.begin().unwrap();
        for i in 0..1000u32 {
            let payload = i.to_le_bytes();
            p.send(
                BaseRecord::<[u8], [u8]>::to("t").payload(&payload[..]),
                timeout,
            )
            .unwrap();
        }
        // Let them reach the broker, so their delivery reports wait in the queue.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        p.abort(timeout).expect("the abort completes");
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        assert_eq!(p.producer().in_flight_count(), 0);
        // The producer is usable again: the next transaction commits.
        p.begin().unwrap();
        p.send(
            BaseRecord::<[u8], [u8]>::to("t").payload(&b"x"[..]),
            timeout,
        )
        .unwrap();
        p.commit(timeout).unwrap();
    }
}
