//! The TCP transport the upstream agent reaches origins with. It does what
//! ureq's own TCP transport does (connect within the timeout, no Nagle,
//! per-read and per-write timeouts set only when they change), except the
//! liveness probe of a pooled connection: one `recv(MSG_PEEK | MSG_DONTWAIT)`
//! instead of switching the socket to non-blocking mode and back, which
//! saves four system calls on every proxied request; and made only when the
//! connection is taken from the pool. ureq asks also as it puts one back,
//! right after its response was read, where the answer is the same and
//! goes stale while the connection waits: that probe was one system call
//! in four of a small response's. TLS is layered on top by ureq's rustls
//! connector, as usual.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::RecvFlags;
use ureq::Error;

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::server::{hangup, idle};
use buffers::OriginBuffers;
pub use buffers::input_waiting;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, Transport,
};

mod buffers;
pub mod interim;
pub mod lent;

/// Output for a request body in useful pieces, and for every write on a
/// connection under TLS; a request head alone on a plain connection gets
/// a buffer of its own size (`buffers`).
const OUTPUT_BYTES: usize = 16 * 1024;

thread_local! {
    /// What the upstream call running on this thread did so far: whether it
    /// opened a connection (else it reused a pooled one), and how many
    /// bytes it received. ureq runs on the calling thread, so a worker can
    /// tell an origin closing a reused connection, before any byte of an
    /// answer, from one that failed the request.
    static ATTEMPT: Cell<Attempt> = const { Cell::new(Attempt { opened: false, received: 0, origin: None }) };
    /// How many bytes the head of the request being sent takes: ureq writes
    /// a head into the output buffer a field at a time, and fails when one
    /// field does not fit, so the buffer is grown to the head first.
    static HEAD_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// What one upstream call did on the wire, as far as retrying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// A new connection was opened (the call did not reuse a pooled one).
    pub opened: bool,
    /// Bytes of HTTP received from the origin (after TLS).
    pub received: u64,
    /// The address the request went to.
    pub origin: Option<SocketAddr>,
}

/// Starts counting for an upstream call on this thread, whose request
/// head takes `head_bytes` bytes.
pub fn begin_attempt(head_bytes: usize) {
    HEAD_BYTES.with(|h| h.set(head_bytes));
    ATTEMPT.with(|a| {
        a.set(Attempt {
            opened: false,
            received: 0,
            origin: None,
        });
    });
}

/// The size of the head being sent on this thread (see [`begin_attempt`]).
fn head_bytes() -> usize {
    HEAD_BYTES.with(Cell::get)
}

/// Counts `amount` bytes of the origin's answer received by the call on
/// this thread: plain HTTP, as the layer above TLS sees it (a handshake
/// is no answer).
fn note_received(amount: usize) {
    ATTEMPT.with(|a| {
        a.set(Attempt {
            received: a.get().received + amount as u64,
            ..a.get()
        });
    });
}

/// What the upstream call on this thread did since [`begin_attempt`].
pub fn attempt() -> Attempt {
    ATTEMPT.with(Cell::get)
}

/// Opens plain TCP connections to origins, counting them for `/metrics`.
#[derive(Debug)]
pub struct OriginConnector {
    pub metrics: Arc<Metrics>,
}

impl<In: Transport> Connector<In> for OriginConnector {
    type Out = Either<In, OriginTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if chained.is_some() {
            return Ok(chained.map(Either::A));
        }
        ATTEMPT.with(|a| {
            a.set(Attempt {
                opened: true,
                ..a.get()
            });
        });
        let stream = {
            let _waiting = idle::waiting();
            connect_any(&details.addrs, details.timeout)?
        };
        self.metrics.upstream_connected();
        stream.set_nodelay(true)?;
        let config = details.config;
        let mut buffers = OriginBuffers::new(config.input_buffer_size(), OUTPUT_BYTES, head_bytes);
        if details.uri.scheme_str() == Some("https") {
            buffers = buffers.under_tls();
        }
        Ok(Some(Either::B(OriginTransport {
            origin: stream.peer_addr().ok(),
            stream: Arc::new(stream),
            buffers,
            read_timeout: None,
            write_timeout: None,
            used: true,
            answered: 0,
            sent: 0,
            answered_early: false,
        })))
    }
}

