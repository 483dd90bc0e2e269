//! Windowing benchmark: prints figures, asserts nothing.
//!
//! ```text
//! cargo run --release -p edge-agent --example bench_window [-- SENSORS HZ SECONDS SIZE_S SLIDE_S BATCH]
//! ```
//!
//! Defaults: 1,000 sensors at 10 Hz for 120 s of event time, 10 s tumbling windows (SIZE_S 10,
//! SLIDE_S 10; a smaller slide makes them hopping), every
//! aggregate including the quantile sketch. Prints:
//!
//! 1. readings/s through the pure state machine (`window::Windows`);
//! 2. readings/s through the whole stage (redb ingest log -> windows -> outbox, one fsync'd
//!    transaction per BATCH readings (default 1,000, the default `batch_max_readings`), the
//!    changed series' state rows rewritten in it);
//! 3. bytes of state per open window: encoded (what the `window_state` row holds) and in
//!    memory (the `Aggregate` value, whose two sketch stores are fixed-capacity arrays);
//! 4. a partial's size on the wire against the raw readings it replaces (pass-through JSON
//!    records and stored Reading records), and the reduction factor.
//!
//! Beside its human output it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick run:
//! `-- 1000 10 30` (the state is sampled at 25 s of event time, so keep SECONDS above 25).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use edge_agent::config::Config;
use edge_agent::ingest::{Dedupe, IngestLog, Limits, Submission};
use edge_agent::outbox::{self, RecordKind};
use edge_agent::reading::Reading;
use edge_agent::stage::{reading_json, Stage};
use edge_agent::window::{Grouping, LatePolicy, Output, WindowSpec, Windows};
use edge_bench::line::Family;
use edge_bench::program::arg;
use edge_protocol::aggregate::Aggregate;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("window");

const T0: u64 = 1_700_000_000_000;

/// Reading `k` of the stream: sensors round-robin, event time advancing 1/hz s per round,
/// values spread over two decades so the sketch uses many bins.
fn reading(k: u64, sensors: u64, hz: u64) -> Reading {
    let (round, s) = (k / sensors, k % sensors);
    let x = (k.wrapping_mul(2_654_435_761) % 10_000) as f64;
    Reading {
        sensor: format!("plant7.line{}.m{:04}.vib", s % 8, s),
        ts_ms: T0 + round * 1000 / hz,
        value: 1.0 + x / 100.0,
        seq: None,
    }
}

