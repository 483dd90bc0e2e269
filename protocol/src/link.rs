//! The serial link between sensor firmware and the gateway agent: frames, codec, stream decoder.
//!
//! The exact bytes, the stability promise and the golden vectors are in `protocol/FORMAT.md`;
//! `tests/link_golden.rs` checks those vectors byte for byte. In short, one frame on the wire is
//!
//! ```text
//! 0x00 COBS( version:u8 = 1 | postcard(Frame) | crc32:u32 LE ) 0x00
//! ```
//!
//! with CRC-32/ISO-HDLC (the zlib/Ethernet CRC) over the version byte and the postcard body.
//!
//! # Directions and meaning
//!
//! - device -> agent: [`Hello`] first after every boot, repeated until an `Ack` for that boot
//!   arrives, and [`Readings`] frames numbered `seq = 1, 2, ...` per `(device_id, boot_id)`.
//!   `dropped` is the running total of readings the device has discarded (ring overflow) in this
//!   boot; the receiver keeps the largest value it sees. `oldest_unacked` is the lowest `seq` the
//!   device still holds: every lower `seq` is either acknowledged or discarded for good.
//! - agent -> device: [`Ack`] is cumulative: it acknowledges every `Readings` frame of that
//!   `(device_id, boot_id)` with a sequence number `<= seq`; `seq = 0` acknowledges only the
//!   `Hello`. [`TimeSync`] gives the device the gateway's clock (unix milliseconds).
//!
//! # The receiver's ack rule
//!
//! Per `(device_id, boot_id)` the receiver keeps a watermark `W` (initially 0): every `seq <= W`
//! is settled, i.e. durable or known to be discarded. On a `Readings` frame it raises `W` to at
//! least `oldest_unacked - 1`, then, once the frame is durable, advances `W` over every
//! consecutive `seq` it holds, and sends `Ack { seq: W }`. It must never ack a `seq` it has neither
//! received nor been told is discarded: the device frees acked frames. On a `Hello` it sends
//! `Ack { seq: W }` too (0 for a new boot). Frames with `seq <= W` are duplicates: re-ack, drop.
//! Without `oldest_unacked` a frame discarded by the device would leave a hole that a cumulative
//! ack could never pass.
//!
//! # Invariants
//!
//! - [`encode`] never writes more than [`MAX_FRAME_LEN`] bytes, and every frame it writes decodes
//!   to an equal `Frame` (bit-equal for `f32` values, NaN payloads included).
//! - An encoded frame has a `0x00` at both ends and none inside, so a receiver can always
//!   resynchronize at the next `0x00`, and garbage *between* frames (noise on an idle line, half a
//!   frame sent before a reset) is cut off by the next frame's leading `0x00` instead of being glued
//!   to it.
//! - [`Decoder`] never panics and holds at most [`MAX_COBS_LEN`] bytes, whatever it is fed.
//!   Garbage, a bad CRC, an unknown version, a malformed body or an oversized run each cost exactly
//!   one reported error and are counted in [`DecoderStats`]; the decoder then resumes at the next
//!   `0x00`, so a valid frame that follows garbage is never lost. Empty frames (`0x00 0x00`) are
//!   idle fill and are skipped silently: a sender may prefix a `0x00` to flush a half-sent frame.
//! - Decoding is strict: the postcard body must use every byte between the version byte and the
//!   CRC (no trailing bytes), and a `Readings` frame holds at most [`MAX_READINGS`] readings.
//!
//! # Refinements to the first sketch
//!
//! - `Readings::oldest_unacked` (see the ack rule above) is new: with overflow discarding whole
//!   frames and acks cumulative, the receiver needs to learn which holes will never fill.
//! - `Ack { seq: 0 }` acknowledges the `Hello`, so the `Hello` is delivered reliably too.
//! - `dropped` is a running total per boot, not a count since the previous frame: a delta would
//!   have to be carried forward when the frame carrying it is itself discarded, and would then be
//!   counted twice if that frame had in fact arrived; a total is robust to loss and reordering
//!   (the largest value seen wins). It counts readings, not frames: frame losses already show as
//!   `seq` gaps, and readings are what the agent's accounting adds up.
//! - [`encode`] writes a leading `0x00` as well as the trailing one (one byte per frame). Without
//!   it, any bytes that reach the line between two frames would be prepended to the next frame and
//!   cost it; with it, a valid frame is lost only if its own bytes are damaged. Back-to-back frames
//!   show `00 00` between them, which the decoder skips as an empty frame.
//! - [`DecoderStats`] also counts `unsupported_version`: a frame with a good CRC but a version this
//!   build does not speak is a peer running newer firmware, which an operator should see apart from
//!   line noise.
//! - Stream framing is done here rather than with `postcard::accumulator::CobsAccumulator`,
//!   because the accumulator deserializes the COBS-decoded bytes directly: there is no point at
//!   which to check the CRC over the raw bytes and strip the version byte first. It also cannot
//!   tell a bad CRC from a malformed body or an empty frame, and after an overflow it restarts in
//!   the middle of the oversized run instead of discarding up to the next `0x00` (one oversized run
//!   would be reported as several errors). The COBS step itself is the `cobs` crate, the one
//!   postcard uses.
use crc::{Crc, CRC_32_ISO_HDLC};
use serde::{Deserialize, Serialize};

