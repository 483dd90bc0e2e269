//! Runs one benchmark program as a subprocess and judges the run.
//!
//! The program runs in a process group of its own, with its standard output and error written
//! to `LOGS/ID.out` and `LOGS/ID.err` (kept for reading after the run). A run is **ok** when the
//! program exits with status 0, printed at least one `BENCH` line and no broken one. Otherwise it
//! failed, with the reason: the timeout, the exit status with the program's own last words
//! (a panic message, an `Error:` line), a broken `BENCH` line, or no figures at all. After a
//! failure or the timeout the whole group is killed (SIGKILL), so a child the program started
//! (the steady ingest run starts `edge-agent`) does not outlive it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::line::parse_output;
use crate::report::RunResult;
use crate::suite::Job;
use crate::Error;

/// Longest reason kept in the table.
const MAX_REASON: usize = 240;

/// Runs `job` with the executable `exe` (or records why there is none).
pub fn run_job(job: &Job, exe: Result<&Path, Error>, logs: &Path, timeout: Duration) -> RunResult {
    let started = Instant::now();
    let out_path = logs.join(format!("{}.out", job.id));
    let err_path = logs.join(format!("{}.err", job.id));
    let mut result = RunResult {
        id: job.id.clone(),
        title: job.title.clone(),
        command: job.command(),
        argv: Vec::new(),
        ok: false,
        error: None,
        duration_s: 0.0,
        log: out_path.display().to_string(),
        figures: Vec::new(),
    };
    let exe = match exe {
        Ok(exe) => exe,
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    result.argv = std::iter::once(exe.display().to_string())
        .chain(job.args.iter().cloned())
        .collect();
    let outcome = spawn_and_wait(exe, &job.args, &out_path, &err_path, timeout);
    result.duration_s = started.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let (mut figures, bad_lines) = parse_output(&stdout);
    if !job.metrics.is_empty() {
        figures.retain(|f| job.metrics.contains(&f.metric.as_str()));
    }
    result.figures = figures;
    let reason = match outcome {
        Err(e) => Some(e.to_string()),
        Ok(Outcome::TimedOut) => Some(format!("timed out after {} s", timeout.as_secs())),
        Ok(Outcome::Exited(status)) if !status.success() => Some(format!(
            "{}: {}",
            describe(status),
            last_words(&stderr, &stdout)
        )),
        Ok(Outcome::Exited(_)) => {
            if let Some(bad) = bad_lines.first() {
                Some(format!("bad BENCH line: {bad}"))
            } else if result.figures.is_empty() {
                Some("printed no BENCH line".to_owned())
            } else {
                None
            }
        }
    };
    result.ok = reason.is_none();
    result.error = reason.map(|r| {
        let mut r: String = r.chars().take(MAX_REASON).collect();
        r.push_str(&format!(" (log: {})", err_path.display()));
        r
    });
    result
}

enum Outcome {
    Exited(ExitStatus),
    TimedOut,
}

fn spawn_and_wait(
    exe: &Path,
    args: &[String],
    out_path: &Path,
    err_path: &Path,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let out = File::create(out_path).map_err(|e| Error::io(out_path, e))?;
    let err = File::create(err_path).map_err(|e| Error::io(err_path, e))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(exe, e))?;
    let started = Instant::now();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Outcome::Exited(status),
            Ok(None) if started.elapsed() > timeout => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break Outcome::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(Error::io(exe, e));
            }
        }
    };
    if !matches!(outcome, Outcome::Exited(s) if s.success()) {
        kill_group(child.id());
    }
    Ok(outcome)
}

