//! The relay phase: an upstream response streamed back to the client,
//! with framing the client can trust. The head is rebuilt (hop-by-hop
//! headers out, `Via` in, the length or chunking actually used, the ending
//! every answer has) and goes out with the first piece of body in one
//! write when some of it is in, or at once when none is yet. A response is
//! never made to look complete when it is not: if the upstream fails
//! mid-body, the client connection is closed short of the declared length
//! or without the last chunk.

use std::io::{self, IoSlice, Read, Write};

use ureq::http::{self, StatusCode, response::Parts};

use crate::cache::{CacheError, FillFailure};
use crate::error::{ProxyError, TimeoutPhase};
use crate::http::body::{BodyFraming, ChunkedWriter, LimitedReader};
use crate::http::headers::HopByHop;
use crate::http::request::{RequestHead, Version};
use crate::http::response::{self, Head, Persistence};
use crate::server::conn::ClientConn;
use crate::server::finish::{self, Cut, Served, Shown};
use crate::transport;
use crate::transport::lent::LentBuffer;
use crate::upstream;

/// What the relay needs to know besides the response.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits<'a> {
    /// `max_body_bytes`, if any.
    pub max_body_bytes: Option<u64>,
    /// The proxy's `Via` pseudonym.
    pub via_name: &'a str,
    /// The proxy is draining: the connection closes after this answer.
    pub draining: bool,
    /// The `Cache-Status` value, when the cache took part (RFC 9211).
    pub cache_status: Option<&'a str>,
    /// The origin's authority, named in an error answered instead.
    pub authority: &'a str,
}

/// An upstream response's body: where to read it, and the length the
/// origin declared.
pub struct UpstreamBody<R> {
    pub reader: R,
    pub declared: Option<u64>,
}

impl UpstreamBody<ureq::BodyReader<'static>> {
    /// The body of a response from the upstream agent, whose head is
    /// `parts`.
    pub fn of(body: ureq::Body, parts: &Parts) -> Self {
        // ureq knows no length for a body it need not read, `Content-Length:
        // 0` included; that zero is still the origin's declared length (the
        // agent has checked the field), and sent on, it keeps the client's
        // connection, where chunked or until-close framing would not. Also
        // spelled `00`, or `0, 0` (a list of one value, RFC 9110 §8.6).
        let empty = || {
            let zero = |v: &http::HeaderValue| {
                v.as_bytes().split(|&b| b == b',').all(|member| {
                    let member = member.trim_ascii();
                    !member.is_empty() && member.iter().all(|&b| b == b'0')
                })
            };
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .filter(|v| zero(v))
                .map(|_| 0)
        };
        UpstreamBody {
            declared: body.content_length().or_else(empty),
            reader: body.into_reader(),
        }
    }
}

