//! Device clocks over the serial link, end to end: firmware-sim's devices run 5% fast
//! (`--clock-drift-ppm 50000`: 50 ms gained every second) on a pty, read by the agent binary.
//! With `time_sync_interval_s = 2` the agent resyncs them and its `edge_serial_clock_offset_ms`
//! gauge stays below 300 ms ahead while `edge_serial_time_syncs_total` grows; with `= 0` (only
//! the answers to `Hello`) the same devices run past 300 ms (about 750 ms by the end, less the
//! time a reading takes to arrive: the gauge is the clock error minus that time, so a loaded
//! machine pulls it down, never up; only the ahead side is bounded). Either way every reading
//! of the firmware-sim ledger is in the ingest log exactly once, and every wall-clock stamp the
//! ledger says a reading carried is the stamp the log holds. No broker is needed.

mod ingest_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::bins::{spawn_agent_logged, workspace_binary};
use edge_tests::http::{free_port, get};
use ingest_support::{each_reading, expected_from_ledger, log_multiset, open_log, serial_path};

/// How long the devices sample: 7 resync intervals of 2 s; 300 ms of drift without them.
const RUN_S: u64 = 15;
const DRIFT_PPM: u64 = 50_000;
const BOUND_MS: i64 = 300;
/// Timestamps below this (2000-01-01) are device uptime (`source/serial.rs`).
const UPTIME_LIMIT_MS: u64 = 946_684_800_000;

/// One scrape of the gauge and the counter (`None`: no sample yet).
#[derive(Debug, Clone, Copy)]
struct Scrape {
    at_s: f64,
    offset_ms: Option<i64>,
    time_syncs: u64,
}

/// The value of the `/metrics` sample that starts with `series`.
fn value<T: std::str::FromStr>(body: &str, series: &str) -> Option<T> {
    let line = body.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

fn scrape(metrics: SocketAddr, started: Instant) -> Option<Scrape> {
    let (200, body) = get(metrics, "/metrics")? else {
        return None;
    };
    Some(Scrape {
        at_s: started.elapsed().as_secs_f64(),
        offset_ms: value(&body, "edge_serial_clock_offset_ms{source=\"line\"} "),
        time_syncs: value(&body, "edge_serial_time_syncs_total{source=\"line\"} ")?,
    })
}

/// Runs two drifting devices for [`RUN_S`] against the agent with `time_sync_interval_s =
/// interval_s`, scraping `/metrics` every 250 ms; checks the accounting and returns the scrapes.
fn drifting_devices_against_the_agent(interval_s: u64) -> Vec<Scrape> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let sim = workspace_binary("firmware-sim", "firmware-sim");
    let agent_bin = workspace_binary("edge-agent", "edge-agent");
    let mut firmware = Command::new(&sim)
        .args(["serial", "--pty", "--devices", "2", "--channels", "2"])
        .args(["--rate", "50", "--duration", &RUN_S.to_string()])
        .args(["--drain-timeout", "10", "--progress-secs", "0"])
        .args(["--clock-drift-ppm", &DRIFT_PPM.to_string()])
        .arg("--ledger")
        .arg(&ledger)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn firmware-sim");
    let port = serial_path(&mut firmware);

    let metrics = free_port();
    let config = dir.path().join("agent.toml");
    let data = dir.path().display().to_string();
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"clock-test\"\ndata_dir = {data:?}\n\n[ops]\nmetrics_listen = \"{metrics}\"\n\n\
             [[serial]]\nname = \"line\"\npath = {port:?}\nframing = \"link\"\ntime_sync_interval_s = {interval_s}\n\n\
             [[sensor]]\nsource = \"line\"\nid = \"d{{device}}.c{{channel}}\"\n"
        ),
    )
    .expect("write config");
    let started = Instant::now();
    let mut agent = spawn_agent_logged(&agent_bin, &config, dir.path(), "warn", &[]);

    let deadline = started + Duration::from_secs(RUN_S + 20);
    let mut scrapes = Vec::new();
    let finished = loop {
        if let Some(status) = firmware.try_wait().expect("poll firmware-sim") {
            break status;
        }
        agent.assert_alive();
        assert!(
            Instant::now() < deadline,
            "firmware-sim did not finish and drain"
        );
        scrapes.extend(scrape(metrics, started));
        std::thread::sleep(Duration::from_millis(250));
    };
    scrapes.extend(scrape(metrics, started));
    agent.terminate(Duration::from_secs(30));
    assert!(finished.success(), "firmware-sim: {finished}");

    account(&ledger, &config);
    scrapes
}