/// SIGKILL to the process group the benchmark leads (its id is the benchmark's pid); quiet
/// when nothing is left of it.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// What a failed program said last about why: the message of its panic, else its last
/// `Error:` line (anyhow from `main`), else its last line of output that is not a backtrace
/// hint or a figure.
pub fn last_words(stderr: &str, stdout: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim_end).collect();
    if let Some(i) = lines.iter().rposition(|l| l.contains("panicked at")) {
        // Since Rust 1.73 the message is on the line after "panicked at FILE:LINE:COL:".
        let next = lines.get(i + 1).copied().unwrap_or_default();
        return if next.is_empty() || next.starts_with("note: ") {
            lines[i].to_owned()
        } else {
            format!("{} {next}", lines[i])
        };
    }
    if let Some(l) = lines.iter().rev().find(|l| l.starts_with("Error:")) {
        return (*l).to_owned();
    }
    let meaningful = |l: &str| {
        !l.trim().is_empty()
            && !l.starts_with("note: run with `RUST_BACKTRACE")
            && !l.starts_with(crate::line::PREFIX)
    };
    lines
        .iter()
        .copied()
        .rev()
        .find(|l| meaningful(l))
        .or_else(|| stdout.lines().rev().find(|l| meaningful(l)))
        .map_or_else(|| "no output".to_owned(), |l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Program;

    #[test]
    fn last_words_take_the_panic_message() {
        let stderr = "%3|1700|FAIL|rdkafka#producer-1| Connect refused\n\
            thread 'main' panicked at agent/examples/bench_forward.rs:10:5:\n\
            create topic: KafkaError (Admin operation error)\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            last_words(stderr, ""),
            "thread 'main' panicked at agent/examples/bench_forward.rs:10:5: create topic: KafkaError (Admin operation error)"
        );
    }

    #[test]
    fn last_words_take_an_error_line_then_the_last_line() {
        assert_eq!(
            last_words("log\nError: no [kafka]\n\nCaused by:\n    x\n", ""),
            "Error: no [kafka]"
        );
        assert_eq!(last_words("", "one\nlast words\n\n"), "last words");
        assert_eq!(last_words("", ""), "no output");
    }

    fn job(id: &str) -> Job {
        Job {
            id: id.to_owned(),
            title: id.to_owned(),
            program: Program::Example {
                package: "p",
                name: "sh",
            },
            args: Vec::new(),
            metrics: &[],
        }
    }

    /// A `sh -c SCRIPT` run as if it were a benchmark program.
    fn run_sh(id: &str, script: &str, timeout: Duration) -> RunResult {
        let logs = std::env::temp_dir().join(format!("edge-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("logs");
        let mut j = job(id);
        j.args = vec!["-c".to_owned(), script.to_owned()];
        run_job(&j, Ok(Path::new("/bin/sh")), &logs, timeout)
    }

    #[test]
    fn a_run_with_figures_and_status_0_is_ok() {
        let r = run_sh(
            "ok",
            r#"echo human; echo 'BENCH {"bench":"b","metric":"m","value":3,"unit":"x"}'"#,
            Duration::from_secs(10),
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(r.figures.len(), 1);
        assert_eq!(r.error, None);
    }

    #[test]
    fn a_variant_keeps_only_its_metrics() {
        let logs = std::env::temp_dir().join(format!("edge-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("logs");
        let mut j = job("variant");
        j.args = vec![
            "-c".to_owned(),
            r#"echo 'BENCH {"bench":"b","metric":"a","value":1,"unit":"x"}'; echo 'BENCH {"bench":"b","metric":"b","value":2,"unit":"x"}'"#.to_owned(),
        ];
        j.metrics = &["b"];
        let r = run_job(&j, Ok(Path::new("/bin/sh")), &logs, Duration::from_secs(10));
        assert!(r.ok, "{r:?}");
        let metrics: Vec<_> = r.figures.iter().map(|f| f.metric.as_str()).collect();
        assert_eq!(metrics, ["b"]);
    }

    #[test]
    fn failures_keep_their_figures_and_say_why() {
        let r = run_sh(
            "fails",
            r#"echo 'BENCH {"bench":"b","metric":"m","value":3,"unit":"x"}'; echo 'Error: broker down' >&2; exit 3"#,
            Duration::from_secs(10),
        );
        assert!(!r.ok);
        assert_eq!(r.figures.len(), 1);
        let e = r.error.unwrap_or_default();
        assert!(
            e.starts_with("exit status 3: Error: broker down (log: "),
            "{e}"
        );

        let r = run_sh("silent", "echo nothing", Duration::from_secs(10));
        assert!(!r.ok);
        assert!(r
            .error
            .unwrap_or_default()
            .starts_with("printed no BENCH line"));

        let r = run_sh("broken", "echo 'BENCH {'", Duration::from_secs(10));
        assert!(r.error.unwrap_or_default().starts_with("bad BENCH line"));
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_with_its_children() {
        let started = Instant::now();
        let r = run_sh("slow", "sleep 30 & sleep 30", Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!r.ok);
        assert!(r.error.unwrap_or_default().starts_with("timed out"));
    }

    #[test]
    fn a_missing_executable_is_a_failed_run() {
        let r = run_job(
            &job("none"),
            Err(Error::MissingExecutable("example:none".into())),
            Path::new("/nonexistent"),
            Duration::from_secs(1),
        );
        assert!(!r.ok);
        assert!(r.error.unwrap_or_default().contains("example:none"));
    }
}
