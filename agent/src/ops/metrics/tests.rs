//! Pins the whole exposition: every family's name, HELP and TYPE line, every series' labels and
//! which counter feeds which sample, in order. `exposition.golden` is the page for the
//! telemetry built below (counters set to distinct values, one source of each kind, a fresh
//! health sample); only the uptime sample (it reads the clock) and the crate version are masked. A change to the
//! page is a change to what dashboards and alerts read (`deploy/OPERATIONS.md`): update the
//! golden file on purpose (`UPDATE_GOLDEN=1 cargo test -p edge-agent --lib ops::metrics`), never
//! by accident.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::*;
use crate::inspect::Snapshot;
use crate::ops::health::{Health, SourceState};
use crate::source::modbus::{self, ModbusCounters};
use crate::source::mqtt::{self, MqttCounters};
use crate::source::serial::{self, SerialCounters};

const GOLDEN: &str = include_str!("exposition.golden");

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

/// Sets `fields` to `first`, `first + 1`, ...
fn fill(fields: &[&AtomicU64], first: u64) {
    for (n, a) in fields.iter().enumerate() {
        set(a, first + n as u64);
    }
}

/// Telemetry in which every counter holds its own value, so a crossed wire shows, and a fresh
/// health view.
fn telemetry() -> (Telemetry, Health) {
    let t = Telemetry::default();
    set(&t.reloads, 1);
    set(&t.reload_failures, 2);
    let i = &t.ingest;
    fill(
        &[
            &i.accepted,
            &i.duplicate,
            &i.rejected,
            &i.dropped,
            &i.upstream_gaps,
            &i.write_errors,
        ],
        10,
    );
    let s = &t.stage;
    fill(
        &[
            &s.readings,
            &s.passed_through,
            &s.unrouted,
            &s.dead_letters,
            &s.partials,
            &s.windows_closed,
            &s.idle_closes,
            &s.forced_closes,
            &s.revisions,
            &s.late_forwarded,
            &s.late_dropped,
            &s.rejected,
            &s.commits,
        ],
        20,
    );
    let f = &t.forward;
    fill(
        &[
            &f.transactions_committed,
            &f.records_committed,
            &f.bytes_committed,
            &f.last_committed_seq,
            &f.transactions_aborted,
            &f.session_errors,
        ],
        40,
    );
    set(&f.commit_latency_us_last, 1_500);
    set(&f.commit_latency_us_sum, 2_500_000);
    set(&f.commit_latency_us_max, 7_000);
    // One hop per bucket range, so the page shows which histogram feeds which series.
    let ms = std::time::Duration::from_millis;
    t.ingest.latency.observe_n(ms(2), 1);
    t.stage.latency.observe_n(ms(40), 2);
    f.latency.observe_n(ms(400), 3);
    let v = &t.salvage;
    set(&v.salvages, 1);
    fill(&v.salvaged.iter().chain(&v.lost).collect::<Vec<_>>(), 50);
    let m: Arc<MqttCounters> = t.sources.counters(&mqtt::KIND, "plant \"a\"");
    fill(
        &[
            &m.received,
            &m.connects,
            &m.connection_errors,
            &m.qos0_dropped,
            &m.unsubscribed_dropped,
        ],
        60,
    );
    let c: Arc<SerialCounters> = t.sources.counters(&serial::KIND, "rs485");
    fill(
        &[
            &c.frames,
            &c.duplicate_frames,
            &c.bad_frames,
            &c.busy,
            &c.upstream_dropped,
            &c.port_errors,
            &c.time_syncs,
        ],
        70,
    );
    c.clock_offset.set(-77);
    let b: Arc<ModbusCounters> = t.sources.counters(&modbus::KIND, "plc");
    fill(
        &[
            &b.polls,
            &b.readings,
            &b.exceptions,
            &b.timeouts,
            &b.transport_errors,
            &b.connects,
            &b.connect_errors,
        ],
        90,
    );
    t.sources
        .sparkplug
        .add("sp", "plant", "gw \"1\"", [100, 101, 102, 103]);
    let health = Health {
        sampled_at: Some(Instant::now()),
        snapshot: Some(Snapshot {
            log_readings: 80,
            log_bytes: 81,
            dead_letters: 82,
            window_series: 83,
            outbox_records: 84,
            ..Snapshot::default()
        }),
        db_error: true,
        sources: [
            ("plant \"a\"".to_owned(), SourceState::Connected),
            ("rs485".to_owned(), SourceState::Disconnected),
            ("plc".to_owned(), SourceState::Connecting),
        ]
        .into(),
        forwarder_failing: true,
        forwarder_error: String::new(),
        stalled: vec!["windowing"],
        running: true,
    };
    (t, health)
}

/// The page with the clock-dependent sample and the crate version masked.
fn page((t, health): &(Telemetry, Health)) -> String {
    let version = format!("version=\"{}\"", crate::VERSION);
    render(t, health)
        .lines()
        .map(|l| match l.starts_with("edge_agent_uptime_seconds ") {
            true => "edge_agent_uptime_seconds <uptime>\n".to_owned(),
            false => format!("{}\n", l.replace(&version, "version=\"<version>\"")),
        })
        .collect()
}

#[test]
fn the_exposition_is_the_documented_page_line_for_line() {
    let got = page(&telemetry());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/ops/metrics/exposition.golden"
        );
        std::fs::write(path, &got).expect("write golden");
    }
    for (n, (g, want)) in got.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(g, want, "line {}", n + 1);
    }
    assert_eq!(got.lines().count(), GOLDEN.lines().count());
}

#[test]
fn every_family_has_help_and_type_and_every_counter_ends_in_total() {
    let text = render(&Telemetry::default(), &Health::default());
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and kind");
            assert!(
                ["counter", "gauge", "summary", "histogram"].contains(&kind),
                "{line}"
            );
            assert!(kind != "counter" || name.ends_with("_total"), "{line}");
            assert!(!typed.contains(&name), "{name} typed twice");
            typed.push(name);
        }
    }
    let helped = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helped, typed.len());
}
