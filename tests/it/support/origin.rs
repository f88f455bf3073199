//! `Origin`: a scripted HTTP/1.1 origin server on 127.0.0.1:0 for tests.
//! A handler maps each request to a `Reply`: fixed, chunked, slow, huge,
//! reset mid-body, raw bytes, or silence. Every request is recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl OriginRequest {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, headers and a body sent with Content-Length.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A body sent chunked, in pieces of `piece` bytes.
    Chunked {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        piece: usize,
    },
    /// A body sent chunked, in pieces of `piece` bytes, each written on its
    /// own `gap` after the one before.
    Trickle {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        piece: usize,
        gap: Duration,
        /// Ends with a TCP reset instead of the last chunk.
        reset: bool,
    },
    /// These bytes, then a TCP reset (RST, not FIN).
    RawThenReset(Vec<u8>),
    /// Waits `delay` before answering `then`.
    Slow { delay: Duration, then: Box<Reply> },
    /// Declares `declared` bytes, sends `sent` of them, then resets the connection.
    ResetMidBody { declared: u64, sent: u64 },
    /// A 200 with `headers` and no length (its body runs to the close):
    /// `sent`, then a TCP reset (RST, not FIN) instead of the end.
    ResetUntilClose {
        headers: Vec<(String, String)>,
        sent: Vec<u8>,
    },
    /// `len` bytes of a repeating pattern with Content-Length, generated while sent.
    Huge { len: u64 },
    /// Endless chunked body of a repeating pattern (until the peer goes away).
    Endless,
    /// These bytes exactly, then the connection is closed.
    Raw(Vec<u8>),
    /// Reads the request and never answers (until the peer goes away).
    Silent,
    /// Status, headers and Content-Length for `first` and `rest`; sends
    /// the head and `first`, waits for `gate` (60 s at most), then `rest`,
    /// or with `reset` closes the connection instead.
    Paused {
        status: u16,
        headers: Vec<(String, String)>,
        first: Vec<u8>,
        gate: Gate,
        rest: Vec<u8>,
        reset: bool,
    },
    /// `len` bytes of the `Huge` pattern with `Cache-Control:
    /// max-age=3600`: with Content-Length, or chunked.
    HugeCacheable { len: u64, chunked: bool },
}

impl Reply {
    /// A 200 fresh for an hour (`max-age=3600`) whose `body` stops after
    /// `at` bytes until `gate` opens.
    pub fn fresh_paused(body: &[u8], at: usize, gate: &Gate) -> Reply {
        Reply::Paused {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=3600".into())],
            first: body[..at].to_vec(),
            gate: gate.clone(),
            rest: body[at..].to_vec(),
            reset: false,
        }
    }

    /// 200 with a body and a Content-Type.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A bare status with a short text body.
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!("status {status}\n").into_bytes(),
        }
    }

    /// A reply with extra headers.
    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Full {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Reply::Full {
                    status,
                    headers,
                    body,
                }
            }
            Reply::Chunked {
                status,
                mut headers,
                body,
                piece,
            } => {
                headers.push((name.into(), value.into()));
                Reply::Chunked {
                    status,
                    headers,
                    body,
                    piece,
                }
            }
            other => other,
        }
    }
}

/// The byte at `offset` of the pattern used by `Huge` and `Endless` bodies.
pub fn pattern_byte(offset: u64) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz\n"[(offset % 37) as usize]
}

type Handler = dyn Fn(&OriginRequest) -> Reply + Send + Sync;

