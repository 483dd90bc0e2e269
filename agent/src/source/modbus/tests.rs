use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;
use crate::config::fixtures::{config, with_agent};

/// One device with a holding block (an f32 low word first, an i16 with a valid range) and a
/// coil block; sensor rules by register name and one for every register.
const DEVICE: &str = r#"
[[modbus]]
name = "plc"
tcp = "127.0.0.1:5020"

[[modbus.block]]
kind = "holding"
address = 100
count = 4
period_ms = 500

[[modbus.block.register]]
name = "temp"
address = 100
type = "f32"
word_order = "little"

[[modbus.block.register]]
name = "level"
address = 103
type = "i16"

[[modbus.block]]
kind = "coils"
address = 0
count = 2

[[modbus.block.register]]
name = "pump"
address = 1
type = "bool"

[[sensor]]
source = "plc"
register = "level"
id = "plc.level"
scale = 0.1
min = -10.0
max = 10.0

[[sensor]]
source = "plc"
id = "{source}.{register}"
"#;

fn setup() -> (Config, Mapper) {
    let config = config(&with_agent(DEVICE));
    let mapper = Mapper::new(&config);
    (config, mapper)
}

fn values(s: &Submission) -> Vec<(String, u64, f64)> {
    s.readings
        .iter()
        .map(|(r, d)| {
            assert_eq!(*d, Dedupe::SensorTs);
            (r.sensor.clone(), r.ts_ms, r.value)
        })
        .collect()
}

#[test]
fn one_poll_is_one_reading_per_register_at_the_poll_time_through_the_sensor_rules() {
    let (config, mapper) = setup();
    let holding = &config.modbus[0].block[0];
    // 21.5f32 = 0x41AC0000, low word first; register 102 is not mapped; -42 * 0.1 for level.
    let answer = Answer::Registers(vec![0x0000, 0x41AC, 0x7777, (-42i16) as u16]);
    let s = submission(&mapper, "plc", holding, &answer, 1_700_000_000_123).expect("whole");
    assert_eq!(
        values(&s),
        [
            ("plc.temp".to_owned(), 1_700_000_000_123, 21.5),
            ("plc.level".to_owned(), 1_700_000_000_123, -42.0 * 0.1),
        ]
    );
    assert!(s.dead_letters.is_empty() && s.ack.is_none());

    let coils = &config.modbus[0].block[1];
    let s = submission(&mapper, "plc", coils, &Answer::Bits(vec![false, true]), 5).expect("whole");
    assert_eq!(values(&s), [("plc.pump".to_owned(), 5, 1.0)]);
}

#[test]
fn a_value_the_mapping_refuses_is_a_dead_letter_with_the_register_bytes() {
    let (config, mapper) = setup();
    let holding = &config.modbus[0].block[0];
    // level 500 * 0.1 = 50 is above max = 10.
    let answer = Answer::Registers(vec![0x0000, 0x41AC, 0, 500]);
    let s = submission(&mapper, "plc", holding, &answer, 7).expect("whole");
    assert_eq!(s.readings.len(), 1, "the other register still reads");
    assert_eq!(s.dead_letters.len(), 1);
    let dead = &s.dead_letters[0];
    assert_eq!((dead.source.as_str(), dead.received_ms), ("plc", 7));
    assert!(dead.reason.contains("level") && dead.reason.contains("holding 100+4"));
    assert_eq!(dead.payload, 500u16.to_be_bytes());
}

#[test]
fn a_short_answer_gives_no_submission() {
    let (config, mapper) = setup();
    let holding = &config.modbus[0].block[0];
    let answer = Answer::Registers(vec![0, 0, 0]);
    assert!(submission(&mapper, "plc", holding, &answer, 1).is_none());
    let coils = &config.modbus[0].block[1];
    assert!(submission(&mapper, "plc", coils, &Answer::Bits(vec![true]), 1).is_none());
}

#[test]
fn devices_and_blocks_are_named_in_logs_by_transport_unit_and_range() {
    let (config, _) = setup();
    assert_eq!(device(&config.modbus[0]), "tcp 127.0.0.1:5020 unit 1");
    assert_eq!(describe(&config.modbus[0].block[1]), "coils 0+2");
}

/// Counter values in `KIND.families` order.
fn sample(polls: u64, exceptions: u64, timeouts: u64, transport: u64, connect: u64) -> Vec<u64> {
    vec![polls, 0, exceptions, timeouts, transport, 0, connect]
}

#[test]
fn health_follows_answers_and_failures_and_holds_between_them() {
    let mut h = ModbusHealth::default();
    let t = Instant::now();
    assert_eq!(
        h.observe(t, &sample(0, 0, 0, 0, 0)),
        SourceState::Connecting
    );
    assert_eq!(h.observe(t, &sample(3, 0, 0, 0, 0)), SourceState::Connected);
    assert_eq!(
        h.observe(t, &sample(3, 0, 1, 0, 0)),
        SourceState::Disconnected
    );
    // Waiting out the reconnect backoff: nothing moves, still disconnected.
    let later = t + Duration::from_secs(20);
    assert_eq!(
        h.observe(later, &sample(3, 0, 1, 0, 0)),
        SourceState::Disconnected
    );
    assert_eq!(
        h.observe(later, &sample(3, 0, 1, 0, 1)),
        SourceState::Disconnected
    );
    // Exceptions are answers: the device is there.
    assert_eq!(
        h.observe(later, &sample(3, 2, 1, 0, 1)),
        SourceState::Connected
    );
    // A failure in the same sample as an answer wins.
    assert_eq!(
        h.observe(later, &sample(4, 2, 1, 1, 1)),
        SourceState::Disconnected
    );
}

