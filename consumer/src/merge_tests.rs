//! Unit and property tests of the merge state machine (deterministic time: every timestamp is
//! an argument).

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Settings for tests (other modules' tests use them too).
pub(crate) fn settings() -> Settings {
    Settings {
        rollup_ms: None,
        idle_timeout_ms: 60_000,
        revisions: true,
        horizon_ms: 3_600_000,
        max_open_windows: 1000,
        max_finalized_windows: 1000,
        max_sources: 16,
    }
}

fn partial(agent: &str, series: &str, start: i64, end: i64, wm: i64, values: &[f64]) -> Partial {
    let mut aggregate = Aggregate::new();
    for (i, v) in values.iter().enumerate() {
        aggregate.add(start + i as i64, *v).unwrap();
    }
    Partial {
        series: heapless::String::try_from(series).unwrap(),
        window_start_ms: start,
        window_end_ms: end,
        agent: heapless::String::try_from(agent).unwrap(),
        watermark_ms: wm,
        revision: 0,
        aggregate,
    }
}

fn key(group: &str, start: i64, end: i64) -> WindowKey {
    WindowKey {
        group: group.to_owned(),
        start_ms: start,
        end_ms: end,
    }
}

#[test]
fn a_window_is_final_only_when_every_active_gateway_has_passed_its_end() {
    let mut s = PartitionState::new(settings());
    s.apply("s", &partial("a", "s", 0, 10, 10, &[1.0]), 100)
        .unwrap();
    // a alone has passed the end: final at once.
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1);
    s.apply("s", &partial("a", "s", 10, 20, 10, &[1.0]), 101)
        .unwrap();
    s.apply("s", &partial("b", "s", 10, 20, 15, &[2.0]), 102)
        .unwrap();
    assert!(s.take_changes().finals.is_empty(), "b holds it back");
    s.apply("s", &partial("b", "s", 20, 30, 20, &[3.0]), 103)
        .unwrap();
    assert!(s.take_changes().finals.is_empty(), "a holds it back");
    s.apply("s", &partial("a", "s", 20, 30, 30, &[4.0]), 104)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1);
    let (k, w) = &c.finals[0];
    assert_eq!(k, &key("s", 10, 20));
    assert_eq!(w.aggregate.count(), 2);
    assert_eq!(w.revision, 0);
    assert_eq!(w.gateways.len(), 2);
}

#[test]
fn a_silent_gateway_stops_holding_windows_back_after_the_idle_timeout() {
    let mut s = PartitionState::new(settings());
    s.apply("s", &partial("a", "s", 0, 10, 0, &[1.0]), 1_000)
        .unwrap();
    s.apply("s", &partial("b", "s", 0, 10, 10, &[1.0]), 1_000)
        .unwrap();
    s.tick(61_000);
    assert!(
        s.take_changes().finals.is_empty(),
        "a is idle for exactly the timeout"
    );
    s.tick(61_001);
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1);
    assert_eq!(c.finals[0].1.aggregate.count(), 2);
}

#[test]
fn record_time_alone_makes_a_gateway_idle_while_catching_up() {
    let mut s = PartitionState::new(settings());
    s.apply("s", &partial("a", "s", 0, 10, 0, &[1.0]), 1_000)
        .unwrap();
    s.apply("s", &partial("b", "s", 0, 10, 10, &[1.0]), 2_000)
        .unwrap();
    s.apply("s", &partial("b", "s", 10, 20, 20, &[1.0]), 70_000)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 2, "a last seen 69 s before stream time");
}

#[test]
fn a_partial_for_a_final_window_emits_a_revision_with_the_merged_values() {
    let mut s = PartitionState::new(settings());
    s.apply("s", &partial("a", "s", 0, 10, 10, &[1.0]), 1)
        .unwrap();
    assert_eq!(s.take_changes().finals[0].1.revision, 0);
    s.apply("s", &partial("b", "s", 0, 10, 10, &[3.0]), 2)
        .unwrap();
    s.apply("s", &partial("b", "s", 0, 10, 10, &[5.0]), 3)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1, "one emission per key per batch");
    let w = &c.finals[0].1;
    assert_eq!((w.revision, w.aggregate.count()), (2, 3));
    assert_eq!(w.aggregate.sum(), 9.0);
}

