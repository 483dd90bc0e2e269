//! The account of every reading: what the simulated devices sent (their ledgers) against what
//! came out of the consumer (the finals), series by series. No I/O except reading the ledgers.
//!
//! # Why per series, and what that proves
//!
//! A ledger names each reading by `(device, channel, ts_ms)`, but a final only carries its
//! window's `count` and `sum`. A serial reading stamped before its device's first `TimeSync` is
//! given the agent's receive time (see `agent/src/source/serial.rs`), so the ledger cannot tell
//! its window; it always tells its series. So the account compares, per series, the number of
//! readings and the sum of their values:
//!
//! - a lost reading makes the finals' count fall short of the ledger's: `lost`;
//! - a doubled one makes it exceed the ledger's: `duplicated`;
//! - a loss and a duplicate in the same series cancel in the count but not in the sum (unless
//!   the two values are equal), which is compared too, within floating-point rounding.
//!
//! Readings the ledger itself marks as uncertain (a serial frame evicted from a full device
//! ring, or lost in a device reboot: it arrived at most once) widen the expected count of their
//! series to a range; the demo's defaults never fill a ring, and the summary says when one did.
//!
//! A Modbus device acknowledges nothing: its ledger lists every request it answered, with the
//! values it answered with (replayed in ledger order), and each answered poll is one reading per
//! channel. Two kinds of answer may rightly be missing, so they are uncertain: one taken in the
//! [`MODBUS_KILL_MARGIN_MS`] before the agent was killed (answered, but not yet committed by the
//! agent when the power went: a gap, as for any poll of a device the agent cannot hear), and each
//! device's last answer (taken as the simulator stopped: it may never have left).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use firmware_sim::runner::{Ledger, LedgerRecord, ModbusOutcome};

/// The sensor id the demo's mapping gives an MQTT device channel (`configs.rs` must agree).
pub fn mqtt_series(device: u32, channel: u8) -> String {
    format!("mqtt.dev{device}.ch{channel}")
}

/// The sensor id the demo's mapping gives a serial device channel (`configs.rs` must agree).
pub fn serial_series(device: u32, channel: u8) -> String {
    format!("serial.dev{device}.ch{channel}")
}

/// The sensor id the demo's mapping gives a Modbus device channel (`configs.rs` must agree).
pub fn modbus_series(device: u32, channel: usize) -> String {
    format!("modbus.dev{device}.ch{channel}")
}

/// How long before an agent kill a Modbus answer may still be uncommitted (poll, ingest
/// channel, group commit: milliseconds normally; seconds on a loaded machine).
pub const MODBUS_KILL_MARGIN_MS: u64 = 3000;

/// Readings and the sum of their values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub count: u64,
    pub sum: f64,
    /// Sum of |value|: the scale of the rounding error `sum` may carry.
    pub magnitude: f64,
}

impl Totals {
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.magnitude += value.abs();
    }
}

/// What the ledgers say was sent.
#[derive(Debug, Default)]
pub struct Sent {
    /// Readings that must arrive exactly once, per series.
    pub certain: BTreeMap<String, Totals>,
    /// Readings that arrived at most once (evicted or lost in a reboot), per series.
    pub uncertain: BTreeMap<String, u64>,
    /// Every ledger ended with a clean `end` record (all acknowledged, transport healthy).
    pub clean: bool,
    /// Ledgers read.
    pub ledgers: usize,
    /// When the agent was killed (Unix ms): Modbus answers just before are uncertain.
    pub agent_kills: Vec<u64>,
}

impl Sent {
    pub fn readings(&self) -> u64 {
        self.certain.values().map(|t| t.count).sum()
    }

    pub fn uncertain_readings(&self) -> u64 {
        self.uncertain.values().sum()
    }

    /// Reads ledgers written by `firmware-sim --ledger`; `agent_kills`: when the agent was
    /// killed (Unix ms).
    pub fn from_ledgers(
        paths: &[&Path],
        agent_kills: &[u64],
    ) -> Result<Sent, firmware_sim::runner::LedgerError> {
        let mut sent = Sent {
            clean: true,
            agent_kills: agent_kills.to_vec(),
            ..Sent::default()
        };
        for path in paths {
            sent.add_ledger(&Ledger::read(path)?);
        }
        Ok(sent)
    }

