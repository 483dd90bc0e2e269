use std::sync::Arc;
use std::time::Duration;

use edge_protocol::link::{Ack, Hello, Reading as LinkReading, Readings};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::config::fixtures::config;
use crate::config::OnFull;
use crate::ingest::writer::{BatchLimits, Writer};
use crate::ingest::{Counters, IngestLog, Limits};

const CONFIG: &str = r#"
[agent]
id = "gw"
data_dir = "/unused"
[[serial]]
name = "rs485"
path = "/dev/null"
framing = "link"
[[serial]]
name = "text"
path = "/dev/null"
framing = "line"
[[sensor]]
source = "rs485"
device = 7
id = "d{device}.c{channel}"
[[sensor]]
source = "text"
id = "line.{payload}"
"#;

struct Rig {
    dir: tempfile::TempDir,
    cancel: CancellationToken,
    counters: Arc<SerialCounters>,
    writer: tokio::task::JoinHandle<Result<(), crate::ingest::IngestError>>,
    source: tokio::task::JoinHandle<Result<(), SerialError>>,
}

fn limits() -> Limits {
    Limits {
        quota_bytes: 1 << 20,
        on_full: OnFull::Backpressure,
        dedupe_max_entries: 1000,
        dedupe_max_age_ms: 3_600_000,
    }
}

/// A writer on a fresh log and the source `index` of CONFIG serving one end of a duplex pipe.
fn rig(index: usize) -> (Rig, DuplexStream) {
    rig_with(CONFIG, index)
}

/// [`rig`] for the source `index` of the configuration `text`.
fn rig_with(text: &str, index: usize) -> (Rig, DuplexStream) {
    let config = config(text);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ingest.redb");
    let log = IngestLog::open(&path, limits()).unwrap();
    let (submissions, rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let writer = Writer {
        log,
        path,
        batch: BatchLimits {
            max_readings: 100,
            max_wait: Duration::from_millis(2),
        },
        counters: Arc::new(Counters::default()),
        submissions: rx,
        cancel: cancel.clone(),
        committed: None,
    };
    let counters = Arc::new(SerialCounters::default());
    let task = SerialSourceTask {
        config: config.serial[index].clone(),
        mapper: Arc::new(Mapper::new(&config)),
        submissions,
        counters: counters.clone(),
        cancel: cancel.clone(),
    };
    let (ours, theirs) = tokio::io::duplex(4096);
    let source = tokio::spawn(async move { task.serve(ours).await });
    let writer = tokio::spawn(writer.run());
    (
        Rig {
            dir,
            cancel,
            counters,
            writer,
            source,
        },
        theirs,
    )
}

impl Rig {
    async fn stop(self) -> IngestLog {
        self.cancel.cancel();
        self.source.await.unwrap().unwrap();
        self.writer.await.unwrap().unwrap();
        IngestLog::open(&self.dir.path().join("ingest.redb"), limits()).unwrap()
    }
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    link::encode_to_vec(frame).unwrap().to_vec()
}

fn readings(seq: u32, values: &[(u8, f32)]) -> Frame {
    let mut readings = heapless::Vec::new();
    for (i, (channel, value)) in values.iter().enumerate() {
        let r = LinkReading {
            channel: *channel,
            ts_ms: 1_700_000_000_000 + u64::from(seq) * 100 + i as u64,
            value: *value,
        };
        readings.push(r).unwrap();
    }
    Frame::Readings(Readings {
        device_id: 7,
        boot_id: 42,
        seq,
        oldest_unacked: 1,
        dropped: 0,
        readings,
    })
}

/// Reads frames from the device end until `want` says stop (or 5 s pass).
async fn read_until(end: &mut DuplexStream, mut want: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, end.read(&mut buf))
            .await
            .expect("the agent answered in time")
            .unwrap();
        let mut done = false;
        decoder.feed(&buf[..n], |f| {
            let f = f.expect("the agent sends valid frames");
            done |= want(&f);
            seen.push(f);
        });
        if done {
            return seen;
        }
    }
}

fn is_ack(seq: u32) -> impl FnMut(&Frame) -> bool {
    move |f| matches!(f, Frame::Ack(Ack { seq: s, .. }) if *s == seq)
}

