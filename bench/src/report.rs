//! The results of a suite run: the JSON file, the table, and the README section.
//!
//! # JSON format (`target/bench/results.json` by default; `format` 1)
//!
//! ```text
//! {
//!   "format": 1,
//!   "mode": "full",                            // or "quick"
//!   "command": "scripts/bench.sh --update-readme",
//!   "date_utc": "2026-11-26T16:20:00Z",        // when the run started
//!   "duration_s": 362.4,                       // the benchmarks, not the build
//!   "machine": {
//!     "cpu": "AMD EPYC 7B13", "cores": 2, "ram_gib": 23.4,
//!     "kernel": "6.1.0-28-amd64", "os": "Debian GNU/Linux 12 (bookworm)",
//!     "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
//!     "git_commit": "0de7c10...", "git_dirty": true,
//!     "load_before": [0.5, 1.1, 2.5], "load_after": [3.9, 3.2, 2.8]
//!   },
//!   "runs": [                                  // in the order they ran
//!     {
//!       "id": "forward_drain",
//!       "title": "forwarder drain, 1,000,000 records",
//!       "command": "cargo run --release -p edge-agent --example bench_forward -- 1000000",
//!       "argv": ["/work/main/target/release/examples/bench_forward", "1000000"],
//!       "ok": true,
//!       "error": null,                         // why it failed, when "ok" is false
//!       "duration_s": 14.2,
//!       "log": "target/bench/logs/forward_drain.out",  // its whole output; stderr in .err
//!       "figures": [                           // its BENCH lines (see crate::line), in order
//!         {"bench": "forward_drain", "metric": "drain", "value": 235661.2,
//!          "unit": "records/s", "params": "1000000 records x 100 B, ..."}
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! A failed run keeps the figures it printed before it failed. New fields may be added;
//! `format` changes when a field changes meaning or goes away.
//!
//! # Table
//!
//! One markdown table, the same on the terminal and in the README: `benchmark | figure | value |
//! unit | target | parameters | command`, one row per figure (the target where an issue set
//! one, see [`crate::line`]), the command on the first row of each run;
//! a failed run adds a row with `FAILED` and its error. Values are rounded for reading (the
//! JSON keeps them whole).
//!
//! # README
//!
//! [`splice`] replaces what lies between the lines `<!-- bench:begin -->` and
//! `<!-- bench:end -->` (each exactly once) with [`readme_section`]: where and when it was
//! measured, the exact command, and the table. Nothing else of the README is touched.

use serde::{Deserialize, Serialize};

use crate::line::Figure;
use crate::machine::Machine;
use crate::Error;

pub const FORMAT: u32 = 1;
pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// A whole suite run (the JSON file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub mode: String,
    pub command: String,
    pub date_utc: String,
    pub duration_s: f64,
    pub machine: Machine,
    pub runs: Vec<RunResult>,
}

/// One benchmark program's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub id: String,
    pub title: String,
    pub command: String,
    pub argv: Vec<String>,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_s: f64,
    pub log: String,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = &RunResult> {
        self.runs.iter().filter(|r| !r.ok)
    }
}

/// A value rounded for reading: thousands grouped from 1,000 on, no decimals from 100 (or for
/// whole numbers), one from 10, two below.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", crate::suite::thousands(a.round() as u64))
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        // Three significant figures (0.0537, 0.00412): two decimals would show 0.05 against a
        // target of 0.028.
        let decimals = (2 - a.log10().floor() as i32).clamp(3, 9) as usize;
        format!("{v:.decimals$}")
    }
}

/// `362.4` as `6 min 2 s`.
pub fn format_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// A cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// Columns; the last (the command) is not padded.
const HEADER: [&str; 7] = [
    "benchmark",
    "figure",
    "value",
    "unit",
    "target",
    "parameters",
    "command",
];

const LAST: usize = HEADER.len() - 1;

/// The table's rows, without the header.
pub fn rows(runs: &[RunResult]) -> Vec<[String; 7]> {
    let mut rows = Vec::new();
    for run in runs {
        let mut command = format!("`{}`", run.command);
        for f in &run.figures {
            rows.push([
                f.bench.clone(),
                f.metric.replace('_', " "),
                format_value(f.value),
                f.unit.clone(),
                f.target.clone(),
                f.params.clone(),
                std::mem::take(&mut command),
            ]);
        }
        if !run.ok {
            rows.push([
                run.id.clone(),
                "**FAILED**".to_owned(),
                "-".to_owned(),
                String::new(),
                String::new(),
                run.error.clone().unwrap_or_default(),
                std::mem::take(&mut command),
            ]);
        }
    }
    rows.into_iter().map(|r| r.map(|c| cell(&c))).collect()
}

