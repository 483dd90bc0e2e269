//! A private three-node cluster (`min.insync.replicas=2`, topics with replication factor 3):
//! one broker is SIGKILLed while the forwarder drains 100,000 records. Transactions keep
//! committing on the other two; every record is in Kafka exactly once.

mod forward_support;

use std::time::{Duration, Instant};

use edge_tests::cluster::KafkaCluster;
use forward_support::{account, append, Agent};

#[test]
fn one_of_three_brokers_killed_mid_drain_loses_and_duplicates_nothing() {
    const N: u64 = 100_000;
    let started = Instant::now();
    let cluster = KafkaCluster::start(3);
    let bootstrap = cluster.bootstrap();
    println!(
        "private 3-node Kafka at {bootstrap} up after {:?}",
        started.elapsed()
    );
    let agent = Agent::new(&bootstrap, "partitions = 3\nreplication_factor = 3");
    let db = agent.open_db();
    append(&db, N);
    let running = agent.spawn_forwarder(db.clone());
    running.wait_for(N / 5, Duration::from_secs(120));
    let at_kill = running.committed();
    cluster.kill_node(1);
    println!("broker 1 killed at seq {at_kill}");
    running.wait_for(N, Duration::from_secs(300));
    running.report_drained(started);
    running.stop().expect("stops cleanly");
    assert!(at_kill < N, "the broker died mid-drain");
    // The readers below bootstrap from every node; bring the dead one back first.
    cluster.restart_stopped();
    account(&bootstrap, &agent.topic, &agent.id, N);
    println!("total {:?}", started.elapsed());
}
