//! The `edge-consumer` binary. Thin: arguments, logging, signals, then the library's loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_consumer::config::Config;
use edge_consumer::ops::Server;
use edge_consumer::run::{run, Metrics};

#[derive(Parser)]
#[command(
    name = "edge-consumer",
    version,
    about = "Merges gateways' partial aggregates into finals, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the consumer.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            // SIGTERM / SIGINT: stop between transactions.
            edge_ops_http::signal::on_shutdown_signal(move || flag.store(true, Ordering::Relaxed));
            let metrics = Arc::new(Metrics::default());
            tracing::info!(version = edge_consumer::VERSION, "edge-consumer starting");
            let ops = match Server::start(&config.ops, metrics.clone()) {
                Ok(Some(server)) => {
                    tracing::info!(listen = %server.addr(), "serving /metrics /healthz /readyz");
                    if !server.addr().ip().is_loopback() {
                        tracing::warn!(listen = %server.addr(),
                            "the ops endpoints have no authentication and listen beyond loopback");
                    }
                    Some(server)
                }
                Ok(None) => None,
                Err(error) => {
                    tracing::error!(%error, "running without the metrics listener");
                    None
                }
            };
            run(&config, &stop, &metrics).context("edge-consumer stopped")?;
            drop(ops);
            tracing::info!(
                merged = metrics.merged.load(Ordering::Relaxed),
                finals = metrics.finals.load(Ordering::Relaxed),
                dead_letters = metrics.dead_letters.load(Ordering::Relaxed),
                "edge-consumer stopped"
            );
            Ok(())
        }
    }
}
