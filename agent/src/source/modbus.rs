//! The Modbus source: one device per `[[modbus]]` table, over TCP or RTU (tokio-modbus), its
//! register blocks polled at fixed periods.
//!
//! # The poll loop
//!
//! One task per device. A **session** opens the transport (TCP connect, or the serial port for
//! RTU) and then serves every `[[modbus.block]]` of the device on that one connection: each
//! block has its own `tokio::time::interval` of `period_ms` with
//! [`MissedTickBehavior::Delay`], and the task reads whichever block is due (taking turns when
//! several are), one request at a time, as Modbus wants. A poll
//!
//! 1. takes the poll time (unix ms): the timestamp of every reading of this poll;
//! 2. sends one read request for the whole block and waits at most `timeout_ms`;
//! 3. decodes each register of the block ([`mod@decode`]: type, byte and word order), maps it
//!    through the `[[sensor]]` rules as [`Origin::Register`] (scale, offset, unit, valid range,
//!    `{register}` in the id), and hands one [`Submission`] per poll to the ingest writer:
//!    one reading per register, dead letters for the values the mapping refused. It waits for
//!    room in the writer's channel (the group commit, the quota and its backpressure apply as
//!    for every source).
//!
//! `Delay`: a poll that comes late (a slow device, a writer pushing back) shifts the following
//! ones, so polls of a block are never closer than `period_ms`, two readings of a register
//! never share a millisecond, and the `(sensor, timestamp)` dedupe key never drops a real
//! reading. Polls missed meanwhile are not made up: they are a gap.
//!
//! # Errors
//!
//! Each is counted per device (`edge_modbus_*_total{source="name"}`) and logged with the
//! device and the block; none stops another device.
//!
//! - **Exception** answer (illegal address, device busy, ...): the device is there; the poll
//!   gives no reading (a gap) and the session goes on. Logged at `warn` when a block starts
//!   failing and at `info` when it recovers, not at every poll.
//! - **Timeout**, **transport error** (I/O, RTU framing, a TCP answer that does not match its
//!   request) or a short answer: the session ends and the transport is reopened
//!   after a backoff (100 ms doubling to 30 s; reset by the next answered poll, so a device
//!   that never answers is retried every 30 s, never in a busy loop). Ending the session
//!   matters: a late answer left on the line would otherwise be taken for the next request's.
//!   An RTU answer with a **bad CRC** is not an error of its own: tokio-modbus's decoder drops
//!   bytes until a frame checks out (up to 20 tries, then an I/O error), so it shows as a
//!   timeout (tested).
//! - **Connect or open failure**: counted, retried with the same backoff.
//!
//! A device that stops answering shows as a gap in its readings and in its health
//! ([`ModbusHealth`]: `disconnected` on `/readyz` and `edge_source_state`).
//!
//! # Invariants
//!
//! - Nothing is acknowledged to a Modbus device (the protocol has no such thing): a reading is
//!   durable once the writer commits its submission; a crash before that loses only polls the
//!   device was never told about, which are a gap like any missed poll.
//! - Every reading's value is what the device answered to the poll at its timestamp: values are
//!   never carried from one poll to another, and a failed poll produces none.
//! - One request in flight per device, bounded by `timeout_ms`; memory per device is one block
//!   (at most 125 registers or 2,000 bits) and one submission.
//! - One source per serial port (the configuration refuses a second): several units on one
//!   RS-485 line would need one task sharing the port, which is not supported yet.

pub mod decode;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use edge_protocol::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_modbus::client::{rtu, tcp, Client as _, Context as Session, Reader};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::payload::RawReading;
use super::{Context, Family, Kind, SourceHealth, SourceState, Task};
use crate::clock::unix_ms;
use crate::config::modbus::{BlockKind, ModbusBlock, ModbusTransport, Parity};
use crate::config::{Config, ModbusSource};
use crate::ingest::{DeadLetter, Dedupe, Submission};
use crate::mapping::{Mapper, Origin};
use decode::{decode, wire_bytes};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Live counters of one Modbus device.
#[derive(Debug, Default)]
pub struct ModbusCounters {
    /// Block reads answered with data.
    pub polls: AtomicU64,
    /// Register values read (one per register per answered poll).
    pub readings: AtomicU64,
    /// Exception answers.
    pub exceptions: AtomicU64,
    /// Requests not answered within `timeout_ms` (RTU: answers with a bad CRC too).
    pub timeouts: AtomicU64,
    /// I/O, framing and protocol errors, and short answers.
    pub transport_errors: AtomicU64,
    /// Sessions opened (TCP connected, serial port opened).
    pub connects: AtomicU64,
    /// Failed connects or port opens.
    pub connect_errors: AtomicU64,
}

