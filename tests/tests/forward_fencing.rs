//! Two `edge-agent` processes configured with the same agent id (separate data directories).
//! With `kafka.adopt_agent_id = true` the second takes the id over: its `init_transactions`
//! fences the first, which stops with "fenced: another agent with id X took over" and a non-zero
//! exit; nothing either committed appears twice. Without it, the second refuses to start and
//! the first keeps running.

mod forward_support;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use edge_tests::kafka::{kcat_count_committed, read_committed};
use edge_tests::Services;
use forward_support::{agent_binary, append_with, terminate, Agent};

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn wait_marker(agent: &Agent, seq: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while agent.marker_now().map_or(0, |m| m.last_seq) < seq {
        assert!(Instant::now() < deadline, "seq {seq} not committed in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_second_agent_with_the_same_id_fences_the_first_which_stops_with_a_clear_error() {
    const FIRST: u64 = 100_000;
    const SECOND: u64 = 20_000;
    let services = Services::from_env();
    let bin = agent_binary();
    let first = Agent::new(&services.kafka_bootstrap, "batch_max_records = 300");
    append_with(&first.open_db(), FIRST, "a");
    let second = first.twin("adopt_agent_id = true");
    let second_instance = {
        let db = second.open_db();
        append_with(&db, SECOND, "b");
        edge_agent::forward::progress::instance_id(&db).expect("instance id")
    };

    let mut a = first.spawn_binary(&bin);
    wait_marker(&first, 2000, Duration::from_secs(60));
    let mut b = second.spawn_binary(&bin);
    let status = wait_exit(&mut a.child, Duration::from_secs(60)).expect("the first agent stops");
    let a_err = a.stderr();
    println!("first agent: {status}\n{a_err}");
    assert!(!status.success(), "the fenced agent exits non-zero");
    let expected = format!("fenced: another agent with id {} took over", first.id);
    assert!(
        a_err.contains(&expected),
        "stderr names the fencing: {a_err}"
    );

    // The marker is the second's once it names its instance.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !second
        .marker_now()
        .is_some_and(|m| m.instance == second_instance && m.last_seq >= SECOND)
    {
        assert!(Instant::now() < deadline, "the second agent did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(&b.child);
    let status = b.child.wait().expect("reap");
    assert!(status.success(), "the second stops cleanly: {}", b.stderr());

    // Account: the first's records form a prefix 1..=k, each once (its open transaction was
    // aborted by the fence); all of the second's, each once.
    let records = read_committed(&first.bootstrap, &first.topic, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut copies: BTreeMap<(u8, u64), u32> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.header("agent"), Some(first.id.as_bytes()));
        let payload = String::from_utf8(r.payload.clone().unwrap_or_default()).expect("utf-8");
        let seq: u64 = payload[1..].parse().expect("payload a<seq> or b<seq>");
        let seq_header: u64 = std::str::from_utf8(r.header("seq").expect("seq"))
            .expect("utf-8")
            .parse()
            .expect("number");
        assert_eq!(seq, seq_header, "seq header matches the record");
        *copies.entry((payload.as_bytes()[0], seq)).or_default() += 1;
    }
    let twice: Vec<_> = copies.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "records more than once: {:?}",
        &twice[..twice.len().min(10)]
    );
    let k = copies.keys().filter(|(who, _)| *who == b'a').count() as u64;
    for seq in 1..=k {
        assert!(
            copies.contains_key(&(b'a', seq)),
            "first agent's seq {seq} missing below {k}"
        );
    }
    for seq in 1..=SECOND {
        assert!(
            copies.contains_key(&(b'b', seq)),
            "second agent's seq {seq} missing"
        );
    }
    println!(
        "first agent committed 1..={k} of {FIRST} before it was fenced; the second all {SECOND}; \
         none twice"
    );
    // Mid-drain usually; if the first had drained all, its idle heartbeat met the fence.
    assert!((2000..=FIRST).contains(&k), "k = {k}");
    let kcat =
        kcat_count_committed(&first.bootstrap, &first.topic).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kcat as u64, k + SECOND, "kcat counts the same");
}

#[test]
fn a_second_database_with_the_same_id_is_refused_and_the_first_keeps_forwarding() {
    let services = Services::from_env();
    let bin = agent_binary();
    let first = Agent::new(&services.kafka_bootstrap, "");
    let first_db = first.open_db();
    append_with(&first_db, 1000, "r");
    drop(first_db);
    let mut a = first.spawn_binary(&bin);
    wait_marker(&first, 1000, Duration::from_secs(60));

    let second = first.twin("");
    append_with(&second.open_db(), 10, "r");
    let mut b = second.spawn_binary(&bin);
    let status = wait_exit(&mut b.child, Duration::from_secs(60)).expect("the second agent stops");
    let b_err = b.stderr();
    println!("second agent: {status}\n{b_err}");
    assert!(!status.success());
    assert!(
        b_err.contains("was committed by instance") && b_err.contains("refuses to start"),
        "{b_err}"
    );
    assert!(
        a.child.try_wait().expect("poll").is_none(),
        "the first agent was not fenced and still runs"
    );
    terminate(&a.child);
    assert!(a.child.wait().expect("reap").success());
}
