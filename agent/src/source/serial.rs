//! The serial source: one line (tokio-serial), speaking the link protocol or line text.
//!
//! - `framing = "link"`: `edge_protocol::link` frames. `Hello` is answered with `Ack` (per
//!   [`AckState`]) and a `TimeSync`, and a `TimeSync` goes out every `time_sync_interval_s`
//!   besides (a timer of the task's loop; the devices' clocks drift over long uptimes, see
//!   [`clock`] for the offset gauge that shows it); each `Readings` frame becomes one
//!   [`Submission`] whose readings map through `(device, channel)` and dedupe by
//!   `(device, boot, seq, index)`; its ack, run by the ingest writer after the commit, reports
//!   the frame durable and the cumulative `Ack` goes out.
//! - `framing = "line"`: text lines `sensor,ts_ms,value` (`{payload}` is the sensor). Lines
//!   have no acks; when the writer pushes back the task stops reading, so the OS buffer and the
//!   line's flow control hold the data.
//!
//! # Invariants and crash reasoning
//!
//! - An `Ack` leaves only from [`AckState`], which passes a `seq` only after the writer's ack
//!   reported it durable (or the device declared it discarded): nothing the device frees is lost.
//! - Memory is bounded: a link frame that finds the writer's channel full is not queued; it is
//!   counted (`busy`) and left to the device, which retransmits until it is acked. The decoder and
//!   the line buffer hold at most one frame / [`MAX_LINE`] bytes.
//! - Garbage (bad CRC, bad COBS, unparsable line, unmapped channel) is counted and dead-lettered
//!   with its reason; the next frame or line is read as usual.
//! - A device timestamp below 2000-01-01 is uptime (the device has not had a `TimeSync` yet) and
//!   is replaced by the receive time.
//! - The periodic `TimeSync` is a tokio interval in the task's own loop, with
//!   `MissedTickBehavior::Delay`: a loop held up (a slow write) sends one late sync, never a
//!   burst; there is no other timer and no polling. Its first tick is one period after the port
//!   opened.
//! - A port that fails to open or errors is retried with backoff (100 ms .. 30 s); other sources
//!   are not affected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_protocol::link::{self, Decoder, Frame, LinkError, TimeSync};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use edge_protocol::backoff::Backoff;
use tokio::time::Instant;

use super::link_acks::{AckState, OnReadings};
use super::payload::RawReading;
use super::{Context, Family, Kind, SourceHealth, SourceState, Task};
use crate::clock::unix_ms;
use crate::config::{Config, SerialFraming, SerialSource};
use crate::ingest::{DeadLetter, Dedupe, Submission};
use crate::mapping::{Mapper, Origin};

pub mod clock;

/// Longest accepted text line, in bytes.
pub const MAX_LINE: usize = 1024;
/// Timestamps below this (2000-01-01 in unix ms) are device uptime.
pub const UPTIME_LIMIT_MS: u64 = 946_684_800_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Live counters of one serial source.
#[derive(Debug, Default)]
pub struct SerialCounters {
    pub frames: AtomicU64,
    pub duplicate_frames: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Frames not submitted because the writer's channel was full (the device retransmits).
    pub busy: AtomicU64,
    /// Readings the devices reported discarding (ring overflow): upstream loss.
    pub upstream_dropped: AtomicU64,
    pub port_errors: AtomicU64,
    /// `TimeSync` frames sent: answers to `Hello`s and periodic ones.
    pub time_syncs: AtomicU64,
    /// The newest device clock offset (a gauge, rendered by [`clock::render`]).
    pub clock_offset: clock::ClockOffset,
}

/// The serial source kind: `[[serial]]` tables, the `edge_serial_*` families, the health rule
/// below.
pub static KIND: Kind = Kind {
    name: "serial",
    families: &[
        Family {
            name: "edge_serial_frames_total",
            help: "Serial frames received.",
        },
        Family {
            name: "edge_serial_duplicate_frames_total",
            help: "Serial frames received twice.",
        },
        Family {
            name: "edge_serial_bad_frames_total",
            help: "Serial frames that failed decoding.",
        },
        Family {
            name: "edge_serial_busy_total",
            help: "BUSY answers sent under backpressure.",
        },
        Family {
            name: "edge_serial_upstream_dropped_total",
            help: "Frames the firmware reports dropped.",
        },
        Family {
            name: "edge_serial_port_errors_total",
            help: "Serial port errors (reopened with backoff).",
        },
        Family {
            name: "edge_serial_time_syncs_total",
            help: "TimeSync frames sent (answers to Hello and periodic).",
        },
    ],
    names: |config| {
        let names = config.serial.iter().map(|s| s.name.get_ref().clone());
        names.collect()
    },
    spawn,
    health: || Box::<SerialHealth>::default(),
};

