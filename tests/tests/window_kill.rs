//! The windowing stage across `kill -9`: the agent binary is SIGKILLed at 20 random moments
//! while a publisher streams out-of-order readings through the real Mosquitto, and restarted
//! each time. The partials in the outbox must be exactly those of a straight run of the window
//! state machine over the same input: the same windows, each emitted once, with equal merged
//! aggregates.

mod window_support;

use std::collections::BTreeSet;
use std::time::Duration;

use edge_agent::config::Config;
use edge_agent::reading::Reading;
use edge_agent::window::{Output, Windows};
use edge_tests::Services;
use window_support::*;

const N: u64 = 12_000;
const DEVICES: u64 = 10;
const BASE_TS: u64 = 1_700_000_000_000;
const KILLS: usize = 20;

/// Reading `i`: device `i % 10`, about 10 ms of event time apart with up to 400 ms of disorder
/// (well inside the 5 s lateness, also after redelivery reorders a few), then one far-future
/// sentinel per device that closes every real window.
fn input() -> Vec<Msg> {
    let mut msgs: Vec<Msg> = (0..N)
        .map(|i| Msg {
            dev: i % DEVICES,
            ts: BASE_TS + i * 10 + (i * 7919) % 400,
            value: ((i * 31) % 997) as f64 * 0.25 - 50.0,
        })
        .collect();
    for dev in 0..DEVICES {
        msgs.push(Msg {
            dev,
            ts: BASE_TS + N * 10 + 60_000,
            value: 0.0,
        });
    }
    msgs
}

const WINDOW: &str = r#"kind = "tumbling"
size_ms = 1000
allowed_lateness_ms = 5000
idle_timeout_ms = 600000
late = "forward"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_are_the_same_with_and_without_sigkill_at_20_random_points() {
    let services = Services::from_env();
    let bin = agent_binary();
    let setup = setup(&services.mqtt_url, WINDOW);
    create_session(&setup).await;

    // The straight run: the state machine alone, in publish order.
    let config = Config::load(&setup.config_path).expect("config");
    let spec = config.pipeline[0].window.as_ref().expect("window").spec();
    let mut straight = Windows::new(spec, "w", "test-agent").expect("machine");
    let mut out = Vec::new();
    for m in input() {
        let r = Reading {
            sensor: format!("d{}", m.dev),
            ts_ms: m.ts,
            value: m.value,
            seq: None,
        };
        straight.push(&r, 0, &mut out);
    }
    let want: Vec<_> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Partial(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert!(want.len() as u64 >= DEVICES * (N * 10 / 1000));

    let publishing = {
        let msgs = input();
        let setup_ref = setup.copy_for_task();
        tokio::spawn(async move { publish(&setup_ref, msgs, Duration::from_millis(120)).await })
    };
    edge_tests::schedule::kill_repeatedly(KILLS, || spawn_agent(&bin, &setup)).await;
    assert_eq!(publishing.await.expect("publisher"), N + DEVICES);

    let records = run_until(&bin, &setup, Duration::from_secs(120), |r| {
        partials(r).len() >= want.len()
    })
    .await;
    let got = partials(&records);
    let late = records
        .iter()
        .filter(|r| r.kind == edge_agent::outbox::RecordKind::Late)
        .count();
    println!(
        "{} partials (straight run: {}), {late} late records",
        got.len(),
        want.len()
    );
    let mut seen = BTreeSet::new();
    for p in &got {
        let id = (p.series.to_string(), p.window_start_ms, p.revision);
        assert!(seen.insert(id.clone()), "emitted twice: {id:?}");
    }
    assert_eq!(late, 0, "disorder stayed within the lateness");
    assert_eq!(got.len(), want.len(), "each window exactly once");
    let (got, want) = (merged(&got), merged(&want));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, a) in &want {
        assert_same(&format!("{k:?}"), &got[k], a);
    }
}

/// Idle closes depend on the wall clock, so a run with kills cannot be compared with a straight
/// one; what must hold is the accounting: bursts with pauses longer than the idle timeout make
/// windows close by idle (and later readings of them late), the agent is SIGKILLed at 10 random
/// points, and still every reading is in exactly one partial or one late record, and no
/// (series, window, revision) is emitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_closes_across_sigkills_emit_each_window_once_and_account_for_every_reading() {
    const BURSTS: u64 = 12;
    const PER_BURST: u64 = 240;
    const DEVS: u64 = 6;
    let services = Services::from_env();
    let bin = agent_binary();
    let window = "kind = \"tumbling\"\nsize_ms = 1000\nallowed_lateness_ms = 0\nidle_timeout_ms = 300\nlate = \"forward\"\n";
    let setup = setup(&services.mqtt_url, window);
    create_session(&setup).await;
    // Per device 40 readings per burst, 50 ms of event time apart: a burst ends mid-window.
    let msgs: Vec<Msg> = (0..BURSTS * PER_BURST)
        .map(|i| Msg {
            dev: i % DEVS,
            ts: BASE_TS + (i / DEVS) * 50,
            value: i as f64,
        })
        .collect();
    let publishing = {
        let msgs = msgs.clone();
        let setup_ref = setup.copy_for_task();
        tokio::spawn(async move {
            let mut acked = 0;
            for burst in msgs.chunks(PER_BURST as usize) {
                acked += publish(&setup_ref, burst.to_vec(), Duration::ZERO).await;
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            acked
        })
    };
    let mut seed = edge_tests::schedule::seed();
    println!("kill schedule seed: {seed}");
    for _ in 0..10 {
        let mut agent = spawn_agent(&bin, &setup);
        tokio::time::sleep(Duration::from_millis(300 + next(&mut seed) % 900)).await;
        agent.kill().expect("SIGKILL the agent");
        agent.wait().expect("reap agent");
    }
    assert_eq!(publishing.await.expect("publisher"), BURSTS * PER_BURST);
    let total = |records: &[edge_agent::outbox::OutboxRecord]| {
        let late = records
            .iter()
            .filter(|r| r.kind == edge_agent::outbox::RecordKind::Late)
            .count() as u64;
        partials(records)
            .iter()
            .map(|p| p.aggregate.count())
            .sum::<u64>()
            + late
    };
    let records = run_until(&bin, &setup, Duration::from_secs(60), |r| {
        total(r) >= BURSTS * PER_BURST
    })
    .await;
    let got = partials(&records);
    let mut seen = BTreeSet::new();
    for p in &got {
        let id = (p.series.to_string(), p.window_start_ms, p.revision);
        assert!(seen.insert(id.clone()), "emitted twice: {id:?}");
    }
    let late = records
        .iter()
        .filter(|r| r.kind == edge_agent::outbox::RecordKind::Late)
        .count();
    println!("{} partials, {late} late records", got.len());
    assert_eq!(
        total(&records),
        BURSTS * PER_BURST,
        "every reading exactly once"
    );
}