#[tokio::test]
async fn hello_is_answered_with_ack_zero_and_a_time_sync() {
    let (rig, mut device) = rig(0);
    let hello = Hello {
        device_id: 7,
        firmware_version: 3,
        boot_id: 42,
    };
    device
        .write_all(&frame_bytes(&Frame::Hello(hello)))
        .await
        .unwrap();
    let frames = read_until(&mut device, |f| matches!(f, Frame::TimeSync(_))).await;
    assert_eq!(
        frames[0],
        Frame::Ack(Ack {
            device_id: 7,
            boot_id: 42,
            seq: 0
        })
    );
    rig.stop().await;
}

/// CONFIG with `time_sync_interval_s = seconds` on the link line.
fn with_time_sync_interval(seconds: u64) -> String {
    let link = "framing = \"link\"\n";
    CONFIG.replacen(
        link,
        &format!("{link}time_sync_interval_s = {seconds}\n"),
        1,
    )
}

#[tokio::test(start_paused = true)]
async fn a_time_sync_goes_out_every_interval_besides_the_answers_to_hellos() {
    let (rig, mut device) = rig_with(&with_time_sync_interval(2), 0);
    let start = tokio::time::Instant::now();
    for n in 1..=3 {
        let frames = read_until(&mut device, |f| matches!(f, Frame::TimeSync(_))).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2 * n), "tick {n}");
        let Some(Frame::TimeSync(sync)) = frames.last() else {
            panic!("{frames:?}")
        };
        assert!(
            sync.unix_ms.abs_diff(unix_ms()) < 1_000,
            "the gateway's clock"
        );
    }
    let hello = Hello {
        device_id: 7,
        firmware_version: 3,
        boot_id: 42,
    };
    device
        .write_all(&frame_bytes(&Frame::Hello(hello)))
        .await
        .unwrap();
    read_until(&mut device, |f| matches!(f, Frame::TimeSync(_))).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(6),
        "a Hello is answered at once"
    );
    read_until(&mut device, |f| matches!(f, Frame::TimeSync(_))).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(8),
        "and the period goes on"
    );
    assert_eq!(rig.counters.time_syncs.load(Ordering::Relaxed), 5);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_interval_of_zero_sends_time_syncs_only_to_answer_hellos() {
    let (rig, mut device) = rig_with(&with_time_sync_interval(0), 0);
    let mut buf = [0u8; 64];
    let quiet = tokio::time::timeout(Duration::from_secs(3_600), device.read(&mut buf)).await;
    assert!(quiet.is_err(), "nothing in an hour: {quiet:?}");
    assert_eq!(rig.counters.time_syncs.load(Ordering::Relaxed), 0);
    rig.stop().await;
}

#[tokio::test]
async fn a_stored_frame_sets_the_clock_offset_and_uptime_stamps_leave_it() {
    let (rig, mut device) = rig(0);
    let frame = |seq: u32, ts_ms: u64| {
        let reading = LinkReading {
            channel: 0,
            ts_ms,
            value: 1.0,
        };
        Frame::Readings(Readings {
            device_id: 7,
            boot_id: 42,
            seq,
            oldest_unacked: 1,
            dropped: 0,
            readings: heapless::Vec::from_slice(&[reading]).unwrap(),
        })
    };
    assert_eq!(rig.counters.clock_offset.get(), None);
    let ahead = unix_ms() + 5_000;
    device
        .write_all(&frame_bytes(&frame(1, ahead)))
        .await
        .unwrap();
    read_until(&mut device, is_ack(1)).await;
    let offset = rig.counters.clock_offset.get().expect("an offset");
    assert!((4_000..=5_000).contains(&offset), "{offset}");
    device
        .write_all(&frame_bytes(&frame(2, 12_345)))
        .await
        .unwrap();
    read_until(&mut device, is_ack(2)).await;
    assert_eq!(
        rig.counters.clock_offset.get(),
        Some(offset),
        "uptime: kept"
    );
    rig.stop().await;
}

