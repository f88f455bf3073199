//! Command-line surface: clap derive structs, flags as typed as clap can make
//! them. `Option<T>` (or an empty list) wherever "not given" must fall through
//! to the config file. The value parsers are `config::text`'s, shared with
//! the config file. No file or network I/O happens here; `config` resolves
//! these into settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Arg, Args, Parser, Subcommand};
use ipnet::IpNet;
use serde::Serialize;

use crate::access::PortRange;
use crate::config::{self, ConfigError, Flags, text, value};
use crate::logging::{AccessLogFormat, OwnPages};

use crate::client::request::{ExtraHeader, parse_user_agent};

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
///
/// Each field is named like its config key, so that the flags given become
/// a table of config keys (`flags`); `serve --help` shows each default from
/// `ServeConfig::default()`.
#[derive(Debug, Default, Args, Serialize)]
#[command(mut_args = show_default)]
// The field docs are `--help` text: `[IPv6]` there is not a link.
#[allow(rustdoc::broken_intra_doc_links)]
pub struct ServeArgs {
    /// TOML config file (see config.example.toml).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on: PORT (on 127.0.0.1), IP:PORT, [IPv6]:PORT or HOST:PORT (every address the name resolves to); repeatable.
    #[arg(long, value_name = "ADDR:PORT", value_parser = text::parse_listen)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// Worker threads that fetch upstream, fixed for the life of the process.
    #[arg(long, value_name = "N", value_parser = text::parse_count)]
    pub workers: Option<usize>,
    /// Connections with a complete request head waiting for a worker.
    #[arg(long, value_name = "N", value_parser = text::parse_count)]
    pub queue: Option<usize>,
    /// Allow destinations in this range (or this address) even if not globally routable; repeatable, each adds to what is allowed.
    #[arg(long, value_name = "CIDR|ADDR", value_parser = text::parse_range)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_dest: Vec<IpNet>,
    /// Clients allowed to use the proxy: a range or an address; repeatable. Given, they replace the whole default list.
    #[arg(long = "allow-client", value_name = "CIDR|ADDR", value_parser = text::parse_range)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_clients: Vec<IpNet>,
    /// Destination port (or FIRST-LAST range) forwarded requests may reach; repeatable. Given, they replace the whole default list.
    #[arg(long = "dest-port", value_name = "PORT", value_parser = text::parse_port_range)]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "value::port_ranges::serialize"
    )]
    pub dest_ports: Vec<PortRange>,
    /// Port CONNECT may reach; repeatable. Given, they replace the default.
    #[arg(long = "connect-port", value_name = "PORT", value_parser = text::parse_port)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_ports: Vec<u16>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub grace: Option<Duration>,
    /// Time to connect to an origin.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub connect_timeout: Option<Duration>,
    /// How long the origin may take: its whole response head must arrive
    /// within it of the request sent, and each read of its body and each
    /// write of the request must progress within it.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub upstream_timeout: Option<Duration>,
    /// PEM file of the certificate authorities https origins must be signed
    /// by, in place of the bundled public ones (a private CA: add the public
    /// ones to the file to keep them).
    #[arg(long, value_name = "FILE", value_parser = text::parse_path)]
    pub upstream_ca_file: Option<PathBuf>,
    /// How long an idle keep-alive client connection is kept open.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub idle_timeout: Option<Duration>,
    /// Time for a client to send a whole request head.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub header_timeout: Option<Duration>,
    /// How long a CONNECT tunnel may stay silent in both directions.
    #[arg(long, value_name = "DURATION", value_parser = text::parse_duration)]
    #[serde(serialize_with = "value::serialize_some_duration")]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Slowest a client may send a body or read an answer, in bytes a second (a size such as 1KiB), once it kept its worker waiting idle_timeout; 0 turns the check off.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub client_min_rate: Option<u64>,
    /// Largest request head: bytes, or a size such as 64KiB.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub max_header_bytes: Option<u64>,
    /// Longest request target: bytes, or a size such as 8KiB.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub max_url_bytes: Option<u64>,
    /// Largest request or response body: bytes, or a size such as 100MiB; unlimited when unset.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub max_body_bytes: Option<u64>,
    /// Most open client connections.
    #[arg(long, value_name = "N", value_parser = text::parse_count)]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address.
    #[arg(long, value_name = "N", value_parser = text::parse_count)]
    pub max_conns_per_client: Option<usize>,
    /// Most open CONNECT tunnels; 0 turns CONNECT off.
    #[arg(long, value_name = "N", value_parser = text::parse_count)]
    pub max_tunnels: Option<usize>,
    /// Name this proxy adds to Via and looks for to detect loops; the host name unless set.
    #[arg(long, value_name = "NAME", value_parser = text::parse_token)]
    pub via_name: Option<String>,
    /// Log level.
    #[arg(long, value_name = "LEVEL", ignore_case = true, value_parser = level_parser())]
    #[serde(serialize_with = "value::serialize_some_level")]
    pub log_level: Option<log::LevelFilter>,
    /// Write the access log to this file, reopened on SIGHUP and SIGUSR1 (default: standard error).
    #[arg(long, value_name = "FILE", value_parser = text::parse_path)]
    pub access_log: Option<PathBuf>,
    /// Format of the access log.
    #[arg(long, value_name = "FORMAT", ignore_case = true)]
    pub access_log_format: Option<AccessLogFormat>,
    /// Which answers to the proxy's own pages (/healthz, /metrics) get an access line: all, or errors only (health checks and scrapes left out).
    #[arg(long, value_name = "WHICH", ignore_case = true)]
    pub access_log_own_pages: Option<OwnPages>,
    /// Memory budget of the HTTP cache: bytes, or a size such as 256MiB; 0 turns caching off.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub cache_mem: Option<u64>,
    /// Largest response kept in the memory cache.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub cache_max_object: Option<u64>,
    /// Directory of a disk cache that survives restarts (none unless set).
    #[arg(long, value_name = "DIR", value_parser = text::parse_path)]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the cache in --cache-dir (less while its file system
    /// lacks the room).
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub cache_dir_size: Option<u64>,
    /// Largest response kept in the disk cache.
    #[arg(long, value_name = "SIZE", value_parser = text::parse_bytes)]
    pub cache_dir_max_object: Option<u64>,
    /// Clients allowed to send PURGE: a range or an address; repeatable. Given, they replace the default.
    #[arg(long = "purge-client", value_name = "CIDR|ADDR", value_parser = text::parse_range)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purge_clients: Vec<IpNet>,
}

