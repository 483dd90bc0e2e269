//! The Prometheus text exposition (format 0.0.4) of the loop's [`Metrics`].
//!
//! Counters are process-lifetime: they start at 0 with the process (Prometheus handles resets)
//! and count the effects of committed transactions only, so after a crash the partials of the
//! lost batch are counted once, by whichever instance commits them. Gauges describe the
//! partitions this instance owns now; they drop to 0 between sessions. The lag gauges refresh
//! with librdkafka's statistics (every 5 s) and have no series before the first.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_ops_http::prometheus::{escape, Out};

use super::health::View;
use crate::telemetry::{unix_ms, Metrics, Phase};

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric of `m`; `view` is what `/healthz` and `/readyz` answer now.
pub fn render(m: &Metrics, view: &View) -> String {
    let mut o = Out::with_capacity(4 * 1024);
    let version = format!("version=\"{}\"", escape(crate::VERSION));
    o.family(
        "edge_consumer_info",
        "gauge",
        "Build information.",
        [(version, 1)],
    );
    o.one(
        "edge_consumer_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        m.started.elapsed().as_secs(),
    );
    o.one(
        "edge_consumer_healthy",
        "gauge",
        "1 while /healthz answers 200.",
        u8::from(view.unhealthy().is_empty()),
    );
    o.one(
        "edge_consumer_ready",
        "gauge",
        "1 while /readyz answers 200.",
        u8::from(view.unready().is_empty()),
    );
    o.family(
        "edge_consumer_phase",
        "gauge",
        "The loop's phase (one series per phase, 1 for the current).",
        Phase::ALL.map(|p| (format!("phase=\"{}\"", p.name()), u8::from(view.phase == p))),
    );
    o.one(
        "edge_consumer_progress_age_seconds",
        "gauge",
        "Seconds since the loop last showed progress (what /healthz bounds by health_stall_s).",
        view.progress_age.as_secs_f64(),
    );

    o.counters(&[
        (
            "edge_consumer_merged_total",
            "Partials merged, in committed transactions.",
            get(&m.merged),
        ),
        (
            "edge_consumer_finals_total",
            "Final records emitted (first finals and revisions), in committed transactions.",
            get(&m.finals),
        ),
        (
            "edge_consumer_dead_letters_total",
            "Partials that could not be merged, sent to the dead-letter topic with a reason.",
            get(&m.dead_letters),
        ),
        (
            "edge_consumer_windows_finalized_total",
            "Windows that became final (by watermark, idle sources or the open-window cap).",
            get(&m.windows_finalized),
        ),
        (
            "edge_consumer_revisions_total",
            "Partials merged into a window already final (each re-emits it with revision + 1).",
            get(&m.revisions),
        ),
        (
            "edge_consumer_forced_finalizations_total",
            "Windows finalized early by limits.max_open_windows.",
            get(&m.forced_finalizations),
        ),
    ]);
    o.family(
        "edge_consumer_windows_evicted_total",
        "counter",
        "Final windows dropped from memory; later partials for them are dead-lettered.",
        [
            ("reason=\"cap\"", get(&m.evicted_by_cap)),
            ("reason=\"horizon\"", get(&m.evicted_by_horizon)),
        ],
    );
    o.one(
        "edge_consumer_sources_forgotten_total",
        "counter",
        "Sources (agent x series) forgotten at limits.max_sources.",
        get(&m.sources_forgotten),
    );

    o.one(
        "edge_consumer_transactions_total",
        "counter",
        "Kafka transactions committed (one per non-empty poll batch).",
        get(&m.transactions),
    );
    let secs = |us: u64| us as f64 / 1e6;
    o.summary(
        "edge_consumer_transaction_seconds",
        "begin_transaction to a successful commit_transaction.",
        secs(get(&m.transaction_us_sum)),
        get(&m.transactions),
    );
    o.one(
        "edge_consumer_transaction_seconds_last",
        "gauge",
        "The last committed transaction's duration.",
        secs(get(&m.transaction_us_last)),
    );
    let last_commit_ms = get(&m.last_commit_unix_ms);
    o.one(
        "edge_consumer_last_commit_timestamp_seconds",
        "gauge",
        "Unix time of the last committed transaction (0: none yet).",
        last_commit_ms as f64 / 1000.0,
    );
    o.head(
        "edge_consumer_last_commit_age_seconds",
        "gauge",
        "Seconds since the last committed transaction (no sample before the first). Grows while no partial arrives.",
    );
    if last_commit_ms > 0 {
        let age = unix_ms().saturating_sub(last_commit_ms) as f64 / 1000.0;
        o.labelled("edge_consumer_last_commit_age_seconds", "", age);
    }
    o.counters(&[
        (
            "edge_consumer_sessions_total",
            "Consumer sessions started (clients created, group joined); 1 while nothing failed.",
            get(&m.sessions),
        ),
        (
            "edge_consumer_session_errors_total",
            "Sessions ended by a retryable error (broker away, aborted transaction, timeout).",
            get(&m.session_errors),
        ),
        (
            "edge_consumer_restored_partitions_total",
            "Input partitions restored from the changelog (on every assignment).",
            get(&m.restored_partitions),
        ),
        (
            "edge_consumer_reloads_total",
            "SIGHUP reloads applied (new [grouping] rules handed to the loop).",
            get(&m.reload.reloads),
        ),
        (
            "edge_consumer_reload_failures_total",
            "SIGHUP reloads refused (a bad file, or one changing more than [grouping]); the running rules stay.",
            get(&m.reload.failures),
        ),
    ]);
    o.gauges(&[
        (
            "edge_consumer_assigned_partitions",
            "Input partitions owned now (assigned and restored).",
            get(&m.assigned_partitions),
        ),
        (
            "edge_consumer_open_windows",
            "Windows not final yet, over the partitions owned now.",
            get(&m.open_windows),
        ),
        (
            "edge_consumer_final_windows",
            "Final windows kept for revisions (until horizon_ms), over the partitions owned now.",
            get(&m.finalized_windows),
        ),
        (
            "edge_consumer_sources",
            "Sources (agent x series) tracked, over the partitions owned now.",
            get(&m.sources),
        ),
    ]);
    o.head(
        "edge_consumer_lag_records",
        "gauge",
        "Records of an owned input partition not read yet: its last stable offset minus the loop's position.",
    );
    let lag = m.lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for ((topic, partition), records) in &lag {
        let labels = format!("topic=\"{}\",partition=\"{partition}\"", escape(topic));
        o.labelled("edge_consumer_lag_records", &labels, records);
    }
    o.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    fn rendered(m: &Metrics) -> String {
        render(m, &View::of(m, Duration::from_secs(300)))
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_counter_of_the_loop_is_rendered_with_its_value() {
        let m = Metrics::default();
        m.merged.store(120, Ordering::Relaxed);
        m.finals.store(41, Ordering::Relaxed);
        m.dead_letters.store(3, Ordering::Relaxed);
        m.transactions.store(4, Ordering::Relaxed);
        m.restored_partitions.store(2, Ordering::Relaxed);
        m.open_windows.store(17, Ordering::Relaxed);
        m.finalized_windows.store(40, Ordering::Relaxed);
        m.sessions.store(1, Ordering::Relaxed);
        m.evicted_by_horizon.store(5, Ordering::Relaxed);
        m.reload.reloads.store(2, Ordering::Relaxed);
        m.reload.failures.store(1, Ordering::Relaxed);
        m.transaction_us_sum.store(2_500_000, Ordering::Relaxed);
        let t = rendered(&m);
        for (series, value) in [
            ("edge_consumer_merged_total", "120"),
            ("edge_consumer_finals_total", "41"),
            ("edge_consumer_dead_letters_total", "3"),
            ("edge_consumer_transactions_total", "4"),
            ("edge_consumer_restored_partitions_total", "2"),
            ("edge_consumer_open_windows", "17"),
            ("edge_consumer_final_windows", "40"),
            ("edge_consumer_sessions_total", "1"),
            ("edge_consumer_reloads_total", "2"),
            ("edge_consumer_reload_failures_total", "1"),
            (
                "edge_consumer_windows_evicted_total{reason=\"horizon\"}",
                "5",
            ),
            ("edge_consumer_windows_evicted_total{reason=\"cap\"}", "0"),
            ("edge_consumer_transaction_seconds_sum", "2.5"),
            ("edge_consumer_transaction_seconds_count", "4"),
            ("edge_consumer_phase{phase=\"starting\"}", "1"),
            ("edge_consumer_phase{phase=\"running\"}", "0"),
            ("edge_consumer_healthy", "1"),
            ("edge_consumer_ready", "0"),
            ("edge_consumer_last_commit_timestamp_seconds", "0"),
        ] {
            assert_eq!(sample(&t, series), Some(value), "{series} in\n{t}");
        }
        let info = format!("edge_consumer_info{{version=\"{}\"}} 1", crate::VERSION);
        assert!(t.lines().any(|l| l == info), "{t}");
        assert!(
            sample(&t, "edge_consumer_last_commit_age_seconds").is_none(),
            "no age before the first commit"
        );
    }

    /// Pins the whole page (names, HELP/TYPE lines, labels, which counter feeds which sample)
    /// against `metrics/exposition.golden`; the clock-dependent samples and the version are
    /// masked. Update it on purpose: `UPDATE_GOLDEN=1 cargo test -p edge-consumer --lib metrics`.
    #[test]
    fn the_exposition_is_the_documented_page_line_for_line() {
        let m = Metrics::default();
        let fields = [
            &m.merged,
            &m.finals,
            &m.dead_letters,
            &m.transactions,
            &m.restored_partitions,
            &m.open_windows,
            &m.finalized_windows,
            &m.sessions,
            &m.session_errors,
            &m.sources,
            &m.assigned_partitions,
            &m.windows_finalized,
            &m.revisions,
            &m.forced_finalizations,
            &m.evicted_by_cap,
            &m.evicted_by_horizon,
            &m.sources_forgotten,
            &m.transaction_us_sum,
            &m.transaction_us_last,
            &m.reload.reloads,
            &m.reload.failures,
        ];
        for (n, a) in fields.into_iter().enumerate() {
            a.store(100 + n as u64, Ordering::Relaxed);
        }
        m.last_commit_unix_ms.store(1_500, Ordering::Relaxed);
        m.lag.lock().unwrap().insert(("edge.partials".into(), 2), 7);
        let version = format!("version=\"{}\"", crate::VERSION);
        let masked = [
            "_uptime_seconds ",
            "_progress_age_seconds ",
            "_last_commit_age_seconds ",
        ];
        let got: String = rendered(&m)
            .lines()
            .map(|l| {
                match masked
                    .iter()
                    .find(|s| !l.starts_with('#') && l.contains(*s))
                {
                    Some(s) => format!("{}{s}<clock>\n", l.split(s).next().unwrap_or_default()),
                    None => format!("{}\n", l.replace(&version, "version=\"<version>\"")),
                }
            })
            .collect();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/ops/metrics/exposition.golden"
            );
            std::fs::write(path, &got).expect("write golden");
        }
        let golden = include_str!("metrics/exposition.golden");
        for (n, (g, want)) in got.lines().zip(golden.lines()).enumerate() {
            assert_eq!(g, want, "line {}", n + 1);
        }
        assert_eq!(got.lines().count(), golden.lines().count());
    }

    #[test]
    fn every_sample_has_help_and_type_and_names_are_edge_consumer() {
        let m = Metrics::default();
        m.last_commit_unix_ms.store(1, Ordering::Relaxed);
        m.lag.lock().unwrap().insert(("edge.partials".into(), 2), 7);
        let t = rendered(&m);
        let mut helped = BTreeSet::new();
        let mut typed = BTreeSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name), "{name} described twice");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
                assert!(
                    kind != "counter" || name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
                typed.insert(name);
            } else {
                let series = line.split([' ', '{']).next().unwrap();
                assert!(series.starts_with("edge_consumer_"), "{line}");
                let family = ["_sum", "_count"]
                    .iter()
                    .find_map(|s| series.strip_suffix(s).filter(|f| typed.contains(f)))
                    .unwrap_or(series);
                assert!(typed.contains(family), "{line}: no TYPE before it");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert_eq!(helped, typed);
        assert!(t.ends_with('\n'));
        assert_eq!(
            sample(
                &t,
                "edge_consumer_lag_records{topic=\"edge.partials\",partition=\"2\"}"
            ),
            Some("7")
        );
        assert!(sample(&t, "edge_consumer_last_commit_age_seconds").is_some());
    }
}
