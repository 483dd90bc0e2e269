//! The window state machine against hand-checked cases and a whole-data-set model. Time is
//! always passed in: no test reads a clock.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn spec(size_ms: i64, slide_ms: i64, lateness: i64) -> WindowSpec {
    WindowSpec {
        size_ms,
        slide_ms,
        allowed_lateness_ms: lateness,
        idle_timeout_ms: 60_000,
        late: LatePolicy::Forward,
        revision_horizon_ms: None,
        max_open_windows: 10_000,
        group_by: Grouping::Sensor,
    }
}

fn reading(sensor: &str, ts_ms: u64, value: f64) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts_ms,
        value,
        seq: None,
    }
}

fn machine(spec: WindowSpec) -> Windows {
    Windows::new(spec, "p", "gw").unwrap()
}

fn run(w: &mut Windows, readings: &[Reading]) -> Vec<Output> {
    let mut out = Vec::new();
    for r in readings {
        w.push(r, 0, &mut out);
    }
    out
}

/// [`run`] over `(sensor, ts_ms, value)` readings.
fn run_all(w: &mut Windows, readings: &[(&str, u64, f64)]) -> Vec<Output> {
    let readings: Vec<Reading> = readings
        .iter()
        .map(|&(sensor, ts_ms, value)| reading(sensor, ts_ms, value))
        .collect();
    run(w, &readings)
}

fn partials(out: &[Output]) -> Vec<&Partial> {
    out.iter()
        .filter_map(|o| match o {
            Output::Partial(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

fn late(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Late(_))).count()
}

/// Merges every partial per (series, start), whatever its revision.
fn merged(out: &[Output]) -> BTreeMap<(String, i64), Aggregate> {
    let mut m: BTreeMap<(String, i64), Aggregate> = BTreeMap::new();
    for p in partials(out) {
        m.entry((p.series.to_string(), p.window_start_ms))
            .or_default()
            .merge(&p.aggregate);
    }
    m
}

fn assert_same(a: &Aggregate, b: &Aggregate) {
    assert_eq!(a.count(), b.count());
    assert_eq!(a.min(), b.min());
    assert_eq!(a.max(), b.max());
    assert_eq!(a.first(), b.first());
    assert_eq!(a.last(), b.last());
    assert_eq!(a.sketch(), b.sketch(), "the sketch merges exactly");
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs()));
    assert!(close(a.sum(), b.sum()), "sum {} vs {}", a.sum(), b.sum());
    let (va, vb) = (a.variance().unwrap_or(0.0), b.variance().unwrap_or(0.0));
    assert!(close(va, vb), "variance {va} vs {vb}");
}

#[test]
fn a_reading_on_a_boundary_belongs_to_the_window_it_starts() {
    let mut w = machine(spec(10, 10, 0));
    let out = run_all(
        &mut w,
        &[("s", 0, 1.0), ("s", 9, 2.0), ("s", 10, 3.0), ("s", 20, 4.0)],
    );
    let p = partials(&out);
    assert_eq!(p.len(), 2);
    assert_eq!(
        (
            p[0].window_start_ms,
            p[0].window_end_ms,
            p[0].aggregate.count()
        ),
        (0, 10, 2)
    );
    assert_eq!((p[1].window_start_ms, p[1].aggregate.count()), (10, 1));
    assert_eq!(p[1].watermark_ms, 20);
    assert_eq!(w.open_windows(), 1);
}

#[test]
fn negative_event_times_align_to_the_epoch_too() {
    let s = spec(10, 5, 0);
    let starts: Vec<i64> = s.windows_of(-1).unwrap().collect();
    assert_eq!(starts, vec![-10, -5]);
}

#[test]
fn out_of_order_readings_within_the_lateness_are_counted_in_their_window() {
    let mut w = machine(spec(10, 10, 5));
    let out = run(
        &mut w,
        &[
            reading("s", 8, 1.0),
            reading("s", 13, 2.0),
            reading("s", 4, 3.0),  // watermark 8: window [0,10) still open
            reading("s", 15, 4.0), // watermark 10: closes [0,10)
        ],
    );
    let p = partials(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].aggregate.count(), 2);
    assert_eq!(late(&out), 0);
}

#[test]
fn a_reading_for_a_closed_window_is_forwarded_late_or_dropped() {
    for (policy, forwarded) in [(LatePolicy::Forward, 1), (LatePolicy::Drop, 0)] {
        let mut s = spec(10, 10, 0);
        s.late = policy;
        let mut w = machine(s);
        let out = run_all(&mut w, &[("s", 5, 1.0), ("s", 25, 1.0), ("s", 3, 9.0)]);
        assert_eq!(late(&out), forwarded);
        assert_eq!(
            partials(&out).len(),
            1,
            "[0,10) closed; [10,20) never opened"
        );
        assert_eq!(w.counts.late_forwarded + w.counts.late_dropped, 1);
    }
}

