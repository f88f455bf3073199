//! The acceptor: one thread, one mio readiness loop, in the manner of Apache
//! httpd's event MPM. It accepts, checks the client, reads request heads
//! without blocking, and queues a connection only once a whole head is in.
//! It parks idle keep-alive connections that workers hand back and enforces
//! `header_timeout` and `idle_timeout`. It never blocks on a worker and never
//! reads a body: a full queue is answered 503 at once.
//!
//! Here: the loop, accepting, reading heads, and the hand-off to and from
//! workers. `answers` holds the replies it writes itself; `deadlines` the
//! timeouts and the start of draining.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use rustix::net::RecvFlags;
use slab::Slab;

use crate::access;
use crate::config::ServeConfig;
use crate::error::ProxyError;
use crate::http::request::{self, HeadLimits, Parsed, RequestHead};
use crate::metrics::Metrics;
use crate::rules::SharedRules;
use crate::server::conn::ClientConn;
use crate::server::handback::{Handback, Return, Signals};
use crate::server::job::{Job, JobQueue};
use crate::server::limits::ConnLimits;
#[cfg(not(target_os = "linux"))]
use crate::server::listen::set_client_options;
use crate::server::request_id::RequestIds;
use crate::shutdown::Shutdown;
use answers::send_now;
use deadlines::{drain_input, within_grace};

mod answers;
mod deadlines;

/// The token of the waker; listeners use 0..L, connections L.. .
pub const WAKER: Token = Token(usize::MAX);

/// How often deadlines are checked at most.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a socket in one go while a head arrives.
const SCRATCH_BYTES: usize = 16 * 1024;

/// What a parked connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head (some bytes may have arrived): `header_timeout` runs.
    Head,
    /// The next request on a keep-alive connection: `idle_timeout` runs.
    Idle,
    /// Answered and closing: what the client still sends is read and
    /// dropped for a moment (lingering close, see `handback`).
    Linger,
}

/// How long a closing connection's input is drained (lingering close).
const LINGER: Duration = Duration::from_secs(1);

/// A connection's place in the loop. Its socket stays registered for its
/// whole life, so handing it to a worker and back costs no system call.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // most places are Parked; boxing would allocate on every park
enum Entry {
    /// Here, waiting for input.
    Parked {
        conn: ClientConn,
        phase: Phase,
        deadline: Instant,
    },
    /// With a worker; `input` records input that arrived meanwhile (the
    /// socket is edge-triggered, so that news would be lost otherwise). The
    /// flag is shared with the connection, so that its worker knows whether
    /// handing it back must wake the acceptor. Its `hangup` is told when the
    /// client's input ends meanwhile.
    Busy { signals: Arc<Signals> },
}

/// The acceptor's state; `run` is its thread's body.
pub struct Acceptor {
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// The listeners' addresses, by index.
    listen_addrs: Vec<SocketAddr>,
    /// Token of the first connection: one past the listeners' tokens.
    conn_base: usize,
    entries: Slab<Entry>,
    jobs: JobQueue,
    returns: Receiver<Return<ClientConn>>,
    handback: Handback<ClientConn>,
    registry: Arc<Registry>,
    shutdown: Arc<Shutdown>,
    config: Arc<ServeConfig>,
    rules: SharedRules,
    limits: Arc<ConnLimits>,
    ids: Arc<RequestIds>,
    metrics: Arc<Metrics>,
    scratch: Box<[u8]>,
    /// An accept failed (e.g. out of file descriptors): retry on the next tick.
    accept_stalled: bool,
    draining: bool,
    /// Once draining: when the grace period ends; heads still arriving then are cut.
    grace_end: Option<Instant>,
    /// Whether a head still arriving was cut at the end of the grace period.
    cut_short: bool,
}

