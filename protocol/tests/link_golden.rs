//! The golden vectors of `protocol/FORMAT.md`, checked byte for byte in both directions.
//! These bytes are the wire format: never edit them, only add new ones.
use edge_protocol::link::{
    decode_frame, encode, encode_to_vec, Ack, Frame, Hello, Reading, Readings, TimeSync, CRC,
    MAX_FRAME_LEN,
};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn golden() -> Vec<(Frame, Vec<u8>)> {
    let mut readings = heapless::Vec::new();
    readings
        .push(Reading {
            channel: 0,
            ts_ms: 1_700_000_000_000,
            value: 21.5,
        })
        .unwrap();
    readings
        .push(Reading {
            channel: 3,
            ts_ms: 1_700_000_000_250,
            value: -0.125,
        })
        .unwrap();
    vec![
        (
            Frame::Hello(Hello { device_id: 7, firmware_version: 0x0001_0200, boot_id: 0xDEAD_BEEF }),
            hex("00 02 01 0e 07 80 84 04 ef fd b6 f5 0d 5b 7f ba 72 00"),
        ),
        (
            Frame::Readings(Readings { device_id: 7, boot_id: 0xDEAD_BEEF, seq: 1, oldest_unacked: 1, dropped: 0, readings }),
            hex("00 0b 01 01 07 ef fd b6 f5 0d 01 01 02 02 07 80 d0 95 ff bc 31 01 0a ac 41 03 fa d1 95 ff bc 31 01 01
                 06 be 42 49 ad 48 00"),
        ),
        (
            Frame::Ack(Ack { device_id: 7, boot_id: 0xDEAD_BEEF, seq: 1 }),
            hex("00 0e 01 02 07 ef fd b6 f5 0d 01 03 ea f9 68 00"),
        ),
        (
            Frame::TimeSync(TimeSync { unix_ms: 1_700_000_000_000 }),
            hex("00 0d 01 03 80 d0 95 ff bc 31 1e 6a 8d 22 00"),
        ),
    ]
}

#[test]
fn each_golden_frame_encodes_to_its_bytes() {
    for (frame, wire) in golden() {
        let mut out = [0u8; MAX_FRAME_LEN];
        let n = encode(&frame, &mut out).unwrap();
        assert_eq!(&out[..n], &wire[..], "{frame:?}");
        assert_eq!(encode_to_vec(&frame).unwrap().as_slice(), &wire[..]);
    }
}

#[test]
fn each_golden_byte_string_decodes_to_its_frame() {
    for (frame, wire) in golden() {
        let mut bytes = wire[1..wire.len() - 1].to_vec();
        assert_eq!(decode_frame(&mut bytes), Ok(frame));
    }
}

#[test]
fn the_crc_is_crc32_iso_hdlc() {
    assert_eq!(CRC.checksum(b"123456789"), 0xCBF4_3926);
}
