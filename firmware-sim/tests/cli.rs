//! The `firmware-sim` binary as an agent meets it: a pty path on stdout, frames on the slave,
//! a ledger that matches, and a clean exit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use firmware_sim::runner::peer::Peer;
use firmware_sim::runner::{Ledger, LedgerRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_pty_path_and_an_agent_on_it_receives_every_ledger_reading() {
    let ledger = std::env::temp_dir().join(format!("fwsim-cli-{}.jsonl", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "serial",
            "--pty",
            "--devices",
            "2",
            "--channels",
            "2",
            "--rate",
            "200",
        ])
        .args([
            "--count", "400", "--model", "walk", "--model", "counter", "--seed", "5",
        ])
        .args(["--retransmit-ms", "100", "--progress-secs", "0", "--ledger"])
        .arg(&ledger)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start firmware-sim");
    let stdout = child.stdout.take().expect("stdout");
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read the first line");
    let path = first
        .trim()
        .strip_prefix("SERIAL_PATH=")
        .unwrap_or_else(|| panic!("first line is SERIAL_PATH=..., got {first:?}"))
        .to_owned();

    let port = tokio_serial::SerialStream::open(&tokio_serial::new(&path, 115_200))
        .expect("open the pty slave like an agent would");
    let (mut rx, mut tx) = tokio::io::split(port);
    let mut peer = Peer::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while peer.readings() < 800 && tokio::time::Instant::now() < deadline {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), rx.read(&mut buf)).await
        else {
            continue;
        };
        let reply = peer.feed(&buf[..n]);
        tx.write_all(&reply).await.expect("ack");
    }
    // Keep acking until the simulator has drained and exited.
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "firmware-sim did not exit"
        );
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), rx.read(&mut buf)).await
        {
            let reply = peer.feed(&buf[..n]);
            let _ = tx.write_all(&reply).await;
        }
    };
    assert!(exit.success(), "firmware-sim exited with {exit}");

    let records = Ledger::read(&ledger).expect("the ledger");
    let _ = std::fs::remove_file(&ledger);
    assert!(matches!(
        records.last(),
        Some(LedgerRecord::End {
            clean: true,
            readings: 800,
            ..
        })
    ));
    let sent: Vec<(u32, u8, u64)> = records
        .iter()
        .filter_map(|r| match r {
            LedgerRecord::Frame {
                device, readings, ..
            } => Some(readings.iter().map(move |x| (*device, x.channel, x.ts_ms))),
            _ => None,
        })
        .flatten()
        .collect();
    let mut got: Vec<(u32, u8, u64)> = peer
        .accepted
        .iter()
        .flat_map(|a| {
            a.readings
                .iter()
                .map(move |x| (a.device_id, x.channel, x.ts_ms))
        })
        .collect();
    let mut want = sent.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(want.len(), 800);
    assert_eq!(got, want, "every ledger reading arrived exactly once");
}