/// Wire format version, the first byte of every decoded frame.
pub const VERSION: u8 = 1;

/// Readings per [`Readings`] frame.
pub const MAX_READINGS: usize = 16;

/// Largest postcard encoding of a [`Frame`]: a `Readings` frame with 16 readings and every varint
/// at its widest: variant tag 1 + 5 x u32 varint 5 + length 1 + 16 x (channel 1 + u64 varint 10
/// + f32 4).
pub const MAX_BODY_LEN: usize = 1 + 5 * 5 + 1 + MAX_READINGS * (1 + 10 + 4);

/// Largest frame before COBS: version byte, body, CRC-32.
pub const MAX_RAW_LEN: usize = 1 + MAX_BODY_LEN + 4;

/// Largest frame on the wire: the COBS-encoded raw frame between two `0x00` (276 bytes).
pub const MAX_FRAME_LEN: usize = cobs::max_encoding_length(MAX_RAW_LEN) + 2;

/// Most bytes a receiver holds between two `0x00` before it calls the run oversized.
pub const MAX_COBS_LEN: usize = cobs::max_encoding_length(MAX_RAW_LEN);

/// The CRC every frame carries: CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout
/// 0xFFFFFFFF; check value of `"123456789"` is 0xCBF43926).
pub const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// One sample of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Channel number on the device.
    pub channel: u8,
    /// Timestamp in ms: unix time once the device has had a [`TimeSync`], its uptime before.
    pub ts_ms: u64,
    /// The measured value.
    pub value: f32,
}

/// Sent by a device first after every boot, and again until an `Ack` for the boot arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The device.
    pub device_id: u32,
    /// Firmware version (opaque to the link).
    pub firmware_version: u32,
    /// Differs on every boot; scopes `seq` and `Ack`.
    pub boot_id: u32,
}

/// A batch of readings, numbered per `(device_id, boot_id)` from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// The device.
    pub device_id: u32,
    /// The boot this frame belongs to.
    pub boot_id: u32,
    /// Frame sequence number, 1, 2, ... per boot. Retransmits repeat it.
    pub seq: u32,
    /// Lowest `seq` the device still held when it sent this copy (`<= seq`): every lower `seq`
    /// of this boot is acknowledged or discarded (and counted in `dropped`).
    pub oldest_unacked: u32,
    /// Readings this boot has discarded so far (ring overflow), as of sending this copy: a running
    /// total, so the receiver keeps the largest value it sees.
    pub dropped: u32,
    /// The readings, oldest first.
    pub readings: heapless::Vec<Reading, MAX_READINGS>,
}

/// Sent by the agent: every `Readings` of `(device_id, boot_id)` with `seq <=` this is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The device acknowledged.
    pub device_id: u32,
    /// The boot acknowledged; a device ignores acks for any other boot.
    pub boot_id: u32,
    /// Highest sequence number acknowledged (cumulative); 0 acknowledges only the `Hello`.
    pub seq: u32,
}

