//! The fetch client's side of HTTP/1.1: one keep-alive connection to a
//! proxy, a request head (built by `request`) sent on it, the response head
//! parsed with httparse, the body by Content-Length, chunked or until
//! close. Knows nothing of redirects, retries, other proxies or files.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http::body::{BodyFraming, ChunkedReader};

/// The largest response head accepted from the proxy.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers in a response head.
const MAX_HEADERS: usize = 128;
/// Connecting to the proxy never waits longer than this (the URL's deadline may be shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Error bodies are read (to reuse the connection) only up to this size.
const DRAIN_LIMIT: u64 = 256 * 1024;

/// What went wrong talking to the proxy.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection to the proxy could be made.
    #[error("cannot connect to proxy {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The connection broke, or closed before the response was complete.
    #[error("connection to proxy lost: {0}")]
    Lost(io::Error),
    /// The body ended before its declared length.
    #[error("body ended after {got} of {want} bytes")]
    Truncated { got: u64, want: u64 },
    /// The URL's time limit passed.
    #[error("timed out: the time limit for the URL (--timeout) passed")]
    Timeout,
    /// The proxy sent something that is not HTTP/1.1.
    #[error("malformed response from proxy: {0}")]
    Protocol(String),
    /// Writing the body to its file failed.
    #[error("cannot write file: {0}")]
    Save(io::Error),
    /// The user asked the batch to stop.
    #[error("interrupted")]
    Interrupted,
}

impl HttpError {
    /// No connection to the proxy could be opened: the request never left,
    /// so another proxy may take it.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, HttpError::Connect { .. })
    }

    /// Connection failures are worth another attempt; the rest are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Lost(_) | HttpError::Truncated { .. }
        )
    }
}

/// A response head from the proxy.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    /// `(name, value)` in the order received; values decoded lossily.
    pub headers: Vec<(String, String)>,
    framing: BodyFraming,
    keep_alive: bool,
}

impl Head {
    /// A head with no body, for tests.
    #[cfg(test)]
    pub fn bodiless(status: u16, headers: &[(&str, &str)]) -> Head {
        Head {
            status,
            reason: String::new(),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
                .collect(),
            framing: BodyFraming::Length(0),
            keep_alive: false,
        }
    }

    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    /// A second handle on the socket, to change its timeouts under a body reader.
    control: TcpStream,
    used: bool,
}

/// One worker's connection to the proxy, opened on first use, reused while
/// the proxy keeps it alive, reopened once when a reused one turns out closed.
pub struct ProxyConnection {
    proxy: Vec<SocketAddr>,
    conn: Option<Conn>,
}

/// A failed attempt, and whether the proxy could have seen the request.
enum Attempt {
    /// Nothing came back: on a reused connection the proxy had closed it.
    NoResponse(HttpError),
    Failed(HttpError),
}

impl ProxyConnection {
    /// A connection to the proxy at one of `proxy` (tried in order), not yet open.
    pub fn new(proxy: Vec<SocketAddr>) -> ProxyConnection {
        ProxyConnection { proxy, conn: None }
    }

    /// Sends a request head (`request::request_head`) and reads the
    /// response head; the body is read next with `read_body` or `discard_body`.
    ///
    /// # Errors
    /// `HttpError` when the proxy cannot be reached or answers badly.
    pub fn send(&mut self, request: &[u8], deadline: Instant) -> Result<Head, HttpError> {
        let reused = self.conn.as_ref().is_some_and(|c| c.used);
        match self.attempt(request, deadline) {
            Ok(head) => Ok(head),
            // An idle keep-alive connection may be closed by the proxy at any
            // time; a request that got no byte back is safe to send again.
            Err(Attempt::NoResponse(_)) if reused => match self.attempt(request, deadline) {
                Ok(head) => Ok(head),
                Err(Attempt::NoResponse(err) | Attempt::Failed(err)) => Err(err),
            },
            Err(Attempt::NoResponse(err) | Attempt::Failed(err)) => Err(err),
        }
    }

