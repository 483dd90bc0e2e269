//! Unit tests of the device state machine, with a fake clock (plain `u64` milliseconds) and a
//! lossy fake link that carries real wire bytes through `edge_protocol::link`.
extern crate std;

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use edge_protocol::link::{encode_to_vec, Ack, Decoder, Frame, Readings, TimeSync};

use super::{Config, Device, SampleError};

fn config() -> Config {
    Config {
        device_id: 7,
        firmware_version: 3,
        channels: 4,
        flush_interval_ms: 100,
        retransmit_ms: 50,
        max_backoff_ms: 400,
    }
}

fn ack(boot_id: u32, seq: u32) -> Frame {
    Frame::Ack(Ack {
        device_id: 7,
        boot_id,
        seq,
    })
}

/// Everything `poll` has to send at `now`.
fn drain<const CAP: usize>(dev: &mut Device<CAP>, now: u64) -> Vec<Frame> {
    core::iter::from_fn(|| dev.poll(now)).collect()
}

fn readings(frames: &[Frame]) -> Vec<&Readings> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Readings(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// A booted device whose `Hello` has been sent and acknowledged.
fn booted<const CAP: usize>() -> Device<CAP> {
    let mut dev = Device::new(config(), 42, 0);
    assert!(matches!(dev.poll(0), Some(Frame::Hello(_))));
    dev.on_frame(0, &ack(42, 0));
    dev
}

#[test]
fn hello_comes_first_and_repeats_until_an_ack_for_the_boot() {
    let mut dev: Device<4> = Device::new(config(), 42, 0);
    dev.sample(0, 0, 1.0).unwrap();
    dev.flush(0);
    let first = drain(&mut dev, 0);
    assert!(
        matches!(&first[0], Frame::Hello(h) if h.boot_id == 42 && h.device_id == 7 && h.firmware_version == 3)
    );
    assert!(matches!(first[1], Frame::Readings(_)));
    assert!(
        matches!(dev.poll(50), Some(Frame::Hello(_))),
        "hello is retransmitted"
    );
    dev.on_frame(60, &ack(42, 0));
    assert!(dev.hello_acked());
    assert!(
        readings(&drain(&mut dev, 10_000)).len() == 1,
        "only the frame is retransmitted"
    );
}

#[test]
fn a_frame_is_sealed_when_it_holds_sixteen_readings() {
    let mut dev: Device<4> = booted();
    for i in 0..16 {
        dev.sample(1, 0, i as f32).unwrap();
    }
    let sent = drain(&mut dev, 1);
    let r = readings(&sent);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].seq, r[0].readings.len(), r[0].dropped), (1, 16, 0));
}

#[test]
fn a_partial_frame_is_sealed_after_the_flush_interval() {
    let mut dev: Device<4> = booted();
    dev.sample(10, 0, 1.0).unwrap();
    assert!(drain(&mut dev, 109).is_empty());
    assert_eq!(dev.next_wakeup(), Some(110));
    assert_eq!(readings(&drain(&mut dev, 110)).len(), 1);
}

#[test]
fn a_sample_after_the_flush_interval_starts_a_new_frame() {
    let mut dev: Device<4> = booted();
    dev.sample(0, 0, 1.0).unwrap();
    dev.sample(200, 1, 2.0).unwrap();
    dev.flush(200);
    let sent = drain(&mut dev, 200);
    let r = readings(&sent);
    assert_eq!(
        r.iter()
            .map(|r| (r.seq, r.readings.len()))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 1)]
    );
}

#[test]
fn an_unconfigured_channel_is_refused() {
    let mut dev: Device<4> = booted();
    assert_eq!(dev.sample(0, 4, 1.0), Err(SampleError::UnknownChannel(4)));
    assert_eq!(dev.pending_readings(), 0);
}

