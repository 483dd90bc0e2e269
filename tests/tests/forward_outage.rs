//! Kafka (a private single-node cluster) stopped for a minute and started again while records
//! keep being appended to the outbox: the forwarder retries with capped backoff, drains the
//! backlog oldest first when Kafka is back, and every record is in Kafka exactly once.

mod forward_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_tests::cluster::KafkaCluster;
use forward_support::{account, append, Agent};

#[test]
fn kafka_stopped_for_a_minute_while_records_keep_arriving_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let cluster = KafkaCluster::start(1);
    let bootstrap = cluster.bootstrap();
    println!(
        "private Kafka at {bootstrap} up after {:?}",
        started.elapsed()
    );
    let agent = Agent::new(&bootstrap, "");
    let db = agent.open_db();
    let running = agent.spawn_forwarder(db.clone());

    // 200 records every 100 ms for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                append(&db, 200);
                total += 200;
                std::thread::sleep(Duration::from_millis(100));
            }
            total
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "before the outage: committed through {}",
        running.committed()
    );
    assert!(running.committed() > 0, "forwarding before the outage");

    cluster.stop();
    let at_stop = running.committed();
    println!("Kafka stopped; committed through {at_stop}");
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(10));
        let depth = edge_agent::outbox::stats(&db).expect("stats").depth;
        println!(
            "  outage: committed through {}, outbox depth {depth}",
            running.committed()
        );
    }
    let during = running.committed();
    cluster.restart_stopped();
    println!("Kafka restarted after {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let total = appender.join().expect("appender");
    println!("appended {total} records in all");
    running.wait_for(total, Duration::from_secs(180));
    running.report_drained(started);
    running.stop().expect("stops cleanly");
    assert!(
        during <= at_stop + 2000,
        "nothing committed while Kafka was down beyond the batch in flight"
    );
    assert_eq!(
        edge_agent::outbox::stats(&db).expect("stats").depth,
        0,
        "outbox trimmed"
    );
    account(&bootstrap, &agent.topic, &agent.id, total);
    println!("total {:?}", started.elapsed());
}
