//! Child processes of the demo: each in its own process group (a Ctrl-C reaches the demo, which
//! then stops them in order), its output appended to a log file, killed if still running when
//! dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running child process.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))
}

impl Proc {
    /// Starts `cmd`, stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = log_file(log)?;
        cmd.stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            child,
            log: log.to_owned(),
        })
    }

    /// Starts `cmd` and waits up to `timeout` for a stdout line starting with `prefix`; returns
    /// the rest of that line. Every stdout line (that one too) goes to `log`, stderr as well.
    pub fn spawn_announcing(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        prefix: &'static str,
        timeout: Duration,
    ) -> Result<(Proc, String)> {
        let mut out = log_file(log)?;
        cmd.stdout(Stdio::piped())
            .stderr(out.try_clone()?)
            .stdin(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(prefix) {
                    let _ = tx.send(rest.to_owned());
                }
                let _ = writeln!(out, "{line}");
            }
        });
        let mut proc = Proc {
            child,
            log: log.to_owned(),
        };
        match rx.recv_timeout(timeout) {
            Ok(value) => Ok((proc, value)),
            Err(_) => {
                proc.kill();
                bail!(
                    "{name} did not print {prefix}... within {} s; its log: {}\n{}",
                    timeout.as_secs(),
                    log.display(),
                    tail(log, 10)
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: a crash or a power cut, as far as the process can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `timeout` (SIGKILL after it). Returns the exit status, `None`
    /// if it had to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.wait(timeout).or_else(|| {
            self.kill();
            None
        })
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// The last `lines` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}
