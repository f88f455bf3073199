//! Raw HTTP on a socket, for what curl would hide or refuse: one response
//! read off the wire (`exchange`, `read_head`, `read_one`), everything a
//! connection gets until the proxy closes it (`exchange_until_close`), a
//! parser for the responses in a byte stream, the checks every error the
//! proxy generates must pass, and CONNECT by hand.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::client::{CurlReply, find_header, read_until_close};

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
        find_header(&self.headers, name)
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
    // RFC 9110 §6.6.1: the proxy is the origin of its own answers.
    assert!(
        get("date").is_some_and(|v| httpdate::parse_http_date(v).is_ok()),
        "want Date\n{all}"
    );
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

/// Asks the proxy at `proxy` for `url` as an HTTP/1.0 client, whose body
/// runs to the close, and checks that the connection ends with a reset
/// (a cut body), not a FIN (a whole one); returns what arrived before it.
pub fn http10_get_ending_in_reset(proxy: SocketAddr, url: &str, limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy).expect("connect");
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let request = format!("GET {url} HTTP/1.0\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut got = Vec::new();
    let ended = stream.read_to_end(&mut got);
    assert!(
        matches!(&ended, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?} after {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// Whether the proxy closed the connection (EOF or reset) within the limit.
    pub closed: bool,
}

impl Exchange {
    /// The responses in `bytes`, in order.
    pub fn responses(&self) -> Vec<Response> {
        parse_responses(&self.bytes)
    }

    /// The received bytes as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// First value of header `name` in a response head, case-insensitive.
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends `request` on a new connection (from a separate thread, so a proxy
/// that answers before reading everything cannot deadlock the test), then
/// reads until the proxy closes or `limit` passes.
pub fn exchange_until_close(addr: SocketAddr, request: &[u8], limit: Duration) -> Exchange {
    let stream = TcpStream::connect(addr).expect("connect to proxy");
    exchange_until_close_on(stream, request, limit)
}

/// `exchange_until_close` on a connection already open.
pub fn exchange_until_close_on(mut stream: TcpStream, request: &[u8], limit: Duration) -> Exchange {
    let mut writer = stream.try_clone().expect("clone client socket");
    let request = request.to_vec();
    let sender = thread::spawn(move || {
        let _ = writer.set_write_timeout(Some(Duration::from_secs(30)));
        // The proxy may close before reading it all: errors are expected.
        let _ = writer.write_all(&request);
    });
    let result = read_to_close(&mut stream, limit);
    drop(stream);
    let _ = sender.join();
    result
}

/// Reads until EOF, a reset, or `limit`; says which.
pub fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Exchange {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Exchange {
                bytes,
                closed: false,
            };
        };
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // A reset also means the proxy closed the connection.
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
        }
    }
}

/// Splits a byte stream into responses (Content-Length or chunked bodies;
/// a response without either runs to the end). Stops at anything unparseable.
pub fn parse_responses(mut data: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(end) = find(data, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
        let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        let mut rest = &data[end + 4..];
        let informational = (100..200).contains(&status);
        let body = if informational {
            Vec::new()
        } else if let Some(len) =
            header_in(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
        {
            let len = len.min(rest.len());
            let body = rest[..len].to_vec();
            rest = &rest[len..];
            body
        } else if header_in(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            while let Some(line_end) = find(rest, b"\r\n") {
                let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                    break;
                };
                rest = &rest[line_end + 2..];
                let take = size.min(rest.len());
                body.extend_from_slice(&rest[..take]);
                rest = &rest[(take + 2).min(rest.len())..];
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let body = rest.to_vec();
            rest = &[];
            body
        };
        out.push(Response { status, head, body });
        data = rest;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