/// Tries each resolved address in turn within the connect timeout.
fn connect_any(addrs: &[SocketAddr], timeout: NextTimeout) -> Result<TcpStream, Error> {
    let limit = timeout.not_zero().map(|t| *t);
    match connect_within(addrs.iter().copied(), limit) {
        Ok(stream) => Ok(stream),
        Err(err) if err.kind() == io::ErrorKind::TimedOut => Err(Error::Timeout(timeout.reason)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(Error::ConnectionFailed),
        Err(err) => Err(Error::Io(err)),
    }
}

/// Connects to the first of `addrs` that answers, all within `limit` (one
/// budget for them all, as `connect_timeout` means: a name with many dead
/// addresses does not take the limit once for each). The last failure, or
/// `TimedOut` when the budget ran out; `NotFound` for no address at all.
pub fn connect_within(
    addrs: impl IntoIterator<Item = SocketAddr>,
    limit: Option<Duration>,
) -> io::Result<TcpStream> {
    let deadline = limit.map(|limit| std::time::Instant::now() + limit);
    let mut last = None;
    for addr in addrs {
        let attempt = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                TcpStream::connect_timeout(&addr, left)
            }
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::NotFound.into()))
}

/// One TCP connection to an origin, with its buffers.
#[derive(Debug)]
pub struct OriginTransport {
    /// Shared only while a read of the answer is published for the
    /// acceptor to cut (`server::hangup`).
    stream: Arc<TcpStream>,
    /// The origin's address (for the access log).
    origin: Option<SocketAddr>,
    buffers: OriginBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// It carried a request since it was last asked whether it is open:
    /// the asking is ureq putting it back in the pool.
    used: bool,
    /// Bytes received since a request was last sent on it: some of an
    /// answer has come.
    answered: u64,
    /// Bytes written of the request under way (since an answer was last
    /// read).
    sent: u64,
    /// The origin answered and reset the connection while the request
    /// body was sent: the rest of the body is dropped, and the connection
    /// is not reused.
    answered_early: bool,
}

/// The timeout to set for one operation; an exhausted budget is a timeout error.
fn operation_timeout(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

/// Whether the socket's read timeout must change from `current` for a read
/// that may take `wanted`. One within a sixteenth of it stays: the budget
/// for a response head (ureq's time left to receive it) is a little under
/// the per-read limit at its first read, and shrinks as a head trickles
/// in, and the body's reads go back to the limit. ureq checks the budget
/// before every read, so a trickle still ends on time and a silent origin
/// at most a sixteenth late (or a body's read a sixteenth early), for no
/// `setsockopt` on every request.
fn read_timeout_changes(current: Option<Duration>, wanted: Option<Duration>) -> bool {
    match (current, wanted) {
        (Some(current), Some(wanted)) => current.abs_diff(wanted) > current / 16,
        (current, wanted) => current != wanted,
    }
}

fn timeout_error(err: io::Error, timeout: NextTimeout) -> Error {
    match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(timeout.reason),
        _ => Error::Io(err),
    }
}

