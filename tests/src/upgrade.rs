//! The previous release, built from its git tag, for the rolling-upgrade suite
//! (`tests/tests/upgrade_rolling.rs`).
//!
//! The tag's tree is exported with `git archive` into `target/upgrade/<tag>/src`, its workspace
//! version suffixed with `-previous` (so its crates' artifacts never take the names of ours),
//! and built there with this workspace's target directory, so the dependencies both releases
//! share (all of them, unless the lock file changed) are compiled once; only the workspace
//! crates of the old tree build again. Its binaries are copied to `target/upgrade/<tag>/bin` and kept: the tree
//! of a tag never changes. Because that build writes its binaries to the same
//! `target/<profile>/edge-agent` paths as ours, those are removed afterwards and rebuilt from the
//! current tree ([`crate::bins::workspace_binary`]), so no other suite runs an old binary.
//!
//! A missing tag fails the test with the command that fetches it: never a silent skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::bins::workspace_binary;

/// The release this one must interoperate with (`protocol/FORMAT.md`, "Compatibility").
pub const PREVIOUS: &str = "v0.1.0";

/// A release's binaries.
#[derive(Debug, Clone)]
pub struct Release {
    pub agent: PathBuf,
    pub consumer: PathBuf,
}

/// The current tree's binaries (built on demand).
pub fn current() -> Release {
    Release {
        agent: workspace_binary("edge-agent", "edge-agent"),
        consumer: workspace_binary("edge-consumer", "edge-consumer"),
    }
}

/// [`PREVIOUS`]'s binaries, built on first use (a few minutes: the workspace crates only).
pub fn previous() -> Release {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The profile directory the tests run from: target/<profile>.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let out = target_dir.join("upgrade").join(PREVIOUS);
    let bin = out.join("bin");
    let release = Release {
        agent: bin.join("edge-agent"),
        consumer: bin.join("edge-consumer"),
    };
    if release.agent.exists() && release.consumer.exists() {
        return release;
    }
    let src = out.join("src");
    if !src.join("Cargo.lock").exists() {
        export(&root, &src);
    }
    eprintln!(
        "upgrade: building {PREVIOUS}'s edge-agent and edge-consumer (once; kept in {})",
        bin.display()
    );
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet"])
        .args(["-p", "edge-agent", "--bin", "edge-agent"])
        .args(["-p", "edge-consumer", "--bin", "edge-consumer"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target_dir);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo build runs");
    assert!(status.success(), "building {PREVIOUS} failed");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for name in ["edge-agent", "edge-consumer"] {
        let built = profile_dir.join(name);
        std::fs::copy(&built, bin.join(name)).expect("copy the old binary");
        // The shared path now holds the old binary: remove it and rebuild ours into it.
        std::fs::remove_file(&built).expect("remove the old binary from the shared path");
    }
    let ours = current();
    assert!(ours.agent.exists() && ours.consumer.exists());
    release
}

/// Writes the tree of tag [`PREVIOUS`] to `dest`.
fn export(root: &Path, dest: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("git runs")
    };
    let commit = format!("{PREVIOUS}^{{commit}}");
    if !git(&["rev-parse", "--verify", "--quiet", &commit])
        .status
        .success()
    {
        // A shallow or tagless clone: fetch the tag from origin.
        let _ = git(&["fetch", "--quiet", "--tags", "origin"]);
        if !git(&["rev-parse", "--verify", "--quiet", &commit])
            .status
            .success()
        {
            let _ = git(&["fetch", "--quiet", "--unshallow", "--tags", "origin"]);
        }
    }
    assert!(
        git(&["rev-parse", "--verify", "--quiet", &commit]).status.success(),
        "tag {PREVIOUS} is not in this clone: run `git fetch --tags` (the rolling-upgrade suite builds it)"
    );
    std::fs::create_dir_all(dest).expect("source dir");
    let archive = git(&["archive", "--format=tar", PREVIOUS]);
    assert!(archive.status.success(), "git archive {PREVIOUS} failed");
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::piped())
        .spawn()
        .expect("tar runs");
    use std::io::Write;
    tar.stdin
        .take()
        .expect("stdin")
        .write_all(&archive.stdout)
        .expect("feed tar");
    assert!(
        tar.wait().expect("tar").success(),
        "unpacking {PREVIOUS} failed"
    );
    // Cargo names a path package's artifacts by its name, version and path relative to its
    // workspace, which are the same in both trees: the old build would overwrite ours and
    // cargo would take the old artifacts as fresh for the current tree. A version of its own
    // keeps the two apart (the lock file follows; registry versions stay as locked).
    let manifest = dest.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("the tag's Cargo.toml");
    let mut in_package = false;
    let mut renamed = false;
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with('[') {
                in_package = line.trim() == "[workspace.package]";
            }
            match line.strip_prefix("version = \"") {
                Some(rest) if in_package && !renamed => {
                    renamed = true;
                    format!("version = \"{}-previous\"", rest.trim_end_matches('"'))
                }
                _ => line.to_owned(),
            }
        })
        .collect();
    assert!(
        renamed,
        "no [workspace.package] version in {PREVIOUS}'s Cargo.toml"
    );
    std::fs::write(&manifest, edited.join("\n") + "\n").expect("write Cargo.toml");
}