impl ServeArgs {
    /// The flags given, as config keys with the flag that set each, for
    /// `ServeConfig::load`.
    ///
    /// # Errors
    /// When a value has no TOML form (the value parsers rule that out).
    pub fn flags(&self) -> Result<Flags, ConfigError> {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let names = command.get_arguments().filter_map(|arg| {
            let long = arg.get_long()?;
            Some((arg.get_id().to_string(), format!("--{long}")))
        });
        Flags::new(self, names)
    }
}

/// Appends `[default: ...]` to a flag's help, from `ServeConfig::default()`
/// so that the help cannot drift from the code.
fn show_default(arg: Arg) -> Arg {
    let Some(shown) = config::shown_default(arg.get_id().as_str()) else {
        return arg;
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    arg.help(format!("{help} [default: {shown}]"))
}

/// `--log-level`: the levels listed in the help and in the error for a bad one.
fn level_parser() -> impl TypedValueParser<Value = log::LevelFilter> {
    PossibleValuesParser::new(text::LOG_LEVELS).try_map(|text| text::parse_level(&text))
}

/// `fetchproxy fetch`: batch download through the proxy.
#[derive(Debug, Args)]
// The field docs are `--help` text: `[USER:PASS@]` there is not a link.
#[allow(rustdoc::broken_intra_doc_links)]
pub struct FetchArgs {
    /// The proxy to go through: HOST:PORT or http://[USER:PASS@]HOST:PORT
    /// (USER and PASS percent-encoded). Several, comma-separated or
    /// repeated, share the URLs by a hash of each URL, with failover
    /// [default: 127.0.0.1:8080]
    #[arg(long, value_name = "PROXY", value_delimiter = ',')]
    pub proxy: Vec<String>,
    /// Proxy credentials, sent as Proxy-Authorization: Basic; a password
    /// left out is read from FETCHPROXY_PROXY_PASSWORD, else asked for on
    /// the terminal (not echoed).
    #[arg(long, short = 'U', value_name = "USER[:PASSWORD]")]
    pub proxy_user: Option<String>,
    /// File with one URL a line (`-` for standard input).
    #[arg(long, short = 'i', value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// Directory to save files and manifest.jsonl into (created if missing).
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// URLs fetched at the same time (1 to 1024).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Retries for connection failures and 503 answers (a move to the next
    /// proxy counts as one).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Time limit for one URL (all its redirects and retries included).
    #[arg(long, value_name = "DURATION", value_parser = parse_time_limit, default_value = "5m")]
    pub timeout: Duration,
    /// Fetch again and replace files the manifest already records.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar or per-URL lines; only errors, warnings and the summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// A request header to send, 'Name: value'; repeatable. 'Name:' with no
    /// value sends no such header (not even fetch's own User-Agent or Accept).
    #[arg(long, short = 'H', value_name = "NAME: VALUE")]
    pub header: Vec<ExtraHeader>,
    /// The User-Agent to send; empty sends none.
    #[arg(long, short = 'A', value_name = "TEXT", value_parser = parse_user_agent, default_value = concat!("fetchproxy/", env!("CARGO_PKG_VERSION")))]
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

/// `fetchproxy manpage [COMMAND] [--out-dir DIR]`.
#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// The page of one command (serve, fetch, ...) instead of the
    /// overview: `fetchproxy manpage fetch | man -l -`.
    #[arg(value_name = "COMMAND", conflicts_with = "out_dir")]
    pub command: Option<String>,
    /// Write fetchproxy.1 and fetchproxy-SUBCOMMAND.1 into DIR instead
    /// (created if missing).
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
pub use crate::config::text::parse_duration;

/// Parses a time limit: a duration other than zero, which would fail
/// every URL at once.
fn parse_time_limit(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => {
            Err("a limit of 0 would fail every URL at once; give one such as 30s".into())
        }
        limit => Ok(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeConfig;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_fetch_time_limit_of_zero_is_a_usage_error() {
        for zero in ["0s", "0ms"] {
            let err = Cli::try_parse_from(["fetchproxy", "fetch", "--timeout", zero, "http://h/"])
                .expect_err(zero);
            assert!(err.to_string().contains("would fail every URL"), "{err}");
        }
        assert!(
            Cli::try_parse_from(["fetchproxy", "fetch", "--timeout", "1ms", "http://h/"]).is_ok()
        );
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

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["fetchproxy", "serve"].iter().chain(args))
            .unwrap_or_else(|err| panic!("{args:?}: {err}"));
        match cli.command {
            Command::Serve(args) => args,
            other => panic!("not serve: {other:?}"),
        }
    }

    fn serve_error(args: &[&str]) -> String {
        Cli::try_parse_from(["fetchproxy", "serve"].iter().chain(args))
            .expect_err("bad flags")
            .to_string()
    }

    /// Every flag is named like its config key, so that `flags` keys them
    /// right; every key but `users` has a flag.
    #[test]
    fn every_flag_is_a_config_key_and_every_key_a_flag() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let ids: Vec<String> = command
            .get_arguments()
            .map(|arg| arg.get_id().to_string())
            .filter(|id| id != "config")
            .collect();
        let keys: Vec<&str> = config::keys()
            .iter()
            .copied()
            .filter(|key| *key != "users")
            .collect();
        assert_eq!(ids, keys);
    }

    #[test]
    fn flags_given_become_settings_and_the_rest_stay_unset() {
        let args = serve(&[
            "--listen",
            "3128",
            "--listen",
            "localhost:3129",
            "--workers",
            "4",
            "--allow-dest",
            "127.0.0.1",
            "--allow-client",
            "::1",
            "--dest-port",
            "80",
            "--dest-port",
            "8000-8999",
            "--connect-port",
            "8443",
            "--grace",
            "1m 30s",
            "--max-body-bytes",
            "100MiB",
            "--via-name",
            "edge-1",
            "--log-level",
            "DEBUG",
            "--access-log",
            "/tmp/access.log",
            "--access-log-format",
            "squid",
        ]);
        let config = ServeConfig::load(None, &args.flags().expect("flags")).expect("valid");
        assert_eq!(config.listen[0], "127.0.0.1:3128".parse().expect("addr"));
        assert!(
            config
                .listen
                .contains(&"127.0.0.1:3129".parse().expect("addr"))
        );
        assert_eq!(config.workers.get(), 4);
        assert_eq!(config.queue.get(), 64);
        assert_eq!(config.allow_dest, ["127.0.0.1/32".parse().expect("cidr")]);
        assert_eq!(config.allow_clients, ["::1/128".parse().expect("cidr")]);
        let ports: Vec<String> = config.dest_ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["80", "8000-8999"]);
        assert_eq!(config.connect_ports, [8443]);
        assert_eq!(config.grace, Duration::from_secs(90));
        assert_eq!(config.max_body_bytes, Some(100 << 20));
        assert_eq!(config.via_name, "edge-1");
        assert_eq!(config.log_level, log::LevelFilter::Debug);
        assert_eq!(config.access_log, Some(PathBuf::from("/tmp/access.log")));
        assert_eq!(config.access_log_format, AccessLogFormat::Squid);

        let none = serve(&[]);
        let config = ServeConfig::load(None, &none.flags().expect("flags")).expect("valid");
        assert_eq!(config, ServeConfig::default());
    }

    #[test]
    fn a_flag_out_of_range_is_blamed_on_the_flag() {
        let args = serve(&["--workers", "0", "--max-tunnels", "20000000"]);
        let err = ServeConfig::load(None, &args.flags().expect("flags")).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "2 problems in the configuration:\n  \
             --max-tunnels 20000000: expected a whole number from 0 to 10000000\n  \
             --workers 0: expected a whole number from 1 to 4096"
        );
    }

    /// Issue 14: the help shows each default, from `ServeConfig::default()`.
    #[test]
    fn serve_help_shows_the_defaults() {
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        for shown in [
            "[default: 127.0.0.1:8080]",
            "[default: 512]",
            "[default: 16 x workers: 8192]",
            "[default: none]",
            "[default: 80, 443, 1024-65535]",
            "[default: 443]",
            "[default: 30s]",
            "[default: 10s]",
            "[default: 1m]",
            "[default: 15s]",
            "[default: 5m]",
            "[default: 64KiB]",
            "[default: 8KiB, at most max_header_bytes]",
            "[default: 10000]",
            "[default: workers + queue, at most max_connections: 8704]",
            "[default: 1000, at most max_connections]",
            "[default: info]",
            "[default: fetchproxy]",
            "[default: 256MiB]",
            "[default: 16MiB]",
            "[default: 10GiB]",
            "[default: 1GiB]",
            "[default: 127.0.0.0/8, ::1/128]",
            "off, error, warn, info, debug, trace",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }
        let defaults = help.matches("[default: ").count();
        // Every flag but --config, --max-body-bytes, --upstream-ca-file,
        // --access-log and --cache-dir (unset by default).
        assert_eq!(defaults, config::keys().len() - 1 - 4, "{help}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let err = serve_error(&["--log-level", "loud"]);
        assert!(
            err.contains("'loud'") && err.contains("off, error, warn, info, debug, trace"),
            "{err}"
        );
        let err = serve_error(&["--workers", "many"]);
        assert!(err.contains("expected a whole number such as 32"), "{err}");
        let err = serve_error(&["--allow-dest", "127.0.0.0/33"]);
        assert!(
            err.contains("'127.0.0.0/33'") && err.contains("such as 127.0.0.1, 10.0.0.0/8"),
            "{err}"
        );
        let err = serve_error(&["--listen", "localhost"]);
        assert!(err.contains("localhost:3128"), "{err}");
        let err = serve_error(&["--dest-port", "0"]);
        assert!(err.contains("1024-65535"), "{err}");
        let err = serve_error(&["--access-log-format", "apache"]);
        assert!(err.contains("fetchproxy, squid, combined"), "{err}");
        let err = serve_error(&["--max-body-bytes", "lots"]);
        assert!(err.contains("64KiB"), "{err}");
        let err = serve_error(&["--via-name", "two words"]);
        assert!(err.contains("HTTP token"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_value() {
        let err = Cli::try_parse_from(["fetchproxy", "serve", "--grace", "30 parsecs"])
            .expect_err("bad duration");
        assert!(err.to_string().contains("30 parsecs"), "{err}");
    }
}
