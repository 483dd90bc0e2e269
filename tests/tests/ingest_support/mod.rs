//! Shared by the `ingest_*` suites: the ingest log read back, whole, after a run, and the
//! accounting of a firmware-sim serial ledger against it, and the pty a `firmware-sim serial
//! --pty` run opened.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;

use edge_agent::config::Config;
use edge_agent::ingest::IngestLog;
use edge_agent::reading::Reading;

/// The pty `firmware-sim serial --pty` opened: the `SERIAL_PATH=<path>` line it prints first
/// (its stdout must be piped; the rest of stdout is left unread).
pub fn serial_path(firmware: &mut Child) -> String {
    let mut first = String::new();
    BufReader::new(firmware.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read SERIAL_PATH");
    first
        .trim()
        .strip_prefix("SERIAL_PATH=")
        .expect("SERIAL_PATH=... first")
        .to_owned()
}

/// Opens the ingest log of the agent configured at `config_path` (the agent must have stopped:
/// redb locks the file).
pub fn open_log(config_path: &Path) -> IngestLog {
    let config = Config::load(config_path).unwrap_or_else(|e| panic!("{e}"));
    IngestLog::open(&config.ingest_path(), edge_agent::service::limits(&config))
        .expect("open the ingest log")
}

/// Calls `f` with every reading of the log, in log order, reading it in bounded batches.
pub fn each_reading(log: &IngestLog, mut f: impl FnMut(Reading)) {
    let mut from = 0;
    loop {
        let batch = log.readings_from(from, 1000).expect("read the log");
        let Some((last, _)) = batch.last() else { break };
        from = last + 1;
        for (_, r) in batch {
            f(r);
        }
    }
}

/// (sensor id, f32 value bits) -> copies: a multiset, so repeated values still count.
pub type Multiset = BTreeMap<(String, u32), u64>;

/// What the ledger says must be in the log: every reading of every `frame` record whose frame
/// was neither evicted from the device's ring nor lost in a reboot. Also returns the `end`
/// record's `clean` flag and the evicted reading count.
pub fn expected_from_ledger(path: &Path) -> (Multiset, bool, u64) {
    let text = std::fs::read_to_string(path).expect("read ledger");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line is JSON"))
        .collect();
    let mut gone = BTreeSet::new();
    let mut clean = false;
    let mut evicted = 0;
    for r in &records {
        let id = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
        match r["kind"].as_str() {
            Some("evicted") => {
                gone.insert((id("device"), id("boot_id"), id("seq")));
                evicted += r["readings"].as_u64().unwrap_or(0);
            }
            Some("reboot") => {
                for seq in r["lost"].as_array().into_iter().flatten() {
                    gone.insert((id("device"), id("old_boot_id"), seq.as_u64().unwrap_or(0)));
                }
            }
            Some("end") => clean = r["clean"].as_bool().unwrap_or(false),
            _ => {}
        }
    }
    let mut expected = Multiset::new();
    for r in records.iter().filter(|r| r["kind"] == "frame") {
        let key = (
            r["device"].as_u64().unwrap_or(0),
            r["boot_id"].as_u64().unwrap_or(0),
            r["seq"].as_u64().unwrap_or(0),
        );
        if gone.contains(&key) {
            continue;
        }
        for reading in r["readings"].as_array().into_iter().flatten() {
            let channel = reading["channel"].as_u64().unwrap_or(0);
            let value = reading["value"].as_f64().unwrap_or(f64::NAN) as f32;
            *expected
                .entry((format!("d{}.c{channel}", key.0), value.to_bits()))
                .or_insert(0) += 1;
        }
    }
    (expected, clean, evicted)
}

pub fn log_multiset(config_path: &Path) -> Multiset {
    let mut out = Multiset::new();
    each_reading(&open_log(config_path), |r| {
        *out.entry((r.sensor, (r.value as f32).to_bits()))
            .or_insert(0) += 1;
    });
    out
}
