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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
