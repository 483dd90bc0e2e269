//! The progress marker on the real broker (the librdkafka mock shows aborted records, so it
//! cannot prove any of this): an aborted marker is invisible, a committed one behind another
//! producer's open transaction is found by reading to the high watermark (and missed by a
//! reader that stops at the first end of partition: the trap is real), and another database's
//! progress stops the agent before it fences anyone.

mod forward_support;

use std::time::{Duration, Instant};

use edge_agent::forward::producer::reader_config;
use edge_agent::forward::progress::{self, instance_id, Marker, Wait};
use edge_agent::forward::ForwardError;
use edge_tests::kafka::{base_config, create_topic, unique_topic};
use edge_tests::Services;
use forward_support::{account, append, Agent};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional producer that is not an agent ("another agent" sharing the progress topic).
fn other_producer(bootstrap: &str) -> BaseProducer {
    let producer: BaseProducer = base_config(bootstrap)
        .set("transactional.id", unique_topic("other-agent"))
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("producer");
    producer.init_transactions(TIMEOUT).expect("init");
    producer
}

fn read(agent: &Agent, wait: Wait) -> Option<Marker> {
    progress::read_last(
        &reader_config(&agent.kafka(), &agent.id),
        &agent.progress,
        &agent.id,
        wait,
        &CancellationToken::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn an_aborted_marker_is_invisible_and_the_agent_resumes_after_the_committed_one() {
    let services = Services::from_env();
    let agent = Agent::new(&services.kafka_bootstrap, "");
    let db = agent.open_db();
    append(&db, 100);
    let running = agent.spawn_forwarder(db.clone());
    running.wait_for(100, TIMEOUT);
    running.stop().expect("stops cleanly");

    // A marker claiming seq 150 for this very instance, aborted: had the agent believed it, it
    // would skip 101..=150.
    let instance = instance_id(&db).expect("instance id");
    let fake = Marker {
        agent: agent.id.clone(),
        instance,
        last_seq: 150,
        committed_ms: 0,
    }
    .encode();
    let other = other_producer(&agent.bootstrap);
    other.begin_transaction().expect("begin");
    other
        .send(
            BaseRecord::to(&agent.progress)
                .key(agent.id.as_str())
                .payload(&fake),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    other.flush(TIMEOUT).expect("flush");
    other.abort_transaction(TIMEOUT).expect("abort");

    let marker = read(&agent, Wait::ForHighWatermark(TIMEOUT)).expect("a marker");
    assert_eq!(
        marker.last_seq, 100,
        "the aborted marker is invisible; the committed one is read"
    );
    assert_eq!(marker.instance, instance);

    append(&db, 50);
    let running = agent.spawn_forwarder(db.clone());
    running.wait_for(150, TIMEOUT);
    running.stop().expect("stops cleanly");
    account(&agent.bootstrap, &agent.topic, &agent.id, 150);
}

#[test]
fn a_marker_behind_another_agents_open_transaction_is_found_by_reading_to_the_high_watermark() {
    let services = Services::from_env();
    let agent = Agent::new(&services.kafka_bootstrap, "");
    // One partition, so the other producer's transaction and our markers share it.
    create_topic(&agent.bootstrap, &agent.progress, 1).unwrap_or_else(|e| panic!("{e}"));
    let db = agent.open_db();
    append(&db, 100);
    let running = agent.spawn_forwarder(db.clone());
    running.wait_for(100, TIMEOUT);

    // Another agent opens a transaction on the progress partition and keeps it open: the last
    // stable offset stops there. Our next marker (seq 150) commits above it.
    let other = other_producer(&agent.bootstrap);
    other.begin_transaction().expect("begin");
    other
        .send(
            BaseRecord::to(&agent.progress)
                .key("another-agent")
                .payload("open"),
        )
        .map_err(|(e, _)| e)
        .expect("send");
    other.flush(TIMEOUT).expect("flush");
    append(&db, 50);
    running.wait_for(150, TIMEOUT);
    running.stop().expect("stops cleanly");

    let naive = read(&agent, Wait::No).expect("an older marker is readable");
    assert_eq!(
        naive.last_seq, 100,
        "stopping at the first end of partition returns a stale marker: resuming from it would \
         resend 101..=150"
    );

    let ender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        other.commit_transaction(TIMEOUT).expect("commit");
    });
    let started = Instant::now();
    let marker = read(&agent, Wait::ForHighWatermark(TIMEOUT)).expect("a marker");
    let waited = started.elapsed();
    ender.join().expect("ender");
    println!("read the newest marker after waiting {waited:?} for the open transaction");
    assert_eq!(marker.last_seq, 150, "the newest committed marker");
    assert!(
        waited >= Duration::from_secs(2),
        "it waited for the open transaction to end ({waited:?})"
    );

    // And the agent resumes after it: nothing resent.
    let running = agent.spawn_forwarder(db.clone());
    append(&db, 10);
    running.wait_for(160, TIMEOUT);
    running.stop().expect("stops cleanly");
    account(&agent.bootstrap, &agent.topic, &agent.id, 160);
}

#[test]
fn progress_committed_by_another_database_stops_the_agent_before_it_fences_the_first() {
    let services = Services::from_env();
    let first = Agent::new(&services.kafka_bootstrap, "");
    let db = first.open_db();
    append(&db, 10);
    let running = first.spawn_forwarder(db.clone());
    running.wait_for(10, TIMEOUT);

    // A second gateway configured with the same id (its own database): refused, naming both.
    let second = first.twin("");
    let second_db = second.open_db();
    append(&second_db, 5);
    let mut refused = second.spawn_forwarder(second_db.clone());
    let error = refused.join().expect_err("the second agent is refused");
    let text = error.to_string();
    println!("second agent: {text}");
    assert!(
        matches!(error, ForwardError::ForeignInstance { .. }),
        "{text}"
    );
    let ours = instance_id(&db).expect("id").to_string();
    let theirs = instance_id(&second_db).expect("id").to_string();
    assert!(
        text.contains(&ours) && text.contains(&theirs),
        "names both instances: {text}"
    );

    // The first was not fenced: it keeps committing.
    append(&db, 5);
    running.wait_for(15, TIMEOUT);
    running
        .stop()
        .expect("the first agent stops cleanly, never fenced");
    account(&first.bootstrap, &first.topic, &first.id, 15);
}

#[test]
fn a_missing_topic_the_agent_may_not_create_stops_it_naming_the_topic() {
    let services = Services::from_env();
    let agent = Agent::new(&services.kafka_bootstrap, "create_topics = false");
    let db = agent.open_db();
    append(&db, 1);
    let mut running = agent.spawn_forwarder(db);
    let error = running.join().expect_err("refused");
    let text = error.to_string();
    println!("{text}");
    assert!(matches!(error, ForwardError::MissingTopic { .. }), "{text}");
    assert!(!error.is_retryable());
    assert!(
        text.contains(".dead") || text.contains(&agent.topic) || text.contains(&agent.progress),
        "names one of the agent's topics: {text}"
    );
}
