//! Serve configuration: `ServeConfig` and how it is put together. Each
//! setting is a field of `ServeConfig`; its key in the config file is the
//! field's name, its flag lives in `cli::ServeArgs` under the same name.
//! The flags given become a TOML table laid over the file's table
//! (`layers`), every key is read by serde through the helpers in `value`
//! (text forms in `text`, shared with the flags), and a few rules between
//! keys are checked at the end. The rule is flag,
//! else file key, else default. Every problem is reported at once, with its
//! line or flag. Opens no sockets; a host name in `listen` is resolved.
//!
//! Adding a setting: a field here (with its doc, its default in `Default`,
//! and a `value` helper naming its range or form), a field of the same name
//! in `cli::ServeArgs` (its flag, with a `text` parser), and a commented
//! line in `config.example.toml`. Unit tests check that the three agree.

mod keys;
mod layers;
mod problem;
pub mod size;
#[cfg(test)]
mod tests;
pub mod text;
pub mod value;
mod visit;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::access::{self, PortRange};
use crate::auth::User;
use crate::logging::{AccessLogFormat, OwnPages};
pub use keys::keys;
pub use layers::Flags;
pub use problem::{Origin, Problem};
use value::Within;

/// Default worker threads. Workers mostly wait on the network: a request
/// to an origin 50 ms away holds one for 50 ms, so a pool serves about
/// `workers / latency` requests a second (512 / 50 ms = 10,240), and as
/// many clients at once as it has workers. An idle worker costs its stack's
/// few touched pages; a busy one tens of KiB with its upstream connection.
/// The curve is in docs/performance.md.
const WORKERS: NonZeroUsize = NonZeroUsize::new(512).expect("512 is not zero");

/// Default queue length per worker. A burst of clients sending at once (a
/// CI farm starting a build) is queued, not refused. A queued head costs
/// about a kilobyte.
const QUEUE_PER_WORKER: NonZeroUsize = NonZeroUsize::new(16).expect("16 is not zero");

/// The queue unless set: `QUEUE_PER_WORKER` per worker.
pub fn default_queue(workers: NonZeroUsize) -> NonZeroUsize {
    workers.saturating_mul(QUEUE_PER_WORKER)
}

/// `max_conns_per_client` unless set: as many connections as the pool can
/// take at once (its workers and its queue), so that one crawler or CI
/// runner is never refused what the pool could serve, within
/// `max_connections`.
pub fn default_conns_per_client(
    workers: NonZeroUsize,
    queue: NonZeroUsize,
    max_connections: usize,
) -> usize {
    workers
        .get()
        .saturating_add(queue.get())
        .min(max_connections)
}

/// `max_tunnels` unless set: a thousand, at most `max_connections`.
pub fn default_max_tunnels(max_connections: usize) -> usize {
    MAX_TUNNELS.min(max_connections)
}

/// `max_url_bytes` unless set: 8 KiB, at most `max_header_bytes`.
pub fn default_max_url_bytes(max_header_bytes: usize) -> usize {
    MAX_URL_BYTES.min(max_header_bytes)
}

const MAX_TUNNELS: usize = 1_000;
const MAX_URL_BYTES: usize = 8 * 1024;

/// The configuration could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Keys, flags or values that are not valid; never empty.
    #[error("{}", problem::list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The message on one line, for a log.
    pub fn one_line(&self) -> String {
        match self {
            ConfigError::Invalid(problems) => problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }
}

