//! Listening sockets: binding with a backlog that fits bursts, the options
//! every accepted client socket inherits, and the open-files limit raised to
//! fit `max_connections`. Start-up only; nothing here runs per request.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::config::ServeConfig;

/// Largest listen backlog asked for (the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG_MAX: usize = 4096;

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}{}", bind_hint(.source))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "open-files limit {limit} (as far as its hard limit lets it be raised) is too low for \
         max_connections = {max_connections}: {advice}, or raise the hard limit (LimitNOFILE= \
         under systemd, `ulimit -Hn` as root)"
    )]
    FileLimit {
        limit: u64,
        max_connections: usize,
        advice: String,
    },
    #[error("cannot start the cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error("{0}")]
    CaFile(#[from] crate::upstream::CaFileError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

/// What to do about a failed bind, for the failures a person can fix.
fn bind_hint(source: &io::Error) -> &'static str {
    match source.kind() {
        io::ErrorKind::AddrInUse => {
            "; another process holds it: stop that one, or give another address with --listen (or `listen` in the config)"
        }
        io::ErrorKind::AddrNotAvailable => {
            "; no interface of this machine has that address: give one it has, such as 127.0.0.1:8080 or 0.0.0.0:8080"
        }
        io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need privileges: use a port from 1024 up, or grant CAP_NET_BIND_SERVICE"
        }
        _ => "",
    }
}

