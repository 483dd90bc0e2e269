//! The `BENCH` line: one figure of a benchmark, machine-readable, among its human output.
//!
//! # Format
//!
//! A benchmark program prints, on standard output, one line per figure:
//!
//! ```text
//! BENCH {"bench":"forward_drain","metric":"drain","value":235661.2,"unit":"records/s","params":"1000000 records x 100 B, batch 10000, 1 partition(s), zstd"}
//! ```
//!
//! - the line starts with `BENCH ` (the word, one space) at column 0, and the rest of the
//!   line is one JSON object (serde_json's compact output, so it never spans lines);
//! - `bench` (string): the benchmark family (`link`, `ingest`, `modbus`, `window`,
//!   `forward_drain`, `restart`, `latency`, `cpu`, `peer_telegraf`, `consumer`, `recovery`);
//! - `metric` (string, snake_case): the figure within the family; the table shows it with
//!   spaces for underscores;
//! - `value` (number): finite; `null` (what serde_json writes for NaN and infinities) is an
//!   invalid line;
//! - `unit` (string): what the value counts, e.g. `records/s`, `ms`, `B`, `MiB`, `%`, `x`;
//! - `params` (string, may be empty or missing): the parameters of the measurement, in words;
//!   runs of the same program with other arguments differ here;
//! - `target` (string, missing when there is none): the goal an issue set for the figure, in
//!   words with its comparison (`>= 150,000`, `<= 5`), in the figure's unit; the table shows
//!   it beside the value.
//!
//! Other fields are ignored, so a program may add some. Lines that do not start with `BENCH `
//! are human output and are ignored. A line that starts with `BENCH ` but does not parse makes
//! the run fail (see [`crate::run`]), so a broken figure is never silently dropped.
//!
//! Every program writes its lines with [`Family::print`] (this crate is a dev-dependency of
//! `edge-agent`, `edge-consumer` and `firmware-sim` for their examples and benches), so the
//! writer and the parser live side by side and cannot drift apart. The keys come out in
//! serde_json's map order (sorted: `bench`, `metric`, `params`, `unit`, `value`); the golden line
//! in the tests pins the exact bytes.

use serde::{Deserialize, Serialize};

/// The prefix that marks a figure line.
pub const PREFIX: &str = "BENCH ";

/// One figure, as printed by a benchmark program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub bench: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    #[serde(default)]
    pub params: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

/// The writer of one benchmark family: `Family("ingest").print("append", 1e5, "readings/s", "...")`.
///
/// A program keeps one as a constant (`const FIGURES: Family = Family("ingest");`) and prints
/// each figure through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family(pub &'static str);

impl Family {
    /// The line for one figure, without the newline.
    pub fn line(&self, metric: &str, value: f64, unit: &str, params: &str) -> String {
        self.line_with_target(metric, value, unit, params, "")
    }

    /// The line for one figure with the goal set for it (`">= 150,000"`; empty: none).
    pub fn line_with_target(
        &self,
        metric: &str,
        value: f64,
        unit: &str,
        params: &str,
        target: &str,
    ) -> String {
        let mut json = serde_json::json!({
            "bench": self.0,
            "metric": metric,
            "value": value,
            "unit": unit,
            "params": params,
        });
        if !target.is_empty() {
            json["target"] = target.into();
        }
        format!("{PREFIX}{json}")
    }

    /// Prints the line for one figure on standard output.
    pub fn print(&self, metric: &str, value: f64, unit: &str, params: &str) {
        self.print_with_target(metric, value, unit, params, "");
    }

    /// Prints the line for one figure with the goal set for it.
    pub fn print_with_target(
        &self,
        metric: &str,
        value: f64,
        unit: &str,
        params: &str,
        target: &str,
    ) {
        println!(
            "{}",
            self.line_with_target(metric, value, unit, params, target)
        );
    }
}

/// Why a `BENCH` line was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("not a JSON figure ({reason}): {line}")]
    Json { line: String, reason: String },
    #[error("value is not a finite number: {line}")]
    NotFinite { line: String },
    #[error("empty bench or metric name: {line}")]
    EmptyName { line: String },
}

/// Parses one line of output: `None` for human output, `Some(Ok)` for a figure, `Some(Err)`
/// for a line that claims to be a figure but is not one.
pub fn parse_line(line: &str) -> Option<Result<Figure, LineError>> {
    let json = line.strip_prefix(PREFIX)?;
    let line = line.trim_end().to_owned();
    let figure = match serde_json::from_str::<Figure>(json.trim()) {
        Ok(f) => f,
        Err(e) => {
            return Some(Err(LineError::Json {
                line,
                reason: e.to_string(),
            }))
        }
    };
    if !figure.value.is_finite() {
        return Some(Err(LineError::NotFinite { line }));
    }
    if figure.bench.trim().is_empty() || figure.metric.trim().is_empty() {
        return Some(Err(LineError::EmptyName { line }));
    }
    Some(Ok(figure))
}

