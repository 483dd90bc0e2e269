//! The serial transport: device cores ([`crate::device`]) speaking the link protocol over one
//! line, a real port or a pseudo-terminal pair.
//!
//! All devices share the line, as on an RS-485 bus: frames carry the device id, and each device
//! takes the `Ack`s addressed to it. With `--pty` the runner creates the pair itself and prints
//! the slave's path as the first line on stdout, `SERIAL_PATH=/dev/pts/N`, for the agent to open.
//!
//! # The device loop
//!
//! One task owns every device (no shared mutable state); every millisecond it applies due
//! faults (reboots), samples the readings due by the rate schedule, hands the devices the frames
//! the reader decoded, and, while the writer's backlog is below four frames (a UART's transmit
//! FIFO), polls the devices round-robin for frames to send. Frames are encoded with
//! `edge_protocol::link`, then corrupted, duplicated or reordered when those faults are on, and
//! queued to the writer ([`super::serial_io`]).
//!
//! # Device clocks
//!
//! A device's clock (`now_ms` for the core) counts milliseconds from the runner's start, runs
//! `--clock-drift-ppm` fast ([`super::faults::FaultConfig::drifted_ms`]) and is not reset by a
//! reboot fault; it is bumped so that two readings of one channel never share a millisecond.
//! A device takes every `TimeSync` on the line, with `--clock-skew-ms` added: the agent's
//! periodic ones, and on the shared bus also the answers to other devices' `Hello`s (`TimeSync`
//! names no device; its time is as true for every device). The core steps its clock forward
//! and slews it back ([`crate::device::clock`]), so stamps never go backwards within a boot;
//! across a reboot the new boot's first sync starts no lower than the offset the old boot ended
//! with, and the true time is then slewed in. So every channel's timestamps strictly increase
//! for the whole run and `(device, channel, ts_ms)` identifies a reading (ledger doc).
//!
//! # The ledger
//!
//! After every call into a core the loop compares the core's counters with what it has
//! recorded: a frame sealed since (the newest of `Device::unacked_frames`) gets a `frame`
//! record, a frame evicted since (the oldest the loop still lists; acks and evictions both take
//! from the front of the ring) an `evicted` record. A reboot records the seqs still unacked.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_protocol::link::{self, Frame, TimeSync, MAX_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::faults::Mangler;
use super::ledger::{unix_ms_now, Ledger, LedgerReading, LedgerRecord};
use super::rng::Rng;
use super::serial_io::{self, IoStats};
use super::sim::{RunConfig, Sampler, Schedule};
use super::{Progress, RunError, RunSummary};
use crate::device::{Config as DeviceConfig, Device};

/// Unacknowledged frames a simulated device holds (16 readings each).
pub const RING: usize = 64;

/// Serial options (command line).
#[derive(Debug, Clone, clap::Args)]
pub struct SerialConfig {
    /// A serial port to open (e.g. /dev/ttyUSB0).
    #[arg(long, conflicts_with = "pty", required_unless_present = "pty")]
    pub port: Option<PathBuf>,
    /// Create a pseudo-terminal pair and print `SERIAL_PATH=<slave>` on stdout.
    #[arg(long)]
    pub pty: bool,
    /// Line speed (set on a real port; the pacing budget with --pace).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Pace writes to the baud rate (10 bits per byte), as a real line would; for ptys.
    #[arg(long)]
    pub pace: bool,
    /// Firmware version reported in Hello.
    #[arg(long, default_value_t = 1)]
    pub firmware_version: u32,
    /// Seal a partly filled frame this long after its first reading.
    #[arg(long, default_value_t = 200)]
    pub flush_ms: u64,
    /// First retransmit timeout (doubles per attempt).
    #[arg(long, default_value_t = 500)]
    pub retransmit_ms: u64,
    /// Retransmit timeout cap.
    #[arg(long, default_value_t = 4_000)]
    pub max_backoff_ms: u64,
}