impl Transport for OriginTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        let limit = operation_timeout(timeout)?;
        if limit != self.write_timeout {
            self.stream.set_write_timeout(limit)?;
            self.write_timeout = limit;
        }
        self.used = true;
        self.answered = 0;
        let origin = self.origin;
        ATTEMPT.with(|a| a.set(Attempt { origin, ..a.get() }));
        if self.answered_early {
            return Ok(());
        }
        let output = &self.buffers.output()[..amount];
        match (&*self.stream).write_all(output) {
            Ok(()) => {
                self.sent += amount as u64;
                Ok(())
            }
            // An origin may answer before it has read the request body (a
            // 413, a 401) and close, which resets the connection while the
            // body is still sent (RFC 9112 §9.6). Its answer is waiting:
            // the rest of the body goes nowhere, and ureq reads the answer
            // once it has "sent" it. Only once the head went out: bytes
            // waiting before that are no answer to this request.
            Err(err) if is_reset(&err) && self.sent > 0 && self.has_input() => {
                log::debug!("the origin answered before reading the whole request body");
                self.answered_early = true;
                Ok(())
            }
            Err(err) => Err(timeout_error(err, timeout)),
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        let limit = operation_timeout(timeout)?;
        if read_timeout_changes(self.read_timeout, limit) {
            self.stream.set_read_timeout(limit)?;
            self.read_timeout = limit;
        }
        // Reading an answer: the next write starts the next request.
        self.sent = 0;
        // Published for the acceptor to cut, should the client hang up
        // while this waits for the answer (`server::hangup`).
        let reading = hangup::reading(&self.stream).map_err(|_| abandoned())?;
        let input = self.buffers.input_append_buf();
        let _waiting = idle::waiting();
        let read = loop {
            match (&*self.stream).read(input) {
                // A signal: the socket timeout restarts, which only lengthens
                // the wait by the time already spent; acceptable for a proxy.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // ureq takes a reset for the end of a body that runs to the
                // close, as it takes a FIN: one cut short would look whole,
                // and be stored. A reset before any answer stays one (the
                // pooled connection the origin had closed: retried).
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset && self.answered > 0 => {
                    return Err(Error::Other(Box::new(ProxyError::UpstreamIncomplete(
                        "the origin reset the connection in the middle of its answer".into(),
                    ))));
                }
                result => break result.map_err(|err| timeout_error(err, timeout)),
            }
        };
        if let Some(reading) = reading {
            reading.done().map_err(|_| abandoned())?;
        }
        let amount = read?;
        self.answered += amount as u64;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        if self.answered_early {
            // Reset by the origin: never reused.
            return false;
        }
        if std::mem::take(&mut self.used) {
            // Going back to the pool: it is probed when taken again.
            self.buffers.release();
            return true;
        }
        // Nothing may be waiting on an idle pooled connection: bytes mean the
        // origin sent something unasked, EOF or an error mean it is gone.
        matches!(self.peek(), Err(rustix::io::Errno::AGAIN))
    }
}

impl OriginTransport {
    /// Looks at what the origin sent, without waiting and without taking
    /// it: the count of bytes waiting (0 at the end of the stream).
    fn peek(&self) -> rustix::io::Result<usize> {
        let mut byte = [0u8; 1];
        rustix::net::recv(
            &self.stream,
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        )
        .map(|(read, _)| read)
    }

    /// Whether some bytes from the origin wait to be read.
    fn has_input(&self) -> bool {
        matches!(self.peek(), Ok(read) if read > 0)
    }
}

/// The error an upstream call gives up with when its client hung up.
fn abandoned() -> Error {
    Error::Other(Box::new(ProxyError::ClientGone(
        "it hung up while the origin's answer was awaited".into(),
    )))
}

