//! Fault schedules: a clock seed each run prints (so a failing schedule can be read back from
//! the log), a tiny deterministic generator (xorshift64) to draw kill times and delays from, and
//! the SIGKILL loop of the crash suites.

use std::process::Child;
use std::time::Duration;

/// A seed from the clock (odd, never zero).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// The next xorshift64 draw from `state` (which must not be zero).
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Kills a freshly spawned agent `kills` times with SIGKILL, each after 200 to 1,400 ms alive
/// (drawn from a printed clock seed), and reaps it.
pub async fn kill_repeatedly(kills: usize, mut spawn: impl FnMut() -> Child) {
    let mut seed = seed();
    println!("kill schedule seed: {seed}");
    for kill in 0..kills {
        let mut agent = spawn();
        let alive_ms = 200 + next(&mut seed) % 1200;
        tokio::time::sleep(Duration::from_millis(alive_ms)).await;
        agent.kill().expect("SIGKILL the agent"); // Child::kill is SIGKILL on Unix
        let status = agent.wait().expect("reap agent");
        println!("kill {kill}: after {alive_ms} ms ({status})");
    }
}
