//! The acceptor: one thread, one mio readiness loop, in the manner of Apache
//! httpd's event MPM. It accepts, checks the client, reads request heads
//! without blocking, and queues a connection only once a whole head is in.
//! It parks idle keep-alive connections that workers hand back and enforces
//! `header_timeout` and `idle_timeout`. It never blocks on a worker and never
//! reads a body: a full queue is answered 503 at once.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::access;
use crate::config::ServeConfig;
use crate::error::ProxyError;
use crate::http::request::{self, HeadLimits, Parsed, RequestHead};
use crate::http::response;
use crate::logging::{self, AccessRecord};
use crate::server::conn::{ClientConn, ConnLimits};
use crate::server::request_id::RequestIds;
use crate::shutdown::Shutdown;

/// The token of the waker; listeners use 0..L, connections L.. .
pub const WAKER: Token = Token(usize::MAX);

/// How often deadlines are checked at most.
const TICK: Duration = Duration::from_millis(100);
/// Bytes read from a socket in one go while a head arrives.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Write timeout for the answers the acceptor gives itself (503, 403, 408).
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection with a complete (or failed) request head, for a worker.
#[derive(Debug)]
pub struct Job {
    pub conn: ClientConn,
    /// The parsed head (already consumed from `conn`), or why it failed.
    pub head: Result<RequestHead, ProxyError>,
    /// When the head was complete.
    pub queued_at: Instant,
}

/// How workers give keep-alive connections back to the acceptor.
#[derive(Debug, Clone)]
pub struct Handback {
    tx: Sender<ClientConn>,
    waker: Arc<Waker>,
}

impl Handback {
    /// A handback channel to the acceptor woken by `waker`, and its receiving end.
    pub fn new(waker: Arc<Waker>) -> (Handback, Receiver<ClientConn>) {
        // Unbounded in type, bounded in fact: each connection is in it at
        // most once, and connections are capped by `max_connections`.
        let (tx, rx) = crossbeam_channel::unbounded();
        (Handback { tx, waker }, rx)
    }