/// The Modbus source kind: `[[modbus]]` tables, the `edge_modbus_*` families, [`ModbusHealth`].
pub static KIND: Kind = Kind {
    name: "modbus",
    families: &[
        Family {
            name: "edge_modbus_polls_total",
            help: "Modbus block reads answered with data.",
        },
        Family {
            name: "edge_modbus_readings_total",
            help: "Modbus register values read (one per register per answered poll).",
        },
        Family {
            name: "edge_modbus_exceptions_total",
            help: "Modbus exception answers (no reading for that poll).",
        },
        Family {
            name: "edge_modbus_timeouts_total",
            help: "Modbus requests not answered within timeout_ms, RTU answers with a bad CRC included (the connection is reopened).",
        },
        Family {
            name: "edge_modbus_transport_errors_total",
            help: "Modbus I/O, framing and protocol errors (the connection is reopened).",
        },
        Family {
            name: "edge_modbus_connects_total",
            help: "Modbus sessions opened (TCP connected or serial port opened).",
        },
        Family {
            name: "edge_modbus_connect_errors_total",
            help: "Modbus connects or serial port opens that failed (retried with backoff).",
        },
    ],
    names: |config| {
        let names = config.modbus.iter().map(|s| s.name.get_ref().clone());
        names.collect()
    },
    spawn,
    health: || Box::<ModbusHealth>::default(),
};

source_counters!(ModbusCounters {
    polls,
    readings,
    exceptions,
    timeouts,
    transport_errors,
    connects,
    connect_errors
});

/// Positions in [`ModbusCounters::values`] (the order of `KIND.families`).
const POLLS: usize = 0;
const EXCEPTIONS: usize = 2;
const TIMEOUTS: usize = 3;
const TRANSPORT_ERRORS: usize = 4;
const CONNECT_ERRORS: usize = 6;

/// The Modbus health rule: `connecting` until the device first answers or fails; then
/// `disconnected` after a sample in which a request timed out or a transport, connect or open
/// error happened, `connected` after one in which only answers (data or exceptions: the device
/// is there) came. A sample with neither keeps the state, so a device between two reconnect
/// attempts stays `disconnected`. (Derived from counters, so a change is seen within about a
/// second; a device that fails and recovers within one sample shows `disconnected` for it.)
#[derive(Debug)]
pub struct ModbusHealth {
    answered: u64,
    failed: u64,
    state: SourceState,
}

impl Default for ModbusHealth {
    fn default() -> Self {
        ModbusHealth {
            answered: 0,
            failed: 0,
            state: SourceState::Connecting,
        }
    }
}

impl SourceHealth for ModbusHealth {
    fn observe(&mut self, _now: Instant, values: &[u64]) -> SourceState {
        let value = |i: usize| values.get(i).copied().unwrap_or(0);
        let answered = value(POLLS) + value(EXCEPTIONS);
        let failed = value(TIMEOUTS) + value(TRANSPORT_ERRORS) + value(CONNECT_ERRORS);
        let more_answers = std::mem::replace(&mut self.answered, answered) != answered;
        let more_failures = std::mem::replace(&mut self.failed, failed) != failed;
        self.state = match (more_answers, more_failures) {
            (_, true) => SourceState::Disconnected,
            (true, false) => SourceState::Connected,
            (false, false) => self.state,
        };
        self.state
    }
}

/// One task per `[[modbus]]` table.
fn spawn(config: &Config, cx: &Context<'_>) -> Vec<Task> {
    let tasks = config.modbus.iter().map(|source| {
        let task = ModbusSourceTask {
            config: source.clone(),
            mapper: cx.mapper.clone(),
            submissions: cx.submissions.clone(),
            counters: cx.registry.counters(&KIND, source.name.get_ref()),
            cancel: cx.cancel.clone(),
        };
        Box::pin(task.run()) as Task
    });
    tasks.collect()
}

/// Why a session ended (the task reopens it after a backoff).
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {address}: no answer within {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("opening serial port {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: tokio_serial::Error,
    },
    #[error("{block}: no answer within {timeout:?}")]
    Timeout { block: String, timeout: Duration },
    #[error("{block}: {source}")]
    Transport {
        block: String,
        #[source]
        source: tokio_modbus::Error,
    },
    #[error("{block}: the answer holds {got} values, {asked} were asked")]
    ShortAnswer {
        block: String,
        got: usize,
        asked: u16,
    },
}

/// What one block read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

impl Answer {
    fn len(&self) -> usize {
        match self {
            Answer::Registers(w) => w.len(),
            Answer::Bits(b) => b.len(),
        }
    }
}

