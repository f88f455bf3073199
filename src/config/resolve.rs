//! Flags over file keys over defaults, each value checked and given its
//! concrete type; a bad one is reported with the flag or key that set it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{FileConfig, FileUser, PortSpec};
use super::{ConfigError, QUEUE_PER_WORKER, ServeConfig, is_token};
use crate::access::PortRange;
use crate::auth::{self, User};
use crate::cli::ServeArgs;

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
pub(super) fn resolve(args: &ServeArgs, file: FileConfig) -> Result<ServeConfig, ConfigError> {
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
