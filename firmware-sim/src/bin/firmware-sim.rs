//! `firmware-sim`: run simulated sensor devices over a serial line or MQTT.
//!
//! ```text
//! firmware-sim serial --pty --devices 4 --rate 50 --ledger sent.jsonl
//! firmware-sim serial --port /dev/ttyUSB0 --baud 115200 --devices 2
//! firmware-sim mqtt --url mqtt://127.0.0.1:1883 --topic 'plant/{device}/{channel}' --qos 1 --payload senml
//! ```
//!
//! With `--pty` the first line on stdout is `SERIAL_PATH=/dev/pts/N`, the port the agent opens.
//! Progress goes to stderr; Ctrl-C or SIGTERM stops sampling, drains and writes the ledger's end.

use clap::{Parser, Subcommand};
use firmware_sim::runner::{self, mqtt::MqttConfig, serial::SerialConfig, RunConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulated sensor firmware: serial link (port or pty) and MQTT, with fault injection"
)]
struct Cli {
    #[command(subcommand)]
    transport: Transport,
}

#[derive(Debug, Subcommand)]
enum Transport {
    /// Speak the serial link protocol (Hello, Readings; Ack, TimeSync) over a port or a pty.
    Serial {
        #[command(flatten)]
        serial: SerialConfig,
        #[command(flatten)]
        run: RunConfig,
    },
    /// Publish one MQTT message per reading.
    Mqtt {
        #[command(flatten)]
        mqtt: MqttConfig,
        #[command(flatten)]
        run: RunConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        runner::shutdown_signal().await;
        eprintln!("firmware-sim: shutting down (draining)");
        on_signal.cancel();
    });
    let summary = match &cli.transport {
        Transport::Serial { serial, run } => runner::serial::run(run, serial, cancel).await?,
        Transport::Mqtt { mqtt, run } => runner::mqtt::run(run, mqtt, cancel).await?,
    };
    eprintln!(
        "firmware-sim: readings={} frames={} acked={} retransmits={} evicted_readings={} drained={}",
        summary.readings,
        summary.frames,
        summary.acked,
        summary.retransmits,
        summary.evicted_readings,
        summary.drained
    );
    Ok(())
}
