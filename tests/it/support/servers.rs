//! Plain TCP servers on loopback for what a scripted HTTP origin cannot
//! play: an echo server to tunnel to, a responder that writes fixed bytes
//! before any request, an origin that streams until its reader leaves, and
//! a tripwire that counts every connection made to it. Each accepts on its
//! own thread, serves each connection on another, and stops on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// The accept loop every server here runs: counts connections, serves each
/// on a thread of its own, and stops accepting when dropped.
struct AcceptLoop {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl AcceptLoop {
    /// Accepts on `listener` in a thread named `name`; `serve` gets each
    /// connection and the stop flag (set once the server is dropped).
    fn start(
        listener: TcpListener,
        name: &str,
        serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> std::io::Result<AcceptLoop> {
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag, serve) = (accepted.clone(), stop.clone(), Arc::new(serve));
        let conn_name = format!("{name}-conn");
        thread::Builder::new().name(name.into()).spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (serve, flag) = (serve.clone(), flag.clone());
                let _ = thread::Builder::new()
                    .name(conn_name.clone())
                    .spawn(move || serve(stream, &flag));
            }
        })?;
        Ok(AcceptLoop {
            addr,
            accepted,
            stop,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept so that the loop sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn loopback_listener(what: &str) -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap_or_else(|err| panic!("bind {what} on loopback: {err}"))
}

/// A TCP echo server on 127.0.0.1:0: each connection gets back what it
/// sends; at end of input it shuts its side down.
pub struct EchoServer {
    pub addr: SocketAddr,
    eofs: Arc<AtomicUsize>,
    accept: AcceptLoop,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let eofs = Arc::new(AtomicUsize::new(0));
        let seen = eofs.clone();
        let accept = AcceptLoop::start(loopback_listener("echo server"), "echo", move |s, _| {
            echo(s, &seen)
        })
        .expect("spawn echo thread");
        EchoServer {
            addr: accept.addr,
            eofs,
            accept,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accept.accepted()
    }

    /// Connections whose peer ended its input cleanly (EOF) so far.
    pub fn eofs(&self) -> usize {
        self.eofs.load(Ordering::SeqCst)
    }
}

fn echo(mut stream: TcpStream, eofs: &AtomicUsize) {
    // Bounded: a connection nobody talks to ends after a minute.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                eofs.fetch_add(1, Ordering::SeqCst);
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A TCP server on 127.0.0.1:0 that writes fixed bytes to every connection
/// as soon as it is accepted, then closes it.
pub struct Responder {
    pub addr: SocketAddr,
    accept: AcceptLoop,
}

impl Responder {
    pub fn start(answer: &[u8]) -> Responder {
        let answer = answer.to_vec();
        let accept = AcceptLoop::start(
            loopback_listener("responder"),
            "responder",
            move |mut stream, _| {
                let _ = stream.write_all(&answer);
                // Read briefly so that closing does not reset what was written.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = stream.read(&mut [0u8; 4096]);
            },
        )
        .expect("spawn responder thread");
        Responder {
            addr: accept.addr,
            accept,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accept.accepted()
    }
}

/// An origin on 127.0.0.1:0 that answers each request with an endless
/// chunked body and counts the connections on which writing failed, that
/// is, where the peer (the proxy) went away.
pub struct Streamer {
    pub addr: SocketAddr,
    abandoned: Arc<AtomicUsize>,
    _accept: AcceptLoop,
}

impl Streamer {
    pub fn start() -> Streamer {
        let abandoned = Arc::new(AtomicUsize::new(0));
        let count = abandoned.clone();
        let accept = AcceptLoop::start(
            loopback_listener("streamer"),
            "streamer",
            move |stream, stop| stream_until_abandoned(stream, &count, stop),
        )
        .expect("spawn streamer thread");
        Streamer {
            addr: accept.addr,
            abandoned,
            _accept: accept,
        }
    }

    /// Connections whose reader went away while the body was streaming.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }
}

/// Reads a request head to its blank line, a byte at a time (nothing of
/// what follows is taken); false when the connection ends or fails first.
fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

fn stream_until_abandoned(mut stream: TcpStream, abandoned: &AtomicUsize, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // A write blocked on a reader that neither reads nor leaves ends too.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    if !read_request_head(&mut stream) {
        return;
    }
    let mut chunk = format!("{:x}\r\n", 16 * 1024).into_bytes();
    chunk.extend((0..16 * 1024u64).map(super::origin::pattern_byte));
    chunk.extend_from_slice(b"\r\n");
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(answer).is_err() {
        return;
    }
    // Bounded: 4 GiB at most.
    for _ in 0..(1u64 << 18) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Err(err) = stream.write_all(&chunk) {
            if !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                abandoned.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
}

/// An origin on 127.0.0.1:0 that reads each request and never answers. It
/// counts the requests, and the connections closed by the proxy while it
/// was waiting (for 30 s at most).
pub struct Silent {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    _accept: AcceptLoop,
}

impl Silent {
    pub fn start() -> Silent {
        let requests = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (asked, gone) = (requests.clone(), dropped.clone());
        let accept = AcceptLoop::start(loopback_listener("silent"), "silent", move |stream, _| {
            wait_silently(stream, &asked, &gone);
        })
        .expect("spawn silent origin thread");
        Silent {
            addr: accept.addr,
            requests,
            dropped,
            _accept: accept,
        }
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed before an answer.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

fn wait_silently(mut stream: TcpStream, requests: &AtomicUsize, dropped: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if !read_request_head(&mut stream) {
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
        Err(err)
            if !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
}

/// A listener that counts the connections made to it and answers each with
/// a small 200, so a test that should have been denied sees it plainly.
pub struct Tripwire {
    pub addr: SocketAddr,
    accept: AcceptLoop,
}

impl Tripwire {
    /// Binds `addr` (port 0 for any).
    pub fn bind(addr: &str) -> std::io::Result<Tripwire> {
        let accept = AcceptLoop::start(TcpListener::bind(addr)?, "tripwire", |mut stream, _| {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntripwire",
            );
        })?;
        Ok(Tripwire {
            addr: accept.addr,
            accept,
        })
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.accept.accepted()
    }
}
