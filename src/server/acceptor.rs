//! The acceptor: one thread, one mio readiness loop, in the manner of Apache
//! httpd's event MPM. It accepts, checks the client, reads request heads
//! without blocking, and queues a connection only once a whole head is in.
//! It parks idle keep-alive connections that workers hand back and enforces
//! `header_timeout` and `idle_timeout`. It never blocks on a worker and never
//! reads a body: a full queue is answered 503 at once.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use rustix::net::{RecvFlags, SendFlags};
use slab::Slab;

use crate::access;
use crate::config::ServeConfig;
use crate::error::ProxyError;
use crate::http::request::{self, HeadLimits, Parsed, RequestHead};
use crate::http::response;
use crate::logging::AccessRecord;
use crate::metrics::Metrics;
use crate::rules::SharedRules;
#[cfg(not(target_os = "linux"))]
use crate::server::conn::set_client_options;
use crate::server::conn::{ClientConn, ConnLimits, Registration, Return};
use crate::server::handback::Handback;
use crate::server::request_id::RequestIds;
use crate::shutdown::Shutdown;

/// The token of the waker; listeners use 0..L, connections L.. .
pub const WAKER: Token = Token(usize::MAX);

/// How often deadlines are checked at most.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a socket in one go while a head arrives.
const SCRATCH_BYTES: usize = 16 * 1024;

/// A connection with a complete (or failed) request head, for a worker.
#[derive(Debug)]
pub struct Job {
    pub conn: ClientConn,
    /// The parsed head (already consumed from `conn`), or why it failed.
    pub head: Result<RequestHead, ProxyError>,
    /// When the head was complete.
    pub queued_at: Instant,
}