/// A running origin; dropping it stops accepting.
pub struct Origin {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<OriginRequest>>>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    /// Starts an origin that answers every request with `handler`'s reply.
    pub fn start(handler: impl Fn(&OriginRequest) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin on loopback");
        let addr = listener.local_addr().expect("origin address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log, flag) = (requests.clone(), stop.clone());
        thread::Builder::new()
            .name("origin".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (handler, log) = (handler.clone(), log.clone());
                    let _ = thread::Builder::new()
                        .name("origin-conn".into())
                        .spawn(move || serve_connection(stream, &*handler, &log));
                }
            })
            .expect("spawn origin thread");
        Origin {
            addr,
            requests,
            stop,
        }
    }

    /// An origin that answers `ok(content_type, body)` for every path.
    pub fn fixed(content_type: &str, body: &[u8]) -> Origin {
        let (ct, body) = (content_type.to_string(), body.to_vec());
        Origin::start(move |_| Reply::ok(&ct, body.clone()))
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<OriginRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut reset = false;
    while let Some(request) = read_request(&mut reader) {
        if let Ok(mut log) = log.lock() {
            log.push(request.clone());
        }
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let head_only = request.method == "HEAD";
        let reply = handler(&request);
        reset = matches!(
            reply,
            Reply::ResetUntilClose { .. }
                | Reply::RawThenReset(_)
                | Reply::Trickle { reset: true, .. }
        );
        match write_reply(&mut writer, &reply, head_only) {
            Ok(true) if !close => continue,
            _ => break,
        }
    }
    if !reset {
        let _ = writer.shutdown(Shutdown::Both);
    }
    // A reset is sent as the last descriptor closes (zero linger).
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<OriginRequest> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                head.clear();
                continue;
            }
            break;
        }
        if head.len() > 1 << 20 {
            return None;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&head).ok()?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut request = OriginRequest {
        method: parsed.method?.to_string(),
        target: parsed.path?.to_string(),
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        request.body = read_chunked(reader)?;
    } else if let Some(len) = request.header("content-length") {
        let len: u64 = len.trim().parse().ok()?;
        reader.take(len).read_to_end(&mut request.body).ok()?;
    }
    Some(request)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                reader.read_line(&mut trailer).ok()?;
                if trailer.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}