/// Sent by the agent: the gateway's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSync {
    /// Milliseconds since the unix epoch.
    pub unix_ms: u64,
}

/// Everything that crosses the serial link. The variant order is part of the wire format:
/// new variants may only be appended.
// No allocator, so no boxing: a `Frame` is as large as a full `Readings` (~290 bytes).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Variant 0, device -> agent.
    Hello(Hello),
    /// Variant 1, device -> agent.
    Readings(Readings),
    /// Variant 2, agent -> device.
    Ack(Ack),
    /// Variant 3, agent -> device.
    TimeSync(TimeSync),
}

/// What can go wrong on the link. `Copy`, so a receiver can log it and keep going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// `encode`: the output buffer is shorter than the frame (`needed` bytes).
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
    /// More than `MAX_COBS_LEN` bytes arrived without a `0x00`; discarded up to the next one.
    Oversized,
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// Too short to hold a version byte, a body and a CRC.
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The CRC does not match: line noise, or a frame cut short by a lost byte.
    Crc {
        /// CRC carried by the frame.
        received: u32,
        /// CRC computed over the frame.
        computed: u32,
    },
    /// Good CRC, but a version this build does not speak.
    UnsupportedVersion(u8),
    /// The postcard body did not serialize or deserialize (unknown variant, overlong varint,
    /// too many readings, truncated or trailing bytes).
    Postcard,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            Self::Oversized => write!(f, "frame longer than {MAX_COBS_LEN} bytes"),
            Self::Cobs => write!(f, "invalid COBS encoding"),
            Self::TooShort { len } => write!(f, "frame too short ({len} bytes decoded)"),
            Self::Crc { received, computed } => {
                write!(
                    f,
                    "CRC mismatch: frame says {received:#010x}, computed {computed:#010x}"
                )
            }
            Self::UnsupportedVersion(v) => write!(f, "unsupported link version {v}"),
            Self::Postcard => write!(f, "malformed frame body"),
        }
    }
}

impl core::error::Error for LinkError {}

/// Encodes `frame` into `out` as complete wire bytes, both `0x00` delimiters included; returns
/// the length. Needs at most [`MAX_FRAME_LEN`] bytes of `out`.
pub fn encode(frame: &Frame, out: &mut [u8]) -> Result<usize, LinkError> {
    let mut raw = [0u8; MAX_RAW_LEN];
    raw[0] = VERSION;
    let body_len = postcard::to_slice(frame, &mut raw[1..1 + MAX_BODY_LEN])
        .map_err(|_| LinkError::Postcard)?
        .len();
    let crc_at = 1 + body_len;
    let crc = CRC.checksum(&raw[..crc_at]);
    raw[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    let raw = &raw[..crc_at + 4];

    let needed = cobs::max_encoding_length(raw.len()) + 2;
    let Some(out) = out.get_mut(..needed) else {
        return Err(LinkError::BufferTooSmall { needed });
    };
    out[0] = 0;
    let n =
        cobs::try_encode(raw, &mut out[1..]).map_err(|_| LinkError::BufferTooSmall { needed })?;
    out[1 + n] = 0;
    Ok(n + 2)
}

/// Encodes `frame` into a fresh buffer (convenience over [`encode`]).
pub fn encode_to_vec(frame: &Frame) -> Result<heapless::Vec<u8, MAX_FRAME_LEN>, LinkError> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = encode(frame, &mut buf)?;
    heapless::Vec::from_slice(&buf[..n]).map_err(|_| LinkError::BufferTooSmall { needed: n })
}

