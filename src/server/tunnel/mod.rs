//! CONNECT tunnels: the connection to the target (its addresses checked
//! by `upstream::resolve_allowed`; the port rule is the router's, in
//! `target`), and the relay thread that moves bytes both ways for every
//! open tunnel in one readiness loop, so a tunnel never holds a worker. The
//! moving itself is `crate::pump`, generic over its I/O. No HTTP after the
//! 200. Each tunnel's access-log line is written when it ends, with why.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::ServeConfig;
use crate::error::{ProxyError, TimeoutPhase};
use crate::metrics::Metrics;
use crate::pump::{Pump, Step, TunnelEnd};
use crate::rules::Rules;
use crate::server::conn::ClientConn;
use crate::server::finish::{self, Request, Served};
use crate::server::target::TunnelTarget;
use crate::shutdown::Shutdown;
use crate::upstream;

/// Bytes buffered in each direction of a tunnel.
const PIPE_BYTES: usize = 16 * 1024;
/// While draining, a tunnel silent this long is closed.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const WAKER: Token = Token(usize::MAX);

/// Connects to a CONNECT target, trying each allowed address in turn.
///
/// # Errors
/// `DnsFailed`, `DestinationDenied`, `ConnectionRefused`, `UpstreamTimeout`.
pub fn connect(
    target: &TunnelTarget,
    timeout: Duration,
    rules: &Rules,
) -> Result<TcpStream, ProxyError> {
    let authority = format!("{}:{}", target.host, target.port);
    let addrs = upstream::resolve_allowed(&target.host, target.port, rules)?;
    let last = match crate::transport::connect_within(addrs, Some(timeout)) {
        Ok(stream) => return Ok(stream),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => Some(err),
    };
    Err(match last {
        Some(err) if err.kind() == io::ErrorKind::TimedOut => {
            ProxyError::UpstreamTimeout(TimeoutPhase::Connect)
        }
        Some(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            ProxyError::ConnectionRefused { authority }
        }
        Some(err) => ProxyError::ConnectFailed {
            authority,
            reason: err.to_string(),
        },
        None => ProxyError::ConnectFailed {
            authority,
            reason: "no address".into(),
        },
    })
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
    /// `TunnelsOff` when `max_tunnels` is 0; `TooManyConnections` when
    /// `max_tunnels` are open.
    pub fn admit(&self) -> Result<TunnelSlot, ProxyError> {
        if self.max_tunnels == 0 {
            // Not a limit reached for now, which a client would retry.
            return Err(ProxyError::TunnelsOff);
        }
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

    /// Starts relaying between `client` and `upstream` for the CONNECT
    /// `request`, whose 200 went out.
    pub fn start(
        &self,
        mut client: ClientConn,
        upstream: TcpStream,
        slot: TunnelSlot,
        request: &Request<'_>,
    ) {
        // From here on the relay's loop watches this socket, not the acceptor's.
        client.detach();
        // Bytes the client sent right after the CONNECT head go first.
        let pump = Pump::new(PIPE_BYTES, client.pending());
        let early = client.pending().len();
        client.consume_pending(early);
        let tunnel = Tunnel {
            client,
            upstream,
            _slot: slot,
            target: request.url.to_string(),
            request_id: request.request_id.to_string(),
            started: request.started,
            user: request.user.map(str::to_string),
            last_active: Instant::now(),
            pump,
        };
        match self.tx.send(tunnel) {
            Ok(()) => {
                let _ = self.waker.wake();
            }
            // The relay is gone (stop-now): the client got its 200, and
            // its tunnel ends here.
            Err(SendError(tunnel)) => tunnel.finish(&self.metrics, TunnelEnd::ShuttingDown),
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
) -> io::Result<(Relay, JoinHandle<usize>)> {
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
    let handle = thread::Builder::new().name("relay".into()).spawn(move || {
        crate::server::sched::batch_this_thread();
        loop_state.run()
    })?;
    Ok((relay, handle))
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
    /// The user the credentials named, for the access log.
    user: Option<String>,
    last_active: Instant,
    pump: Pump,
}

impl Tunnel {
    /// Writes the tunnel's access-log line and counts it: once, when it ends.
    fn finish(&self, metrics: &Metrics, end: TunnelEnd) {
        log::debug!("tunnel to {} closed: {}", self.target, end.as_str());
        let request = Request {
            client: self.client.peer,
            method: "CONNECT",
            url: &self.target,
            request_id: &self.request_id,
            started: self.started,
            head: None,
            user: self.user.as_deref(),
        };
        let served = Served {
            status: 200,
            bytes: self.pump.bytes_down(),
            error: None,
            reusable: false,
            cache: None,
            own: false,
            cut: None,
            shown: None,
        };
        finish::record(
            metrics,
            &request,
            &served,
            Some((end, self.pump.bytes_up())),
        );
    }

    /// Moves what can be moved both ways; the ending once it is over.
    fn pump(&mut self) -> Option<TunnelEnd> {
        match self.pump.step(&mut self.client.stream, &mut self.upstream) {
            Step::Open { moved } => {
                if moved {
                    self.last_active = Instant::now();
                }
                None
            }
            Step::Ended(end) => Some(end),
        }
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
    /// Relays until the stop; returns how many tunnels the stop cut.
    fn run(mut self) -> usize {
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
        let mut cut = 0;
        for key in self.tunnels.iter().map(|(key, _)| key).collect::<Vec<_>>() {
            self.close(key, TunnelEnd::ShuttingDown);
            cut += 1;
        }
        while let Ok(tunnel) = self.incoming.try_recv() {
            tunnel.finish(&self.metrics, TunnelEnd::ShuttingDown);
            cut += 1;
        }
        // What is left open are tunnels a worker still holds: its 200 on
        // the way, or sent and the tunnel not handed over yet. The stop
        // cuts them too (the process ends), and the exit says so.
        cut + self.open.load(Ordering::SeqCst)
    }

    fn add(&mut self, tunnel: Tunnel) {
        if let Err(err) = tunnel
            .client
            .stream
            .set_nonblocking(true)
            .and_then(|()| tunnel.upstream.set_nonblocking(true))
        {
            log::warn!("cannot relay a tunnel to {}: {err}", tunnel.target);
            tunnel.finish(&self.metrics, TunnelEnd::NotRelayed);
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
            log::warn!(
                "cannot relay a tunnel to {}: registration failed",
                tunnel.target
            );
            tunnel.finish(&self.metrics, TunnelEnd::NotRelayed);
            return;
        }
        entry.insert(tunnel);
        self.pump(key);
    }

    fn pump(&mut self, key: usize) {
        let Some(tunnel) = self.tunnels.get_mut(key) else {
            return;
        };
        if let Some(end) = tunnel.pump() {
            self.close(key, end);
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
            self.close(key, TunnelEnd::Idle);
        }
    }

    fn close(&mut self, key: usize, end: TunnelEnd) {
        let Some(tunnel) = self.tunnels.try_remove(key) else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&tunnel.client.stream.as_raw_fd()));
        let _ = registry.deregister(&mut SourceFd(&tunnel.upstream.as_raw_fd()));
        tunnel.finish(&self.metrics, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_refuses_non_global_destinations_without_connecting() {
        let rules = Rules::from_config(&ServeConfig::default());
        for (host, port) in [
            ("127.0.0.1", 443),
            ("127.1", 443),
            ("[::1]", 443),
            ("169.254.169.254", 443),
            ("10.1.2.3", 443),
        ] {
            let target = TunnelTarget {
                host: host.into(),
                port,
            };
            let err = connect(&target, Duration::from_secs(1), &rules).expect_err(host);
            assert_eq!(err.proxy_status(), "destination_ip_prohibited", "{host}");
        }
    }
}
