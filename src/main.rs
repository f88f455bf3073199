//! The `fetchproxy` binary: parse the command line, set up logging, run the
//! server, the client, `hash-password`, `completions` or `manpage`, and turn
//! the outcome into an exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use fetchproxy::cli::{Cli, Command};
use fetchproxy::config::ServeConfig;
use fetchproxy::{auth, client, logging, manual, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let path = args.config.clone();
            let loaded = args.flags().and_then(|flags| {
                ServeConfig::load(path.as_deref(), &flags).map(|config| (config, flags))
            });
            let (config, flags) = match loaded {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("fetchproxy: {err}");
                    return ExitCode::from(2);
                }
            };
            logging::init(config.log_level);
            let access_log = config.access_log.as_deref();
            if let Err(err) = logging::init_access_log(
                access_log,
                config.access_log_format,
                config.access_log_own_pages,
            ) {
                let path = access_log.unwrap_or(std::path::Path::new("-")).display();
                eprintln!("fetchproxy: cannot open the access log {path}: {err}");
                return ExitCode::from(2);
            }
            // SIGHUP loads the file again, with the same flags over it.
            let load = path.map(|path| -> server::LoadConfig {
                Box::new(move || ServeConfig::load(Some(&path), &flags))
            });
            let outcome = server::run(config, load);
            logging::flush();
            match outcome {
                Ok(server::Stopped::Clean) => ExitCode::SUCCESS,
                Ok(server::Stopped::CutShort) => ExitCode::from(1),
                Err(err) => {
                    eprintln!("fetchproxy: {err}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Fetch(args) => ExitCode::from(client::run(args)),
        Command::HashPassword => hash_password(),
        Command::Completions(args) => write_out(
            |out| manual::completions(args.shell, out),
            "the completions",
        ),
        Command::Manpage(args) => match args.out_dir {
            Some(dir) => match manual::manpages_to(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("fetchproxy: --out-dir {}: {err}", dir.display());
                    ExitCode::from(2)
                }
            },
            None => {
                if let Some(Err(err)) = args.command.as_deref().map(manual::check_command) {
                    eprintln!("fetchproxy: {err}");
                    return ExitCode::from(2);
                }
                write_out(
                    |out| manual::manpage(args.command.as_deref(), out),
                    "the man page",
                )
            }
        },
    }
}

/// Runs a generator over standard output.
fn write_out(generate: impl FnOnce(&mut dyn Write) -> std::io::Result<()>, what: &str) -> ExitCode {
    match generate(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that had enough (`| head`) is no failure.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fetchproxy: cannot write {what}: {err}");
            ExitCode::from(1)
        }
    }
}

/// `fetchproxy hash-password`: one line on stdin, its hash on stdout. On a
/// terminal the password is asked for with echo off, as `passwd` does, so
/// that it stays out of the scrollback.
fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    let hashed = if stdin.is_terminal() {
        match rpassword::prompt_password("password (not shown): ") {
            Ok(password) => auth::hash_password_from(&mut format!("{password}\n").as_bytes()),
            Err(err) => Err(format!("cannot read the password from the terminal: {err}")),
        }
    } else {
        auth::hash_password_from(&mut stdin.lock())
    };
    match hashed {
        Ok(hash) => match writeln!(std::io::stdout(), "{hash}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("fetchproxy: cannot write the hash: {err}");
                ExitCode::from(1)
            }
        },
        Err(err) => {
            eprintln!("fetchproxy: {err}");
            ExitCode::from(2)
        }
    }
}