/// Decodes one frame's bytes: the COBS bytes between two delimiters, without the `0x00`.
/// `bytes` is decoded in place (it is scratch afterwards).
pub fn decode_frame(bytes: &mut [u8]) -> Result<Frame, LinkError> {
    let len = cobs::decode_in_place(bytes).map_err(|_| LinkError::Cobs)?;
    let raw = bytes.get(..len).ok_or(LinkError::Cobs)?;
    // version + at least one body byte (the variant tag) + CRC
    if raw.len() < 1 + 1 + 4 {
        return Err(LinkError::TooShort { len });
    }
    let (covered, crc_bytes) = raw.split_at(raw.len() - 4);
    let received = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = CRC.checksum(covered);
    if received != computed {
        return Err(LinkError::Crc { received, computed });
    }
    if covered[0] != VERSION {
        return Err(LinkError::UnsupportedVersion(covered[0]));
    }
    match postcard::take_from_bytes::<Frame>(&covered[1..]) {
        Ok((frame, [])) => Ok(frame),
        Ok(_) | Err(_) => Err(LinkError::Postcard),
    }
}

/// Counters kept by a [`Decoder`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames decoded successfully.
    pub frames: u64,
    /// Frames whose CRC did not match.
    pub crc_errors: u64,
    /// Invalid COBS, too short, or a body that did not parse.
    pub malformed: u64,
    /// Runs longer than [`MAX_COBS_LEN`] without a delimiter.
    pub oversized: u64,
    /// Good CRC, unknown version byte.
    pub unsupported_version: u64,
}