    /// Parks `conn` with the acceptor until its next request arrives.
    pub fn give_back(&self, conn: ClientConn) {
        if self.tx.send(conn).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// What a parked connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head (some bytes may have arrived): `header_timeout` runs.
    Head,
    /// The next request on a keep-alive connection: `idle_timeout` runs.
    Idle,
}

#[derive(Debug)]
struct Entry {
    conn: ClientConn,
    phase: Phase,
    deadline: Instant,
}

/// The acceptor's state; `run` is its thread's body.
pub struct Acceptor {
    poll: Poll,
    listeners: Vec<mio::net::TcpListener>,
    /// Token of the first connection: one past the listeners' tokens.
    conn_base: usize,
    entries: Slab<Entry>,
    jobs: Sender<Job>,
    returns: Receiver<ClientConn>,
    shutdown: Arc<Shutdown>,
    config: Arc<ServeConfig>,
    limits: Arc<ConnLimits>,
    ids: Arc<RequestIds>,
    scratch: Box<[u8]>,
    draining: bool,
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
        returns: Receiver<ClientConn>,
        shutdown: Arc<Shutdown>,
        config: Arc<ServeConfig>,
        limits: Arc<ConnLimits>,
        ids: Arc<RequestIds>,
    ) -> io::Result<Acceptor> {
        let mut mio_listeners = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut listener = mio::net::TcpListener::from_std(listener);
            poll.registry()
                .register(&mut listener, Token(index), Interest::READABLE)?;
            mio_listeners.push(listener);
        }
        Ok(Acceptor {
            poll,
            conn_base: mio_listeners.len(),
            listeners: mio_listeners,
            entries: Slab::new(),
            jobs,
            returns,
            shutdown,
            config,
            limits,
            ids,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            draining: false,
        })
    }

    /// Runs until shutdown: returns once draining and no head is in progress,
    /// or at once on stop-now. Dropping `self` drops the job `Sender`, which
    /// ends the workers' loops once the queue is empty.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            if self.shutdown.is_stopping_now() {
                break;
            }
            if self.shutdown.is_draining() && !self.draining {
                self.start_draining();
            }
            if self.draining && self.entries.is_empty() {
                break;
            }
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(err) = self.poll.poll(&mut events, Some(timeout)) {
                if err.kind() != io::ErrorKind::Interrupted {
                    log::error!("acceptor poll failed: {err}");
                    break;
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_returns(),
                    Token(index) if index < self.conn_base => self.accept(index),
                    Token(token) => self.on_readable(token - self.conn_base),
                }
            }
            // Wake-ups coalesce; connections handed back may be waiting.
            self.take_returns();
            if Instant::now() >= next_tick {
                self.expire(Instant::now());
                next_tick = Instant::now() + TICK;
            }
        }
        log::debug!("acceptor stopped");
    }

    /// Accepts every pending connection on listener `index`.
    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // EMFILE and friends: give up for this round, keep serving.
                    log::warn!("accept failed: {err}");
                    return;
                }
            };
            let stream = std::net::TcpStream::from(stream);
            let ip = peer.ip().to_canonical();
            if !access::allows_client(ip, &self.config.allow_clients) {
                self.refuse(stream, peer, ProxyError::ClientDenied { addr: ip });
                continue;
            }
            let slot = match self.limits.admit(ip) {
                Ok(slot) => slot,
                Err(err) => {
                    self.refuse(stream, peer, err);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = ClientConn::new(stream, peer, slot);
            let deadline = Instant::now() + self.config.header_timeout;
            self.park(conn, Phase::Head, deadline);
        }
    }

    /// Answers a connection the proxy will not serve, and closes it.
    fn refuse(&self, stream: std::net::TcpStream, peer: std::net::SocketAddr, err: ProxyError) {
        log::debug!("refusing {peer}: {err}");
        let request_id = self.ids.fresh();
        let mut stream = stream;
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(ANSWER_WRITE_TIMEOUT));
        let answer = response::error_response(&err, &request_id, true, false);
        let _ = stream.write_all(&answer);
        logging::access(&AccessRecord {
            client: peer,
            method: "-",
            url: "-",
            status: err.status(),
            bytes: 0,
            duration: Duration::ZERO,
            request_id: &request_id,
            error: Some(err.proxy_status()),
        });
    }

    /// Registers `conn` with the loop to wait in `phase` until `deadline`.
    fn park(&mut self, conn: ClientConn, phase: Phase, deadline: Instant) {
        if let Err(err) = conn.stream.set_nonblocking(true) {
            log::debug!("cannot park {}: {err}", conn.peer);
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let entry = self.entries.vacant_entry();
        let token = Token(entry.key() + self.conn_base);
        if let Err(err) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            log::warn!("cannot register {}: {err}", conn.peer);
            return;
        }
        entry.insert(Entry {
            conn,
            phase,
            deadline,
        });
    }

    /// Takes the keep-alive connections workers handed back.
    fn take_returns(&mut self) {
        while let Ok(conn) = self.returns.try_recv() {
            if self.draining {
                continue; // dropped: closes it
            }
            let now = Instant::now();
            if conn.pending().is_empty() {
                self.park(conn, Phase::Idle, now + self.config.idle_timeout);
            } else {
                self.park(conn, Phase::Head, now + self.config.header_timeout);
            }
        }
    }

    /// Reads what a parked connection sent; queues it once a head is complete.
    fn on_readable(&mut self, key: usize) {
        let limit = self.config.max_header_bytes;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let mut closed = false;
        loop {
            let room = (limit + 1).saturating_sub(entry.conn.pending().len());
            if room == 0 {
                break;
            }
            let want = room.min(self.scratch.len());
            match entry.conn.stream.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => entry.conn.push_received(&self.scratch[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if entry.conn.pending().is_empty() {
            if closed {
                self.remove(key);
            }
            return;
        }
        if entry.phase == Phase::Idle {
            entry.phase = Phase::Head;
            entry.deadline = Instant::now() + self.config.header_timeout;
        }
        let limits = HeadLimits {
            max_header_bytes: self.config.max_header_bytes,
            max_url_bytes: self.config.max_url_bytes,
        };
        match request::parse_head(entry.conn.pending(), &limits) {
            Ok(Parsed::Partial) if closed => {
                // The client gave up mid-head; nobody is left to answer.
                self.remove(key);
            }
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete { head, head_len }) => {
                if let Some(mut conn) = self.remove(key) {
                    conn.consume_pending(head_len);
                    self.dispatch(conn, Ok(head));
                }
            }
            Err(err) => {
                if let Some(conn) = self.remove(key) {
                    self.dispatch(conn, Err(err));
                }
            }
        }
    }

    /// Unregisters a parked connection and gives it back to the caller.
    fn remove(&mut self, key: usize) -> Option<ClientConn> {
        let entry = self.entries.try_remove(key)?;
        let fd = entry.conn.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        Some(entry.conn)
    }

    /// Queues a connection for a worker, or answers 503 at once if the queue is full.
    fn dispatch(&mut self, conn: ClientConn, head: Result<RequestHead, ProxyError>) {
        // Workers use blocking I/O, always bounded by timeouts.
        if conn.stream.set_nonblocking(false).is_err()
            || conn
                .stream
                .set_read_timeout(Some(self.config.idle_timeout))
                .is_err()
            || conn
                .stream
                .set_write_timeout(Some(self.config.upstream_timeout))
                .is_err()
        {
            return;
        }
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
    fn answer_directly(&self, job: Job, err: ProxyError) {
        let Job {
            mut conn,
            head,
            queued_at,
        } = job;
        let (method, url, request_id) = match &head {
            Ok(head) => (
                head.method.as_str(),
                head.target.as_str(),
                self.ids.for_request(head),
            ),
            Err(_) => ("-", "-", self.ids.fresh()),
        };
        let head_only = method == "HEAD";
        let _ = conn.stream.set_write_timeout(Some(ANSWER_WRITE_TIMEOUT));
        let answer = response::error_response(&err, &request_id, true, head_only);
        let _ = conn.stream.write_all(&answer);
        logging::access(&AccessRecord {
            client: conn.peer,
            method,
            url,
            status: err.status(),
            bytes: 0,
            duration: queued_at.elapsed(),
            request_id: &request_id,
            error: Some(err.proxy_status()),
        });
    }

    /// Closes connections past their deadline: 408 for a head that started
    /// to arrive, silently for one that sent nothing.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            let Some(entry) = self.entries.get(key) else {
                continue;
            };
            let started = entry.phase == Phase::Head && !entry.conn.pending().is_empty();
            if let Some(mut conn) = self.remove(key) {
                if started {
                    let err = ProxyError::HeadTimeout(self.config.header_timeout);
                    let request_id = self.ids.fresh();
                    let answer = response::error_response(&err, &request_id, true, false);
                    // Non-blocking: a peer that does not read does not get it.
                    let _ = conn.stream.write(&answer);
                    logging::access(&AccessRecord {
                        client: conn.peer,
                        method: "-",
                        url: "-",
                        status: err.status(),
                        bytes: 0,
                        duration: self.config.header_timeout,
                        request_id: &request_id,
                        error: Some(err.proxy_status()),
                    });
                }
            }
        }
    }

    /// Closes the listeners and every connection that has not begun a request.
    fn start_draining(&mut self) {
        self.draining = true;
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        // Dropping the listeners closes them: new connections are refused.
        self.listeners.clear();
        let idle: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.phase == Phase::Idle || entry.conn.pending().is_empty())
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.remove(key);
        }
        log::info!(
            "draining: listeners closed, {} request heads still arriving",
            self.entries.len()
        );
    }
}
