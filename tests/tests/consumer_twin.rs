//! Two processes started with one `[kafka] instance_id` (a copied configuration): each join of
//! one fences the other's group member (static membership) and each `init_transactions` the
//! other's producer. Neither may stall silently: one of them stops with an error that names the
//! instance id, the other keeps merging, and every final is exact (none lost, none doubled).

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{
    cells, check_final, now_ms, produce_by_window, reference, terminate, FakeAgent, Rng, Running,
    Setup,
};
use edge_tests::Services;

#[test]
fn a_second_process_with_the_same_instance_id_is_stopped_with_a_message_and_finals_stay_exact() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-twin", 3);
    let config = setup.config("a", 60_000, "", "", "");

    let mut first = Running(setup.spawn(&config, "a"));
    setup.wait_for_assignments("a", 1, Duration::from_secs(60));
    println!("first process assigned ({:?})", started.elapsed());
    // The same configuration again, logging to its own file.
    let mut twin = Running(setup.spawn(&config, "twin"));

    let deadline = Instant::now() + Duration::from_secs(120);
    let (stopped, survivor) = loop {
        if let Some(status) = first.0.try_wait().expect("poll first") {
            break (("a", status), &mut twin);
        }
        if let Some(status) = twin.0.try_wait().expect("poll twin") {
            break (("twin", status), &mut first);
        }
        assert!(
            Instant::now() < deadline,
            "both processes still run after 120 s with one instance id; logs end:\n{}\n---\n{}",
            setup.log_tail("a", 15),
            setup.log_tail("twin", 15)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (name, status) = stopped;
    let log = setup.log_tail(name, 200);
    assert!(
        !status.success(),
        "a fenced twin exits with failure: {status}"
    );
    // Its last words: the twin named by the consumer's fence count, or (when a transaction was
    // open) the producer fenced by the other's init_transactions.
    let reason = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("another consumer runs with group.instance.id \"a\"")
                || l.contains("Kafka (fatal)")
        })
        .unwrap_or_else(|| {
            panic!(
                "the stopped process says why; its log ends:\n{}",
                setup.log_tail(name, 15)
            )
        });
    println!(
        "{name} stopped ({status}) after {:?}: {}",
        started.elapsed(),
        reason.trim()
    );

    // The survivor owns the group alone and merges everything exactly once.
    let gateways = ["gw-a", "gw-b"];
    let series = ["t.s1", "t.s2"];
    let base = (now_ms() / 60_000 - 200) * 60_000;
    let data = cells(&mut Rng(0x7_717), &gateways, &series, 12, base, 10_000);
    let mut agents = FakeAgent::fleet(bootstrap, &gateways);
    produce_by_window(bootstrap, &setup.input, &data, &mut agents);
    let expected = reference(&data, None);
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(120));
    assert_eq!(finals.len(), expected.len(), "one final per window");
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }
    assert!(
        survivor.0.try_wait().expect("poll survivor").is_none(),
        "the survivor still runs"
    );
    terminate(&mut survivor.0);
    println!(
        "{} finals exact from the survivor ({:?})",
        finals.len(),
        started.elapsed()
    );
}
