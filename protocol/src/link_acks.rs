//! The receiver's ack rule of the serial link ([`crate::link`], "The receiver's ack rule"), for
//! one `(device_id, boot_id)`: a state machine with no I/O and no allocator.
//!
//! Both receivers use it: the agent (`edge_agent::source::link_acks`, which keeps one
//! [`Watermark`] per device and calls [`Watermark::on_durable`] after the ingest commit) and the
//! simulator's test peer (`firmware_sim::runner::peer`, for which a frame is durable on arrival).
//! Which boots they keep, and for how many devices, is theirs to decide; the rule is here.
//!
//! # Map
//!
//! - [`Watermark`]: the watermark `W` of one boot and the durable frames above it.
//! - [`Watermark::on_readings`]: a `Readings` frame arrived; raises `W` over what the device
//!   declared discarded and says whether the frame is already settled ([`Arrival`]).
//! - [`Watermark::on_durable`]: the frame is durable; remembers it and advances `W` over
//!   consecutive durable frames ([`Durable`]).
//! - [`Watermark::seq`]: `W`, the `seq` of the `Ack` to send.
//!
//! # Invariants
//!
//! - `W` only passes a `seq` that was reported durable through [`Watermark::on_durable`] or that
//!   lies below a frame's `oldest_unacked`, and never the frame's own `seq` through
//!   `oldest_unacked` (a frame that claims `oldest_unacked > seq` settles at most `seq - 1`). So an
//!   `Ack { seq: W }` never covers a frame that is neither durable nor discarded: the device frees
//!   only what is safe to free.
//! - `W` never decreases.
//! - Memory is fixed: durable frames are remembered only within [`WINDOW`] of `W`
//!   (`W < seq <= W + WINDOW`), one bit each. A durable frame further ahead is not remembered
//!   ([`Durable::Beyond`]); the device retransmits it and it is remembered then. A device cannot
//!   get that far ahead: `oldest_unacked` raises `W` to within its ring (64 frames in the
//!   simulator) of every frame it sends.

/// How far above `W` durable frames are remembered, in `seq` numbers.
pub const WINDOW: u32 = 1024;

const WORDS: usize = (WINDOW / 32) as usize;

/// What a `Readings` frame is, as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// `seq <= W`: settled already. Drop it and send `Ack { seq: W }` again.
    Settled,
    /// Not settled: make it durable, then call [`Watermark::on_durable`].
    Open,
}

/// What [`Watermark::on_durable`] did with a durable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Remembered for the first time (and `W` advanced over it if the gap below was closed).
    New,
    /// Already remembered: the frame arrived before.
    Again,
    /// At or below `W`: settled already.
    Settled,
    /// More than [`WINDOW`] above `W`: not remembered.
    Beyond,
}

/// The ack state of one `(device_id, boot_id)`: `W` and the durable frames above it.
///
/// A new boot starts at `W = 0` (`Watermark::default()`); the answer to its `Hello` is
/// `Ack { seq: 0 }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Watermark {
    /// `W`: every `seq <= W` is settled.
    seq: u32,
    /// Bit `s % WINDOW` is set when frame `s` (`W < s <= W + WINDOW`) is durable; bits of `seq`
    /// numbers at or below `W` are always clear.
    durable: [u32; WORDS],
}

impl Watermark {
    /// A new boot: `W = 0`, nothing durable.
    pub const fn new() -> Self {
        Self {
            seq: 0,
            durable: [0; WORDS],
        }
    }

    /// `W`: the `seq` of the `Ack` to send.
    pub const fn seq(&self) -> u32 {
        self.seq
    }

    /// A `Readings` frame `seq` arrived, telling that the device holds nothing below
    /// `oldest_unacked`. Raises `W` to `min(oldest_unacked, seq) - 1` if that is higher, then
    /// over the durable frames that follow.
    pub fn on_readings(&mut self, seq: u32, oldest_unacked: u32) -> Arrival {
        let settled_below = oldest_unacked.saturating_sub(1).min(seq.saturating_sub(1));
        self.raise(settled_below);
        if seq <= self.seq {
            Arrival::Settled
        } else {
            Arrival::Open
        }
    }

    /// Frame `seq` is durable: remember it and advance `W` over consecutive durable frames.
    pub fn on_durable(&mut self, seq: u32) -> Durable {
        if seq <= self.seq {
            return Durable::Settled;
        }
        if seq - self.seq > WINDOW {
            return Durable::Beyond;
        }
        let (word, bit) = slot(seq);
        if self.durable[word] & bit != 0 {
            return Durable::Again;
        }
        self.durable[word] |= bit;
        self.advance();
        Durable::New
    }