impl SerialConfig {
    /// Options for a pty pair with defaults, for tests and benchmarks.
    pub fn pty() -> SerialConfig {
        SerialConfig {
            port: None,
            pty: true,
            baud: 115_200,
            pace: false,
            firmware_version: 1,
            flush_ms: 200,
            retransmit_ms: 500,
            max_backoff_ms: 4_000,
        }
    }
}

/// Opens the configured port (or creates a pty pair, printing its path) and runs on it.
pub async fn run(
    config: &RunConfig,
    serial: &SerialConfig,
    cancel: CancellationToken,
) -> Result<RunSummary, RunError> {
    let pace = serial.pace.then_some(serial.baud);
    if let Some(path) = &serial.port {
        let name = path.display().to_string();
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(&name, serial.baud))
            .map_err(|source| RunError::SerialOpen { path: name, source })?;
        return run_on(port, config, serial, pace, cancel).await;
    }
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(RunError::Pty)?;
    let path = tokio_serial::SerialPort::name(&slave).unwrap_or_default();
    println!("SERIAL_PATH={path}");
    // Keep the slave open so the master never sees a hang-up while the agent (re)opens it.
    let summary = run_on(master, config, serial, pace, cancel).await;
    drop(slave);
    summary
}

/// A device, its sampler and the loop's mirror of what it holds.
struct Slot {
    device: Device<RING>,
    sampler: Sampler,
    schedule: Schedule,
    clock_ms: u64,
    last_sample_ms: Vec<u64>,
    /// The clock offset (`unix_ms - clock_ms`) the latest synced boot ended with: a new boot
    /// starts no lower.
    offset_floor: u64,
    /// Sealed frames not yet acked or evicted, as recorded: (seq, readings).
    ring: VecDeque<(u32, u32)>,
    seen_acked: u64,
    seen_evicted: u64,
    seen_sealed: u64,
    /// Totals of the earlier boots.
    totals: Totals,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    frames: u64,
    acked: u64,
    retransmits: u64,
    evicted_readings: u64,
}

/// The totals over every device on the line, all boots.
fn totals(slots: &[Slot]) -> Totals {
    slots.iter().fold(Totals::default(), |a, s| {
        let b = s.boot_totals();
        Totals {
            frames: a.frames + b.frames,
            acked: a.acked + b.acked,
            retransmits: a.retransmits + b.retransmits,
            evicted_readings: a.evicted_readings + b.evicted_readings,
        }
    })
}

impl Slot {
    fn boot_totals(&self) -> Totals {
        let s = self.device.stats();
        Totals {
            frames: self.totals.frames + s.sealed,
            acked: self.totals.acked + s.acked,
            retransmits: self.totals.retransmits + s.retransmits,
            evicted_readings: self.totals.evicted_readings + s.evicted_readings,
        }
    }
}