#[test]
fn a_cumulative_ack_frees_every_frame_up_to_its_seq() {
    let mut dev: Device<8> = booted();
    for t in 0..5 {
        dev.sample(t, 0, t as f32).unwrap();
        dev.flush(t);
    }
    assert_eq!(readings(&drain(&mut dev, 5)).len(), 5);
    dev.on_frame(6, &ack(42, 3));
    assert_eq!(dev.unacked(), 2);
    let again = drain(&mut dev, 1_000);
    let r = readings(&again);
    assert_eq!(
        r.iter()
            .map(|r| (r.seq, r.oldest_unacked))
            .collect::<Vec<_>>(),
        [(4, 4), (5, 4)]
    );
}

#[test]
fn acks_for_another_boot_another_device_or_an_unsent_seq_are_ignored() {
    let mut dev: Device<8> = booted();
    dev.sample(0, 0, 1.0).unwrap();
    dev.flush(0);
    drain(&mut dev, 0);
    dev.on_frame(1, &ack(41, 1));
    dev.on_frame(
        1,
        &Frame::Ack(Ack {
            device_id: 8,
            boot_id: 42,
            seq: 1,
        }),
    );
    dev.on_frame(1, &ack(42, 2));
    assert_eq!(dev.unacked(), 1);
    assert_eq!((dev.stats().stale_acks, dev.stats().bogus_acks), (1, 1));
    dev.on_frame(1, &ack(42, 1));
    assert_eq!(dev.unacked(), 0);
}

#[test]
fn retransmit_backoff_doubles_and_caps() {
    let mut dev: Device<4> = booted();
    dev.sample(0, 0, 1.0).unwrap();
    dev.flush(0);
    let mut sent_at = Vec::new();
    for now in 0..3_000 {
        for f in drain(&mut dev, now) {
            if let Frame::Readings(r) = f {
                assert_eq!(r.seq, 1);
                sent_at.push(now);
            }
        }
    }
    let gaps: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps[..6], [50, 100, 200, 400, 400, 400]);
    assert!(gaps.iter().all(|&g| g <= 400));
}

#[test]
fn an_ack_that_makes_progress_resets_the_backoff_of_the_rest() {
    let mut dev: Device<4> = booted();
    for t in 0..2 {
        dev.sample(t, 0, 1.0).unwrap();
        dev.flush(t);
    }
    for now in 0..1_000 {
        drain(&mut dev, now); // both frames are now at the 400 ms cap
    }
    dev.on_frame(1_000, &ack(42, 1));
    let next = dev.next_wakeup().unwrap();
    assert!(
        next <= 1_050,
        "frame 2 retried within the first timeout, not the cap: {next}"
    );
}

#[test]
fn ring_overflow_discards_the_oldest_frame_and_reports_its_readings_in_dropped() {
    let mut dev: Device<2> = booted();
    for (t, n) in [(0u64, 3usize), (1, 2), (2, 1), (3, 1)] {
        for _ in 0..n {
            dev.sample(t, 0, 0.0).unwrap();
        }
        dev.flush(t);
    }
    // seq 1 (3 readings) went when seq 3 was sealed, seq 2 (2 readings) when seq 4 was.
    let sent = drain(&mut dev, 3);
    let r = readings(&sent);
    assert_eq!(
        r.iter()
            .map(|r| (r.seq, r.oldest_unacked, r.dropped, r.readings.len()))
            .collect::<Vec<_>>(),
        [(3, 3, 5, 1), (4, 3, 5, 1)]
    );
    assert_eq!(
        (dev.stats().evicted_frames, dev.stats().evicted_readings),
        (2, 5)
    );
}

#[test]
fn dropped_is_a_running_total_that_retransmits_bring_up_to_date() {
    let mut dev: Device<1> = booted();
    dev.sample(0, 0, 0.0).unwrap();
    dev.flush(0);
    let first = drain(&mut dev, 0);
    assert_eq!(readings(&first)[0].dropped, 0);
    for t in 1..3 {
        dev.sample(t, 0, 0.0).unwrap();
        dev.sample(t, 0, 0.0).unwrap();
        dev.flush(t); // evicts the frame before
    }
    let sent = drain(&mut dev, 2);
    assert_eq!((readings(&sent)[0].seq, readings(&sent)[0].dropped), (3, 3));
    dev.sample(5_000, 0, 0.0).unwrap();
    dev.flush(5_000); // evicts seq 3 (2 readings)
    let later = drain(&mut dev, 5_000);
    assert_eq!(
        (readings(&later)[0].seq, readings(&later)[0].dropped),
        (4, 5)
    );
}

