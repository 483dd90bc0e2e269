//! `edge-bench`: runs the benchmark suite; see the crate docs (`src/lib.rs`). Normally started
//! by `scripts/bench.sh`, which starts the brokers, builds the programs and saves cargo's build
//! messages (where each executable is) to `target/bench/artifacts.jsonl`. Run from the
//! workspace root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use edge_bench::machine::{self, Machine};
use edge_bench::report::{self, Report};
use edge_bench::run::run_job;
use edge_bench::suite::{self, Artifacts, Brokers};

/// Runs every benchmark program against the brokers in KAFKA_BOOTSTRAP and MQTT_URL, prints
/// one table, writes JSON.
#[derive(Parser)]
struct Args {
    /// Short durations and small counts (a few minutes; for CI).
    #[arg(long)]
    quick: bool,
    /// Regenerate the README's performance table (full runs without failures only).
    #[arg(long)]
    update_readme: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Cargo's `--message-format=json` output of the build (written by scripts/bench.sh).
    #[arg(long, default_value = "target/bench/artifacts.jsonl")]
    artifacts: PathBuf,
    /// Run only these benchmarks (ids, comma-separated; see the progress lines).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also run the peer benchmarks: the CPU per reading of Telegraf, the binary at this path
    /// (scripts/bench.sh --peers builds it into target/peers/), right after the agent's.
    #[arg(long, value_name = "TELEGRAF")]
    peers: Option<PathBuf>,
    /// The README to update.
    #[arg(long, default_value = "README.md")]
    readme: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.update_readme && (args.quick || !args.only.is_empty()) {
        bail!("--update-readme needs the full suite (no --quick, no --only)");
    }
    let telegraf = args.peers.as_ref().map(|p| p.display().to_string());
    let mut jobs = suite::jobs(args.quick, &Brokers::from_env(), telegraf.as_deref());
    if !args.only.is_empty() {
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        if let Some(unknown) = args.only.iter().find(|id| !ids.contains(id)) {
            bail!("no benchmark {unknown:?}; these run: {}", ids.join(", "));
        }
        jobs.retain(|j| args.only.contains(&j.id));
    }
    let artifacts = Artifacts::load(&args.artifacts)?;
    let logs = PathBuf::from("target/bench/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("{}", logs.display()))?;
    let timeout = Duration::from_secs(if args.quick { 300 } else { 1200 });

    let mut machine = Machine::read();
    let date_utc = machine::utc_timestamp(machine::unix_now());
    let started = Instant::now();
    let mut runs = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        eprintln!("[{}/{}] {} ...", i + 1, jobs.len(), job.title);
        let run = run_job(job, artifacts.executable(&job.program), &logs, timeout);
        if run.ok {
            let n = run.figures.len();
            let s = if n == 1 { "" } else { "s" };
            eprintln!("      ok: {n} figure{s} in {:.1} s", run.duration_s);
        } else {
            eprintln!(
                "      FAILED after {:.1} s: {}",
                run.duration_s,
                run.error.as_deref().unwrap_or_default()
            );
        }
        runs.push(run);
    }
    machine.load_after = machine::load_average();
    let report = Report {
        format: report::FORMAT,
        mode: if args.quick { "quick" } else { "full" }.to_owned(),
        command: std::env::var("EDGE_BENCH_COMMAND").unwrap_or_else(|_| {
            std::iter::once("edge-bench".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        date_utc,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        runs,
    };

    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("{}", args.out.display()))?;
    println!();
    println!("{}", report::summary(&report));
    println!();
    print!("{}", report::table(&report.runs));
    println!();
    let failed: Vec<&str> = report.failed().map(|r| r.id.as_str()).collect();
    let figures: usize = report.runs.iter().map(|r| r.figures.len()).sum();
    println!(
        "{} runs, {figures} figures, {} failed, in {}; JSON: {}; logs: {}",
        report.runs.len(),
        failed.len(),
        report::format_duration(report.duration_s),
        args.out.display(),
        logs.display()
    );

    if args.update_readme {
        if failed.is_empty() {
            // Read right before writing: other sections of the README may be edited meanwhile.
            let text = std::fs::read_to_string(&args.readme)
                .with_context(|| format!("{}", args.readme.display()))?;
            let updated = report::splice(&text, &report::readme_section(&report))?;
            std::fs::write(&args.readme, updated)
                .with_context(|| format!("{}", args.readme.display()))?;
            println!("{}: performance table regenerated", args.readme.display());
        } else {
            println!(
                "{} not updated: {} failed",
                args.readme.display(),
                failed.join(", ")
            );
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "bench: {} of {} benchmarks failed: {}",
            failed.len(),
            report.runs.len(),
            failed.join(", ")
        );
        std::process::exit(1);
    }
    Ok(())
}
