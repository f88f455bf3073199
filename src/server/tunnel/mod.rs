//! CONNECT tunnels: the port rule and destination check, the connection to
//! the target, and the relay thread that copies bytes both ways for every
//! open tunnel in one readiness loop, so a tunnel never holds a worker.
//! No HTTP after the 200.

use std::io::{self, Read, Write};
use std::net::{Shutdown as Direction, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::access;
use crate::config::ServeConfig;
use crate::error::{ProxyError, TimeoutPhase};
use crate::logging::AccessRecord;
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::server::conn::ClientConn;
use crate::shutdown::Shutdown;
use crate::upstream;

/// Bytes buffered in each direction of a tunnel.
const PIPE_BYTES: usize = 16 * 1024;
/// While draining, a tunnel silent this long is closed.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const WAKER: Token = Token(usize::MAX);

/// Checks a CONNECT target against the rules and connects to it.
///
/// # Errors
/// `BadRequest` for a target that is not `host:port`, `PortDenied`,
/// `DnsFailed`, `DestinationDenied`, `ConnectionRefused`, `UpstreamTimeout`.
pub fn connect(target: &str, config: &ServeConfig, rules: &Rules) -> Result<TcpStream, ProxyError> {
    let (host, port) = split_authority(target)?;
    if !rules.connect_ports.contains(&port) {
        return Err(ProxyError::PortDenied { port });
    }
    let resolved = upstream::resolve(host, port)?;
    let allowed: Vec<_> = resolved
        .iter()
        .filter(|addr| access::allows_destination(addr.ip(), &rules.allow_dest))
        .collect();
    if allowed.is_empty() {
        return Err(ProxyError::DestinationDenied {
            addr: resolved[0].ip(),
        });
    }
    let mut last = None;
    for addr in allowed {
        match TcpStream::connect_timeout(addr, config.connect_timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(match last {
        Some(err) if err.kind() == io::ErrorKind::TimedOut => {
            ProxyError::UpstreamTimeout(TimeoutPhase::Connect)
        }
        Some(err) => upstream::map_io_error(err, target),
        None => ProxyError::ConnectFailed {
            authority: target.into(),
            reason: "no address".into(),
        },
    })
}

/// Splits `host:port` (`[v6]:port` too); the port is required (RFC 9110 §9.3.6).
fn split_authority(target: &str) -> Result<(&str, u16), ProxyError> {
    let bad = || ProxyError::BadRequest(format!("CONNECT target {target:?} is not host:port"));
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@']) {
        return Err(bad());
    }
    Ok((host, port))
}

/// Hands established tunnels to the relay thread.
#[derive(Debug, Clone)]
pub struct Relay {
    tx: Sender<Tunnel>,
    waker: Arc<Waker>,
    open: Arc<AtomicUsize>,
    max_tunnels: usize,
    metrics: Arc<Metrics>,
}

/// A place among `max_tunnels`; dropping it gives the place back.
#[derive(Debug)]
pub struct TunnelSlot(Arc<AtomicUsize>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Relay {
    /// Takes a place for a new tunnel.
    ///
    /// # Errors
    /// `TooManyConnections` when `max_tunnels` are open.
    pub fn admit(&self) -> Result<TunnelSlot, ProxyError> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.max_tunnels {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(ProxyError::TooManyConnections {
                what: "max_tunnels",
                limit: self.max_tunnels,
            });
        }
        Ok(TunnelSlot(self.open.clone()))
    }

    /// How many tunnels are open now.
    pub fn open_tunnels(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Starts relaying between `client` and `upstream`.
    pub fn start(
        &self,
        client: ClientConn,
        upstream: TcpStream,
        slot: TunnelSlot,
        target: &str,
        request_id: &str,
        started: Instant,
    ) {
        let mut client = client;
        // From here on the relay's loop watches this socket, not the acceptor's.
        client.detach();
        let tunnel = Tunnel {
            client,
            upstream,
            _slot: slot,
            target: target.to_string(),
            request_id: request_id.to_string(),
            started,
            last_active: Instant::now(),
            up: Pipe::new(),
            down: Pipe::new(),
        };
        match self.tx.send(tunnel) {
            Ok(()) => {
                let _ = self.waker.wake();
            }
            // The relay is gone (stop-now): the client got its 200, and
            // its tunnel ends here.
            Err(SendError(tunnel)) => tunnel.finish(&self.metrics, "proxy shutting down"),
        }
    }
}

/// Starts the `relay` thread.
///
/// # Errors
/// When the poll or the thread cannot be created.
pub fn spawn_relay(
    config: Arc<ServeConfig>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
) -> io::Result<(Relay, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let open = Arc::new(AtomicUsize::new(0));
    let relay = Relay {
        tx,
        waker,
        open: open.clone(),
        max_tunnels: config.max_tunnels,
        metrics: metrics.clone(),
    };
    let loop_state = RelayLoop {
        poll,
        tunnels: Slab::new(),
        incoming: rx,
        open,
        config,
        shutdown,
        metrics,
    };
    let handle = thread::Builder::new()
        .name("relay".into())
        .spawn(move || loop_state.run())?;
    Ok((relay, handle))
}

/// One direction of a tunnel: bytes read from one side, not yet written to the other.
#[derive(Debug)]
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reading side has ended.
    eof: bool,
    /// The end was passed on (write side shut down).
    closed: bool,
    total: u64,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; PIPE_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            closed: false,
            total: 0,
        }
    }

    /// Moves bytes from `src` to `dst` until one would block; true if any moved.
    fn pump(&mut self, src: &mut impl Read, dst: &mut TcpStream) -> io::Result<bool> {
        let mut moved = false;
        loop {
            while self.start < self.end {
                match dst.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.start += n;
                        self.total += n as u64;
                        moved = true;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            (self.start, self.end) = (0, 0);
            if self.eof {
                if !self.closed {
                    let _ = dst.shutdown(Direction::Write);
                    self.closed = true;
                }
                return Ok(moved);
            }
            match src.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end = n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
            moved = true;
        }
    }
}

/// An open tunnel.
#[derive(Debug)]
pub struct Tunnel {
    client: ClientConn,
    upstream: TcpStream,
    _slot: TunnelSlot,
    target: String,
    request_id: String,
    started: Instant,
    last_active: Instant,
    /// Client to upstream.
    up: Pipe,
    /// Upstream to client.
    down: Pipe,
}

impl Tunnel {
    /// Writes the tunnel's access-log line and counts it: once, when it ends.
    fn finish(&self, metrics: &Metrics, why: &str) {
        log::debug!("tunnel to {} closed: {why}", self.target);
        crate::server::finished(
            metrics,
            &AccessRecord {
                client: self.client.peer,
                method: "CONNECT",
                url: &self.target,
                status: 200,
                bytes: self.down.total,
                duration: self.started.elapsed(),
                request_id: &self.request_id,
                error: None,
            },
        );
    }

    /// Moves what can be moved both ways; Ok(false) once both ways are done.
    fn pump(&mut self) -> io::Result<bool> {
        // Bytes the client sent right after the CONNECT head go first.
        if !self.client.pending().is_empty() {
            let pending = self.client.pending().len();
            match self.upstream.write(self.client.pending()) {
                Ok(n) => {
                    self.client.consume_pending(n);
                    self.up.total += n as u64;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            if self.client.pending().len() == pending {
                return Ok(true);
            }
        }
        let up = self.up.pump(&mut self.client.stream, &mut self.upstream)?;
        let down = self
            .down
            .pump(&mut self.upstream, &mut self.client.stream)?;
        if up || down {
            self.last_active = Instant::now();
        }
        Ok(!(self.up.closed && self.down.closed))
    }
}

struct RelayLoop {
    poll: Poll,
    tunnels: Slab<Tunnel>,
    incoming: Receiver<Tunnel>,
    /// Tunnel places taken, counting those a worker is still connecting.
    open: Arc<AtomicUsize>,
    config: Arc<ServeConfig>,
    shutdown: Arc<Shutdown>,
    metrics: Arc<Metrics>,
}

impl RelayLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now();
        loop {
            // While draining, a worker may still be connecting a CONNECT
            // taken in before: its place is counted in `open`, so the relay
            // waits for it.
            if self.shutdown.is_stopping_now()
                || (self.shutdown.is_draining()
                    && self.open.load(Ordering::SeqCst) == 0
                    && self.incoming.is_empty())
            {
                break;
            }
            let timeout = next_tick
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            if let Err(err) = self.poll.poll(&mut events, Some(timeout))
                && err.kind() != io::ErrorKind::Interrupted
            {
                log::error!("relay poll failed: {err}");
                break;
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.pump(event.token().0 / 2);
                }
            }
            while let Ok(tunnel) = self.incoming.try_recv() {
                self.add(tunnel);
            }
            if Instant::now() >= next_tick {
                self.expire();
                next_tick = Instant::now() + Duration::from_millis(250);
            }
        }
        for key in self.tunnels.iter().map(|(key, _)| key).collect::<Vec<_>>() {
            self.close(key, "proxy shutting down");
        }
        while let Ok(tunnel) = self.incoming.try_recv() {
            tunnel.finish(&self.metrics, "proxy shutting down");
        }
    }

    fn add(&mut self, tunnel: Tunnel) {
        if let Err(err) = tunnel
            .client
            .stream
            .set_nonblocking(true)
            .and_then(|()| tunnel.upstream.set_nonblocking(true))
        {
            tunnel.finish(&self.metrics, &format!("cannot relay: {err}"));
            return;
        }
        let entry = self.tunnels.vacant_entry();
        let key = entry.key();
        let both = Interest::READABLE | Interest::WRITABLE;
        let registry = self.poll.registry();
        let client_fd = tunnel.client.stream.as_raw_fd();
        let upstream_fd = tunnel.upstream.as_raw_fd();
        if registry
            .register(&mut SourceFd(&client_fd), Token(key * 2), both)
            .is_err()
            || registry
                .register(&mut SourceFd(&upstream_fd), Token(key * 2 + 1), both)
                .is_err()
        {
            let _ = registry.deregister(&mut SourceFd(&client_fd));
            tunnel.finish(&self.metrics, "cannot relay: registration failed");
            return;
        }
        entry.insert(tunnel);
        self.pump(key);
    }

    fn pump(&mut self, key: usize) {
        let Some(tunnel) = self.tunnels.get_mut(key) else {
            return;
        };
        match tunnel.pump() {
            Ok(true) => {}
            Ok(false) => self.close(key, "both sides done"),
            Err(err) => self.close(key, &err.to_string()),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let limit = if self.shutdown.is_draining() {
            DRAIN_IDLE
        } else {
            self.config.tunnel_idle_timeout
        };
        let idle: Vec<usize> = self
            .tunnels
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_active) >= limit)
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key, "idle");
        }
    }

    fn close(&mut self, key: usize, why: &str) {
        let Some(tunnel) = self.tunnels.try_remove(key) else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&tunnel.client.stream.as_raw_fd()));
        let _ = registry.deregister(&mut SourceFd(&tunnel.upstream.as_raw_fd()));
        tunnel.finish(&self.metrics, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_need_host_and_port() {
        assert_eq!(
            split_authority("example.com:443").expect("valid"),
            ("example.com", 443)
        );
        assert_eq!(
            split_authority("[::1]:8443").expect("valid"),
            ("[::1]", 8443)
        );
        for bad in [
            "example.com",
            "example.com:",
            ":443",
            "example.com:0",
            "a:99999",
            "u@h:443",
        ] {
            assert!(split_authority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_refuses_ports_outside_connect_ports_before_any_lookup() {
        let config = ServeConfig::default();
        let rules = Rules::from_config(&config);
        let err = connect("127.0.0.1:25", &config, &rules).expect_err("port 25 is not allowed");
        assert_eq!(err.proxy_status(), "http_request_denied");
    }

    #[test]
    fn connect_refuses_non_global_destinations_without_connecting() {
        let config = ServeConfig::default();
        let rules = Rules::from_config(&config);
        for target in [
            "127.0.0.1:443",
            "127.1:443",
            "[::1]:443",
            "169.254.169.254:443",
            "10.1.2.3:443",
        ] {
            let err = connect(target, &config, &rules).expect_err(target);
            assert_eq!(err.proxy_status(), "destination_ip_prohibited", "{target}");
        }
    }
}
