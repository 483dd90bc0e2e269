//! `kill -9` of the consumer at 10 random points while it merges: the finals (newest of each
//! key, read_committed) are identical to those of an undisturbed run over the same input, value
//! for value and revision for revision.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{
    cells, check_final, now_ms, produce_by_window, reference, FakeAgent, Rng, Setup,
};
use edge_tests::Services;

#[test]
fn consumer_killed_at_ten_random_points_gives_the_finals_of_an_undisturbed_run() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let mut straight = Setup::new(bootstrap, "cons-kill-straight", 3);
    let mut killed = Setup::on_input(bootstrap, "cons-kill", &straight.input);
    // Small transactions: many commit points for the kills to fall between (and into).
    straight.batch = 5;
    killed.batch = 5;

    let gateways = ["gw-a", "gw-b", "gw-c"];
    let series = ["k.s1", "k.s2", "k.s3", "k.s4"];
    let now = now_ms();
    let base = (now / 60_000 - 200) * 60_000;
    let data = cells(&mut Rng(0xdead_beef), &gateways, &series, 40, base, 10_000);
    let mut agents = FakeAgent::fleet(bootstrap, &gateways);
    produce_by_window(bootstrap, &straight.input, &data, &mut agents);
    println!("produced {} partials ({:?})", data.len(), started.elapsed());
    let expected = reference(&data, None);

    let mut a = straight.spawn(&straight.config("u", 60_000, "", "", ""), "u");
    let undisturbed = straight.wait_for_finals(&expected, Duration::from_secs(120));
    a.kill().ok();
    a.wait().ok();
    println!(
        "undisturbed run: {} finals ({:?})",
        undisturbed.len(),
        started.elapsed()
    );

    // The instance is a static member (group.instance.id = instance_id): a restarted instance
    // takes its place in the group at once.
    let config = killed.config("k", 60_000, "", "", "");
    let mut rng = Rng(now as u64 | 1);
    let mut child = killed.spawn(&config, "k");
    for i in 0..10 {
        // A random point after the instance got its partitions: mid-restore, mid-batch or
        // mid-commit.
        killed.wait_for_assignments("k", i + 1, Duration::from_secs(60));
        let delay = rng.below(1500);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL");
        child.wait().ok();
        let so_far = killed.finals().len();
        println!(
            "  kill {}, {delay} ms after the assignment: {so_far} windows final so far",
            i + 1
        );
        child = killed.spawn(&config, "k");
    }
    let after = killed.wait_for_finals(&expected, Duration::from_secs(120));
    child.kill().ok();
    child.wait().ok();
    let sessions = killed
        .log_tail("k", 100_000)
        .matches("edge-consumer starting")
        .count();
    assert_eq!(sessions, 11, "ten kills, eleven starts");
    assert_eq!(after.len(), undisturbed.len());
    for (k, r) in &expected {
        check_final(k, &after[k], r);
        assert_eq!(
            after[k], undisturbed[k],
            "{k}: same final as the undisturbed run"
        );
    }
    println!(
        "{} finals identical after 10 kills ({:?})",
        after.len(),
        started.elapsed()
    );
}
