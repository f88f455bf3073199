//! Shell completions and man pages, generated from the clap definitions in
//! `cli` so that they cannot drift from the flags: `fetchproxy completions
//! SHELL` and `fetchproxy manpage [COMMAND] [--out-dir DIR]`.

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes the completion script for `shell`.
///
/// # Errors
/// The OS error writing it.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    // Made in memory first: clap_complete panics when a write fails (a
    // reader that leaves early, as `head` does).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// The commands as the man pages see them (no `help`).
fn commands() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Checks that `name` is a subcommand with a page of its own.
///
/// # Errors
/// What the commands are, when `name` is none of them.
pub fn check_command(name: &str) -> Result<(), String> {
    let cmd = commands();
    if cmd.find_subcommand(name).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
    Err(format!(
        "manpage: no command {name:?}; the commands are {}",
        names.join(", ")
    ))
}

/// Writes the man page (roff) of `fetchproxy`, which lists the
/// subcommands, or of one subcommand (see [`check_command`]), as
/// `manpages_to` writes it.
///
/// # Errors
/// The OS error writing it; `InvalidInput` for an unknown command.
pub fn manpage(command: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
    let cmd = commands();
    let page = match command {
        None => cmd,
        Some(name) => cmd
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, name.to_string()))?,
    };
    clap_mangen::Man::new(page).render(out)?;
    out.flush()
}

/// Writes `fetchproxy.1` and one `fetchproxy-SUBCOMMAND.1` per subcommand
/// into `dir`, created if missing (as `fetch --out-dir` is).
///
/// # Errors
/// The OS error creating the directory or a file.
pub fn manpages_to(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}
