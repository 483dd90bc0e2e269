//! The device state machine: what sensor firmware does on the serial link, with no I/O.
//!
//! `no_std`, no allocator, no clock and no randomness of its own: the caller passes the time
//! (`now_ms`, a monotonic uptime in milliseconds) to every call, the boot id at boot, and moves
//! frames between [`Device::poll`] / [`Device::on_frame`] and the wire (`edge_protocol::link`
//! encodes and decodes them). The runner drives it over a pty or a real port; the tests drive it
//! with a fake clock and a lossy fake link.
//!
//! # Behaviour
//!
//! - **Boot.** [`Device::new`] (and [`Device::restart`], which is the same as a power cycle: RAM is
//!   lost) starts a boot with the caller's `boot_id`; `seq` starts at 1. The first frame
//!   [`Device::poll`] returns is `Hello`, repeated with the retransmit backoff until an `Ack` for
//!   this boot arrives (the agent answers a `Hello` with `Ack { seq: W }`, 0 for a new boot).
//! - **Sampling.** [`Device::sample`] appends a reading of one of the configured channels
//!   (`0..channels`) to the open frame. The open frame is sealed when it holds
//!   `MAX_READINGS` (16) readings, or `flush_interval_ms` after its first reading (checked by
//!   `sample` and `poll`), or on [`Device::flush`]. Sealing gives it the next `seq`.
//! - **Ring.** Sealed frames wait in a ring of `CAP` slots until acknowledged. When a frame is
//!   sealed and the ring is full, the oldest frame is discarded and its readings are added to the
//!   boot's running total of discarded readings, which every transmitted frame carries in
//!   `dropped` (a total, not a delta, and readings, not frames: see `edge_protocol::link`).
//! - **Transmission.** [`Device::poll`] returns at most one frame per call, oldest due first: the
//!   `Hello`, a newly sealed frame, or a retransmit. A frame is due again `retransmit_ms` after its
//!   first transmission, then after 2x, 4x, ... that, capped at `max_backoff_ms`. When an ack
//!   makes progress the link is evidently up, so the frames still waiting drop back to the first
//!   timeout (their attempt count is reset to 1). Each copy carries `oldest_unacked` = the lowest
//!   `seq` still in the ring, so the agent's cumulative ack can pass discarded frames, and the
//!   current `dropped` total.
//! - **Acks.** [`Device::on_frame`] with an `Ack` for this device and this boot frees every frame
//!   with `seq <=` the acked `seq` (cumulative) and stops the `Hello`. Acks for another boot or
//!   device, and acks above the highest `seq` sent, are ignored (and counted).
//! - **Time.** Readings taken before the boot's first `TimeSync` carry the uptime; the first
//!   sets the offset from uptime to unix time, and readings after it are stamped in unix ms.
//!   Every later `TimeSync` is taken too (the agent resyncs periodically; on a shared bus a
//!   device also hears the syncs that answer other devices' `Hello`s, which are just as true):
//!   one that finds the clock behind steps it forward, one that finds it ahead is slewed in, so
//!   stamps never go backwards ([`clock`]).
//!
//! # Invariants
//!
//! 1. Within a boot, every reading accepted by `sample` is, at any moment, in exactly one of: the
//!    open frame, one frame in the ring, acknowledged, or counted in the `dropped` total (which
//!    equals `stats().evicted_readings`). Nothing is silently lost: every frame transmitted after
//!    the last discard carries the final total. (A discarded frame may already have reached the agent if
//!    its ack was late, so `dropped` is an upper bound on readings lost; it is exact when the
//!    link was down, the usual cause.)
//! 2. `seq` is dense: 1, 2, 3, ... per boot; each sealed frame keeps its `seq` and readings for
//!    ever, retransmits differ only in `oldest_unacked` and `dropped`. The ring holds consecutive
//!    `seq`s.
//! 3. A frame leaves the ring only by an ack for its boot with `seq >=` its own, or by overflow
//!    (then counted as above).
//! 4. Memory is fixed at compile time (`CAP` frames); no call panics, whatever the input frames,
//!    times or values (arithmetic saturates or wraps by design). Times are expected to stay below
//!    `u64::MAX - max_backoff_ms` (half a billion years of uptime); beyond that every deadline
//!    saturates and each `poll` returns a frame.
//! 5. After `u32::MAX` frames in one boot (49 days even at 1,000 frames a second), `sample`
//!    refuses with [`SampleError::SeqExhausted`]: the firmware must restart with a new boot id.
use edge_protocol::link::{Frame, Hello, Reading, Readings, MAX_READINGS};
use heapless::{Deque, Vec};