#[tokio::test]
async fn readings_frames_are_acked_after_commit_and_retransmits_are_stored_once() {
    let (rig, mut device) = rig(0);
    device
        .write_all(&frame_bytes(&readings(1, &[(0, 1.5), (1, 2.5)])))
        .await
        .unwrap();
    device
        .write_all(&frame_bytes(&readings(2, &[(0, 3.5)])))
        .await
        .unwrap();
    read_until(&mut device, is_ack(2)).await;
    // The device did not see the ack yet and retransmits frame 2: re-acked, not stored again.
    device
        .write_all(&frame_bytes(&readings(2, &[(0, 3.5)])))
        .await
        .unwrap();
    read_until(&mut device, is_ack(2)).await;
    let counters = rig.counters.clone();
    let log = rig.stop().await;
    let stored: Vec<_> = log
        .readings_from(0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.sensor, r.value))
        .collect();
    assert_eq!(
        stored,
        [
            ("d7.c0".into(), 1.5),
            ("d7.c1".into(), 2.5),
            ("d7.c0".into(), 3.5)
        ]
    );
    assert_eq!(counters.duplicate_frames.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn garbage_on_the_line_is_dead_lettered_and_the_next_frame_still_lands() {
    let (rig, mut device) = rig(0);
    device
        .write_all(&[0x00, 0x13, 0x37, 0x42, 0x99, 0x00])
        .await
        .unwrap();
    device
        .write_all(&frame_bytes(&readings(1, &[(0, 9.0)])))
        .await
        .unwrap();
    read_until(&mut device, is_ack(1)).await;
    let counters = rig.counters.clone();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = rig.stop().await;
    assert_eq!(counters.bad_frames.load(Ordering::Relaxed), 1);
    let stats = log.stats().unwrap();
    assert_eq!((stats.readings, stats.dead_letters), (1, 1));
}

#[tokio::test]
async fn text_lines_become_readings_and_bad_lines_dead_letters() {
    let (rig, mut device) = rig(1);
    device
        .write_all(b"temp,1700000000000,21.5\r\n\nbad line\nhum,1700000000001,40\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = rig.stop().await;
    let stored: Vec<_> = log
        .readings_from(0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.sensor, r.ts_ms))
        .collect();
    assert_eq!(
        stored,
        [
            ("line.temp".into(), 1_700_000_000_000),
            ("line.hum".into(), 1_700_000_000_001)
        ]
    );
    assert_eq!(log.stats().unwrap().dead_letters, 1);
}

#[test]
fn line_parsing_accepts_only_sensor_ts_value() {
    assert_eq!(parse_line(b"  \r"), Ok(None));
    let r = parse_line(b"a, 5 ,1e3").unwrap().unwrap();
    assert_eq!(
        (r.sensor.as_deref(), r.ts_ms, r.value),
        (Some("a"), Some(5), 1000.0)
    );
    assert_eq!(parse_line(b"a,5"), Err(LineError::Shape));
    assert_eq!(parse_line(b"a,5,1,2"), Err(LineError::Shape));
    assert_eq!(parse_line(b",5,1"), Err(LineError::Shape));
    assert_eq!(parse_line(b"a,-5,1"), Err(LineError::Timestamp));
    assert_eq!(parse_line(b"a,5,inf"), Err(LineError::Value));
    assert_eq!(parse_line(&[0xff]), Err(LineError::NotUtf8));
}

#[tokio::test]
async fn a_real_pty_serial_port_carries_frames_both_ways() {
    use tokio_serial::SerialPort;
    let (mut device, agent_end) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = agent_end.name().expect("pty slave has a path");
    drop(agent_end);
    let text = CONFIG.replacen("path = \"/dev/null\"", &format!("path = {path:?}"), 1);
    let config = config(&text);
    let (submissions, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = SerialSourceTask {
        config: config.serial[0].clone(),
        mapper: Arc::new(Mapper::new(&config)),
        submissions,
        counters: Arc::new(SerialCounters::default()),
        cancel: cancel.clone(),
    };
    let source = tokio::spawn(task.run());
    tokio::time::sleep(Duration::from_millis(200)).await;
    device
        .write_all(&frame_bytes(&readings(1, &[(3, 7.0)])))
        .await
        .unwrap();
    let submission = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(submission.readings[0].0.sensor, "d7.c3");
    (submission.ack.expect("frames carry an ack"))();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), device.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let mut acks = Vec::new();
    Decoder::new().feed(&buf[..n], |f| acks.push(f));
    assert_eq!(
        acks,
        [Ok(Frame::Ack(Ack {
            device_id: 7,
            boot_id: 42,
            seq: 1
        }))]
    );
    cancel.cancel();
    source.await.unwrap();
}
