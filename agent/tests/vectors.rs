//! The agent's records in Kafka against the golden vectors of `protocol/tests/vectors/v1` (see
//! its README): the pass-through / late reading JSON and the progress marker. This build must
//! write exactly those bytes (version 1 is current) and read the marker back; a marker written
//! by an earlier release is what a restarted, upgraded agent resumes from.
//!
//! `EDGE_BLESS_VECTORS=1` writes a missing vector (never an existing one).

use std::path::{Path, PathBuf};

use edge_agent::forward::progress::{InstanceId, Marker};
use edge_agent::reading::Reading;
use edge_agent::stage::reading_json;

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/vectors/v1")
        .join(name)
}

fn vector(name: &str, current: &[u8]) -> Vec<u8> {
    let path = path(name);
    if !path.exists() && std::env::var_os("EDGE_BLESS_VECTORS").is_some() {
        std::fs::write(&path, current).expect("write vector");
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_reading_json_is_the_vector() {
    let reading = Reading {
        sensor: "line3.ofen-µ.temp".into(),
        ts_ms: 1_700_000_000_250,
        value: -0.125,
        seq: Some(42),
    };
    let written = reading_json(&reading);
    assert_eq!(written, vector("reading.json", &written));
    let untimed = Reading {
        seq: None,
        ..reading
    };
    let written = reading_json(&untimed);
    assert_eq!(written, vector("reading-without-seq.json", &written));
}

#[test]
fn the_progress_marker_v1_is_the_vector_and_reads_back() {
    let marker = Marker {
        agent: "gw-plant7-cab2".into(),
        instance: InstanceId(*b"0123456789abcdef"),
        last_seq: 1_234_567,
        committed_ms: 1_700_000_000_000,
    };
    let bytes = vector("progress-marker.bin", &marker.encode());
    assert_eq!(marker.encode(), bytes);
    assert_eq!(Marker::decode(&bytes), Ok(marker));
}