/// `holding 100+10`: a block in logs and errors.
pub fn describe(block: &ModbusBlock) -> String {
    format!(
        "{} {}+{}",
        block.kind.get_ref().name(),
        block.address.get_ref(),
        block.count.get_ref()
    )
}

/// `tcp plc.plant7.example:502 unit 1` or `rtu /dev/ttyUSB0 unit 3`: a device in logs.
pub fn device(source: &ModbusSource) -> String {
    let unit = source.unit.get_ref();
    match source.transport() {
        ModbusTransport::Tcp(address) => format!("tcp {address} unit {unit}"),
        ModbusTransport::Rtu { path, .. } => format!("rtu {path} unit {unit}"),
    }
}

/// Turns one answered poll of `block` into a submission: one reading per register mapped as
/// [`Origin::Register`] at `ts_ms`, a dead letter for each value the mapping refused (payload:
/// the register's bytes as sent). `None` when the answer is shorter than the block. No I/O.
pub fn submission(
    mapper: &Mapper,
    source: &str,
    block: &ModbusBlock,
    answer: &Answer,
    ts_ms: u64,
) -> Option<Submission> {
    let mut readings = Vec::with_capacity(block.register.len());
    let mut dead_letters = Vec::new();
    for register in &block.register {
        let offset = usize::from(
            register
                .address
                .get_ref()
                .checked_sub(*block.address.get_ref())?,
        );
        let data_type = *register.data_type.get_ref();
        // The register's words, or its bit: decoded now, turned into bytes only for a dead letter.
        let (value, words, bit) = match answer {
            Answer::Registers(words) => {
                let words = words.get(offset..offset + usize::from(data_type.width()))?;
                let value = decode(words, data_type, register.byte_order, register.word_order)?;
                (value, words, 0)
            }
            Answer::Bits(bits) => {
                let bit = u8::from(*bits.get(offset)?);
                (f64::from(bit), &[][..], bit)
            }
        };
        let raw = RawReading {
            sensor: None,
            ts_ms: Some(ts_ms),
            value,
            seq: None,
        };
        let name = register.name.get_ref();
        match mapper.map(source, Origin::Register(name), &raw, ts_ms) {
            Ok(reading) => readings.push((reading, Dedupe::SensorTs)),
            Err(error) => {
                let bytes = match answer {
                    Answer::Registers(_) => wire_bytes(words),
                    Answer::Bits(_) => vec![bit],
                };
                dead_letters.push(DeadLetter::new(
                    ts_ms,
                    source,
                    &format_args!("register `{name}` ({}): {error}", describe(block)),
                    &bytes,
                ))
            }
        }
    }
    Some(Submission {
        readings,
        dead_letters,
        state: Vec::new(),
        ack: None,
    })
}

/// Everything one Modbus device needs.
pub struct ModbusSourceTask {
    pub config: ModbusSource,
    pub mapper: Arc<Mapper>,
    pub submissions: mpsc::Sender<Submission>,
    pub counters: Arc<ModbusCounters>,
    pub cancel: CancellationToken,
}

impl ModbusSourceTask {
    fn timeout(&self) -> Duration {
        Duration::from_millis(*self.config.timeout_ms.get_ref())
    }

