//! Benchmark: the agent polling many Modbus TCP devices of `firmware-sim`.
//!
//! ```text
//! cargo run --release -p firmware-sim --example bench_modbus -- [DEVICES] [REGISTERS] [SECS] [PERIOD_MS]
//! ```
//!
//! Defaults: 100 devices x 50 registers, polled every 1,000 ms, measured for 30 s. The
//! simulator runs in this process (one TCP listener, the devices as unit ids, each register a
//! `u16` channel, values changing every 100 ms); the agent is the release binary
//! (`target/release/edge-agent`, built by `scripts/bench.sh`), one `[[modbus]]` source per
//! device with one block of all its registers, ingest only (the durable log; no Kafka).
//!
//! After a 3 s warm-up (connects, first polls) it reads the agent's `/metrics` at the start and
//! the end of the window and prints, as `BENCH` lines (`bench/src/line.rs`): answered polls/s
//! and register readings/s (the `edge_modbus_*` counters), readings/s durably accepted by the
//! ingest log (`edge_ingest_accepted_total`), poll errors in the window (exceptions, timeouts,
//! transport and connect errors), and the agent's CPU (percent of one core) and peak RSS. The
//! targets are what keeping up means: every device polled once per period, every register read.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use edge_bench::line::Family;
use edge_bench::suite::thousands;
use firmware_sim::runner::modbus::{self, ModbusConfig};
use firmware_sim::runner::modbus_device::RegisterType;
use firmware_sim::runner::models::ModelSpec;
use tokio_util::sync::CancellationToken;

const FIGURES: Family = Family("modbus");
const WARM_UP: Duration = Duration::from_secs(3);

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("argument {n} ({a:?}) is not a number"))
        })
        .unwrap_or(default)
}

/// A free loopback port (bound, then released for the simulator).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// The agent's configuration: one `[[modbus]]` per device, `u16` registers `r0..`.
fn agent_config(
    data: &str,
    metrics: SocketAddr,
    sim: SocketAddr,
    devices: u8,
    registers: u16,
    period_ms: u64,
) -> String {
    let mut text = format!(
        "[agent]\nid = \"bench-modbus\"\ndata_dir = {data:?}\n\n[ops]\nmetrics_listen = \"{metrics}\"\n\n"
    );
    for unit in 1..=devices {
        text += &format!(
            "[[modbus]]\nname = \"d{unit}\"\ntcp = \"{sim}\"\nunit = {unit}\n\n\
             [[modbus.block]]\nkind = \"holding\"\naddress = 0\ncount = {registers}\nperiod_ms = {period_ms}\n"
        );
        for r in 0..registers {
            text += &format!(
                "\n[[modbus.block.register]]\nname = \"r{r}\"\naddress = {r}\ntype = \"u16\"\n"
            );
        }
        text += &format!("\n[[sensor]]\nsource = \"d{unit}\"\nid = \"d{unit}.{{register}}\"\n\n");
    }
    text
}

/// Sums of the agent's counters at one instant.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    polls: f64,
    readings: f64,
    accepted: f64,
    errors: f64,
}

fn sample(metrics: SocketAddr) -> Option<Sample> {
    let (200, body) = edge_tests::http::get(metrics, "/metrics")? else {
        return None;
    };
    let mut s = Sample::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        let family = name.split('{').next().unwrap_or_default();
        match family {
            "edge_modbus_polls_total" => s.polls += value,
            "edge_modbus_readings_total" => s.readings += value,
            "edge_ingest_accepted_total" => s.accepted += value,
            "edge_modbus_exceptions_total"
            | "edge_modbus_timeouts_total"
            | "edge_modbus_transport_errors_total"
            | "edge_modbus_connect_errors_total" => s.errors += value,
            _ => {}
        }
    }
    Some(s)
}

/// User plus system CPU seconds of process `pid` (`/proc/PID/stat`, clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let devices = u8::try_from(arg(1, 100)).expect("at most 247 devices");
    let registers = u16::try_from(arg(2, 50)).expect("at most 125 registers");
    let secs = arg(3, 30).max(1);
    let period_ms = arg(4, 1000);
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/release")
        .join("edge-agent");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p edge-agent --bin edge-agent",
        bin.display()
    );

    let sim_addr = free_addr();
    let mut sim = ModbusConfig::tcp(sim_addr);
    sim.devices = devices;
    sim.channels = u8::try_from(registers).expect("at most 125 registers");
    sim.register_type = RegisterType::U16;
    sim.models = vec![ModelSpec::Counter {
        start: 0.0,
        increment: 1.0,
        wrap: 65_536.0,
    }];
    let cancel = CancellationToken::new();
    let sim_cancel = cancel.clone();
    let sim_task = tokio::spawn(async move { modbus::run(&sim, sim_cancel).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let dir = std::env::temp_dir().join(format!("bench-modbus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let metrics = free_addr();
    let config_path: PathBuf = dir.join("agent.toml");
    let data = dir.join("data").display().to_string();
    std::fs::write(
        &config_path,
        agent_config(&data, metrics, sim_addr, devices, registers, period_ms),
    )
    .expect("write the agent's config");
    let mut agent = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn edge-agent");
    let pid = agent.id();

    tokio::time::sleep(WARM_UP).await;
    // The two scrapes start `secs` apart (to the scheduler's milliseconds), and the rates divide
    // by that nominal window: a poll count is whole, so dividing by a measured 10.004 s would
    // show a device polled exactly once a second as polled 0.9996 times a second.
    let t0 = tokio::time::Instant::now();
    let (Some(first), cpu0) = (sample(metrics), cpu_secs(pid)) else {
        panic!("the agent's /metrics did not answer on {metrics}");
    };
    tokio::time::sleep_until(t0 + Duration::from_secs(secs)).await;
    let (Some(last), cpu1) = (sample(metrics), cpu_secs(pid)) else {
        panic!("the agent's /metrics did not answer on {metrics}");
    };
    let rss = peak_rss_mib(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = agent.wait();
    cancel.cancel();
    let _ = sim_task.await;
    let _ = std::fs::remove_dir_all(&dir);

    let t = secs as f64;
    let rate = |a: f64, b: f64| (b - a) / t;
    let per_s = 1000.0 / period_ms as f64;
    let want_polls = f64::from(devices) * per_s;
    let want_readings = want_polls * f64::from(registers);
    let params = format!(
        "{devices} devices x {registers} u16 registers, Modbus TCP, polled every {period_ms} ms, {secs} s, ingest only"
    );
    let target = |v: f64| format!(">= {}", thousands(v.round() as u64));
    FIGURES.print_with_target(
        "polls",
        rate(first.polls, last.polls),
        "polls/s",
        &params,
        &target(want_polls),
    );
    FIGURES.print_with_target(
        "readings",
        rate(first.readings, last.readings),
        "readings/s",
        &params,
        &target(want_readings),
    );
    FIGURES.print_with_target(
        "ingested",
        rate(first.accepted, last.accepted),
        "readings/s",
        &params,
        &target(want_readings),
    );
    FIGURES.print_with_target(
        "poll_errors",
        last.errors - first.errors,
        "count",
        &params,
        "<= 0",
    );
    FIGURES.print(
        "agent_cpu",
        100.0 * (cpu1 - cpu0) / t,
        "% of a core",
        &params,
    );
    FIGURES.print("agent_peak_rss", rss, "MiB", &params);
}
