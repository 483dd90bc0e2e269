//! A mixed fleet (one gateway writing postcard partials, one writing the JSON form of
//! `[kafka] partial_format = "json"`) into one consumer; its finals are then read the way a
//! stream engine or a shell script would, by two readers no one here wrote: Kafka's own console
//! consumer (`org.apache.kafka.tools.consumer.ConsoleConsumer`, what `kafka-console-consumer.sh`
//! runs, from the broker's jar set) with `--isolation-level read_committed`, and `jq` (Debian)
//! parsing the JSON. Count, mean and window bounds of the newest revision of every window must
//! match the batch computation over the raw readings and the finals our own reader sees.

mod consumer_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use consumer_support::{cells, now_ms, reference, FakeAgent, Rng, Setup};
use edge_tests::schema::Schema;
use edge_tests::Services;

#[test]
fn finals_of_a_mixed_postcard_and_json_fleet_read_by_kafka_console_consumer_and_jq() {
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-engines", 2);
    let gateways = ["gw-postcard", "gw-json"];
    let series = ["line1.temp", "line1.flow", "line2.temp"];
    let size = 10_000;
    let base = (now_ms() / 60_000 - 50) * 60_000;
    let data = cells(&mut Rng(0x0e1c_0de5), &gateways, &series, 12, base, size);

    let mut postcard = FakeAgent::new(bootstrap, "gw-postcard");
    let partials: Vec<_> = data
        .iter()
        .filter(|c| c.gateway == "gw-postcard")
        .map(|c| (c.partial(c.end_ms, 0), None))
        .collect();
    postcard.send_partials(&setup.input, &partials);
    let mut json = FakeAgent::new(bootstrap, "gw-json");
    let records: Vec<_> = data
        .iter()
        .filter(|c| c.gateway == "gw-json")
        .map(|c| {
            let body = serde_json::to_vec(&c.partial(c.end_ms, 0)).expect("JSON");
            Schema::Partial.check(&body);
            (c.series.clone(), body, None)
        })
        .collect();
    json.send(&setup.input, &records);

    let mut consumer = setup.spawn(&setup.config("a", 3_000, "", "", ""), "a");
    let expected = reference(&data, None);
    let ours = setup.wait_for_finals(&expected, Duration::from_secs(90));
    consumer.kill().ok();
    consumer.wait().ok();

    let console = console_consumer(bootstrap, &setup.finals, setup.dir.path());
    let summary = jq_newest_per_window(&console);
    assert_eq!(
        summary.len(),
        expected.len(),
        "one newest final per window through console consumer and jq"
    );
    for (key, r) in &expected {
        let row = summary
            .get(key)
            .unwrap_or_else(|| panic!("jq saw no final for {key}"));
        let n = r.values.len() as u64;
        let mean = r.values.iter().sum::<f64>() / n as f64;
        assert_eq!(row.count, n, "{key}: count");
        assert!(
            (row.mean - mean).abs() <= 1e-9 * mean.abs().max(1.0),
            "{key}: mean {} vs {mean}",
            row.mean
        );
        let ours = &ours[key];
        assert_eq!(
            (row.start, row.end),
            (
                ours["window_start_ms"].as_i64().unwrap(),
                ours["window_end_ms"].as_i64().unwrap()
            ),
            "{key}: window bounds"
        );
        assert_eq!(row.end - row.start, size, "{key}");
        assert_eq!(
            row.gateways,
            vec!["gw-json", "gw-postcard"],
            "{key}: both gateways merged"
        );
    }
}

/// Every committed final of `topic` as `key<TAB>value` lines, read by Kafka's console consumer
/// until 10 s pass without a new record.
fn console_consumer(bootstrap: &str, topic: &str, dir: &Path) -> String {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/services.sh");
    let output = Command::new("bash")
        .arg(&services)
        .arg("console-consumer")
        .args(["--bootstrap-server", bootstrap, "--topic", topic])
        .args(["--from-beginning", "--isolation-level", "read_committed"])
        .args(["--timeout-ms", "10000"])
        .args(["--property", "print.key=true"])
        .args(["--property", "key.separator=\t"])
        .current_dir(dir)
        .stderr(Stdio::piped())
        .output()
        .expect("run the console consumer");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    // It exits non-zero after its --timeout-ms; what matters is that it printed the records.
    assert!(
        stdout.lines().any(|l| l.contains('\t')),
        "the console consumer printed no records; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[derive(Debug, serde::Deserialize)]
struct Row {
    key: String,
    count: u64,
    mean: f64,
    start: i64,
    end: i64,
    gateways: Vec<String>,
}

/// jq keeps the newest revision of each window (compaction's view) and reduces it to the
/// fields compared: `{key, count, mean, start, end, gateways}`.
fn jq_newest_per_window(lines: &str) -> BTreeMap<String, Row> {
    let values: String = lines
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(key, value)| {
            format!(
                "{{\"key\":{},\"final\":{value}}}\n",
                serde_json::Value::from(key)
            )
        })
        .collect();
    let program = r#"group_by(.key) | map(max_by(.final.revision))
        | map({key, count: .final.count, mean: .final.mean,
               start: .final.window_start_ms, end: .final.window_end_ms,
               gateways: .final.gateways}) | .[]"#;
    let mut jq = Command::new("jq")
        .args(["-c", "-s", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("jq is installed (scripts/install-deps.sh)");
    use std::io::Write;
    jq.stdin
        .take()
        .expect("stdin")
        .write_all(values.as_bytes())
        .expect("feed jq");
    let out = jq.wait_with_output().expect("jq");
    assert!(out.status.success(), "jq failed");
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| {
            let row: Row = serde_json::from_str(l).expect("a jq row");
            (row.key.clone(), row)
        })
        .collect()
}