pub mod clock;
#[cfg(test)]
mod tests;

use clock::WallClock;

/// What a device is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The device's id on the link.
    pub device_id: u32,
    /// Reported in `Hello`.
    pub firmware_version: u32,
    /// Channels `0..channels` may be sampled.
    pub channels: u8,
    /// An open frame is sealed this long after its first reading, even if not full.
    pub flush_interval_ms: u64,
    /// First retransmit timeout (0 is treated as 1); doubles with every attempt.
    pub retransmit_ms: u64,
    /// Upper bound of the retransmit timeout.
    pub max_backoff_ms: u64,
}

impl Config {
    /// Defaults for a device: 1 channel, 1 s flush interval, 500 ms first timeout, 8 s cap.
    pub const fn new(device_id: u32, firmware_version: u32) -> Self {
        Self {
            device_id,
            firmware_version,
            channels: 1,
            flush_interval_ms: 1_000,
            retransmit_ms: 500,
            max_backoff_ms: 8_000,
        }
    }
}

/// Why [`Device::sample`] refused a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleError {
    /// The channel is not below `Config::channels`.
    UnknownChannel(u8),
    /// This boot has used every `seq`; restart with a new boot id.
    SeqExhausted,
}

impl core::fmt::Display for SampleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownChannel(c) => write!(f, "channel {c} is not configured"),
            Self::SeqExhausted => {
                write!(f, "sequence numbers exhausted; restart with a new boot id")
            }
        }
    }
}

impl core::error::Error for SampleError {}

/// Counters for the current boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Readings accepted by `sample`.
    pub readings: u64,
    /// Frames sealed (given a `seq`).
    pub sealed: u64,
    /// `Readings` frames transmitted, first copies and retransmits.
    pub transmitted: u64,
    /// Of those, retransmits.
    pub retransmits: u64,
    /// `Hello` frames transmitted.
    pub hellos: u64,
    /// Frames freed by acks.
    pub acked: u64,
    /// Frames discarded because the ring was full.
    pub evicted_frames: u64,
    /// Readings in those frames (the `dropped` total frames carry).
    pub evicted_readings: u64,
    /// Acks for this device but another boot.
    pub stale_acks: u64,
    /// Acks for this boot above the highest `seq` sent.
    pub bogus_acks: u64,
}

/// Transmission state of one frame.
#[derive(Debug, Clone, Copy)]
struct Tx {
    /// Copies sent so far.
    attempts: u32,
    /// When the next copy is due.
    due_ms: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    frame: Readings,
    tx: Tx,
}

/// One simulated device; `CAP` (at least 1, checked at compile time) is the number of
/// unacknowledged frames it can hold, about 290 bytes each.
#[derive(Debug, Clone)]
pub struct Device<const CAP: usize> {
    config: Config,
    boot_id: u32,
    /// Uptime to unix time, once a `TimeSync` arrived.
    clock: WallClock,
    open: Vec<Reading, MAX_READINGS>,
    opened_at_ms: u64,
    ring: Deque<Slot, CAP>,
    /// `seq` of the next frame sealed; 0 once exhausted.
    next_seq: u32,
    /// Highest `seq` transmitted; acks above it are bogus.
    highest_sent: u32,
    /// Readings discarded this boot (saturating).
    dropped_total: u32,
    /// `Some` until an ack for this boot arrives.
    hello: Option<Tx>,
    stats: DeviceStats,
}

