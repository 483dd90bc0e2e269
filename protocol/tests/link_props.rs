//! Property tests of the link codec: round trips, and a decoder that survives any input without
//! losing a valid frame. `scripts/fuzz.sh` falls back to `any_byte_stream_*` here when no
//! nightly toolchain is available for cargo-fuzz.
use edge_protocol::link::{
    encode_to_vec, Ack, Decoder, DecoderStats, Frame, Hello, LinkError, Reading, Readings,
    TimeSync, MAX_FRAME_LEN, MAX_READINGS,
};
use proptest::prelude::*;

fn reading() -> impl Strategy<Value = Reading> {
    (any::<u8>(), any::<u64>(), any::<u32>()).prop_map(|(channel, ts_ms, bits)| Reading {
        channel,
        ts_ms,
        // Every bit pattern, NaNs included: the codec must carry the bits unchanged.
        value: f32::from_bits(bits),
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(device_id, firmware_version, boot_id)| {
                Frame::Hello(Hello {
                    device_id,
                    firmware_version,
                    boot_id,
                })
            }
        ),
        (
            any::<[u32; 5]>(),
            proptest::collection::vec(reading(), 0..=MAX_READINGS)
        )
            .prop_map(|([device_id, boot_id, seq, oldest_unacked, dropped], rs)| {
                let readings = heapless::Vec::from_slice(&rs).expect("at most MAX_READINGS");
                Frame::Readings(Readings {
                    device_id,
                    boot_id,
                    seq,
                    oldest_unacked,
                    dropped,
                    readings,
                })
            }),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(device_id, boot_id, seq)| Frame::Ack(Ack {
                device_id,
                boot_id,
                seq
            })
        ),
        any::<u64>().prop_map(|unix_ms| Frame::TimeSync(TimeSync { unix_ms })),
    ]
}

/// Feeds `stream` in chunks whose sizes cycle through `chunks` (all at once if empty).
fn decode(stream: &[u8], chunks: &[usize]) -> (Vec<Result<Frame, LinkError>>, DecoderStats) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        dec.feed(&rest[..n], |r| out.push(r));
        rest = &rest[n..];
    }
    (out, dec.stats())
}

/// Frames compared by their encoding, so NaN values compare bit for bit.
fn wire(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| encode_to_vec(f).unwrap().to_vec())
        .collect()
}

fn oks(results: Vec<Result<Frame, LinkError>>) -> Vec<Frame> {
    results.into_iter().filter_map(Result::ok).collect()
}

fn stats_total(s: DecoderStats) -> u64 {
    s.frames + s.crc_errors + s.malformed + s.oversized + s.unsupported_version
}

/// A small deterministic generator for bulk garbage (shrinking a MiB of bytes is useless).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

proptest! {
    #[test]
    fn any_frame_round_trips_through_encode_and_decode(f in frame(), chunks in proptest::collection::vec(1usize..64, 0..8)) {
        let bytes = encode_to_vec(&f).unwrap();
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(bytes[0], 0);
        prop_assert_eq!(bytes[bytes.len() - 1], 0);
        prop_assert!(!bytes[1..bytes.len() - 1].contains(&0));
        let (out, stats) = decode(&bytes, &chunks);
        let got = oks(out);
        prop_assert_eq!(wire(&got), wire(core::slice::from_ref(&f)));
        prop_assert_eq!(stats, DecoderStats { frames: 1, ..DecoderStats::default() });
    }

    #[test]
    fn any_byte_stream_never_panics_the_decoder_and_every_outcome_is_counted(
        stream in proptest::collection::vec(any::<u8>(), 0..4096),
        chunks in proptest::collection::vec(1usize..300, 0..8),
    ) {
        let (out, stats) = decode(&stream, &chunks);
        prop_assert_eq!(out.len() as u64, stats_total(stats));
    }

    #[test]
    fn any_byte_stream_rich_in_delimiters_never_panics_the_decoder(
        stream in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()], 0..4096),
        chunks in proptest::collection::vec(1usize..300, 0..8),
    ) {
        let (out, stats) = decode(&stream, &chunks);
        prop_assert_eq!(out.len() as u64, stats_total(stats));
    }

    #[test]
    fn damage_inside_some_frames_never_costs_the_others(
        frames in proptest::collection::vec(frame(), 1..24),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..24),
        chunks in proptest::collection::vec(1usize..300, 0..8),
    ) {
        let mut encoded: Vec<Vec<u8>> = wire(&frames);
        let mut damaged = vec![false; frames.len()];
        for (i, (at, byte)) in damage.iter().enumerate() {
            // Overwrite one byte strictly between a frame's two delimiters (a 0x00 splits it).
            let k = i % frames.len();
            let inner = encoded[k].len() - 2;
            let pos = 1 + at.index(inner);
            if encoded[k][pos] != *byte {
                encoded[k][pos] = *byte;
                damaged[k] = true;
            }
        }
        let stream: Vec<u8> = encoded.concat();
        let (out, _) = decode(&stream, &chunks);
        let got = wire(&oks(out));
        let intact: Vec<Vec<u8>> = wire(&frames)
            .into_iter()
            .zip(&damaged)
            .filter(|(_, d)| !**d)
            .map(|(w, _)| w)
            .collect();
        // Every intact frame arrives, in order (a damaged one may survive if the damage is benign).
        let mut it = got.iter();
        for w in &intact {
            prop_assert!(it.any(|g| g == w), "an intact frame was lost");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn a_mebibyte_of_random_bytes_interleaved_with_frames_loses_no_frame(
        seed in any::<u64>(),
        frames in proptest::collection::vec(frame(), 64..256),
    ) {
        let mut rng = XorShift(seed | 1);
        let budget = 1 << 20;
        let mut stream = Vec::with_capacity(budget + frames.len() * MAX_FRAME_LEN);
        let per_gap = budget / frames.len();
        for f in &frames {
            let gap = (rng.next() as usize) % (2 * per_gap);
            stream.extend((0..gap).map(|_| rng.next() as u8));
            stream.extend_from_slice(&encode_to_vec(f).unwrap());
        }
        let chunks: Vec<usize> = (0..16).map(|_| 1 + (rng.next() as usize) % 1024).collect();
        let (out, stats) = decode(&stream, &chunks);
        prop_assert_eq!(out.len() as u64, stats_total(stats));
        // Random bytes pass CRC-32, the version byte and a strict postcard parse with negligible
        // probability, so the frames decoded are exactly the frames sent.
        prop_assert_eq!(wire(&oks(out)), wire(&frames));
        prop_assert!(stats.crc_errors + stats.malformed + stats.oversized > 0);
    }
}