    /// Serves the device until cancelled, reopening the session with backoff after errors.
    pub async fn run(self) {
        let name = self.config.name.get_ref().clone();
        let device = device(&self.config);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        while !self.cancel.is_cancelled() {
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = self.connect() => c,
            };
            let result = match connected {
                Ok(client) => {
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(source = name, device, "Modbus session open");
                    self.serve(client, &mut backoff).await
                }
                Err(error) => {
                    self.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    Err(error)
                }
            };
            let delay = backoff.next_delay();
            match result {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(source = name, device, %error, retry_in_ms = delay.as_millis() as u64, "Modbus session ended");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Session, ModbusError> {
        let slave = Slave(*self.config.unit.get_ref());
        match self.config.transport() {
            ModbusTransport::Tcp(address) => {
                let timeout = self.timeout();
                let stream =
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str()))
                        .await
                        .map_err(|_| ModbusError::ConnectTimeout {
                            address: address.clone(),
                            timeout,
                        })?
                        .map_err(|source| ModbusError::Connect {
                            address: address.clone(),
                            source,
                        })?;
                // Requests are small and one at a time: do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                Ok(tcp::attach_slave(stream, slave))
            }
            ModbusTransport::Rtu {
                path,
                baud,
                parity,
                stop_bits,
            } => {
                let port = tokio_serial::new(path.clone(), baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(match parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .stop_bits(match stop_bits {
                        2 => tokio_serial::StopBits::Two,
                        _ => tokio_serial::StopBits::One,
                    })
                    .open_native_async()
                    .map_err(|source| ModbusError::Open { path, source })?;
                Ok(rtu::attach_slave(port, slave))
            }
        }
    }

    /// Polls every block on one open session until cancelled (`Ok`) or the session fails.
    async fn serve(&self, mut client: Session, backoff: &mut Backoff) -> Result<(), ModbusError> {
        let blocks = &self.config.block;
        let mut ticks: Vec<Interval> = blocks
            .iter()
            .map(|b| {
                let mut tick = tokio::time::interval(Duration::from_millis(*b.period_ms.get_ref()));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                tick
            })
            .collect();
        let mut failing = vec![false; blocks.len()];
        let mut turn = 0;
        loop {
            let index = tokio::select! {
                _ = self.cancel.cancelled() => break,
                i = next_due(&mut ticks, turn) => i,
            };
            turn = index + 1;
            match self.poll(&mut client, index, &mut failing[index]).await {
                Ok(Some(submission)) => {
                    backoff.reset();
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        sent = self.submissions.send(submission) => {
                            if sent.is_err() {
                                break; // the writer is gone: the agent is stopping
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => return Err(error),
            }
            if self.cancel.is_cancelled() {
                break;
            }
        }
        let _ = tokio::time::timeout(self.timeout(), client.disconnect()).await;
        Ok(())
    }

    /// One read of block `index`: `Some` submission when answered, `None` after an exception.
    async fn poll(
        &self,
        client: &mut Session,
        index: usize,
        failing: &mut bool,
    ) -> Result<Option<Submission>, ModbusError> {
        let block = &self.config.block[index];
        let name = self.config.name.get_ref().as_str();
        let ts_ms = unix_ms();
        let (address, count) = (*block.address.get_ref(), *block.count.get_ref());
        let request = read(client, *block.kind.get_ref(), address, count);
        let answer = match tokio::time::timeout(self.timeout(), request).await {
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ModbusError::Timeout {
                    block: describe(block),
                    timeout: self.timeout(),
                });
            }
            Ok(Err(source)) => {
                self.counters
                    .transport_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ModbusError::Transport {
                    block: describe(block),
                    source,
                });
            }
            Ok(Ok(Err(exception))) => {
                self.counters.exceptions.fetch_add(1, Ordering::Relaxed);
                self.exception(block, exception, failing);
                return Ok(None);
            }
            Ok(Ok(Ok(answer))) => answer,
        };
        let Some(submission) = submission(&self.mapper, name, block, &answer, ts_ms) else {
            self.counters
                .transport_errors
                .fetch_add(1, Ordering::Relaxed);
            return Err(ModbusError::ShortAnswer {
                block: describe(block),
                got: answer.len(),
                asked: count,
            });
        };
        if std::mem::take(failing) {
            tracing::info!(
                source = name,
                block = describe(block),
                "Modbus block answers again"
            );
        }
        self.counters.polls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .readings
            .fetch_add(block.register.len() as u64, Ordering::Relaxed);
        Ok(Some(submission))
    }

    fn exception(&self, block: &ModbusBlock, exception: ExceptionCode, failing: &mut bool) {
        let name = self.config.name.get_ref().as_str();
        if std::mem::replace(failing, true) {
            tracing::debug!(source = name, block = describe(block), %exception, "Modbus exception");
        } else {
            tracing::warn!(
                source = name,
                device = device(&self.config),
                block = describe(block),
                %exception,
                "Modbus exception answer; no reading until the block answers again"
            );
        }
    }
}

/// Reads one block.
async fn read(
    client: &mut Session,
    kind: BlockKind,
    address: u16,
    count: u16,
) -> tokio_modbus::Result<Answer> {
    Ok(match kind {
        BlockKind::Holding => client
            .read_holding_registers(address, count)
            .await?
            .map(Answer::Registers),
        BlockKind::Input => client
            .read_input_registers(address, count)
            .await?
            .map(Answer::Registers),
        BlockKind::Coils => client.read_coils(address, count).await?.map(Answer::Bits),
        BlockKind::Discrete => client
            .read_discrete_inputs(address, count)
            .await?
            .map(Answer::Bits),
    })
}

/// The index of the next block whose interval ticks, looking from `turn` on so that blocks due
/// together take turns.
fn next_due(ticks: &mut [Interval], turn: usize) -> impl Future<Output = usize> + '_ {
    std::future::poll_fn(move |cx| {
        let n = ticks.len();
        for k in 0..n {
            let i = (turn + k) % n;
            if ticks[i].poll_tick(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
}

#[cfg(test)]
mod tests;
