//! What the demo prints: a progress line every few seconds while it runs, and the closing
//! account of every reading with a table of final aggregates.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::account::{Account, FinalRow, Sent};
use crate::agent_http::Snapshot;

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The periodic progress line.
pub struct Progress {
    every: Duration,
    next: Instant,
    last: Option<(Instant, u64)>,
}

impl Progress {
    pub fn new(every: Duration) -> Progress {
        Progress {
            every,
            next: Instant::now(),
            last: None,
        }
    }

    /// True once per interval.
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }

    /// What the columns mean, printed once before the first line.
    pub const LEGEND: &'static str = "columns: in = readings stored and acked per second | acked = readings stored durably, then acked | log = readings waiting for the window stage | outbox = partials waiting for Kafka | windows = windows closed by the agent | txns = Kafka transactions committed | partials = partials committed in Kafka | finals = final windows from edge-consumer";

    pub fn line(&mut self, elapsed: Duration, x: &Sample) {
        let now = Instant::now();
        let s = &x.snapshot;
        let rate = match self.last {
            Some((at, acked)) if x.agent_up && now > at => {
                let per_s = s.accepted.saturating_sub(acked) as f64 / (now - at).as_secs_f64();
                format!("{per_s:>5.0}/s")
            }
            _ => "    -/s".to_owned(),
        };
        if x.agent_up {
            self.last = Some((now, s.accepted));
        }
        let mut flags = String::new();
        if !x.agent_up {
            flags.push_str("  [agent down]");
        }
        if x.kafka_down {
            flags.push_str("  [Kafka down]");
        }
        println!(
            "{:>6.1}s  in {rate}  acked {:>7}  log {:>5}  outbox {:>4}  windows {:>5}  txns {:>4}  partials {:>5}  finals {:>5}{flags}",
            elapsed.as_secs_f64(),
            thousands(s.accepted),
            thousands(s.log_readings),
            thousands(s.outbox_records),
            thousands(x.windows_closed),
            thousands(x.commits),
            thousands(x.partials),
            thousands(x.finals),
        );
    }
}

/// One progress line's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    pub agent_up: bool,
    pub kafka_down: bool,
    /// The agent's last `/inspect` answer.
    pub snapshot: Snapshot,
    /// Agent counters summed over its processes.
    pub windows_closed: u64,
    pub commits: u64,
    /// Read back from Kafka by the demo.
    pub partials: u64,
    pub finals: u64,
}

/// The parameters the summary repeats.
#[derive(Debug, Clone)]
pub struct Shown {
    pub devices: u32,
    pub channels: u8,
    pub rate: u32,
    pub window_ms: u64,
    pub duration: Duration,
}

/// Everything the summary needs.
pub struct Outcome {
    pub run_dir: PathBuf,
    pub wall: Duration,
    pub sent: Sent,
    pub account: Account,
    /// The agent's state just before it was stopped.
    pub snapshot: Snapshot,
    pub partials: u64,
    /// Readings in the partials committed to Kafka.
    pub delivered: u64,
    pub bad_records: u64,
    pub final_records: u64,
    pub final_windows: usize,
    pub revised: usize,
    pub sample: Vec<FinalRow>,
    pub commits: f64,
    pub events: Vec<String>,
    /// From Kafka back after the outage to the first final committed after it.
    pub finals_resumed: Option<Duration>,
    pub peak_log: u64,
    pub peak_outbox: u64,
    pub clean_stop: bool,
    pub options: Shown,
    pub finals_topic: String,
}

impl Outcome {
    /// The run proved the guarantee: every reading finalized exactly once.
    pub fn passed(&self) -> bool {
        self.account.exact() && self.account.sent > 0
    }