impl<const CAP: usize> Device<CAP> {
    /// Boots a device: `boot_id` must differ from the device's earlier boots.
    pub fn new(config: Config, boot_id: u32, now_ms: u64) -> Self {
        Self {
            config,
            boot_id,
            clock: WallClock::new(),
            open: Vec::new(),
            opened_at_ms: now_ms,
            ring: Deque::new(),
            next_seq: 1,
            highest_sent: 0,
            dropped_total: 0,
            hello: Some(Tx {
                attempts: 0,
                due_ms: now_ms,
            }),
            stats: DeviceStats::default(),
        }
    }

    /// A power cycle: everything not yet acknowledged is lost, a new boot begins.
    pub fn restart(&mut self, boot_id: u32, now_ms: u64) {
        *self = Self::new(self.config.clone(), boot_id, now_ms);
    }

    /// Takes a reading of `channel` at `now_ms`.
    pub fn sample(&mut self, now_ms: u64, channel: u8, value: f32) -> Result<(), SampleError> {
        if channel >= self.config.channels {
            return Err(SampleError::UnknownChannel(channel));
        }
        if self.next_seq == 0 {
            return Err(SampleError::SeqExhausted);
        }
        self.seal_if_old(now_ms);
        if self.open.is_empty() {
            self.opened_at_ms = now_ms;
        }
        let ts_ms = self.clock.stamp(now_ms);
        // Never full here: a frame is sealed as soon as it fills up.
        let _ = self.open.push(Reading {
            channel,
            ts_ms,
            value,
        });
        self.stats.readings += 1;
        if self.open.is_full() {
            self.seal(now_ms);
        }
        Ok(())
    }

    /// Seals the open frame now, if it holds any reading.
    pub fn flush(&mut self, now_ms: u64) {
        self.seal(now_ms);
    }

