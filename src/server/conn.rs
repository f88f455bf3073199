//! `ClientConn`: a client socket plus the bytes received from it and not yet
//! used. The acceptor fills it without blocking while a head arrives; a
//! worker reads bodies through it (`BufRead`), and whatever is left over (a
//! pipelined next request) stays in it when the connection goes back.

use std::collections::HashMap;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::Registry;
use mio::unix::SourceFd;

use crate::error::ProxyError;
use crate::server::handback::Handback;

/// Smallest read a worker makes into the buffer while reading a body.
const READ_CHUNK: usize = 16 * 1024;

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
    registration: Option<Registration>,
    /// The address the client connected to: the listener's, or for a
    /// wildcard listener the OS's answer once asked for.
    local: SocketAddr,
    local_known: bool,
    /// Bytes written to the client so far (through `Write`).
    sent: u64,
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
        }
    }

    /// Bytes written to the client so far: a worker that fails can still
    /// answer with an error only while this has not moved.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// The port the client connected to.
    pub fn local_port(&self) -> u16 {
        self.local.port()
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
    pub fn set_registration(&mut self, registration: Registration) {
        self.registration = Some(registration);
    }

    /// The flag the acceptor sets when the client sends something while the
    /// connection is with a worker (see `Handback::give_back`).
    pub fn input_flag(&self) -> Option<Arc<AtomicBool>> {
        self.registration.as_ref().map(|r| r.input.clone())
    }

    /// The acceptor's key for this connection, if it has one.
    pub fn registration_key(&self) -> Option<usize> {
        self.registration.as_ref().map(|r| r.key)
    }

    /// Takes the connection out of the acceptor's loop for good (for a
    /// tunnel, whose bytes another loop relays).
    pub fn detach(&mut self) {
        if let Some(registration) = self.registration.take() {
            let fd = self.stream.as_raw_fd();
            let _ = registration.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Forgets the registration without telling the acceptor (the acceptor
    /// itself is closing the connection and frees the place directly).
    pub fn disarm_registration(&mut self) {
        if let Some(mut registration) = self.registration.take() {
            registration.armed = false;
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

    /// Appends bytes received elsewhere (the acceptor's scratch buffer).
    pub fn push_received(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
}

impl Read for ClientConn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() && out.len() >= READ_CHUNK {
            // Large reads bypass the buffer.
            return self.stream.read(out);
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Writes go straight to the socket, counted.
impl Write for ClientConn {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(data)?;
        self.sent += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.stream.write_vectored(bufs)?;
        self.sent += n as u64;
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
            let n = match self.stream.read(&mut self.buf) {
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

/// Something a worker tells the acceptor about a connection it had.
#[derive(Debug)]
pub enum Return {
    /// Wait for the next request on this keep-alive connection.
    Park(ClientConn),
    /// The connection with this key is gone (closed or detached).
    Closed(usize),
}

/// A connection's place (`key`) in the acceptor's readiness loop. The socket
/// stays registered there for its whole life; dropping this tells the
/// acceptor the place is free.
#[derive(Debug)]
pub struct Registration {
    pub key: usize,
    handback: Handback,
    registry: Arc<Registry>,
    armed: bool,
    /// Set by the acceptor when input arrives while a worker has the connection.
    input: Arc<AtomicBool>,
}

impl Registration {
    /// A place that reports back through `handback`.
    pub fn new(key: usize, handback: Handback, registry: Arc<Registry>) -> Registration {
        Registration {
            key,
            handback,
            registry,
            armed: true,
            input: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.armed {
            self.handback.closed(self.key);
        }
    }
}

/// Open-connection counts, total and per client address, shared by the
/// acceptor (which admits) and whoever drops a connection (which releases).
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    /// Limits of `max_total` connections, `max_per_client` from one address.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a new connection from `ip`, or says which limit it is over.
    ///
    /// # Errors
    /// `TooManyConnections` naming the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, ProxyError> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(ProxyError::TooManyConnections {
                what: "max_connections",
                limit: self.max_total,
            });
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(ip).or_insert(0);
        if *count >= self.max_per_client {
            drop(per_client);
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(ProxyError::TooManyConnections {
                what: "max_conns_per_client",
                limit: self.max_per_client,
            });
        }
        *count += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_client = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_client.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.ip);
            }
        }
        drop(per_client);
        self.limits.total.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn limits_count_per_client_and_release_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limits.admit(a).expect("first");
        let _second = limits.admit(a).expect("second");
        let err = limits.admit(a).expect_err("third from the same client");
        assert_eq!(err.status(), 503);
        let _third = limits.admit(b).expect("another client");
        assert!(limits.admit(b).is_err(), "total limit");
        drop(first);
        let _again = limits.admit(a).expect("place given back");
        assert_eq!(limits.total.load(Ordering::SeqCst), 3);
    }
}
