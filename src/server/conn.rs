//! `ClientConn`: a client socket plus the bytes received from it and not yet
//! used. The acceptor fills it without blocking while a head arrives; a
//! worker reads bodies through it (`BufRead`), and whatever is left over (a
//! pipelined next request) stays in it when the connection goes back. It
//! also carries its connection-limit slot and its place in the acceptor's
//! loop (see `handback`), both given back when it is dropped.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendFlags};

use crate::cache::fill::Fill;
use crate::server::handback::{Registration, Signals};
use crate::server::hangup::{self, Abandoned, Watching};
use crate::server::idle;
use crate::server::in_flight;
use crate::server::limits::ConnSlot;
use crate::server::pace::Pace;

/// Smallest read a worker makes into the buffer while reading a body.
const READ_CHUNK: usize = 16 * 1024;

/// Most bytes one `sendfile(2)` call is asked to send (a call that
/// blocks is cut short by the send timeout anyway).
const SENDFILE_CHUNK: usize = 1 << 30;

/// Most slices one `sendmsg(2)` takes (Linux's `UIO_MAXIOV`); with more it
/// fails with `EMSGSIZE`. A stored body read by followers as it arrived
/// can be in thousands of pieces.
const MAX_SLICES: usize = 1024;

/// `MSG_MORE`, where the system has it (elsewhere the head of a body sent
/// with `sendfile` simply leaves in a segment of its own).
#[cfg(target_os = "linux")]
const MORE: SendFlags = SendFlags::MORE;
#[cfg(not(target_os = "linux"))]
const MORE: SendFlags = SendFlags::empty();

/// A client connection and its unconsumed input.
#[derive(Debug)]
pub struct ClientConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    buf: Vec<u8>,
    pos: usize,
    /// Counts this connection against the limits until it is dropped.
    _slot: ConnSlot,
    /// Its place in the acceptor's readiness loop, freed when it is dropped.
    registration: Option<Registration<ClientConn>>,
    /// The address the client connected to: the listener's, or for a
    /// wildcard listener the OS's answer once asked for.
    local: SocketAddr,
    local_known: bool,
    /// Bytes written to the client so far (through `Write`).
    sent: u64,
    /// The answer was cut where the client cannot see it: it ends with a
    /// reset (see [`ClientConn::end_with_reset`]).
    cut: bool,
    /// The current request's waits on this client (see `pace`).
    pace: Pace,
    /// When the current request's head came in whole, if it came alone
    /// (not pipelined behind the one before): the start of its client's
    /// grace to half-close (`hangup`).
    head_at: HeadAt,
}

/// When a request's head came in, as far as `hangup` goes.
#[derive(Debug, Clone, Copy)]
enum HeadAt {
    /// Pipelined behind the request before: not watched.
    Pipelined,
    /// Read by the worker just now: the request's start is the time.
    Now,
    /// Read by the acceptor at this time, then queued.
    At(Instant),
}

