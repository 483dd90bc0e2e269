//! Shared by the `ingest_*` suites: the ingest log read back, whole, after a run.
#![allow(dead_code)]

use std::path::Path;

use edge_agent::config::Config;
use edge_agent::ingest::IngestLog;
use edge_agent::reading::Reading;

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
