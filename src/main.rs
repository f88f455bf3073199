//! The `fetchproxy` binary: parse the command line, set up logging, run the
//! server or the client, and turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

use fetchproxy::cli::{Cli, Command};
use fetchproxy::config::ServeConfig;
use fetchproxy::{client, logging, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match ServeConfig::load(&args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("fetchproxy: {err}");
                    return ExitCode::from(2);
                }
            };
            logging::init(config.log_level);
            match server::run(config) {
                Ok(server::Stopped::Clean) => ExitCode::SUCCESS,
                Ok(server::Stopped::CutShort) => ExitCode::from(1),
                Err(err) => {
                    eprintln!("fetchproxy: {err}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Fetch(args) => ExitCode::from(client::run(args)),
    }
}
