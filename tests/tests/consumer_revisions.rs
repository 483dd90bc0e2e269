//! A gateway offline for hours of event time returns with its old partials: the windows it
//! missed were finalized without it (it was idle), and its late partials produce revised finals
//! (`revision` 1) whose values equal the batch computation over everybody's readings.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{cells, check_final, now_ms, reference, FakeAgent, Rng, Setup};
use edge_tests::kafka::read_committed;
use edge_tests::Services;

#[test]
fn a_gateway_back_after_hours_offline_produces_revisions_with_the_merged_values() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-rev", 2);
    let now = now_ms();
    // 24 windows of 10 min: 4 hours of event time, a day ago. Record timestamps (what idleness
    // is judged by) start 40 min ago, one minute per window.
    let size = 600_000;
    let windows = 24;
    let base = (now / size - 6 * 24) * size;
    let ts0 = now - 40 * 60_000;
    let series = ["line.t1", "line.t2"];
    let data = cells(
        &mut Rng(99),
        &["gw-a", "gw-b", "gw-c"],
        &series,
        windows,
        base,
        size,
    );
    let window_of = |start: i64| (start - base) / size;
    let offline_from = 4;

    // In time: a and b for every window, c for the first four; record time one minute a window.
    let mut a = FakeAgent::new(bootstrap, "gw-a");
    let mut b = FakeAgent::new(bootstrap, "gw-b");
    let mut c = FakeAgent::new(bootstrap, "gw-c");
    for w in 0..windows {
        for (agent, id) in [(&mut a, "gw-a"), (&mut b, "gw-b"), (&mut c, "gw-c")] {
            if id == "gw-c" && w >= offline_from {
                continue;
            }
            let partials: Vec<_> = data
                .iter()
                .filter(|x| x.gateway == id && window_of(x.start_ms) == w)
                .map(|x| (x.partial(x.end_ms, 0), Some(ts0 + w * 60_000)))
                .collect();
            agent.send_partials(&setup.input, &partials);
        }
    }
    // c returns 30 min (record time) later with its backlog: hours of event time behind.
    let back: Vec<_> = data
        .iter()
        .filter(|x| x.gateway == "gw-c" && window_of(x.start_ms) >= offline_from)
        .map(|x| (x.partial(x.end_ms, 0), Some(ts0 + 30 * 60_000)))
        .collect();
    c.send_partials(&setup.input, &back);
    println!("produced {} partials ({:?})", data.len(), started.elapsed());

    // Idle after 5 min of record time: c stops holding windows back at window 9 or so.
    let mut child = setup.spawn(&setup.config("a", 300_000, "", "", ""), "a");
    let expected = reference(&data, None);
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(60));
    let all = read_committed(bootstrap, &setup.finals, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    child.kill().ok();
    child.wait().ok();
    let (mut revised, mut without_c) = (0, 0);
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
        let w = window_of(finals[k]["window_start_ms"].as_i64().unwrap());
        let revision = finals[k]["revision"].as_u64().unwrap();
        if w == 0 {
            // Cold start: a gateway the partition has not seen yet holds nothing back, so the
            // first window is final with the first gateway's partial and revised by the others.
            assert!(revision <= 2, "{k}");
        } else if w < offline_from {
            assert_eq!(revision, 0, "{k}: c was on time");
        } else {
            assert_eq!(revision, 1, "{k}: c's one late partial revises it");
            revised += 1;
            // The first final of the window went out without c (unless the first final and
            // its revision fell into one transaction: only the newest is emitted then).
            let first = all
                .iter()
                .find(|rec| rec.key.as_deref() == Some(k.as_bytes()))
                .map(|rec| {
                    let payload = rec.payload.as_deref().unwrap();
                    edge_tests::schema::Schema::Final.check(payload);
                    serde_json::from_slice::<serde_json::Value>(payload).unwrap()
                })
                .expect("a first final");
            if first["revision"] == 0 {
                assert_eq!(
                    first["gateways"],
                    serde_json::json!(["gw-a", "gw-b"]),
                    "{k}"
                );
                without_c += 1;
            }
        }
    }
    assert_eq!(revised, series.len() * (windows - offline_from) as usize);
    assert!(
        without_c >= revised / 2,
        "most windows were first final without c"
    );
    println!(
        "{revised} revised windows with correct values, {without_c} first final without c ({:?})",
        started.elapsed()
    );
}