/// Position of `port_errors` in [`SerialCounters::values`] (the order of `KIND.families`).
const PORT_ERRORS: usize = 5;

source_counters!(SerialCounters {
    frames,
    duplicate_frames,
    bad_frames,
    busy,
    upstream_dropped,
    port_errors,
    time_syncs
});

/// How long a port error keeps the source `disconnected`: longer than the longest reopen
/// backoff ([`BACKOFF_MAX`], 30 s), so a port that keeps failing never looks connected.
const ERROR_HOLD: Duration = Duration::from_secs(35);

/// The serial health rule: `disconnected` while `port_errors` advanced within the last
/// [`ERROR_HOLD`], else `connected`; a port that recovered shows `connected` 35 s after its last
/// error. (An exact `connected` flag in the counters would remove the approximation.)
#[derive(Debug, Default)]
struct SerialHealth {
    /// Port errors seen, and when they last grew (never: `None`). No `Instant` arithmetic: on a
    /// gateway just booted the monotonic clock is near zero.
    errors: u64,
    failed_at: Option<Instant>,
}

impl SourceHealth for SerialHealth {
    fn observe(&mut self, now: Instant, values: &[u64]) -> SourceState {
        let errors = values.get(PORT_ERRORS).copied().unwrap_or(0);
        if errors != self.errors {
            (self.errors, self.failed_at) = (errors, Some(now));
        }
        match self
            .failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < ERROR_HOLD)
        {
            true => SourceState::Disconnected,
            false => SourceState::Connected,
        }
    }
}

