//! The ledger: a record of everything the simulator sent, for tests to account for every reading.
//!
//! # Format
//!
//! JSON lines (one object per line, UTF-8, `\n`-terminated), written to `--ledger PATH`. Every
//! object has a `kind`:
//!
//! | kind | fields | written when |
//! | --- | --- | --- |
//! | `start` | `transport` (`serial`/`mqtt`/`modbus-tcp`/`modbus-rtu`), `seed`, `devices`, `channels`, `unix_ms` | once, first |
//! | `hello` | `device`, `boot_id`, `firmware_version` | a device booted (serial) |
//! | `frame` | `device`, `boot_id`, `seq`, `dropped`, `readings: [{channel, ts_ms, value}]` | the device sealed a `Readings` frame (serial; before its first transmission). `dropped` is the boot's running total of discarded readings at sealing; later copies may carry a higher one |
//! | `evicted` | `device`, `boot_id`, `seq`, `readings` | an unacknowledged frame fell out of the device's ring; its readings are counted in the boot's `dropped` total from then on (serial) |
//! | `reboot` | `device`, `old_boot_id`, `new_boot_id`, `lost: [seq]`, `unsealed` | a rebooted device lost its unacknowledged frames `lost` and `unsealed` readings not yet in any frame (never in the ledger) with its RAM (serial) |
//! | `mqtt` | `device`, `channel`, `topic`, `qos`, `ts_ms`, `value` | a reading was handed to the MQTT client (once per reading, also when a fault publishes it twice) |
//! | `modbus_values` | `device`, `unix_ms`, `values: [f32]` | a Modbus device installed new channel values (channel `i` is `values[i]`, as a client decodes it); it holds them from `unix_ms` until its next `modbus_values` record |
//! | `modbus_request` | `device`, `unix_ms`, `outcome` (`answered`, `busy`, `refused`, `dropped`), `delay_ms` | a Modbus device took a request for its unit id: answered with data, answered with an injected `ServerDeviceBusy` exception, refused with another exception (bad address or function), or not answered; the answer left `delay_ms` later (slow-answer fault) |
//! | `end` | `readings`, `frames`, `retransmits`, `evicted_readings`, `unix_ms`, `clean` | once, last, when the run ends (also on Ctrl-C/SIGTERM); `clean` is false if the transport failed or something was still unacknowledged after `--drain-timeout`. Modbus: `readings` counts channel values installed, `frames` requests answered with data |
//!
//! Values are `f32`, printed in their shortest round-trip form (compare as `f32`). Timestamps
//! are milliseconds on the device's clock, skew included: over MQTT always Unix milliseconds;
//! over serial the device core's own stamp, exactly as the frame carries it: Unix milliseconds
//! once its boot has taken a `TimeSync` (drift since the latest sync included, a resync
//! stepped or slewed in: see `crate::device::clock`) and, before that, the device clock
//! (milliseconds since the runner started, drift included).
//!
//! # Identity and accounting
//!
//! A reading's identity is `(device, channel, ts_ms)`: the runner keeps each channel's
//! timestamps strictly increasing (Unix-stamped and clock-stamped ones each, also across
//! reboots, later `TimeSync`s, clock skew and drift), so the key is unique in a run.
//!
//! Over serial, every reading of every `frame` record reaches the agent exactly once
//! (deduplicated by `(device, boot_id, seq)`), unless its frame has an `evicted` record (then it
//! is counted in the boot's `dropped` total, which every later frame carries, and may still have
//! arrived once if it was evicted while its ack was on the way) or is in a `reboot` record's
//! `lost` list (then it arrived at most once).
//!
//! Over MQTT, every `mqtt` record is one reading: once the run ends with `clean: true` the
//! broker has acknowledged every publish. At QoS 2 each arrives once; at QoS 1 a reconnect may
//! deliver it again; `--duplicate-rate` publishes it twice on purpose.
//!
//! Over Modbus, the device never learns what the client kept; the ledger says what was served
//! when. A value a client read at time `t` (its request left at `t`, its answer came by `t + d`)
//! must be one of that device's `modbus_values` records in force at some instant of
//! `[t, t + d]`: both sides stamp with the same host clock, and a device stamps a
//! `modbus_values` record under the lock that installs the values, so no request sees values
//! before their record's `unix_ms`. A request's record is written when the device takes it, so
//! a run cut short can have an `answered` record whose answer never left.
//!
//! Frame records are written when the frame is sealed, before its first byte is sent, so a run
//! cut short by `kill -9` can have a record whose frame never left; a clean shutdown (with an
//! `end` record) waits for outstanding acknowledgements up to `--drain-timeout` first.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One reading as the ledger holds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LedgerReading {
    pub channel: u8,
    pub ts_ms: u64,
    pub value: f32,
}

