//! The `edge-consumer` binary. Thin: arguments, logging, the supervisor (signals, systemd),
//! the ops listener, then the library's loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_consumer::config::Config;
use edge_consumer::ops::supervise::Supervisor;
use edge_consumer::ops::Server;
use edge_consumer::run::{run, Metrics};
use edge_ops_http::logging::{self, LogFormat};

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
    /// Runs the consumer until SIGTERM or SIGINT (it stops between transactions); SIGHUP
    /// reloads the file's [grouping].
    Run {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Validates a configuration file and exits: 0 when good, 1 with the reason.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => {
            logging::init(LogFormat::Human);
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Run {
            config: path,
            log_format,
        } => {
            logging::init(log_format);
            let config = Config::load(&path)?;
            let stop = Arc::new(AtomicBool::new(false));
            let metrics = Arc::new(Metrics::default());
            // SIGTERM / SIGINT: stop between transactions; SIGHUP: reload; systemd notified.
            let supervisor =
                Supervisor::start(path.clone(), config.clone(), metrics.clone(), stop.clone())?;
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
            let result = run(&config, &stop, &metrics);
            drop(ops);
            supervisor.stop();
            result.context("edge-consumer stopped")?;
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