    fn attempt(&mut self, request: &[u8], deadline: Instant) -> Result<Head, Attempt> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.proxy, deadline).map_err(Attempt::Failed)?);
        }
        let conn = self.conn.as_mut().expect("connection opened above");
        conn.used = true;
        let result = set_timeouts(&conn.control, deadline)
            .map_err(Attempt::Failed)
            .and_then(|()| {
                conn.reader
                    .get_mut()
                    .write_all(request)
                    .map_err(|err| Attempt::NoResponse(classify(err)))
            })
            .and_then(|()| read_head(&mut conn.reader, &conn.control, deadline));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Streams the body of `head` into `out`; returns the bytes written.
    /// `on_bytes` hears of each piece, `stop` is checked between pieces.
    ///
    /// # Errors
    /// `HttpError::Save` when `out` fails, other variants when the body does.
    pub fn read_body(
        &mut self,
        head: &Head,
        out: &mut dyn Write,
        deadline: Instant,
        stop: &AtomicBool,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<u64, HttpError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(HttpError::Protocol("no response to read".into()));
        };
        let control = &conn.control;
        let result = match head.framing {
            BodyFraming::Empty => Ok(0),
            BodyFraming::Length(want) => {
                let mut body = (&mut conn.reader).take(want);
                copy(&mut body, out, control, deadline, stop, on_bytes).and_then(|got| {
                    if got == want {
                        Ok(got)
                    } else {
                        Err(HttpError::Truncated { got, want })
                    }
                })
            }
            BodyFraming::Chunked => {
                let mut body = ChunkedReader::new(&mut conn.reader);
                copy(&mut body, out, control, deadline, stop, on_bytes)
            }
            BodyFraming::UntilClose => {
                copy(&mut conn.reader, out, control, deadline, stop, on_bytes)
            }
        };
        if result.is_err() || !head.keep_alive {
            // After a failed body we cannot tell where the next response starts.
            self.conn = None;
        }
        result
    }

    /// Reads and drops the body of a response not saved (redirects, errors)
    /// so the connection can be reused; returns its first KiB for messages.
    /// Large or unframed bodies are not read: the connection is closed instead.
    pub fn discard_body(&mut self, head: &Head, deadline: Instant, stop: &AtomicBool) -> Vec<u8> {
        match head.framing {
            BodyFraming::Length(n) if n > DRAIN_LIMIT => self.conn = None,
            BodyFraming::UntilClose => self.conn = None,
            _ => {
                let mut sink = CappedSink::default();
                if self
                    .read_body(head, &mut sink, deadline, stop, &mut |_| {})
                    .is_ok()
                {
                    return sink.start;
                }
            }
        }
        Vec::new()
    }
}

/// Keeps the first KiB; fails past `DRAIN_LIMIT` so a huge chunked body is not read whole.
#[derive(Default)]
struct CappedSink {
    start: Vec<u8>,
    total: u64,
}

impl Write for CappedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total > DRAIN_LIMIT {
            return Err(io::Error::other("body too large to drain"));
        }
        let room = 1024usize.saturating_sub(self.start.len());
        self.start.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn connect(proxy: &[SocketAddr], deadline: Instant) -> Result<Conn, HttpError> {
    let mut last = None;
    for &addr in proxy {
        let left = remaining(deadline).ok_or(HttpError::Timeout)?;
        match TcpStream::connect_timeout(&addr, left.min(CONNECT_TIMEOUT)) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let control = stream
                    .try_clone()
                    .map_err(|source| HttpError::Connect { addr, source })?;
                return Ok(Conn {
                    reader: BufReader::with_capacity(64 * 1024, stream),
                    control,
                    used: false,
                });
            }
            Err(source) => last = Some(HttpError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or(HttpError::Protocol("no proxy address".into())))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn set_timeouts(stream: &TcpStream, deadline: Instant) -> Result<(), HttpError> {
    let left = remaining(deadline).ok_or(HttpError::Timeout)?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(HttpError::Lost)
}

/// Turns a socket error into the client's vocabulary.
fn classify(err: io::Error) -> HttpError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        io::ErrorKind::InvalidData => HttpError::Protocol(err.to_string()),
        _ => HttpError::Lost(err),
    }
}

/// Reads one final response head (1xx interim responses are skipped).
fn read_head(
    reader: &mut BufReader<TcpStream>,
    control: &TcpStream,
    deadline: Instant,
) -> Result<Head, Attempt> {
    let mut first = true;
    loop {
        let head = read_one_head(reader, control, deadline, first)?;
        first = false;
        // RFC 9110 §15.2: interim responses precede the final one.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        return Ok(head);
    }
}

