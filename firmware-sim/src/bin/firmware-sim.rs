//! `firmware-sim`: run simulated sensor devices over a serial line or MQTT.
//!
//! ```text
//! firmware-sim serial --pty --devices 4 --rate 50 --ledger sent.jsonl
//! firmware-sim serial --port /dev/ttyUSB0 --baud 115200 --devices 2
//! firmware-sim mqtt --url mqtt://127.0.0.1:1883 --topic 'plant/{device}/{channel}' --qos 1 --payload senml
//! firmware-sim modbus --tcp 127.0.0.1:1502 --devices 100 --channels 50 --register-type u16
//! firmware-sim modbus --serial /dev/pts/7 --channels 4 --exception-rate 0.05 --ledger modbus.jsonl
//! ```
//!
//! With `--pty` the first line on stdout is `SERIAL_PATH=/dev/pts/N`, the port the agent opens;
//! `modbus` prints `MODBUS_TCP=host:port` or `MODBUS_RTU=path` once it listens.
//! Progress goes to stderr; Ctrl-C or SIGTERM stops sampling, drains and writes the ledger's end.

use clap::{Parser, Subcommand};
use firmware_sim::runner::{
    self, modbus::ModbusConfig, mqtt::MqttConfig, serial::SerialConfig, RunConfig,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "firmware-sim",
    version,
    about = "Simulated sensor firmware: serial link (port or pty), MQTT and Modbus devices, with fault injection"
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
    /// Serve registers as Modbus devices (TCP or RTU) whose values change over time.
    Modbus {
        #[command(flatten)]
        modbus: ModbusConfig,
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
        Transport::Modbus { modbus } => {
            // It prints its own summary (answers, exceptions, drops): no frames or acks here.
            runner::modbus::run(modbus, cancel).await?;
            return Ok(());
        }
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
