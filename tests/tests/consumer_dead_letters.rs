//! Malformed and unknown-version partials go to the dead-letter topic with their reason and
//! source; the consumer keeps going and the good partials around them are merged.

mod consumer_support;

use std::time::{Duration, Instant};

use consumer_support::{cells, check_final, encode, now_ms, reference, FakeAgent, Rng, Setup};
use edge_tests::kafka::read_committed;
use edge_tests::Services;

#[test]
fn malformed_and_unknown_version_partials_are_dead_lettered_and_the_consumer_keeps_going() {
    let started = Instant::now();
    let services = Services::from_env();
    let bootstrap = services.kafka_bootstrap.as_str();
    let setup = Setup::new(bootstrap, "cons-dl", 2);
    let now = now_ms();
    let base = (now / 60_000 - 10) * 60_000;
    let data = cells(
        &mut Rng(7),
        &["gw-a", "gw-b"],
        &["s1", "s2"],
        6,
        base,
        10_000,
    );
    let good: Vec<_> = data
        .iter()
        .map(|c| encode(&c.partial(c.end_ms, 0)))
        .collect();

    let mut unknown_version = good[0].clone();
    unknown_version[0] = 9;
    let mut inverted = data[0].partial(data[0].end_ms, 0);
    inverted.window_end_ms = inverted.window_start_ms;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x01not a partial".to_vec()),
        ("unknown version", unknown_version),
        ("truncated", good[1][..good[1].len() / 2].to_vec()),
        ("inverted window", encode(&inverted)),
        ("bad JSON", b"{\"series\": 3}".to_vec()),
        ("empty", Vec::new()),
    ];
    let mut agent = FakeAgent::new(bootstrap, "gw-a");
    let mut records = Vec::new();
    let mut bad_iter = bad.iter();
    for (i, payload) in good.iter().enumerate() {
        records.push((data[i].series.clone(), payload.clone(), None));
        if i % 4 == 0 {
            if let Some((name, b)) = bad_iter.next() {
                records.push((format!("bad-{name}"), b.clone(), None));
            }
        }
    }
    assert!(
        bad_iter.next().is_none(),
        "every bad payload is interleaved"
    );
    agent.send(&setup.input, &records);

    let mut child = setup.spawn(&setup.config("a", 2_000, "", "", ""), "a");
    let expected = reference(&data, None);
    let finals = setup.wait_for_finals(&expected, Duration::from_secs(60));
    for (k, r) in &expected {
        check_final(k, &finals[k], r);
    }
    let dead = read_committed(bootstrap, &setup.dead, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    child.kill().ok();
    child.wait().ok();
    assert_eq!(dead.len(), bad.len(), "one dead letter per bad record");
    for d in &dead {
        let key = String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()).into_owned();
        let reason = String::from_utf8_lossy(d.header("reason").expect("reason")).into_owned();
        assert!(key.starts_with("bad-"), "{key}");
        assert_eq!(d.header("source.topic"), Some(setup.input.as_bytes()));
        assert!(d.header("source.offset").is_some());
        assert_eq!(d.header("agent"), Some(&b"gw-a"[..]));
        let name = &key["bad-".len()..];
        let original = &bad.iter().find(|(n, _)| *n == name).expect("known").1;
        assert_eq!(
            d.payload.as_deref().unwrap_or_default(),
            &original[..],
            "{key}"
        );
        println!("  {key}: {reason}");
        if name == "unknown version" {
            assert!(reason.contains("unknown partial version 9"), "{reason}");
        }
    }
    println!(
        "{} dead letters, {} finals correct ({:?})",
        dead.len(),
        finals.len(),
        started.elapsed()
    );
}
