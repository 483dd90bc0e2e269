//! The previous release, built from its release commit, for the rolling-upgrade suite
//! (`tests/tests/upgrade_rolling.rs`).
//!
//! A release is named by its tag and pinned by its commit ([`PREVIOUS_COMMIT`]): a clone does
//! not always carry tags (CI's fresh clone of main has none), but every clone of main holds the
//! commit, an ancestor of every later one.
//!
//! The commit's tree is exported with `git archive` into `target/upgrade/<tag>/src`, its
//! workspace version suffixed with `-previous` and its binaries renamed `edge-agent-previous`
//! and `edge-consumer-previous` (so none of its artifacts takes the name of one of ours: a test
//! running beside the build never starts an old binary by mistake), and built there with this
//! workspace's target directory, so the dependencies both releases share (all of them, unless
//! the lock file changed) are compiled once; only the workspace crates of the old tree build
//! again. Its binaries are copied to `target/upgrade/<tag>/bin` and kept: the tree of a commit
//! never changes.
//!
//! A missing commit (a shallow clone) is fetched; if that fails, the test fails with the
//! command that fetches it: never a silent skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::bins::workspace_binary;

/// The release this one must interoperate with (`protocol/FORMAT.md`, "Compatibility").
pub const PREVIOUS: &str = "v0.1.0";

/// The commit [`PREVIOUS`] names (`git rev-parse v0.1.0^{commit}`).
pub const PREVIOUS_COMMIT: &str = "2ff9114b35f55bb5a88f1f4b8147a740666f4a35";

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
        .args(["-p", "edge-agent", "--bin", "edge-agent-previous"])
        .args(["-p", "edge-consumer", "--bin", "edge-consumer-previous"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target_dir);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo build runs");
    assert!(status.success(), "building {PREVIOUS} failed");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for name in ["edge-agent", "edge-consumer"] {
        let built = profile_dir.join(format!("{name}-previous"));
        std::fs::copy(&built, bin.join(name)).expect("copy the old binary");
    }
    release
}

/// Writes the tree of [`PREVIOUS_COMMIT`] to `dest`.
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
    let commit = format!("{PREVIOUS_COMMIT}^{{commit}}");
    let present = || git(&["cat-file", "-e", &commit]).status.success();
    if !present()
        && git(&["rev-parse", "--is-shallow-repository"])
            .stdout
            .starts_with(b"true")
    {
        let _ = git(&["fetch", "--quiet", "--unshallow", "origin"]);
    }
    assert!(
        present(),
        "commit {PREVIOUS_COMMIT} ({PREVIOUS}) is not in this clone: run `git fetch --unshallow origin` (the rolling-upgrade suite builds it)"
    );
    std::fs::create_dir_all(dest).expect("source dir");
    let archive = git(&["archive", "--format=tar", PREVIOUS_COMMIT]);
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
    for (dir, name) in [("agent", "edge-agent"), ("consumer", "edge-consumer")] {
        rename_binary(&dest.join(dir).join("Cargo.toml"), name);
    }
}

/// Gives the package `name`'s binary (`src/main.rs`) the name `<name>-previous`.
fn rename_binary(manifest: &Path, name: &str) {
    let text = std::fs::read_to_string(manifest).expect("the tag's package manifest");
    let package_name = format!("name = \"{name}\"");
    assert!(
        text.lines().any(|line| line == package_name) && !text.contains("[[bin]]"),
        "{}: expected package {name} with an implicit binary",
        manifest.display()
    );
    let mut edited = String::new();
    for line in text.lines() {
        edited.push_str(line);
        edited.push('\n');
        if line == package_name {
            edited.push_str("autobins = false\n");
        }
    }
    edited.push_str(&format!(
        "\n[[bin]]\nname = \"{name}-previous\"\npath = \"src/main.rs\"\n"
    ));
    std::fs::write(manifest, edited).expect("write the package manifest");
}