impl Acceptor {
    /// Sets up the readiness loop over `listeners`.
    ///
    /// # Errors
    /// When a listener cannot be registered.
    #[allow(clippy::too_many_arguments)] // wiring: each part is a distinct shared handle
    pub fn new(
        poll: Poll,
        listeners: Vec<TcpListener>,
        jobs: JobQueue,
        handback: (Handback<ClientConn>, Receiver<Return<ClientConn>>),
        shutdown: Arc<Shutdown>,
        config: Arc<ServeConfig>,
        rules: SharedRules,
        limits: Arc<ConnLimits>,
        ids: Arc<RequestIds>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Acceptor> {
        for (index, listener) in listeners.iter().enumerate() {
            listener.set_nonblocking(true)?;
            let fd = listener.as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&fd), Token(index), Interest::READABLE)?;
        }
        let (handback, returns) = handback;
        let listen_addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        let registry = Arc::new(poll.registry().try_clone()?);
        Ok(Acceptor {
            poll,
            conn_base: listeners.len(),
            listeners,
            listen_addrs,
            entries: Slab::new(),
            jobs,
            returns,
            handback,
            registry,
            shutdown,
            config,
            rules,
            limits,
            ids,
            metrics,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            accept_stalled: false,
            draining: false,
            grace_end: None,
            cut_short: false,
        })
    }

    /// Runs until shutdown: returns once draining and no head is in progress,
    /// or at once on stop-now. Dropping `self` drops the job `Sender`, which
    /// ends the workers' loops once the queue is empty. Returns whether a
    /// request head still arriving had to be cut at the end of the grace period.
    pub fn run(mut self) -> bool {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            if self.shutdown.is_stopping_now() {
                break;
            }
            if self.shutdown.is_draining() && !self.draining {
                self.start_draining();
            }
            if self.draining && !self.has_connections() {
                break;
            }
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            let (woken, look_again) = self.jobs.nudge(now);
            if woken > 0 {
                self.metrics.workers_woken_late(woken);
            }
            if let Some(look_again) = look_again {
                timeout = timeout.min(look_again);
            }
            if let Err(err) = self.poll.poll(&mut events, Some(timeout))
                && err.kind() != io::ErrorKind::Interrupted
            {
                log::error!("acceptor poll failed: {err}");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_returns(),
                    Token(index) if index < self.conn_base => self.accept(index),
                    Token(token) => self.on_event(
                        token - self.conn_base,
                        event.is_read_closed() || event.is_error(),
                    ),
                }
            }
            // Wake-ups coalesce; connections handed back may be waiting.
            self.take_returns();
            if Instant::now() >= next_tick {
                self.expire(Instant::now());
                if std::mem::take(&mut self.accept_stalled) {
                    for index in 0..self.listeners.len() {
                        self.accept(index);
                    }
                }
                next_tick = Instant::now() + TICK;
            }
        }
        log::debug!("acceptor stopped");
        self.cut_short
    }

    /// Accepts every pending connection on listener `index`.
    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            // std's accept gives a blocking socket, which is what workers
            // want; the acceptor itself only ever uses non-blocking calls.
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // EMFILE and friends: keep serving, and try again on the
                    // next tick (the listener will not signal again for the
                    // connections already waiting).
                    log::warn!("accept failed: {err}");
                    self.accept_stalled = true;
                    return;
                }
            };
            let ip = peer.ip().to_canonical();
            if !access::allows_client(ip, &self.rules.current().allow_clients) {
                self.refuse(&stream, peer, ProxyError::ClientDenied { addr: ip });
                continue;
            }
            let slot = match self.limits.admit(ip) {
                Ok(slot) => slot,
                Err(err) => {
                    self.refuse(&stream, peer, err);
                    continue;
                }
            };
            // Workers use blocking I/O, always bounded by the timeouts that
            // `server::start` set on the listener and Linux copied at accept.
            #[cfg(not(target_os = "linux"))]
            if set_client_options(
                &stream,
                self.config.idle_timeout,
                self.config.upstream_timeout,
            )
            .is_err()
            {
                continue;
            }
            let conn = ClientConn::new(stream, peer, self.listen_addrs[index], slot);
            self.register(conn);
        }
    }

    /// Registers a new connection with the loop for its whole life.
    fn register(&mut self, mut conn: ClientConn) {
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        let fd = conn.stream.as_raw_fd();
        let token = Token(key + self.conn_base);
        if let Err(err) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            log::warn!("cannot register {}: {err}", conn.peer);
            return;
        }
        self.metrics.connection_accepted();
        conn.set_registration(self.handback.register(key, fd, self.registry.clone()));
        let deadline = Instant::now() + self.config.header_timeout;
        entry.insert(Entry::Parked {
            conn,
            phase: Phase::Head,
            deadline,
        });
    }

    /// Takes what workers reported: connections to park, places to free.
    fn take_returns(&mut self) {
        self.handback.rearm();
        while let Ok(message) = self.returns.try_recv() {
            match message {
                Return::Closed(key) => {
                    self.entries.try_remove(key);
                }
                Return::Park(conn) => self.park(conn),
                Return::Linger(conn) => self.linger(conn),
            }
        }
    }

    /// Parks a keep-alive connection a worker gave back.
    fn park(&mut self, mut conn: ClientConn) {
        let Some(key) = conn.registration_key() else {
            return;
        };
        let ready = match self.entries.get(key) {
            Some(Entry::Busy { signals }) => signals.input.swap(false, Ordering::SeqCst),
            _ => {
                log::error!(
                    "connection {} handed back to a place it does not own",
                    conn.peer
                );
                conn.disarm_registration();
                return;
            }
        };
        // While draining too: the client may be sending its next request
        // right now, so the connection waits for it (answered with
        // `Connection: close`) or for its idle deadline, never cut here.
        let (phase, deadline) = if conn.pending().is_empty() {
            (Phase::Idle, self.deadline_after(self.config.idle_timeout))
        } else {
            (Phase::Head, self.deadline_after(self.config.header_timeout))
        };
        self.entries[key] = Entry::Parked {
            conn,
            phase,
            deadline,
        };
        if ready {
            self.on_event(key, false);
        }
    }

    /// A readiness event for the connection at `key`; `ended` when it
    /// reported the end of the client's input, or an error.
    fn on_event(&mut self, key: usize, ended: bool) {
        match self.entries.get_mut(key) {
            Some(Entry::Busy { signals }) => {
                signals.input.store(true, Ordering::SeqCst);
                // Taking the returns follows in this turn of the loop.
                fence(Ordering::SeqCst);
                if ended {
                    signals.hangup.client_input_ended();
                }
            }
            Some(Entry::Parked { .. }) => self.on_readable(key),
            None => {}
        }
    }

    /// Reads what a parked connection sent; queues it once a head is complete.
    fn on_readable(&mut self, key: usize) {
        let limit = self.config.max_header_bytes;
        let Some(Entry::Parked {
            conn,
            phase,
            deadline,
        }) = self.entries.get_mut(key)
        else {
            return;
        };
        if *phase == Phase::Linger {
            if drain_input(&conn.stream, &mut self.scratch) {
                self.close(key);
            }
            return;
        }
        let before = conn.pending().len();
        let mut closed = false;
        loop {
            let room = (limit + 1).saturating_sub(conn.pending().len());
            if room == 0 {
                break;
            }
            let want = room.min(self.scratch.len());
            match rustix::net::recv(&conn.stream, &mut self.scratch[..want], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    closed = true;
                    break;
                }
                Ok((n, _)) => {
                    conn.push_received(&self.scratch[..n]);
                    if n < want {
                        // A short read: the socket is very likely drained.
                        // If not, the complete head is queued anyway, or the
                        // next read below the head limit finds the rest.
                        if head_may_be_complete(conn.pending()) {
                            break;
                        }
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if conn.pending().is_empty() {
            if closed {
                self.close(key);
            }
            return;
        }
        if *phase == Phase::Idle {
            *phase = Phase::Head;
            *deadline = within_grace(Instant::now() + self.config.header_timeout, self.grace_end);
        }
        if !closed && !worth_parsing(conn.pending(), before, limit) {
            return;
        }
        let limits = HeadLimits {
            max_header_bytes: self.config.max_header_bytes,
            max_url_bytes: self.config.max_url_bytes,
        };
        match request::parse_head(conn.pending(), &limits) {
            Ok(Parsed::Partial) if closed => {
                // The client gave up mid-head; nobody is left to answer.
                self.close(key);
            }
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete { head, head_len }) => {
                if let Some(mut conn) = self.take_for_worker(key) {
                    conn.consume_pending(head_len);
                    self.dispatch(conn, Ok(head));
                }
            }
            Err(err) => {
                if let Some(conn) = self.take_for_worker(key) {
                    self.dispatch(conn, Err(err));
                }
            }
        }
    }

    /// Takes a parked connection out to hand it to a worker; its place stays
    /// reserved (`Busy`) until the worker parks it again or drops it.
    fn take_for_worker(&mut self, key: usize) -> Option<ClientConn> {
        let entry = self.entries.get_mut(key)?;
        let Entry::Parked { conn, .. } = entry else {
            return None;
        };
        // Without a shared flag (never the case for a registered
        // connection) its worker wakes the acceptor every time.
        let signals = conn.signals().unwrap_or_default();
        signals.input.store(false, Ordering::SeqCst);
        match std::mem::replace(entry, Entry::Busy { signals }) {
            Entry::Parked { conn, .. } => Some(conn),
            Entry::Busy { .. } => None,
        }
    }

    /// Closes a parked connection (dropping the socket also unregisters it).
    fn close(&mut self, key: usize) -> Option<ClientConn> {
        if !matches!(self.entries.get(key), Some(Entry::Parked { .. })) {
            return None;
        }
        match self.entries.remove(key) {
            Entry::Parked { mut conn, .. } => {
                conn.disarm_registration();
                Some(conn)
            }
            Entry::Busy { .. } => None,
        }
    }

    /// Queues a connection for a worker, or answers 503 at once if the queue is full.
    /// A health check that would wait behind others is answered at once:
    /// a load balancer must not take a busy proxy for a dead one.
    fn dispatch(&mut self, mut conn: ClientConn, head: Result<RequestHead, ProxyError>) {
        let now = Instant::now();
        conn.set_head_at(now);
        if let Ok(head) = &head
            && answers::is_health_check(head)
            && self.jobs.len() > 0
        {
            self.answer_health_check(conn, head, now);
            return;
        }
        let job = Job {
            conn,
            head,
            queued_at: now,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                log::warn!("queue full ({} waiting): answering 503", self.jobs.len());
                self.answer_directly(job, ProxyError::QueueFull);
            }
            Err(TrySendError::Disconnected(job)) => {
                self.answer_directly(job, ProxyError::ShuttingDown);
            }
        }
    }
}