/// Writes one reply; Ok(true) when the connection may be reused.
fn write_reply(w: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<bool> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = head(*status, headers);
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            if !head_only && !matches!(status, 204 | 304) {
                out.extend_from_slice(body);
            }
            w.write_all(&out)?;
            Ok(true)
        }
        Reply::Chunked {
            status,
            headers,
            body,
            piece,
        } => {
            let mut out = head(*status, headers);
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            w.write_all(&out)?;
            if !head_only {
                for part in body.chunks((*piece).max(1)) {
                    w.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
                    w.write_all(part)?;
                    w.write_all(b"\r\n")?;
                }
                w.write_all(b"0\r\n\r\n")?;
            }
            Ok(true)
        }
        Reply::Trickle {
            headers,
            body,
            piece,
            gap,
            reset,
        } => {
            let mut out = head(200, headers);
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            w.write_all(&out)?;
            if !head_only {
                for part in body.chunks((*piece).max(1)) {
                    thread::sleep(*gap);
                    let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                    chunk.extend_from_slice(part);
                    chunk.extend_from_slice(b"\r\n");
                    w.write_all(&chunk)?;
                }
                if *reset {
                    rustix::net::sockopt::set_socket_linger(&*w, Some(Duration::ZERO))?;
                    return Ok(false);
                }
                w.write_all(b"0\r\n\r\n")?;
            }
            Ok(true)
        }
        Reply::RawThenReset(bytes) => {
            w.write_all(bytes)?;
            w.flush()?;
            thread::sleep(Duration::from_millis(50));
            rustix::net::sockopt::set_socket_linger(&*w, Some(Duration::ZERO))?;
            Ok(false)
        }
        Reply::Slow { delay, then } => {
            thread::sleep(*delay);
            write_reply(w, then, head_only)
        }
        Reply::ResetMidBody { declared, sent } => {
            let mut out = head(
                200,
                &[("Content-Type".into(), "application/octet-stream".into())],
            );
            out.extend_from_slice(format!("Content-Length: {declared}\r\n\r\n").as_bytes());
            out.extend((0..*sent).map(pattern_byte));
            w.write_all(&out)?;
            w.flush()?;
            thread::sleep(Duration::from_millis(50));
            // Abort: the proxy sees the connection end before the declared length.
            w.shutdown(Shutdown::Both)?;
            Ok(false)
        }
        Reply::ResetUntilClose { headers, sent } => {
            let mut out = head(200, headers);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(sent);
            w.write_all(&out)?;
            w.flush()?;
            thread::sleep(Duration::from_millis(50));
            // Closed with a zero linger: the kernel sends a reset.
            rustix::net::sockopt::set_socket_linger(&*w, Some(Duration::ZERO))?;
            Ok(false)
        }
        Reply::Huge { len } => {
            let mut out = head(
                200,
                &[("Content-Type".into(), "application/octet-stream".into())],
            );
            out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
            w.write_all(&out)?;
            if !head_only {
                let block: Vec<u8> = (0..37 * 1771).map(pattern_byte).collect();
                let mut left = *len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    w.write_all(&block[..n])?;
                    left -= n as u64;
                }
            }
            Ok(true)
        }
        Reply::Endless => {
            let mut out = head(
                200,
                &[("Content-Type".into(), "application/octet-stream".into())],
            );
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            w.write_all(&out)?;
            let block: Vec<u8> = (0..37 * 443).map(pattern_byte).collect();
            let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
            chunk.extend_from_slice(&block);
            chunk.extend_from_slice(b"\r\n");
            // Bounded so a test can never spin forever: 8 GiB at most.
            for _ in 0..(8u64 << 30) / block.len() as u64 {
                w.write_all(&chunk)?;
            }
            Ok(false)
        }
        Reply::Raw(bytes) => {
            w.write_all(bytes)?;
            Ok(false)
        }
        Reply::Paused {
            status,
            headers,
            first,
            gate,
            rest,
            reset,
        } => {
            let mut out = head(*status, headers);
            let len = first.len() + rest.len();
            out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
            if !head_only {
                out.extend_from_slice(first);
            }
            w.write_all(&out)?;
            w.flush()?;
            if !head_only {
                gate.wait(Duration::from_secs(60));
                if *reset {
                    w.shutdown(Shutdown::Both)?;
                    return Ok(false);
                }
                w.write_all(rest)?;
            }
            Ok(true)
        }
        Reply::HugeCacheable { len, chunked } => {
            let mut out = head(
                200,
                &[
                    ("Content-Type".into(), "application/octet-stream".into()),
                    ("Cache-Control".into(), "max-age=3600".into()),
                ],
            );
            if *chunked {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            } else {
                out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
            }
            w.write_all(&out)?;
            if !head_only {
                let block: Vec<u8> = (0..37 * 1771).map(pattern_byte).collect();
                let mut left = *len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if *chunked {
                        w.write_all(format!("{n:x}\r\n").as_bytes())?;
                    }
                    w.write_all(&block[..n])?;
                    if *chunked {
                        w.write_all(b"\r\n")?;
                    }
                    left -= n as u64;
                }
                if *chunked {
                    w.write_all(b"0\r\n\r\n")?;
                }
            }
            Ok(true)
        }
        Reply::Silent => {
            let mut sink = [0u8; 1024];
            // Wait until the peer closes (or the read timeout passes).
            while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
            Ok(false)
        }
    }
}

fn head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Test\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out
}

/// Opens when told to, or when dropped; a gated origin's replies wait for it.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<AtomicBool>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            open: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lets every waiting and later reply through.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Waits until open, at most `limit`.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.open.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// An origin whose every reply is `ok(text/plain, body)`, sent only once
/// `gate` opens (or after 60 s, so no thread can hang for ever). The request
/// is recorded before the wait, so `requests()` shows it has arrived.
pub fn gated_origin(gate: &Gate, body: &'static [u8]) -> Origin {
    let gate = gate.clone();
    Origin::start(move |_| {
        gate.wait(Duration::from_secs(60));
        Reply::ok("text/plain", body)
    })
}