/// Runs the devices on an open port (any byte stream: a pty master, a serial port, a pipe).
pub async fn run_on<P>(
    port: P,
    config: &RunConfig,
    serial: &SerialConfig,
    pace_baud: Option<u32>,
    cancel: CancellationToken,
) -> Result<RunSummary, RunError>
where
    P: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut ledger = match &config.ledger {
        Some(path) => Ledger::create(path)?,
        None => Ledger::disabled(),
    };
    ledger.write(&LedgerRecord::Start {
        transport: "serial".into(),
        seed: config.seed,
        devices: config.devices,
        channels: config.channels,
        unix_ms: unix_ms_now(),
    })?;

    let (read_half, write_half) = tokio::io::split(port);
    let stats = Arc::new(IoStats::default());
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(256);
    let (in_tx, mut in_rx) = mpsc::channel::<Frame>(1024);
    let writer = tokio::spawn(serial_io::writer(
        write_half,
        out_rx,
        Arc::clone(&stats),
        pace_baud,
    ));
    let reader = tokio::spawn(serial_io::reader(read_half, in_tx, Arc::clone(&stats)));

    let start = Instant::now();
    let mut slots: Vec<Slot> = Vec::new();
    for id in config.device_ids() {
        let mut sampler = Sampler::new(config, id);
        let boot_id = sampler.random_u32();
        let device_config = DeviceConfig {
            device_id: id,
            firmware_version: serial.firmware_version,
            channels: config.channels,
            flush_interval_ms: serial.flush_ms.max(1),
            retransmit_ms: serial.retransmit_ms,
            max_backoff_ms: serial.max_backoff_ms,
        };
        ledger.write(&LedgerRecord::Hello {
            device: id,
            boot_id,
            firmware_version: serial.firmware_version,
        })?;
        slots.push(Slot {
            device: Device::new(device_config, boot_id, 0),
            sampler,
            schedule: Schedule::new(config.rate),
            clock_ms: 0,
            last_sample_ms: vec![0; usize::from(config.channels)],
            offset_floor: 0,
            ring: VecDeque::new(),
            seen_acked: 0,
            seen_evicted: 0,
            seen_sealed: 0,
            totals: Totals::default(),
        });
    }
    let mut fault_rng = Rng::new(config.seed, u64::from(u32::MAX) + 1);
    let mut mangler: Mangler<Vec<u8>> = Mangler::new(
        &config.faults,
        Rng::new(config.seed, u64::from(u32::MAX) + 2),
    );
    let mut progress = Progress::new(config.progress_secs);
    let mut reboots_done = 0u64;
    let mut readings = 0u64;
    let mut draining: Option<Instant> = None;
    let mut next_device = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let fifo = 4 * MAX_FRAME_LEN;
    let mut outcome: Result<(), RunError> = Ok(());

    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled(), if draining.is_none() => {}
        }
        if writer.is_finished() || reader.is_finished() {
            break;
        }
        let elapsed = start.elapsed();
        // The devices' clocks: host time since start, drifting when asked to.
        let device_ms = config.faults.drifted_ms(elapsed.as_millis() as u64);
        let cut = config.faults.disconnected(elapsed);

        // Stop sampling: on count, duration or cancellation, then drain.
        if draining.is_none() {
            let time_up = config.duration().is_some_and(|d| elapsed >= d);
            let count_done = config
                .count
                .is_some_and(|n| slots.iter().all(|s| s.sampler.sampled >= n));
            if time_up || count_done || cancel.is_cancelled() {
                draining = Some(Instant::now());
                for slot in &mut slots {
                    slot.clock_ms = slot.clock_ms.max(device_ms);
                    slot.device.flush(slot.clock_ms);
                    record(slot, &mut ledger)?;
                }
            }
        }
        if let Some(since) = draining {
            let settled = slots
                .iter()
                .all(|s| s.device.unacked() == 0 && s.device.hello_acked());
            if settled || since.elapsed() >= config.drain() {
                break;
            }
        }

        // Reboots.
        if draining.is_none() {
            let due = config.faults.reboots_due(elapsed);
            while reboots_done < due && !slots.is_empty() {
                reboots_done += 1;
                let index = fault_rng.below(slots.len() as u64) as usize;
                reboot(&mut slots[index], device_ms, serial, &mut ledger)?;
            }
        }

        // Sampling.
        if draining.is_none() {
            for slot in &mut slots {
                let mut due = slot.schedule.due(elapsed, &config.faults, 100_000);
                if let Some(n) = config.count {
                    due = due.min(n.saturating_sub(slot.sampler.sampled));
                }
                for _ in 0..due {
                    sample(slot, device_ms, &mut ledger)?;
                    readings += 1;
                }
            }
        }

        // Frames from the agent.
        while let Ok(frame) = in_rx.try_recv() {
            if cut {
                continue;
            }
            for slot in &mut slots {
                deliver(slot, &frame, device_ms);
                record(slot, &mut ledger)?;
            }
        }

        // Frames to the agent.
        let mut idle = 0;
        let count = slots.len();
        while stats.backlog.load(Ordering::Relaxed) < fifo && idle < count {
            let slot = &mut slots[next_device % count];
            next_device = (next_device + 1) % count;
            slot.clock_ms = slot.clock_ms.max(device_ms);
            let polled = slot.device.poll(slot.clock_ms);
            record(slot, &mut ledger)?;
            let Some(frame) = polled else {
                idle += 1;
                continue;
            };
            idle = 0;
            if cut {
                continue; // the line is cut: the bytes go nowhere
            }
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            let Ok(n) = link::encode(&frame, &mut buf) else {
                continue;
            };
            buf.truncate(n);
            mangler.corrupt(&mut buf);
            for bytes in mangler.process(buf) {
                if queue(&out_tx, &stats, bytes).await.is_err() {
                    break;
                }
            }
        }
        if let Some(bytes) = mangler.release() {
            let _ = queue(&out_tx, &stats, bytes).await;
        }

        progress.maybe_print(|| {
            let t = totals(&slots);
            format!(
                "serial: readings={readings} frames={} acked={} retransmits={} dropped_readings={} bytes_out={} decode_errors={} corrupted={} duplicated={} reordered={}",
                t.frames,
                t.acked,
                t.retransmits,
                t.evicted_readings,
                stats.written.load(Ordering::Relaxed),
                stats.decode_errors.load(Ordering::Relaxed),
                mangler.corrupted,
                mangler.duplicated,
                mangler.reordered,
            )
        });
    }

    drop(out_tx);
    let drained = slots
        .iter()
        .all(|s| s.device.unacked() == 0 && s.device.hello_acked());
    if reader.is_finished() {
        if let Ok(Err(e)) = reader.await {
            outcome = Err(RunError::SerialIo(e));
        }
    } else {
        reader.abort();
    }
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), writer).await {
        outcome = Err(RunError::SerialIo(e));
    }
    let t = totals(&slots);
    ledger.write(&LedgerRecord::End {
        readings,
        frames: t.frames,
        retransmits: t.retransmits,
        evicted_readings: t.evicted_readings,
        unix_ms: unix_ms_now(),
        clean: outcome.is_ok() && drained,
    })?;
    ledger.flush()?;
    outcome.map(|()| RunSummary {
        readings,
        frames: t.frames,
        acked: t.acked,
        retransmits: t.retransmits,
        evicted_readings: t.evicted_readings,
        drained,
    })
}

