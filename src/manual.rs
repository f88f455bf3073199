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
    render(page, out)
}

/// What a command's exit status says, for the page's EXIT STATUS section,
/// which clap has no place for.
fn exit_statuses(command: &str) -> &'static [(&'static str, &'static str)] {
    const USAGE: (&str, &str) = (
        "2",
        "A usage error: the message names the bad flag or value.",
    );
    match command {
        "serve" => &[
            (
                "0",
                "Stopped by a signal after every request in flight was answered.",
            ),
            (
                "1",
                "Stopped with requests cut short: the grace period ran out, or a second signal came.",
            ),
            (
                "2",
                "Could not start: a usage or configuration error, or something the server could \
                 not have (the listening address, the access log, the cache directory); the \
                 message names it.",
            ),
        ],
        "fetch" => &[
            (
                "0",
                "Every URL was fetched and saved, or skipped as already there.",
            ),
            (
                "1",
                "Finished, but some URL failed (see the manifest; with --stdout, standard \
                 error) or some input line was bad (standard error).",
            ),
            (
                "2",
                "Could not start: a usage error, no proxy answering, or an output directory or \
                 input that cannot be used; the message says which.",
            ),
            (
                "130, 143",
                "Stopped by SIGINT or SIGTERM during the batch; the manifest has what was done.",
            ),
        ],
        "hash-password" => &[
            ("0", "The hash was printed."),
            ("1", "The hash could not be written."),
            ("2", "No password could be read, or it was empty."),
        ],
        "completions" => &[
            ("0", "Written."),
            ("1", "The output could not be written."),
            USAGE,
        ],
        "manpage" => &[
            ("0", "Written."),
            ("1", "Standard output could not be written."),
            (
                "2",
                "A usage error, or a page under --out-dir could not be written.",
            ),
        ],
        _ => &[
            ("0", "Success."),
            (
                "1",
                "fetch: some URL failed; serve: requests were cut short at a stop.",
            ),
            (
                "2",
                "Could not start: a usage or configuration error, named in the message.",
            ),
        ],
    }
}

/// Renders `page` as clap_mangen does, with an EXIT STATUS section before
/// the version.
fn render(page: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let name = page.get_name().to_string();
    let man = clap_mangen::Man::new(page.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if page.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if page.get_subcommands().any(|sub| !sub.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    if page.get_after_long_help().is_some() || page.get_after_help().is_some() {
        man.render_extra_section(out)?;
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (status, meaning) in exit_statuses(&name) {
        writeln!(out, ".TP\n{status}\n{}", roff_text(meaning))?;
    }
    if page.get_version().is_some() || page.get_long_version().is_some() {
        man.render_version_section(out)?;
    }
    if page.get_author().is_some() {
        man.render_authors_section(out)?;
    }
    out.flush()
}

/// `text` as a roff text line: hyphens as `\-`, and no leading `.` or `'`.
fn roff_text(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Writes `fetchproxy.1` and one `fetchproxy-SUBCOMMAND.1` per subcommand
/// into `dir`, created if missing (as `fetch --out-dir` is).
///
/// # Errors
/// The OS error creating the directory or a file.
pub fn manpages_to(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = commands();
    let pages = std::iter::once(cmd.clone()).chain(cmd.get_subcommands().cloned());
    for page in pages.filter(|page| !page.is_hide_set()) {
        let file = clap_mangen::Man::new(page.clone()).get_filename();
        let mut out = io::BufWriter::new(std::fs::File::create(dir.join(file))?);
        render(page, &mut out)?;
    }
    Ok(())
}
