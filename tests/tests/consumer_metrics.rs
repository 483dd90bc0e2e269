//! The consumer's ops endpoints, on the real `edge-consumer` binary against the real broker:
//! `/readyz` answers 503 with its reason until the group has assigned the input partitions and
//! the consumer has restored them, then 200; `/metrics` counts exactly the partials produced as
//! merged, exactly the final records in the finals topic as finals, and shows the lag drained;
//! `/healthz` answers 200 throughout; other paths 404 with the list.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{
    cells, now_ms, produce_by_gateway, reference, terminate, Rng, Running, Setup,
};
use edge_tests::http::{free_port, get as http_get};
use edge_tests::kafka::read_committed;
use edge_tests::Services;

/// The value of one series (full name with labels) in a `/metrics` body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_exactly_the_partials_merged_and_readyz_turns_ready_once_partitions_are_restored() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-metrics", 2);
    let addr = free_port();
    let ops = format!("[ops]\nmetrics = true\nmetrics_listen = \"{addr}\"\nhealth_stall_s = 120\n");
    let config = setup.config("a", 3_000, "", "", &ops);
    let mut consumer = Running(setup.spawn(&config, "a"));
    let get = |path: &str| http_get(addr, path);
    let metric = |series: &str| get("/metrics").and_then(|(_, body)| sample(&body, series));
    let log = |what: &str| format!("{what}\n--- consumer log:\n{}", setup.log_tail("a", 40));

    // The listener is up before the loop starts: its first answers precede the assignment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(answer) = get("/readyz") {
            break answer;
        }
        assert!(
            consumer.0.try_wait().expect("poll").is_none(),
            "{}",
            log("exited")
        );
        assert!(Instant::now() < deadline, "{}", log("no HTTP answer"));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first.0, 503, "not ready before the assignment: {first:?}");
    assert!(!first.1.trim().is_empty(), "503 says why");
    assert_eq!(get("/healthz").map(|a| a.0), Some(200));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get("/readyz") {
            Some((200, body)) => {
                assert_eq!(body, "ready\n");
                break;
            }
            other => {
                assert!(
                    consumer.0.try_wait().expect("poll").is_none(),
                    "{}",
                    log("exited")
                );
                assert!(
                    Instant::now() < deadline,
                    "{}",
                    log(&format!("not ready: {other:?}"))
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_after = started.elapsed();
    assert_eq!(metric("edge_consumer_assigned_partitions"), Some(2.0));
    assert_eq!(metric("edge_consumer_restored_partitions_total"), Some(2.0));
    assert_eq!(metric("edge_consumer_phase{phase=\"running\"}"), Some(1.0));
    assert_eq!(metric("edge_consumer_merged_total"), Some(0.0));

    // 2 gateways x 3 series x 8 windows = 48 partials, one transaction per gateway.
    let gateways = ["gw-a", "gw-b"];
    let series = ["m.t1", "m.t2", "m.p1"];
    let size = 10_000;
    let now = now_ms();
    let base = (now / size - 50) * size;
    let data = cells(&mut Rng(0x5eed_0042), &gateways, &series, 8, base, size);
    produce_by_gateway(bootstrap, &setup.input, &data, &gateways);
    let produced = data.len() as f64;

    let expected = reference(&data, None);
    setup.wait_for_finals(&expected, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("edge_consumer_merged_total") != Some(produced) {
        assert!(
            Instant::now() < deadline,
            "{}",
            log(&format!(
                "merged_total {:?}, produced {produced}",
                metric("edge_consumer_merged_total")
            ))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more idle batches: nothing is counted twice.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = get("/metrics").expect("metrics");
    assert_eq!(status, 200);
    let m = |series: &str| sample(&body, series).unwrap_or_else(|| panic!("{series}:\n{body}"));
    assert_eq!(m("edge_consumer_merged_total"), produced, "{body}");
    assert_eq!(m("edge_consumer_dead_letters_total"), 0.0);
    let final_records = read_committed(bootstrap, &setup.finals, Duration::from_secs(30))
        .expect("read finals")
        .len();
    assert_eq!(m("edge_consumer_finals_total"), final_records as f64);
    assert_eq!(
        m("edge_consumer_finals_total"),
        m("edge_consumer_windows_finalized_total") + m("edge_consumer_revisions_total"),
        "every final record is a first final or a revision"
    );
    assert!(m("edge_consumer_transactions_total") >= 1.0);
    assert_eq!(
        m("edge_consumer_transaction_seconds_count"),
        m("edge_consumer_transactions_total")
    );
    assert!(m("edge_consumer_last_commit_age_seconds") < 30.0);
    assert_eq!(m("edge_consumer_sessions_total"), 1.0);
    assert_eq!(m("edge_consumer_session_errors_total"), 0.0);
    assert_eq!(m("edge_consumer_healthy"), 1.0);
    assert_eq!(m("edge_consumer_ready"), 1.0);
    assert!(body.contains("# TYPE edge_consumer_merged_total counter\n"));
    assert!(body.contains("# HELP edge_consumer_merged_total "));

    // The lag gauges come with librdkafka's statistics (every 5 s); everything was read.
    let lag = |body: &str, p: i32| {
        let series = format!(
            "edge_consumer_lag_records{{topic=\"{}\",partition=\"{p}\"}}",
            setup.input
        );
        sample(body, &series)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get("/metrics").expect("metrics").1;
        let lags = [lag(&body, 0), lag(&body, 1)];
        if lags == [Some(0.0), Some(0.0)] {
            println!("lag after the drain: {lags:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag not drained: {lags:?}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let (status, body) = get("/nope").expect("404");
    assert_eq!(status, 404);
    assert!(
        body.contains("/metrics") && body.contains("/healthz") && body.contains("/readyz"),
        "{body}"
    );
    assert_eq!(get("/healthz"), Some((200, "ok\n".to_owned())));

    terminate(&mut consumer.0);
    let status = consumer.0.wait().expect("exit status");
    assert!(status.success(), "{}", log(&format!("exit: {status}")));
    assert!(
        get("/healthz").is_none(),
        "the listener stops with the process"
    );
    println!(
        "ready after {ready_after:?}; {produced} partials merged, {final_records} final records, \
         all counted by /metrics ({:?})",
        started.elapsed()
    );
}