#[test]
fn a_device_that_never_connects_is_disconnected_after_its_first_failure() {
    let mut h = ModbusHealth::default();
    let t = Instant::now();
    assert_eq!(
        h.observe(t, &sample(0, 0, 0, 0, 1)),
        SourceState::Disconnected
    );
}

#[tokio::test(start_paused = true)]
async fn blocks_due_together_take_turns() {
    let mut ticks: Vec<Interval> = (0..3)
        .map(|_| {
            let mut t = tokio::time::interval(Duration::from_millis(100));
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        })
        .collect();
    let mut turn = 0;
    let mut order = Vec::new();
    for _ in 0..6 {
        let i = next_due(&mut ticks, turn).await;
        turn = i + 1;
        order.push(i);
    }
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
}

/// A task for the device of `DEVICE` with its `tcp` line replaced by `transport`, and the
/// receiving end of its submissions.
fn task(transport: &str) -> (ModbusSourceTask, mpsc::Receiver<Submission>) {
    let config = config(&with_agent(
        &DEVICE.replace("tcp = \"127.0.0.1:5020\"", transport),
    ));
    let (submissions, rx) = mpsc::channel(16);
    let task = ModbusSourceTask {
        config: config.modbus[0].clone(),
        mapper: Arc::new(Mapper::new(&config)),
        submissions,
        counters: Arc::default(),
        cancel: CancellationToken::new(),
    };
    (task, rx)
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_and_is_retried_with_backoff_not_in_a_busy_loop() {
    // Accepts every connection and reads the requests, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let (task, mut rx) = task(&format!("tcp = \"{addr}\"\ntimeout_ms = 50"));
    let (counters, cancel) = (task.counters.clone(), task.cancel.clone());
    let running = tokio::spawn(task.run());
    // Sessions at about 0, 150, 400 and 850 ms: 50 ms timeout, then 100, 200, 400 ms backoff.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("stops promptly when cancelled")
        .expect("task");
    let (connects, timeouts) = (load(&counters.connects), load(&counters.timeouts));
    assert!((2..=6).contains(&timeouts), "{timeouts} timeouts");
    assert!(
        connects == timeouts || connects == timeouts + 1,
        "one session per timeout: {connects} connects, {timeouts} timeouts"
    );
    assert_eq!(load(&counters.polls), 0);
    assert!(
        rx.try_recv().is_err(),
        "no reading from a silent device: a gap"
    );
}

/// CRC-16/MODBUS, appended low byte first.
fn rtu_frame(body: &[u8]) -> Vec<u8> {
    let mut crc = 0xFFFFu16;
    for &byte in body {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    let mut frame = body.to_vec();
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

#[test]
fn the_test_crc_is_the_modbus_one() {
    // The specification's example: read 2 holding registers at 0x006B of unit 0x11 -> CRC 76 87.
    let frame = rtu_frame(&[0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]);
    assert_eq!(frame[6..], [0x76, 0x87]);
}

/// tokio-modbus's RTU decoder skips bytes until a frame's CRC checks out, so a corrupted answer
/// is never an error of its own: the request times out (and the session is reopened).
#[tokio::test]
async fn an_rtu_answer_with_a_bad_crc_is_skipped_and_counted_as_a_timeout() {
    let (port, mut device) = tokio_serial::SerialStream::pair().expect("pty pair");
    let (task, _rx) = task("serial = \"/unused\"\ntimeout_ms = 300");
    let mut session = rtu::attach_slave(port, Slave(1));
    // The holding block 100+4 of unit 1: 21.5f32 low word first, 0x7777, -42.
    let answer = rtu_frame(&[1, 3, 8, 0x00, 0x00, 0x41, 0xAC, 0x77, 0x77, 0xFF, 0xD6]);
    let mut corrupt = answer.clone();
    corrupt[5] ^= 0x01;
    let responder = tokio::spawn(async move {
        for reply in [corrupt, answer] {
            let mut request = [0u8; 8];
            device.read_exact(&mut request).await.expect("request");
            assert_eq!(
                request[..6],
                [1, 3, 0, 100, 0, 4],
                "read holding 100+4 of unit 1"
            );
            device.write_all(&reply).await.expect("answer");
        }
        device
    });
    let mut failing = false;
    let first = task.poll(&mut session, 0, &mut failing).await;
    assert!(
        matches!(first, Err(ModbusError::Timeout { .. })),
        "{first:?}"
    );
    assert_eq!(load(&task.counters.timeouts), 1);
    assert_eq!(load(&task.counters.transport_errors), 0);
    let second = task.poll(&mut session, 0, &mut failing).await;
    let submission = second.expect("answered").expect("with data");
    assert_eq!(
        submission
            .readings
            .iter()
            .map(|(r, _)| (r.sensor.as_str(), r.value))
            .collect::<Vec<_>>(),
        [("plc.temp", 21.5), ("plc.level", -42.0 * 0.1)]
    );
    assert_eq!(load(&task.counters.polls), 1);
    let _device = responder.await.expect("responder");
}
