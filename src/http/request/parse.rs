//! Reading a request head with httparse under size limits: the request
//! line judged as it arrives (so a long target is a 414 however the bytes
//! are split), CRLF-only line ends, the field grammar of `http::field`, and
//! the `Host` rules. Produces an owned `RequestHead`; decides no policy.

use std::mem::MaybeUninit;

use bytes::Bytes;

use super::{Header, RequestHead, Version};
use crate::error::ProxyError;
use crate::http::field::{check_field_line, has_bare_lf, is_token_byte, is_value};

/// Header lines httparse is given room for; more is treated as an oversized head.
const MAX_HEADERS: usize = 128;

/// Room for method, version and spaces when a request line is sized up before
/// its target can be measured exactly.
const REQUEST_LINE_SLACK: usize = 64;

/// Most empty lines taken before the request line. RFC 9112 §2.2 asks a
/// server to ignore at least one (a client may send a stray CRLF after a
/// body); more are no client's doing, and each one a client trickles in
/// would have the whole head parsed again.
const MAX_EMPTY_LINES: usize = 4;

/// The 400 message for a line ended by LF alone.
const BARE_LF: &str = "bare LF in request head (lines must end in CRLF)";

/// Limits applied while a head is read.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest whole head (request line + headers + blank line).
    pub max_header_bytes: usize,
    /// Longest request target.
    pub max_url_bytes: usize,
}

/// Outcome of looking at the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// A whole head; `head_len` bytes of the buffer belong to it.
    Complete { head: RequestHead, head_len: usize },
    /// More bytes are needed.
    Partial,
}

/// Parses the head at the start of `buf`.
///
/// Leading empty lines (CRLF) are skipped (RFC 9112 §2.2); bytes after the
/// head (a body or a pipelined request) are not counted in `head_len`.
///
/// # Errors
/// `HeadTooLarge` when no complete head fits in `limits.max_header_bytes`,
/// `TooManyHeaderLines` past 128 header lines, `UrlTooLong` when the target is over
/// `limits.max_url_bytes`, `BadRequest` for anything malformed: bad request line,
/// a bare LF, obs-fold, whitespace before a colon, NUL or non-ASCII bytes in the
/// target, a missing, repeated or malformed `Host` (RFC 9112 §3.2).
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Parsed, ProxyError> {
    let url_too_long = || ProxyError::UrlTooLong {
        limit: limits.max_url_bytes,
    };
    let head_too_large = || ProxyError::HeadTooLarge {
        limit: limits.max_header_bytes,
    };
    // Bytes past the head limit are never looked at, and the request line is
    // judged as it arrives: so the answer depends only on the bytes, not on
    // how they were split into reads.
    let buf = &buf[..buf.len().min(limits.max_header_bytes)];
    check_line_so_far(buf, limits)?;
    // More is needed, unless the head has filled all the room it has.
    let partial = || {
        if buf.len() >= limits.max_header_bytes {
            Err(head_too_large())
        } else {
            Ok(Parsed::Partial)
        }
    };

    // Left uninitialised: httparse writes the slots it fills, and zeroing
    // 128 of them on every request would cost more than the parse.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(head_len)) => {
            let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version)
            else {
                return Err(bad("incomplete request line"));
            };
            if target.len() > limits.max_url_bytes {
                return Err(url_too_long());
            }
            // Judged on the complete head only, so that a prefix never gets
            // a different verdict from the whole (see `check_line_so_far`).
            if has_bare_lf(&buf[..head_len]) {
                return Err(bad(BARE_LF));
            }
            let head = owned_head(&buf[..head_len], method, target, minor, req.headers)?;
            head.check_host()?;
            Ok(Parsed::Complete { head, head_len })
        }
        Ok(httparse::Status::Partial) => partial(),
        Err(httparse::Error::TooManyHeaders) => {
            Err(ProxyError::TooManyHeaderLines { limit: MAX_HEADERS })
        }
        Err(httparse::Error::Version) => match as_http_1_1(buf) {
            Some(copy) => parse_head(&copy, limits),
            // httparse gives up on a version before its line ends; what
            // has arrived of it passed `check_line_so_far`.
            None if !request_line_ended(buf) => partial(),
            None => Err(bad("unsupported http version")),
        },
        Err(err) => Err(bad(&describe(buf, err))),
    }
}

