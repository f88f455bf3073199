//! Serve configuration: the TOML file (`FileConfig`, unknown keys rejected),
//! merged under the command-line flags into a resolved `ServeConfig` with
//! concrete types. The rule is flag, else file key, else default. Opens no sockets.

use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::access::{self, PortRange};
use crate::auth::{self, User};
use crate::cli::ServeArgs;

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

/// The config file as written: every key optional, values that need more
/// than TOML's types kept as strings so a bad one is reported with its key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    workers: Option<usize>,
    queue: Option<usize>,
    allow_dest: Option<Vec<String>>,
    allow_clients: Option<Vec<String>>,
    dest_ports: Option<Vec<PortSpec>>,
    connect_ports: Option<Vec<i64>>,
    grace: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    idle_timeout: Option<String>,
    header_timeout: Option<String>,
    tunnel_idle_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_url_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_conns_per_client: Option<usize>,
    max_tunnels: Option<usize>,
    via_name: Option<String>,
    log_level: Option<String>,
    users: Option<Vec<FileUser>>,
}

/// A `[[users]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    password_hash: String,
}

/// A `dest_ports` entry: `80`, `"80"` or `"1024-65535"`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a port number or a range such as \"1024-65535\""
)]
enum PortSpec {
    Number(i64),
    Text(String),
}

/// Parses the file's text; the message is one line naming the line number
/// and the key (toml's own message only shows it in a multi-line snippet).
fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|err| {
        let message = err.message().trim().replace('\n', " ");
        let Some(span) = err.span() else {
            return message;
        };
        let start = span.start.min(text.len());
        let line_no = text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        let line_end = text
            .get(start..)
            .and_then(|rest| rest.find('\n'))
            .map_or(text.len(), |i| start + i);
        // The key is on the error's line or, inside a multi-line array, above it.
        let through_line = text.get(..line_end).unwrap_or(text);
        match through_line.lines().rev().find_map(key_of_line) {
            Some(key) => format!("line {line_no}, key {key}: {message}"),
            None => format!("line {line_no}: {message}"),
        }
    })
}

/// The key a `key = value` line sets, if the line starts one.
fn key_of_line(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let is_bare_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    is_bare_key.then_some(key)
}

fn invalid(key: &'static str, value: impl Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The flag if given, else the file key, else the default, together with the
/// name to blame if the value is bad: the flag's or the key's.
fn pick<T>(
    flag: Option<T>,
    flag_name: &'static str,
    file: Option<T>,
    key: &'static str,
    default: T,
) -> (T, &'static str) {
    match (flag, file) {
        (Some(value), _) => (value, flag_name),
        (None, Some(value)) => (value, key),
        (None, None) => (default, key),
    }
}

/// `pick` for repeatable flags, where an empty list means "not given".
fn pick_list<T>(
    flag: &[T],
    flag_name: &'static str,
    file: Option<Vec<T>>,
    key: &'static str,
    default: Vec<T>,
) -> (Vec<T>, &'static str)
where
    T: Clone,
{
    let flag = (!flag.is_empty()).then(|| flag.to_vec());
    pick(flag, flag_name, file, key, default)
}

/// Parses an optional file string with `parse`, blaming `key` on failure.
fn parse_key<T, E: Display>(
    key: &'static str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|text| parse(&text).map_err(|err| invalid(key, &text, err.to_string())))
        .transpose()
}

/// Parses every string of an optional file list, blaming `key` on failure.
fn parse_list<T, E: Display>(
    key: &'static str,
    values: Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<Vec<T>>, ConfigError> {
    values
        .map(|list| {
            list.into_iter()
                .map(|text| parse(&text).map_err(|err| invalid(key, &text, err.to_string())))
                .collect()
        })
        .transpose()
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080".to_string())
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse()
        .map_err(|_| "expected an address range such as 10.0.0.0/8 or fc00::/7".to_string())
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    text.parse()
        .map_err(|_| "expected off, error, warn, info, debug or trace".to_string())
}

fn parse_port_spec(spec: &PortSpec) -> Result<PortRange, ConfigError> {
    match spec {
        PortSpec::Number(number) => match u16::try_from(*number) {
            Ok(port) if port > 0 => Ok(PortRange::single(port)),
            _ => Err(invalid(
                "dest_ports",
                number,
                "a port is between 1 and 65535",
            )),
        },
        PortSpec::Text(text) => text
            .parse()
            .map_err(|err: String| invalid("dest_ports", text, err)),
    }
}

fn parse_connect_port(number: i64) -> Result<u16, ConfigError> {
    match u16::try_from(number) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid(
            "connect_ports",
            number,
            "a port is between 1 and 65535",
        )),
    }
}

/// Checks `lo <= value <= hi`; `what` says why when it is not.
fn check_range(
    name: &'static str,
    value: usize,
    lo: usize,
    hi: usize,
    what: &str,
) -> Result<usize, ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            name,
            value,
            format!("must be between {lo} and {hi}{what}"),
        ))
    }
}