/// Queues wire bytes to the writer, counting them in the backlog.
async fn queue(
    tx: &mpsc::Sender<Vec<u8>>,
    stats: &IoStats,
    bytes: Vec<u8>,
) -> Result<(), mpsc::error::SendError<Vec<u8>>> {
    let n = bytes.len();
    stats.backlog.fetch_add(n, Ordering::Relaxed);
    let sent = tx.send(bytes).await;
    if sent.is_err() {
        stats.backlog.fetch_sub(n, Ordering::Relaxed);
    }
    sent
}

/// Samples one reading into the device.
fn sample(slot: &mut Slot, device_ms: u64, ledger: &mut Ledger) -> Result<(), RunError> {
    slot.clock_ms = slot.clock_ms.max(device_ms);
    let (channel, value) = slot.sampler.next_value(slot.clock_ms);
    let index = usize::from(channel);
    // Two readings of one channel never share a millisecond: bump the device's clock.
    let now = slot
        .clock_ms
        .max(slot.last_sample_ms[index].saturating_add(1));
    slot.clock_ms = now;
    slot.last_sample_ms[index] = now;
    // Refused only once seq is exhausted (2^32 frames in one boot): nothing to record then.
    let _ = slot.device.sample(now, channel, value);
    record(slot, ledger)
}

