//! Serve configuration: the TOML file (`file`, unknown keys rejected),
//! merged under the command-line flags (`resolve`) into a `ServeConfig` with
//! concrete types. The rule is flag, else file key, else default. Opens no sockets.

mod file;
mod resolve;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::access::{self, PortRange};
use crate::auth::User;
use crate::cli::ServeArgs;
use file::{FileConfig, parse_file};
use resolve::resolve;

/// Default queue length per worker. A burst of a few hundred clients
/// sending at once (a CI farm starting a build) is queued, not refused: with
/// 4 per worker the pool-size bench saw 8% of 256 simultaneous requests get
/// 503. A queued head costs about a kilobyte.
const QUEUE_PER_WORKER: usize = 16;

/// A configuration problem, reported with the key or flag and the value given.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key / wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key or flag has a value that is not allowed.
    #[error("{key} = {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A `[[users]]` entry is unusable; the hash itself is never repeated.
    #[error("[[users]] name = {name:?}: {key}: {reason}")]
    User {
        name: String,
        key: &'static str,
        reason: String,
    },
}

/// Resolved settings of `fetchproxy serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Addresses to listen on. Default: 127.0.0.1:8080.
    pub listen: Vec<SocketAddr>,
    /// Worker threads. Default: 32.
    pub workers: NonZeroUsize,
    /// Bounded queue of connections with a complete head. Default: 16 x workers.
    pub queue: NonZeroUsize,
    // The access rules (allow_dest, allow_clients, dest_ports, connect_ports,
    // users) are reloaded on SIGHUP: the server reads them through
    // `rules::SharedRules`, these fields are only where they start from.
    /// Extra destination ranges allowed though not globally routable. Default: none.
    pub allow_dest: Vec<IpNet>,
    /// Client ranges allowed. Default: loopback and private ranges.
    pub allow_clients: Vec<IpNet>,
    /// Destination ports for forwarded requests. Default: 80, 443, 1024-65535.
    pub dest_ports: Vec<PortRange>,
    /// Ports CONNECT may reach. Default: 443.
    pub connect_ports: Vec<u16>,
    /// Time for queued and in-flight requests after the first signal. Default: 30s.
    pub grace: Duration,
    /// Time to connect to an origin. Default: 10s.
    pub connect_timeout: Duration,
    /// Time for the response head, and longest silence in a body. Default: 60s.
    pub upstream_timeout: Duration,
    /// Keep-alive wait for the next request. Default: 15s.
    pub idle_timeout: Duration,
    /// Time for a whole request head. Default: 10s.
    pub header_timeout: Duration,
    /// Longest silence in both directions of a CONNECT tunnel. Default: 5m.
    pub tunnel_idle_timeout: Duration,
    /// Largest request head. Default: 64 KiB.
    pub max_header_bytes: usize,
    /// Longest request target. Default: 8 KiB.
    pub max_url_bytes: usize,
    /// Largest request or response body. Default: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Most open client connections. Default: 10,000.
    pub max_connections: usize,
    /// Most open connections from one client address. Default: 256.
    pub max_conns_per_client: usize,
    /// Most open CONNECT tunnels. Default: 1,000.
    pub max_tunnels: usize,
    /// Name this proxy puts in `Via` and looks for to detect loops. Default: the host name.
    pub via_name: String,
    /// Log level. Default: info.
    pub log_level: log::LevelFilter,
    /// Users who may use the proxy, with `Proxy-Authorization: Basic`. Default:
    /// none, and then no credentials are asked for.
    pub users: Vec<User>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        const WORKERS: NonZeroUsize = NonZeroUsize::new(32).expect("32 is not zero");
        const QUEUE: NonZeroUsize =
            NonZeroUsize::new(QUEUE_PER_WORKER * 32).expect("512 is not zero");
        ServeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: WORKERS,
            queue: QUEUE,
            allow_dest: Vec::new(),
            allow_clients: access::default_allow_clients(),
            dest_ports: access::default_dest_ports(),
            connect_ports: vec![443],
            grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(5 * 60),
            max_header_bytes: 64 * 1024,
            max_url_bytes: 8 * 1024,
            max_body_bytes: None,
            max_connections: 10_000,
            max_conns_per_client: 256,
            max_tunnels: 1_000,
            via_name: default_via_name(),
            log_level: log::LevelFilter::Info,
            users: Vec::new(),
        }
    }
}

/// The host name, as the kernel knows it, when it can stand in a `Via` header.
fn default_via_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| is_token(name))
        .unwrap_or_else(|| "fetchproxy".to_string())
}

/// RFC 9110 §5.6.2 token: what a `Via` pseudonym may be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl ServeConfig {
    /// Resolves the flags over the config file (if `--config` was given) over the defaults.
    ///
    /// # Errors
    /// `ConfigError` naming the file, key or flag and the bad value.
    pub fn load(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: path.clone(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        resolve(args, file)
    }
}

/// The keys whose new values a reload cannot apply (everything but the
/// access rules), for the log line that says a restart is needed.
pub fn keys_needing_restart(running: &ServeConfig, fresh: &ServeConfig) -> Vec<&'static str> {
    let changed = [
        ("listen", running.listen != fresh.listen),
        ("workers", running.workers != fresh.workers),
        ("queue", running.queue != fresh.queue),
        ("grace", running.grace != fresh.grace),
        (
            "connect_timeout",
            running.connect_timeout != fresh.connect_timeout,
        ),
        (
            "upstream_timeout",
            running.upstream_timeout != fresh.upstream_timeout,
        ),
        ("idle_timeout", running.idle_timeout != fresh.idle_timeout),
        (
            "header_timeout",
            running.header_timeout != fresh.header_timeout,
        ),
        (
            "tunnel_idle_timeout",
            running.tunnel_idle_timeout != fresh.tunnel_idle_timeout,
        ),
        (
            "max_header_bytes",
            running.max_header_bytes != fresh.max_header_bytes,
        ),
        (
            "max_url_bytes",
            running.max_url_bytes != fresh.max_url_bytes,
        ),
        (
            "max_body_bytes",
            running.max_body_bytes != fresh.max_body_bytes,
        ),
        (
            "max_connections",
            running.max_connections != fresh.max_connections,
        ),
        (
            "max_conns_per_client",
            running.max_conns_per_client != fresh.max_conns_per_client,
        ),
        ("max_tunnels", running.max_tunnels != fresh.max_tunnels),
        ("via_name", running.via_name != fresh.via_name),
        ("log_level", running.log_level != fresh.log_level),
    ];
    changed
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
}