    /// The next frame to put on the wire at `now_ms`, if one is due. Call until `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Frame> {
        self.seal_if_old(now_ms);
        if let Some(tx) = self.hello.as_mut() {
            if tx.due_ms <= now_ms {
                tx.attempts = tx.attempts.saturating_add(1);
                tx.due_ms = now_ms.saturating_add(backoff(&self.config, tx.attempts));
                self.stats.hellos += 1;
                return Some(Frame::Hello(Hello {
                    device_id: self.config.device_id,
                    firmware_version: self.config.firmware_version,
                    boot_id: self.boot_id,
                }));
            }
        }
        let oldest_unacked = self.ring.front()?.frame.seq;
        let slot = self.ring.iter_mut().find(|s| s.tx.due_ms <= now_ms)?;
        slot.tx.attempts = slot.tx.attempts.saturating_add(1);
        slot.tx.due_ms = now_ms.saturating_add(backoff(&self.config, slot.tx.attempts));
        let mut frame = slot.frame.clone();
        frame.oldest_unacked = oldest_unacked;
        frame.dropped = self.dropped_total;
        self.stats.transmitted += 1;
        if slot.tx.attempts > 1 {
            self.stats.retransmits += 1;
        }
        self.highest_sent = self.highest_sent.max(frame.seq);
        Some(Frame::Readings(frame))
    }

    /// Handles a frame from the agent. Frames of the other direction are ignored.
    pub fn on_frame(&mut self, now_ms: u64, frame: &Frame) {
        match frame {
            Frame::Ack(ack) => {
                if ack.device_id != self.config.device_id {
                    return; // another device on a shared bus
                }
                if ack.boot_id != self.boot_id {
                    self.stats.stale_acks += 1;
                    return;
                }
                if ack.seq > self.highest_sent {
                    self.stats.bogus_acks += 1;
                    return;
                }
                self.hello = None;
                let mut progress = false;
                while self.ring.front().is_some_and(|s| s.frame.seq <= ack.seq) {
                    self.ring.pop_front();
                    self.stats.acked += 1;
                    progress = true;
                }
                if progress {
                    let first = now_ms.saturating_add(backoff(&self.config, 1));
                    for slot in self.ring.iter_mut().filter(|s| s.tx.attempts > 0) {
                        slot.tx.attempts = 1;
                        slot.tx.due_ms = slot.tx.due_ms.min(first);
                    }
                }
            }
            Frame::TimeSync(sync) => self.clock.sync(now_ms, sync.unix_ms),
            Frame::Hello(_) | Frame::Readings(_) => {}
        }
    }

    /// The earliest time at which `poll` may have something to do (`None`: nothing pending).
    pub fn next_wakeup(&self) -> Option<u64> {
        let seal = (!self.open.is_empty()).then(|| {
            self.opened_at_ms
                .saturating_add(self.config.flush_interval_ms)
        });
        let hello = self.hello.map(|tx| tx.due_ms);
        let frames = self.ring.iter().map(|s| s.tx.due_ms).min();
        [seal, hello, frames].into_iter().flatten().min()
    }

    /// The current boot id.
    pub fn boot_id(&self) -> u32 {
        self.boot_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sealed frames waiting for an ack.
    pub fn unacked(&self) -> usize {
        self.ring.len()
    }

    /// The readings of the open (not yet sealed) frame, oldest first.
    pub fn open_readings(&self) -> &[Reading] {
        &self.open
    }

    /// The sealed frames waiting for an ack, oldest first (consecutive `seq`s). Their
    /// `oldest_unacked` and `dropped` are as of sealing; each transmission carries fresh values.
    pub fn unacked_frames(&self) -> impl Iterator<Item = &Readings> + '_ {
        self.ring.iter().map(|s| &s.frame)
    }

    /// Readings this boot has discarded so far: the `dropped` the next transmission carries.
    pub fn dropped_total(&self) -> u32 {
        self.dropped_total
    }

    /// Readings not yet acknowledged: in the open frame and in the ring.
    pub fn pending_readings(&self) -> usize {
        self.open.len()
            + self
                .ring
                .iter()
                .map(|s| s.frame.readings.len())
                .sum::<usize>()
    }

    /// Whether the agent has acknowledged this boot's `Hello` (or any frame of it).
    pub fn hello_acked(&self) -> bool {
        self.hello.is_none()
    }

    /// Whether a `TimeSync` has arrived this boot (timestamps are unix ms from then on).
    pub fn time_synced(&self) -> bool {
        self.clock.synced()
    }

    /// The wall clock: its offset in use and what it still slews away.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Counters for this boot.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    fn seal_if_old(&mut self, now_ms: u64) {
        let deadline = self
            .opened_at_ms
            .saturating_add(self.config.flush_interval_ms);
        if !self.open.is_empty() && now_ms >= deadline {
            self.seal(now_ms);
        }
    }

    fn seal(&mut self, now_ms: u64) {
        if self.open.is_empty() || self.next_seq == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1); // 0 marks exhaustion
        self.stats.sealed += 1;
        if self.ring.is_full() {
            if let Some(old) = self.ring.pop_front() {
                self.evict(&old.frame);
            }
        }
        // `oldest_unacked` and `dropped` are refreshed on every transmission.
        let frame = Readings {
            device_id: self.config.device_id,
            boot_id: self.boot_id,
            seq,
            oldest_unacked: self.ring.front().map_or(seq, |s| s.frame.seq),
            dropped: self.dropped_total,
            readings: core::mem::take(&mut self.open),
        };
        let slot = Slot {
            frame,
            tx: Tx {
                attempts: 0,
                due_ms: now_ms,
            },
        };
        if let Err(slot) = self.ring.push_back(slot) {
            // Unreachable (a slot was just freed), but never lose count.
            self.evict(&slot.frame);
        }
    }

    fn evict(&mut self, frame: &Readings) {
        let n = u32::try_from(frame.readings.len()).unwrap_or(u32::MAX);
        self.dropped_total = self.dropped_total.saturating_add(n);
        self.stats.evicted_frames += 1;
        self.stats.evicted_readings += u64::from(n);
    }
}

/// Timeout after the `attempts`-th copy: `retransmit_ms * 2^(attempts-1)`, capped.
fn backoff(config: &Config, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(62);
    config
        .retransmit_ms
        .max(1)
        .saturating_mul(1u64 << doublings)
        .min(config.max_backoff_ms.max(1))
}