    pub fn render(&self) -> String {
        let o = &self.options;
        let a = &self.account;
        let s = &self.snapshot;
        let mut out = String::new();
        // A stage matches when it holds every certain reading and at most every uncertain one.
        let uncertain = self.sent.uncertain_readings();
        let mark = |n: u64| {
            if (a.sent..=a.sent + uncertain).contains(&n) {
                " "
            } else {
                "!"
            }
        };
        let _ = writeln!(
            out,
            "\n== Account of every reading ({} s of {} MQTT + {} serial devices + 1 Modbus TCP device, {} channels, {} readings/s each; {} s tumbling windows)\n",
            o.duration.as_secs(),
            o.devices,
            o.devices,
            o.channels,
            o.rate,
            o.window_ms as f64 / 1000.0
        );
        let rows: [(&str, u64, String); 5] = [
            (
                "sent",
                a.sent,
                format!("by the simulated devices, from their ledgers ({} ledgers{})", self.sent.ledgers,
                    if self.sent.clean { ", all ended clean" } else { "; NOT all ended clean" }),
            ),
            (
                "acknowledged",
                s.accepted,
                format!(
                    "stored durably by edge-agent, then acked (+{} redeliveries recognised as duplicates, {} dead-lettered)",
                    thousands(s.duplicate),
                    thousands(s.rejected)
                ),
            ),
            (
                "aggregated",
                s.window_next_reading,
                format!(
                    "through the agent's event-time windows, into {} partials",
                    thousands(s.outbox_next_seq.saturating_sub(1))
                ),
            ),
            (
                "delivered",
                self.delivered,
                format!(
                    "in {} partials committed to Kafka, read back with read_committed",
                    thousands(self.partials)
                ),
            ),
            (
                "finalized",
                a.finalized,
                format!(
                    "in {} final windows from edge-consumer ({} revised; {} final records)",
                    thousands(self.final_windows as u64),
                    self.revised,
                    thousands(self.final_records)
                ),
            ),
        ];
        for (name, n, what) in rows {
            let _ = writeln!(out, "  {name:<13}{:>10} {}  {what}", thousands(n), mark(n));
        }
        let _ = writeln!(out, "  {:<13}{:>10}", "lost", thousands(a.lost));
        let _ = writeln!(out, "  {:<13}{:>10}", "duplicated", thousands(a.duplicated));
        if self.sent.uncertain_readings() > 0 {
            let _ = writeln!(
                out,
                "  ({} readings may or may not have arrived and count as either: serial frames dropped by a full device ring, Modbus answers taken just before the agent was killed or as the device stopped)",
                thousands(self.sent.uncertain_readings())
            );
        }
        if a.sum_mismatches > 0 {
            let _ = writeln!(
                out,
                "  {} series have the right count but the wrong sum of values",
                a.sum_mismatches
            );
        }
        for m in a.mismatches.iter().take(10) {
            let _ = writeln!(
                out,
                "  ! {}: ledger {} (+{} uncertain), finals {} (sums {:.3} vs {:.3})",
                m.series, m.expected, m.uncertain, m.got, m.expected_sum, m.got_sum
            );
        }
        if self.bad_records > 0 {
            let _ = writeln!(
                out,
                "  ! {} records in the demo's topics did not decode",
                self.bad_records
            );
        }
        let _ = writeln!(out, "\n  Lost and duplicated compare, series by series, the ledgers' readings with the newest revision");
        let _ = writeln!(out, "  of every final window (count and sum of values). '!' marks a stage that does not match 'sent' (plus, at most, the uncertain readings).");

        let _ = writeln!(out, "\n== Faults survived");
        if self.events.is_empty() {
            let _ = writeln!(
                out,
                "  none injected (--no-faults, or a run shorter than 20 s)"
            );
        }
        for e in &self.events {
            let _ = writeln!(out, "  - {e}");
        }
        if let Some(took) = self.finals_resumed {
            let _ = writeln!(
                out,
                "  finals resumed {:.1} s after Kafka was back (the consumer's goal: within 5 s)",
                took.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "  at most {} readings waited in the agent's ingest log for the window stage and {} partials in its outbox for Kafka; {} Kafka transactions committed",
            thousands(self.peak_log),
            thousands(self.peak_outbox),
            thousands(self.commits as u64)
        );

        let _ = writeln!(
            out,
            "\n== A recent final window of some series (topic {})",
            self.finals_topic
        );
        let _ = writeln!(
            out,
            "  {:<22} {:<14} {:>6} {:>10} {:>10} {:>10} {:>10} {:>4}  gateways",
            "series", "window (UTC)", "count", "mean", "min", "max", "p99", "rev"
        );
        for r in &self.sample {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "  {:<22} {:<14} {:>6} {:>10} {:>10} {:>10} {:>10} {:>4}  {}",
                r.group,
                clock(r.window_start_ms),
                r.count,
                f(r.mean),
                f(r.min),
                f(r.max),
                f(r.p99),
                r.revision,
                r.gateways.join(",")
            );
        }
        let _ = writeln!(
            out,
            "\n  {} in {:.0} s; configurations, ledgers and logs: {}",
            if self.passed() {
                "PASSED: every reading sent was finalized exactly once"
            } else {
                "FAILED: the account does not balance"
            },
            self.wall.as_secs_f64(),
            self.run_dir.display()
        );
        if !self.clean_stop {
            let _ = writeln!(out, "  note: edge-agent or edge-consumer did not stop cleanly on SIGTERM (see their logs)");
        }
        out
    }
}

/// `HH:MM:SS` of a Unix-ms time (UTC), enough to tell windows apart.
fn clock(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(3_723_000), "01:02:03");
        assert_eq!(clock(86_400_000 + 5_000), "00:00:05");
    }
}
