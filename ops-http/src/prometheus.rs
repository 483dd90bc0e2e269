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

    /// The page.
    pub fn finish(self) -> String {
        self.0
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
