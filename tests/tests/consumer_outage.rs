//! Kafka (a private single-node cluster) stopped for 15 s while the consumer merges: the
//! transaction in flight fails, the session ends and a new one starts. The consumer must commit
//! again within 30 s of the broker being back (a generous bound: the figure itself, "finals
//! resume", is measured by `scripts/bench.sh`), and every final must equal the reference over
//! the raw readings: none lost, none doubled.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{
    cells, check_final, now_ms, produce_by_gateway, produce_by_window, reference, terminate,
    FakeAgent, Rng, Running, Setup,
};
use edge_tests::cluster::KafkaCluster;
use edge_tests::http::{free_port, get as http_get};

/// `edge_consumer_last_commit_timestamp_seconds` from `/metrics`.
fn last_commit_s(addr: std::net::SocketAddr) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    body.lines().find_map(|l| {
        l.strip_prefix("edge_consumer_last_commit_timestamp_seconds ")?
            .parse()
            .ok()
    })
}

#[test]
fn kafka_stopped_mid_merge_the_consumer_commits_again_within_30_s_and_every_final_is_exact() {
    let started = Instant::now();
    let cluster = KafkaCluster::start(1);
    let bootstrap = cluster.bootstrap();
    println!(
        "private Kafka at {bootstrap} up after {:?}",
        started.elapsed()
    );
    let mut setup = Setup::new(&bootstrap, "cons-outage", 3);
    // Small transactions: the merge of the second part is still going when the broker stops.
    setup.batch = 5;
    let addr = free_port();
    let ops = format!("[ops]\nmetrics = true\nmetrics_listen = \"{addr}\"\nhealth_stall_s = 120\n");
    let config = setup.config("a", 60_000, "", "", &ops);

    let gateways = ["gw-a", "gw-b", "gw-c"];
    let series = ["o.s1", "o.s2", "o.s3", "o.s4"];
    let base = (now_ms() / 60_000 - 200) * 60_000;
    let size = 10_000;
    let data = cells(&mut Rng(0x07a6e), &gateways, &series, 48, base, size);
    let part = |from: i64, to: i64| -> Vec<_> {
        data.iter()
            .filter(|c| (base + from * size..base + to * size).contains(&c.start_ms))
            .cloned()
            .collect()
    };
    let (before, during, after) = (part(0, 16), part(16, 32), part(32, 48));
    let mut agents = FakeAgent::fleet(&bootstrap, &gateways);
    produce_by_window(&bootstrap, &setup.input, &before, &mut agents);
    drop(agents);

    let mut consumer = Running(setup.spawn(&config, "a"));
    setup.wait_for_finals(&reference(&before, None), Duration::from_secs(120));
    println!("first part final ({:?})", started.elapsed());

    // The second part lands all at once; the broker stops while the consumer merges it.
    produce_by_gateway(&bootstrap, &setup.input, &during, &gateways);
    cluster.stop();
    println!("Kafka stopped mid-merge ({:?})", started.elapsed());
    std::thread::sleep(Duration::from_secs(15));
    cluster.restart_stopped();
    let back = Instant::now();
    let back_s = now_ms() as f64 / 1000.0;
    println!("Kafka back ({:?})", started.elapsed());

    // The third part, from gateways that reconnect: the consumer has work after the outage.
    let mut agents = FakeAgent::fleet(&bootstrap, &gateways);
    produce_by_window(&bootstrap, &setup.input, &after, &mut agents);
    let resumed = loop {
        if last_commit_s(addr).is_some_and(|t| t >= back_s) {
            break back.elapsed();
        }
        assert!(
            consumer.0.try_wait().expect("poll").is_none(),
            "the consumer exited during the outage; its log ends:\n{}",
            setup.log_tail("a", 30)
        );
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no commit within 30 s of Kafka being back; the consumer's log ends:\n{}",
            setup.log_tail("a", 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("the consumer committed again {resumed:?} after Kafka was back");

    let expected = reference(&data, None);
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(120));
    assert_eq!(finals.len(), expected.len(), "one final per window");
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }
    terminate(&mut consumer.0);
    let sessions = setup
        .log_tail("a", 100_000)
        .matches("session failed; starting a new one")
        .count();
    println!(
        "{} finals exact after the outage ({sessions} session(s) ended by it; {:?})",
        finals.len(),
        started.elapsed()
    );
}
