//! Serial I/O for the serial transport: the paced writer task and the reader task.
//!
//! Only these tasks touch the port. The writer receives whole wire frames over a bounded
//! channel and keeps a shared count of bytes queued but not yet written (`backlog`), which the
//! device loop reads like a UART's transmit-FIFO level: it hands over a new frame only while the
//! backlog is small, so frames never wait in a queue long enough to time out.
//!
//! Pacing (`--pace`): the writer treats the line as a token bucket of `baud / 10` bytes per
//! second (8N1: 10 bits per byte) two maximal frames deep (so a timer that wakes a millisecond
//! late does not waste line time; over any window of `T` seconds at most `rate * T` plus two
//! frames are written). A pty does not throttle by itself; pacing makes it behave like a line
//! of that speed. A real port is throttled by its UART, so pacing is off by default.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_protocol::link::{Decoder, Frame, MAX_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes the writer coalesces into one `write` at most.
const WRITE_CHUNK: usize = 4096;

/// Counters the I/O tasks share with the device loop.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Bytes handed to the writer and not yet written.
    pub backlog: AtomicUsize,
    /// Bytes written to the port.
    pub written: AtomicU64,
    /// Bytes read from the port.
    pub read: AtomicU64,
    /// Frames from the agent that did not decode.
    pub decode_errors: AtomicU64,
}

/// A token bucket of `bytes_per_s`, two maximal frames deep.
#[derive(Debug)]
struct Pacer {
    bytes_per_s: f64,
    /// When the line is free again, as if every byte so far had been clocked out.
    free_at: Instant,
}

impl Pacer {
    fn new(baud: u32) -> Pacer {
        Pacer {
            bytes_per_s: f64::from(baud.max(10)) / 10.0,
            free_at: Instant::now(),
        }
    }

    /// Waits until `n` more bytes fit the line's budget.
    async fn take(&mut self, n: usize) {
        let depth = Duration::from_secs_f64(2.0 * MAX_FRAME_LEN as f64 / self.bytes_per_s);
        let now = Instant::now();
        // An idle line does not bank more than the bucket's depth of credit.
        let floor = now.checked_sub(depth).unwrap_or(now);
        let start = self.free_at.max(floor);
        self.free_at = start + Duration::from_secs_f64(n as f64 / self.bytes_per_s);
        // May write once the bytes would have fitted into the bucket.
        if let Some(wait_until) = self.free_at.checked_sub(depth) {
            if wait_until > now {
                tokio::time::sleep_until(wait_until).await;
            }
        }
    }
}

/// The writer task: writes frames from `rx` until it closes; `baud` paces it.
pub async fn writer<W: AsyncWrite + Unpin>(
    mut port: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<IoStats>,
    baud: Option<u32>,
) -> std::io::Result<()> {
    let mut pacer = baud.map(Pacer::new);
    let mut buf = Vec::with_capacity(WRITE_CHUNK + MAX_FRAME_LEN);
    while let Some(frame) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&frame);
        while buf.len() < WRITE_CHUNK {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Some(pacer) = &mut pacer {
            // Clock the bytes out frame by frame, as a UART would.
            for piece in buf.chunks(MAX_FRAME_LEN) {
                pacer.take(piece.len()).await;
                port.write_all(piece).await?;
                stats
                    .written
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                stats.backlog.fetch_sub(piece.len(), Ordering::Relaxed);
            }
        } else {
            port.write_all(&buf).await?;
            stats.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
            stats.backlog.fetch_sub(buf.len(), Ordering::Relaxed);
        }
        port.flush().await?;
    }
    Ok(())
}

/// The reader task: decodes frames from the port and sends them to `tx` until the port ends or
/// the receiver is gone. Decode errors are counted and skipped.
pub async fn reader<R: AsyncRead + Unpin>(
    mut port: R,
    tx: mpsc::Sender<Frame>,
    stats: Arc<IoStats>,
) -> std::io::Result<()> {
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = port.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stats.read.fetch_add(n as u64, Ordering::Relaxed);
        let mut frames = Vec::new();
        decoder.feed(&buf[..n], |result| match result {
            Ok(frame) => frames.push(frame),
            Err(_) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        for frame in frames {
            if tx.send(frame).await.is_err() {
                return Ok(());
            }
        }
    }
}
