//! The `edge-agent` binary. Thin: parsing arguments and starting the library's tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_ops_http::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "The edge-ingest gateway agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a configuration file without running: exit 0 when good, 1 with the reason.
    /// Also checks this machine (secrets, files, data_dir, serial ports) and asks librdkafka
    /// about the Kafka client settings, without connecting.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
        /// Check the file and the Kafka settings only, not this machine (for a file checked
        /// away from its gateway).
        #[arg(long)]
        no_environment: bool,
    },
    /// Runs the agent until SIGTERM or SIGINT (drain); SIGHUP reloads the file.
    Run {
        /// The TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Prints the buffer state (depths, cursors, oldest unsent, last committed progress) without
    /// disturbing a running agent: reads the file read-only, or asks the running agent when it
    /// holds the file.
    Inspect {
        /// The agent's configuration (gives the data directory and the metrics listener).
        #[arg(
            long,
            conflicts_with = "data_dir",
            required_unless_present = "data_dir"
        )]
        config: Option<PathBuf>,
        /// The data directory holding `ingest.redb`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The running agent's metrics listener (default: from --config, else 127.0.0.1:9898).
        #[arg(long)]
        agent: Option<SocketAddr>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Limits glibc's malloc to one arena, unless `MALLOC_ARENA_MAX` says otherwise; whether the
/// limit is in force. Call first in `main`, before any thread starts.
///
/// glibc gives threads that allocate concurrently arenas of their own (up to 8 per core) and
/// keeps what they free there; the agent's threads (tokio's workers, the blocking commits,
/// librdkafka's) then hold several part-empty heaps. One arena: the agent's peak RSS at a
/// steady 10,000 MQTT readings/s fell from 18.4-18.9 MiB to 15.2 MiB (`ingest_bench steady`),
/// and ingest throughput showed no change beyond the run-to-run noise. musl has one heap anyway.
fn one_malloc_arena() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false; // The operator's choice, read by glibc itself.
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let set = false;
    set
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format } => match run(config, log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("error: {error:#}");
                // Exit now: a drain that overran its bound may leave a blocking thread behind.
                std::process::exit(1);
            }
        },
        Command::CheckConfig {
            file,
            no_environment,
        } => match edge_agent::config::Config::load(&file) {
            Ok(config) => {
                let findings = edge_agent::preflight::check(&config, !no_environment);
                for f in &findings {
                    let level = if f.error { "error" } else { "warning" };
                    eprintln!("{level}: {}: {}", file.display(), f.message);
                }
                if findings.iter().any(|f| f.error) {
                    eprintln!(
                        "error: {}: the file is valid, but the agent would not start as it is (above)",
                        file.display()
                    );
                    return ExitCode::FAILURE;
                }
                println!(
                    "{}: ok (agent `{}`, {} MQTT, {} serial and {} Modbus sources, {} sensor rules, {} pipelines)",
                    file.display(),
                    config.agent.id.get_ref(),
                    config.mqtt.len(),
                    config.serial.len(),
                    config.modbus.len(),
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
        Command::Inspect {
            config,
            data_dir,
            agent,
            json,
        } => match inspect(config, data_dir, agent, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: PathBuf, format: LogFormat) -> anyhow::Result<()> {
    use anyhow::Context;
    logging::init(format);
    let mut config = edge_agent::config::Config::load(&path)?;
    config.load_secrets().map_err(anyhow::Error::msg)?;
    if let Some(missing) = edge_agent::preflight::unsupported_kafka_settings(&config).first() {
        anyhow::bail!("[kafka]: {missing}");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let result = runtime.block_on(edge_agent::ops::supervise::run(path, config));
    // The pipeline has drained (or overran its bound): do not wait for idle blocking threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result?;
    tracing::info!("stopped");
    Ok(())
}

fn inspect(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    agent: Option<SocketAddr>,
    json: bool,
) -> anyhow::Result<String> {
    use edge_agent::inspect;
    let (path, listen, token) = match (config, data_dir) {
        (Some(file), _) => {
            let config = edge_agent::config::Config::load(&file)?;
            let token = match &config.ops.token_file {
                Some(f) => Some(edge_ops_http::Token::read(f).map_err(anyhow::Error::msg)?),
                None => None,
            };
            (config.ingest_path(), config.ops.metrics_listen, token)
        }
        (None, Some(dir)) => (
            dir.join("ingest.redb"),
            edge_agent::config::OpsSection::default().metrics_listen,
            None,
        ),
        (None, None) => anyhow::bail!("give --config or --data-dir"),
    };
    let (snapshot, origin) = inspect::inspect(&path, agent.unwrap_or(listen), token.as_ref())?;
    Ok(match json {
        true => serde_json::to_string_pretty(&snapshot)? + "\n",
        false => inspect::render(&snapshot, &origin, edge_agent::clock::unix_ms()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_one_arena_limit() {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            assert!(super::one_malloc_arena());
        }
    }
}
