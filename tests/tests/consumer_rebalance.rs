//! Two consumer instances: the second joins mid-run (the partitions are split between them),
//! then the first leaves (SIGTERM: it stops between transactions and leaves the group, and the
//! second takes its partitions over, restoring their state from the changelog). Every final
//! equals the batch computation: nothing counted twice, nothing missing.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{
    cells, check_final, now_ms, produce_by_window, reference, terminate, FakeAgent, Rng, Setup,
};
use edge_tests::Services;

#[test]
fn an_instance_joining_mid_run_and_the_first_leaving_count_every_partial_once() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-rebal", 4);
    let gateways = ["gw-a", "gw-b", "gw-c"];
    let series = [
        "r.s1", "r.s2", "r.s3", "r.s4", "r.s5", "r.s6", "r.s7", "r.s8",
    ];
    let now = now_ms();
    let base = (now / 60_000 - 100) * 60_000;
    let data = cells(&mut Rng(4242), &gateways, &series, 30, base, 10_000);
    // Phases cut through windows (a window's partials from a and b in one phase, from c in the
    // next), so open windows move between instances through the changelog.
    let order = |c: &consumer_support::Cell| {
        let g = gateways.iter().position(|g| *g == c.gateway).unwrap() as i64;
        (c.start_ms - base) / 10_000 * 3 + g
    };
    let phase = |from: i64, to: i64| -> Vec<_> {
        data.iter()
            .filter(|c| (from..to).contains(&order(c)))
            .cloned()
            .collect()
    };
    let mut agents = FakeAgent::fleet(bootstrap, &gateways);
    let expected = reference(&data, None);

    let mut first = setup.spawn(&setup.config("one", 60_000, "", "", ""), "one");
    produce_by_window(bootstrap, &setup.input, &phase(0, 32), &mut agents);
    setup.wait_for_assignments("one", 1, Duration::from_secs(60));
    println!(
        "phase 1 produced, instance one running ({:?})",
        started.elapsed()
    );

    let mut second = setup.spawn(&setup.config("two", 60_000, "", "", ""), "two");
    produce_by_window(bootstrap, &setup.input, &phase(32, 62), &mut agents);
    setup.wait_for_assignments("two", 1, Duration::from_secs(60));
    println!(
        "phase 2 produced, instance two joined: {} windows final ({:?})",
        setup.finals().len(),
        started.elapsed()
    );

    terminate(&mut first);
    println!("instance one left ({:?})", started.elapsed());
    produce_by_window(bootstrap, &setup.input, &phase(62, 90), &mut agents);
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(120));
    second.kill().ok();
    second.wait().ok();
    assert_eq!(finals.len(), expected.len(), "no extra windows");
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }
    let one = setup.log_tail("one", usize::MAX);
    let two = setup.log_tail("two", usize::MAX);
    assert!(
        one.contains("partitions revoked"),
        "one gave partitions away"
    );
    assert!(
        two.matches("partitions assigned and restored").count() >= 2,
        "two was assigned when it joined and again when one left"
    );
    println!("{} finals correct ({:?})", finals.len(), started.elapsed());
}