/// Every ledger reading is in the log once, and every wall-clock stamp is the one stored.
fn account(ledger: &Path, config: &Path) {
    let (expected, clean, evicted) = expected_from_ledger(ledger);
    assert!(clean, "firmware-sim drained: every frame was acknowledged");
    assert_eq!(evicted, 0, "no fault loses a frame here");
    let stored = log_multiset(config);
    assert_eq!(stored, expected, "the log holds every ledger reading once");
    let text = std::fs::read_to_string(ledger).expect("read ledger");
    let mut stamped = BTreeSet::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("JSON");
        if record["kind"] != "frame" {
            continue;
        }
        for r in record["readings"].as_array().into_iter().flatten() {
            let ts = r["ts_ms"].as_u64().unwrap_or(0);
            if ts >= UPTIME_LIMIT_MS {
                stamped.insert((format!("d{}.c{}", record["device"], r["channel"]), ts));
            }
        }
    }
    let mut in_log = BTreeSet::new();
    each_reading(&open_log(config), |r| {
        in_log.insert((r.sensor, r.ts_ms));
    });
    let missing: Vec<_> = stamped.difference(&in_log).take(5).collect();
    assert!(missing.is_empty(), "stamps the log lacks: {missing:?}");
    assert!(stamped.len() > 500, "{} wall-clock readings", stamped.len());
}

fn offsets(scrapes: &[Scrape]) -> Vec<i64> {
    scrapes.iter().filter_map(|s| s.offset_ms).collect()
}

#[test]
fn drifting_devices_resynced_every_two_seconds_stay_within_300_ms_of_the_agent() {
    let scrapes = drifting_devices_against_the_agent(2);
    let offsets = offsets(&scrapes);
    let (min, max) = (offsets.iter().min(), offsets.iter().max());
    println!("{} offsets, {min:?} ..= {max:?} ms", offsets.len());
    assert!(offsets.len() >= 30, "the gauge was scraped: {scrapes:?}");
    // The devices run fast: a clock that is not resynced shows as an offset growing above the
    // bound. Below zero is the time readings took to arrive (the gauge subtracts it), which a
    // loaded machine stretches; it is not the clock's and is not bounded here.
    for s in &scrapes {
        let offset = s.offset_ms.unwrap_or(0);
        assert!(offset < BOUND_MS, "{offset} ms ahead at {:.1} s", s.at_s);
    }
    let syncs: Vec<u64> = scrapes.iter().map(|s| s.time_syncs).collect();
    assert!(
        syncs.windows(2).all(|w| w[0] <= w[1]),
        "a counter: {syncs:?}"
    );
    let first = scrapes
        .iter()
        .find(|s| s.offset_ms.is_some())
        .expect("an offset");
    let last = scrapes.last().expect("a scrape");
    let periods = ((last.at_s - first.at_s) / 2.0) as u64;
    let grown = last.time_syncs - first.time_syncs;
    println!(
        "time syncs: {} at {:.1} s, {} at {:.1} s",
        first.time_syncs, first.at_s, last.time_syncs, last.at_s
    );
    assert!(
        grown + 1 >= periods && grown >= 4,
        "one every 2 s: {syncs:?}"
    );
}

#[test]
fn drifting_devices_synced_only_at_boot_run_past_300_ms() {
    let scrapes = drifting_devices_against_the_agent(0);
    let offsets = offsets(&scrapes);
    let max = offsets.iter().copied().max().unwrap_or(0);
    println!("{} offsets, up to {max} ms", offsets.len());
    assert!(max > BOUND_MS, "50 ms a second for {RUN_S} s: {offsets:?}");
    let first = scrapes
        .iter()
        .find(|s| s.offset_ms.is_some())
        .expect("an offset");
    let last = scrapes.last().expect("a scrape");
    assert_eq!(
        first.time_syncs, last.time_syncs,
        "no TimeSync but the answers to Hello"
    );
}
