//! The `edge-agent` binary SIGKILLed 30 times at random moments while it drains 200,000 outbox
//! records into the shared broker: every record is in Kafka exactly once for a
//! `read_committed` reader (and for kcat). The outbox is filled through the library first; the
//! agent runs with a `[kafka]` table and no sources, so it only forwards.

mod forward_support;

use std::time::{Duration, Instant};

use edge_tests::Services;
use forward_support::{account, agent_binary, next, seed, terminate, Agent};

#[test]
fn agent_killed_30_times_while_draining_200000_records_delivers_each_exactly_once() {
    const N: u64 = 200_000;
    const KILLS: usize = 30;
    let services = Services::from_env();
    let bin = agent_binary();
    // Small transactions: more of them, so kills land in every phase of one.
    let agent = Agent::new(&services.kafka_bootstrap, "batch_max_records = 300");
    let started = Instant::now();
    agent.prefill(N);
    println!("outbox filled with {N} records in {:?}", started.elapsed());

    let mut seed = seed();
    println!("kill schedule seed: {seed}");
    let mut killed_mid_drain = 0;
    for kill in 0..KILLS {
        let mut agent_proc = agent.spawn_binary(&bin);
        let alive_ms = 300 + next(&mut seed) % 1500;
        std::thread::sleep(Duration::from_millis(alive_ms));
        let child = &mut agent_proc.child;
        child.kill().expect("SIGKILL the agent"); // Child::kill is SIGKILL on Unix
        child.wait().expect("reap the agent");
        let committed = agent.marker_now().map_or(0, |m| m.last_seq);
        if committed < N {
            killed_mid_drain += 1;
        }
        println!("kill {kill}: after {alive_ms} ms, committed through seq {committed}");
        if std::env::var("EDGE_AGENT_LOG").is_ok() {
            print!("{}", agent_proc.stderr());
        }
    }
    println!("{killed_mid_drain} of {KILLS} kills hit the agent before the drain was done");

    let mut last = agent.spawn_binary(&bin);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let committed = agent.marker_now().map_or(0, |m| m.last_seq);
        if committed >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {committed} of {N} committed after the kills"
        );
        assert!(
            last.child.try_wait().expect("poll agent").is_none(),
            "the agent stopped: {}",
            last.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    terminate(&last.child);
    let status = last.child.wait().expect("reap the agent");
    assert!(
        status.success(),
        "SIGTERM stops the agent cleanly: {status}\n{}",
        last.stderr()
    );
    assert!(
        killed_mid_drain >= KILLS / 2,
        "most kills must land during the drain ({killed_mid_drain} of {KILLS})"
    );
    account(&agent.bootstrap, &agent.topic, &agent.id, N);
    println!("total {:?}", started.elapsed());
}