/// What a parked connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head (some bytes may have arrived): `header_timeout` runs.
    Head,
    /// The next request on a keep-alive connection: `idle_timeout` runs.
    Idle,
    /// Answered and closing: what the client still sends is read and
    /// dropped for a moment, so that closing with unread bytes does not
    /// reset the connection before the client has read the answer.
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
    /// handing it back must wake the acceptor.
    Busy { input: Arc<AtomicBool> },
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
    jobs: Sender<Job>,
    returns: Receiver<Return>,
    handback: Handback,
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
        jobs: Sender<Job>,
        handback: (Handback, Receiver<Return>),
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
            if self.draining && !self.has_parked() {
                break;
            }
            let timeout = next_tick.saturating_duration_since(Instant::now());
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
                    Token(token) => self.on_event(token - self.conn_base),
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
            self.metrics.connection_accepted();
            let conn = ClientConn::new(stream, peer, self.listen_addrs[index], slot);
            self.register(conn);
        }
    }

    /// Answers a connection the proxy will not serve, and closes it.
    fn refuse(&self, stream: &TcpStream, peer: SocketAddr, err: ProxyError) {
        log::debug!("refusing {peer}: {err}");
        let request_id = self.ids.fresh();
        let answer = response::error_response(&err, &request_id, true, false);
        send_now(stream, &answer);
        super::finished(
            &self.metrics,
            &AccessRecord {
                client: peer,
                method: "-",
                url: "-",
                status: err.status(),
                bytes: 0,
                duration: Duration::ZERO,
                request_id: &request_id,
                error: Some(err.proxy_status()),
            },
        );
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
        conn.set_registration(Registration::new(
            key,
            self.handback.clone(),
            self.registry.clone(),
        ));
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
            }
        }
    }

    /// Parks a keep-alive connection a worker gave back.
    fn park(&mut self, mut conn: ClientConn) {
        let Some(key) = conn.registration_key() else {
            return;
        };
        let ready = match self.entries.get(key) {
            Some(Entry::Busy { input }) => input.swap(false, Ordering::SeqCst),
            _ => {
                log::error!(
                    "connection {} handed back to a place it does not own",
                    conn.peer
                );
                conn.disarm_registration();
                return;
            }
        };
        if self.draining {
            // Serve a next request that is already here; close otherwise.
            let deadline = self.grace_end.unwrap_or_else(Instant::now);
            self.entries[key] = Entry::Parked {
                conn,
                phase: Phase::Idle,
                deadline,
            };
            self.on_readable(key);
            if let Some(Entry::Parked { conn, .. }) = self.entries.get(key)
                && conn.pending().is_empty()
            {
                self.close(key);
            }
            return;
        }
        let now = Instant::now();
        let (phase, deadline) = if conn.pending().is_empty() {
            (Phase::Idle, now + self.config.idle_timeout)
        } else {
            (Phase::Head, now + self.config.header_timeout)
        };
        self.entries[key] = Entry::Parked {
            conn,
            phase,
            deadline,
        };
        if ready {
            self.on_event(key);
        }
    }

    /// A readiness event for the connection at `key`.
    fn on_event(&mut self, key: usize) {
        match self.entries.get_mut(key) {
            Some(Entry::Busy { input }) => {
                input.store(true, Ordering::SeqCst);
                // Taking the returns follows in this turn of the loop.
                fence(Ordering::SeqCst);
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
            *deadline = Instant::now() + self.config.header_timeout;
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
        let input = conn.input_flag().unwrap_or_default();
        input.store(false, Ordering::SeqCst);
        match std::mem::replace(entry, Entry::Busy { input }) {
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
    fn dispatch(&mut self, conn: ClientConn, head: Result<RequestHead, ProxyError>) {
        let job = Job {
            conn,
            head,
            queued_at: Instant::now(),
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

    /// Answers a queued-to-be job with `err` from this thread and closes it.
    fn answer_directly(&mut self, job: Job, err: ProxyError) {
        let Job {
            mut conn,
            head,
            queued_at,
        } = job;
        // The acceptor closes it: free its place here, not by message.
        if let Some(key) = conn.registration_key() {
            self.entries.try_remove(key);
        }
        conn.disarm_registration();
        let (method, url, request_id) = match &head {
            Ok(head) => (
                head.method.as_str(),
                head.target.as_str(),
                self.ids.for_request(head),
            ),
            Err(_) => ("-", "-", self.ids.fresh()),
        };
        let head_only = method == "HEAD";
        let answer = response::error_response(&err, &request_id, true, head_only);
        send_now(&conn.stream, &answer);
        super::finished(
            &self.metrics,
            &AccessRecord {
                client: conn.peer,
                method,
                url,
                status: err.status(),
                bytes: 0,
                duration: queued_at.elapsed(),
                request_id: &request_id,
                error: Some(err.proxy_status()),
            },
        );
    }

    /// Closes connections past their deadline: 408 for a head that started
    /// to arrive (503 when the grace period ended it), silently for one
    /// that sent nothing.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<(usize, bool)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Parked {
                    conn,
                    phase,
                    deadline,
                } if *deadline <= now => Some((
                    key,
                    *phase == Phase::Linger
                        || (*phase == Phase::Head && !conn.pending().is_empty()),
                )),
                _ => None,
            })
            .collect();
        let grace_over = self.grace_end.is_some_and(|end| now >= end);
        for (key, started) in expired {
            if !started {
                self.close(key);
                continue;
            }
            let Some(Entry::Parked {
                conn,
                phase,
                deadline,
            }) = self.entries.get_mut(key)
            else {
                continue;
            };
            if *phase == Phase::Linger {
                self.close(key);
                continue;
            }
            {
                // A head cut by the end of the grace period is a request cut short.
                self.cut_short |= grace_over;
                let err = if grace_over {
                    ProxyError::ShuttingDown
                } else {
                    ProxyError::HeadTimeout(self.config.header_timeout)
                };
                let request_id = self.ids.fresh();
                let answer = response::error_response(&err, &request_id, true, false);
                send_now(&conn.stream, &answer);
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                let unread = conn.pending().len();
                conn.consume_pending(unread);
                *phase = Phase::Linger;
                *deadline = now + LINGER;
                super::finished(
                    &self.metrics,
                    &AccessRecord {
                        client: conn.peer,
                        method: "-",
                        url: "-",
                        status: err.status(),
                        bytes: 0,
                        duration: self.config.header_timeout,
                        request_id: &request_id,
                        error: Some(err.proxy_status()),
                    },
                );
            }
        }
    }

    /// Closes the listeners and every connection that has not begun a request.
    fn start_draining(&mut self) {
        self.draining = true;
        // A head still arriving gets until the end of the grace period, not
        // a whole header_timeout: a slow client must not hold up the exit.
        let grace_end =
            self.shutdown.draining_since().unwrap_or_else(Instant::now) + self.config.grace;
        self.grace_end = Some(grace_end);
        for listener in &self.listeners {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
        }
        // Dropping the listeners closes them: new connections are refused.
        self.listeners.clear();
        // A request that already arrived, on a parked connection or one just
        // handed back, is served rather than dropped.
        self.take_returns();
        let parked: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Parked { .. }))
            .map(|(key, _)| key)
            .collect();
        for key in parked {
            self.on_readable(key);
        }
        let idle: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| match entry {
                Entry::Parked { conn, phase, .. } => {
                    *phase == Phase::Idle || conn.pending().is_empty()
                }
                Entry::Busy { .. } => false,
            })
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key);
        }
        for (_, entry) in self.entries.iter_mut() {
            if let Entry::Parked { deadline, .. } = entry {
                *deadline = (*deadline).min(grace_end);
            }
        }
        log::info!(
            "draining: listeners closed, {} request heads still arriving",
            self.entries.len()
        );
    }
}

impl Acceptor {
    /// Whether any connection is waiting here (the acceptor must stay to serve it).
    fn has_parked(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, entry)| matches!(entry, Entry::Parked { .. }))
    }
}

/// Whether the bytes end with the blank line that ends a head; a cheap
/// test to stop reading, not a parse.
fn head_may_be_complete(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\r\n\r\n") || bytes.ends_with(b"\n\n")
}

/// Reads and drops whatever the peer sent, without blocking; true once the
/// peer has closed (or the socket failed).
fn drain_input(stream: &TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match rustix::net::recv(stream, &mut *scratch, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
    }
}

/// Sends an answer without ever blocking: a peer that does not read it
/// does not get it.
fn send_now(stream: &TcpStream, bytes: &[u8]) {
    let _ = rustix::net::send(stream, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}