    /// Adds one ledger's records (see `firmware_sim::runner::ledger` for their meaning).
    pub fn add_ledger(&mut self, records: &[LedgerRecord]) {
        self.ledgers += 1;
        let mut frames: HashMap<(u32, u32, u32), Vec<(String, f64)>> = HashMap::new();
        let mut doubtful: Vec<(u32, u32, u32)> = Vec::new();
        let mut ended = false;
        // Modbus: each device's values in force, and its answers (taken at, values).
        let mut values: HashMap<u32, Vec<f32>> = HashMap::new();
        let mut answers: BTreeMap<u32, Vec<(u64, Vec<f32>)>> = BTreeMap::new();
        for record in records {
            match record {
                LedgerRecord::Mqtt {
                    device,
                    channel,
                    value,
                    ..
                } => self
                    .certain
                    .entry(mqtt_series(*device, *channel))
                    .or_default()
                    .add(f64::from(*value)),
                LedgerRecord::Frame {
                    device,
                    boot_id,
                    seq,
                    readings,
                    ..
                } => {
                    let rows = readings
                        .iter()
                        .map(|r| (serial_series(*device, r.channel), f64::from(r.value)));
                    frames.insert((*device, *boot_id, *seq), rows.collect());
                }
                LedgerRecord::Evicted {
                    device,
                    boot_id,
                    seq,
                    ..
                } => doubtful.push((*device, *boot_id, *seq)),
                LedgerRecord::Reboot {
                    device,
                    old_boot_id,
                    lost,
                    ..
                } => doubtful.extend(lost.iter().map(|seq| (*device, *old_boot_id, *seq))),
                LedgerRecord::End { clean, .. } => {
                    ended = true;
                    self.clean &= *clean;
                }
                LedgerRecord::ModbusValues {
                    device, values: v, ..
                } => {
                    values.insert(*device, v.clone());
                }
                LedgerRecord::ModbusRequest {
                    device,
                    unix_ms,
                    outcome: ModbusOutcome::Answered,
                    ..
                } => answers
                    .entry(*device)
                    .or_default()
                    .push((*unix_ms, values.get(device).cloned().unwrap_or_default())),
                LedgerRecord::ModbusRequest { .. }
                | LedgerRecord::Start { .. }
                | LedgerRecord::Hello { .. } => {}
            }
        }
        for (device, answers) in answers {
            let last = answers.len().saturating_sub(1);
            for (i, (at, values)) in answers.into_iter().enumerate() {
                let near_kill = self
                    .agent_kills
                    .iter()
                    .any(|&kill| at <= kill && at + MODBUS_KILL_MARGIN_MS >= kill);
                for (channel, value) in values.into_iter().enumerate() {
                    let series = modbus_series(device, channel);
                    if i == last || near_kill {
                        *self.uncertain.entry(series).or_default() += 1;
                    } else {
                        self.certain
                            .entry(series)
                            .or_default()
                            .add(f64::from(value));
                    }
                }
            }
        }
        self.clean &= ended;
        for key in doubtful {
            for (series, _) in frames.remove(&key).unwrap_or_default() {
                *self.uncertain.entry(series).or_default() += 1;
            }
        }
        for (series, value) in frames.into_values().flatten() {
            self.certain.entry(series).or_default().add(value);
        }
    }
}

/// One final as the consumer writes it: the contract's record (`edge_protocol::contract`).
pub type FinalRow = edge_protocol::contract::Final;

/// The newest revision of every final window read so far.
#[derive(Debug, Default)]
pub struct Finals {
    windows: HashMap<(String, i64, i64), FinalRow>,
    /// Final records read, revisions included.
    pub records: u64,
}

impl Finals {
    /// Takes one final record's value; a record that is not a final is an error (the caller
    /// counts it, it does not stop the demo).
    pub fn apply(&mut self, value: &[u8]) -> Result<(), serde_json::Error> {
        let row: FinalRow = serde_json::from_slice(value)?;
        self.records += 1;
        let key = (row.group.clone(), row.window_start_ms, row.window_end_ms);
        match self.windows.get(&key) {
            Some(old) if old.revision >= row.revision => {}
            _ => {
                self.windows.insert(key, row);
            }
        }
        Ok(())
    }

    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Finals past revision 0: windows re-emitted because data arrived after they were final.
    pub fn revised(&self) -> usize {
        self.windows.values().filter(|r| r.revision > 0).count()
    }

