//! The demo's timeline: everything up ([`Stack::start`]); readings flowing with live progress;
//! an agent crash and a Kafka outage mid-run; then, once the devices have stopped, waiting until
//! the finals account for every reading, and the summary.
//!
//! ```text
//!  0 s                 30 %            55 %     +outage          100 %          settle
//!  |---- devices send --|-- kill -9 --|-- Kafka down --|----------| ledgers end |-- finals --> summary
//!                         agent back                 back up                       complete
//!                         after 2 s
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edge_protocol::partial::Partial;

use crate::account::{self, Account, Finals, Sent};
use crate::agent_http::Snapshot;
use crate::kafka::Tail;
use crate::procs::tail;
use crate::report::{self, Outcome, Progress, Sample};
use crate::stack::{Agent, Stack};

/// What the user chose (see `main.rs` for the flags and their defaults).
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub devices: u32,
    pub channels: u8,
    pub rate: u32,
    pub window_ms: u64,
    pub kafka: Option<String>,
    pub mqtt: Option<String>,
    pub faults: bool,
    pub keep: bool,
    pub work_dir: PathBuf,
    pub progress: Duration,
    pub settle_timeout: Duration,
}

/// How long the crashed agent stays down before the demo starts it again.
const AGENT_DOWN: Duration = Duration::from_secs(2);

/// Time since the demo started, and the lines that say what happens.
pub struct Clock {
    started: Instant,
}

impl Clock {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn say(&self, what: &str) {
        println!("{:>6.1}s  {what}", self.elapsed().as_secs_f64());
    }
}

/// The faults of the run and when they happen.
struct Faults {
    crash_at: Option<Duration>,
    restart_at: Option<Duration>,
    outage: Option<(Duration, Duration)>,
}

impl Faults {
    fn plan(o: &Options, own_kafka: bool) -> Faults {
        let d = o.duration;
        if !o.faults || d < Duration::from_secs(20) {
            return Faults {
                crash_at: None,
                restart_at: None,
                outage: None,
            };
        }
        let crash = d.mul_f64(0.3);
        let outage_start = d.mul_f64(0.55);
        let outage_len = d
            .mul_f64(0.2)
            .clamp(Duration::from_secs(5), Duration::from_secs(30));
        Faults {
            crash_at: Some(crash),
            restart_at: Some(crash + AGENT_DOWN),
            outage: own_kafka.then_some((outage_start, outage_start + outage_len)),
        }
    }
}

/// Everything the demo counts while it runs.
#[derive(Default)]
struct Counts {
    finals: Finals,
    bad_finals: u64,
    partials: u64,
    delivered: u64,
    bad_partials: u64,
    peak_log: u64,
    peak_outbox: u64,
    snapshot: Snapshot,
    /// When Kafka came back from the outage, and the final records read by then.
    kafka_back: Option<(Instant, u64)>,
    /// From Kafka back to the first final record committed after it (as the tail reads it).
    finals_resumed: Option<Duration>,
    /// When the agent was killed (Unix ms), for the Modbus account.
    agent_kills: Vec<u64>,
}

/// After the outage: the first final record read since Kafka came back is the consumer's first
/// commit after it; says so once.
fn check_resume(clock: &Clock, counts: &mut Counts) {
    let Some((back, before)) = counts.kafka_back else {
        return;
    };
    if counts.finals_resumed.is_none() && counts.finals.records > before {
        let took = back.elapsed();
        counts.finals_resumed = Some(took);
        clock.say(&format!(
            "finals resumed {:.1} s after Kafka was back (the consumer's first commit after the outage)",
            took.as_secs_f64()
        ));
    }
}

fn drain(tails: &(Tail, Tail), counts: &mut Counts) {
    tails.0.drain(|_, value| match Partial::decode(value) {
        Ok(p) => {
            counts.partials += 1;
            counts.delivered += p.aggregate.count();
        }
        Err(_) => counts.bad_partials += 1,
    });
    tails.1.drain(|_, value| {
        if counts.finals.apply(value).is_err() {
            counts.bad_finals += 1;
        }
    });
}