#[test]
fn a_window_dropped_past_the_horizon_refuses_later_partials() {
    let mut st = settings();
    st.horizon_ms = 100;
    let mut s = PartitionState::new(st);
    s.apply("s", &partial("a", "s", 0, 10, 10, &[1.0]), 1)
        .unwrap();
    // The horizon is checked when stream time has moved by idle_timeout / 8.
    s.apply("s", &partial("a", "s", 100, 110, 111, &[1.0]), 10_000)
        .unwrap();
    let c = s.take_changes();
    assert!(c.windows.contains(&(key("s", 0, 10), None)), "a tombstone");
    assert_eq!(s.meta().frontier_ms, 11);
    assert_eq!(
        s.apply("s", &partial("b", "s", 0, 10, 5, &[1.0]), 10_001),
        Err(Refused::BeyondHorizon)
    );
    assert_eq!(s.counters.refused, 1);
    // A window never seen but within the horizon opens final at once.
    s.apply("s", &partial("b", "s", 50, 60, 5, &[2.0]), 4)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(
        c.finals.len(),
        0,
        "b (watermark 5) is active and holds it back"
    );
}

#[test]
fn roll_up_merges_small_windows_into_the_large_one_containing_them() {
    let mut st = settings();
    st.rollup_ms = Some(60);
    let mut s = PartitionState::new(st);
    for start in (0..60).step_by(10) {
        s.apply("s", &partial("a", "s", start, start + 10, start, &[1.0]), 1)
            .unwrap();
    }
    assert!(s.take_changes().finals.is_empty());
    s.apply("s", &partial("a", "s", 60, 70, 60, &[1.0]), 2)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1);
    assert_eq!(c.finals[0].0, key("s", 0, 60));
    assert_eq!(c.finals[0].1.aggregate.count(), 6);
    assert_eq!(
        s.apply("s", &partial("a", "s", 55, 65, 60, &[1.0]), 3),
        Err(Refused::OutsideRollup)
    );
}

#[test]
fn revisions_disabled_refuses_partials_for_final_windows() {
    let mut st = settings();
    st.revisions = false;
    let mut s = PartitionState::new(st);
    s.apply("s", &partial("a", "s", 0, 10, 10, &[1.0]), 1)
        .unwrap();
    assert_eq!(
        s.apply("s", &partial("b", "s", 0, 10, 10, &[1.0]), 2),
        Err(Refused::AfterFinal)
    );
}

#[test]
fn the_open_window_cap_finalizes_the_oldest_early_and_counts_it() {
    let mut st = settings();
    st.max_open_windows = 2;
    let mut s = PartitionState::new(st);
    for start in [0, 10, 20] {
        s.apply("s", &partial("a", "s", start, start + 10, 0, &[1.0]), 1)
            .unwrap();
    }
    assert_eq!(s.open_windows(), 2);
    assert_eq!(s.counters.forced_finalizations, 1);
    let c = s.take_changes();
    assert_eq!(c.finals[0].0, key("s", 0, 10));
}

#[test]
fn the_final_window_cap_drops_the_oldest_and_moves_the_frontier() {
    let mut st = settings();
    st.max_finalized_windows = 1;
    let mut s = PartitionState::new(st);
    s.apply("s", &partial("a", "s", 0, 10, 100, &[1.0]), 1)
        .unwrap();
    s.apply("s", &partial("a", "s", 10, 20, 100, &[1.0]), 1)
        .unwrap();
    assert_eq!(s.finalized_windows(), 1);
    assert_eq!(s.counters.evicted_by_cap, 1);
    assert_eq!(
        s.apply("s", &partial("a", "s", 0, 10, 100, &[1.0]), 1),
        Err(Refused::BeyondHorizon)
    );
}

#[test]
fn the_source_cap_forgets_the_one_seen_longest_ago() {
    let mut st = settings();
    st.max_sources = 2;
    let mut s = PartitionState::new(st);
    for (i, g) in ["a", "b", "c"].iter().enumerate() {
        s.apply("s", &partial(g, "s", 0, 10, 0, &[1.0]), i as i64)
            .unwrap();
    }
    assert_eq!(s.counters.sources_forgotten, 1);
    let c = s.take_changes();
    let a = SourceKey {
        agent: "a".into(),
        series: "s".into(),
    };
    assert!(c.sources.contains(&(a, None)));
}

/// One step of a random run: a partial from gateway `g` for series `series` window `w`, the
/// gateway's watermark moving by `wm_step`, record time moving by `dt`; or a wall-clock tick.
#[derive(Debug, Clone)]
enum Step {
    Partial {
        g: u8,
        series: u8,
        w: i64,
        wm_step: i64,
        dt: i64,
        value: i32,
    },
    Tick(i64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        8 => (0u8..3, 0u8..3, 0i64..12, 0i64..15, 0i64..20_000, -50i32..50).prop_map(
            |(g, series, w, wm_step, dt, value)| Step::Partial { g, series, w, wm_step, dt, value }
        ),
        1 => (0i64..200_000).prop_map(Step::Tick),
    ];
    prop::collection::vec(step, 1..80)
}

