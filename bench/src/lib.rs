//! `edge-bench`: one command for every benchmark of the project.
//!
//! `scripts/bench.sh [--quick] [--update-readme] [--out FILE]` makes sure the test brokers run,
//! builds the benchmark programs in release mode, and runs the `edge-bench` binary, which runs
//! each benchmark program as a subprocess, collects the figures it prints as `BENCH` lines,
//! prints one table, writes the results with machine info as JSON (default
//! `target/bench/results.json`), and with `--update-readme` regenerates the README's
//! performance table. A benchmark that fails is shown as failed in the table with its error;
//! the others still run and the exit code is non-zero.
//!
//! `--peers` adds the peer run: the script builds Telegraf from its Go module into
//! `target/peers/` and passes `--peers PATH` to `edge-bench`, which runs the same CPU per
//! reading benchmark (`bench_cpu`) on Telegraf right after the agent's (jobs `cpu` and
//! `peer_telegraf`); without Go the script says so and runs the rest.
//!
//! Benchmarks are programs that print figures; nothing here asserts a speed.
//!
//! # Modules
//!
//! - [`line`](mod@line): the `BENCH {json}` line a benchmark program prints per figure (the format), and
//!   its parser.
//! - [`program`]: what the benchmark programs share besides the line writer: positional
//!   arguments with defaults, `BENCH_CLIENT` librdkafka settings, memory figures from
//!   `/proc/<pid>/status`.
//! - [`suite`]: the benchmarks: which program, which arguments (full and `--quick`), what the
//!   README shows as the command.
//! - [`run`]: runs one benchmark as a subprocess (own process group, timeout, output kept in
//!   `target/bench/logs/`) and turns its exit status and output into a [`report::RunResult`].
//! - [`machine`]: what the figures were measured on (CPU model, cores, RAM, kernel, OS, rustc,
//!   git commit, load average), read from `/proc` and a few commands; no hostname.
//! - [`report`]: the JSON results file (the format), the table, and the README section between
//!   `<!-- bench:begin -->` and `<!-- bench:end -->`.
//!
//! The binary (`src/main.rs`) only parses arguments and wires these together.

pub mod line;
pub mod machine;
pub mod program;
pub mod report;
pub mod run;
pub mod suite;

/// What can go wrong outside a benchmark (a benchmark's own failure is a failed run, not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("README: {0}")]
    Readme(&'static str),
    #[error("no executable for {0} in the build artifacts (built by scripts/bench.sh)")]
    MissingExecutable(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