fn main() {
    let (sensors, hz, seconds) = (arg(1, 1000), arg(2, 10), arg(3, 120));
    let (size_s, slide_s) = (arg(4, 10).max(1), arg(5, 10).max(1));
    let batch = arg(6, 1000).max(1) as usize;
    let total = sensors * hz * seconds;
    println!(
        "{sensors} sensors x {hz} Hz x {seconds} s = {total} readings, windows of {size_s} s every {slide_s} s"
    );
    let spec = WindowSpec {
        size_ms: size_s as i64 * 1000,
        slide_ms: slide_s as i64 * 1000,
        allowed_lateness_ms: 1_000,
        idle_timeout_ms: 60_000,
        late: LatePolicy::Forward,
        revision_horizon_ms: None,
        max_open_windows: 100_000,
        group_by: Grouping::Sensor,
    };

    // 1. The state machine alone.
    let readings: Vec<Reading> = (0..total).map(|k| reading(k, sensors, hz)).collect();
    let mut w = Windows::new(spec.clone(), "vib", "gw-plant7-cab2").expect("spec");
    let mut out = Vec::new();
    let mut partials = 0u64;
    let mut partial_bytes = 0u64;
    let mut state_sample: Option<(usize, usize)> = None;
    let mut buf = vec![0u8; edge_protocol::partial::MAX_ENCODED_LEN];
    let started = Instant::now();
    for (k, r) in readings.iter().enumerate() {
        w.push(r, 0, &mut out);
        for o in out.drain(..) {
            if let Output::Partial(p) = o {
                partials += 1;
                partial_bytes += p.encode(&mut buf).map_or(0, |n| n as u64);
            }
        }
        // Sample the state in the middle of a window (every series has one open window).
        if state_sample.is_none() && k as u64 == sensors * hz * 25 {
            state_sample = Some((w.encode_state().len(), w.open_windows()));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "state machine: {:.0} readings/s ({total} in {elapsed:.2} s), {partials} partials",
        total as f64 / elapsed
    );
    let params =
        format!("{sensors} sensors x {hz} Hz x {seconds} s, {size_s} s windows every {slide_s} s");
    FIGURES.print(
        "state_machine",
        total as f64 / elapsed,
        "readings/s",
        &params,
    );

    // 3. State per open window.
    if let Some((bytes, open)) = state_sample {
        println!(
            "state per open window (sampled at 25 s of event time, {open} open): encoded {:.0} B, in memory {} B (Aggregate) + map entries",
            bytes as f64 / open.max(1) as f64,
            std::mem::size_of::<Aggregate>(),
        );
        FIGURES.print(
            "state_per_window_encoded",
            bytes as f64 / open.max(1) as f64,
            "B",
            &params,
        );
        FIGURES.print(
            "state_per_window_in_memory",
            std::mem::size_of::<Aggregate>() as f64,
            "B",
            &params,
        );
    }

    // 4. Wire size against the raw readings the partials replace, over the whole run. The
    // windows still open at the end are not counted as partials, so the factor is slightly
    // understated (by at most one window per series out of the run).
    let key = readings[0].sensor.len() as f64;
    let json: u64 = readings
        .iter()
        .map(|r| reading_json(r).len() as u64 + r.sensor.len() as u64)
        .sum();
    let stored: u64 = readings.iter().map(|r| r.encoded_len() as u64).sum();
    let avg_partial = partial_bytes as f64 / partials.max(1) as f64;
    let wire = partial_bytes as f64 + key * partials as f64;
    println!(
        "partial on the wire: {avg_partial:.0} B (+ key {key} B); {partials} partials for {total} readings ({:.0} readings per window): {:.0} B of partials vs {json} B as pass-through JSON records (value + key), {stored} B as stored Reading records",
        (hz * size_s) as f64,
        wire,
    );
    println!(
        "reduction factor: {:.1}x against pass-through JSON, {:.1}x against binary readings",
        json as f64 / wire,
        stored as f64 / wire
    );
    FIGURES.print("partial_on_wire", avg_partial, "B", &params);
    FIGURES.print("partial_key", key, "B", &params);
    FIGURES.print("reduction_vs_json", json as f64 / wire, "x", &params);
    FIGURES.print("reduction_vs_binary", stored as f64 / wire, "x", &params);

    // 2. The whole stage on a real redb file.
    let dir = tempfile_dir();
    let mut log = IngestLog::open(
        &dir.join("ingest.redb"),
        Limits {
            quota_bytes: u64::MAX,
            on_full: edge_agent::config::OnFull::Backpressure,
            dedupe_max_entries: 1 << 40,
            dedupe_max_age_ms: 1 << 40,
        },
    )
    .expect("log");
    let fill = Instant::now();
    for chunk in readings.chunks(10_000) {
        let sub = Submission {
            readings: chunk.iter().map(|r| (r.clone(), Dedupe::None)).collect(),
            dead_letters: Vec::new(),
            state: Vec::new(),
            ack: None,
        };
        log.commit(&[sub], 0).expect("commit");
    }
    println!(
        "(filled the ingest log in {:.2} s)",
        fill.elapsed().as_secs_f64()
    );
    let config = format!(
        "[agent]\nid = \"gw-plant7-cab2\"\ndata_dir = \"/unused\"\n[[pipeline]]\nname = \"vib\"\nsensors = [\"*\"]\n[pipeline.window]\nkind = \"hopping\"\nsize_ms = {}\nslide_ms = {}\nallowed_lateness_ms = 1000\nidle_timeout_ms = 60000\nmax_open_windows = 100000\n",
        size_s * 1000,
        slide_s * 1000
    );
    let config = Arc::new(Config::from_toml(Path::new("bench.toml"), &config).expect("config"));
    let mut stage = Stage::open(log.database(), config, batch, 0).expect("stage");
    let started = Instant::now();
    let mut done = 0;
    let mut commits = 0;
    while done < total as usize {
        let step = stage.step(0).expect("step");
        if step.readings == 0 {
            break;
        }
        done += step.readings;
        commits += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let partials_in_outbox = outbox::read_after(&log.database(), 0, usize::MAX, usize::MAX)
        .expect("outbox")
        .iter()
        .filter(|(_, r)| r.kind == RecordKind::Partial)
        .count();
    println!(
        "stage (redb log -> windows -> outbox, fsync per batch of {batch}): {:.0} readings/s ({done} in {elapsed:.2} s, {commits} commits, {partials_in_outbox} partials)",
        done as f64 / elapsed
    );
    FIGURES.print(
        "stage",
        done as f64 / elapsed,
        "readings/s",
        &format!("{params}, fsync per {batch} readings"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bench_window-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
