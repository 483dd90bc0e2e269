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
    /// Validates a configuration file and what it needs of this machine (the files and the
    /// password `[kafka.security]` names, the TLS and SASL support of this build) and exits:
    /// 0 when good, 1 with the reasons.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
        /// Check the file only (on a laptop or in a config repository, away from its server).
        #[arg(long)]
        no_environment: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            file,
            no_environment,
        } => {
            logging::init(LogFormat::Human);
            let config = Config::load(&file)?;
            let mut problems = unsupported(&config);
            if !no_environment {
                if let Some(Err(problem)) = config
                    .ops
                    .token_file
                    .as_deref()
                    .map(edge_ops_http::Token::read)
                {
                    problems.push(format!("[ops]: {problem}"));
                }
                if let Some(security) = &config.kafka.security {
                    problems.extend(
                        security
                            .get_ref()
                            .check_machine()
                            .into_iter()
                            .map(|p| format!("[kafka.security]: {p}")),
                    );
                }
            }
            for problem in &problems {
                eprintln!("error: {}: {problem}", file.display());
            }
            anyhow::ensure!(
                problems.is_empty(),
                "{}: the file is valid, but the consumer would not start as it is (above)",
                file.display()
            );
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Run {
            config: path,
            log_format,
        } => {
            logging::init(log_format);
            let mut config = Config::load(&path)?;
            config.load_secrets().map_err(anyhow::Error::msg)?;
            if let Some(problem) = unsupported(&config).first() {
                anyhow::bail!("{problem}");
            }
            let stop = Arc::new(AtomicBool::new(false));
            let metrics = Arc::new(Metrics::default());
            // SIGTERM / SIGINT: stop between transactions; SIGHUP: reload; systemd notified.
            let supervisor =
                Supervisor::start(path.clone(), config.clone(), metrics.clone(), stop.clone())?;
            tracing::info!(version = edge_consumer::VERSION, "edge-consumer starting");
            let ops = match Server::start(&config.ops, metrics.clone()) {
                Ok(Some(server)) => {
                    tracing::info!(listen = %server.addr(), "serving /metrics /healthz /readyz");
                    if config.ops.token_file.is_none() && !server.addr().ip().is_loopback() {
                        tracing::warn!(listen = %server.addr(),
                            "/metrics answers anyone who reaches this address: set [ops] token_file");
                    }
                    Some(server)
                }
                Ok(None) => None,
                // A token that cannot be read: refuse to serve /metrics unguarded.
                Err(error @ edge_consumer::ops::OpsError::Token(_)) => return Err(error.into()),
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

/// Security settings this build of librdkafka cannot honour (TLS without OpenSSL, a SASL
/// mechanism it lacks), asked of librdkafka's `builtin.features` for each client.
fn unsupported(config: &Config) -> Vec<String> {
    use edge_consumer::kafka::{consumer_config, producer_config};
    let mut problems = edge_kafka::missing_features(&consumer_config(config));
    for p in edge_kafka::missing_features(&producer_config(config)) {
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    problems
        .into_iter()
        .map(|p| format!("[kafka]: {p}"))
        .collect()
}