/// Whether the head so far, `pending`, of which the first `before` bytes
/// were parsed already, could get a new verdict: while the request line
/// arrives (it is judged as it comes), when a line ended, or at the head
/// limit. Parsing it again for anything else would let a client that
/// trickles its head a byte at a time make the one acceptor thread parse
/// the whole of it for every byte, a cost quadratic in the head's length;
/// this way a head is parsed about once a line (and at most 128 lines).
fn worth_parsing(pending: &[u8], before: usize, limit: usize) -> bool {
    let (old, new) = pending.split_at(before.min(pending.len()));
    !request::request_line_ended(old)
        || memchr::memchr(b'\n', new).is_some()
        || pending.len() >= limit
}

/// Whether the bytes end with the blank line that ends a head; a cheap
/// test to stop reading, not a parse.
fn head_may_be_complete(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\r\n\r\n") || bytes.ends_with(b"\n\n")
}

#[cfg(test)]
mod tests {
    use super::worth_parsing;

    #[test]
    fn a_head_is_parsed_again_only_when_its_verdict_can_change() {
        let limit = 64;
        // The request line is judged as it arrives.
        assert!(worth_parsing(b"GET http://h/", 5, limit));
        // Once it ended, only a new line end or the limit count.
        let head = b"GET http://h/ HTTP/1.1\r\nX-Pad: aaaa";
        assert!(!worth_parsing(head, head.len() - 2, limit));
        let ended = b"GET http://h/ HTTP/1.1\r\nX-Pad: aaaa\r\n";
        assert!(worth_parsing(ended, ended.len() - 1, limit));
        assert!(
            worth_parsing(ended, 10, limit),
            "the line ended in this read"
        );
        let full = [b'a'; 64];
        let mut at_limit = b"GET http://h/ HTTP/1.1\r\n".to_vec();
        at_limit.extend_from_slice(&full[..limit - at_limit.len()]);
        assert!(worth_parsing(&at_limit, at_limit.len() - 1, limit));
        // Empty lines before the request line (RFC 9112 §2.2) do not end it.
        let late = b"\r\n\r\nGET http://h/aaaa";
        assert!(worth_parsing(late, late.len() - 1, limit));
    }
}