/// Resolved settings of `fetchproxy serve`. The field names are the keys of
/// the config file; `cli::ServeArgs` has a flag of the same name for each,
/// except `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Addresses to listen on: `PORT` (on 127.0.0.1), `IP:PORT`,
    /// `[IPv6]:PORT` or `HOST:PORT` (every address the name resolves to).
    /// Default: 127.0.0.1:8080.
    #[serde(deserialize_with = "value::listen")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads, fixed for the life of the process. Default: 512.
    #[serde(deserialize_with = "Within::<1, 4096>::number")]
    pub workers: NonZeroUsize,
    /// Bounded queue of connections with a complete head. Default: 16 x workers.
    #[serde(deserialize_with = "Within::<1, 1_000_000>::number")]
    pub queue: NonZeroUsize,
    // The access rules (allow_dest, allow_clients, dest_ports, connect_ports,
    // users) are reloaded on SIGHUP: the server reads them through
    // `rules::SharedRules`, these fields are only where they start from.
    /// Extra destination ranges allowed though not globally routable; a bare
    /// address is a range of one. Default: none.
    #[serde(deserialize_with = "value::ranges")]
    pub allow_dest: Vec<IpNet>,
    /// Client ranges allowed. Default: loopback and private ranges.
    #[serde(deserialize_with = "value::some_ranges")]
    pub allow_clients: Vec<IpNet>,
    /// Destination ports for forwarded requests. Default: 80, 443, 1024-65535.
    #[serde(with = "value::port_ranges")]
    pub dest_ports: Vec<PortRange>,
    /// Ports CONNECT may reach; none turns CONNECT off. Default: 443.
    #[serde(deserialize_with = "value::ports")]
    pub connect_ports: Vec<u16>,
    /// Time for queued and in-flight requests after the first signal; zero
    /// stops at once. Default: 30s.
    #[serde(with = "value::duration")]
    pub grace: Duration,
    /// Time to connect to an origin. Default: 10s.
    #[serde(with = "value::timeout")]
    pub connect_timeout: Duration,
    /// Time for the response head, and longest silence in a body. Default: 60s.
    #[serde(with = "value::timeout")]
    pub upstream_timeout: Duration,
    /// PEM file of the certificate authorities https origins are checked
    /// against, in place of the bundled public ones. Default: none (the
    /// bundled Mozilla roots).
    #[serde(deserialize_with = "value::path")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Keep-alive wait for the next request. Default: 15s.
    #[serde(with = "value::timeout")]
    pub idle_timeout: Duration,
    /// Time for a whole request head. Default: 10s.
    #[serde(with = "value::timeout")]
    pub header_timeout: Duration,
    /// Longest silence in both directions of a CONNECT tunnel. Default: 5m.
    #[serde(with = "value::timeout")]
    pub tunnel_idle_timeout: Duration,
    /// Slowest a client may send a request body or take an answer, in bytes
    /// a second: a request's waits on its client may add up to
    /// `idle_timeout`, plus a second for every this many bytes moved; 0
    /// turns the check off. Default: 1KiB.
    #[serde(
        deserialize_with = "Within::<0, { size::MAX_SIZE }>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub client_min_rate: u64,
    /// Largest request head. Default: 64 KiB.
    #[serde(
        deserialize_with = "Within::<1024, 1_048_576>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub max_header_bytes: usize,
    /// Longest request target, at most `max_header_bytes`. Default: 8 KiB.
    #[serde(
        deserialize_with = "Within::<16, 1_048_576>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub max_url_bytes: usize,
    /// Largest request or response body. Default: unlimited.
    #[serde(
        deserialize_with = "Within::<1, { size::MAX_SIZE }>::some_bytes",
        serialize_with = "value::serialize_some_size"
    )]
    pub max_body_bytes: Option<u64>,
    /// Most open client connections. Default: 10,000.
    #[serde(deserialize_with = "Within::<1, 10_000_000>::number")]
    pub max_connections: usize,
    /// Most open connections from one client address, at most
    /// `max_connections`. Default: workers + queue, at most `max_connections`.
    #[serde(deserialize_with = "Within::<1, 10_000_000>::number")]
    pub max_conns_per_client: usize,
    /// Most open CONNECT tunnels, at most `max_connections`; zero turns
    /// CONNECT off. Default: 1,000.
    #[serde(deserialize_with = "Within::<0, 10_000_000>::number")]
    pub max_tunnels: usize,
    /// Name this proxy puts in `Via` and looks for to detect loops. Default: the host name.
    #[serde(deserialize_with = "value::token")]
    pub via_name: String,
    /// Log level. Default: info.
    #[serde(with = "value::level")]
    pub log_level: log::LevelFilter,
    /// File the access log is appended to, reopened on SIGHUP and SIGUSR1.
    /// Default: none, and access lines go to standard error with the rest.
    #[serde(deserialize_with = "value::path")]
    pub access_log: Option<PathBuf>,
    /// Format of the access log. Default: fetchproxy.
    #[serde(deserialize_with = "value::named")]
    pub access_log_format: AccessLogFormat,
    /// Which answers to the proxy's own pages (`/healthz`, `/metrics`) the
    /// access log records: all, or errors only. Default: all.
    #[serde(deserialize_with = "value::named")]
    pub access_log_own_pages: OwnPages,
    /// Memory budget of the HTTP cache; 0 turns caching off. Default: 256MiB.
    #[serde(
        deserialize_with = "Within::<0, { size::MAX_SIZE }>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub cache_mem: u64,
    /// Largest response kept in memory (at most `cache_mem`). Default: 16MiB.
    #[serde(
        deserialize_with = "Within::<1, { size::MAX_SIZE }>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub cache_max_object: u64,
    /// Directory of the disk cache, kept across restarts. Default: none (no disk cache).
    #[serde(deserialize_with = "value::path")]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the cache in `cache_dir`. Default: 10GiB.
    #[serde(
        deserialize_with = "Within::<1, { size::MAX_SIZE }>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub cache_dir_size: u64,
    /// Largest response kept on disk (at most `cache_dir_size`). Default: 1GiB.
    #[serde(
        deserialize_with = "Within::<1, { size::MAX_SIZE }>::bytes",
        serialize_with = "value::serialize_size"
    )]
    pub cache_dir_max_object: u64,
    /// Clients allowed to send PURGE. Default: loopback.
    #[serde(deserialize_with = "value::ranges")]
    pub purge_clients: Vec<IpNet>,
    /// Users who may use the proxy, with `Proxy-Authorization: Basic`. Default:
    /// none, and then no credentials are asked for.
    #[serde(with = "value::users")]
    pub users: Vec<User>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        const MAX_CONNECTIONS: usize = 10_000;
        let queue = default_queue(WORKERS);
        ServeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: WORKERS,
            queue,
            allow_dest: Vec::new(),
            allow_clients: access::default_allow_clients(),
            dest_ports: access::default_dest_ports(),
            connect_ports: vec![443],
            grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(60),
            upstream_ca_file: None,
            idle_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(5 * 60),
            client_min_rate: 1024,
            max_header_bytes: 64 * 1024,
            max_url_bytes: MAX_URL_BYTES,
            max_body_bytes: None,
            max_connections: MAX_CONNECTIONS,
            max_conns_per_client: default_conns_per_client(WORKERS, queue, MAX_CONNECTIONS),
            max_tunnels: MAX_TUNNELS,
            via_name: default_via_name(),
            log_level: log::LevelFilter::Info,
            access_log: None,
            access_log_format: AccessLogFormat::Fetchproxy,
            access_log_own_pages: OwnPages::All,
            cache_mem: 256 << 20,
            cache_max_object: 16 << 20,
            cache_dir: None,
            cache_dir_size: 10 << 30,
            cache_dir_max_object: 1 << 30,
            purge_clients: access::default_purge_clients(),
            users: Vec::new(),
        }
    }
}

