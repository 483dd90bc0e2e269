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
//! excess is counted in `dropped`, as it would be on real hardware). Drop-oldest then often
//! evicts a frame that was sent and is only waiting for its ack, so the evicted count is an upper
//! bound on readings lost, well above offered minus delivered. Measured at the receiving peer
//! over a fixed window after a warm-up:
//!
//! - **readings/s**: unique readings accepted per second;
//! - **frame bytes/s**: wire bytes (delimiters included) of the unique frames accepted;
//! - **of line rate**: frame bytes/s divided by `baud / 10`: the share of the line's byte budget
//!   that carried new readings. Acks travel the other direction and do not count against it;
//!   retransmitted or duplicated bytes would lower it. 100 % is the ceiling over a long window;
//!   the pacer's bucket (two frames deep, so a late timer wake-up does not waste line time) can
//!   put a short window a fraction of a percent above it.
//! - **all bytes/s**: every byte the peer read (retransmits and duplicates included).
//!
//! Beside the tables it prints one `BENCH {json}` line per figure for the suite runner
//! (`scripts/bench.sh`; the line format is documented in `bench/src/line.rs`). Quick run:
//! `-- --secs 2`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_bench::line::Family;
use edge_protocol::link::{self, Decoder, Frame, Reading, Readings, MAX_FRAME_LEN, MAX_READINGS};
use firmware_sim::runner::peer::Peer;
use firmware_sim::runner::serial::{self, SerialConfig};
use firmware_sim::runner::RunConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// This program's `BENCH` lines for the suite runner (`edge-bench`).
const FIGURES: Family = Family("link");

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
    pty(secs);
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
                std::process::exit(1);
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
    let params = format!("{FRAMES} frames x {MAX_READINGS} readings");
    let frames = f64::from(FRAMES);
    FIGURES.print("codec_encode", per_s(frames, encode), "frames/s", &params);
    FIGURES.print("codec_decode", per_s(frames, decode), "frames/s", &params);
    FIGURES.print(
        "codec_encode_decode",
        per_s(frames, encode + decode),
        "frames/s",
        &params,
    );
    FIGURES.print(
        "codec_encode_decode_readings",
        per_s(readings, encode + decode),
        "readings/s",
        &params,
    );
    FIGURES.print("codec_bytes_per_frame", len as f64 / frames, "B", &params);
    if decoded != u64::from(FRAMES) || errors > 0 {
        eprintln!("codec: decoded {decoded} of {FRAMES} frames, {errors} errors");
        std::process::exit(1);
    }
}

/// Counters the peer task publishes for the measuring loop.
#[derive(Default)]
struct Seen {
    bytes: AtomicU64,
    unique_frame_bytes: AtomicU64,
    readings: AtomicU64,
    decode_errors: AtomicU64,
}