/// Checks the request line received so far. A target that grows past
/// `max_url_bytes` (or a line past that plus some slack) is refused while it is
/// still arriving, so the client gets a 414 rather than a 431 once the head
/// buffer fills up; the line is then judged as it stood at that byte, and one
/// already malformed there is a 400.
fn check_line_so_far(buf: &[u8], limits: &HeadLimits) -> Result<(), ProxyError> {
    let (start, line, complete) = first_line(buf);
    if start > 2 * MAX_EMPTY_LINES {
        return Err(bad("too many empty lines before the request line"));
    }
    if complete && line.is_empty() {
        // Empty CRLF lines were skipped: this one ended in a bare LF.
        return Err(bad(BARE_LF));
    }
    let target_cut = line.iter().position(|&b| b == b' ').and_then(|space| {
        let start = space + 1;
        let target_len = line[start..]
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(line.len() - start);
        (target_len > limits.max_url_bytes).then(|| start + limits.max_url_bytes + 1)
    });
    let line_cut = (line.len() > limits.max_url_bytes.saturating_add(REQUEST_LINE_SLACK))
        .then(|| limits.max_url_bytes.saturating_add(REQUEST_LINE_SLACK) + 1);
    let Some(cut) = target_cut.into_iter().chain(line_cut).min() else {
        // A CR that arrived without its LF yet is no part of the version.
        let line = if complete {
            line
        } else {
            line.strip_suffix(b"\r").unwrap_or(line)
        };
        return check_request_line(line, complete).map_or(Ok(()), |fault| Err(fault.into_error()));
    };
    let judged = &line[..cut];
    let judged = judged.strip_suffix(b"\r").unwrap_or(judged);
    Err(match check_request_line(judged, false) {
        Some(fault) => fault.into_error(),
        None => ProxyError::UrlTooLong {
            limit: limits.max_url_bytes,
        },
    })
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::BadRequest(msg.to_owned())
}

/// Copies a parsed head, applying the checks httparse leaves to us. The
/// header lines are copied as one piece, `raw` (the head's bytes), that
/// they all share.
fn owned_head(
    raw: &[u8],
    method: &str,
    target: &str,
    minor: u8,
    headers: &[httparse::Header<'_>],
) -> Result<RequestHead, ProxyError> {
    // httparse lets UTF-8 through in the target; DESIGN wants 400 for any
    // non-ASCII byte (RFC 9112 §3.2: the target is visible ASCII).
    if !is_target(target.as_bytes()) {
        return Err(bad("invalid byte in request target"));
    }
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(bad("unsupported http version")),
    };
    let shared = if headers.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(raw)
    };
    // httparse's names and values borrow from `raw`: where each starts in
    // it is the distance between the addresses. (One that did not would be
    // copied on its own.)
    let slice = |part: &[u8]| {
        let start = (part.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
        match start.checked_add(part.len()) {
            Some(end) if end <= raw.len() => shared.slice(start..end),
            _ => Bytes::copy_from_slice(part),
        }
    };
    let mut owned = Vec::with_capacity(headers.len());
    for h in headers {
        if h.name.is_empty() || !h.name.bytes().all(is_token_byte) {
            return Err(bad("invalid byte in header name"));
        }
        if !is_value(h.value) {
            return Err(bad("invalid byte in header value"));
        }
        owned.push(Header::shared(slice(h.name.as_bytes()), slice(h.value)));
    }
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        headers: owned,
    })
}

/// Whether every byte is visible ASCII (RFC 9112 §3.2, RFC 3986): no
/// controls, spaces or bytes >= 0x80. Without an early exit, so that the
/// compiler checks many bytes at a time: every target is looked at.
fn is_target(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |all, &b| all & (0x21..=0x7e).contains(&b))
}

/// Whether `buf` holds the whole request line: a line end after the empty
/// lines a request may start with (RFC 9112 §2.2). A line that ended in a
/// bare LF counts as not ended: it is for the parser to refuse.
pub fn request_line_ended(buf: &[u8]) -> bool {
    let (_, line, complete) = first_line(buf);
    complete && !line.is_empty()
}

/// Splits off the request line after any leading empty CRLF lines (RFC 9112
/// §2.2; a bare LF there is left in the line, which then fails):
/// (offset of the line, the line without its `\n`, whether the `\n` arrived).
fn first_line(buf: &[u8]) -> (usize, &[u8], bool) {
    let mut start = 0;
    while buf.get(start..start + 2) == Some(b"\r\n") {
        start += 2;
    }
    let rest = buf.get(start..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (start, &rest[..i], true),
        None => (start, rest, false),
    }
}