/// Whether a write failed because the origin closed or reset the connection.
fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn transport_pair() -> (OriginTransport, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let transport = OriginTransport {
            origin: client.peer_addr().ok(),
            stream: Arc::new(client),
            buffers: OriginBuffers::new(1024, 1024, head_bytes),
            read_timeout: None,
            write_timeout: None,
            used: false,
            answered: 0,
            sent: 0,
            answered_early: false,
        };
        (transport, server)
    }

    #[test]
    fn connect_within_tries_each_address_in_one_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let open = listener.local_addr().expect("addr");
        // A port nothing listens on: refused at once.
        let closed = {
            let gone = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            gone.local_addr().expect("addr")
        };
        let limit = Some(Duration::from_secs(10));
        let stream = connect_within([closed, open], limit).expect("the second answers");
        assert_eq!(stream.peer_addr().ok(), Some(open));
        let refused = connect_within([closed], limit).expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let none = connect_within([], limit).expect_err("no address");
        assert_eq!(none.kind(), io::ErrorKind::NotFound);
        // A budget spent before an address is tried dials nothing.
        let spent = connect_within([open], Some(Duration::ZERO)).expect_err("no time");
        assert_eq!(spent.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_read_timeout_is_set_again_only_when_it_moves_by_more_than_a_sixteenth() {
        let s = Duration::from_secs;
        assert!(read_timeout_changes(None, Some(s(60))));
        assert!(read_timeout_changes(Some(s(60)), None));
        assert!(!read_timeout_changes(Some(s(60)), Some(s(60))));
        // The head's shrinking budget keeps the timeout while close to it.
        assert!(!read_timeout_changes(Some(s(60)), Some(s(57))));
        assert!(read_timeout_changes(Some(s(60)), Some(s(56))));
        // Back to the limit from a head's budget set just under it.
        assert!(!read_timeout_changes(Some(s(59)), Some(s(60))));
        assert!(read_timeout_changes(Some(s(30)), Some(s(60))));
    }

    #[test]
    fn an_idle_connection_is_open() {
        let (mut transport, _server) = transport_pair();
        assert!(transport.is_open());
        // The probe leaves the socket blocking and consumes nothing.
        assert!(transport.is_open());
    }

    #[test]
    fn a_connection_the_origin_closed_is_not_open() {
        let (mut transport, server) = transport_pair();
        drop(server);
        assert!(crate_wait(|| !transport.is_open()));
    }

    #[test]
    fn a_connection_going_back_to_the_pool_is_probed_only_when_taken() {
        let (mut transport, server) = transport_pair();
        transport.used = true;
        drop(server);
        // Put back right after its answer: no probe, whatever happened.
        assert!(transport.is_open());
        // Taken out again: probed, and found closed.
        assert!(crate_wait(|| !transport.is_open()));
    }

    #[test]
    fn unasked_bytes_from_the_origin_mean_not_open() {
        let (mut transport, mut server) = transport_pair();
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .expect("write");
        assert!(crate_wait(|| !transport.is_open()));
    }

    #[test]
    fn an_answer_that_came_before_a_reset_is_read_and_the_rest_of_the_body_dropped() {
        let (mut transport, mut server) = transport_pair();
        let body = || NextTimeout::default();
        transport
            .transmit_output(1024, body())
            .expect("first piece");
        let answer = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n";
        server.write_all(answer).expect("answer");
        // Closed with the piece unread: the origin's kernel resets.
        drop(server);
        assert!(crate_wait(|| {
            transport
                .transmit_output(1024, body())
                .expect("a piece after the answer is dropped, not failed");
            transport.answered_early
        }));
        transport
            .transmit_output(1024, body())
            .expect("and so is the next");
        assert!(
            !transport.is_open(),
            "a reset connection went back to the pool"
        );
        let mut got = Vec::new();
        while transport.await_input(body()).expect("the answer") {
            got.extend_from_slice(transport.buffers.input());
            let read = transport.buffers.input().len();
            transport.buffers.input_consume(read);
        }
        assert_eq!(got, answer);
    }

    #[test]
    fn bytes_waiting_before_the_head_went_out_are_no_answer_to_it() {
        // A pooled connection the origin answered something unasked on and
        // reset: the request's first write fails, and is no early answer.
        let (mut transport, mut server) = transport_pair();
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .expect("write");
        rustix::net::sockopt::set_socket_linger(&server, Some(Duration::ZERO)).expect("linger");
        drop(server);
        assert!(crate_wait(|| {
            rustix::net::sockopt::socket_error(&transport.stream).is_ok_and(|state| state.is_err())
        }));
        assert!(transport.has_input(), "the unasked bytes wait");
        assert!(
            transport
                .transmit_output(1024, NextTimeout::default())
                .is_err()
        );
        assert!(!transport.answered_early);
    }

    #[test]
    fn a_reset_with_no_answer_fails_the_write() {
        let (mut transport, server) = transport_pair();
        transport
            .transmit_output(1024, NextTimeout::default())
            .expect("first piece");
        drop(server);
        assert!(crate_wait(|| transport
            .transmit_output(1024, NextTimeout::default())
            .is_err()));
        assert!(!transport.answered_early);
    }

    /// Polls `check` for up to 5 s (the loopback delivers within microseconds).
    fn crate_wait(mut check: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}
