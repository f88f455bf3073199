//! Forwarding one absolute-form request: policy checks on the URL, the
//! upstream request built from the client's (hop-by-hop headers out, `Via`
//! in), the request body streamed up, and the response streamed back with
//! framing the client can trust. A response is never made to look complete
//! when it is not: if the upstream fails mid-body, the client connection is
//! closed short of the declared length or without the last chunk.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use ureq::SendBody;
use ureq::http::{self, HeaderName, HeaderValue, Uri};

use crate::access;
use crate::error::ProxyError;
use crate::http::body::{ChunkedWriter, LimitedReader};
use crate::http::headers::{self, HopByHop};
use crate::http::request::{BodyFraming, RequestHead, Version};
use crate::http::response;
use crate::logging;
use crate::server::conn::ClientConn;
use crate::server::request_body::{self, ClientBody};
use crate::server::worker::{Context, Served};
use crate::upstream;

/// Methods forwarded upstream (DESIGN.md).
const FORWARDED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Request headers this proxy sets itself instead of copying.
const REPLACED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "expect",
    "max-forwards",
    "x-request-id",
    "content-length",
];

/// Forwards `head` (and its body from `conn`) and streams the answer back.
///
/// # Errors
/// A `ProxyError` when nothing has been sent to the client yet; failures
/// after the response head went out are reported in `Served` instead.
pub fn forward(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
    buf: &mut [u8],
) -> Result<Served, ProxyError> {
    if !FORWARDED_METHODS.contains(&head.method.as_str()) {
        return Err(ProxyError::MethodNotSupported(head.method.clone()));
    }
    let uri = target_uri(&head.target)?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if !access::allows_port(port, &ctx.rules.current().dest_ports) {
        return Err(ProxyError::PortDenied { port });
    }
    if port == conn.local_port()
        && let Some(local) = conn.local_addr()
        && targets_this_proxy(uri.host().unwrap_or_default(), port, local)
    {
        return Err(ProxyError::LoopDetected);
    }
    let framing = head.body_framing()?;
    if let (BodyFraming::Length(len), Some(limit)) = (framing, ctx.config.max_body_bytes)
        && len > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    // RFC 9110 §7.6.2: Max-Forwards 0 means this proxy answers OPTIONS itself.
    let max_forwards = headers::max_forwards(head.header_values("max-forwards"));
    if head.method == "OPTIONS" && max_forwards == Some(0) {
        let keep_alive = request_body::discard(conn, head) && head.keep_alive();
        return answer_options(conn, request_id, keep_alive);
    }
    // For error messages only; cloning an `Authority` shares its bytes.
    let authority = uri.authority().cloned();
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(uri);
    let request_headers = request.headers_mut().ok_or_else(|| {
        ProxyError::BadRequest(format!("cannot forward {} {}", head.method, head.target))
    })?;
    copy_request_headers(head, request_headers)?;
    if let Some(n) = max_forwards {
        request_headers.insert("max-forwards", HeaderValue::from(n.saturating_sub(1)));
    }
    if let BodyFraming::Length(len) = framing {
        request_headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let via = format!("{} {}", version_token(head.version), ctx.config.via_name);
    request_headers.append(http::header::VIA, header_value(via.as_bytes())?);
    request_headers.insert("x-request-id", header_value(request_id.as_bytes())?);

    if framing != BodyFraming::Empty && head.expects_continue() && head.version == Version::Http11 {
        // We stream the body ourselves, so we answer the expectation here.
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(client_gone)?;
    }
    let mut body = ClientBody::new(conn, framing, ctx.config.max_body_bytes);
    let sent = Instant::now();
    let result = match framing {
        BodyFraming::Empty => ctx.agent.run(request.body(SendBody::none())?),
        _ => ctx
            .agent
            .run(request.body(SendBody::from_reader(&mut body))?),
    };
    // A request body the origin did not wait for leaves unread bytes behind.
    let request_read = body.is_done();
    if let Some(err) = body.take_failure() {
        return Err(err);
    }
    drop(body);
    let response = result
        .map_err(|err| upstream::map_error(err, authority.as_ref().map_or("", |a| a.as_str())))?;
    ctx.metrics.upstream_answered(sent.elapsed());
    relay_response(conn, head, response, request_id, ctx, buf, request_read)
}

/// Parses an absolute-form target into the URI to fetch (credentials dropped).
fn target_uri(target: &str) -> Result<Uri, ProxyError> {
    let uri: Uri = target
        .parse()
        .map_err(|err| ProxyError::BadRequest(format!("bad URL {target:?}: {err}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(ProxyError::SchemeNotSupported(other.to_string())),
        None => {
            return Err(ProxyError::BadRequest(format!(
                "URL {target:?} has no scheme"
            )));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(ProxyError::BadRequest(format!(
            "URL {target:?} has no host"
        )));
    };
    if authority.host().is_empty() {
        return Err(ProxyError::BadRequest(format!(
            "URL {target:?} has no host"
        )));
    }
    if !authority.as_str().contains('@') {
        return Ok(uri);
    }
    // userinfo is deprecated in http(s) URLs (RFC 9110 §4.2.4): never forwarded.
    let host_port = authority
        .as_str()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = uri.into_parts();
    parts.authority = Some(
        host_port
            .parse()
            .map_err(|_| ProxyError::BadRequest(format!("bad host in URL {target:?}")))?,
    );
    Uri::from_parts(parts).map_err(|err| ProxyError::BadRequest(format!("bad URL: {err}")))
}

/// Whether `host:port` is the very socket the client reached this proxy on.
/// Forwarding there would make the proxy its own upstream: `Via` catches the
/// inner request, but only once a worker is free for it, and while every
/// worker waits on itself none is. Names are looked up only for URLs on the
/// proxy's own port, so other requests pay nothing for this check.
fn targets_this_proxy(host: &str, port: u16, local: SocketAddr) -> bool {
    if port != local.port() {
        return false;
    }
    let local_ip = local.ip().to_canonical();
    upstream::resolve(host, port).is_ok_and(|addrs| {
        addrs.iter().any(|addr| {
            let ip = addr.ip().to_canonical();
            ip == local_ip || ip.is_unspecified()
        })
    })
}

/// Copies the client's end-to-end headers (RFC 9110 §7.6.1).
fn copy_request_headers(head: &RequestHead, into: &mut http::HeaderMap) -> Result<(), ProxyError> {
    let hop = HopByHop::from_connection(head.header_values("connection"));
    for header in &head.headers {
        let name = header.name.as_str();
        if headers::is_framing_look_alike(name) {
            log::debug!(
                "dropped look-alike framing header {}",
                logging::escape(name.as_bytes())
            );
            continue;
        }
        if hop.contains(name)
            || REPLACED_REQUEST_HEADERS
                .iter()
                .any(|replaced| replaced.eq_ignore_ascii_case(name))
        {
            continue;
        }
        // `from_bytes` lowercases the name itself.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ProxyError::BadRequest(format!("bad header name {:?}", header.name)))?;
        into.append(name, header_value(&header.value)?);
    }
    Ok(())
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_bytes(bytes).map_err(|_| ProxyError::BadRequest("bad header value".into()))
}

fn version_token(version: Version) -> &'static str {
    match version {
        Version::Http10 => "1.0",
        Version::Http11 => "1.1",
    }
}

/// Answers `OPTIONS` with `Max-Forwards: 0` on the proxy's behalf.
fn answer_options(
    conn: &mut ClientConn,
    request_id: &str,
    keep_alive: bool,
) -> Result<Served, ProxyError> {
    let mut out = Vec::with_capacity(256);
    response::write_status_line(&mut out, 200, "OK");
    response::write_header(&mut out, "Allow", FORWARDED_METHODS.join(", ").as_bytes());
    response::write_header(&mut out, "Content-Length", b"0");
    response::write_header(&mut out, "X-Request-Id", request_id.as_bytes());
    if !keep_alive {
        response::write_header(&mut out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    conn.write_all(&out).map_err(client_gone)?;
    Ok(Served {
        status: 200,
        bytes: 0,
        error: None,
        reusable: keep_alive,
    })
}

/// How the response body is delimited towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client and no length: the body ends when we close.
    Close,
}

/// Writes the response head and streams the body to the client.
/// `request_read`: the whole request body was read, so the connection can
/// carry another request; if not, the head says `Connection: close`.
fn relay_response(
    conn: &mut ClientConn,
    head: &RequestHead,
    response: http::Response<ureq::Body>,
    request_id: &str,
    ctx: &Context,
    buf: &mut [u8],
    request_read: bool,
) -> Result<Served, ProxyError> {
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    // RFC 9110 §6.4.1: HEAD, 1xx, 204 and 304 responses have no body.
    let bodiless = head.method == "HEAD" || status < 200 || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if let Some(len) = body.content_length() {
        if let Some(limit) = ctx.config.max_body_bytes.filter(|limit| len > *limit) {
            return Err(ProxyError::UpstreamBodyTooLarge { limit });
        }
        Framing::Length(len)
    } else if head.version == Version::Http11 {
        Framing::Chunked
    } else {
        Framing::Close
    };
    let keep_alive = request_read
        && head.keep_alive()
        && framing != Framing::Close
        && !ctx.shutdown.is_draining();

    let mut out = Vec::with_capacity(1024);
    response::write_status_line(
        &mut out,
        status,
        parts.status.canonical_reason().unwrap_or(""),
    );
    let hop = HopByHop::from_connection(
        parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    for (name, value) in &parts.headers {
        let name = name.as_str();
        // Content-Length is rewritten below from the framing actually used.
        if hop.contains(name) || (name == "content-length" && !bodiless) || name == "x-request-id" {
            continue;
        }
        response::write_header(&mut out, name, value.as_bytes());
    }
    match framing {
        Framing::Length(len) => {
            response::write_header(&mut out, "Content-Length", len.to_string().as_bytes())
        }
        Framing::Chunked => response::write_header(&mut out, "Transfer-Encoding", b"chunked"),
        Framing::None | Framing::Close => {}
    }
    let via = format!("1.1 {}", ctx.config.via_name);
    response::write_header(&mut out, "Via", via.as_bytes());
    response::write_header(&mut out, "X-Request-Id", request_id.as_bytes());
    if !keep_alive {
        response::write_header(&mut out, "Connection", b"close");
    } else if head.version == Version::Http10 {
        response::write_header(&mut out, "Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");

    let mut client = HeadFirst::new(out, conn);
    let mut reader = body.into_reader();
    let limit = ctx.config.max_body_bytes.unwrap_or(u64::MAX);
    let copied = match framing {
        Framing::None => Ok(0),
        Framing::Length(len) => copy_body(&mut reader, &mut client, Some(len), buf),
        Framing::Close => copy_body(
            &mut LimitedReader::new(reader, limit),
            &mut client,
            None,
            buf,
        ),
        Framing::Chunked => {
            let mut chunked = ChunkedWriter::new(&mut client);
            copy_body(
                &mut LimitedReader::new(reader, limit),
                &mut chunked,
                None,
                buf,
            )
            .and_then(|n| {
                chunked.finish().map(|_| n).map_err(|_| Copy {
                    sent: n,
                    failure: None,
                })
            })
        }
    };
    let flushed = client.flush();
    let mut served = Served {
        status,
        bytes: 0,
        error: None,
        reusable: keep_alive,
    };
    match copied {
        Ok(n) => served.bytes = n,
        Err(Copy { sent, failure }) => {
            // Closing now is what tells the client the body is incomplete.
            served.bytes = sent;
            served.reusable = false;
            served.error =
                failure.map(|err| upstream::map_io_error(err, "upstream").proxy_status());
        }
    }
    if flushed.is_err() {
        served.reusable = false;
    }
    Ok(served)
}

/// Sends the response head together with the first piece of body in one
/// vectored write (the body is not copied next to the head), then every
/// later piece as soon as it is read: small responses cost one system call,
/// and a slow origin's bytes are never held back.
struct HeadFirst<W> {
    head: Vec<u8>,
    /// Bytes of `head` already written.
    head_sent: usize,
    /// A write failed: the client is gone, and nothing more is tried.
    failed: bool,
    conn: W,
}

impl<W: Write> HeadFirst<W> {
    fn new(head: Vec<u8>, conn: W) -> HeadFirst<W> {
        HeadFirst {
            head,
            head_sent: 0,
            failed: false,
            conn,
        }
    }
}

impl<W: Write> Write for HeadFirst<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(data)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let written = self.write_through(bufs);
        if written
            .as_ref()
            .is_err_and(|err| err.kind() != io::ErrorKind::Interrupted)
        {
            self.failed = true;
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the client connection failed"));
        }
        if self.head_sent < self.head.len() {
            self.conn.write_all(&self.head[self.head_sent..])?;
            self.head = Vec::new();
            self.head_sent = 0;
        }
        self.conn.flush()
    }
}

impl<W: Write> HeadFirst<W> {
    /// The head's rest, then `bufs`: what `write_vectored` reports.
    fn write_through(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("the client connection failed"));
        }
        while self.head_sent < self.head.len() {
            // What is left of the head, then as many pieces as fit in four
            // slices (a chunk is three: size line, data, CRLF).
            let head_left = self.head.len() - self.head_sent;
            let mut slices = [IoSlice::new(&[]); 4];
            slices[0] = IoSlice::new(&self.head[self.head_sent..]);
            let count = 1 + bufs.len().min(slices.len() - 1);
            slices[1..count].copy_from_slice(&bufs[..count - 1]);
            let n = self.conn.write_vectored(&slices[..count])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if n < head_left {
                self.head_sent += n;
                continue;
            }
            self.head = Vec::new();
            self.head_sent = 0;
            if n > head_left {
                return Ok(n - head_left);
            }
        }
        self.conn.write_vectored(bufs)
    }
}

/// A failed body copy: bytes sent before it failed, and the upstream error
/// (`None` when it was the client that went away).
struct Copy {
    sent: u64,
    failure: Option<io::Error>,
}

/// Copies a response body: exactly `len` bytes when the length is known
/// (fewer is a failure), else until the reader ends.
fn copy_body(
    from: &mut impl Read,
    to: &mut impl Write,
    len: Option<u64>,
    buf: &mut [u8],
) -> Result<u64, Copy> {
    let mut sent = 0;
    loop {
        let want = match len {
            Some(len) if sent >= len => break,
            Some(len) => buf.len().min((len - sent) as usize),
            None => buf.len(),
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) if len.is_none() => return Ok(sent),
            Ok(0) => {
                let short =
                    io::Error::new(io::ErrorKind::UnexpectedEof, "upstream body ended early");
                return Err(Copy {
                    sent,
                    failure: Some(short),
                });
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(Copy {
                    sent,
                    failure: Some(err),
                });
            }
        };
        to.write_all(&buf[..n]).map_err(|_| Copy {
            sent,
            failure: None,
        })?;
        sent += n as u64;
    }
    // One more read lets ureq see the end of a sized body, which is what
    // returns the upstream connection to its pool.
    let _ = from.read(&mut buf[..1]);
    Ok(sent)
}

fn client_gone(err: io::Error) -> ProxyError {
    ProxyError::Internal(format!("client connection failed: {err}"))
}

impl From<http::Error> for ProxyError {
    fn from(err: http::Error) -> Self {
        ProxyError::BadRequest(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_naming_the_proxy_own_socket_are_recognised() {
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        for (host, port) in [("127.0.0.1", 8080), ("127.1", 8080), ("0.0.0.0", 8080)] {
            assert!(targets_this_proxy(host, port, local), "{host}:{port}");
        }
        for (host, port) in [("127.0.0.1", 8081), ("127.0.0.2", 8080), ("[::1]", 8080)] {
            assert!(!targets_this_proxy(host, port, local), "{host}:{port}");
        }
    }

    /// Takes at most `step` bytes per write, the way a socket with a full
    /// buffer and a send timeout does, and reports where each call ended.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        ends: Vec<usize>,
    }

    impl Write for Trickle {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(data)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.step;
            for buf in bufs {
                let n = buf.len().min(room);
                self.got.extend_from_slice(&buf[..n]);
                room -= n;
            }
            self.ends.push(self.got.len());
            Ok(self.step - room)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Fails every write, counting the attempts.
    struct Broken(usize);

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0 += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// After the client connection failed, flushing tries nothing more (it
    /// would wait out a second send timeout on a dead client).
    #[test]
    fn head_first_gives_up_after_a_failed_write() {
        let mut broken = Broken(0);
        let mut writer = HeadFirst::new(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), &mut broken);
        assert!(writer.write_all(b"body").is_err());
        assert!(writer.flush().is_err());
        assert!(writer.write_all(b"more").is_err());
        assert_eq!(broken.0, 1);
    }

    /// Head and body arrive whole and in order however the writes are cut:
    /// inside the head, right at its end, and inside the body; as plain
    /// pieces and as chunks.
    #[test]
    fn head_first_survives_partial_writes() {
        let head: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 7, 250, 1000, 1500, 10_000] {
            let mut out = Trickle {
                got: Vec::new(),
                step,
                ends: Vec::new(),
            };
            let mut writer = HeadFirst::new(head.clone(), &mut out);
            writer.write_all(&body[..1000]).expect("plain piece");
            let mut chunked = ChunkedWriter::new(writer);
            chunked.write_all(&body[1000..]).expect("chunked piece");
            chunked
                .finish()
                .expect("last chunk")
                .flush()
                .expect("flush");
            let mut expected = head.clone();
            expected.extend_from_slice(&body[..1000]);
            expected.extend_from_slice(b"7d0\r\n");
            expected.extend_from_slice(&body[1000..]);
            expected.extend_from_slice(b"\r\n0\r\n\r\n");
            assert!(out.got == expected, "step {step}");
            if step >= 1500 {
                assert_eq!(out.ends[0], step.min(2000), "head and body in one write");
            }
        }
    }
}
