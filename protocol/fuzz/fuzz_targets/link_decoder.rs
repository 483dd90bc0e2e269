//! Fuzzes `edge_protocol::link::Decoder` with arbitrary bytes in arbitrary chunk sizes.
//!
//! Checks, beyond "never panics": every outcome is counted in the stats exactly once; the decoder
//! never holds more than `MAX_COBS_LEN` bytes; whatever decodes re-encodes to a frame that decodes
//! to the same bytes; and a valid frame sent after the garbage is always recovered.
#![no_main]

use edge_protocol::link::{encode_to_vec, Ack, Decoder, Frame, MAX_COBS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    let mut dec = Decoder::new();
    let mut outcomes = 0u64;
    for part in data.chunks(chunk) {
        dec.feed(part, |result| {
            outcomes += 1;
            if let Ok(frame) = result {
                let wire = encode_to_vec(&frame).expect("a decoded frame re-encodes");
                let mut again = Decoder::new();
                let mut got = None;
                again.feed(&wire, |r| got = Some(r.map(|f| encode_to_vec(&f).unwrap())));
                assert_eq!(got, Some(Ok(wire)));
            }
        });
        assert!(dec.pending() <= MAX_COBS_LEN);
    }
    let s = dec.stats();
    assert_eq!(outcomes, s.frames + s.crc_errors + s.malformed + s.oversized + s.unsupported_version);

    // A valid frame after any garbage is never lost.
    let marker = Frame::Ack(Ack { device_id: 0xF00D, boot_id: 0xBEEF, seq: 7 });
    let mut last = None;
    dec.feed(&encode_to_vec(&marker).unwrap(), |r| last = Some(r));
    assert_eq!(last, Some(Ok(marker)));
});