    /// Raises `W` to `to` (if higher), forgetting the frames it passes, then advances.
    fn raise(&mut self, to: u32) {
        if to <= self.seq {
            return;
        }
        if to - self.seq >= WINDOW {
            self.durable = [0; WORDS];
        } else {
            for s in self.seq + 1..=to {
                let (word, bit) = slot(s);
                self.durable[word] &= !bit;
            }
        }
        self.seq = to;
        self.advance();
    }

    /// Moves `W` over consecutive durable frames, clearing their bits.
    fn advance(&mut self) {
        while let Some(next) = self.seq.checked_add(1) {
            let (word, bit) = slot(next);
            if self.durable[word] & bit == 0 {
                break;
            }
            self.durable[word] &= !bit;
            self.seq = next;
        }
    }
}

/// The word and bit of `seq` in the durable bitmap.
const fn slot(seq: u32) -> (usize, u32) {
    let i = seq % WINDOW;
    ((i / 32) as usize, 1 << (i % 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_boot_acks_seq_zero() {
        assert_eq!(Watermark::new().seq(), 0);
        assert_eq!(Watermark::default(), Watermark::new());
    }

    #[test]
    fn the_ack_advances_only_over_consecutive_durable_frames() {
        let mut w = Watermark::new();
        for seq in 1..=3 {
            assert_eq!(w.on_readings(seq, 1), Arrival::Open);
        }
        assert_eq!(w.on_durable(2), Durable::New);
        assert_eq!(w.seq(), 0, "1 is not durable yet");
        assert_eq!(w.on_durable(3), Durable::New);
        assert_eq!(w.seq(), 0);
        assert_eq!(w.on_durable(1), Durable::New);
        assert_eq!(w.seq(), 3);
    }

    #[test]
    fn a_settled_frame_is_settled_and_a_remembered_one_is_again() {
        let mut w = Watermark::new();
        w.on_durable(1);
        assert_eq!(w.on_readings(1, 1), Arrival::Settled);
        assert_eq!(w.on_durable(1), Durable::Settled);
        assert_eq!(w.on_durable(3), Durable::New);
        assert_eq!(w.on_readings(3, 2), Arrival::Open);
        assert_eq!(w.on_durable(3), Durable::Again);
    }

    #[test]
    fn oldest_unacked_lets_the_ack_pass_frames_the_device_discarded() {
        let mut w = Watermark::new();
        w.on_durable(1);
        // Frames 2..=4 were discarded by the device (ring overflow); 5 arrives.
        assert_eq!(w.on_readings(5, 5), Arrival::Open);
        assert_eq!(w.seq(), 4);
        w.on_durable(5);
        assert_eq!(w.seq(), 5);
    }

    #[test]
    fn the_ack_never_passes_a_frame_that_is_neither_durable_nor_discarded() {
        let mut w = Watermark::new();
        // A lying oldest_unacked above seq cannot settle the frame itself.
        assert_eq!(w.on_readings(3, 9), Arrival::Open);
        assert_eq!(w.seq(), 2);
        w.on_durable(3);
        assert_eq!(w.seq(), 3);
        assert_eq!(w.on_readings(4, 4), Arrival::Open);
    }

    #[test]
    fn raising_over_remembered_frames_forgets_them_and_continues_past_durable_ones() {
        let mut w = Watermark::new();
        w.on_durable(3);
        w.on_durable(6);
        w.on_durable(7);
        assert_eq!(
            w.on_readings(6, 6),
            Arrival::Settled,
            "5 discarded, 6 and 7 durable"
        );
        assert_eq!(w.seq(), 7);
        // A jump of more than the window clears everything.
        w.on_durable(8 + WINDOW - 1);
        w.on_readings(10 * WINDOW, 10 * WINDOW);
        assert_eq!(w.seq(), 10 * WINDOW - 1);
        assert_eq!(w.on_durable(10 * WINDOW), Durable::New);
        assert_eq!(w.seq(), 10 * WINDOW);
    }

    #[test]
    fn frames_beyond_the_window_are_not_remembered() {
        let mut w = Watermark::new();
        assert_eq!(w.on_durable(WINDOW + 1), Durable::Beyond);
        assert_eq!(w.on_durable(WINDOW), Durable::New);
        assert_eq!(w.seq(), 0);
    }

    #[test]
    fn the_watermark_stops_at_the_last_seq() {
        let mut w = Watermark::new();
        w.on_readings(u32::MAX, u32::MAX);
        assert_eq!(w.seq(), u32::MAX - 1);
        assert_eq!(w.on_durable(u32::MAX), Durable::New);
        assert_eq!(w.seq(), u32::MAX);
        assert_eq!(w.on_readings(u32::MAX, u32::MAX), Arrival::Settled);
    }
}
