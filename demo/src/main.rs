//! `edge-demo`: the whole of edge-ingest on one machine, with faults, and an account of every
//! reading at the end. Run it through `./demo.sh`, which builds everything first.
//!
//! Modules, in the order the data flows:
//! - [`brokers`]: Kafka and Mosquitto (started through `tests/services/services.sh`, or given);
//! - [`configs`]: the bundled agent and consumer configuration, filled in for this run;
//! - [`procs`]: child processes; [`stack`]: everything the run starts, in order;
//! - [`agent_http`]: the agent's metrics and persisted counters, for the progress line;
//! - [`kafka`]: topic creation and `read_committed` tails of the partials and finals;
//! - [`account`]: ledgers against finals, series by series;
//! - [`run`]: the timeline; [`report`]: what is printed.

mod account;
mod agent_http;
mod brokers;
mod configs;
mod kafka;
mod procs;
mod report;
mod run;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// Runs simulated devices (MQTT, a serial link and Modbus TCP) through edge-agent into Kafka and through
/// edge-consumer, kills the agent and takes Kafka down mid-run, then accounts for every reading.
/// Exit status 0 only when nothing was lost or duplicated.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Seconds the devices send for (faults need at least 20)
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Devices per transport: this many over MQTT and this many on the serial link
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    devices: u32,
    /// Channels (sensors) per device
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    channels: u8,
    /// Readings per second per device (all its channels together)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=2000))]
    rate: u32,
    /// Tumbling window size in milliseconds
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    window_ms: u64,
    /// Use this Kafka (host:port,...) instead of starting one; no Kafka outage is injected then
    #[arg(long, value_name = "BOOTSTRAP")]
    kafka: Option<String>,
    /// Use this MQTT broker (mqtt://host:port) instead of starting Mosquitto
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// Inject no faults (no agent crash, no Kafka outage)
    #[arg(long)]
    no_faults: bool,
    /// Leave the demo's brokers running at the end (they are reused by the next run)
    #[arg(long)]
    keep_brokers: bool,
    /// Where runs keep their configuration, data, ledgers and logs
    #[arg(long, default_value = "target/demo")]
    work_dir: PathBuf,
    /// Seconds between progress lines
    #[arg(long, default_value_t = 2)]
    progress_secs: u64,
    /// Seconds to wait, after the devices stop, for the last finals
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
}

/// Sets `stop` on Ctrl-C (SIGINT) or SIGTERM (children run in their own process groups: the demo stops
/// them in order, and its brokers, before it exits).
fn on_signals(stop: Arc<AtomicBool>) {
    edge_ops_http::signal::on_shutdown_signal(move || {
        eprintln!("\nstopping (logs stay in the run directory) ...");
        stop.store(true, Ordering::Relaxed);
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    on_signals(stop.clone());
    let options = run::Options {
        duration: Duration::from_secs(cli.duration.max(1)),
        devices: cli.devices,
        channels: cli.channels,
        rate: cli.rate,
        window_ms: cli.window_ms,
        kafka: cli.kafka,
        mqtt: cli.mqtt,
        faults: !cli.no_faults,
        keep: cli.keep_brokers,
        work_dir: cli.work_dir,
        progress: Duration::from_secs(cli.progress_secs.max(1)),
        settle_timeout: Duration::from_secs(cli.settle_timeout),
    };
    match run::run(&options, &stop) {
        Ok(outcome) => {
            print!("{}", outcome.render());
            if outcome.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