/// Streaming decoder: feed it byte chunks of any size, it hands back whole frames.
///
/// Holds one partial frame (at most [`MAX_COBS_LEN`] bytes) between calls; no allocation.
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: [u8; MAX_COBS_LEN],
    len: usize,
    /// An oversized run was reported; drop bytes up to the next `0x00`.
    discarding: bool,
    stats: DecoderStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_COBS_LEN],
            len: 0,
            discarding: false,
            stats: DecoderStats {
                frames: 0,
                crc_errors: 0,
                malformed: 0,
                oversized: 0,
                unsupported_version: 0,
            },
        }
    }

    /// Feeds `chunk`; calls `on_frame` once per complete frame or error, in stream order.
    pub fn feed(&mut self, chunk: &[u8], mut on_frame: impl FnMut(Result<Frame, LinkError>)) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let (segment, delimited) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = if delimited {
                &rest[segment.len() + 1..]
            } else {
                &[]
            };

            if !self.discarding {
                let room = MAX_COBS_LEN - self.len;
                if segment.len() > room {
                    self.len = 0;
                    self.discarding = true;
                    self.stats.oversized += 1;
                    on_frame(Err(LinkError::Oversized));
                } else {
                    self.buf[self.len..self.len + segment.len()].copy_from_slice(segment);
                    self.len += segment.len();
                }
            }
            if delimited {
                if self.discarding {
                    self.discarding = false;
                } else if self.len > 0 {
                    let result = decode_frame(&mut self.buf[..self.len]);
                    self.len = 0;
                    self.count(&result);
                    on_frame(result);
                }
            }
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes of a partial frame held, waiting for more input.
    pub fn pending(&self) -> usize {
        self.len
    }

    fn count(&mut self, result: &Result<Frame, LinkError>) {
        let counter = match result {
            Ok(_) => &mut self.stats.frames,
            Err(LinkError::Crc { .. }) => &mut self.stats.crc_errors,
            Err(LinkError::UnsupportedVersion(_)) => &mut self.stats.unsupported_version,
            Err(LinkError::Oversized) => &mut self.stats.oversized,
            Err(_) => &mut self.stats.malformed,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn readings(n: usize) -> Frame {
        let mut readings = heapless::Vec::new();
        for i in 0..n {
            let r = Reading {
                channel: i as u8,
                ts_ms: 1_700_000_000_000 + i as u64,
                value: i as f32 * 0.5,
            };
            readings.push(r).unwrap();
        }
        Frame::Readings(Readings {
            device_id: 7,
            boot_id: 42,
            seq: 1,
            oldest_unacked: 1,
            dropped: 0,
            readings,
        })
    }

    fn decode_all(bytes: &[u8]) -> (std::vec::Vec<Result<Frame, LinkError>>, DecoderStats) {
        let mut dec = Decoder::new();
        let mut out = std::vec::Vec::new();
        dec.feed(bytes, |r| out.push(r));
        (out, dec.stats())
    }

    #[test]
    fn a_frame_fed_one_byte_at_a_time_decodes() {
        let frame = readings(3);
        let wire = encode_to_vec(&frame).unwrap();
        let mut dec = Decoder::new();
        let mut got = std::vec::Vec::new();
        for b in wire.iter() {
            dec.feed(core::slice::from_ref(b), |r| got.push(r));
        }
        assert_eq!(got, [Ok(frame)]);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn the_largest_frame_fits_max_frame_len() {
        let mut readings = heapless::Vec::new();
        for _ in 0..MAX_READINGS {
            let r = Reading {
                channel: 0xFF,
                ts_ms: u64::MAX,
                value: f32::from_bits(0xFFFF_FFFF),
            };
            readings.push(r).unwrap();
        }
        let frame = Frame::Readings(Readings {
            device_id: u32::MAX,
            boot_id: u32::MAX,
            seq: u32::MAX,
            oldest_unacked: u32::MAX,
            dropped: u32::MAX,
            readings,
        });
        assert_eq!(
            postcard::experimental::serialized_size(&frame).unwrap(),
            MAX_BODY_LEN
        );
        let wire = encode_to_vec(&frame).unwrap();
        assert!(wire.len() <= MAX_FRAME_LEN);
        assert_eq!(MAX_FRAME_LEN, 276);
    }

    #[test]
    fn a_short_output_buffer_is_an_error_not_a_panic() {
        let mut out = [0u8; 8];
        assert!(matches!(
            encode(&readings(4), &mut out),
            Err(LinkError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error_and_the_next_frame_still_decodes() {
        let good = encode_to_vec(&readings(2)).unwrap();
        let mut bad = good.clone();
        bad[5] ^= 0x10;
        let mut stream = std::vec::Vec::new();
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&good);
        let (out, stats) = decode_all(&stream);
        assert!(matches!(
            out[0],
            Err(LinkError::Crc { .. }) | Err(LinkError::Cobs)
        ));
        assert_eq!(out[1], Ok(readings(2)));
        assert_eq!(stats.frames, 1);
        assert_eq!(stats.crc_errors + stats.malformed, 1);
    }

    #[test]
    fn an_oversized_run_is_one_error_and_resyncs_at_the_next_delimiter() {
        let mut stream = std::vec![0x55u8; 3 * MAX_FRAME_LEN];
        stream.push(0);
        stream.extend_from_slice(&encode_to_vec(&readings(1)).unwrap());
        let (out, stats) = decode_all(&stream);
        assert_eq!(out, [Err(LinkError::Oversized), Ok(readings(1))]);
        assert_eq!(stats.oversized, 1);
    }

    #[test]
    fn empty_frames_are_idle_fill_and_not_errors() {
        let (out, stats) = decode_all(&[0, 0, 0]);
        assert!(out.is_empty());
        assert_eq!(stats, DecoderStats::default());
    }

    #[test]
    fn an_unknown_version_with_a_good_crc_is_counted_apart() {
        let mut raw = [2u8, 3, 0, 0, 0, 0];
        let crc = CRC.checksum(&raw[..2]);
        raw[2..].copy_from_slice(&crc.to_le_bytes());
        let mut wire = [0u8; 16];
        let n = cobs::encode(&raw, &mut wire[1..]);
        let (out, stats) = decode_all(&wire[..n + 2]);
        assert_eq!(out, [Err(LinkError::UnsupportedVersion(2))]);
        assert_eq!(stats.unsupported_version, 1);
    }

    #[test]
    fn trailing_bytes_after_the_body_are_malformed() {
        let mut raw = [VERSION, 3, 5, 9, 0, 0, 0, 0]; // TimeSync { unix_ms: 5 } then a stray 9
        let crc = CRC.checksum(&raw[..4]);
        raw[4..].copy_from_slice(&crc.to_le_bytes());
        let mut wire = [0u8; 16];
        let n = cobs::encode(&raw, &mut wire[1..]);
        let (out, stats) = decode_all(&wire[..n + 2]);
        assert_eq!(out, [Err(LinkError::Postcard)]);
        assert_eq!(stats.malformed, 1);
    }
}
