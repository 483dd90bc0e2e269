use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::inspect::Snapshot;

/// A sample of MQTT source `plant` (counters in `source::mqtt::KIND.families` order).
fn mqtt(connects: u64, errors: u64) -> Observation {
    Observation {
        sources: [("plant".to_owned(), ("mqtt", vec![0, connects, errors, 0]))].into(),
        running: true,
        snapshot: Some(Snapshot::default()),
        ..Observation::default()
    }
}

/// A sample of a serial source with `port_errors` (in `source::serial::KIND.families` order).
fn serial(port_errors: u64) -> (&'static str, Vec<u64>) {
    ("serial", vec![0, 0, 0, 0, 0, port_errors])
}

#[test]
fn an_mqtt_source_is_connecting_until_its_first_connack_then_follows_its_counters() {
    let mut t = Tracker::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let s = |h: &Health| h.sources["plant"];
    assert_eq!(s(&t.observe(t0, mqtt(0, 0))), SourceState::Connecting);
    assert_eq!(
        s(&t.observe(t0 + Duration::from_secs(1), mqtt(1, 0))),
        SourceState::Connected
    );
    assert_eq!(
        s(&t.observe(t0 + Duration::from_secs(2), mqtt(1, 0))),
        SourceState::Connected
    );
    let h = t.observe(t0 + Duration::from_secs(3), mqtt(1, 1));
    assert_eq!(s(&h), SourceState::Disconnected);
    assert!(!h.unready(t0 + Duration::from_secs(3)).is_empty());
    assert_eq!(
        s(&t.observe(t0 + Duration::from_secs(40), mqtt(1, 1))),
        SourceState::Disconnected
    );
    assert_eq!(
        s(&t.observe(t0 + Duration::from_secs(41), mqtt(2, 2))),
        SourceState::Connected
    );
}

#[test]
fn a_forwarder_with_pending_records_and_no_event_for_the_stall_bound_is_stalled_but_an_idle_one_is_not(
) {
    let mut t = Tracker::new(Duration::from_secs(10));
    let t0 = Instant::now();
    let obs = |events: u64, pending: u64| Observation {
        forward_enabled: true,
        forward_events: events,
        running: true,
        snapshot: Some(Snapshot {
            outbox_records: pending,
            ..Snapshot::default()
        }),
        ..Observation::default()
    };
    // Idle for a minute: healthy.
    for s in 0..60 {
        assert!(t
            .observe(t0 + Duration::from_secs(s), obs(5, 0))
            .stalled
            .is_empty());
    }
    // Work appears and moves: healthy.
    for s in 60..80 {
        assert!(t
            .observe(t0 + Duration::from_secs(s), obs(s, 3))
            .stalled
            .is_empty());
    }
    // Work waits with no commit, abort or error for longer than the bound: stalled.
    let h = t.observe(t0 + Duration::from_secs(85), obs(79, 3));
    assert!(h.stalled.is_empty());
    let h = t.observe(t0 + Duration::from_secs(95), obs(79, 3));
    assert_eq!(h.stalled, vec!["forwarder"]);
    assert!(!h.unhealthy(t0 + Duration::from_secs(95)).is_empty());
}

#[test]
fn a_forwarder_retrying_a_dead_broker_is_failing_but_not_stalled() {
    let mut t = Tracker::new(Duration::from_secs(10));
    let t0 = Instant::now();
    for s in 0..60u64 {
        let h = t.observe(
            t0 + Duration::from_secs(s),
            Observation {
                forward_enabled: true,
                forward_events: s / 5,
                forward_errors: s / 5,
                forward_last_error: "Kafka, while init: Broker: Topic authorization failed".into(),
                running: true,
                snapshot: Some(Snapshot {
                    outbox_records: 100,
                    ..Snapshot::default()
                }),
                ..Observation::default()
            },
        );
        assert!(h.stalled.is_empty());
        if s >= 5 {
            assert!(h.forwarder_failing);
            let why = h.unready(t0 + Duration::from_secs(s)).join("; ");
            assert!(why.contains("Topic authorization failed"), "{why}");
        }
    }
}

#[test]
fn a_stale_sample_makes_the_agent_unhealthy() {
    let mut t = Tracker::new(Duration::from_secs(10));
    let t0 = Instant::now();
    let h = t.observe(
        t0,
        Observation {
            running: true,
            ..Observation::default()
        },
    );
    assert!(h.unhealthy(t0).is_empty());
    assert!(!h
        .unhealthy(t0 + SAMPLE_FRESH + Duration::from_secs(1))
        .is_empty());
}

#[test]
fn a_serial_port_error_marks_the_source_disconnected_until_35_s_without_one() {
    let mut t = Tracker::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let obs = |errors: u64| Observation {
        sources: [("rs485".to_owned(), serial(errors))].into(),
        running: true,
        ..Observation::default()
    };
    let s = |h: Health| h.sources["rs485"];
    assert_eq!(s(t.observe(t0, obs(0))), SourceState::Connected);
    assert_eq!(
        s(t.observe(t0 + Duration::from_secs(1), obs(1))),
        SourceState::Disconnected
    );
    // The next reopen attempt is up to 30 s away: still disconnected meanwhile.
    assert_eq!(
        s(t.observe(t0 + Duration::from_secs(31), obs(1))),
        SourceState::Disconnected
    );
    assert_eq!(
        s(t.observe(t0 + Duration::from_secs(37), obs(1))),
        SourceState::Connected
    );
}

#[test]
fn a_serial_port_that_failed_before_the_first_sample_is_disconnected() {
    let mut t = Tracker::new(Duration::from_secs(60));
    let h = t.observe(
        Instant::now(),
        Observation {
            sources: [("rs485".to_owned(), serial(2))].into(),
            running: true,
            ..Observation::default()
        },
    );
    assert_eq!(h.sources["rs485"], SourceState::Disconnected);
}

/// The pings a watchdog sends on ticks at `offsets_ms` from a start.
fn pings(w: &mut Watchdog, offsets_ms: &[u64]) -> Vec<u64> {
    let t0 = Instant::now();
    let mut sent = Vec::new();
    for &ms in offsets_ms {
        let now = t0 + Duration::from_millis(ms);
        if w.due(now) {
            w.pinged(now);
            sent.push(ms);
        }
    }
    sent
}

#[test]
fn a_tick_landing_a_hair_early_still_feeds_the_watchdog() {
    // WatchdogSec=2: ping every second on a one-second sampler whose ticks jitter.
    let mut w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(1));
    let ticks = [0, 998, 2003, 2999, 3997, 5002];
    assert_eq!(pings(&mut w, &ticks), ticks);
}

#[test]
fn a_long_watchdog_is_fed_at_half_its_period_not_on_every_tick() {
    // WatchdogSec=10: ping every 5 s on a one-second sampler.
    let mut w = Watchdog::new(Duration::from_secs(5), Duration::from_secs(1));
    let ticks: Vec<u64> = (0..=12).map(|s| s * 1000 - (s % 2)).collect();
    let sent = pings(&mut w, &ticks);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.windows(2).all(|p| p[1] - p[0] <= 6000), "{sent:?}");
}