/// Writes the response head and streams the body to the client.
/// `body_read`: the whole request body was read, so the connection can
/// carry another request; if not, the head says `Connection: close`.
///
/// # Errors
/// `UpstreamBodyTooLarge` before anything is sent, when the origin declares
/// a body over `max_body_bytes`; the upstream failure, when the body failed
/// before any of it was read and the head still waited for it (a malformed
/// first chunk). Failures once the head went out are reported in `Served`.
pub fn relay_response<R: Read>(
    conn: &mut ClientConn,
    head: &RequestHead,
    response: http::Response<UpstreamBody<R>>,
    body_read: bool,
    request_id: &str,
    limits: &RelayLimits<'_>,
    buf: &mut [u8],
) -> Result<Served, ProxyError> {
    let (parts, body) = response.into_parts();
    let framing = response_framing(head, parts.status, body.declared, limits.max_body_bytes)?;
    let persistence = match framing {
        BodyFraming::UntilClose => Persistence::Close,
        _ => finish::persistence(head, body_read, limits.draining),
    };
    let out = response_head(&parts, framing, limits, request_id, persistence);
    let mut client = HeadFirst::new(out, &mut *conn);
    if framing != BodyFraming::Empty && !transport::input_waiting() {
        // None of the body is in yet: the head goes now rather than wait
        // for it, which may take the origin a while (a report it builds,
        // events it streams). A failed write is found by the copy.
        client.send_head();
    }
    let mut reader = body.reader;
    let limit = limits.max_body_bytes.unwrap_or(u64::MAX);
    let copied = match framing {
        BodyFraming::Empty => Ok(0),
        BodyFraming::Length(len) => copy_body(&mut reader, &mut client, Some(len), buf),
        BodyFraming::UntilClose => copy_body(
            &mut LimitedReader::new(reader, limit),
            &mut client,
            None,
            buf,
        ),
        BodyFraming::Chunked => {
            let mut chunked = ChunkedWriter::new(&mut client);
            copy_body(
                &mut LimitedReader::new(reader, limit),
                &mut chunked,
                None,
                buf,
            )
            .and_then(|n| {
                chunked.finish().map(|_| n).map_err(|_| CopyFailure {
                    sent: n,
                    failure: None,
                })
            })
        }
    };
    let copied = match copied {
        // The head waited for the first piece of body, which never came:
        // the client is told plainly, rather than given a head and a close.
        Err(CopyFailure {
            sent: 0,
            failure: Some(err),
        }) if client.untouched() => {
            return Err(body_failure(err, limits.authority));
        }
        copied => copied,
    };
    let flushed = client.flush();
    drop(client);
    let mut served = Served {
        status: parts.status.as_u16(),
        bytes: 0,
        error: None,
        reusable: persistence.is_kept(),
        cache: None,
        own: false,
        cut: None,
        shown: Shown::of(&parts.headers, transport::attempt().origin.map(|o| o.ip())),
    };
    match copied {
        Ok(n) => served.bytes = n,
        Err(CopyFailure { sent, failure }) => {
            // Closing now is what tells the client the body is incomplete;
            // where the body runs to the close, only a reset does.
            if framing == BodyFraming::UntilClose && failure.is_some() {
                conn.end_with_reset();
            }
            served.bytes = sent;
            served.reusable = false;
            served.cut = Some(if failure.is_none() {
                Cut::ClientLeft
            } else {
                Cut::Failed
            });
            served.error = failure.map(|err| body_failure(err, limits.authority).proxy_status());
        }
    }
    if flushed.is_err() {
        served.reusable = false;
        served.cut = served.cut.or(Some(Cut::ClientLeft));
    }
    Ok(served)
}

/// What a body that failed is answered or logged as: a fill read through
/// the cache that failed or stalled as what it was, else as the origin's
/// I/O error.
fn body_failure(err: io::Error, authority: &str) -> ProxyError {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CacheError>())
    {
        Some(failure) => fill_failure(failure, authority),
        // In a body, a close is always after the head: incomplete.
        None if matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        ) =>
        {
            ProxyError::UpstreamIncomplete(format!(
                "the response from {authority} ended before it was complete"
            ))
        }
        None => upstream::map_io_error(err, authority),
    }
}

/// A cache fill that failed, as what it was: the origin stalled, or its
/// answer ended early; anything else is the proxy's own failure. For the
/// request that fills and for those reading the fill alike.
pub fn fill_failure(failure: &CacheError, authority: &str) -> ProxyError {
    match failure {
        CacheError::FillFailed(FillFailure::Stalled) => {
            ProxyError::UpstreamTimeout(TimeoutPhase::Response)
        }
        CacheError::FillFailed(FillFailure::Upstream) => ProxyError::UpstreamIncomplete(format!(
            "the response from {authority} ended before it was complete"
        )),
        other => ProxyError::Internal(other.to_string()),
    }
}

