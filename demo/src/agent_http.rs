//! What the demo reads from the running agent over its metrics listener: `GET /metrics`
//! (Prometheus text; counters start at 0 with each process) and `GET /inspect` (the buffer state
//! and the ingest counters persisted in the agent's database, which survive a `kill -9`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;

const TIMEOUT: Duration = Duration::from_secs(2);

/// One HTTP/1.1 GET (ureq); the body of a 200 answer.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent.get(format!("http://{addr}{path}")).call()?;
    let body = answer.body_mut().read_to_string()?;
    let status = answer.status();
    if status != 200 {
        bail!("GET {path}: HTTP {}: {}", status.as_u16(), body.trim());
    }
    Ok(body)
}

/// Metric samples by their full name with labels, e.g. `edge_source_connected{source="x"}`.
#[derive(Debug, Default, Clone)]
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn fetch(addr: SocketAddr) -> Result<Metrics> {
        Ok(Metrics::parse(&get(addr, "/metrics")?))
    }

    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)));
        Metrics(samples.collect())
    }

    /// The sum of every sample of metric `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// One labelled sample, e.g. `get("edge_source_connected", "source=\"bus\"")`.
    pub fn get(&self, name: &str, labels: &str) -> Option<f64> {
        self.0.get(&format!("{name}{{{labels}}}")).copied()
    }
}

/// The fields of the agent's `/inspect` snapshot (`agent/src/inspect.rs`) the demo shows.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Snapshot {
    /// Readings waiting in the ingest log for the window stage.
    pub log_readings: u64,
    /// The window stage's cursor: readings aggregated so far (log seqs start at 0).
    pub window_next_reading: u64,
    /// Partials waiting for Kafka.
    pub outbox_records: u64,
    /// The seq the next outbox record gets (the first is 1).
    pub outbox_next_seq: u64,
    /// Readings stored durably, then acknowledged to their source (persisted counter).
    pub accepted: u64,
    /// Redeliveries recognised and dropped (persisted counter).
    pub duplicate: u64,
    /// Inputs dead-lettered (persisted counter).
    pub rejected: u64,
}

impl Snapshot {
    pub fn fetch(addr: SocketAddr) -> Result<Snapshot> {
        Ok(serde_json::from_str(&get(addr, "/inspect")?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_by_name_and_labels() {
        let m = Metrics::parse(
            "# HELP a x\n# TYPE a counter\na 3\nb{source=\"s1\"} 1\nb{source=\"s2\"} 0\nab 9\n",
        );
        assert_eq!(m.sum("a"), 3.0);
        assert_eq!(m.sum("b"), 1.0);
        assert_eq!(m.get("b", "source=\"s1\""), Some(1.0));
        assert_eq!(m.get("b", "source=\"s3\""), None);
    }
}