/// Writes ledger records for what the core sealed, acked and evicted since the last call.
fn record(slot: &mut Slot, ledger: &mut Ledger) -> Result<(), RunError> {
    let stats = slot.device.stats();
    let device = slot.sampler.device_id;
    let boot_id = slot.device.boot_id();
    // Acks (on_frame) and seals with evictions (sample, poll, flush) never happen in one call.
    while slot.seen_acked < stats.acked {
        slot.seen_acked += 1;
        slot.ring.pop_front();
    }
    while slot.seen_evicted < stats.evicted_frames {
        slot.seen_evicted += 1;
        if let Some((seq, readings)) = slot.ring.pop_front() {
            ledger.write(&LedgerRecord::Evicted {
                device,
                boot_id,
                seq,
                readings,
            })?;
        }
    }
    if stats.sealed > slot.seen_sealed {
        let new = (stats.sealed - slot.seen_sealed) as usize;
        slot.seen_sealed = stats.sealed;
        let held = slot.device.unacked();
        for frame in slot.device.unacked_frames().skip(held.saturating_sub(new)) {
            ledger.write(&LedgerRecord::Frame {
                device,
                boot_id,
                seq: frame.seq,
                dropped: frame.dropped,
                readings: frame
                    .readings
                    .iter()
                    .map(|r| LedgerReading {
                        channel: r.channel,
                        ts_ms: r.ts_ms,
                        value: r.value,
                    })
                    .collect(),
            })?;
            slot.ring
                .push_back((frame.seq, frame.readings.len() as u32));
        }
    }
    Ok(())
}

/// Hands a frame from the agent to a device.
fn deliver(slot: &mut Slot, frame: &Frame, device_ms: u64) {
    slot.clock_ms = slot.clock_ms.max(device_ms);
    let now = slot.clock_ms;
    match frame {
        Frame::TimeSync(sync) => {
            let unix_ms = sync.unix_ms.saturating_add_signed(slot.sampler.skew_ms());
            if !slot.device.time_synced() {
                // A boot's first sync starts no lower than where the last boot's clock ended ...
                let floor = Frame::TimeSync(TimeSync {
                    unix_ms: unix_ms.max(now.wrapping_add(slot.offset_floor)),
                });
                slot.device.on_frame(now, &floor);
            }
            // ... and the true time is stepped or slewed to like any later sync.
            slot.device
                .on_frame(now, &Frame::TimeSync(TimeSync { unix_ms }));
        }
        other => slot.device.on_frame(now, other),
    }
}

/// A power cycle of one device: a new boot id, the ring and the open frame lost.
fn reboot(
    slot: &mut Slot,
    device_ms: u64,
    serial: &SerialConfig,
    ledger: &mut Ledger,
) -> Result<(), RunError> {
    slot.clock_ms = slot.clock_ms.max(device_ms);
    let old_boot_id = slot.device.boot_id();
    let mut new_boot_id = slot.sampler.random_u32();
    if new_boot_id == old_boot_id {
        new_boot_id = new_boot_id.wrapping_add(1);
    }
    ledger.write(&LedgerRecord::Reboot {
        device: slot.sampler.device_id,
        old_boot_id,
        new_boot_id,
        lost: slot.device.unacked_frames().map(|f| f.seq).collect(),
        unsealed: slot.device.open_readings().len() as u32,
    })?;
    slot.totals = slot.boot_totals();
    if let Some(offset) = slot.device.clock().offset() {
        slot.offset_floor = offset;
    }
    slot.device.restart(new_boot_id, slot.clock_ms);
    slot.ring.clear();
    slot.seen_acked = 0;
    slot.seen_evicted = 0;
    slot.seen_sealed = 0;
    ledger.write(&LedgerRecord::Hello {
        device: slot.sampler.device_id,
        boot_id: new_boot_id,
        firmware_version: serial.firmware_version,
    })?;
    Ok(())
}
