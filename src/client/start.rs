//! What must hold before a run fetches anything, and the errors when it
//! does not (exit code 2): the proxies parsed, each checked to take a TCP
//! connection (none answering stops the run at once, with one message that
//! says what to do; a dead one of several is one warning), and a left-out
//! proxy password asked for once they are known to answer.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::FetchArgs;
use crate::client::fleet::Fleet;
use crate::client::input::{Misplaced, shell_word};
use crate::client::outdir::OutDirError;
use crate::client::proxy::{self, ProxyArgError, Unreachable};

/// The proxy used when `--proxy` is not given.
pub const DEFAULT_PROXY: &str = "127.0.0.1:8080";
/// How long the start-up check waits for each proxy to take a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a run cannot start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
    #[error("--concurrency {0} is more than {max} URLs at a time", max = crate::client::MAX_CONCURRENCY)]
    TooMuchConcurrency(usize),
    #[error("--input {}: is a directory; give a file of URLs, one a line", .0.display())]
    InputIsDirectory(PathBuf),
    #[error(transparent)]
    Proxy(#[from] ProxyArgError),
    #[error("{}", no_proxy_text(.down, *.default))]
    NoProxy {
        down: Vec<Unreachable>,
        /// `--proxy` was not given.
        default: bool,
    },
    #[error("--stdout writes the body of one URL given as an argument; {0} given")]
    StdoutUrls(usize),
    #[error(transparent)]
    OutDir(#[from] OutDirError),
    #[error("cannot use {}: {source}", .path.display())]
    Manifest { path: PathBuf, source: io::Error },
    #[error("{} is in use by another fetch run; wait for it to end, or give this one another --out-dir", .0.display())]
    OutDirInUse(PathBuf),
    #[error("--input {}: {source}", .path.display())]
    Input { path: PathBuf, source: io::Error },
    #[error("{}", input_as_url_text(*.n, .text, *.kind))]
    InputAsUrl {
        n: usize,
        text: String,
        kind: Misplaced,
    },
    #[error("cannot start threads: {0}")]
    Spawn(io::Error),
}

fn input_as_url_text(n: usize, text: &str, kind: Misplaced) -> String {
    let word = shell_word(text.trim());
    match kind {
        Misplaced::Path => format!(
            "argument {n}, {word}, is a path, not a URL: to read URLs from it, give --input {word}"
        ),
        Misplaced::UrlList => format!(
            "argument {n}, {word}, names a file of URLs: to read them, give --input {word}; \
             to fetch it as a URL, write {}",
            shell_word(&format!("http://{}", text.trim()))
        ),
    }
}

fn no_proxy_text(down: &[Unreachable], default: bool) -> String {
    match down {
        [one] if default => format!(
            "no proxy answers at {}, the default --proxy ({}): start one with \
             \"fetchproxy serve\", or pass --proxy HOST:PORT of one that runs",
            one.name, one.reason
        ),
        [one] => format!(
            "no proxy answers at {} ({}): start one with \"fetchproxy serve --listen {}\", \
             or pass --proxy HOST:PORT of one that runs",
            one.name, one.reason, one.name
        ),
        _ => format!(
            "no proxy answers: {}: start them with \"fetchproxy serve --listen HOST:PORT\", \
             or pass --proxy with ones that run",
            down.iter()
                .map(|d| format!("{} ({})", d.name, d.reason))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The proxies, checked to take connections, with their passwords.
///
/// # Errors
/// A `UsageError` when `--proxy` or `--proxy-user` is wrong, when no proxy
/// answers, or when a password cannot be asked for.
pub fn connect_fleet(args: &FetchArgs) -> Result<Fleet, UsageError> {
    let default = args.proxy.is_empty();
    let entries = if default {
        vec![DEFAULT_PROXY.to_string()]
    } else {
        args.proxy.clone()
    };
    let user = args
        .proxy_user
        .as_deref()
        .map(proxy::parse_proxy_user)
        .transpose()?;
    let mut proxies = proxy::build(&entries, user.as_ref())?;
    let down = proxy::probe(&proxies, PROBE_TIMEOUT);
    if down.len() == proxies.len() {
        return Err(UsageError::NoProxy {
            down: down.into_iter().map(|(_, d)| d).collect(),
            default,
        });
    }
    // Asked only now, so that nobody types a password for a proxy that is not there.
    proxy::ask_passwords(
        &mut proxies,
        &mut proxy::password_from_environment_or_terminal,
    )?;
    let fleet = Fleet::new(proxies);
    for (i, unreachable) in down {
        fleet.mark_down(i);
        eprintln!(
            "warning: proxy {} does not answer ({}); its URLs go to the other proxies",
            unreachable.name, unreachable.reason
        );
    }
    Ok(fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(name: &str) -> Unreachable {
        Unreachable {
            name: name.to_string(),
            reason: "connection refused".to_string(),
        }
    }

    #[test]
    fn no_proxy_messages_say_what_to_do() {
        assert_eq!(
            no_proxy_text(&[down(DEFAULT_PROXY)], true),
            "no proxy answers at 127.0.0.1:8080, the default --proxy (connection refused): \
             start one with \"fetchproxy serve\", or pass --proxy HOST:PORT of one that runs"
        );
        assert_eq!(
            no_proxy_text(&[down("a:3128"), down("b:3128")], false),
            "no proxy answers: a:3128 (connection refused), b:3128 (connection refused): \
             start them with \"fetchproxy serve --listen HOST:PORT\", or pass --proxy with ones that run"
        );
    }
}