fn pty(secs: f64) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("no tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    // A full frame of this benchmark's readings, for sizing the offered load.
    let frame_len = link::encode_to_vec(&sample_frame(1_000)).map_or(MAX_FRAME_LEN, |v| v.len());
    println!(
        "## (b) pty pair, paced to the baud rate (10 bits/byte), 4 devices x 4 channels, {secs:.0} s after 1 s warm-up"
    );
    println!();
    println!("| baud | line budget B/s | offered readings/s | readings/s | frame bytes/s | of line rate | all bytes/s (incl. retransmits) | retransmits | evicted readings (upper bound of lost) | decode errors |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut figures = Vec::new();
    let mut failed = false;
    for baud in [115_200u32, 921_600] {
        let budget = f64::from(baud) / 10.0;
        let capacity = budget / frame_len as f64 * MAX_READINGS as f64;
        let offered = capacity * 1.3;
        match runtime.block_on(pty_run(baud, offered, secs)) {
            Ok((seen, summary)) => {
                println!(
                    "| {baud} | {budget:.0} | {offered:.0} | {:.0} | {:.0} | {:.1} % | {:.0} | {} | {} | {} |",
                    seen.readings,
                    seen.unique_bytes,
                    100.0 * seen.unique_bytes / budget,
                    seen.all_bytes,
                    summary.retransmits,
                    summary.evicted_readings,
                    seen.decode_errors,
                );
                let params = format!("{baud} baud, 4 devices x 4 channels, {secs:.0} s");
                figures.push((
                    format!("pty_{baud}_readings"),
                    seen.readings,
                    "readings/s",
                    params.clone(),
                ));
                figures.push((
                    format!("pty_{baud}_of_line_rate"),
                    100.0 * seen.unique_bytes / budget,
                    "%",
                    params.clone(),
                ));
                figures.push((
                    format!("pty_{baud}_retransmits"),
                    summary.retransmits as f64,
                    "frames",
                    params,
                ));
            }
            Err(e) => {
                println!("| {baud} | run failed: {e} |");
                failed = true;
            }
        }
    }
    println!();
    println!("frame size used for the offered load: {frame_len} bytes (16 readings)");
    for (metric, value, unit, params) in &figures {
        FIGURES.print(metric, *value, unit, params);
    }
    if failed {
        std::process::exit(1);
    }
}

/// Per-second rates over the measuring window.
struct Rates {
    readings: f64,
    unique_bytes: f64,
    all_bytes: f64,
    decode_errors: u64,
}

async fn pty_run(
    baud: u32,
    offered: f64,
    secs: f64,
) -> Result<(Rates, firmware_sim::runner::RunSummary), Box<dyn std::error::Error>> {
    let (master, slave) = tokio_serial::SerialStream::pair()?;
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let peer_seen = Arc::clone(&seen);
    let peer_stop = stop.clone();
    let peer = tokio::spawn(async move {
        let (mut rx, mut tx) = tokio::io::split(slave);
        let mut peer = Peer::new();
        let mut buf = [0u8; 4096];
        let mut counted = 0;
        loop {
            let n = tokio::select! {
                n = rx.read(&mut buf) => match n { Ok(n) if n > 0 => n, _ => return },
                () = peer_stop.cancelled() => return,
            };
            let reply = peer.feed(&buf[..n]);
            peer_seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
            for a in &peer.accepted[counted..] {
                let mut readings = heapless::Vec::<Reading, MAX_READINGS>::new();
                for r in &a.readings {
                    let _ = readings.push(Reading {
                        channel: r.channel,
                        ts_ms: r.ts_ms,
                        value: r.value,
                    });
                }
                let frame = Frame::Readings(Readings {
                    device_id: a.device_id,
                    boot_id: a.boot_id,
                    seq: a.seq,
                    oldest_unacked: a.oldest_unacked,
                    dropped: a.dropped,
                    readings,
                });
                let len = link::encode_to_vec(&frame).map_or(0, |v| v.len());
                peer_seen
                    .unique_frame_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                peer_seen
                    .readings
                    .fetch_add(a.readings.len() as u64, Ordering::Relaxed);
            }
            counted = peer.accepted.len();
            peer_seen
                .decode_errors
                .store(peer.errors, Ordering::Relaxed);
            if !reply.is_empty() && tx.write_all(&reply).await.is_err() {
                return;
            }
        }
    });

    let warmup = 1.0;
    let mut config = RunConfig::new(4, offered / 4.0, 7);
    config.channels = 4;
    config.duration = Some(warmup + secs + 0.5);
    config.drain_timeout = 2.0;
    let serial_config = SerialConfig {
        baud,
        pace: true,
        ..SerialConfig::pty()
    };
    let run = tokio::spawn(async move {
        serial::run_on(
            master,
            &config,
            &serial_config,
            Some(baud),
            CancellationToken::new(),
        )
        .await
    });

    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let snapshot = |s: &Seen| {
        (
            s.readings.load(Ordering::Relaxed),
            s.unique_frame_bytes.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
        )
    };
    let (r0, u0, b0) = snapshot(&seen);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (r1, u1, b1) = snapshot(&seen);
    let dt = t0.elapsed().as_secs_f64();
    let summary = run.await??;
    stop.cancel();
    let _ = peer.await;
    Ok((
        Rates {
            readings: (r1 - r0) as f64 / dt,
            unique_bytes: (u1 - u0) as f64 / dt,
            all_bytes: (b1 - b0) as f64 / dt,
            decode_errors: seen.decode_errors.load(Ordering::Relaxed),
        },
        summary,
    ))
}
