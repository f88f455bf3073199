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
        "open-files limit {limit} is too low for max_connections = {max_connections}; raise it (ulimit -n) or lower max_connections"
    )]
    FileLimit { limit: u64, max_connections: usize },
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
/// files), as far as the hard limit allows, and returns it.
///
/// # Errors
/// `FileLimit` when even `max_connections` client sockets would not fit.
pub fn raise_file_limit(config: &ServeConfig, extra: usize) -> Result<u64, StartError> {
    let spare = 64;
    let max_connections = config.max_connections;
    let needed = connection_files(config);
    let wanted = needed.max(max_connections as u64 * 2 + spare) + extra as u64;
    let limit = rlimit::increase_nofile_limit(wanted)?;
    if limit < max_connections as u64 + spare {
        return Err(StartError::FileLimit {
            limit,
            max_connections,
        });
    }
    if limit < needed {
        log::warn!(
            "open-files limit {limit} covers fewer than {max_connections} proxied connections"
        );
    }
    Ok(limit)
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
}
