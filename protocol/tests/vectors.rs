//! The golden vectors of `protocol/tests/vectors/`: one directory per format version, each file a
//! record exactly as a release wrote it (see `vectors/README.md`). Every vector of every version
//! is decoded by this build and must give the value its `.json` twin states; the vectors of the
//! current version must also be what this build writes, byte for byte.
//!
//! Vectors are never edited, only added. A missing vector is written by running the tests with
//! `EDGE_BLESS_VECTORS=1` (it never overwrites one); commit it with the change that added it.

use std::path::{Path, PathBuf};

use edge_protocol::aggregate::Aggregate;
use edge_protocol::contract::{Final, FinalPoint};
use edge_protocol::partial::{self, Partial, PartialError};

fn dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vectors/v{version}"))
}

/// The bytes of vector `name` of `version`, which this build also writes as `current`; with
/// `EDGE_BLESS_VECTORS=1` a missing one is written from `current` first.
fn vector(version: u8, name: &str, current: &[u8]) -> Vec<u8> {
    let path = dir(version).join(name);
    if !path.exists() && std::env::var_os("EDGE_BLESS_VECTORS").is_some() {
        std::fs::create_dir_all(dir(version)).expect("vector dir");
        std::fs::write(&path, current).expect("write vector");
    }
    on_file(version, name)
}

/// The bytes of vector `name` of `version`, as checked in.
fn on_file(version: u8, name: &str) -> Vec<u8> {
    let path = dir(version).join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (a new vector is written by EDGE_BLESS_VECTORS=1)",
            path.display()
        )
    })
}

/// A partial with several readings (a sketch with bins on both sides), a revision, and a
/// non-ASCII series: every field of the version-1 envelope carries something.
fn sample_partial() -> Partial {
    let mut aggregate = Aggregate::new();
    for (ts, v) in [
        (1_700_000_000_250, 21.5),
        (1_700_000_001_000, -0.125),
        (1_700_000_004_500, 1e6),
    ] {
        aggregate.add(ts, v).expect("finite");
    }
    Partial {
        series: heapless::String::try_from("line3.ofen-µ.temp").expect("short"),
        window_start_ms: 1_700_000_000_000,
        window_end_ms: 1_700_000_005_000,
        agent: heapless::String::try_from("gw-plant7-cab2").expect("short"),
        watermark_ms: 1_700_000_006_000,
        revision: 2,
        aggregate,
    }
}

fn sample_final() -> Final {
    Final {
        group: "line3.temp".into(),
        window_start_ms: 1_700_000_000_000,
        window_end_ms: 1_700_000_060_000,
        window_start: "2023-11-14T22:13:20.000Z".into(),
        window_end: "2023-11-14T22:14:20.000Z".into(),
        count: 3,
        sum: 6.0,
        min: Some(1.0),
        max: Some(3.0),
        mean: Some(2.0),
        stddev: Some(1.0),
        first: Some(FinalPoint {
            ts_ms: 1_700_000_001_000,
            value: 1.0,
        }),
        last: Some(FinalPoint {
            ts_ms: 1_700_000_059_000,
            value: 3.0,
        }),
        p50: Some(2.0),
        p90: Some(3.0),
        p95: Some(3.0),
        p99: Some(3.0),
        revision: 1,
        gateways: vec!["gw-a".into(), "gw-b".into()],
        gateways_truncated: 0,
        partials: 4,
    }
}

fn encode(p: &Partial) -> Vec<u8> {
    let mut buf = [0u8; partial::MAX_ENCODED_LEN];
    let n = p.encode(&mut buf).expect("fits");
    buf[..n].to_vec()
}

#[test]
fn partial_v1_envelope_decodes_to_its_twin_and_is_what_this_build_writes() {
    let sample = sample_partial();
    let bytes = vector(1, "partial.bin", &encode(&sample));
    let twin = vector(
        1,
        "partial.json",
        serde_json::to_string_pretty(&sample).unwrap().as_bytes(),
    );
    let expected: Partial = serde_json::from_slice(&twin).expect("the twin is a partial");
    assert_eq!(Partial::decode(&bytes), Ok(expected.clone()));
    assert_eq!(expected, sample, "the vector is the sample of this test");
    assert_eq!(
        encode(&sample),
        bytes,
        "version 1 is current: this build writes exactly the vector"
    );
}

#[test]
fn every_partial_envelope_version_on_file_decodes() {
    // Each version directory holds a `partial.bin` and its twin; when version 2 comes, version
    // 1 stays here and must still decode (the promise: the last two releases' versions).
    let mut versions = 0;
    for version in 1..=partial::VERSION {
        let bytes = on_file(version, "partial.bin");
        let twin: Partial =
            serde_json::from_slice(&on_file(version, "partial.json")).expect("twin");
        assert_eq!(Partial::decode(&bytes), Ok(twin), "version {version}");
        versions += 1;
    }
    assert_eq!(versions, usize::from(partial::VERSION));
}

#[test]
fn a_partial_from_a_newer_release_is_refused_by_its_version_not_misread() {
    let mut bytes = on_file(1, "partial.bin");
    bytes[0] = partial::VERSION + 1;
    assert_eq!(
        Partial::decode(&bytes),
        Err(PartialError::UnknownVersion(partial::VERSION + 1))
    );
}

#[test]
fn partial_json_form_v1_decodes_to_the_same_partial() {
    let sample = sample_partial();
    let json = vector(
        1,
        "partial.json",
        serde_json::to_string_pretty(&sample).unwrap().as_bytes(),
    );
    let from_json: Partial = serde_json::from_slice(&json).expect("JSON partial");
    assert_eq!(
        from_json,
        Partial::decode(&on_file(1, "partial.bin")).unwrap()
    );
}

#[test]
fn final_v1_json_is_exactly_what_this_build_writes_and_reads_back() {
    let sample = sample_final();
    let written = serde_json::to_vec(&sample).unwrap();
    let bytes = vector(1, "final.json", &written);
    assert_eq!(
        written, bytes,
        "edge.final.v1: fields, order and number formatting are frozen"
    );
    let back: Final = serde_json::from_slice(&bytes).expect("a final");
    assert_eq!(back, sample);
}