/// Every figure of a program's output, in order, and every refused `BENCH` line.
pub fn parse_output(output: &str) -> (Vec<Figure>, Vec<LineError>) {
    let mut figures = Vec::new();
    let mut errors = Vec::new();
    for result in output.lines().filter_map(parse_line) {
        match result {
            Ok(f) => figures.push(f),
            Err(e) => errors.push(e),
        }
    }
    (figures, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_line_parses_into_its_five_fields() {
        let line = r#"BENCH {"bench":"forward_drain","metric":"drain","value":235661,"unit":"records/s","params":"1000000 records"}"#;
        assert_eq!(
            parse_line(line),
            Some(Ok(Figure {
                bench: "forward_drain".into(),
                metric: "drain".into(),
                value: 235_661.0,
                unit: "records/s".into(),
                params: "1000000 records".into(),
                target: String::new(),
            }))
        );
    }

    #[test]
    fn human_output_is_not_a_figure() {
        assert_eq!(parse_line("drained 1000000 records in 4.2 s"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line(" BENCH {}"), None, "only at column 0");
        assert_eq!(parse_line("BENCHMARK done"), None);
    }

    #[test]
    fn params_may_be_missing_and_unknown_fields_are_ignored() {
        let line = r#"BENCH {"bench":"b","metric":"m","value":1.5,"unit":"ms","extra":[1,2]}"#;
        let f = parse_line(line).and_then(Result::ok).expect("figure");
        assert_eq!(f.params, "");
        assert_eq!(f.value, 1.5);
    }

    #[test]
    fn a_null_value_from_nan_is_refused() {
        let nan = serde_json::json!({"bench":"b","metric":"m","value":f64::NAN,"unit":"x"});
        let line = format!("BENCH {nan}");
        assert!(
            line.contains("null"),
            "serde_json writes NaN as null: {line}"
        );
        assert!(matches!(
            parse_line(&line),
            Some(Err(LineError::Json { .. }))
        ));
    }

    #[test]
    fn broken_or_incomplete_figure_lines_are_errors_not_skipped() {
        for line in [
            "BENCH {not json",
            r#"BENCH {"bench":"b","metric":"m","unit":"x"}"#,
            r#"BENCH {"bench":"b","metric":"m","value":"12","unit":"x"}"#,
        ] {
            assert!(
                matches!(parse_line(line), Some(Err(LineError::Json { .. }))),
                "{line}"
            );
        }
        let line = r#"BENCH {"bench":"","metric":"m","value":1,"unit":"x"}"#;
        assert!(matches!(
            parse_line(line),
            Some(Err(LineError::EmptyName { .. }))
        ));
    }

    #[test]
    fn output_keeps_figures_in_order_and_collects_errors() {
        let output = "\
# link benchmark
BENCH {\"bench\":\"link\",\"metric\":\"a\",\"value\":1,\"unit\":\"x\"}
| table | row |
BENCH {\"bench\":\"link\",\"metric\":\"b\",\"value\":2e6,\"unit\":\"x\"}
BENCH oops
";
        let (figures, errors) = parse_output(output);
        let metrics: Vec<_> = figures
            .iter()
            .map(|f| (f.metric.as_str(), f.value))
            .collect();
        assert_eq!(metrics, [("a", 1.0), ("b", 2e6)]);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn what_the_benchmark_programs_print_parses() {
        let line =
            Family("latency").line("p99", 279.0, "ms", "1000 readings/s for 20 s, pass-through");
        let f = parse_line(&line).and_then(Result::ok).expect("figure");
        assert_eq!((f.bench.as_str(), f.metric.as_str()), ("latency", "p99"));
        assert_eq!(f.value, 279.0);
        assert_eq!(f.unit, "ms");
        assert_eq!(f.params, "1000 readings/s for 20 s, pass-through");
    }

    #[test]
    fn a_target_travels_with_its_figure_and_is_left_out_when_there_is_none() {
        let line =
            Family("recovery").line_with_target("finals_resume", 1.5, "s", "1 consumer", "<= 5");
        assert_eq!(
            line,
            r#"BENCH {"bench":"recovery","metric":"finals_resume","params":"1 consumer","target":"<= 5","unit":"s","value":1.5}"#
        );
        let f = parse_line(&line).and_then(Result::ok).expect("figure");
        assert_eq!(f.target, "<= 5");
        let plain = Family("recovery").line("finals_resume", 1.5, "s", "1 consumer");
        assert!(!plain.contains("target"), "{plain}");
        let f = parse_line(&plain).and_then(Result::ok).expect("figure");
        assert_eq!(f.target, "");
    }

    #[test]
    fn the_written_line_is_byte_for_byte_the_golden_one() {
        // What the programs printed with their own `serde_json::json!` helper before they
        // shared this writer; `scripts/bench.sh` and older result files see these bytes.
        assert_eq!(
            Family("forward_drain").line("drain", 235661.2, "records/s", "1000000 records x 100 B"),
            r#"BENCH {"bench":"forward_drain","metric":"drain","params":"1000000 records x 100 B","unit":"records/s","value":235661.2}"#
        );
        assert_eq!(
            Family("window").line("partial_key", 12.0, "B", ""),
            r#"BENCH {"bench":"window","metric":"partial_key","params":"","unit":"B","value":12.0}"#
        );
        assert_eq!(
            Family("link").line("m", f64::NAN, "x", "p"),
            r#"BENCH {"bench":"link","metric":"m","params":"p","unit":"x","value":null}"#
        );
    }
}