    pub fn per_series(&self) -> BTreeMap<String, Totals> {
        let mut out: BTreeMap<String, Totals> = BTreeMap::new();
        for row in self.windows.values() {
            let t = out.entry(row.group.clone()).or_default();
            t.count += row.count;
            t.sum += row.sum;
        }
        out
    }

    /// For the summary table: `n` series, taken in turn from each kind (the id up to its first
    /// `.`: `mqtt`, `serial`), each with its second-newest window (the newest is usually cut
    /// short by the end of the run).
    pub fn sample(&self, n: usize) -> Vec<&FinalRow> {
        let mut by_series: BTreeMap<&str, Vec<&FinalRow>> = BTreeMap::new();
        for row in self.windows.values() {
            by_series.entry(&row.group).or_default().push(row);
        }
        let mut kinds: BTreeMap<&str, Vec<&FinalRow>> = BTreeMap::new();
        for (series, mut rows) in by_series {
            rows.sort_by_key(|r| std::cmp::Reverse(r.window_start_ms));
            let kind = series.split('.').next().unwrap_or(series);
            kinds
                .entry(kind)
                .or_default()
                .push(rows[rows.len().min(2) - 1]);
        }
        let mut out = Vec::new();
        for i in 0.. {
            let before = out.len();
            out.extend(kinds.values().filter_map(|rows| rows.get(i)));
            if out.len() == before || out.len() >= n {
                break;
            }
        }
        out.truncate(n);
        out
    }
}

/// One series whose finals do not match its ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub series: String,
    pub expected: u64,
    pub uncertain: u64,
    pub got: u64,
    pub expected_sum: f64,
    pub got_sum: f64,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Account {
    pub sent: u64,
    pub finalized: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Series whose counts match but whose value sums do not: a loss hidden by a duplicate.
    pub sum_mismatches: u64,
    pub mismatches: Vec<Mismatch>,
}

impl Account {
    pub fn exact(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.sum_mismatches == 0
    }
}