/// One line of the ledger (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerRecord {
    Start {
        transport: String,
        seed: u64,
        devices: u32,
        channels: u8,
        unix_ms: u64,
    },
    Hello {
        device: u32,
        boot_id: u32,
        firmware_version: u32,
    },
    Frame {
        device: u32,
        boot_id: u32,
        seq: u32,
        dropped: u32,
        readings: Vec<LedgerReading>,
    },
    Evicted {
        device: u32,
        boot_id: u32,
        seq: u32,
        readings: u32,
    },
    Reboot {
        device: u32,
        old_boot_id: u32,
        new_boot_id: u32,
        lost: Vec<u32>,
        unsealed: u32,
    },
    Mqtt {
        device: u32,
        channel: u8,
        topic: String,
        qos: u8,
        ts_ms: u64,
        value: f32,
    },
    ModbusValues {
        device: u32,
        unix_ms: u64,
        values: Vec<f32>,
    },
    ModbusRequest {
        device: u32,
        unix_ms: u64,
        outcome: ModbusOutcome,
        delay_ms: u64,
    },
    End {
        readings: u64,
        frames: u64,
        retransmits: u64,
        evicted_readings: u64,
        unix_ms: u64,
        clean: bool,
    },
}

/// What a simulated Modbus device did with one request (ledger `modbus_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModbusOutcome {
    /// Answered with the registers asked for.
    Answered,
    /// Answered with the injected exception `ServerDeviceBusy` (0x06).
    Busy,
    /// Answered with another exception: an address outside the map, a function not served.
    Refused,
    /// Not answered (injected): the client times out.
    Dropped,
}

/// Why the ledger could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Appends records to a ledger file (or nowhere, when no `--ledger` was given).
#[derive(Debug)]
pub struct Ledger {
    out: Option<(String, BufWriter<File>)>,
}

impl Ledger {
    /// A ledger that writes nothing.
    pub fn disabled() -> Ledger {
        Ledger { out: None }
    }

    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<Ledger, LedgerError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| LedgerError::Io {
            path: name.clone(),
            source,
        })?;
        Ok(Ledger {
            out: Some((name, BufWriter::new(file))),
        })
    }

    /// Appends one record (buffered; see [`Ledger::flush`]).
    pub fn write(&mut self, record: &LedgerRecord) -> Result<(), LedgerError> {
        let Some((path, out)) = &mut self.out else {
            return Ok(());
        };
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        serde_json::to_writer(&mut *out, record).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)
    }

    /// Writes buffered records through to the file.
    pub fn flush(&mut self) -> Result<(), LedgerError> {
        let Some((path, out)) = &mut self.out else {
            return Ok(());
        };
        out.flush().map_err(|source| LedgerError::Io {
            path: path.clone(),
            source,
        })
    }

    /// Reads a whole ledger back (for tests and tools).
    pub fn read(path: &Path) -> Result<Vec<LedgerRecord>, LedgerError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| LedgerError::Io {
            path: name.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for (index, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| LedgerError::Io {
                path: name.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(&line).map_err(|source| LedgerError::Parse {
                path: name.clone(),
                line: index + 1,
                source,
            })?;
            records.push(record);
        }
        Ok(records)
    }
}

/// Milliseconds since the Unix epoch by the host clock (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