/// Binds every `listen` address of `config`, with the client options set.
///
/// # Errors
/// `Bind` naming the address that failed.
pub fn bind(config: &ServeConfig) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let bind_error = |source| StartError::Bind {
            addr: *addr,
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        // std listens with a backlog of 128; a burst of new connections
        // (a crawler starting up, many clients reconnecting) needs more, or
        // SYNs are dropped and clients wait a second for a retransmit.
        let backlog = config.max_connections.clamp(128, LISTEN_BACKLOG_MAX) as i32;
        rustix::net::listen(&listener, backlog).map_err(|errno| bind_error(errno.into()))?;
        // Every accepted socket inherits these (see `set_client_options`).
        set_client_options(&listener, config.idle_timeout, config.upstream_timeout)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Descriptors the connections may hold at once: clients up to
/// `max_connections`; upstream at most three per worker (one in use, two
/// idle in the pools) and one per tunnel; with a disk tier, a file per
/// worker; and a few for listeners, logs and background fetches.
pub fn connection_files(config: &ServeConfig) -> u64 {
    const SPARE: u64 = 256;
    let workers = config.workers.get() as u64;
    let disk = if config.cache_dir.is_some() {
        workers
    } else {
        0
    };
    config.max_connections as u64 + 3 * workers + config.max_tunnels as u64 + disk + SPARE
}

/// Raises the open-files limit to fit the connections
/// ([`connection_files`], and at least two per client, as a thread per
/// client and origin would hold) and `extra` more (the cache's memory
/// files), as far as the hard limit allows, fits the connection limits to
/// it (see [`fit_connections`]), and returns it.
///
/// # Errors
/// `FileLimit` when the clients' own sockets would not fit.
pub fn raise_file_limit(config: &mut ServeConfig, extra: usize) -> Result<u64, StartError> {
    let needed = connection_files(config);
    let wanted = needed.max(config.max_connections as u64 * 2 + 64) + extra as u64;
    let limit = rlimit::increase_nofile_limit(wanted)?;
    fit_connections(config, limit)?;
    Ok(limit)
}

/// Fewest client connections the default is lowered to; below that the
/// start fails instead.
const FEWEST_FITTED: usize = 64;

/// Fits the connection limits to the open-files limit `limit`. The
/// default `max_connections` (10,000) is lowered to what fits, with a
/// warning, as nginx and Squid start with fewer descriptors than they were
/// configured for: a machine whose hard limit is 4,096 is common, and the
/// proxy should start there as it is. A `max_connections` given that
/// leaves no room for one descriptor per client is refused, and one that
/// leaves too little for their origins too is warned of.
///
/// # Errors
/// `FileLimit` when the clients' own sockets would not fit.
pub fn fit_connections(config: &mut ServeConfig, limit: u64) -> Result<(), StartError> {
    let needed = connection_files(config);
    if limit >= needed {
        return Ok(());
    }
    let max_connections = config.max_connections;
    let fits = connections_that_fit(config, limit);
    let raise = "raise the hard limit (LimitNOFILE= under systemd, `ulimit -Hn` as root)";
    if max_connections == ServeConfig::default().max_connections && fits >= FEWEST_FITTED {
        log::warn!(
            "open-files limit {limit} leaves room for {fits} client connections: max_connections \
             lowered from {max_connections} to {fits}; to serve more, {raise}"
        );
        config.max_connections = fits;
        config.max_tunnels = config.max_tunnels.min(fits);
        config.max_conns_per_client = config.max_conns_per_client.min(fits);
        return Ok(());
    }
    // The clients' own sockets, and a few for listeners and logs; and
    // a default that would leave too few.
    if limit < max_connections as u64 + 64 || fits < FEWEST_FITTED {
        let workers = config.workers;
        let advice = if fits >= FEWEST_FITTED {
            format!(
                "{fits} fit with their origin connections beside {workers} workers; give \
                 --max-connections {fits} (or max_connections in the config file)"
            )
        } else {
            format!("{workers} workers hold 3 upstream connections each; give fewer --workers")
        };
        return Err(StartError::FileLimit {
            limit,
            max_connections,
            advice,
        });
    }
    log::warn!(
        "open-files limit {limit} covers fewer than max_connections = {max_connections} proxied \
         connections (each holds one to its origin too): {fits} fit; give --max-connections \
         {fits}, or {raise}"
    );
    Ok(())
}

/// The most client connections `limit` descriptors hold, beside the rest
/// [`connection_files`] counts, tunnels being at most as many as clients.
fn connections_that_fit(config: &ServeConfig, limit: u64) -> usize {
    let tunnels = config.max_tunnels as u64;
    let rest = connection_files(config) - config.max_connections as u64 - tunnels;
    let room = limit.saturating_sub(rest);
    let fits = if room >= 2 * tunnels {
        room - tunnels
    } else {
        room / 2
    };
    usize::try_from(fits).unwrap_or(usize::MAX)
}

/// Sets what every client socket needs: no Nagle delay, and the timeouts
/// that bound a worker's blocking reads (`read`) and writes (`write`).
/// Set on a listener, the options are inherited by the sockets it accepts
/// (Linux copies them at accept), which spares three calls per connection.
///
/// # Errors
/// When the OS refuses an option.
pub fn set_client_options(socket: impl AsFd, read: Duration, write: Duration) -> io::Result<()> {
    use rustix::net::sockopt::{self, Timeout};
    sockopt::set_tcp_nodelay(&socket, true)?;
    sockopt::set_socket_timeout(&socket, Timeout::Recv, Some(read))?;
    sockopt::set_socket_timeout(&socket, Timeout::Send, Some(write))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        use rustix::net::sockopt::{self, Timeout};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (read, write) = (Duration::from_secs(15), Duration::from_secs(60));
        set_client_options(&listener, read, write).expect("options");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(sockopt::tcp_nodelay(&accepted).expect("nodelay"));
        assert_eq!(
            sockopt::socket_timeout(&accepted, Timeout::Recv).expect("rcvtimeo"),
            Some(read)
        );
        assert_eq!(
            sockopt::socket_timeout(&accepted, Timeout::Send).expect("sndtimeo"),
            Some(write)
        );
    }

    #[test]
    fn a_port_another_process_holds_is_named_with_what_to_do() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let config = ServeConfig {
            listen: vec![holder.local_addr().expect("addr")],
            ..ServeConfig::default()
        };
        let err = bind(&config).expect_err("the port is held");
        let text = err.to_string();
        assert!(text.starts_with("cannot listen on 127.0.0.1:"), "{text}");
        assert!(text.contains("another process holds it"), "{text}");
        assert!(text.contains("--listen"), "{text}");
    }

    /// The default configuration's workers (512) and tunnels (1,000) hold
    /// 3 x 512 + 1,000 + 256 spare = 2,792 descriptors beside the clients.
    #[test]
    fn the_default_max_connections_is_fitted_to_a_low_limit() {
        let mut config = ServeConfig::default();
        assert_eq!(connection_files(&config), 10_000 + 2_792);
        fit_connections(&mut config, 4_096).expect("fitted");
        assert_eq!(config.max_connections, 4_096 - 2_792);
        assert_eq!(config.max_tunnels, 1_000);
        assert_eq!(config.max_conns_per_client, 4_096 - 2_792);
        assert!(connection_files(&config) <= 4_096);

        let mut config = ServeConfig::default();
        fit_connections(&mut config, 20_000).expect("room enough");
        assert_eq!(config.max_connections, 10_000);
        // Fewer clients than tunnels: as many tunnels as clients.
        let mut config = ServeConfig::default();
        fit_connections(&mut config, 2_048).expect("fitted");
        assert_eq!((config.max_connections, config.max_tunnels), (128, 128));
        assert_eq!(connection_files(&config), 2_048);
        // Too few for even a few dozen clients beside the workers: refused,
        // with the workers named.
        let mut config = ServeConfig::default();
        let text = fit_connections(&mut config, 1_900)
            .expect_err("54 clients are too few")
            .to_string();
        assert!(text.contains("give fewer --workers"), "{text}");
    }

    #[test]
    fn a_max_connections_given_is_kept_or_refused_with_what_fits() {
        let mut config = ServeConfig {
            max_connections: 5_000,
            ..ServeConfig::default()
        };
        let err = fit_connections(&mut config, 4_096).expect_err("5,000 do not fit");
        let text = err.to_string();
        assert!(
            text.contains("1304 fit with their origin connections"),
            "{text}"
        );
        assert!(text.contains("--max-connections 1304"), "{text}");
        assert!(text.contains("LimitNOFILE="), "{text}");
        assert_eq!(config.max_connections, 5_000);
        // The clients' sockets fit, their origins' not all: kept, warned of.
        let mut config = ServeConfig {
            max_connections: 3_000,
            ..ServeConfig::default()
        };
        fit_connections(&mut config, 4_096).expect("kept");
        assert_eq!(config.max_connections, 3_000);
    }
}