/// The markdown table, columns padded to line up (all but the last, the long command).
pub fn table(runs: &[RunResult]) -> String {
    let rows = rows(runs);
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let value_col = 2;
    let line = |cells: &[String; 7]| {
        let mut out = String::from("|");
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = if i == LAST {
                0
            } else {
                w.saturating_sub(c.chars().count())
            };
            if i == value_col {
                out.push_str(&format!(" {}{c} |", " ".repeat(pad)));
            } else {
                out.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&HEADER.map(str::to_owned));
    let rule: [String; 7] = std::array::from_fn(|i| {
        let w = if i == LAST { 3 } else { widths[i].max(3) };
        if i == value_col {
            format!("{}:", "-".repeat(w - 1))
        } else {
            "-".repeat(w)
        }
    });
    out.push_str(&line(&rule));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// Where and when: one paragraph (no hostname).
pub fn summary(report: &Report) -> String {
    let m = &report.machine;
    let date = report
        .date_utc
        .get(..16)
        .unwrap_or(&report.date_utc)
        .replace('T', " ");
    let commit = m.git_commit.get(..12).unwrap_or(&m.git_commit);
    let dirty = if m.git_dirty {
        " plus uncommitted changes"
    } else {
        ""
    };
    format!(
        "Generated by `{}` on {date} UTC ({} run, {} of benchmarks) on {}, {} cores, {:.1} GiB RAM, \
         Linux {}, {}, {}, commit `{commit}`{dirty}; load average (1 min) {:.2} before, {:.2} after.",
        report.command,
        report.mode,
        format_duration(report.duration_s),
        m.cpu,
        m.cores,
        m.ram_gib,
        m.kernel,
        m.os,
        m.rustc,
        m.load_before[0],
        m.load_after[0],
    )
}

/// What goes between the README markers.
pub fn readme_section(report: &Report) -> String {
    format!(
        "{}\nEach command needs the brokers and their addresses (`tests/services/services.sh start && . .services/env`).\n\n{}",
        summary(report),
        table(&report.runs)
    )
}

/// `readme` with the text between the markers replaced by `section`.
pub fn splice(readme: &str, section: &str) -> Result<String, Error> {
    let find_line = |marker: &str| {
        let mut at = readme
            .match_indices(marker)
            .map(|(i, _)| i)
            .filter(|&i| i == 0 || readme.as_bytes()[i - 1] == b'\n');
        match (at.next(), at.next()) {
            (Some(i), None) => Ok(i),
            (None, _) => Err(Error::Readme("a marker line is missing")),
            (Some(_), Some(_)) => Err(Error::Readme("a marker line appears twice")),
        }
    };
    let begin = find_line(BEGIN)?;
    let end = find_line(END)?;
    if end < begin {
        return Err(Error::Readme(
            "the end marker comes before the begin marker",
        ));
    }
    let section = section.trim_end_matches('\n');
    Ok(format!(
        "{}\n{section}\n{}",
        &readme[..begin + BEGIN.len()],
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(bench: &str, metric: &str, value: f64, unit: &str, params: &str) -> Figure {
        Figure {
            bench: bench.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            params: params.into(),
            target: String::new(),
        }
    }

    fn report() -> Report {
        Report {
            format: FORMAT,
            mode: "full".into(),
            command: "scripts/bench.sh --update-readme".into(),
            date_utc: "2026-11-26T16:20:05Z".into(),
            duration_s: 362.4,
            machine: Machine {
                cpu: "AMD EPYC 7B13".into(),
                cores: 2,
                ram_gib: 23.44,
                kernel: "6.1.0".into(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                rustc: "rustc 1.95.0".into(),
                git_commit: "0de7c10aaaabbbbccccdddd".into(),
                git_dirty: true,
                load_before: [0.5, 1.0, 2.0],
                load_after: [3.25, 2.0, 1.0],
            },
            runs: vec![
                RunResult {
                    id: "forward_drain".into(),
                    title: "forwarder drain".into(),
                    command: "cargo run --release -p edge-agent --example bench_forward -- 1000000"
                        .into(),
                    argv: vec![],
                    ok: true,
                    error: None,
                    duration_s: 14.0,
                    log: "target/bench/logs/forward_drain.out".into(),
                    figures: vec![
                        figure("forward_drain", "drain", 235_661.2, "records/s", "1000000 records"),
                        figure("forward_drain", "transaction_mean", 29.84, "ms", "1000000 records"),
                    ],
                },
                RunResult {
                    id: "latency".into(),
                    title: "latency".into(),
                    command: "cargo run --release -p edge-agent --example bench_forward_latency -- 1000 20".into(),
                    argv: vec![],
                    ok: false,
                    error: Some("exit status 1: Error: broker | down".into()),
                    duration_s: 3.0,
                    log: "target/bench/logs/latency.out".into(),
                    figures: vec![],
                },
            ],
        }
    }

    #[test]
    fn values_are_rounded_for_reading() {
        assert_eq!(format_value(235_661.2), "235,661");
        assert_eq!(format_value(1000.0), "1,000");
        assert_eq!(format_value(4216.0), "4,216");
        assert_eq!(format_value(142.4), "142");
        assert_eq!(format_value(29.84), "29.8");
        assert_eq!(format_value(0.514), "0.51");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(22.0), "22");
        assert_eq!(format_value(99.95), "100.0");
        assert_eq!(format_value(-1500.0), "-1,500");
        assert_eq!(format_value(0.0537), "0.0537");
        assert_eq!(format_value(0.00412), "0.00412");
    }

    #[test]
    fn durations_read_in_minutes_and_seconds() {
        assert_eq!(format_duration(362.4), "6 min 2 s");
        assert_eq!(format_duration(59.4), "59 s");
        assert_eq!(format_duration(60.0), "1 min 0 s");
    }

    #[test]
    fn rows_show_each_figure_the_command_once_and_failures_with_their_error() {
        let mut report = report();
        report.runs[0].figures[1].target = "<= 50".into();
        let rows = rows(&report.runs);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0][..6],
            [
                "forward_drain",
                "drain",
                "235,661",
                "records/s",
                "",
                "1000000 records"
            ]
        );
        assert!(rows[0][6].starts_with("`cargo run"));
        assert_eq!(rows[1][1], "transaction mean");
        assert_eq!(rows[1][4], "<= 50", "the target beside its figure");
        assert_eq!(rows[1][6], "", "command only on the run's first row");
        assert_eq!(rows[2][0], "latency");
        assert_eq!(rows[2][1], "**FAILED**");
        assert_eq!(rows[2][5], "exit status 1: Error: broker \\| down");
        assert!(rows[2][6].contains("bench_forward_latency"));
    }

    #[test]
    fn the_table_is_markdown_with_aligned_columns() {
        let t = table(&report().runs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 3);
        assert!(lines[0].starts_with("| benchmark     | figure"));
        assert!(lines[1].starts_with("| ------------- | ----"));
        // Every line has the same number of unescaped cell separators.
        let bars = |l: &str| l.replace("\\|", "").matches('|').count();
        assert!(lines.iter().all(|l| bars(l) == 8), "{t}");
        // Values are right-aligned: the value column ends at the same place on every line.
        let value_end = |l: &str| {
            let stripped = l.replace("\\|", "  ");
            stripped.match_indices('|').nth(3).map(|(i, _)| i)
        };
        assert!(
            lines.iter().all(|l| value_end(l) == value_end(lines[0])),
            "{t}"
        );
        assert!(lines[2].contains("| 235,661 |"), "{t}");
        assert!(lines[3].contains("|    29.8 |"), "{t}");
    }

    #[test]
    fn the_summary_names_date_machine_command_and_no_host() {
        let s = summary(&report());
        assert!(s.starts_with("Generated by `scripts/bench.sh --update-readme` on 2026-11-26 16:20 UTC (full run, 6 min 2 s of benchmarks)"), "{s}");
        for part in [
            "AMD EPYC 7B13, 2 cores, 23.4 GiB RAM",
            "Linux 6.1.0",
            "rustc 1.95.0",
            "commit `0de7c10aaaab` plus uncommitted changes",
            "0.50 before, 3.25 after",
        ] {
            assert!(s.contains(part), "{part} in {s}");
        }
    }

    #[test]
    fn splice_replaces_only_what_lies_between_the_markers() {
        let readme = "# x\n\n## Performance\n\nIntro stays.\n\n<!-- bench:begin -->\nold table\nmore\n<!-- bench:end -->\n\n## Next\ntext\n";
        let out = splice(readme, "new section\n\n| a |\n").expect("splice");
        assert_eq!(
            out,
            "# x\n\n## Performance\n\nIntro stays.\n\n<!-- bench:begin -->\nnew section\n\n| a |\n<!-- bench:end -->\n\n## Next\ntext\n"
        );
        // Splicing the result again changes nothing but the section.
        assert_eq!(splice(&out, "new section\n\n| a |\n").expect("again"), out);
    }

    #[test]
    fn splice_refuses_missing_doubled_or_swapped_markers() {
        for readme in [
            "no markers\n",
            "<!-- bench:begin -->\nx\n",
            "<!-- bench:begin -->\n<!-- bench:end -->\n<!-- bench:begin -->\n",
            "<!-- bench:end -->\nx\n<!-- bench:begin -->\n",
        ] {
            assert!(
                matches!(splice(readme, "s"), Err(Error::Readme(_))),
                "{readme:?}"
            );
        }
        // A marker quoted inside a line is not a marker line.
        let quoted =
            "see `<!-- bench:begin -->` here\n<!-- bench:begin -->\nx\n<!-- bench:end -->\n";
        assert!(splice(quoted, "s").is_ok());
    }

    #[test]
    fn the_json_round_trips() {
        let r = report();
        let json = serde_json::to_string_pretty(&r).expect("json");
        assert!(json.contains("\"format\": 1"));
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }
}
