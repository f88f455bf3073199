//! Shell completions and man pages, generated from the clap definitions in
//! `cli` so that they cannot drift from the flags: `fetchproxy completions
//! SHELL` and `fetchproxy manpage [--out-dir DIR]`.

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

/// Writes the man page of `fetchproxy` (roff), which lists the subcommands.
///
/// # Errors
/// The OS error writing it.
pub fn manpage(out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)?;
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