#[test]
fn time_sync_turns_timestamps_into_unix_ms() {
    let mut dev: Device<4> = booted();
    dev.sample(1_000, 0, 1.0).unwrap();
    dev.on_frame(
        2_000,
        &Frame::TimeSync(TimeSync {
            unix_ms: 1_700_000_000_000,
        }),
    );
    assert!(dev.time_synced());
    dev.sample(2_500, 1, 2.0).unwrap();
    dev.flush(2_500);
    let sent = drain(&mut dev, 2_500);
    let ts: Vec<u64> = readings(&sent)
        .iter()
        .flat_map(|r| r.readings.iter().map(|x| x.ts_ms))
        .collect();
    assert_eq!(ts, [1_000, 1_700_000_000_500]);
}

#[test]
fn later_time_syncs_are_taken_forward_at_once_and_backward_without_going_back() {
    let unix = 1_700_000_000_000;
    let mut dev: Device<8> = booted();
    dev.on_frame(0, &Frame::TimeSync(TimeSync { unix_ms: unix }));
    dev.sample(1_000, 0, 1.0).unwrap();
    // The device's clock ran 100 ms slow: the next sync steps it forward.
    dev.on_frame(
        2_000,
        &Frame::TimeSync(TimeSync {
            unix_ms: unix + 2_100,
        }),
    );
    dev.sample(2_000, 0, 2.0).unwrap();
    // Then 100 ms fast: slewed in at half speed, never stamped backwards.
    dev.on_frame(
        3_000,
        &Frame::TimeSync(TimeSync {
            unix_ms: unix + 3_000,
        }),
    );
    dev.sample(3_000, 0, 3.0).unwrap();
    dev.sample(3_100, 0, 4.0).unwrap();
    dev.sample(3_400, 0, 5.0).unwrap();
    dev.flush(3_400);
    let sent = drain(&mut dev, 3_400);
    let ts: Vec<u64> = readings(&sent)
        .iter()
        .flat_map(|r| r.readings.iter().map(|x| x.ts_ms - unix))
        .collect();
    assert_eq!(ts, [1_000, 2_100, 3_100, 3_150, 3_400]);
    assert_eq!(dev.clock().surplus_ms(), 0);
}

#[test]
fn a_restart_starts_a_new_boot_with_hello_and_seq_one() {
    let mut dev: Device<4> = booted();
    dev.sample(0, 0, 1.0).unwrap();
    dev.flush(0);
    drain(&mut dev, 0);
    dev.restart(43, 10);
    assert_eq!((dev.boot_id(), dev.unacked()), (43, 0));
    dev.sample(10, 0, 1.0).unwrap();
    dev.flush(10);
    let sent = drain(&mut dev, 10);
    assert!(matches!(&sent[0], Frame::Hello(h) if h.boot_id == 43));
    assert!(matches!(&sent[1], Frame::Readings(r) if r.seq == 1 && r.boot_id == 43));
    dev.on_frame(11, &ack(42, 1));
    assert_eq!(dev.unacked(), 1, "an ack for the old boot frees nothing");
}

#[test]
fn extreme_times_and_configs_never_panic() {
    let cfg = Config {
        retransmit_ms: 0,
        max_backoff_ms: u64::MAX,
        flush_interval_ms: u64::MAX,
        ..config()
    };
    let mut dev: Device<2> = Device::new(cfg, 1, u64::MAX - 5);
    for t in (u64::MAX - 5)..=u64::MAX {
        dev.sample(t, 0, f32::NAN).unwrap();
        dev.on_frame(t, &Frame::TimeSync(TimeSync { unix_ms: 0 }));
        dev.on_frame(
            t,
            &Frame::Ack(Ack {
                device_id: 7,
                boot_id: 1,
                seq: u32::MAX,
            }),
        );
        // At the end of time every deadline saturates to "now", so poll a bounded number of times.
        (0..64).for_each(|_| drop(dev.poll(t)));
    }
    dev.flush(u64::MAX);
    assert!(dev.poll(u64::MAX).is_some());
}

