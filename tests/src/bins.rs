//! The workspace's binaries under test (`edge-agent`, `edge-consumer`, `firmware-sim`), built
//! on demand into the test's own target directory and profile, so a suite always runs the real
//! binary of the code it was compiled with, and `edge-agent run` spawned the ways the suites
//! spawn it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `target/<profile>/<bin>` of workspace package `package`, built (quietly) if needed.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        );
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo build runs");
    assert!(status.success(), "building {bin} failed");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}

/// Spawns `<bin> run --config <config>` with `RUST_LOG=warn`, its output inherited.
pub fn spawn_agent(bin: &Path, config: &Path) -> Child {
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn edge-agent")
}

/// Spawns `<bin> run --config <config>` with its stderr in a new file `agent-<n>.stderr` in
/// `dir` (read it after the process ended) and `RUST_LOG` from `EDGE_AGENT_LOG`, else `log`;
/// `env` adds variables.
pub fn spawn_agent_logged(
    bin: &Path,
    config: &Path,
    dir: &Path,
    log: &str,
    env: &[(&str, &str)],
) -> AgentProc {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("agent-{n}.stderr"));
    let file = std::fs::File::create(&path).expect("stderr file");
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("EDGE_AGENT_LOG").unwrap_or_else(|_| log.to_owned()),
        )
        .envs(env.iter().copied())
        .stderr(Stdio::from(file))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn edge-agent");
    AgentProc { child, log: path }
}

/// An `edge-agent` process, SIGKILLed when dropped (so a failing test leaves none behind).
pub struct AgentProc {
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl AgentProc {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll agent") {
            panic!("the agent exited ({status}):\n{}", self.stderr());
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for an exit already asked for (SIGTERM sent); asserts it was clean.
    pub fn terminate_waited(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll agent") {
                assert!(status.success(), "clean stop: {status}\n{}", self.stderr());
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "the agent did not stop within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit; returns how long the drain took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        self.signal("TERM");
        loop {
            if let Some(status) = self.child.try_wait().expect("poll agent") {
                assert!(
                    status.success(),
                    "SIGTERM stops the agent cleanly: {status}\n{}",
                    self.stderr()
                );
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "the agent did not stop within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
