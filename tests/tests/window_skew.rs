//! Devices whose clocks disagree by up to an hour, simulated by `firmware-sim mqtt
//! --clock-skew-ms` through the real Mosquitto into the agent binary. Watermarks are per
//! series, so no device's readings are late because another device's clock runs ahead: every
//! reading in the firmware-sim ledger is in exactly one partial, in the window its own
//! timestamp names, and the last windows close by the idle timeout.

mod window_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use edge_agent::outbox::RecordKind;
use edge_tests::Services;
use window_support::*;

const DEVICES: u64 = 6;
const PER_DEVICE: u64 = 150;
const HOUR_MS: u64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_an_hour_of_clock_skew_each_get_every_reading_windowed_by_their_own_clock() {
    let services = Services::from_env();
    let sim = binary("firmware-sim", "firmware-sim");
    let bin = agent_binary();
    let window =
        "kind = \"tumbling\"\nsize_ms = 1000\nallowed_lateness_ms = 200\nidle_timeout_ms = 1500\n";
    let setup = setup(&services.mqtt_url, window);
    create_session(&setup).await;
    let ledger = setup.dir.path().join("ledger.jsonl");
    let status = Command::new(&sim)
        .args(["mqtt", "--url", &setup.url, "--topic"])
        .arg(format!("{}/{{device}}/v", setup.root))
        .args(["--devices", &DEVICES.to_string(), "--rate", "100"])
        .args(["--count", &PER_DEVICE.to_string(), "--seed", "7"])
        .args(["--clock-skew-ms", &HOUR_MS.to_string(), "--ledger"])
        .arg(&ledger)
        .status()
        .expect("run firmware-sim");
    assert!(status.success(), "firmware-sim failed");

    // The ledger: (device, window start) -> readings, on each device's own (skewed) clock.
    let mut want: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut first_ts: BTreeMap<String, i64> = BTreeMap::new();
    let text = std::fs::read_to_string(&ledger).expect("ledger");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("ledger line");
        if v["kind"] != "mqtt" {
            continue;
        }
        let dev = format!("dev-{}", v["device"]);
        let ts = v["ts_ms"].as_i64().expect("ts_ms");
        first_ts.entry(dev.clone()).or_insert(ts);
        *want.entry((dev, ts.div_euclid(1000) * 1000)).or_default() += 1;
    }
    assert_eq!(want.values().sum::<u64>(), DEVICES * PER_DEVICE);
    let spread = first_ts.values().max().unwrap_or(&0) - first_ts.values().min().unwrap_or(&0);
    println!("clock spread between devices: {} s", spread / 1000);
    assert!(spread > 60_000, "the devices' clocks really disagree");

    let records = run_until(&bin, &setup, Duration::from_secs(40), |r| {
        partials(r).len() >= want.len()
    })
    .await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == RecordKind::Late)
            .count(),
        0,
        "nothing late"
    );
    let got: BTreeMap<(String, i64), u64> = merged(&partials(&records))
        .into_iter()
        .map(|(k, a)| (k, a.count()))
        .collect();
    assert_eq!(partials(&records).len(), got.len(), "each window once");
    assert_eq!(got, want);
}
