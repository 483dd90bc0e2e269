use std::time::Duration;

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
