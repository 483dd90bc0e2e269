//! The `edge-agent` binary. Thin: parsing arguments and starting the library's tasks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "The edge-ingest gateway agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a configuration file without running: exit 0 when good, 1 with the reason.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Runs the agent: sources -> ingest log, until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match edge_agent::config::Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok (agent `{}`, {} MQTT and {} serial sources, {} sensor rules, {} pipelines)",
                    file.display(),
                    config.agent.id.get_ref(),
                    config.mqtt.len(),
                    config.serial.len(),
                    config.sensor.len(),
                    config.pipeline.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = edge_agent::config::Config::load(path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
            stop.cancel();
        });
        edge_agent::service::run(config, cancel).await?;
        Ok(())
    })
}
