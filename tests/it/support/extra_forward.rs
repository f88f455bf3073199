//! Helpers for the forward and connect tests: responses read off raw sockets
//! (heads, bodiless answers, truncated bodies), the checks every error the
//! proxy generates must pass, and a TCP echo server to tunnel to.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{CurlReply, read_until_close};

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The head as text, status line included, for assertion messages.
    pub head: String,
    /// Header lines as `(lowercase name, value)`, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a head (`HTTP/1.1 200 OK\r\n...\r\n\r\n`); the body is left empty.
pub fn parse_head(head: &[u8]) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(RawResponse {
        status,
        head: text,
        headers,
        body: Vec::new(),
    })
}

/// Splits everything read from a connection into the first response's head
/// and all the bytes after it (the body as sent, framing included).
pub fn split_raw(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut response = parse_head(&bytes[..end])?;
    response.body = bytes[end..].to_vec();
    Some(response)
}

/// Reads one response head from `stream`, byte by byte so that nothing
/// after it is consumed.
pub fn read_head(stream: &mut TcpStream, limit: Duration) -> Option<RawResponse> {
    let deadline = Instant::now() + limit;
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => return None,
        }
    }
    parse_head(&data)
}

/// Reads one whole response: the head, then a Content-Length or chunked body
/// unless `bodiless` (an answer to HEAD, or a 204/304).
pub fn read_one(stream: &mut TcpStream, bodiless: bool, limit: Duration) -> Option<RawResponse> {
    let mut response = read_head(stream, limit)?;
    if bodiless {
        return Some(response);
    }
    stream.set_read_timeout(Some(limit)).ok()?;
    if let Some(len) = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).ok()?;
        response.body = body;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut byte = [0u8; 1];
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).ok()?;
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            response.body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(response)
}

/// Sends `request` on a new connection and reads until the proxy closes it.
pub fn exchange(proxy: SocketAddr, request: &[u8], limit: Duration) -> RawResponse {
    let got = super::client::raw(proxy, request, limit);
    split_raw(&got).unwrap_or_else(|| {
        panic!(
            "no response head\nsent: {:?}\ngot: {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&got)
        )
    })
}

/// Whether the connection is closed by the peer within `limit` (EOF or reset),
/// draining whatever arrives first.
pub fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Checks an error the proxy generated itself: status, `Proxy-Status` error
/// type, `Content-Type: text/plain`, a request id, and a body saying what happened.
pub fn check_proxy_error(
    context: &str,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    want_status: u16,
    want_token: &str,
) {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body_text = String::from_utf8_lossy(body);
    let all = format!("{context}\ngot status {status}\nheaders: {headers:?}\nbody: {body_text:?}");
    assert_eq!(status, want_status, "{all}");
    let proxy_status = get("proxy-status").unwrap_or_default();
    assert!(
        proxy_status.contains(&format!("error={want_token}")),
        "want Proxy-Status error={want_token}\n{all}"
    );
    assert!(
        get("content-type").is_some_and(|v| v.starts_with("text/plain")),
        "want text/plain\n{all}"
    );
    assert!(get("x-request-id").is_some(), "want X-Request-Id\n{all}");
    assert!(
        body_text.trim().len() >= 10,
        "want a body that explains the error\n{all}"
    );
}

/// `check_proxy_error` for what curl got.
pub fn assert_curl_error(context: &str, reply: &CurlReply, status: u16, token: &str) {
    let context = format!("{context}\ncurl exit {}: {}", reply.exit, reply.stderr);
    check_proxy_error(
        &context,
        reply.status,
        &reply.headers,
        &reply.body,
        status,
        token,
    );
}

/// `check_proxy_error` for a response read off a raw socket.
pub fn assert_raw_error(sent: &[u8], response: &RawResponse, status: u16, token: &str) {
    let context = format!(
        "sent: {:?}\nhead: {}",
        String::from_utf8_lossy(sent),
        response.head
    );
    check_proxy_error(
        &context,
        response.status,
        &response.headers,
        &response.body,
        status,
        token,
    );
}

/// A TCP echo server on 127.0.0.1:0: each connection gets back what it
/// sends; at end of input it shuts its side down. Stops accepting on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    eofs: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server on loopback");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let eofs = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, seen, flag) = (accepted.clone(), eofs.clone(), stop.clone());
        thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    let _ = thread::Builder::new()
                        .name("echo-conn".into())
                        .spawn(move || echo(stream, &seen));
                }
            })
            .expect("spawn echo thread");
        EchoServer {
            addr,
            accepted,
            eofs,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose peer ended its input cleanly (EOF) so far.
    pub fn eofs(&self) -> usize {
        self.eofs.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
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
/// as soon as it is accepted, then closes it. Stops accepting on drop.
pub struct Responder {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Responder {
    pub fn start(answer: &[u8]) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind responder on loopback");
        let addr = listener.local_addr().expect("responder address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag, answer) = (accepted.clone(), stop.clone(), answer.to_vec());
        thread::Builder::new()
            .name("responder".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(&answer);
                    // Read briefly so that closing does not reset what was written.
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = stream.read(&mut [0u8; 4096]);
                }
            })
            .expect("spawn responder thread");
        Responder {
            addr,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// An origin on 127.0.0.1:0 that answers each request with an endless
/// chunked body and counts the connections on which writing failed, that
/// is, where the peer (the proxy) went away. Stops accepting on drop.
pub struct Streamer {
    pub addr: SocketAddr,
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Streamer {
    pub fn start() -> Streamer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind streamer on loopback");
        let addr = listener.local_addr().expect("streamer address");
        let abandoned = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (abandoned.clone(), stop.clone());
        thread::Builder::new()
            .name("streamer".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (count, flag) = (count.clone(), flag.clone());
                    let _ = thread::Builder::new()
                        .name("streamer-conn".into())
                        .spawn(move || stream_until_abandoned(stream, &count, &flag));
                }
            })
            .expect("spawn streamer thread");
        Streamer {
            addr,
            abandoned,
            stop,
        }
    }

    /// Connections whose reader went away while the body was streaming.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn stream_until_abandoned(mut stream: TcpStream, abandoned: &AtomicUsize, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // A write blocked on a reader that neither reads nor leaves ends too.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
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

/// Sends `CONNECT target` (plus `extra` in the same write) and reads the
/// answer's head (an error answer's body too); returns the stream, the
/// answer and the bytes sent.
pub fn connect_through(
    proxy: SocketAddr,
    target: &str,
    extra: &[u8],
) -> (TcpStream, RawResponse, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).expect("connect to proxy");
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    request.extend_from_slice(extra);
    stream.write_all(&request).expect("send CONNECT");
    let head = read_head(&mut stream, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(&request)));
    let mut response = head;
    if response.status != 200 {
        response.body = read_until_close(&mut stream, Duration::from_secs(10));
    }
    (stream, response, request)
}
