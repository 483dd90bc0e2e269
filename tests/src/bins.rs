//! The workspace's binaries under test (`edge-agent`, `edge-consumer`, `firmware-sim`), built
//! on demand into the test's own target directory and profile, so a suite always runs the real
//! binary of the code it was compiled with.

use std::path::{Path, PathBuf};
use std::process::Command;

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
