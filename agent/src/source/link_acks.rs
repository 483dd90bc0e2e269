//! The agent's side of the serial link's ack rule: which devices and boots it tracks, and
//! the drop totals it counts. The rule itself, per boot, is
//! [`edge_protocol::link_acks::Watermark`] (re-exported here), shared with the simulator's
//! test peer.
//!
//! Per device the state holds its current boot (a new `boot_id` replaces the old one), that
//! boot's [`Watermark`] `W` and the largest `dropped` total it reported.
//!
//! # Invariants and crash reasoning
//!
//! - [`AckState::on_durable`] is called from the ingest writer's ack, i.e. after the commit, so
//!   `W` passes only frames that are durable in the ingest log or that the device declared
//!   discarded through `oldest_unacked` (the rule's invariant): an `Ack` never covers a frame
//!   that is not durable or discarded, and the device frees only what is safe to free.
//! - The state is memory only. After an agent restart `W` starts at 0 again: acks are
//!   cumulative, so a low ack is harmless to the device, `oldest_unacked` raises `W` on the first
//!   frame, and frames the device retransmits that were already committed are dropped by the
//!   ingest dedupe key `(device, boot, seq, index)`.
//! - Memory is bounded: at most [`MAX_DEVICES`] devices, and per device a fixed-size
//!   [`Watermark`] that remembers durable frames up to [`MAX_WAITING`] above `W`; a durable
//!   frame further ahead is not remembered, is retransmitted by the device, deduplicated, and
//!   remembered then.

use std::collections::HashMap;

use edge_protocol::link::{Ack, Hello, Readings};
pub use edge_protocol::link_acks::*;

pub const MAX_DEVICES: usize = 4096;
/// How far above `W` durable frames are remembered (the rule's [`WINDOW`]).
pub const MAX_WAITING: usize = WINDOW as usize;

#[derive(Debug, Clone, Default)]
struct Boot {
    boot_id: u32,
    watermark: Watermark,
    /// Largest running `dropped` total seen this boot.
    dropped: u32,
}

/// What to do with an incoming `Readings` frame.
#[derive(Debug, Clone, PartialEq)]
pub enum OnReadings {
    /// Settled already (`seq <= W`): drop it and send this ack again.
    Duplicate(Ack),
    /// Not settled: make it durable, then call [`AckState::on_durable`].
    Store {
        /// Readings the device newly reported as discarded (growth of its `dropped` total).
        newly_dropped: u32,
    },
}

/// Ack state of every device on one serial line.
#[derive(Debug, Default)]
pub struct AckState {
    devices: HashMap<u32, Boot>,
}

fn ack(device_id: u32, boot: &Boot) -> Ack {
    Ack {
        device_id,
        boot_id: boot.boot_id,
        seq: boot.watermark.seq(),
    }
}

impl AckState {
    fn boot(&mut self, device_id: u32, boot_id: u32) -> Option<&mut Boot> {
        let fresh = self
            .devices
            .get(&device_id)
            .is_none_or(|b| b.boot_id != boot_id);
        if fresh {
            if !self.devices.contains_key(&device_id) && self.devices.len() >= MAX_DEVICES {
                return None;
            }
            self.devices.insert(
                device_id,
                Boot {
                    boot_id,
                    ..Boot::default()
                },
            );
        }
        self.devices.get_mut(&device_id)
    }

    /// A `Hello`: a new boot starts at `W = 0`; the answer is `Ack { seq: W }`.
    pub fn on_hello(&mut self, hello: &Hello) -> Option<Ack> {
        let boot = self.boot(hello.device_id, hello.boot_id)?;
        Some(ack(hello.device_id, boot))
    }

    /// A `Readings` frame arrived.
    pub fn on_readings(&mut self, frame: &Readings) -> Option<OnReadings> {
        let boot = self.boot(frame.device_id, frame.boot_id)?;
        let newly_dropped = frame.dropped.saturating_sub(boot.dropped);
        boot.dropped = boot.dropped.max(frame.dropped);
        match boot.watermark.on_readings(frame.seq, frame.oldest_unacked) {
            Arrival::Settled => Some(OnReadings::Duplicate(ack(frame.device_id, boot))),
            Arrival::Open => Some(OnReadings::Store { newly_dropped }),
        }
    }