/// The host name, as the kernel knows it, when it can stand in a `Via` header.
fn default_via_name() -> String {
    // uname(2), not /proc/sys/kernel/hostname: the systemd unit's
    // `ProcSubset=pid` hides the latter.
    let uname = rustix::system::uname();
    uname
        .nodename()
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|name| text::is_token(name))
        .map_or_else(|| "fetchproxy".to_string(), str::to_string)
}

impl ServeConfig {
    /// The flags over the config file at `path` (if any) over the defaults.
    ///
    /// # Errors
    /// `ConfigError::Read` when the file cannot be read; `Invalid` with every
    /// problem found, each naming its line or flag and the value.
    pub fn load(path: Option<&Path>, flags: &Flags) -> Result<ServeConfig, ConfigError> {
        let text = match path {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let file = path.zip(text.as_deref());
        layers::resolve(file, flags)
    }

    /// The settings keyed like the config file, as TOML values.
    fn to_table(&self) -> Option<toml::Table> {
        toml::Table::try_from(self).ok()
    }

    /// The rules between keys, each broken one as the key at fault and
    /// why. Checked once every key is valid on its own.
    fn rules_between_keys(&self) -> Vec<(&'static str, String)> {
        let mut broken = Vec::new();
        if self.max_url_bytes > self.max_header_bytes {
            broken.push((
                "max_url_bytes",
                format!(
                    "must be at most max_header_bytes ({})",
                    self.max_header_bytes
                ),
            ));
        }
        if self.cache_dir.is_some() && self.cache_mem == 0 {
            broken.push((
                "cache_dir",
                "needs cache_mem above 0 (cache_mem = 0 turns the whole cache off)".to_string(),
            ));
        }
        for (key, value) in [
            ("max_conns_per_client", self.max_conns_per_client),
            ("max_tunnels", self.max_tunnels),
        ] {
            if value > self.max_connections {
                broken.push((
                    key,
                    format!("must be at most max_connections ({})", self.max_connections),
                ));
            }
        }
        broken
    }
}

/// The keys whose values differ between two configurations, in the order
/// of `ServeConfig`'s fields.
pub fn changed_keys(running: &ServeConfig, fresh: &ServeConfig) -> Vec<&'static str> {
    // A key that follows others in both (the queue, the per-client cap)
    // changed because they did, and is not named again.
    let follows = |key: &str| {
        [running, fresh].iter().all(|c| match key {
            "queue" => c.queue == default_queue(c.workers),
            "max_conns_per_client" => {
                c.max_conns_per_client
                    == default_conns_per_client(c.workers, c.queue, c.max_connections)
            }
            "max_tunnels" => c.max_tunnels == default_max_tunnels(c.max_connections),
            "max_url_bytes" => c.max_url_bytes == default_max_url_bytes(c.max_header_bytes),
            _ => false,
        })
    };
    let (running, fresh) = (running.to_table(), fresh.to_table());
    let value = |table: &Option<toml::Table>, key: &str| {
        table.as_ref().map(|table| table.get(key).cloned())
    };
    keys()
        .iter()
        .copied()
        .filter(|key| value(&running, key) != value(&fresh, key) && !follows(key))
        .collect()
}

/// The default of `key` as `serve --help` shows it: lists joined with
/// commas (`none` when empty); `None` for a key unset by default.
pub fn shown_default(key: &str) -> Option<String> {
    static DEFAULTS: std::sync::OnceLock<Option<toml::Table>> = std::sync::OnceLock::new();
    let defaults = DEFAULTS.get_or_init(|| ServeConfig::default().to_table());
    let value = defaults.as_ref()?.get(key)?;
    let shown = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Array(items) if items.is_empty() => "none".to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    // Values that follow other keys say so.
    Some(match key {
        "queue" => format!("16 x workers: {shown}"),
        "max_conns_per_client" => format!("workers + queue, at most max_connections: {shown}"),
        "max_tunnels" => format!("{shown}, at most max_connections"),
        "max_url_bytes" => format!("{shown}, at most max_header_bytes"),
        _ => shown,
    })
}