/// Samples the agent (keeping the peaks in `counts`) for a progress line.
fn observe(agent: &mut Agent, counts: &mut Counts, kafka_down: bool) -> Sample {
    let (c, snapshot) = agent.sample();
    if let Some(s) = snapshot {
        counts.snapshot = s;
        counts.peak_log = counts.peak_log.max(s.log_readings);
        counts.peak_outbox = counts.peak_outbox.max(s.outbox_records);
    }
    Sample {
        agent_up: agent.proc.is_some(),
        kafka_down,
        snapshot: counts.snapshot,
        windows_closed: c.windows_closed as u64,
        commits: c.commits as u64,
        partials: counts.partials,
        finals: counts.finals.windows() as u64,
    }
}

/// Runs the whole demo; `stop` is set by Ctrl-C / SIGTERM.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<Outcome> {
    let clock = Clock {
        started: Instant::now(),
    };
    let mut stack = Stack::start(o, &clock)?;
    let interrupted = |dir: &PathBuf| {
        anyhow::anyhow!(
            "interrupted; logs and configuration are in {}",
            dir.display()
        )
    };
    let mut counts = Counts::default();
    let mut progress = Progress::new(o.progress);
    println!("{}", Progress::LEGEND);
    let events = stream(o, &mut stack, &clock, &mut counts, &mut progress, stop)?;

    let ledgers: Vec<&Path> = stack.ledgers.iter().map(PathBuf::as_path).collect();
    let sent = Sent::from_ledgers(&ledgers, &counts.agent_kills)
        .context("reading the simulators' ledgers")?;
    clock.say(&format!(
        "devices done: {} readings sent; waiting until every one is in a final (windows close 3 s after the last reading, finals 4 s later)",
        sent.readings()
    ));
    let settle_from = Instant::now();
    let mut account = account::reconcile(&sent, &counts.finals.per_series());
    while !complete(&account) {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted(&stack.dir));
        }
        if settle_from.elapsed() > o.settle_timeout {
            clock.say(&format!(
                "gave up waiting after {} s: the account below shows what is missing",
                o.settle_timeout.as_secs()
            ));
            break;
        }
        stack.check_alive()?;
        drain(&stack.tails, &mut counts);
        check_resume(&clock, &mut counts);
        if progress.due() {
            progress.line(
                clock.elapsed(),
                &observe(&mut stack.agent, &mut counts, false),
            );
        }
        account = account::reconcile(&sent, &counts.finals.per_series());
        std::thread::sleep(Duration::from_millis(200));
    }
    if let (_, Some(s)) = stack.agent.sample() {
        counts.snapshot = s;
    }
    let commits = stack.agent.total().commits;
    clock.say("stopping edge-agent and edge-consumer (SIGTERM: graceful drain)");
    let dir = stack.dir.clone();
    let finals_topic = stack.names.finals.clone();
    let clean_stop = stack.stop();
    Ok(Outcome {
        run_dir: dir,
        wall: clock.elapsed(),
        sent,
        account,
        snapshot: counts.snapshot,
        partials: counts.partials,
        delivered: counts.delivered,
        bad_records: counts.bad_partials + counts.bad_finals,
        final_records: counts.finals.records,
        final_windows: counts.finals.windows(),
        revised: counts.finals.revised(),
        sample: counts.finals.sample(8).into_iter().cloned().collect(),
        commits,
        events,
        finals_resumed: counts.finals_resumed,
        peak_log: counts.peak_log,
        peak_outbox: counts.peak_outbox,
        clean_stop,
        finals_topic,
        options: report::Shown {
            devices: o.devices,
            channels: o.channels,
            rate: o.rate,
            window_ms: o.window_ms,
            duration: o.duration,
        },
    })
}

/// Milliseconds since the Unix epoch (the simulators' ledgers use the same clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every reading sent is in a final, once.
fn complete(account: &Account) -> bool {
    account.exact() && account.finalized >= account.sent
}

