//! Windows through the real agent binary and the real Mosquitto: out-of-order and late input,
//! revisions, the idle close of a silent sensor, and devices whose clocks disagree.

mod window_support;

use std::time::Duration;

use edge_agent::outbox::RecordKind;
use edge_tests::Services;
use window_support::*;

/// Aligned to every window size used here.
const T0: u64 = 1_700_000_000_000;

fn msg(dev: u64, at: u64, value: f64) -> Msg {
    Msg {
        dev,
        ts: T0 + at,
        value,
    }
}

/// Publishes `msgs` to a fresh agent session and runs the agent until `expected` partials are
/// in the outbox (or 40 s pass).
async fn run(
    window: &str,
    msgs: Vec<Msg>,
    expected: usize,
) -> Vec<edge_agent::outbox::OutboxRecord> {
    let services = Services::from_env();
    let bin = agent_binary();
    let setup = setup(&services.mqtt_url, window);
    create_session(&setup).await;
    let n = msgs.len() as u64;
    assert_eq!(publish(&setup, msgs, Duration::ZERO).await, n);
    run_until(&bin, &setup, Duration::from_secs(40), |r| {
        partials(r).len() >= expected
    })
    .await
}

/// d0: two in-order readings, one out of order within the lateness, one that closes the first
/// window, one too late for it, one that closes the second window, then a far sentinel.
fn late_input() -> Vec<Msg> {
    vec![
        msg(0, 100, 1.0),
        msg(0, 900, 2.0),
        msg(0, 600, 3.0),
        msg(0, 1700, 4.0),
        msg(0, 300, 5.0),
        msg(0, 2600, 6.0),
        msg(0, 60_000, 0.0),
    ]
}

const TUMBLING: &str =
    "kind = \"tumbling\"\nsize_ms = 1000\nallowed_lateness_ms = 500\nidle_timeout_ms = 600000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_readings_within_the_lateness_count_and_a_late_one_is_forwarded_raw() {
    let records = run(&format!("{TUMBLING}late = \"forward\"\n"), late_input(), 3).await;
    let p = partials(&records);
    let counts: Vec<(u64, u64)> = p
        .iter()
        .map(|p| ((p.window_start_ms as u64 - T0), p.aggregate.count()))
        .collect();
    assert_eq!(counts, vec![(0, 3), (1000, 1), (2000, 1)]);
    assert!(p.iter().all(|p| p.revision == 0));
    let late: Vec<_> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Late)
        .collect();
    assert_eq!(late.len(), 1);
    edge_tests::schema::Schema::Reading.check(&late[0].payload);
    let json: serde_json::Value = serde_json::from_slice(&late[0].payload).expect("JSON");
    assert_eq!(json["ts"], T0 + 300);
    assert_eq!(json["sensor"], "d0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_revisions_a_late_reading_becomes_a_delta_partial_with_the_next_revision() {
    let window = format!("{TUMBLING}revisions = true\nrevision_horizon_ms = 10000\n");
    let records = run(&window, late_input(), 4).await;
    let p = partials(&records);
    let got: Vec<(u64, u32, u64)> = p
        .iter()
        .map(|p| {
            (
                p.window_start_ms as u64 - T0,
                p.revision,
                p.aggregate.count(),
            )
        })
        .collect();
    assert_eq!(got, vec![(0, 0, 3), (0, 1, 1), (1000, 0, 1), (2000, 0, 1)]);
    assert_eq!(
        p[1].aggregate.min(),
        Some(5.0),
        "the delta holds only the late reading"
    );
    assert!(records.iter().all(|r| r.kind != RecordKind::Late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sensors_last_window_closes_after_the_idle_timeout() {
    let window = "kind = \"tumbling\"\nsize_ms = 10000\nallowed_lateness_ms = 1000\nidle_timeout_ms = 1000\n";
    let records = run(window, vec![msg(0, 100, 1.0), msg(0, 200, 2.0)], 1).await;
    let p = partials(&records);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].aggregate.count(), 2);
    assert_eq!(
        p[0].watermark_ms as u64,
        T0 + 10_000,
        "idle close moves the watermark to the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_clock_runs_an_hour_ahead_does_not_make_the_others_late() {
    // The clock-skew fault of a device (firmware-sim's kind): d1 stamps readings an hour ahead.
    // Watermarks are per series, so d0's windows close by d0's own event time.
    const HOUR: u64 = 3_600_000;
    let mut msgs = Vec::new();
    for i in 0..50 {
        msgs.push(msg(0, i * 100, i as f64));
        msgs.push(msg(1, HOUR + i * 100, i as f64));
    }
    msgs.push(msg(0, 60_000, 0.0));
    msgs.push(msg(1, HOUR + 60_000, 0.0));
    let records = run(TUMBLING, msgs, 10).await;
    assert!(records.iter().all(|r| r.kind != RecordKind::Late));
    let p = partials(&records);
    for dev in ["d0", "d1"] {
        let n: u64 = p
            .iter()
            .filter(|p| p.series.as_str() == dev)
            .map(|p| p.aggregate.count())
            .sum();
        assert_eq!(n, 50, "{dev}: every reading in a window");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_count_each_reading_once_in_every_window_that_covers_it() {
    // 2 s windows starting every 1 s: each reading is in exactly two windows.
    let window = "kind = \"hopping\"\nsize_ms = 2000\nslide_ms = 1000\nidle_timeout_ms = 600000\n";
    let msgs = vec![
        msg(0, 100, 1.0),
        msg(0, 1100, 2.0),
        msg(0, 2100, 3.0),
        msg(0, 60_000, 0.0),
    ];
    let records = run(window, msgs, 4).await;
    let got: Vec<(i64, u64, Option<f64>, Option<f64>)> = partials(&records)
        .iter()
        .map(|p| {
            (
                p.window_start_ms - T0 as i64,
                p.aggregate.count(),
                p.aggregate.min(),
                p.aggregate.max(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (-1000, 1, Some(1.0), Some(1.0)),
            (0, 2, Some(1.0), Some(2.0)),
            (1000, 2, Some(2.0), Some(3.0)),
            (2000, 1, Some(3.0), Some(3.0)),
        ]
    );
    assert!(partials(&records)
        .iter()
        .all(|p| p.window_end_ms - p.window_start_ms == 2000));
}