// ---------------------------------------------------------------------------------------------
// The lossy link.

/// xorshift64: a seeded, dependency-free RNG for the fake link.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One direction of a serial line that loses, corrupts, duplicates and reorders whole frames.
struct LossyLine {
    in_flight: Vec<(u64, Vec<u8>)>,
    loss_pct: u64,
}

impl LossyLine {
    fn send(&mut self, rng: &mut Rng, now: u64, frame: &Frame, down: bool) {
        if down || rng.chance(self.loss_pct) {
            return;
        }
        let copies = if rng.chance(10) { 2 } else { 1 };
        for _ in 0..copies {
            let mut bytes = encode_to_vec(frame).unwrap().to_vec();
            if rng.chance(5) {
                let i = (rng.next() as usize) % bytes.len();
                bytes[i] ^= 1 << (rng.next() % 8); // the decoder must count and skip it
            }
            // 1..=40 ms latency: later copies overtake earlier ones, i.e. reordering.
            self.in_flight.push((now + 1 + rng.next() % 40, bytes));
        }
    }

    fn deliver(&mut self, now: u64, dec: &mut Decoder, mut on_frame: impl FnMut(Frame)) {
        let (due, rest): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(at, _)| *at <= now);
        self.in_flight = rest;
        for (_, bytes) in due {
            dec.feed(&bytes, |r| {
                if let Ok(f) = r {
                    on_frame(f)
                }
            });
        }
    }
}

/// The agent side, following the ack rule of `protocol/FORMAT.md`.
#[derive(Default)]
struct Receiver {
    watermark: u32,
    /// Durable frames by seq (dedupe by (device, boot, seq); one device and boot here).
    frames: BTreeMap<u32, Readings>,
    duplicates: u64,
    max_dropped: u64,
}

impl Receiver {
    fn on_frame(&mut self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Hello(h) => Some(ack(h.boot_id, self.watermark)),
            Frame::Readings(r) => {
                let boot = r.boot_id;
                self.max_dropped = self.max_dropped.max(u64::from(r.dropped));
                if r.seq <= self.watermark || self.frames.contains_key(&r.seq) {
                    self.duplicates += 1;
                } else {
                    self.watermark = self.watermark.max(r.oldest_unacked.saturating_sub(1));
                    self.frames.insert(r.seq, r);
                }
                while self.frames.contains_key(&(self.watermark + 1)) {
                    self.watermark += 1;
                }
                Some(ack(boot, self.watermark))
            }
            _ => None,
        }
    }
}

struct Outcome {
    sampled: BTreeSet<u32>,
    delivered: Vec<u32>,
    /// Largest `dropped` the receiver saw.
    dropped_reported: u64,
    evicted_readings: u64,
    duplicates: u64,
}

