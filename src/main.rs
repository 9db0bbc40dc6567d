//! The `switchyard` command: run the gateway, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::Config;

/// An OpenAI-compatible gateway that routes each chat request to a local or a cloud model.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// Configuration file (default: the embedded conf/switchyard.yaml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print every problem with its line and column.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            let source = cli
                .config
                .as_ref()
                .map_or("embedded configuration".to_owned(), |p| {
                    p.display().to_string()
                });
            for e in &errors {
                eprintln!("{source}: {e}");
            }
            eprintln!("{} error(s) in {source}", errors.len());
            return ExitCode::from(1);
        }
    };
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "configuration OK: {} upstream(s), {} model(s)",
                config.upstreams.len(),
                config.models.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => match switchyard::proxy::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e}");
                ExitCode::from(1)
            }
        },
    }
}
