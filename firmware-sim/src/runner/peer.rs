//! A minimal agent side of the serial link, for tests and benchmarks: decode, deduplicate, ack.
//!
//! This is not the agent (which makes readings durable before it acknowledges them); it is the
//! smallest peer that follows the link contract of `protocol/FORMAT.md`, so that the simulator
//! can be tested and measured on its own:
//!
//! - bytes go through [`edge_protocol::link::Decoder`]; errors are counted, never fatal;
//! - a `Hello` is answered with `Ack { seq: W }` and a `TimeSync` (host clock);
//! - a `Readings` frame is accepted once per `(device_id, boot_id, seq)`; duplicates are counted
//!   and dropped;
//! - acks follow "the receiver's ack rule" of `protocol/FORMAT.md`, the same code the agent runs
//!   ([`edge_protocol::link_acks::Watermark`], one per `(device_id, boot_id)`), with a frame
//!   durable as soon as it arrives: `W` rises to `oldest_unacked - 1` (the device no longer
//!   holds anything below) and then while `W + 1` has arrived, so a frame still missing
//!   (corrupted in transit, or held back by reordering) is never acknowledged by accident. Every
//!   `Readings` frame, accepted or duplicate, is answered with `Ack { seq: W }`, so a lost `Ack`
//!   is repaired by the device's next retransmit.

use std::collections::HashMap;

use edge_protocol::link::{self, Ack, Decoder, DecoderStats, Frame, TimeSync, MAX_FRAME_LEN};
use edge_protocol::link_acks::{Arrival, Durable, Watermark};

use super::ledger::{unix_ms_now, LedgerReading};

/// One `Readings` frame as the peer accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub device_id: u32,
    pub boot_id: u32,
    pub seq: u32,
    pub oldest_unacked: u32,
    pub dropped: u32,
    pub readings: Vec<LedgerReading>,
}

/// The agent side of the link (no I/O: feed it bytes, send what it returns).
#[derive(Debug, Default)]
pub struct Peer {
    decoder: Decoder,
    streams: HashMap<(u32, u32), Watermark>,
    /// Frames accepted, in arrival order.
    pub accepted: Vec<Accepted>,
    /// `Hello` frames seen, as `(device_id, boot_id)`.
    pub hellos: Vec<(u32, u32)>,
    /// `Readings` frames that were duplicates of accepted ones.
    pub duplicates: u64,
    /// Frames that did not decode (CRC, COBS, malformed, oversized).
    pub errors: u64,
    /// Frames of a kind a device must not send (`Ack`, `TimeSync`).
    pub unexpected: u64,
}

impl Peer {
    /// A peer with nothing received.
    pub fn new() -> Peer {
        Peer::default()
    }

    /// Feeds received bytes; returns the wire bytes to send back (acks and time syncs).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut frames = Vec::new();
        let mut errors = 0;
        self.decoder.feed(chunk, |result| match result {
            Ok(frame) => frames.push(frame),
            Err(_) => errors += 1,
        });
        self.errors += errors;
        let mut out = Vec::new();
        for frame in frames {
            let reply = match frame {
                Frame::Hello(hello) => {
                    self.hellos.push((hello.device_id, hello.boot_id));
                    let watermark = self
                        .streams
                        .entry((hello.device_id, hello.boot_id))
                        .or_default();
                    push_frame(
                        &mut out,
                        &Frame::Ack(Ack {
                            device_id: hello.device_id,
                            boot_id: hello.boot_id,
                            seq: watermark.seq(),
                        }),
                    );
                    Some(Frame::TimeSync(TimeSync {
                        unix_ms: unix_ms_now(),
                    }))
                }
                Frame::Readings(r) => {
                    let watermark = self.streams.entry((r.device_id, r.boot_id)).or_default();
                    // Durable on arrival. `Beyond` (more than the rule's window ahead) cannot
                    // happen with the simulator's 64-frame ring; it would count as accepted.
                    let fresh = watermark.on_readings(r.seq, r.oldest_unacked) == Arrival::Open
                        && matches!(watermark.on_durable(r.seq), Durable::New | Durable::Beyond);
                    let ack = Ack {
                        device_id: r.device_id,
                        boot_id: r.boot_id,
                        seq: watermark.seq(),
                    };
                    if fresh {
                        self.accepted.push(Accepted {
                            device_id: r.device_id,
                            boot_id: r.boot_id,
                            seq: r.seq,
                            oldest_unacked: r.oldest_unacked,
                            dropped: r.dropped,
                            readings: r
                                .readings
                                .iter()
                                .map(|x| LedgerReading {
                                    channel: x.channel,
                                    ts_ms: x.ts_ms,
                                    value: x.value,
                                })
                                .collect(),
                        });
                    } else {
                        self.duplicates += 1;
                    }
                    Some(Frame::Ack(ack))
                }
                Frame::Ack(_) | Frame::TimeSync(_) => {
                    self.unexpected += 1;
                    None
                }
            };
            if let Some(reply) = reply {
                push_frame(&mut out, &reply);
            }
        }
        out
    }

    /// The decoder's counters.
    pub fn decoder_stats(&self) -> DecoderStats {
        self.decoder.stats()
    }

    /// Readings accepted so far.
    pub fn readings(&self) -> usize {
        self.accepted.iter().map(|a| a.readings.len()).sum()
    }
}

/// Appends the wire bytes of `frame` (agent-side frames always fit).
fn push_frame(out: &mut Vec<u8>, frame: &Frame) {
    let mut buf = [0u8; MAX_FRAME_LEN];
    if let Ok(n) = link::encode(frame, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}