/// Compares the ledgers with the finals, series by series (see the module doc).
pub fn reconcile(sent: &Sent, finals: &BTreeMap<String, Totals>) -> Account {
    let mut account = Account {
        sent: sent.readings(),
        finalized: finals.values().map(|t| t.count).sum(),
        ..Account::default()
    };
    let mut names: Vec<&String> = sent.certain.keys().chain(sent.uncertain.keys()).collect();
    names.extend(finals.keys());
    names.sort();
    names.dedup();
    for series in names {
        let want = sent.certain.get(series).copied().unwrap_or_default();
        let maybe = sent.uncertain.get(series).copied().unwrap_or(0);
        let got = finals.get(series).copied().unwrap_or_default();
        let lost = want.count.saturating_sub(got.count);
        let duplicated = got.count.saturating_sub(want.count + maybe);
        let tolerance = 1e-9 * (want.magnitude + 1.0) * (want.count as f64 + 1.0);
        let sum_off = maybe == 0 && lost == 0 && (got.sum - want.sum).abs() > tolerance;
        account.lost += lost;
        account.duplicated += duplicated;
        account.sum_mismatches += u64::from(sum_off && duplicated == 0);
        if lost > 0 || duplicated > 0 || sum_off {
            account.mismatches.push(Mismatch {
                series: series.clone(),
                expected: want.count,
                uncertain: maybe,
                got: got.count,
                expected_sum: want.sum,
                got_sum: got.sum,
            });
        }
    }
    account
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_sim::runner::LedgerReading;

    fn mqtt(device: u32, channel: u8, ts_ms: u64, value: f32) -> LedgerRecord {
        LedgerRecord::Mqtt {
            device,
            channel,
            topic: format!("demo/{device}/{channel}"),
            qos: 1,
            ts_ms,
            value,
        }
    }

    fn frame(device: u32, seq: u32, values: &[(u8, f32)]) -> LedgerRecord {
        LedgerRecord::Frame {
            device,
            boot_id: 7,
            seq,
            dropped: 0,
            readings: values
                .iter()
                .enumerate()
                .map(|(i, &(channel, value))| LedgerReading {
                    channel,
                    ts_ms: 1_000 + i as u64,
                    value,
                })
                .collect(),
        }
    }

    fn end(clean: bool) -> LedgerRecord {
        LedgerRecord::End {
            readings: 0,
            frames: 0,
            retransmits: 0,
            evicted_readings: 0,
            unix_ms: 0,
            clean,
        }
    }

    fn final_json(group: &str, start: i64, count: u64, sum: f64, revision: u32) -> String {
        format!(
            r#"{{"group":"{group}","window_start_ms":{start},"window_end_ms":{},"window_start":"x","window_end":"y",
               "count":{count},"sum":{sum},"min":1.0,"max":2.0,"mean":1.5,"stddev":0.1,"first":null,"last":null,
               "p50":1.5,"p90":2.0,"p95":2.0,"p99":2.0,"revision":{revision},"gateways":["gw"],
               "gateways_truncated":0,"partials":1}}"#,
            start + 5000
        )
    }

    fn sent() -> Sent {
        let mut sent = Sent {
            clean: true,
            ..Sent::default()
        };
        sent.add_ledger(&[
            mqtt(1, 0, 10, 1.5),
            mqtt(1, 0, 20, 2.5),
            mqtt(2, 1, 10, -1.0),
            end(true),
        ]);
        sent.add_ledger(&[frame(101, 1, &[(0, 3.0), (1, 4.0)]), end(true)]);
        sent
    }

    fn finals(rows: &[String]) -> Finals {
        let mut f = Finals::default();
        for row in rows {
            f.apply(row.as_bytes()).expect("a final");
        }
        f
    }

    #[test]
    fn ledgers_give_per_series_totals() {
        let s = sent();
        assert_eq!(s.readings(), 5);
        assert!(s.clean);
        assert_eq!(s.certain["mqtt.dev1.ch0"].count, 2);
        assert_eq!(s.certain["mqtt.dev1.ch0"].sum, 4.0);
        assert_eq!(s.certain["serial.dev101.ch1"].sum, 4.0);
    }

    #[test]
    fn a_ledger_without_a_clean_end_is_not_clean() {
        let mut s = sent();
        s.add_ledger(&[mqtt(3, 0, 1, 1.0)]);
        assert!(!s.clean);
    }

    #[test]
    fn matching_finals_are_exact_even_split_over_windows_and_revised() {
        let f = finals(&[
            final_json("mqtt.dev1.ch0", 0, 1, 1.5, 0),
            final_json("mqtt.dev1.ch0", 5000, 1, 2.5, 0),
            final_json("mqtt.dev2.ch1", 0, 1, -1.0, 0),
            // Revision 1 replaces revision 0 of the same window, whatever the arrival order.
            final_json("serial.dev101.ch0", 0, 1, 3.0, 1),
            final_json("serial.dev101.ch0", 0, 0, 0.0, 0),
            final_json("serial.dev101.ch1", 0, 1, 4.0, 0),
        ]);
        assert_eq!(f.revised(), 1);
        let account = reconcile(&sent(), &f.per_series());
        assert!(account.exact(), "{account:?}");
        assert_eq!((account.sent, account.finalized), (5, 5));
    }

    #[test]
    fn a_missing_reading_is_lost_and_an_extra_one_duplicated() {
        let f = finals(&[
            final_json("mqtt.dev1.ch0", 0, 1, 1.5, 0),
            final_json("mqtt.dev2.ch1", 0, 2, -2.0, 0),
            final_json("serial.dev101.ch0", 0, 1, 3.0, 0),
            final_json("serial.dev101.ch1", 0, 1, 4.0, 0),
        ]);
        let account = reconcile(&sent(), &f.per_series());
        assert_eq!((account.lost, account.duplicated), (1, 1));
        assert_eq!(account.mismatches.len(), 2);
        assert!(!account.exact());
    }

    #[test]
    fn a_loss_hidden_by_a_duplicate_shows_in_the_sum() {
        let f = finals(&[
            final_json("mqtt.dev1.ch0", 0, 2, 3.0, 0),
            final_json("mqtt.dev2.ch1", 0, 1, -1.0, 0),
            final_json("serial.dev101.ch0", 0, 1, 3.0, 0),
            final_json("serial.dev101.ch1", 0, 1, 4.0, 0),
        ]);
        let account = reconcile(&sent(), &f.per_series());
        assert_eq!((account.lost, account.duplicated), (0, 0));
        assert_eq!(account.sum_mismatches, 1);
        assert!(!account.exact());
    }

    #[test]
    fn an_unknown_series_in_the_finals_is_duplicated() {
        let f = finals(&[final_json("nobody", 0, 3, 1.0, 0)]);
        let account = reconcile(&sent(), &f.per_series());
        assert_eq!((account.lost, account.duplicated), (5, 3));
    }

    #[test]
    fn evicted_frames_widen_the_expected_count() {
        let mut s = Sent {
            clean: true,
            ..Sent::default()
        };
        s.add_ledger(&[
            frame(101, 1, &[(0, 1.0)]),
            frame(101, 2, &[(0, 2.0)]),
            LedgerRecord::Evicted {
                device: 101,
                boot_id: 7,
                seq: 2,
                readings: 1,
            },
            end(true),
        ]);
        assert_eq!((s.readings(), s.uncertain_readings()), (1, 1));
        for got in [1, 2] {
            let f = finals(&[final_json("serial.dev101.ch0", 0, got, got as f64, 0)]);
            assert!(reconcile(&s, &f.per_series()).exact(), "{got} arrived");
        }
        let f = finals(&[final_json("serial.dev101.ch0", 0, 3, 4.0, 0)]);
        assert_eq!(reconcile(&s, &f.per_series()).duplicated, 1);
    }

    #[test]
    fn modbus_answers_count_with_the_values_in_force_and_the_last_or_killed_ones_are_uncertain() {
        let values = |unix_ms, v: &[f32]| LedgerRecord::ModbusValues {
            device: 1,
            unix_ms,
            values: v.to_vec(),
        };
        let request = |unix_ms, outcome| LedgerRecord::ModbusRequest {
            device: 1,
            unix_ms,
            outcome,
            delay_ms: 0,
        };
        let mut s = Sent {
            clean: true,
            agent_kills: vec![20_000],
            ..Sent::default()
        };
        s.add_ledger(&[
            values(1_000, &[1.0, 10.0]),
            request(1_100, ModbusOutcome::Answered),
            request(1_200, ModbusOutcome::Busy),
            values(1_300, &[2.0, 20.0]),
            request(1_400, ModbusOutcome::Answered),
            request(1_500, ModbusOutcome::Dropped),
            // Just before the kill: maybe never committed.
            request(19_000, ModbusOutcome::Answered),
            values(30_000, &[3.0, 30.0]),
            request(30_100, ModbusOutcome::Answered),
            // The last answer: maybe never sent.
            request(30_200, ModbusOutcome::Answered),
            end(true),
        ]);
        assert_eq!(s.certain[&modbus_series(1, 0)].count, 3);
        assert_eq!(s.certain[&modbus_series(1, 0)].sum, 6.0);
        assert_eq!(s.certain[&modbus_series(1, 1)].sum, 60.0);
        assert_eq!(s.uncertain[&modbus_series(1, 1)], 2);
    }

    #[test]
    fn a_record_that_is_not_a_final_is_an_error() {
        let mut f = Finals::default();
        assert!(f.apply(b"{\"nope\":1}").is_err());
        assert_eq!(f.records, 0);
    }

    #[test]
    fn sample_alternates_kinds_and_skips_the_cut_short_newest_window() {
        let f = finals(&[
            final_json("mqtt.a", 0, 1, 1.0, 0),
            final_json("mqtt.a", 5000, 2, 1.0, 0),
            final_json("mqtt.a", 10000, 2, 1.0, 0),
            final_json("mqtt.b", 0, 1, 1.0, 0),
            final_json("mqtt.c", 0, 1, 1.0, 0),
            final_json("serial.x", 0, 1, 1.0, 0),
        ]);
        let rows: Vec<(&str, i64)> = f
            .sample(3)
            .iter()
            .map(|r| (r.group.as_str(), r.window_start_ms))
            .collect();
        assert_eq!(rows, [("mqtt.a", 5000), ("serial.x", 0), ("mqtt.b", 0)]);
        assert_eq!(f.sample(10).len(), 4);
    }
}
