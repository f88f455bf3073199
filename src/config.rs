//! Serve configuration: the TOML file (`FileConfig`, unknown keys rejected),
//! merged under the command-line flags into a resolved `ServeConfig` with
//! concrete types. The rule is flag, else file key, else default. Opens no sockets.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::access::PortRange;
use crate::cli::ServeArgs;

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
}

/// Resolved settings of `fetchproxy serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Addresses to listen on. Default: 127.0.0.1:8080.
    pub listen: Vec<SocketAddr>,
    /// Worker threads. Default: 32.
    pub workers: NonZeroUsize,
    /// Bounded queue of connections with a complete head. Default: 4 x workers.
    pub queue: NonZeroUsize,
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        todo!()
    }
}

impl ServeConfig {
    /// Resolves the flags over the config file (if `--config` was given) over the defaults.
    ///
    /// # Errors
    /// `ConfigError` naming the file, key or flag and the bad value.
    pub fn load(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let _ = args;
        todo!()
    }
}