fn read_one_head(
    reader: &mut BufReader<TcpStream>,
    control: &TcpStream,
    deadline: Instant,
    first: bool,
) -> Result<Head, Attempt> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        set_timeouts(control, deadline).map_err(Attempt::Failed)?;
        let nothing_yet = first && buf.is_empty();
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let err = classify(err);
                return Err(match err {
                    HttpError::Lost(_) if nothing_yet => Attempt::NoResponse(err),
                    _ => Attempt::Failed(err),
                });
            }
        };
        if available.is_empty() {
            let err = HttpError::Lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
            return Err(if nothing_yet {
                Attempt::NoResponse(err)
            } else {
                Attempt::Failed(err)
            });
        }
        let old = buf.len();
        let added = available.len();
        buf.extend_from_slice(available);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(end)) => {
                reader.consume(end - old);
                return parse_head(&response).map_err(Attempt::Failed);
            }
            Ok(httparse::Status::Partial) => reader.consume(added),
            Err(err) => return Err(Attempt::Failed(HttpError::Protocol(err.to_string()))),
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Attempt::Failed(HttpError::Protocol(format!(
                "response head over {MAX_HEAD_BYTES} bytes"
            ))));
        }
    }
}

fn parse_head(response: &httparse::Response<'_, '_>) -> Result<Head, HttpError> {
    let status = response.code.unwrap_or(0);
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let values = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect::<Vec<_>>()
    };
    let coding = values("transfer-encoding");
    let lengths = values("content-length");
    // RFC 9112 §6.3: no body for 1xx, 204 and 304; chunked wins over length.
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::Empty
    } else if !coding.is_empty() {
        if coding.last().map(String::as_str) == Some("chunked") {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else if let Some(first) = lengths.first() {
        if lengths.iter().any(|l| l != first) {
            return Err(HttpError::Protocol("conflicting Content-Length".into()));
        }
        let n = first
            .parse::<u64>()
            .map_err(|_| HttpError::Protocol(format!("bad Content-Length {first:?}")))?;
        BodyFraming::Length(n)
    } else {
        BodyFraming::UntilClose
    };
    let connection = values("connection");
    let keep_alive = framing != BodyFraming::UntilClose
        && match response.version {
            Some(1) => !connection.iter().any(|v| v == "close"),
            _ => connection.iter().any(|v| v == "keep-alive"),
        };
    Ok(Head {
        status,
        reason: response.reason.unwrap_or("").to_string(),
        headers,
        framing,
        keep_alive,
    })
}

fn copy(
    src: &mut dyn Read,
    out: &mut dyn Write,
    control: &TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, HttpError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(HttpError::Interrupted);
        }
        set_timeouts(control, deadline)?;
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(classify(err)),
        };
        out.write_all(&buf[..n]).map_err(HttpError::Save)?;
        total += n as u64;
        on_bytes(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use url::Url;

    use super::*;
    use crate::client::request::{RequestOptions, request_head};

    /// A one-connection server that answers each request with the next reply.
    fn serve(replies: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            for reply in replies {
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0)
                    && !line.ends_with("\r\n\r\n")
                {}
                let _ = writer.write_all(reply);
            }
        });
        addr
    }

    fn get(conn: &mut ProxyConnection, url: &str) -> Result<(Head, Vec<u8>), HttpError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = Url::parse(url).expect("url");
        let request = request_head(&url, &url, &RequestOptions::default(), None);
        let head = conn.send(&request, deadline)?;
        let mut body = Vec::new();
        conn.read_body(
            &head,
            &mut body,
            deadline,
            &AtomicBool::new(false),
            &mut |_| {},
        )?;
        Ok((head, body))
    }

    #[test]
    fn length_and_chunked_bodies_share_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ]);
        let mut conn = ProxyConnection::new(vec![addr]);
        let (head, body) = get(&mut conn, "http://a.example/").expect("first");
        assert_eq!(
            (head.status, head.header("x-request-id")),
            (200, Some("r1"))
        );
        assert_eq!(body, b"hello");
        let (_, body) = get(&mut conn, "http://a.example/2").expect("second");
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn a_short_body_is_truncated_not_complete() {
        let addr = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
        let mut conn = ProxyConnection::new(vec![addr]);
        let err = get(&mut conn, "http://a.example/").expect_err("short body");
        assert!(
            matches!(err, HttpError::Truncated { got: 3, want: 10 }),
            "{err}"
        );
    }

    #[test]
    fn a_closed_keep_alive_connection_is_reopened_once() {
        // The first connection answers once and closes; the second answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for body in ["one", "two"] {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0)
                    && !line.ends_with("\r\n\r\n")
                {}
                let mut w = stream;
                let _ = write!(w, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}");
            }
        });
        let mut conn = ProxyConnection::new(vec![addr]);
        assert_eq!(get(&mut conn, "http://a.example/").expect("1").1, b"one");
        assert_eq!(get(&mut conn, "http://a.example/").expect("2").1, b"two");
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ]);
        let mut conn = ProxyConnection::new(vec![addr]);
        assert!(matches!(
            get(&mut conn, "http://a.example/"),
            Err(HttpError::Protocol(_))
        ));
    }
}
