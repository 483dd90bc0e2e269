//! The Sparkplug B producer of the suites: `tests/peers/sparkplug_payloads.py` compiles the
//! agent's checked-in `agent/proto/sparkplug_b.proto` with protoc (grpcio-tools) and serialises
//! the messages a test describes with Google's `protobuf`, in the virtualenv
//! `scripts/install-deps.sh` makes in the project's cache. The suite publishes the bytes.
//!
//! A missing virtualenv fails the test with the command that installs it: never a silent skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The protobuf version `scripts/install-deps.sh` installs (its virtualenv's directory name).
pub const PROTOBUF_VERSION: &str = "6.33.1";

/// The virtualenv's Python, `$EDGE_CACHE/sparkplug-protobuf-<version>/bin/python`.
pub fn python() -> PathBuf {
    crate::venv::python(
        &format!("sparkplug-protobuf-{PROTOBUF_VERSION}"),
        "protobuf",
    )
}

/// Builds `messages` (the script's JSON text, see its doc): `(topic, payload bytes)` in order.
pub fn payloads(messages: &str) -> Vec<(String, Vec<u8>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/sparkplug_payloads.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the Sparkplug B producer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(messages.as_bytes())
        .expect("write the messages");
    let out = child.wait_with_output().expect("run the producer");
    assert!(
        out.status.success(),
        "the Sparkplug B producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    text.lines()
        .map(|line| {
            let (topic, hex) = line.split_once(' ').expect("`topic hex`");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (topic.to_owned(), bytes)
        })
        .collect()
}