/// Passes the origin's interim (1xx) responses on before the final one
/// (RFC 9110 §15.2: a proxy forwards those it did not ask for), rebuilt
/// without hop-by-hop fields, and without the framing fields a 1xx must
/// not carry (RFC 9110 §8.6, RFC 9112 §6.1), which a client could take
/// as the length of a body; never to an HTTP/1.0 client, which cannot
/// take them. A failed write is left to the relay to find. Rare, and with
/// a 2 KiB parse table: kept out of the relay's frame.
#[cold]
#[inline(never)]
pub fn send_interim(conn: &mut ClientConn, head: &RequestHead, interim: &[Vec<u8>]) {
    if head.version != Version::Http11 {
        return;
    }
    for raw in interim {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut fields);
        let (Ok(httparse::Status::Complete(_)), Some(status)) = (parsed.parse(raw), parsed.code)
        else {
            continue;
        };
        let mut out = Vec::with_capacity(raw.len());
        response::write_status_line(&mut out, status, parsed.reason.unwrap_or(""));
        let hop = HopByHop::from_connection(
            parsed
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        );
        for field in parsed.headers.iter() {
            let framing = field.name.eq_ignore_ascii_case("content-length")
                || field.name.eq_ignore_ascii_case("transfer-encoding");
            if !framing && !hop.contains(field.name) {
                response::write_header(&mut out, field.name, field.value);
            }
        }
        out.extend_from_slice(b"\r\n");
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

/// How the body goes to the client: RFC 9110 §6.4.1 (HEAD, 1xx, 204, 304
/// have none), the origin's length when it gave one, else chunked for
/// HTTP/1.1 clients and until-close for HTTP/1.0 ones.
///
/// # Errors
/// `UpstreamBodyTooLarge` for a declared length over `max_body_bytes`.
pub fn response_framing(
    head: &RequestHead,
    status: StatusCode,
    content_length: Option<u64>,
    max_body_bytes: Option<u64>,
) -> Result<BodyFraming, ProxyError> {
    let status = status.as_u16();
    if head.method == "HEAD" || status < 200 || status == 204 || status == 304 {
        return Ok(BodyFraming::Empty);
    }
    if let Some(len) = content_length {
        if let Some(limit) = max_body_bytes.filter(|limit| len > *limit) {
            return Err(ProxyError::UpstreamBodyTooLarge { limit });
        }
        return Ok(BodyFraming::Length(len));
    }
    Ok(if head.version == Version::Http11 {
        BodyFraming::Chunked
    } else {
        BodyFraming::UntilClose
    })
}

/// The head sent to the client: the origin's status and end-to-end
/// headers (RFC 9110 §7.6.1), the framing actually used, our `Via`.
fn response_head(
    parts: &Parts,
    framing: BodyFraming,
    limits: &RelayLimits<'_>,
    request_id: &str,
    persistence: Persistence,
) -> Vec<u8> {
    let mut out = Head::with_reason(
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
    );
    let hop = HopByHop::from_connection(
        parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let bodiless = framing == BodyFraming::Empty;
    // A 204 has no Content-Length (RFC 9110 §8.6), whatever the origin said;
    // a bodiless answer to HEAD, or a 304, keeps the origin's.
    let lengthless = parts.status == StatusCode::NO_CONTENT;
    for (name, value) in &parts.headers {
        let name = name.as_str();
        // Content-Length is rewritten below from the framing actually used.
        // A Cache-Status from further up stays: RFC 9211 §2 lists each
        // cache on the way, ours last.
        if hop.contains(name)
            || (name == "content-length" && (!bodiless || lengthless))
            || name == "x-request-id"
        {
            continue;
        }
        out.header(name, value.as_bytes());
    }
    match framing {
        BodyFraming::Length(len) => {
            out.header("Content-Length", itoa::Buffer::new().format(len).as_bytes());
        }
        BodyFraming::Chunked => {
            out.header("Transfer-Encoding", b"chunked");
        }
        BodyFraming::Empty | BodyFraming::UntilClose => {}
    }
    // The protocol the response came in (RFC 9110 §7.6.3).
    let received: &[u8] = if parts.version == http::Version::HTTP_10 {
        b"1.0 "
    } else {
        b"1.1 "
    };
    out.header_parts("Via", &[received, limits.via_name.as_bytes()]);
    if let Some(status) = limits.cache_status {
        out.header("Cache-Status", status.as_bytes());
    }
    out.finish(request_id, persistence)
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
    /// Nothing was written yet, nor tried.
    fn untouched(&self) -> bool {
        !self.failed && self.head_sent == 0 && !self.head.is_empty()
    }

    /// Sends the head now, without waiting for a piece of body.
    fn send_head(&mut self) {
        if self.failed || self.head_sent == self.head.len() {
            return;
        }
        match self.conn.write_all(&self.head[self.head_sent..]) {
            Ok(()) => {
                self.head = Vec::new();
                self.head_sent = 0;
            }
            Err(_) => self.failed = true,
        }
    }

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
struct CopyFailure {
    sent: u64,
    failure: Option<io::Error>,
}

/// Copies a response body: exactly `len` bytes when the length is known
/// (fewer is a failure), else until the reader ends. A body longer than
/// `buf` moves through a lent buffer, in pieces of up to 64 KiB: at once
/// when its length says so, else from the first read that fills `buf`.
fn copy_body(
    from: &mut impl Read,
    to: &mut impl Write,
    len: Option<u64>,
    buf: &mut [u8],
) -> Result<u64, CopyFailure> {
    let mut lent = len
        .is_some_and(|len| len > buf.len() as u64)
        .then(LentBuffer::lend);
    let mut sent = 0;
    loop {
        let piece = match lent.as_deref_mut() {
            Some(lent) => lent,
            None => &mut *buf,
        };
        let want = match len {
            Some(len) if sent >= len => break,
            Some(len) => piece.len().min((len - sent) as usize),
            None => piece.len(),
        };
        let n = match from.read(&mut piece[..want]) {
            Ok(0) if len.is_none() => return Ok(sent),
            Ok(0) => {
                let short =
                    io::Error::new(io::ErrorKind::UnexpectedEof, "upstream body ended early");
                return Err(CopyFailure {
                    sent,
                    failure: Some(short),
                });
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(CopyFailure {
                    sent,
                    failure: Some(err),
                });
            }
        };
        to.write_all(&piece[..n]).map_err(|_| CopyFailure {
            sent,
            failure: None,
        })?;
        sent += n as u64;
        if lent.is_none() && n == buf.len() {
            lent = Some(LentBuffer::lend());
        }
    }
    // One more read lets ureq see the end of a sized body, which is what
    // returns the upstream connection to its pool.
    let _ = from.read(&mut buf[..1]);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::lent::LENT_BYTES;

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

    /// Only a head not written at all, nor tried, may give way to an error
    /// answer: not one written in pieces, sent early, or whose write failed.
    #[test]
    fn a_head_is_untouched_only_before_any_write() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n".to_vec();
        let mut out = Trickle {
            got: Vec::new(),
            step: 10,
            ends: Vec::new(),
        };
        let writer = HeadFirst::new(head.clone(), &mut out);
        assert!(writer.untouched());
        let mut cut = HeadFirst::new(head.clone(), &mut out);
        cut.write_all(b"body").expect("written 10 bytes at a time");
        assert!(!cut.untouched());
        let mut early = HeadFirst::new(head.clone(), Vec::new());
        early.send_head();
        assert!(!early.untouched());
        let mut broken = Broken(0);
        let mut failed = HeadFirst::new(head, &mut broken);
        assert!(failed.write(b"body").is_err());
        assert!(!failed.untouched());
    }

    #[test]
    fn a_failed_fill_is_answered_as_what_it_was() {
        let as_read = |failure: FillFailure| io::Error::other(CacheError::FillFailed(failure));
        let status = |err: ProxyError| err.proxy_status();
        assert_eq!(
            status(body_failure(as_read(FillFailure::Stalled), "h")),
            "http_response_timeout"
        );
        assert_eq!(
            status(body_failure(as_read(FillFailure::Upstream), "h")),
            "http_response_incomplete"
        );
        assert_eq!(
            status(body_failure(as_read(FillFailure::MemoryFull), "h")),
            "proxy_internal_error"
        );
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "cut");
        assert_eq!(status(body_failure(eof, "h")), "http_response_incomplete");
    }

    /// Reads from `data` at most as much as asked, and notes how much was asked.
    struct Asked<'a> {
        data: &'a [u8],
        asked: Vec<usize>,
    }

    impl Read for Asked<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.asked.push(out.len());
            let n = out.len().min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_long_body_moves_in_lent_pieces_and_a_short_one_through_the_buffer() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = [0u8; 1024];
        for len in [None, Some(body.len() as u64)] {
            let mut from = Asked {
                data: &body,
                asked: Vec::new(),
            };
            let mut to = Vec::new();
            let sent = copy_body(&mut from, &mut to, len, &mut buf);
            assert_eq!(sent.ok(), Some(body.len() as u64));
            assert!(to == body, "{len:?}");
            let first_lent = usize::from(len.is_none());
            assert!(from.asked[first_lent..4].iter().all(|&n| n == LENT_BYTES));
        }
        let short = &body[..700];
        let mut from = Asked {
            data: short,
            asked: Vec::new(),
        };
        let mut to = Vec::new();
        assert_eq!(
            copy_body(&mut from, &mut to, None, &mut buf).ok(),
            Some(700)
        );
        assert!(to == short);
        assert!(
            from.asked.iter().all(|&n| n <= buf.len()),
            "{:?}",
            from.asked
        );
    }
}