/// Finds what made httparse give up, to tell the client in words.
fn describe(buf: &[u8], err: httparse::Error) -> String {
    let (start, line, complete) = first_line(buf);
    if let Some(LineFault::Malformed(msg)) = check_request_line(line, complete) {
        return msg.to_owned();
    }
    if complete {
        let mut rest = &buf[start + line.len() + 1..];
        loop {
            let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            if complete && content.is_empty() {
                break;
            }
            if let Some(msg) = check_field_line(content, complete) {
                return msg.to_owned();
            }
            if !complete {
                break;
            }
            rest = &rest[line.len() + 1..];
        }
    }
    err.to_string().to_ascii_lowercase()
}

/// What is wrong with a request line (possibly still arriving), if anything.
/// Every request line is judged, so its spaces are found once and each
/// part looked at once.
fn check_request_line(line: &[u8], complete: bool) -> Option<LineFault> {
    let malformed = |msg| Some(LineFault::Malformed(msg));
    let line = if complete {
        line.strip_suffix(b"\r").unwrap_or(line)
    } else {
        line
    };
    let mut spaces = memchr::memchr_iter(b' ', line);
    let (first, second, third) = (spaces.next(), spaces.next(), spaces.next());
    let part = |start: usize, end: Option<usize>| &line[start..end.unwrap_or(line.len())];
    let method = part(0, first);
    if !method.iter().copied().all(is_token_byte)
        || (method.is_empty() && (complete || first.is_some()))
    {
        return malformed("invalid method in request line");
    }
    let Some(first) = first else {
        return complete.then_some(LineFault::Malformed("malformed request line"));
    };
    let target = part(first + 1, second);
    if !is_target(target) {
        return malformed("invalid byte in request target");
    }
    if target.is_empty() {
        // Empty so far is fine while the line is arriving and nothing follows.
        return (complete || second.is_some())
            .then_some(LineFault::Malformed("malformed request line"));
    }
    let Some(second) = second else {
        return complete.then_some(LineFault::Malformed("malformed request line"));
    };
    if third.is_some() {
        return malformed("malformed request line");
    }
    check_version(part(second + 1, None), complete)
}

/// A request line that cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFault {
    /// Not a request line (400), in these words.
    Malformed(&'static str),
    /// A well-formed request line in an HTTP major version other than 1
    /// (505, RFC 9110 §15.6.6).
    Version { major: u8, minor: u8 },
}

impl LineFault {
    fn into_error(self) -> ProxyError {
        match self {
            LineFault::Malformed(msg) => bad(msg),
            LineFault::Version { major, minor } => ProxyError::VersionNotSupported { major, minor },
        }
    }
}

/// Judges a request line's version, or as much of it as has arrived:
/// `HTTP/` DIGIT `.` DIGIT (RFC 9112 §2.3). Any HTTP/1.x is served: a
/// minor version above 1 as HTTP/1.1, the highest spoken here (RFC 9110
/// §2.5). Another major version is well formed but refused.
fn check_version(version: &[u8], complete: bool) -> Option<LineFault> {
    const SHAPE: &[u8; 8] = b"HTTP/0.0";
    let fits = version.len() <= SHAPE.len()
        && version.iter().zip(SHAPE).all(|(&b, &shape)| match shape {
            b'0' => b.is_ascii_digit(),
            _ => b == shape,
        });
    if !fits || (complete && version.len() < SHAPE.len()) {
        return Some(LineFault::Malformed("unsupported http version"));
    }
    match version {
        [.., major, b'.', minor] if complete && *major != b'1' => Some(LineFault::Version {
            major: major - b'0',
            minor: minor - b'0',
        }),
        _ => None,
    }
}

/// A copy of `buf` whose request line says HTTP/1.1 where it says a later
/// HTTP/1.x, for httparse, which reads only 1.0 and 1.1 (see
/// [`check_version`]). `None` when the line says something else.
fn as_http_1_1(buf: &[u8]) -> Option<Vec<u8>> {
    let (start, line, _) = first_line(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version_at = memchr::memrchr(b' ', line)? + 1;
    match &line[version_at..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            let mut copy = buf.to_vec();
            copy[start + version_at + 7] = b'1';
            Some(copy)
        }
        _ => None,
    }
}
