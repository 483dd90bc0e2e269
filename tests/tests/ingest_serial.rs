//! The agent's serial ingest path against `firmware-sim` over a pty: the agent is killed with
//! SIGKILL again and again while devices stream link frames; the firmware retransmits what was
//! not acknowledged, and at the end every reading of the firmware-sim ledger is in the ingest
//! log exactly once. No broker is needed.

mod ingest_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::bins::spawn_agent;
use ingest_support::{expected_from_ledger, log_multiset, serial_path};

/// `target/<profile>/<bin>` of workspace package `package`, built on demand.
fn binary(package: &str, bin: &str) -> PathBuf {
    edge_tests::bins::workspace_binary(package, bin)
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[test]
fn agent_killed_with_sigkill_while_firmware_streams_loses_and_duplicates_nothing() {
    const DEVICES: u32 = 3;
    const PER_DEVICE: u64 = 1_500;
    const KILLS: usize = 8;
    let agent = binary("edge-agent", "edge-agent");
    let sim = binary("firmware-sim", "firmware-sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let mut firmware = Command::new(&sim)
        .args([
            "serial",
            "--pty",
            "--channels",
            "2",
            "--rate",
            "300",
            "--drain-timeout",
            "60",
        ])
        .args([
            "--devices",
            &DEVICES.to_string(),
            "--count",
            &PER_DEVICE.to_string(),
        ])
        .arg("--ledger")
        .arg(&ledger)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn firmware-sim");
    let port = serial_path(&mut firmware);

    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[agent]
id = "serial-test"
data_dir = {:?}
[[serial]]
name = "line"
path = {port:?}
framing = "link"
[[sensor]]
source = "line"
id = "d{{device}}.c{{channel}}"
"#,
            dir.path().display().to_string()
        ),
    )
    .expect("write config");

    let mut seed = edge_tests::schedule::seed();
    println!("kill schedule seed: {seed}");
    for kill in 0..KILLS {
        let mut child = spawn_agent(&agent, &config_path);
        let alive_ms = 150 + edge_tests::schedule::next(&mut seed) % 900;
        std::thread::sleep(Duration::from_millis(alive_ms));
        child.kill().expect("SIGKILL the agent");
        let status = child.wait().expect("reap");
        println!("kill {kill}: after {alive_ms} ms ({status})");
    }

    // Quiet period: the agent runs until the firmware has sampled everything and drained.
    let mut child = spawn_agent(&agent, &config_path);
    let deadline = Instant::now() + Duration::from_secs(120);
    let finished = loop {
        if let Some(status) = firmware.try_wait().expect("poll firmware-sim") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = firmware.kill();
            terminate(&mut child);
            panic!("firmware-sim did not finish and drain within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    terminate(&mut child);
    println!("firmware-sim exited: {finished}");

    let (expected, clean, evicted) = expected_from_ledger(&ledger);
    assert!(
        clean,
        "firmware-sim drained: every frame it kept was acknowledged"
    );
    let total: u64 = expected.values().sum();
    assert_eq!(
        total + evicted,
        u64::from(DEVICES) * PER_DEVICE,
        "the ledger accounts for every reading"
    );
    let stored = log_multiset(&config_path);
    let stored_total: u64 = stored.values().sum();
    println!("ledger: {total} readings to deliver ({evicted} evicted); log: {stored_total}");
    if evicted == 0 {
        assert_eq!(
            stored, expected,
            "the log holds every ledger reading exactly once"
        );
    } else {
        // Evicted frames may have arrived once (evicted while their ack was on the way).
        for (key, want) in &expected {
            let have = stored.get(key).copied().unwrap_or(0);
            assert!(have >= *want, "{key:?}: {have} stored, {want} expected");
        }
        assert!(stored_total <= total + evicted, "nothing is stored twice");
    }
}
