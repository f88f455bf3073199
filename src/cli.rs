//! Command-line surface: clap derive structs, flags as typed as clap can make
//! them. `Option<T>` wherever "not given" must fall through to the config file.
//! No file or network I/O happens here; `config` resolves these into settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::client::request::ExtraHeader;

/// fetchproxy: a multithreaded URL-fetching HTTP/1.1 forward proxy, and a
/// batch client that saves URLs through it.
#[derive(Debug, Parser)]
#[command(name = "fetchproxy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing buys nothing
pub enum Command {
    /// Run the proxy server.
    Serve(ServeArgs),
    /// Fetch URLs through the proxy and save each reply to a file.
    Fetch(FetchArgs),
    /// Read a password (one line) on standard input and print its argon2id
    /// hash, for the `password_hash` of a `[[users]]` entry in the config file.
    HashPassword,
    /// Print a completion script for a shell to standard output.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to standard output, or write one page per
    /// command into a directory.
    Manpage(ManpageArgs),
}

/// `fetchproxy serve`: every flag is also a key in the TOML config file; flags win.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (see config.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; repeat for several (IPv4 or [IPv6]:port). Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads that fetch upstream, fixed for the life of the process.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Connections with a complete request head waiting for a worker.
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// Allow destinations in this range even if not globally routable; repeatable.
    #[arg(long = "allow-dest", value_name = "CIDR")]
    pub allow_dest: Vec<IpNet>,
    /// Clients allowed to use the proxy; repeatable. Default: loopback and private ranges.
    #[arg(long = "allow-client", value_name = "CIDR")]
    pub allow_client: Vec<IpNet>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Time to connect to an origin.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time for the origin's response head, and the longest silence in its body.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// How long an idle keep-alive client connection is kept open.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time for a client to send a whole request head.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// How long a CONNECT tunnel may stay silent in both directions.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Largest request head accepted.
    #[arg(long, value_name = "N")]
    pub max_header_bytes: Option<usize>,
    /// Longest request target accepted.
    #[arg(long, value_name = "N")]
    pub max_url_bytes: Option<usize>,
    /// Largest request or response body passed through (unlimited when unset).
    #[arg(long, value_name = "N")]
    pub max_body_bytes: Option<u64>,
    /// Most open client connections.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address.
    #[arg(long, value_name = "N")]
    pub max_conns_per_client: Option<usize>,
    /// Most open CONNECT tunnels.
    #[arg(long, value_name = "N")]
    pub max_tunnels: Option<usize>,
    /// Ports CONNECT may reach; repeatable. Default: 443.
    #[arg(long = "connect-port", value_name = "PORT")]
    pub connect_ports: Vec<u16>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<log::LevelFilter>,
}

/// `fetchproxy fetch`: batch download through the proxy.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The proxy to go through: HOST:PORT or http://[USER:PASS@]HOST:PORT
    /// (USER and PASS percent-encoded). Several, comma-separated or
    /// repeated, share the URLs by a hash of each URL, with failover
    /// [default: 127.0.0.1:8080]
    #[arg(long, value_name = "PROXY", value_delimiter = ',')]
    pub proxy: Vec<String>,
    /// Proxy credentials, sent as Proxy-Authorization: Basic; the password is
    /// asked for on the terminal (not echoed) when left out.
    #[arg(long, short = 'U', value_name = "USER[:PASSWORD]")]
    pub proxy_user: Option<String>,
    /// File with one URL a line (`-` for standard input).
    #[arg(long, short = 'i', value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// Directory to save files and manifest.jsonl into (created if missing).
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// URLs fetched at the same time.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Retries for connection failures and 503 answers (a move to the next
    /// proxy counts as one).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Time limit for one URL (all its redirects and retries included).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// Fetch again and replace files the manifest already records.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar or per-URL lines; only the summary and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// A request header to send, 'Name: value'; repeatable. 'Name:' with no
    /// value sends no such header (not even fetch's own User-Agent or Accept).
    #[arg(long, short = 'H', value_name = "NAME: VALUE")]
    pub header: Vec<ExtraHeader>,
    /// The User-Agent to send; empty sends none.
    #[arg(long, short = 'A', value_name = "TEXT", default_value = concat!("fetchproxy/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// Write the body of the one URL given to standard output: no file, no
    /// manifest.
    #[arg(long, conflicts_with_all = ["input", "overwrite"])]
    pub stdout: bool,
    /// `-O -` is --stdout (as in wget); no other value is taken.
    #[arg(short = 'O', value_name = "-", value_parser = parse_dash, conflicts_with_all = ["input", "overwrite"])]
    pub output_document: Option<String>,
    /// URLs to fetch (http:// is assumed when there is no scheme); with
    /// neither URLs nor --input, they are read from a prompt.
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
}

impl FetchArgs {
    /// `--stdout` or `-O -`.
    pub fn writes_to_stdout(&self) -> bool {
        self.stdout || self.output_document.is_some()
    }
}

/// `fetchproxy completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `fetchproxy manpage [--out-dir DIR]`.
#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write fetchproxy.1 and fetchproxy-SUBCOMMAND.1 into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `-O` takes only `-`.
fn parse_dash(text: &str) -> Result<String, String> {
    if text == "-" {
        Ok(text.to_string())
    } else {
        Err("only '-' (standard output) is taken; files go to --out-dir".to_string())
    }
}

/// Parses a humantime duration (`30s`, `1m 30s`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{text:?} is not a duration ({err})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_parse_into_typed_values() {
        let cli = Cli::try_parse_from([
            "fetchproxy",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--workers",
            "4",
            "--grace",
            "1m 30s",
            "--allow-dest",
            "127.0.0.0/8",
        ])
        .expect("valid flags");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.len(), 2);
        assert_eq!(args.workers, Some(4));
        assert_eq!(args.grace, Some(Duration::from_secs(90)));
        assert_eq!(args.allow_dest[0].to_string(), "127.0.0.0/8");
    }

    #[test]
    fn hash_password_takes_no_arguments() {
        let cli = Cli::try_parse_from(["fetchproxy", "hash-password"]).expect("valid");
        assert!(matches!(cli.command, Command::HashPassword));
        assert!(Cli::try_parse_from(["fetchproxy", "hash-password", "secret"]).is_err());
    }

    #[test]
    fn bad_duration_names_the_value() {
        let err = Cli::try_parse_from(["fetchproxy", "serve", "--grace", "30 parsecs"])
            .expect_err("bad duration");
        assert!(err.to_string().contains("30 parsecs"), "{err}");
    }
}