#[test]
fn late_readings_within_the_horizon_emit_one_delta_revision_per_burst() {
    let mut s = spec(10, 10, 0);
    s.revision_horizon_ms = Some(100);
    let mut w = machine(s);
    let out = run(
        &mut w,
        &[
            reading("s", 5, 1.0),
            reading("s", 12, 1.0),  // closes [0,10) rev 0
            reading("s", 3, 2.0),   // reopens [0,10) as rev 1
            reading("s", 4, 3.0),   // same burst
            reading("s", 14, 1.0),  // watermark advances: rev 1 closes
            reading("s", 6, 4.0),   // rev 2
            reading("s", 500, 0.0), // beyond the horizon: everything closes and is forgotten
            reading("s", 7, 5.0),   // late
        ],
    );
    let p = partials(&out);
    let revs: Vec<(i64, u32, u64)> = p
        .iter()
        .map(|p| (p.window_start_ms, p.revision, p.aggregate.count()))
        .collect();
    assert_eq!(revs, vec![(0, 0, 1), (0, 1, 2), (0, 2, 1), (10, 0, 2)]);
    assert_eq!(late(&out), 1);
    assert_eq!(w.counts.revisions, 2);
}

#[test]
fn a_silent_series_closes_after_the_idle_timeout_and_later_readings_for_it_are_late() {
    let mut w = machine(spec(10, 10, 0));
    let mut out = Vec::new();
    w.push(&reading("quiet", 5, 1.0), 1_000, &mut out);
    w.push(&reading("busy", 5, 1.0), 1_000, &mut out);
    w.tick(60_999, &mut out);
    assert!(out.is_empty(), "not idle yet");
    w.push(&reading("busy", 6, 1.0), 50_000, &mut out);
    w.tick(61_000, &mut out);
    let p = partials(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].series.as_str(), p[0].watermark_ms), ("quiet", 10));
    assert_eq!(w.counts.idle_closes, 1);
    out.clear();
    w.push(&reading("quiet", 9, 1.0), 61_001, &mut out);
    assert_eq!(late(&out), 1);
    w.push(&reading("quiet", 10, 1.0), 61_002, &mut out);
    assert_eq!(w.open_windows(), 2, "the next window opens normally");
}

#[test]
fn at_the_cap_the_oldest_open_window_is_force_closed() {
    let mut s = spec(10, 10, 1_000);
    s.max_open_windows = 2;
    let mut w = machine(s);
    let out = run_all(&mut w, &[("a", 5, 1.0), ("b", 15, 1.0), ("c", 25, 1.0)]);
    let p = partials(&out);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].series.as_str(), p[0].window_start_ms), ("a", 0));
    assert_eq!((w.counts.forced_closes, w.open_windows()), (1, 2));
    let out = run(&mut w, &[reading("a", 6, 1.0)]);
    assert_eq!(
        late(&out),
        1,
        "a force-closed window is closed for good without revisions"
    );
}

#[test]
fn unwindowable_readings_are_rejected_not_panicked_on() {
    let mut w = machine(spec(10, 10, 0));
    let long = "x".repeat(MAX_SERIES_LEN + 1);
    let out = run(
        &mut w,
        &[
            reading("s", u64::MAX, 1.0),
            reading("s", i64::MAX as u64, 1.0),
            reading(&long, 1, 1.0),
        ],
    );
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| matches!(o, Output::Rejected(..))));
}

#[test]
fn bad_shapes_are_refused() {
    assert!(WindowSpec::new(spec(10, 3, 0)).is_err());
    assert!(WindowSpec::new(spec(10, 20, 0)).is_err());
    assert!(WindowSpec::new(spec(0, 0, 0)).is_err());
    assert!(WindowSpec::new(spec(10, 10, -1)).is_err());
    assert!(Windows::new(spec(10, 10, 0), "p", &"a".repeat(65)).is_err());
}

#[test]
fn pipeline_grouping_makes_one_series_named_after_the_pipeline() {
    let mut s = spec(10, 10, 0);
    s.group_by = Grouping::Pipeline;
    let mut w = machine(s);
    let out = run_all(&mut w, &[("a", 1, 1.0), ("b", 2, 1.0), ("a", 10, 1.0)]);
    let p = partials(&out);
    assert_eq!((p[0].series.as_str(), p[0].aggregate.count()), ("p", 2));
}

fn arb_readings() -> impl Strategy<Value = Vec<Reading>> {
    prop::collection::vec((0u8..4, 0u64..2_000, -1e3f64..1e3), 1..300).prop_map(|v| {
        v.into_iter()
            .map(|(s, ts, value)| reading(&format!("s{s}"), 1_000_000 + ts, value))
            .collect()
    })
}

fn arb_shape() -> impl Strategy<Value = (i64, i64)> {
    (1i64..50, 1i64..5).prop_map(|(slide, n)| (slide * n, slide))
}