/// Runs a device against a receiver over two lossy lines for `run_ms`, with the link down during
/// `outage`, then lets it drain over a clean link. Each reading's value is its serial number.
fn run_lossy<const CAP: usize>(seed: u64, run_ms: u64, outage: core::ops::Range<u64>) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut dev: Device<CAP> = Device::new(config(), 42, 0);
    let mut up = LossyLine {
        in_flight: Vec::new(),
        loss_pct: 20,
    };
    let mut down = LossyLine {
        in_flight: Vec::new(),
        loss_pct: 20,
    };
    let (mut dev_dec, mut rx_dec) = (Decoder::new(), Decoder::new());
    let mut rx = Receiver::default();
    let mut sampled = BTreeSet::new();
    let mut serial = 0u32;

    let mut now = 0u64;
    while now < run_ms || dev.unacked() > 0 || !dev.hello_acked() || dev.pending_readings() > 0 {
        let draining = now >= run_ms;
        if draining {
            up.loss_pct = 0;
            down.loss_pct = 0;
            dev.flush(now);
        } else if rng.chance(30) {
            let channel = (rng.next() % 4) as u8;
            dev.sample(now, channel, serial as f32).unwrap();
            sampled.insert(serial);
            serial += 1;
        }
        let link_down = outage.contains(&now);
        while let Some(frame) = dev.poll(now) {
            up.send(&mut rng, now, &frame, link_down);
        }
        let mut replies = Vec::new();
        up.deliver(now, &mut rx_dec, |f| replies.extend(rx.on_frame(f)));
        if now % 500 == 0 {
            replies.push(Frame::TimeSync(TimeSync {
                unix_ms: 1_700_000_000_000 + now,
            }));
        }
        for reply in &replies {
            down.send(&mut rng, now, reply, link_down);
        }
        down.deliver(now, &mut dev_dec, |f| dev.on_frame(now, &f));
        now += 1;
        assert!(
            now < run_ms + 600_000,
            "the device drains once the link is clean"
        );
    }

    let delivered = rx
        .frames
        .values()
        .flat_map(|r| r.readings.iter().map(|x| x.value as u32))
        .collect();
    Outcome {
        sampled,
        delivered,
        dropped_reported: rx.max_dropped,
        evicted_readings: dev.stats().evicted_readings,
        duplicates: rx.duplicates,
    }
}

#[test]
fn a_lossy_link_delivers_every_reading_exactly_once() {
    for seed in 0..12 {
        let out = run_lossy::<64>(seed, 20_000, 0..0);
        assert!(
            out.duplicates > 0,
            "seed {seed}: the link did duplicate frames"
        );
        let mut got = out.delivered.clone();
        got.sort_unstable();
        assert_eq!(
            got,
            out.sampled.iter().copied().collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert_eq!(
            (out.dropped_reported, out.evicted_readings),
            (0, 0),
            "seed {seed}"
        );
    }
}

#[test]
fn a_lossy_link_with_an_outage_delivers_each_reading_once_or_reports_it_in_dropped() {
    for seed in 0..12 {
        let out = run_lossy::<4>(seed, 30_000, 5_000..15_000);
        let delivered: BTreeSet<u32> = out.delivered.iter().copied().collect();
        assert_eq!(
            delivered.len(),
            out.delivered.len(),
            "seed {seed}: a reading arrived twice"
        );
        assert!(delivered.is_subset(&out.sampled), "seed {seed}");
        let missing = (out.sampled.len() - delivered.len()) as u64;
        assert!(
            out.evicted_readings > 0,
            "seed {seed}: the outage overflowed the ring"
        );
        assert_eq!(
            out.dropped_reported, out.evicted_readings,
            "seed {seed}: every discard reported"
        );
        assert!(
            missing <= out.dropped_reported,
            "seed {seed}: {missing} missing, {} reported",
            out.dropped_reported
        );
    }
}

#[test]
fn the_accessors_show_the_open_frame_the_ring_and_the_dropped_total() {
    let mut dev: Device<2> = booted();
    for t in 0..3 {
        dev.sample(t, 0, t as f32).unwrap();
        dev.flush(t);
    }
    dev.sample(3, 1, 9.0).unwrap();
    assert_eq!(dev.open_readings().len(), 1);
    let held: Vec<(u32, u32, u32)> = dev
        .unacked_frames()
        .map(|r| (r.seq, r.oldest_unacked, r.dropped))
        .collect();
    assert_eq!(held, [(2, 1, 0), (3, 2, 1)], "as of sealing");
    assert_eq!((dev.dropped_total(), dev.pending_readings()), (1, 3));
}

#[test]
fn sequence_numbers_run_out_with_an_error_not_a_wrap() {
    let mut dev: Device<4> = booted();
    dev.next_seq = u32::MAX;
    dev.sample(0, 0, 1.0).unwrap();
    dev.flush(0);
    let sent = drain(&mut dev, 0);
    assert_eq!(readings(&sent)[0].seq, u32::MAX);
    assert_eq!(dev.sample(1, 0, 1.0), Err(SampleError::SeqExhausted));
    dev.on_frame(2, &ack(42, u32::MAX));
    assert_eq!(dev.unacked(), 0);
}
