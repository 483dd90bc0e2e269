//! Three gateways send partials of overlapping series (every gateway sees every series); the
//! consumer's finals equal a batch computation over the raw readings: count, min, max, first,
//! last exactly, sum/mean/stddev up to rounding, quantiles within the sketch's 1 %. A second
//! consumer group on the same input rolls the 10 s partials up into 1 min finals.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{cells, check_final, now_ms, produce_by_gateway, reference, Rng, Setup};
use edge_tests::Services;

#[test]
fn three_gateways_partials_merge_into_finals_equal_to_the_batch_computation() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let plain = Setup::new(bootstrap, "cons-ref", 3);
    let rolled = Setup::on_input(bootstrap, "cons-ref-rollup", &plain.input);

    let gateways = ["gw-a", "gw-b", "gw-c"];
    let series = ["plant.t1", "plant.t2", "plant.p1", "plant.p2"];
    let size = 10_000;
    let now = now_ms();
    let base = (now / 60_000 - 100) * 60_000;
    let mut rng = Rng(0x5eed_0001);
    let data = cells(&mut rng, &gateways, &series, 30, base, size);
    produce_by_gateway(bootstrap, &plain.input, &data, &gateways);
    println!(
        "produced {} partials in {:?}",
        data.len(),
        started.elapsed()
    );

    let a = plain.spawn(&plain.config("a", 3_000, "", "", ""), "a");
    let b = rolled.spawn(&rolled.config("b", 3_000, "", "rollup_ms = 60000", ""), "b");
    let expected = reference(&data, None);
    let expected_rolled = reference(&data, Some(60_000));
    let finals = plain.wait_for_finals(&expected, Duration::from_secs(90));
    let finals_rolled = rolled.wait_for_finals(&expected_rolled, Duration::from_secs(60));
    for mut child in [a, b] {
        child.kill().ok();
        child.wait().ok();
    }
    assert_eq!(finals.len(), expected.len(), "no extra windows");
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }
    assert_eq!(finals_rolled.len(), expected_rolled.len());
    for (k, r) in &expected_rolled {
        check_final(k, &finals_rolled[k], r);
        assert_eq!(
            finals_rolled[k]["window_end_ms"].as_i64().unwrap()
                - finals_rolled[k]["window_start_ms"].as_i64().unwrap(),
            60_000
        );
    }
    println!(
        "{} finals and {} rolled-up finals equal the reference ({:?})",
        finals.len(),
        finals_rolled.len(),
        started.elapsed()
    );
}
