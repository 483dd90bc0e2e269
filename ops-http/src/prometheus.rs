//! The Prometheus text exposition format 0.0.4, written line by line.
//!
//! A metric family is its two comment lines, then its samples:
//!
//! ```text
//! # HELP edge_consumer_merged_total Partials merged, in committed transactions.
//! # TYPE edge_consumer_merged_total counter
//! edge_consumer_merged_total 120
//! edge_consumer_windows_evicted_total{reason="cap"} 0
//! ```
//!
//! Every line ends in `\n`; a value is written with `Display` (integers as such, `f64` in its
//! shortest form). Label values pass through [`escape`] (`\` `"` and a line feed become `\\`
//! `\"` `\n`); names, label names and help texts are the caller's constants and are written as
//! they are (no line feed or backslash in a help text). The families' names, kinds and meaning
//! belong to each service's `ops/metrics.rs`; [`CONTENT_TYPE`] is what `/metrics` answers with.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Out(String);

impl Out {
    /// An empty page with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Out {
        Out(String::with_capacity(capacity))
    }

    /// The `# HELP` and `# TYPE` lines of family `name` of `kind` (`counter`, `gauge`, ...).
    pub fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family with one unlabelled sample.
    pub fn one(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A family of `kind` with its labelled samples: `(labels, value)` as for [`Out::labelled`].
    pub fn family<L: AsRef<str>, V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.head(name, kind, help);
        for (labels, value) in samples {
            self.labelled(name, labels.as_ref(), value);
        }
    }

    /// Counter families with one unlabelled sample each: `(name, help, value)` in order.
    pub fn counters(&mut self, rows: &[(&str, &str, u64)]) {
        for (name, help, value) in rows {
            self.one(name, "counter", help, value);
        }
    }

    /// Gauge families with one unlabelled sample each: `(name, help, value)` in order.
    pub fn gauges<V: Display>(&mut self, rows: &[(&str, &str, V)]) {
        for (name, help, value) in rows {
            self.one(name, "gauge", help, value);
        }
    }

    /// One sample of the family headed last; `labels` is `key="value",...` with the values
    /// [`escape`]d, or empty for none.
    pub fn labelled(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = match labels.is_empty() {
            true => writeln!(self.0, "{name} {value}"),
            false => writeln!(self.0, "{name}{{{labels}}} {value}"),
        };
    }

    /// A summary family without quantiles: its `_sum` and `_count` samples.
    pub fn summary(&mut self, name: &str, help: &str, sum: impl Display, count: impl Display) {
        self.head(name, "summary", help);
        let _ = writeln!(self.0, "{name}_sum {sum}\n{name}_count {count}");
    }

    /// A histogram family: for each `(labels, histogram)` its cumulative `_bucket` samples (one
    /// per bound of [`LATENCY_BOUNDS_S`], then `le="+Inf"`), `_sum` (seconds) and `_count`.
    pub fn histogram<'h, L: AsRef<str>>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, &'h Histogram)>,
    ) {
        self.head(name, "histogram", help);
        for (labels, h) in series {
            let labels = labels.as_ref();
            let sep = if labels.is_empty() { "" } else { "," };
            let (cumulative, sum_s) = h.snapshot();
            let les = LATENCY_BOUNDS_S.iter().map(|b| b.to_string());
            for (le, n) in les.chain(["+Inf".to_owned()]).zip(&cumulative) {
                let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
            }
            let count = cumulative.last().copied().unwrap_or(0);
            self.labelled(&format!("{name}_sum"), labels, sum_s);
            self.labelled(&format!("{name}_count"), labels, count);
        }
    }

    /// The page.
    pub fn finish(self) -> String {
        self.0
    }
}

/// Upper bounds, in seconds, of a [`Histogram`]'s buckets: 1 ms to 10 s, the range of a
/// reading's trip through a stage (a group commit, a window step, a Kafka transaction).
pub const LATENCY_BOUNDS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram over [`LATENCY_BOUNDS_S`] (and +Inf), observed from any thread with
/// relaxed atomics: a scrape may see one observation's bucket before its sum, never a torn
/// count. Fixed size: observing never allocates.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `d` (say, the readings of one commit that all waited `d`).
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Cumulative counts (one per bound, then +Inf: the total) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (cumulative, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// Escapes a label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn a_histogram_counts_each_observation_once_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.observe_n(Duration::from_micros(500), 2); // <= 1 ms
        h.observe_n(Duration::from_millis(10), 1); // exactly on the 10 ms bound
        h.observe_n(Duration::from_millis(300), 1); // <= 500 ms
        h.observe_n(Duration::from_secs(60), 1); // above every bound
        h.observe_n(Duration::from_secs(1), 0); // nothing
        let (cumulative, sum) = h.snapshot();
        assert_eq!(cumulative, [2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5]);
        assert!((sum - 60.311).abs() < 1e-9, "{sum}");
        let mut o = Out::default();
        o.histogram("hop_seconds", "Waits.", [("hop=\"a\"", &h)]);
        let page = o.finish();
        assert!(page.starts_with("# HELP hop_seconds Waits.\n# TYPE hop_seconds histogram\n"));
        assert!(page.contains("hop_seconds_bucket{hop=\"a\",le=\"0.001\"} 2\n"));
        assert!(page.contains("hop_seconds_bucket{hop=\"a\",le=\"0.01\"} 3\n"));
        assert!(page.contains("hop_seconds_bucket{hop=\"a\",le=\"10\"} 4\n"));
        assert!(page.contains("hop_seconds_bucket{hop=\"a\",le=\"+Inf\"} 5\n"));
        assert!(
            page.ends_with("hop_seconds_sum{hop=\"a\"} 60.311\nhop_seconds_count{hop=\"a\"} 5\n")
        );
    }

    #[test]
    fn a_family_is_help_type_then_its_samples_one_a_line() {
        let mut o = Out::with_capacity(256);
        o.counters(&[("x_total", "Things.", 3)]);
        o.summary("y_seconds", "Durations.", 2.5, 4u64);
        o.family(
            "z",
            "gauge",
            "By source.",
            [(format!("source=\"{}\"", escape("a\"b")), 0.0)],
        );
        assert_eq!(
            o.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y_seconds Durations.\n# TYPE y_seconds summary\n\
             y_seconds_sum 2.5\ny_seconds_count 4\n\
             # HELP z By source.\n# TYPE z gauge\nz{source=\"a\\\"b\"} 0\n"
        );
        let mut o = Out::default();
        o.gauges(&[("a", "A.", 0.5), ("b", "B.", 2.0)]);
        assert_eq!(
            o.finish(),
            "# HELP a A.\n# TYPE a gauge\na 0.5\n# HELP b B.\n# TYPE b gauge\nb 2\n"
        );
    }
}