fn run(
    s: &mut PartitionState,
    steps: &[Step],
    wms: &mut [i64; 3],
    now: &mut i64,
    out: &mut BTreeMap<WindowKey, WindowState>,
    sent: &mut BTreeMap<WindowKey, u64>,
    log: &mut ChangeLog,
) {
    for step in steps {
        match step {
            Step::Partial {
                g,
                series,
                w,
                wm_step,
                dt,
                value,
            } => {
                wms[*g as usize] += wm_step;
                *now += dt;
                let start = w * 10;
                let p = partial(
                    &format!("g{g}"),
                    &format!("s{series}"),
                    start,
                    start + 10,
                    wms[*g as usize],
                    &[f64::from(*value)],
                );
                let group = format!("s{series}");
                if s.apply(&group, &p, *now).is_ok() {
                    *sent.entry(key(&group, start, start + 10)).or_default() += 1;
                }
            }
            Step::Tick(t) => s.tick(*now + t),
        }
        let pending = s.has_changes();
        let changes = s.take_changes();
        assert_eq!(pending, changes != Changes::default(), "has_changes agrees");
        assert!(!s.has_changes(), "taking the changes leaves none");
        apply_changes(log, &changes);
        for (k, w) in changes.finals {
            out.insert(k, w);
        }
    }
}

fn apply_changes(log: &mut ChangeLog, c: &Changes) {
    for (k, w) in &c.windows {
        match w {
            Some(w) => log.windows.insert(k.clone(), w.clone()),
            None => log.windows.remove(k),
        };
    }
    for (k, src) in &c.sources {
        match src {
            Some(src) => log.sources.insert(k.clone(), src.clone()),
            None => log.sources.remove(k),
        };
    }
    if let Some(m) = c.meta {
        log.meta = Some(m);
    }
}

#[derive(Default)]
struct ChangeLog {
    windows: BTreeMap<WindowKey, WindowState>,
    sources: BTreeMap<SourceKey, Source>,
    meta: Option<Meta>,
}

proptest! {
    /// Every accepted partial counts exactly once: each emitted window's count is the number of
    /// partials merged into it, and its revision is the number merged after it became final.
    #[test]
    fn every_accepted_partial_counts_exactly_once(steps in steps()) {
        let mut s = PartitionState::new(settings());
        let (mut wms, mut now) = ([0i64; 3], 0i64);
        let (mut out, mut sent) = (BTreeMap::new(), BTreeMap::new());
        run(&mut s, &steps, &mut wms, &mut now, &mut out, &mut sent, &mut ChangeLog::default());
        s.tick(i64::MAX / 2);
        for (k, w) in s.take_changes().finals {
            out.insert(k, w);
        }
        prop_assert_eq!(out.len(), sent.len(), "every window is emitted");
        for (k, w) in &out {
            prop_assert_eq!(w.aggregate.count(), sent[k]);
            prop_assert_eq!(w.partials, sent[k]);
            prop_assert!(u64::from(w.revision) < sent[k]);
        }
    }

    /// Restoring from the changelog (the newest value of each key) at any point behaves exactly
    /// like carrying on: the same finals come out afterwards. This is what a new owner of a
    /// partition relies on.
    #[test]
    fn restoring_from_the_changelog_midway_gives_the_same_finals(steps in steps(), cut in 0usize..80) {
        let cut = cut.min(steps.len());
        let mut log = ChangeLog::default();
        let mut straight = PartitionState::new(settings());
        let (mut wms, mut now) = ([0i64; 3], 0i64);
        let (mut out_a, mut sent) = (BTreeMap::new(), BTreeMap::new());
        run(&mut straight, &steps[..cut], &mut wms, &mut now, &mut out_a, &mut sent, &mut log);
        let mut restored = PartitionState::restore(
            settings(),
            log.windows.clone(),
            log.sources.clone(),
            log.meta,
        );
        let (mut wms_b, mut now_b) = (wms, now);
        let mut out_b = BTreeMap::new();
        let mut sent_b = BTreeMap::new();
        run(&mut straight, &steps[cut..], &mut wms, &mut now, &mut out_a, &mut sent, &mut log);
        let mut log_b = ChangeLog::default();
        run(&mut restored, &steps[cut..], &mut wms_b, &mut now_b, &mut out_b, &mut sent_b, &mut log_b);
        straight.tick(i64::MAX / 2);
        restored.tick(i64::MAX / 2);
        let after_a: Vec<_> = straight.take_changes().finals;
        let after_b: Vec<_> = restored.take_changes().finals;
        prop_assert_eq!(after_a, after_b);
        for (k, w) in &out_b {
            prop_assert_eq!(Some(w), out_a.get(k));
        }
    }
}