    /// The frame `(device, boot, seq)` is durable. Returns the ack to send, if the boot is still
    /// the device's current one.
    pub fn on_durable(&mut self, device_id: u32, boot_id: u32, seq: u32) -> Option<Ack> {
        let boot = self
            .devices
            .get_mut(&device_id)
            .filter(|b| b.boot_id == boot_id)?;
        boot.watermark.on_durable(seq);
        Some(ack(device_id, boot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(seq: u32, oldest_unacked: u32, dropped: u32) -> Readings {
        Readings {
            device_id: 7,
            boot_id: 1,
            seq,
            oldest_unacked,
            dropped,
            readings: heapless::Vec::new(),
        }
    }

    fn hello(boot_id: u32) -> Hello {
        Hello {
            device_id: 7,
            firmware_version: 1,
            boot_id,
        }
    }

    #[test]
    fn a_new_boot_is_acked_with_seq_zero() {
        let mut s = AckState::default();
        assert_eq!(s.on_hello(&hello(1)).map(|a| a.seq), Some(0));
    }

    #[test]
    fn the_ack_advances_only_over_consecutive_durable_frames() {
        let mut s = AckState::default();
        s.on_hello(&hello(1));
        for seq in 1..=3 {
            assert!(matches!(
                s.on_readings(&readings(seq, 1, 0)),
                Some(OnReadings::Store { .. })
            ));
        }
        assert_eq!(
            s.on_durable(7, 1, 2).map(|a| a.seq),
            Some(0),
            "1 is not durable yet"
        );
        assert_eq!(s.on_durable(7, 1, 3).map(|a| a.seq), Some(0));
        assert_eq!(s.on_durable(7, 1, 1).map(|a| a.seq), Some(3));
    }

    #[test]
    fn a_settled_frame_is_a_duplicate_and_re_acked() {
        let mut s = AckState::default();
        s.on_readings(&readings(1, 1, 0));
        s.on_durable(7, 1, 1);
        assert_eq!(
            s.on_readings(&readings(1, 1, 0)),
            Some(OnReadings::Duplicate(Ack {
                device_id: 7,
                boot_id: 1,
                seq: 1
            }))
        );
    }

    #[test]
    fn oldest_unacked_lets_the_ack_pass_frames_the_device_discarded() {
        let mut s = AckState::default();
        s.on_readings(&readings(1, 1, 0));
        s.on_durable(7, 1, 1);
        // Frames 2..=4 were discarded by the device (ring overflow); 5 arrives.
        assert_eq!(
            s.on_readings(&readings(5, 5, 48)),
            Some(OnReadings::Store { newly_dropped: 48 })
        );
        assert_eq!(s.on_durable(7, 1, 5).map(|a| a.seq), Some(5));
    }

    #[test]
    fn the_ack_never_passes_a_frame_that_is_neither_durable_nor_discarded() {
        let mut s = AckState::default();
        // A lying oldest_unacked above seq cannot settle the frame itself.
        assert!(matches!(
            s.on_readings(&readings(3, 9, 0)),
            Some(OnReadings::Store { .. })
        ));
        assert_eq!(s.on_durable(7, 1, 3).map(|a| a.seq), Some(3));
        assert!(matches!(
            s.on_readings(&readings(4, 4, 0)),
            Some(OnReadings::Store { .. })
        ));
    }

    #[test]
    fn acks_for_an_old_boot_are_not_sent_after_a_reboot() {
        let mut s = AckState::default();
        s.on_readings(&readings(1, 1, 0));
        s.on_hello(&hello(2));
        assert_eq!(s.on_durable(7, 1, 1), None);
    }

    #[test]
    fn dropped_totals_count_only_their_growth() {
        let mut s = AckState::default();
        assert_eq!(
            s.on_readings(&readings(1, 1, 5)),
            Some(OnReadings::Store { newly_dropped: 5 })
        );
        assert_eq!(
            s.on_readings(&readings(2, 1, 5)),
            Some(OnReadings::Store { newly_dropped: 0 })
        );
        assert_eq!(
            s.on_readings(&readings(3, 1, 3)),
            Some(OnReadings::Store { newly_dropped: 0 })
        );
    }
}
