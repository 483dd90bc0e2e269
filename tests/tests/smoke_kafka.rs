//! Smoke test: our Kafka client (rdkafka, librdkafka bundled) against the real broker started by
//! `tests/services/services.sh`. Proves what the mock cluster cannot: an aborted transaction is
//! invisible to `read_committed` readers, ours and kcat alike.

use std::time::{Duration, Instant};

use edge_tests::kafka::{
    base_config, classify, create_topic, kcat_count_committed, read_committed, unique_topic,
    KafkaTestError,
};
use edge_tests::Services;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TXN_TIMEOUT: Duration = Duration::from_secs(15);

fn transactional_producer(bootstrap: &str) -> BaseProducer {
    base_config(bootstrap)
        .set("transactional.id", unique_topic("smoke-txn"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", "30000")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("a transactional producer is configured")
}

/// Sends `values` in one transaction, then commits or aborts it.
fn transaction(
    producer: &BaseProducer,
    bootstrap: &str,
    topic: &str,
    values: &[String],
    commit: bool,
) -> Result<(), KafkaTestError> {
    let fail = |during, e| classify(bootstrap, during, TXN_TIMEOUT, e);
    producer
        .begin_transaction()
        .map_err(|e| fail("beginning a transaction", e))?;
    for value in values {
        producer
            .send(BaseRecord::to(topic).key("smoke").payload(value))
            .map_err(|(e, _)| fail("sending a record", e))?;
    }
    if commit {
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| fail("committing a transaction", e))
    } else {
        producer
            .flush(TXN_TIMEOUT)
            .map_err(|e| fail("flushing", e))?;
        producer
            .abort_transaction(TXN_TIMEOUT)
            .map_err(|e| fail("aborting a transaction", e))
    }
}

#[test]
fn read_committed_readers_see_the_committed_transaction_and_not_the_aborted_one() {
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let topic = unique_topic("smoke-txn");
    create_topic(bootstrap, &topic, 1).unwrap_or_else(|e| panic!("{e}"));

    let producer = transactional_producer(bootstrap);
    producer
        .init_transactions(TXN_TIMEOUT)
        .map_err(|e| classify(bootstrap, "initialising transactions", TXN_TIMEOUT, e))
        .unwrap_or_else(|e| panic!("{e}"));
    let committed: Vec<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    let aborted: Vec<String> = (0..5).map(|i| format!("aborted-{i}")).collect();
    transaction(&producer, bootstrap, &topic, &committed, true).unwrap_or_else(|e| panic!("{e}"));
    transaction(&producer, bootstrap, &topic, &aborted, false).unwrap_or_else(|e| panic!("{e}"));
    // A second committed transaction after the abort: the reader must get past the aborted
    // records and the control markers to reach it.
    let after: Vec<String> = (0..3).map(|i| format!("after-{i}")).collect();
    transaction(&producer, bootstrap, &topic, &after, true).unwrap_or_else(|e| panic!("{e}"));

    let records = read_committed(bootstrap, &topic, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let seen: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap_or_default()).expect("utf-8"))
        .collect();
    let expected: Vec<String> = committed.iter().chain(&after).cloned().collect();
    assert_eq!(
        seen, expected,
        "read_committed saw exactly the committed records, in order"
    );

    let kcat = kcat_count_committed(bootstrap, &topic).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kcat,
        expected.len(),
        "kcat with isolation.level=read_committed counts the same"
    );
}

#[test]
fn a_broker_that_is_not_there_fails_within_seconds_with_a_clear_message() {
    // Nothing listens on port 1 of loopback. Every helper call must come back with an error
    // naming the broker within its timeout, not hang: the same path a test takes when Kafka
    // stops in the middle of a run.
    let bootstrap = "127.0.0.1:1";
    let started = Instant::now();
    let err = create_topic(bootstrap, "never-created", 1).expect_err("no broker, no topic");
    let message = err.to_string();
    assert!(
        message.contains(bootstrap),
        "error names the broker: {message}"
    );
    assert!(
        matches!(err, KafkaTestError::Unreachable { .. }),
        "a missing broker is reported as unreachable: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the failure came after {:?}: a hang guard, not a performance figure",
        started.elapsed()
    );
}

#[test]
fn a_private_three_node_cluster_survives_one_broker_killed() {
    // The harness fault tests use: a cluster of their own, where a broker can be killed without
    // disturbing the shared one. With min.insync.replicas=2, a transaction still commits with one
    // of three brokers down.
    let cluster = edge_tests::cluster::KafkaCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let topic = unique_topic("smoke-three");
    create_topic(&bootstrap, &topic, 3).unwrap_or_else(|e| panic!("{e}"));
    cluster.kill_node(3);
    let producer = transactional_producer(&bootstrap);
    producer
        .init_transactions(TXN_TIMEOUT)
        .map_err(|e| classify(&bootstrap, "initialising transactions", TXN_TIMEOUT, e))
        .unwrap_or_else(|e| panic!("{e}"));
    let values: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    transaction(&producer, &bootstrap, &topic, &values, true).unwrap_or_else(|e| panic!("{e}"));
    cluster.restart_stopped();
    let records = read_committed(&bootstrap, &topic, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.len(), values.len(), "every committed record, once");
}