impl ClientConn {
    /// A newly accepted connection with nothing read yet, from the listener
    /// bound to `listener`.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: SocketAddr,
        slot: ConnSlot,
    ) -> ClientConn {
        ClientConn {
            stream,
            peer,
            buf: Vec::new(),
            pos: 0,
            _slot: slot,
            registration: None,
            local: listener,
            local_known: !listener.ip().is_unspecified(),
            sent: 0,
            cut: false,
            pace: Pace::off(),
            head_at: HeadAt::Pipelined,
        }
    }

    /// Records that the acceptor had the next request's head whole `at`.
    pub fn set_head_at(&mut self, at: Instant) {
        self.head_at = HeadAt::At(at);
    }

    /// Records how the worker found the next request: `pipelined` (sent
    /// before the answer to the one before), or just read.
    pub fn set_next_head(&mut self, pipelined: bool) {
        self.head_at = if pipelined {
            HeadAt::Pipelined
        } else {
            HeadAt::Now
        };
    }

    /// A request starts being served at `started`: the time its head came
    /// in, when the worker read it just now.
    pub fn begin_request(&mut self, started: Instant) {
        if let HeadAt::Now = self.head_at {
            self.head_at = HeadAt::At(started);
        }
    }

    /// Starts counting a new request's waits on this client: they may add
    /// up to `grace`, plus a second for every `min_rate` bytes it moves;
    /// past that, reads and writes fail with `TimedOut` (see `pace`).
    /// `write_timeout` is the socket's send timeout.
    pub fn start_pace(&mut self, min_rate: u64, grace: Duration, write_timeout: Duration) {
        self.pace = Pace::new(min_rate, grace, write_timeout);
    }

    /// Bytes written to the client so far: a worker that fails can still
    /// answer with an error only while this has not moved.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Counts `n` bytes written to the client, here and for the access
    /// line of a request cut at shutdown.
    fn count_sent(&mut self, n: usize) {
        self.sent += n as u64;
        in_flight::count_sent(n);
    }

    /// The address the client connected to (asked of the OS at most once,
    /// and only behind a wildcard listener).
    pub fn local_addr(&mut self) -> Option<SocketAddr> {
        if !self.local_known {
            self.local = self.stream.local_addr().ok()?;
            self.local_known = true;
        }
        Some(self.local)
    }

    /// Ties the connection to its place in the acceptor's loop.
    pub fn set_registration(&mut self, registration: Registration<ClientConn>) {
        self.registration = Some(registration);
    }

    /// What the acceptor tells the worker that has the connection: among
    /// it, the flag it sets when the client sends something meanwhile (see
    /// `Handback::give_back`).
    pub fn signals(&self) -> Option<Arc<Signals>> {
        self.registration.as_ref().map(|r| Arc::clone(r.signals()))
    }

    /// Watches for the client hanging up while this thread waits for the
    /// origin's answer (`hangup`), feeding `fill` if given. Not watched
    /// (`Ok(None)`): a connection not registered, a pipelined request, or
    /// one with input taken in and not yet used (the next, pipelined).
    ///
    /// # Errors
    /// `Abandoned` when the client has hung up already.
    pub fn watch_hangup(&self, fill: Option<&Arc<Fill>>) -> Result<Option<Watching>, Abandoned> {
        let (Some(registration), HeadAt::At(head_at)) = (&self.registration, self.head_at) else {
            return Ok(None);
        };
        if !self.pending().is_empty() {
            return Ok(None);
        }
        hangup::watch(&registration.signals().hangup, &self.stream, head_at, fill).map(Some)
    }

    /// Whether the client's input has ended with nothing unread before the
    /// end (it hung up): one look, without waiting.
    pub fn at_end(&self) -> bool {
        self.pending().is_empty() && hangup::at_end(&self.stream)
    }

    /// The acceptor's key for this connection, if it has one.
    pub fn registration_key(&self) -> Option<usize> {
        self.registration.as_ref().map(|r| r.key)
    }

    /// Takes the connection out of the acceptor's loop for good (for a
    /// tunnel, whose bytes another loop relays).
    pub fn detach(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.detach();
        }
    }

    /// Forgets the registration without telling the acceptor (the acceptor
    /// itself is closing the connection and frees the place directly).
    pub fn disarm_registration(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.disarm();
        }
    }

    /// Waits up to `wait` for the client's next bytes and takes them in,
    /// using `scratch` to read: true when some arrived. On a timeout, the
    /// end of the connection or an error it returns false and leaves all to
    /// the acceptor, which the readiness it saw (the input flag) tells.
    pub fn await_input(&mut self, wait: Duration, scratch: &mut [u8]) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: wait.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&self.stream, PollFlags::IN)];
        if !matches!(poll(&mut fds, Some(&timeout)), Ok(1)) {
            return false;
        }
        let signals = self.signals();
        // The acceptor saw this input too and marked the place; the worker
        // takes it, so the mark is cleared first: input after this read
        // marks it again.
        if let Some(signals) = &signals {
            signals.input.store(false, Ordering::SeqCst);
        }
        match rustix::net::recv(
            &self.stream,
            &mut *scratch,
            rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((n, _)) if n > 0 => {
                self.push_received(&scratch[..n]);
                // A full read may have left bytes in the socket, which will
                // not be announced again: whoever reads next must look.
                if n == scratch.len()
                    && let Some(signals) = &signals
                {
                    signals.input.store(true, Ordering::SeqCst);
                }
                true
            }
            _ => {
                // The end, or nothing after all: the acceptor looks.
                if let Some(signals) = &signals {
                    signals.input.store(true, Ordering::SeqCst);
                }
                false
            }
        }
    }

    /// Bytes received and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` pending bytes as used; frees the buffer once all are.
    pub fn consume_pending(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            // An idle parked connection should hold no buffer memory.
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Sends the FIN: nothing more will be written.
    pub fn shut_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Whether the client sent bytes that no one has read: some already
    /// taken in, some the acceptor saw arrive, or some waiting in the
    /// socket (one look, without waiting).
    pub fn has_unread_input(&self) -> bool {
        let seen = |r: &Registration<ClientConn>| r.signals().input.load(Ordering::SeqCst);
        if !self.pending().is_empty() || self.registration.as_ref().is_some_and(seen) {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(
            rustix::net::recv(
                &self.stream,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ),
            Ok((1, _))
        )
    }

    /// Appends bytes received elsewhere (the acceptor's scratch buffer).
    pub fn push_received(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Reads from the client's socket, waiting as long as its read timeout
/// allows, and counts the wait against the request's pace.
fn paced_read(stream: &mut TcpStream, pace: &mut Pace, out: &mut [u8]) -> io::Result<usize> {
    let began = Instant::now();
    let read = stream.read(out);
    pace.waited(began.elapsed(), *read.as_ref().unwrap_or(&0))?;
    read
}

impl Read for ClientConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() && out.len() >= READ_CHUNK {
            // Large reads bypass the buffer.
            return paced_read(&mut self.stream, &mut self.pace, out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl ClientConn {
    /// Makes closing this connection send a reset instead of a FIN: a body
    /// that runs to the close (an HTTP/1.0 client's) and was cut short
    /// would otherwise end as a complete one does.
    pub fn end_with_reset(&mut self) {
        self.cut = true;
        let _ = rustix::net::sockopt::set_socket_linger(&self.stream, Some(Duration::ZERO));
    }

    /// Whether the connection is to end with a reset, at once, rather than
    /// linger: see [`ClientConn::end_with_reset`].
    pub fn ends_with_reset(&self) -> bool {
        self.cut
    }

    /// Holds back partly filled segments while `on` (`TCP_CORK`); turning
    /// it off sends what is held. Best effort: a socket that refuses only
    /// sends smaller segments.
    pub fn cork(&self, on: bool) {
        let _ = rustix::net::sockopt::set_tcp_cork(&self.stream, on);
    }

    /// Sends `len` bytes of `file` from `offset` straight to the socket
    /// with `sendfile(2)`, counted: the bytes never pass through this
    /// process. Only for files that are never written again (the disk
    /// tier's objects, the sealed memory files): the socket may read the
    /// pages after the call returns. (std's `io::copy` declines `sendfile`
    /// from a file to a socket for that reason, and copies through a
    /// buffer.) The socket is non-blocking meanwhile, so that a client
    /// whose socket is full is waited for as a write waits for it: as a
    /// worker waiting on a socket ([`idle::waiting`]), within the request's
    /// pace. Unlike `send`, `sendfile` cannot be told not to raise SIGPIPE
    /// on a closed peer: a Rust program ignores that signal from startup,
    /// so it is an `EPIPE` here, but a program embedding the server must
    /// not restore it. Returns the bytes sent, fewer than `len` when the
    /// file is shorter, and with them the error that stopped the sending,
    /// if one did (a send timeout is `WouldBlock`, a client slower than its
    /// pace `TimedOut`).
    pub fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> (u64, io::Result<()>) {
        // Before any request there is no pace: block, up to the send
        // timeout, as writes do then.
        let nonblocking =
            self.pace.write_wait().is_some() && self.stream.set_nonblocking(true).is_ok();
        let mut at = offset;
        let end = offset + len;
        let mut result = Ok(());
        let mut just_waited = false;
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(SENDFILE_CHUNK);
            let began = Instant::now();
            match rustix::fs::sendfile(&self.stream, file, Some(&mut at), want) {
                // The file ended early.
                Ok(0) => break,
                Ok(n) => {
                    just_waited = false;
                    self.count_sent(n);
                    if nonblocking {
                        self.pace.moved(n);
                    } else if let Err(err) = self.paced_write(began, n) {
                        // The call blocked while the client's socket was full.
                        result = Err(err);
                        break;
                    }
                }
                // Writable, yet no room (the machine's TCP memory is short:
                // its sockets then say writable regardless, or a signal cut
                // the wait): one call waits in the kernel, up to the send
                // timeout, rather than spin, as a write does.
                Err(Errno::AGAIN) if nonblocking && just_waited => {
                    just_waited = false;
                    let _waiting = idle::waiting();
                    match self.send_file_waiting(file, &mut at, want) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            result = Err(err);
                            break;
                        }
                    }
                }
                Err(Errno::AGAIN) if nonblocking => {
                    let _waiting = idle::waiting();
                    if let Err(err) = self.wait_for_room() {
                        result = Err(err);
                        break;
                    }
                    just_waited = true;
                }
                Err(Errno::INTR) => {}
                Err(errno) => {
                    result = Err(errno.into());
                    break;
                }
            }
        }
        if nonblocking {
            let _ = self.stream.set_nonblocking(false);
        }
        (at - offset, result)
    }
}

impl ClientConn {
    /// One `sendfile` of `want` bytes of `file` from `at` on the socket made
    /// blocking for it (then non-blocking again), counted against the pace.
    fn send_file_waiting(
        &mut self,
        file: &std::fs::File,
        at: &mut u64,
        want: usize,
    ) -> io::Result<usize> {
        self.stream.set_nonblocking(false)?;
        let began = Instant::now();
        let sent = rustix::fs::sendfile(&self.stream, file, Some(at), want);
        let restored = self.stream.set_nonblocking(true);
        let n = sent?;
        self.count_sent(n);
        self.paced_write(began, n)?;
        restored?;
        Ok(n)
    }

    /// Counts a write that waited on the client since `began` against the
    /// request's pace. A client cut off for reading too slowly is logged:
    /// its access line shows only that the answer was cut short.
    fn paced_write(&mut self, began: Instant, written: usize) -> io::Result<()> {
        self.pace
            .waited(began.elapsed(), written)
            .map_err(|err| self.cut_off(err))
    }

    fn cut_off(&self, err: io::Error) -> io::Error {
        log::warn!(
            "client {}: {err}; cut off after {} bytes",
            self.peer,
            self.sent
        );
        err
    }

    /// Waits for room in the client's socket, no longer than the send
    /// timeout or what the request's pace has left, then writes what fits.
    /// The slow path of a write: kept out of the callers' frames.
    #[cold]
    #[inline(never)]
    fn write_when_room(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.wait_for_room()?;
        let n = match rustix::net::sendmsg(
            &self.stream,
            bufs,
            &mut SendAncillaryBuffer::default(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => n,
            // Writable, yet no room: the machine's TCP memory is short (its
            // sockets then say writable regardless), or a signal cut the
            // wait. Wait in the kernel, up to the send timeout, rather than
            // spin.
            Err(Errno::AGAIN) => {
                let began = Instant::now();
                let written = rustix::net::sendmsg(
                    &self.stream,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                );
                let n = *written.as_ref().unwrap_or(&0);
                self.count_sent(n);
                self.paced_write(began, n)?;
                return Ok(written?);
            }
            Err(errno) => return Err(errno.into()),
        };
        self.count_sent(n);
        self.pace.moved(n);
        Ok(n)
    }

    /// Waits for room in the client's socket, no longer than the send
    /// timeout or what the request's pace has left; the wait counts against
    /// the pace. Errors when there is still none (or no pace: before any
    /// request), or the client is slower than its pace.
    fn wait_for_room(&mut self) -> io::Result<()> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let Some((limit, paced)) = self.pace.write_wait() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let timeout = Timespec {
            tv_sec: i64::try_from(limit.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: limit.subsec_nanos().into(),
        };
        let began = Instant::now();
        let mut fds = [PollFd::new(&self.stream, PollFlags::OUT)];
        let ready = match poll(&mut fds, Some(&timeout)) {
            Ok(n) => n > 0,
            // A signal: the send below finds out where the socket stands.
            Err(Errno::INTR) => true,
            Err(errno) => return Err(errno.into()),
        };
        self.paced_write(began, 0)?;
        if !ready {
            return Err(if paced {
                self.cut_off(self.pace.too_slow())
            } else {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the client took nothing for upstream_timeout",
                )
            });
        }
        Ok(())
    }
}

impl ClientConn {
    /// `write_vectored` with `MSG_MORE`: more follows at once (a
    /// `sendfile`), so what fits is held for the next segment instead of
    /// leaving alone. Only the first, non-blocking try carries the flag.
    pub fn write_vectored_more(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
        match rustix::net::sendmsg(
            &self.stream,
            bufs,
            &mut SendAncillaryBuffer::default(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL | MORE,
        ) {
            Ok(n) => {
                self.pace.moved(n);
                self.count_sent(n);
                Ok(n)
            }
            Err(Errno::AGAIN) => self.write_vectored(bufs),
            Err(errno) => Err(errno.into()),
        }
    }
}

/// Writes go straight to the socket, counted. What the socket's buffer
/// takes at once is written while the worker counts as running; when it is
/// full, the worker waits for the client to read as it waits for a read
/// ([`idle::waiting`]), so that a job queued meanwhile wakes another worker
/// instead of waiting for this one (a 1 MiB cache hit to a client that
/// reads slowly held up the queue).
impl Write for ClientConn {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let n = match rustix::net::sendmsg(
            &self.stream,
            bufs,
            &mut SendAncillaryBuffer::default(),
            flags,
        ) {
            Ok(n) => {
                self.pace.moved(n);
                n
            }
            Err(Errno::AGAIN) => {
                let _waiting = idle::waiting();
                if self.pace.write_wait().is_some() {
                    return self.write_when_room(bufs);
                }
                // Before any request: blocking, up to the socket's send
                // timeout (then `WouldBlock`), and still without SIGPIPE.
                rustix::net::sendmsg(
                    &self.stream,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                )?
            }
            Err(errno) => return Err(errno.into()),
        };
        self.count_sent(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl BufRead for ClientConn {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.buf.resize(READ_CHUNK, 0);
            let n = match paced_read(&mut self.stream, &mut self.pace, &mut self.buf) {
                Ok(n) => n,
                Err(err) => {
                    self.buf.clear();
                    return Err(err);
                }
            };
            self.buf.truncate(n);
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::limits::ConnLimits;
    use std::net::TcpListener;

    /// A connection on loopback: the proxy's end, and the client's.
    fn pair() -> (ClientConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (stream, peer) = listener.accept().expect("accept");
        let slot = ConnLimits::new(4, 4).admit(peer.ip()).expect("a slot");
        let local = stream.local_addr().expect("local");
        (ClientConn::new(stream, peer, local, slot), client)
    }

    #[test]
    fn a_write_of_more_slices_than_sendmsg_takes_goes_out_in_order() {
        let (mut conn, mut client) = pair();
        let pieces: Vec<[u8; 4]> = (0..3000u32).map(u32::to_le_bytes).collect();
        let expected: Vec<u8> = pieces.concat();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).expect("read");
            got
        });
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut left = &mut slices[..];
        let mut calls = 0;
        while !left.is_empty() {
            let n = conn.write_vectored(left).expect("no EMSGSIZE");
            assert!(n > 0 && n <= MAX_SLICES * 4, "{n}");
            IoSlice::advance_slices(&mut left, n);
            calls += 1;
        }
        assert!(calls >= 3, "{calls} writes for 3,000 slices");
        assert_eq!(conn.bytes_sent(), expected.len() as u64);
        drop(conn);
        assert!(reader.join().expect("reader") == expected);
    }
}