/// The devices' run: faults on schedule, progress lines, until both simulators have exited.
/// Returns what happened, for the summary.
fn stream(
    o: &Options,
    stack: &mut Stack,
    clock: &Clock,
    counts: &mut Counts,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> Result<Vec<String>> {
    let faults = Faults::plan(o, stack.brokers.own_kafka());
    if o.faults && faults.outage.is_none() && faults.crash_at.is_some() {
        clock.say(
            "no Kafka outage in this run: the demo only stops a Kafka broker it started itself",
        );
    }
    let t0 = Instant::now();
    let mut events = Vec::new();
    let mut kafka_down = false;
    let mut restarted = false;
    let mut killed_at = Duration::ZERO;
    let mut outage_from = Duration::ZERO;
    let (mut serial_done, mut mqtt_done, mut modbus_done) = (None, None, None);
    while serial_done.is_none() || mqtt_done.is_none() || modbus_done.is_none() {
        if stop.load(Ordering::Relaxed) {
            bail!(
                "interrupted; logs and configuration are in {}",
                stack.dir.display()
            );
        }
        let now = t0.elapsed();
        if faults.crash_at.is_some_and(|t| now >= t) && !restarted && stack.agent.proc.is_some() {
            clock.say("FAULT  kill -9 edge-agent (a power cut: no shutdown, nothing flushed); devices keep sending");
            stack.agent.kill();
            killed_at = clock.elapsed();
            counts.agent_kills.push(unix_ms());
        }
        if faults.restart_at.is_some_and(|t| now >= t) && stack.agent.proc.is_none() {
            let back = Instant::now();
            stack.agent.start()?;
            stack.agent.wait_ready(Duration::from_secs(90))?;
            restarted = true;
            events.push(format!(
                "edge-agent killed with kill -9 at {:.0} s, restarted at {:.0} s",
                killed_at.as_secs_f64(),
                clock.elapsed().as_secs_f64()
            ));
            clock.say(&format!(
                "edge-agent restarted on the same database: serial devices retransmit what was never acked, the broker redelivers the rest, Modbus polls resume (the polls it missed are a gap) ({:.1} s to reconnect)",
                back.elapsed().as_secs_f64()
            ));
        }
        if let Some((from, to)) = faults.outage {
            if now >= from && now < to && !kafka_down {
                clock.say(&format!(
                    "FAULT  Kafka broker stopped for {:.0} s (the uplink is down): the agent keeps acking and buffers on disk",
                    (to - from).as_secs_f64()
                ));
                outage_from = clock.elapsed();
                // Every final committed before the outage is counted, so the first one read
                // after it is new.
                drain(&stack.tails, counts);
                stack.brokers.stop_kafka()?;
                kafka_down = true;
            }
            if now >= to && kafka_down {
                stack.brokers.start_kafka()?;
                counts.kafka_back = Some((Instant::now(), counts.finals.records));
                kafka_down = false;
                events.push(format!(
                    "Kafka broker stopped at {:.0} s, back at {:.0} s",
                    outage_from.as_secs_f64(),
                    clock.elapsed().as_secs_f64()
                ));
                clock.say(
                    "Kafka back: the agent resumes from its progress marker and drains its buffer",
                );
            }
        }
        stack.check_alive()?;
        serial_done = serial_done.or_else(|| stack.sim_serial.exited());
        mqtt_done = mqtt_done.or_else(|| stack.sim_mqtt.exited());
        modbus_done = modbus_done.or_else(|| stack.sim_modbus.exited());
        if !kafka_down {
            drain(&stack.tails, counts);
            check_resume(clock, counts);
        }
        if progress.due() {
            progress.line(
                clock.elapsed(),
                &observe(&mut stack.agent, counts, kafka_down),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, status, log) in [
        ("serial", serial_done, &stack.sim_serial.log),
        ("mqtt", mqtt_done, &stack.sim_mqtt.log),
        ("modbus", modbus_done, &stack.sim_modbus.log),
    ] {
        if !status.is_some_and(|s| s.success()) {
            clock.say(&format!(
                "warning: firmware-sim {name} ended with {status:?}; the end of {}:\n{}",
                log.display(),
                tail(log, 10)
            ));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fit_in_the_run_and_only_with_our_own_kafka() {
        let mut o = Options {
            duration: Duration::from_secs(60),
            devices: 1,
            channels: 1,
            rate: 1,
            window_ms: 5000,
            kafka: None,
            mqtt: None,
            faults: true,
            keep: false,
            work_dir: PathBuf::new(),
            progress: Duration::from_secs(2),
            settle_timeout: Duration::from_secs(1),
        };
        let f = Faults::plan(&o, true);
        let (from, to) = f.outage.unwrap();
        assert!(f.restart_at.unwrap() < from && to < o.duration);
        assert!(Faults::plan(&o, false).outage.is_none());
        o.duration = Duration::from_secs(19);
        assert!(Faults::plan(&o, true).crash_at.is_none());
    }
}