/// One task per `[[serial]]` table.
fn spawn(config: &Config, cx: &Context<'_>) -> Vec<Task> {
    let tasks = config.serial.iter().map(|source| {
        let task = SerialSourceTask {
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

/// Why a port session ended.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial port: {0}")]
    Port(#[from] tokio_serial::Error),
    #[error("serial I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("serial port closed")]
    Closed,
    #[error("encoding a link frame: {0}")]
    Encode(LinkError),
}

/// Everything one serial source needs.
pub struct SerialSourceTask {
    pub config: SerialSource,
    pub mapper: Arc<Mapper>,
    pub submissions: mpsc::Sender<Submission>,
    pub counters: Arc<SerialCounters>,
    pub cancel: CancellationToken,
}

impl SerialSourceTask {
    /// Opens the port and serves it until cancelled, reopening with backoff after errors.
    pub async fn run(self) {
        let name = self.config.name.get_ref().clone();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        while !self.cancel.is_cancelled() {
            let opened = tokio_serial::new(self.config.path.to_string_lossy(), self.config.baud)
                .open_native_async();
            let result = match opened {
                Ok(port) => {
                    tracing::info!(source = name, path = %self.config.path.display(), "serial port open");
                    backoff.reset();
                    self.serve(port).await
                }
                Err(e) => Err(SerialError::from(e)),
            };
            let delay = backoff.next_delay();
            match result {
                Ok(()) => return,
                Err(error) => {
                    self.counters.port_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = name, %error, retry_in_ms = delay.as_millis() as u64, "serial source failed");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Serves one open port (or any byte stream) until cancelled or it fails.
    pub async fn serve<P: AsyncRead + AsyncWrite + Send>(
        &self,
        port: P,
    ) -> Result<(), SerialError> {
        match self.config.framing {
            SerialFraming::Link => self.serve_link(port).await,
            SerialFraming::Line => self.serve_lines(port).await,
        }
    }

    async fn serve_link<P: AsyncRead + AsyncWrite + Send>(
        &self,
        port: P,
    ) -> Result<(), SerialError> {
        let (mut reader, mut writer) = tokio::io::split(port);
        let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<(u32, u32, u32)>();
        let mut state = AckState::default();
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 1024];
        let mut frames = Vec::new();
        let mut time_sync = self.config.time_sync_interval().map(|period| {
            let mut timer = tokio::time::interval_at(Instant::now() + period, period);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        });
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                Some((device, boot, seq)) = durable_rx.recv() => {
                    if let Some(ack) = state.on_durable(device, boot, seq) {
                        send(&mut writer, &Frame::Ack(ack)).await?;
                    }
                }
                () = next_tick(&mut time_sync) => self.send_time_sync(&mut writer).await?,
                n = reader.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Err(SerialError::Closed);
                    }
                    decoder.feed(&buf[..n], |frame| frames.push(frame));
                    for frame in frames.drain(..) {
                        self.on_frame(frame, &mut state, &mut writer, &durable_tx).await?;
                    }
                }
            }
        }
    }

    async fn on_frame<W: AsyncWrite + Unpin>(
        &self,
        frame: Result<Frame, LinkError>,
        state: &mut AckState,
        writer: &mut W,
        durable: &mpsc::UnboundedSender<(u32, u32, u32)>,
    ) -> Result<(), SerialError> {
        let name = self.config.name.get_ref().as_str();
        let now = unix_ms();
        match frame {
            Ok(Frame::Hello(hello)) => {
                tracing::info!(
                    source = name,
                    device = hello.device_id,
                    boot = hello.boot_id,
                    firmware = hello.firmware_version,
                    "device hello"
                );
                if let Some(ack) = state.on_hello(&hello) {
                    send(writer, &Frame::Ack(ack)).await?;
                }
                self.send_time_sync(writer).await?;
            }
            Ok(Frame::Readings(frame)) => {
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                match state.on_readings(&frame) {
                    None => self.dead_letter(now, &"too many devices on this line", &[]),
                    Some(OnReadings::Duplicate(ack)) => {
                        self.counters
                            .duplicate_frames
                            .fetch_add(1, Ordering::Relaxed);
                        send(writer, &Frame::Ack(ack)).await?;
                    }
                    Some(OnReadings::Store { newly_dropped }) => {
                        if newly_dropped > 0 {
                            self.counters
                                .upstream_dropped
                                .fetch_add(u64::from(newly_dropped), Ordering::Relaxed);
                            tracing::warn!(
                                source = name,
                                device = frame.device_id,
                                newly_dropped,
                                "device discarded readings"
                            );
                        }
                        let offset = clock::offset_ms(&frame.readings, now);
                        let submission = self.submission(&frame, now, durable.clone());
                        if self.submissions.try_send(submission).is_err() {
                            self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(offset) = offset {
                            self.counters.clock_offset.set(offset);
                        }
                    }
                }
            }
            Ok(other) => self.dead_letter(now, &UnexpectedFrame(other), &[]),
            Err(error) => self.dead_letter(now, &error, &[]),
        }
        Ok(())
    }

    /// Sends the gateway's clock, read as the frame is written.
    async fn send_time_sync<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
    ) -> Result<(), SerialError> {
        let frame = Frame::TimeSync(TimeSync { unix_ms: unix_ms() });
        send(writer, &frame).await?;
        self.counters.time_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn submission(
        &self,
        frame: &link::Readings,
        now: u64,
        durable: mpsc::UnboundedSender<(u32, u32, u32)>,
    ) -> Submission {
        let name = self.config.name.get_ref().as_str();
        let mut readings = Vec::new();
        let mut dead_letters = Vec::new();
        for (index, r) in frame.readings.iter().enumerate() {
            let raw = RawReading {
                sensor: None,
                ts_ms: (r.ts_ms >= UPTIME_LIMIT_MS).then_some(r.ts_ms),
                value: f64::from(r.value),
                seq: None,
            };
            let origin = Origin::Device {
                device: frame.device_id,
                channel: r.channel,
            };
            match self.mapper.map(name, origin, &raw, now) {
                Ok(reading) => readings.push((
                    reading,
                    Dedupe::Frame {
                        device: frame.device_id,
                        boot: frame.boot_id,
                        seq: frame.seq,
                        index: index as u16,
                    },
                )),
                Err(error) => dead_letters.push(DeadLetter::new(now, name, &error, &[])),
            }
        }
        let (device, boot, seq) = (frame.device_id, frame.boot_id, frame.seq);
        Submission {
            readings,
            dead_letters,
            state: Vec::new(),
            ack: Some(Box::new(move || {
                let _ = durable.send((device, boot, seq));
            })),
        }
    }

    fn dead_letter(&self, now: u64, reason: &dyn std::fmt::Display, bytes: &[u8]) {
        self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
        let dl = DeadLetter::new(now, self.config.name.get_ref(), reason, bytes);
        let submission = Submission {
            readings: Vec::new(),
            dead_letters: vec![dl],
            state: Vec::new(),
            ack: None,
        };
        // Best effort: under backpressure a dead letter of line noise is only counted.
        let _ = self.submissions.try_send(submission);
    }

    async fn serve_lines<P: AsyncRead + AsyncWrite + Send>(
        &self,
        port: P,
    ) -> Result<(), SerialError> {
        let (mut reader, _writer) = tokio::io::split(port);
        let name = self.config.name.get_ref().as_str();
        let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
        let mut overlong = false;
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                n = reader.read(&mut buf) => n?,
            };
            if n == 0 {
                return Err(SerialError::Closed);
            }
            for &byte in &buf[..n] {
                if byte != b'\n' {
                    if line.len() < MAX_LINE {
                        line.push(byte);
                    } else {
                        overlong = true;
                    }
                    continue;
                }
                let now = unix_ms();
                let submission = if overlong {
                    Some(dead_submission(now, name, &LineError::TooLong, &line))
                } else {
                    match parse_line(&line) {
                        Ok(None) => None,
                        Ok(Some(raw)) => {
                            Some(match self.mapper.map(name, Origin::Line, &raw, now) {
                                Ok(reading) => Submission {
                                    readings: vec![(reading, Dedupe::SensorTs)],
                                    dead_letters: Vec::new(),
                                    state: Vec::new(),
                                    ack: None,
                                },
                                Err(error) => dead_submission(now, name, &error, &line),
                            })
                        }
                        Err(error) => Some(dead_submission(now, name, &error, &line)),
                    }
                };
                line.clear();
                overlong = false;
                if let Some(s) = submission {
                    if !s.dead_letters.is_empty() {
                        self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    // Lines cannot be retransmitted: wait for room (backpressure stops reading).
                    if self.submissions.send(s).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn dead_submission(
    now: u64,
    source: &str,
    reason: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Submission {
    Submission {
        readings: Vec::new(),
        dead_letters: vec![DeadLetter::new(now, source, reason, bytes)],
        state: Vec::new(),
        ack: None,
    }
}

/// The periodic `TimeSync` timer's next tick; never, without one.
async fn next_tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), SerialError> {
    let bytes = link::encode_to_vec(frame).map_err(SerialError::Encode)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// A frame that only the agent sends arrived from a device.
struct UnexpectedFrame(Frame);

impl std::fmt::Display for UnexpectedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Frame::Ack(_) => "Ack",
            Frame::TimeSync(_) => "TimeSync",
            Frame::Hello(_) => "Hello",
            Frame::Readings(_) => "Readings",
        };
        write!(f, "unexpected {kind} frame from a device")
    }
}

/// Why a text line is not a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("line is not `sensor,ts_ms,value`")]
    Shape,
    #[error("line timestamp is not an unsigned integer")]
    Timestamp,
    #[error("line value is not a finite number")]
    Value,
}

/// Parses `sensor,ts_ms,value`; blank lines (and `\r`) are `Ok(None)`.
pub fn parse_line(line: &[u8]) -> Result<Option<RawReading>, LineError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| LineError::NotUtf8)?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    let mut fields = text.split(',');
    let (Some(sensor), Some(ts), Some(value), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(LineError::Shape);
    };
    let sensor = sensor.trim();
    if sensor.is_empty() {
        return Err(LineError::Shape);
    }
    let ts_ms: u64 = ts.trim().parse().map_err(|_| LineError::Timestamp)?;
    let value: f64 = value.trim().parse().map_err(|_| LineError::Value)?;
    if !value.is_finite() {
        return Err(LineError::Value);
    }
    Ok(Some(RawReading {
        sensor: Some(sensor.to_owned()),
        ts_ms: Some(ts_ms),
        value,
        seq: None,
    }))
}

#[cfg(test)]
mod tests;