fn non_zero(name: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(name, value, "must be at least 1"))
}

/// A timeout: flag, else key, else default; zero is refused.
fn timeout(
    flag: Option<Duration>,
    flag_name: &'static str,
    file: Option<String>,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let file = parse_key(key, file, humantime::parse_duration)?;
    let (value, name) = pick(flag, flag_name, file, key, default);
    if value.is_zero() {
        return Err(invalid(
            name,
            humantime::format_duration(value),
            "must be more than zero",
        ));
    }
    Ok(value)
}

/// Layers flags over the file over the defaults, and validates the result.
fn resolve(args: &ServeArgs, file: FileConfig) -> Result<ServeConfig, ConfigError> {
    let mut config = ServeConfig::default();
    resolve_pool(args, &file, &mut config)?;
    resolve_access(args, &file, &mut config)?;
    resolve_timeouts(args, &file, &mut config)?;
    resolve_limits(args, &file, &mut config)?;
    config.users = resolve_users(file.users.as_deref().unwrap_or_default())?;
    Ok(config)
}

/// The `[[users]]` tables: names unique and usable in Basic credentials,
/// hashes argon2id PHC strings. There is no flag for them.
fn resolve_users(file_users: &[FileUser]) -> Result<Vec<User>, ConfigError> {
    let mut users: Vec<User> = Vec::with_capacity(file_users.len());
    for entry in file_users {
        let bad = |key, reason: &str| ConfigError::User {
            name: entry.name.clone(),
            key,
            reason: reason.to_string(),
        };
        // RFC 7617 §2: the user-id cannot contain a colon.
        if entry.name.is_empty()
            || entry.name.contains(':')
            || entry.name.chars().any(char::is_control)
        {
            return Err(bad(
                "name",
                "a user name is not empty and has no colon or control character",
            ));
        }
        if users.iter().any(|user| user.name == entry.name) {
            return Err(bad("name", "listed twice"));
        }
        let password_hash = auth::parse_password_hash(&entry.password_hash)
            .map_err(|r| bad("password_hash", &r))?;
        users.push(User {
            name: entry.name.clone(),
            password_hash,
        });
    }
    Ok(users)
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

/// Listeners, workers, queue, `Via` name and log level.
fn resolve_pool(
    args: &ServeArgs,
    file: &FileConfig,
    config: &mut ServeConfig,
) -> Result<(), ConfigError> {
    let file_listen = parse_list("listen", file.listen.clone(), parse_socket_addr)?;
    let (listen, name) = pick_list(
        &args.listen,
        "--listen",
        file_listen,
        "listen",
        config.listen.clone(),
    );
    if listen.is_empty() {
        return Err(invalid(name, "[]", "at least one address is needed"));
    }
    config.listen = listen;

    let (workers, name) = pick(
        args.workers,
        "--workers",
        file.workers,
        "workers",
        config.workers.get(),
    );
    config.workers = non_zero(name, check_range(name, workers, 1, 4096, "")?)?;
    // Unless set, the queue follows the resolved worker count.
    let (queue, name) = pick(
        args.queue,
        "--queue",
        file.queue,
        "queue",
        QUEUE_PER_WORKER * config.workers.get(),
    );
    config.queue = non_zero(name, check_range(name, queue, 1, 1_000_000, "")?)?;

    match &file.via_name {
        Some(name) if !is_token(name) => {
            return Err(invalid(
                "via_name",
                name,
                "must be an HTTP token (letters, digits, \".\", \"-\", \"_\"; no spaces) of at most 255 bytes",
            ));
        }
        Some(name) => config.via_name = name.clone(),
        None => {}
    }
    let file_level = parse_key("log_level", file.log_level.clone(), parse_level)?;
    (config.log_level, _) = pick(
        args.log_level,
        "--log-level",
        file_level,
        "log_level",
        config.log_level,
    );
    Ok(())
}

/// Client ranges, destination ranges and ports.
fn resolve_access(
    args: &ServeArgs,
    file: &FileConfig,
    config: &mut ServeConfig,
) -> Result<(), ConfigError> {
    let file_allow_dest = parse_list("allow_dest", file.allow_dest.clone(), parse_cidr)?;
    (config.allow_dest, _) = pick_list(
        &args.allow_dest,
        "--allow-dest",
        file_allow_dest,
        "allow_dest",
        config.allow_dest.clone(),
    );

    let file_clients = parse_list("allow_clients", file.allow_clients.clone(), parse_cidr)?;
    let (allow_clients, name) = pick_list(
        &args.allow_client,
        "--allow-client",
        file_clients,
        "allow_clients",
        config.allow_clients.clone(),
    );
    if allow_clients.is_empty() {
        return Err(invalid(
            name,
            "[]",
            "no client could connect; list at least one range",
        ));
    }
    config.allow_clients = allow_clients;

    if let Some(specs) = &file.dest_ports {
        let dest_ports = specs
            .iter()
            .map(parse_port_spec)
            .collect::<Result<Vec<_>, _>>()?;
        if dest_ports.is_empty() {
            return Err(invalid(
                "dest_ports",
                "[]",
                "no request could be forwarded; list at least one port",
            ));
        }
        config.dest_ports = dest_ports;
    }

    // An empty `connect_ports` in the file turns CONNECT off.
    let file_connect_ports = file
        .connect_ports
        .as_ref()
        .map(|ports| ports.iter().map(|&port| parse_connect_port(port)).collect())
        .transpose()?;
    let (connect_ports, name) = pick_list(
        &args.connect_ports,
        "--connect-port",
        file_connect_ports,
        "connect_ports",
        config.connect_ports.clone(),
    );
    if connect_ports.contains(&0) {
        return Err(invalid(name, 0, "a port is between 1 and 65535"));
    }
    config.connect_ports = connect_ports;
    Ok(())
}

/// The grace period and the timeouts.
fn resolve_timeouts(
    args: &ServeArgs,
    file: &FileConfig,
    config: &mut ServeConfig,
) -> Result<(), ConfigError> {
    // Zero grace is allowed: stop at once, cutting requests short.
    let file_grace = parse_key("grace", file.grace.clone(), humantime::parse_duration)?;
    (config.grace, _) = pick(args.grace, "--grace", file_grace, "grace", config.grace);
    config.connect_timeout = timeout(
        args.connect_timeout,
        "--connect-timeout",
        file.connect_timeout.clone(),
        "connect_timeout",
        config.connect_timeout,
    )?;
    config.upstream_timeout = timeout(
        args.upstream_timeout,
        "--upstream-timeout",
        file.upstream_timeout.clone(),
        "upstream_timeout",
        config.upstream_timeout,
    )?;
    config.idle_timeout = timeout(
        args.idle_timeout,
        "--idle-timeout",
        file.idle_timeout.clone(),
        "idle_timeout",
        config.idle_timeout,
    )?;
    config.header_timeout = timeout(
        args.header_timeout,
        "--header-timeout",
        file.header_timeout.clone(),
        "header_timeout",
        config.header_timeout,
    )?;
    config.tunnel_idle_timeout = timeout(
        args.tunnel_idle_timeout,
        "--tunnel-idle-timeout",
        file.tunnel_idle_timeout.clone(),
        "tunnel_idle_timeout",
        config.tunnel_idle_timeout,
    )?;
    Ok(())
}

/// Head, URL and body sizes, and connection counts.
fn resolve_limits(
    args: &ServeArgs,
    file: &FileConfig,
    config: &mut ServeConfig,
) -> Result<(), ConfigError> {
    let (max_header_bytes, name) = pick(
        args.max_header_bytes,
        "--max-header-bytes",
        file.max_header_bytes,
        "max_header_bytes",
        config.max_header_bytes,
    );
    config.max_header_bytes = check_range(name, max_header_bytes, 1024, 1024 * 1024, "")?;
    let (max_url_bytes, name) = pick(
        args.max_url_bytes,
        "--max-url-bytes",
        file.max_url_bytes,
        "max_url_bytes",
        config.max_url_bytes,
    );
    config.max_url_bytes = check_range(
        name,
        max_url_bytes,
        16,
        config.max_header_bytes,
        " (max_header_bytes)",
    )?;
    let (max_body_bytes, name) = pick(
        args.max_body_bytes.map(Some),
        "--max-body-bytes",
        file.max_body_bytes.map(Some),
        "max_body_bytes",
        config.max_body_bytes,
    );
    if max_body_bytes == Some(0) {
        return Err(invalid(
            name,
            0,
            "must be at least 1; leave it unset for no limit",
        ));
    }
    config.max_body_bytes = max_body_bytes;

    let (max_connections, name) = pick(
        args.max_connections,
        "--max-connections",
        file.max_connections,
        "max_connections",
        config.max_connections,
    );
    config.max_connections = check_range(name, max_connections, 1, 10_000_000, "")?;
    let (per_client, name) = pick(
        args.max_conns_per_client,
        "--max-conns-per-client",
        file.max_conns_per_client,
        "max_conns_per_client",
        config.max_conns_per_client,
    );
    config.max_conns_per_client = check_range(
        name,
        per_client,
        1,
        config.max_connections,
        " (max_connections)",
    )?;
    // Zero tunnels turns CONNECT off.
    let (max_tunnels, name) = pick(
        args.max_tunnels,
        "--max-tunnels",
        file.max_tunnels,
        "max_tunnels",
        config.max_tunnels,
    );
    config.max_tunnels = check_range(
        name,
        max_tunnels,
        0,
        config.max_connections,
        " (max_connections)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(text: &str, args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = parse_file(text).map_err(|message| ConfigError::Parse {
            path: PathBuf::from("test.toml"),
            message,
        })?;
        resolve(args, file)
    }

    fn invalid_key(result: Result<ServeConfig, ConfigError>) -> (&'static str, String, String) {
        match result {
            Err(ConfigError::Invalid { key, value, reason }) => (key, value, reason),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn parse_message(text: &str) -> String {
        match from_file(text, &ServeArgs::default()) {
            Err(err @ ConfigError::Parse { .. }) => err.to_string(),
            other => panic!("expected Parse, got {other:?}"),
        }
    }

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        let example = include_str!("../config.example.toml");
        let config = from_file(example, &ServeArgs::default()).expect("example parses");
        assert_eq!(config, ServeConfig::default());
    }

    #[test]
    fn example_file_mentions_every_key() {
        let example = include_str!("../config.example.toml");
        for key in [
            "listen",
            "workers",
            "queue",
            "allow_dest",
            "allow_clients",
            "dest_ports",
            "connect_ports",
            "grace",
            "connect_timeout",
            "upstream_timeout",
            "idle_timeout",
            "header_timeout",
            "tunnel_idle_timeout",
            "max_header_bytes",
            "max_url_bytes",
            "max_body_bytes",
            "max_connections",
            "max_conns_per_client",
            "max_tunnels",
            "via_name",
            "log_level",
        ] {
            assert!(
                example.contains(&format!("\n{key} = "))
                    || example.contains(&format!("# {key} = ")),
                "{key}"
            );
        }
        for line in ["# [[users]]", "# name = ", "# password_hash = "] {
            assert!(example.contains(line), "{line}");
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let config = ServeConfig::default();
        assert_eq!(config.workers.get(), 32);
        assert_eq!(config.queue.get(), 512);
        assert_eq!(config.listen, vec!["127.0.0.1:8080".parse().expect("addr")]);
        assert_eq!(config.max_header_bytes, 65536);
        assert_eq!(config.tunnel_idle_timeout, Duration::from_secs(300));
        assert!(is_token(&config.via_name), "{}", config.via_name);
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let text =
            "workers = 8\ngrace = \"1m\"\nlisten = [\"127.0.0.1:9000\"]\nidle_timeout = \"5s\"\n";
        let from_file_only = from_file(text, &ServeArgs::default()).expect("valid");
        assert_eq!(from_file_only.workers.get(), 8);
        assert_eq!(
            from_file_only.queue.get(),
            QUEUE_PER_WORKER * 8,
            "queue follows the file's workers"
        );
        assert_eq!(from_file_only.grace, Duration::from_secs(60));
        assert_eq!(from_file_only.idle_timeout, Duration::from_secs(5));
        assert_eq!(from_file_only.connect_timeout, Duration::from_secs(10));

        let args = ServeArgs {
            workers: Some(2),
            listen: vec!["[::1]:0".parse().expect("addr")],
            idle_timeout: Some(Duration::from_secs(1)),
            ..ServeArgs::default()
        };
        let config = from_file(text, &args).expect("valid");
        assert_eq!(config.workers.get(), 2);
        assert_eq!(
            config.queue.get(),
            QUEUE_PER_WORKER * 2,
            "queue follows the flag's workers"
        );
        assert_eq!(config.listen, args.listen);
        assert_eq!(config.idle_timeout, Duration::from_secs(1));
        assert_eq!(config.grace, Duration::from_secs(60), "file still applies");
    }

    #[test]
    fn an_explicit_queue_wins_over_four_times_workers() {
        let args = ServeArgs {
            queue: Some(5),
            ..ServeArgs::default()
        };
        let config = from_file("workers = 8\n", &args).expect("valid");
        assert_eq!(config.queue.get(), 5);
        let config = from_file("workers = 8\nqueue = 3\n", &ServeArgs::default()).expect("valid");
        assert_eq!(config.queue.get(), 3);
    }

    #[test]
    fn unknown_key_is_a_parse_error_naming_key_and_line() {
        let message = parse_message("workers = 4\nwokrers = 8\n");
        assert!(message.contains("wokrers"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("key workers"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn wrong_type_is_a_parse_error_naming_the_key() {
        let message = parse_message("\nworkers = \"many\"\n");
        assert!(message.contains("workers"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        let message = parse_message("listen = \"127.0.0.1:80\"\n");
        assert!(message.contains("listen"), "{message}");
        let message = parse_message("dest_ports = [\n  80,\n  true,\n]\n");
        // serde reports an untagged mismatch at the array, which starts on line 1.
        assert!(message.contains("line 1, key dest_ports"), "{message}");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let err = from_file("grace = \"30 parsecs\"\n", &ServeArgs::default()).expect_err("bad");
        assert!(
            err.to_string().starts_with("grace = \"30 parsecs\": "),
            "{err}"
        );
        let (key, _, _) = invalid_key(from_file(
            "connect_timeout = \"0s\"\n",
            &ServeArgs::default(),
        ));
        assert_eq!(key, "connect_timeout");
        let args = ServeArgs {
            header_timeout: Some(Duration::ZERO),
            ..ServeArgs::default()
        };
        let (key, _, _) = invalid_key(from_file("", &args));
        assert_eq!(key, "--header-timeout");
    }

    #[test]
    fn zero_workers_is_refused_under_the_name_used() {
        let (key, value, _) = invalid_key(from_file("workers = 0\n", &ServeArgs::default()));
        assert_eq!((key, value.as_str()), ("workers", "0"));
        let args = ServeArgs {
            workers: Some(0),
            ..ServeArgs::default()
        };
        let (key, _, _) = invalid_key(from_file("workers = 4\n", &args));
        assert_eq!(key, "--workers");
        let (key, _, _) = invalid_key(from_file("workers = 5000\n", &ServeArgs::default()));
        assert_eq!(key, "workers");
        let (key, _, _) = invalid_key(from_file("queue = 0\n", &ServeArgs::default()));
        assert_eq!(key, "queue");
    }

    #[test]
    fn bad_cidr_and_addresses_name_key_and_value() {
        let (key, value, _) = invalid_key(from_file(
            "allow_dest = [\"10.0.0.0/33\"]\n",
            &ServeArgs::default(),
        ));
        assert_eq!((key, value.as_str()), ("allow_dest", "10.0.0.0/33"));
        let (key, _, _) = invalid_key(from_file(
            "allow_clients = [\"localnet\"]\n",
            &ServeArgs::default(),
        ));
        assert_eq!(key, "allow_clients");
        let (key, value, _) = invalid_key(from_file(
            "listen = [\"localhost:80\"]\n",
            &ServeArgs::default(),
        ));
        assert_eq!((key, value.as_str()), ("listen", "localhost:80"));
        let (key, _, _) = invalid_key(from_file("listen = []\n", &ServeArgs::default()));
        assert_eq!(key, "listen");
        let (key, _, _) = invalid_key(from_file("allow_clients = []\n", &ServeArgs::default()));
        assert_eq!(key, "allow_clients");
    }

    #[test]
    fn ports_parse_from_numbers_and_ranges() {
        let config = from_file(
            "dest_ports = [80, \"8000-8999\"]\nconnect_ports = [443, 8443]\n",
            &ServeArgs::default(),
        )
        .expect("valid");
        assert_eq!(
            config.dest_ports,
            vec![
                PortRange::single(80),
                PortRange {
                    first: 8000,
                    last: 8999
                }
            ]
        );
        assert_eq!(config.connect_ports, vec![443, 8443]);
        for bad in [
            "dest_ports = [0]",
            "dest_ports = [70000]",
            "dest_ports = [\"200-100\"]",
            "dest_ports = []",
        ] {
            let (key, _, _) = invalid_key(from_file(bad, &ServeArgs::default()));
            assert_eq!(key, "dest_ports", "{bad}");
        }
        let (key, _, _) = invalid_key(from_file("connect_ports = [0]", &ServeArgs::default()));
        assert_eq!(key, "connect_ports");
        let args = ServeArgs {
            connect_ports: vec![0],
            ..ServeArgs::default()
        };
        let (key, _, _) = invalid_key(from_file("", &args));
        assert_eq!(key, "--connect-port");
    }

    #[test]
    fn limits_are_checked_against_each_other() {
        let (key, _, reason) = invalid_key(from_file(
            "max_header_bytes = 2048\nmax_url_bytes = 4096\n",
            &ServeArgs::default(),
        ));
        assert_eq!(key, "max_url_bytes");
        assert!(reason.contains("2048"), "{reason}");
        let (key, _, _) = invalid_key(from_file("max_header_bytes = 100\n", &ServeArgs::default()));
        assert_eq!(key, "max_header_bytes");
        let (key, _, _) = invalid_key(from_file("max_connections = 500\n", &ServeArgs::default()));
        assert_eq!(
            key, "max_tunnels",
            "the default 1000 tunnels exceed 500 connections"
        );
        let (key, _, _) = invalid_key(from_file("max_connections = 0\n", &ServeArgs::default()));
        assert_eq!(key, "max_connections");
        let (key, _, _) = invalid_key(from_file("max_body_bytes = 0\n", &ServeArgs::default()));
        assert_eq!(key, "max_body_bytes");
        let config = from_file("max_body_bytes = 1000\n", &ServeArgs::default()).expect("valid");
        assert_eq!(config.max_body_bytes, Some(1000));
    }

    #[test]
    fn via_name_and_log_level_are_checked() {
        let (key, _, _) = invalid_key(from_file(
            "via_name = \"two words\"\n",
            &ServeArgs::default(),
        ));
        assert_eq!(key, "via_name");
        let config = from_file(
            "via_name = \"proxy-1.example\"\nlog_level = \"DEBUG\"\n",
            &ServeArgs::default(),
        )
        .expect("valid");
        assert_eq!(config.via_name, "proxy-1.example");
        assert_eq!(config.log_level, log::LevelFilter::Debug);
        let (key, value, _) =
            invalid_key(from_file("log_level = \"loud\"\n", &ServeArgs::default()));
        assert_eq!((key, value.as_str()), ("log_level", "loud"));
    }

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$1Lj8XbtjgKpPhZe9BbR3v0p+ROxh6hV3kdEc4S1bfqc";

    #[test]
    fn users_are_read_from_users_tables() {
        let text = format!(
            "[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n\n[[users]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"
        );
        let config = from_file(&text, &ServeArgs::default()).expect("valid");
        let names: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(
            !format!("{config:?}").contains("c2FsdH"),
            "hashes stay out of Debug"
        );
    }

    #[test]
    fn bad_users_name_the_key_but_never_echo_the_hash() {
        let user = |name: &str, hash: &str| {
            let text = format!("[[users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n");
            match from_file(&text, &ServeArgs::default()) {
                Err(err @ ConfigError::User { .. }) => err.to_string(),
                other => panic!("expected User, got {other:?}"),
            }
        };
        let message = user("alice", "plain-password");
        assert!(
            message.contains("password_hash") && message.contains("alice"),
            "{message}"
        );
        assert!(!message.contains("plain-password"), "{message}");
        let message = user("alice", &HASH.replace("argon2id", "argon2i"));
        assert!(message.contains("argon2id"), "{message}");
        assert!(user("a:b", HASH).contains("name"));
        assert!(user("", HASH).contains("name"));
        let twice = format!(
            "[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n"
        );
        let err = from_file(&twice, &ServeArgs::default()).expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
        let message = parse_message("[[users]]\nname = \"a\"\npassword = \"x\"\n");
        assert!(message.contains("password"), "{message}");
    }

    #[test]
    fn only_settings_outside_the_rules_need_a_restart() {
        let running = ServeConfig::default();
        let mut fresh = running.clone();
        fresh.allow_dest = vec!["127.0.0.0/8".parse().expect("cidr")];
        fresh.connect_ports = vec![8443];
        assert!(keys_needing_restart(&running, &fresh).is_empty());
        fresh.workers = NonZeroUsize::new(3).expect("not zero");
        fresh.idle_timeout = Duration::from_secs(1);
        assert_eq!(
            keys_needing_restart(&running, &fresh),
            ["workers", "idle_timeout"]
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fetchproxy.toml");
        std::fs::write(&path, "workers = 3\n").expect("write config");
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(ServeConfig::load(&args).expect("valid").workers.get(), 3);

        std::fs::write(&path, "workers = [\n").expect("write config");
        let err = ServeConfig::load(&args).expect_err("broken toml");
        assert!(err.to_string().contains("fetchproxy.toml"), "{err}");

        let missing = ServeArgs {
            config: Some(dir.path().join("absent.toml")),
            ..ServeArgs::default()
        };
        assert!(matches!(
            ServeConfig::load(&missing),
            Err(ConfigError::Read { .. })
        ));
        assert!(ServeConfig::load(&ServeArgs::default()).is_ok());
    }
}