#[test]
fn after_a_cold_start_window_the_next_windows_wait_for_every_known_gateway() {
    let mut s = PartitionState::new(settings());
    for w in 0..3i64 {
        for g in ["a", "b", "c"] {
            let p = partial(g, "s", w * 10, w * 10 + 10, w * 10 + 10, &[1.0]);
            s.apply("s", &p, 1_000 + w).unwrap();
        }
    }
    let finals = s.take_changes().finals;
    assert_eq!(finals.len(), 3);
    for (k, w) in &finals[1..] {
        assert_eq!((w.revision, w.gateways.len()), (0, 3), "{k:?}");
    }
}

#[test]
fn an_idle_gateway_does_not_make_the_others_idle() {
    let mut st = settings();
    st.idle_timeout_ms = 300_000;
    let mut s = PartitionState::new(st);
    let size = 600_000;
    let ts0 = 1_000_000_000;
    let mut finals = BTreeMap::new();
    for w in 0..24i64 {
        for g in ["a", "b", "c"] {
            if g == "c" && w >= 4 {
                continue;
            }
            let p = partial(g, "s", w * size, w * size + size, w * size + size, &[1.0]);
            s.apply("s", &p, ts0 + w * 60_000).unwrap();
            for (k, w) in s.take_changes().finals {
                finals.insert(k, w);
            }
        }
    }
    for (k, w) in &finals {
        if k.start_ms > 0 {
            assert_eq!(w.revision, 0, "{k:?}");
        }
    }
}

/// Regression: with one watermark per agent, gateway c's partial for series t1 (watermark at
/// the window's end) finalized t2's window before c's t2 partial, the very next record,
/// arrived: a spurious revision. Watermarks are per (agent, series).
#[test]
fn one_series_partial_does_not_finalize_another_series_window() {
    let mut s = PartitionState::new(settings());
    for g in ["a", "c"] {
        for series in ["t1", "t2"] {
            s.apply(series, &partial(g, series, 0, 10, 0, &[1.0]), 1)
                .unwrap();
        }
    }
    let _ = s.take_changes();
    s.apply("t1", &partial("a", "t1", 10, 20, 20, &[1.0]), 2)
        .unwrap();
    s.apply("t2", &partial("a", "t2", 10, 20, 20, &[1.0]), 2)
        .unwrap();
    s.apply("t1", &partial("c", "t1", 10, 20, 20, &[1.0]), 2)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 2, "t1's windows 0 and 1, not t2's");
    assert!(c.finals.iter().all(|(k, _)| k.group == "t1"));
    s.apply("t2", &partial("c", "t2", 10, 20, 20, &[1.0]), 2)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 2);
    assert!(c.finals.iter().all(|(_, w)| w.revision == 0));
}

#[test]
fn a_source_whose_series_moves_to_another_group_holds_back_the_new_group() {
    let mut s = PartitionState::new(settings());
    s.apply("old", &partial("a", "s", 0, 10, 10, &[1.0]), 100)
        .unwrap();
    s.apply("old", &partial("b", "s", 0, 10, 10, &[1.0]), 100)
        .unwrap();
    let _ = s.take_changes();
    // The rules changed: series s now belongs to group "new". a's next partial is behind
    // (watermark 10), b's ahead: a holds the new group's window back (before the fix a stayed
    // in "old", so "new" had no sources and its window was final at a's partial).
    s.apply("new", &partial("a", "s", 10, 20, 10, &[2.0]), 101)
        .unwrap();
    s.apply("new", &partial("b", "s", 10, 20, 20, &[2.0]), 101)
        .unwrap();
    assert!(
        s.take_changes().finals.is_empty(),
        "a holds the new group back"
    );
    assert_eq!(s.finalization_watermark("new", 101), Some(10));
    assert_eq!(s.finalization_watermark("old", 101), None);
    s.apply("new", &partial("a", "s", 20, 30, 20, &[3.0]), 102)
        .unwrap();
    let c = s.take_changes();
    assert_eq!(c.finals.len(), 1);
    assert_eq!(c.finals[0].0, key("new", 10, 20));
}