/// The model: every (series, window) and the aggregate of all its readings.
fn whole(s: &WindowSpec, readings: &[Reading]) -> BTreeMap<(String, i64), Aggregate> {
    let mut m: BTreeMap<(String, i64), Aggregate> = BTreeMap::new();
    for r in readings {
        let ts = r.ts_ms as i64;
        for start in s.windows_of(ts).unwrap() {
            assert!(start <= ts && ts < start + s.size_ms);
            m.entry((r.sensor.clone(), start))
                .or_default()
                .add(ts, r.value)
                .unwrap();
        }
    }
    m
}

proptest! {
    #[test]
    fn each_reading_lands_in_exactly_size_over_slide_windows_that_contain_it(ts in -10_000_000i64..10_000_000, (size, slide) in arb_shape()) {
        let s = spec(size, slide, 0);
        let starts: Vec<i64> = s.windows_of(ts).unwrap().collect();
        prop_assert_eq!(starts.len() as i64, size / slide);
        for start in &starts {
            prop_assert!(*start <= ts && ts < start + size && start % slide == 0);
        }
        // None skipped: the windows just outside the list do not contain ts.
        prop_assert!(starts[0] - slide + size <= ts);
        prop_assert!(starts[starts.len() - 1] + slide > ts);
    }

    #[test]
    fn merged_partials_equal_the_whole_when_nothing_is_late((size, slide) in arb_shape(), readings in arb_readings()) {
        let s = spec(size, slide, 2_000); // lateness covers every disorder
        let mut w = machine(s.clone());
        let mut out = run(&mut w, &readings);
        w.tick(u64::MAX, &mut out);
        prop_assert_eq!(late(&out), 0);
        prop_assert_eq!(w.open_windows(), 0);
        let got = merged(&out);
        let want = whole(&s, &readings);
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, a) in &want {
            assert_same(&got[k], a);
        }
        prop_assert_eq!(partials(&out).len(), want.len(), "each window exactly once");
    }

    #[test]
    fn with_an_unbounded_horizon_revisions_make_the_merge_whole_in_any_order((size, slide) in arb_shape(), readings in arb_readings()) {
        let mut s = spec(size, slide, 0);
        s.revision_horizon_ms = Some(1 << 40);
        let mut w = machine(s.clone());
        let mut out = run(&mut w, &readings);
        w.tick(u64::MAX, &mut out);
        // A reading for a window that never opened before the watermark passed is late; the rest
        // merge to the whole of what entered.
        let late_readings: Vec<Reading> = out.iter().filter_map(|o| match o {
            Output::Late(r) => Some(r.clone()),
            _ => None,
        }).collect();
        let got = merged(&out);
        let total: u64 = got.values().map(Aggregate::count).sum();
        let n = (size / slide) as u64;
        prop_assert!(total <= readings.len() as u64 * n);
        prop_assert!(total + late_readings.len() as u64 * n >= readings.len() as u64 * n);
        if late_readings.is_empty() {
            for (k, a) in &whole(&s, &readings) {
                assert_same(&got[k], a);
            }
        }
    }

    #[test]
    fn restoring_the_state_at_any_point_gives_the_same_outputs(readings in arb_readings(), cut in 0usize..300, (size, slide) in arb_shape()) {
        let mut s = spec(size, slide, 30);
        s.revision_horizon_ms = Some(200);
        s.max_open_windows = 7;
        let mut straight = machine(s.clone());
        let want = run(&mut straight, &readings);
        let cut = cut.min(readings.len());
        let mut first = machine(s.clone());
        let mut got = run(&mut first, &readings[..cut]);
        let mut second = machine(s);
        second.restore_state(&first.encode_state(), 0).unwrap();
        got.extend(run(&mut second, &readings[cut..]));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn restoring_the_changed_series_rows_at_any_point_gives_the_same_outputs(readings in arb_readings(), cuts in prop::collection::vec(0usize..300, 1..5), (size, slide) in arb_shape()) {
        let mut s = spec(size, slide, 30);
        s.revision_horizon_ms = Some(200);
        s.max_open_windows = 7;
        let mut straight = machine(s.clone());
        let want = run(&mut straight, &readings);
        // The stage's table: rows rewritten only for changed series, machine rebuilt at cuts.
        let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut w = machine(s.clone());
        let mut got = Vec::new();
        for (i, r) in readings.iter().enumerate() {
            w.push(r, 0, &mut got);
            rows.extend(w.take_dirty());
            if cuts.contains(&i) {
                w = machine(s.clone());
                for (key, row) in &rows {
                    w.restore_series(key, row, 0).unwrap();
                }
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn restoring_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut w = machine(spec(10, 10, 0));
        let _ = w.restore_state(&bytes, 0);
        let _ = w.restore_series("s", &bytes, 0);
    }
}
