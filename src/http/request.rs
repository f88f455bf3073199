//! Reading a request head with httparse under size limits, and working out
//! its body framing (RFC 9112 §6). No policy: whether the request is allowed
//! is decided by the worker and `access`.

use std::mem::MaybeUninit;

use crate::error::ProxyError;

/// Header lines httparse is given room for; more is treated as an oversized head.
const MAX_HEADERS: usize = 128;

/// Room for method, version and spaces when a request line is sized up before
/// its target can be measured exactly.
const REQUEST_LINE_SLACK: usize = 64;

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One header line as received: name as sent, value as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// An owned, parsed request head. Header order and repeats are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<Header>,
}

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

/// How the request body is delimited (RFC 9112 §6.3).
///
/// `Content-Length: 0` is reported as `Empty`, so `Length(n)` always has `n > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The form of the request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`: a request for the proxy itself.
    Origin,
    /// `http://host/path`: a request to forward.
    Absolute,
    /// `host:port`: a CONNECT target.
    Authority,
    /// `*`: server-wide OPTIONS.
    Asterisk,
}

/// Parses the head at the start of `buf`.
///
/// Leading empty lines are skipped (RFC 9112 §2.2); bytes after the head (a
/// body or a pipelined request) are not counted in `head_len`.
///
/// # Errors
/// `HeadTooLarge` when no complete head fits in `limits.max_header_bytes` (or there
/// are too many header lines), `UrlTooLong` when the target is over
/// `limits.max_url_bytes`, `BadRequest` for anything malformed: bad request line,
/// obs-fold, whitespace before a colon, NUL or non-ASCII bytes in the target.
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
            let head = owned_head(method, target, minor, req.headers)?;
            Ok(Parsed::Complete { head, head_len })
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_header_bytes {
                return Err(head_too_large());
            }
            Ok(Parsed::Partial)
        }
        Err(httparse::Error::TooManyHeaders) => Err(head_too_large()),
        Err(err) => Err(bad(&describe(buf, err))),
    }
}

/// Checks the request line received so far. A target that grows past
/// `max_url_bytes` (or a line past that plus some slack) is refused while it is
/// still arriving, so the client gets a 414 rather than a 431 once the head
/// buffer fills up; the line is then judged as it stood at that byte, and one
/// already malformed there is a 400.
fn check_line_so_far(buf: &[u8], limits: &HeadLimits) -> Result<(), ProxyError> {
    let (_, line, complete) = first_line(buf);
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
        return check_request_line(line, complete).map_or(Ok(()), |msg| Err(bad(msg)));
    };
    let judged = &line[..cut];
    let judged = judged.strip_suffix(b"\r").unwrap_or(judged);
    Err(match check_request_line(judged, false) {
        Some(msg) => bad(msg),
        None => ProxyError::UrlTooLong {
            limit: limits.max_url_bytes,
        },
    })
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::BadRequest(msg.to_owned())
}

/// Copies a parsed head, applying the checks httparse leaves to us.
fn owned_head(
    method: &str,
    target: &str,
    minor: u8,
    headers: &[httparse::Header<'_>],
) -> Result<RequestHead, ProxyError> {
    // httparse lets UTF-8 through in the target; DESIGN wants 400 for any
    // non-ASCII byte (RFC 9112 §3.2: the target is visible ASCII).
    if !target.bytes().all(is_target_byte) {
        return Err(bad("invalid byte in request target"));
    }
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(bad("unsupported http version")),
    };
    let mut owned = Vec::with_capacity(headers.len());
    for h in headers {
        if h.name.is_empty() || !h.name.bytes().all(is_token_byte) {
            return Err(bad("invalid byte in header name"));
        }
        if !h.value.iter().copied().all(is_value_byte) {
            return Err(bad("invalid byte in header value"));
        }
        owned.push(Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        });
    }
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        headers: owned,
    })
}

/// Visible ASCII (RFC 9112 §3.2, RFC 3986): no controls, spaces or bytes >= 0x80.
fn is_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `field-vchar`, SP and HT (RFC 9110 §5.5); obs-text is kept as bytes.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Splits off the request line after any leading empty lines (RFC 9112 §2.2):
/// (offset of the line, the line without its `\n`, whether the `\n` arrived).
fn first_line(buf: &[u8]) -> (usize, &[u8], bool) {
    let mut start = 0;
    loop {
        match buf.get(start..) {
            Some([b'\n', ..]) => start += 1,
            Some([b'\r', b'\n', ..]) => start += 2,
            _ => break,
        }
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
    if let Some(msg) = check_request_line(line, complete) {
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
            if let Some(msg) = check_header_line(content, complete) {
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
fn check_request_line(line: &[u8], complete: bool) -> Option<&'static str> {
    let line = if complete {
        line.strip_suffix(b"\r").unwrap_or(line)
    } else {
        line
    };
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let followed = parts.clone().next().is_some();
    if !method.iter().copied().all(is_token_byte) || (method.is_empty() && (complete || followed)) {
        return Some("invalid method in request line");
    }
    let Some(target) = parts.next() else {
        return complete.then_some("malformed request line");
    };
    if !target.iter().copied().all(is_target_byte) {
        return Some("invalid byte in request target");
    }
    if target.is_empty() {
        // Empty so far is fine while the line is arriving and nothing follows.
        let more = parts.clone().next().is_some();
        return (complete || more).then_some("malformed request line");
    }
    let Some(version) = parts.next() else {
        return complete.then_some("malformed request line");
    };
    if parts.next().is_some() {
        return Some("malformed request line");
    }
    // RFC 9112 §2.3: we speak HTTP/1.0 and HTTP/1.1 only.
    let known = [&b"HTTP/1.1"[..], b"HTTP/1.0"];
    let plausible = if complete {
        known.contains(&version)
    } else {
        known.iter().any(|v| v.starts_with(version))
    };
    (!plausible).then_some("unsupported http version")
}

/// What is wrong with one header line (without its line ending), if anything.
fn check_header_line(line: &[u8], complete: bool) -> Option<&'static str> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obs-fold is rejected in requests.
        return Some("header line starts with whitespace (obs-fold)");
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        if !line.iter().copied().all(is_token_byte) {
            return Some("invalid byte in header name");
        }
        return complete.then_some("header line without a colon");
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Some("empty header name");
    }
    // RFC 9112 §5.1: no whitespace between field name and colon.
    if matches!(name.last(), Some(b' ' | b'\t')) {
        return Some("whitespace before colon in header line");
    }
    if !name.iter().copied().all(is_token_byte) {
        return Some("invalid byte in header name");
    }
    if !value.iter().copied().all(is_value_byte) {
        return Some("invalid byte in header value");
    }
    None
}

/// The elements of a comma-separated list, trimmed, empties dropped (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// A Content-Length element: digits only, no sign or spaces (RFC 9110 §8.6).
fn parse_length(element: &[u8]) -> Result<u64, ProxyError> {
    if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
        return Err(bad("invalid content-length"));
    }
    element
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| bad("content-length out of range"))
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// Every value of a header, in order, by case-insensitive name.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// The body framing, rejecting anything a smuggler could exploit.
    ///
    /// # Errors
    /// `BadRequest` for `Content-Length` together with `Transfer-Encoding`, differing
    /// or malformed `Content-Length` values, and any transfer coding other than a
    /// single final `chunked`.
    pub fn body_framing(&self) -> Result<BodyFraming, ProxyError> {
        let has_te = self.header("transfer-encoding").is_some();
        let has_cl = self.header("content-length").is_some();
        if has_te {
            // RFC 9112 §6.3 item 3 lets Transfer-Encoding win, but the pair is
            // the classic smuggling vector: refuse it (and the worker closes).
            if has_cl {
                return Err(bad("both content-length and transfer-encoding"));
            }
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            if self.version == Version::Http10 {
                return Err(bad("transfer-encoding in an http/1.0 request"));
            }
            // RFC 9112 §6.3 item 4: chunked must be the final coding; we decode
            // no other coding, so it must be the only one.
            let mut codings = self
                .header_values("transfer-encoding")
                .flat_map(list_elements);
            return match (codings.next(), codings.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(BodyFraming::Chunked),
                _ => Err(bad(
                    "unsupported transfer-encoding (only chunked is accepted)",
                )),
            };
        }
        if has_cl {
            // RFC 9112 §6.3 item 5: repeated values must all agree.
            let mut length = None;
            for value in self.header_values("content-length") {
                for element in value.split(|&b| b == b',') {
                    let n = parse_length(element.trim_ascii())?;
                    if length.is_some_and(|l| l != n) {
                        return Err(bad("differing content-length values"));
                    }
                    length = Some(n);
                }
            }
            return Ok(match length {
                Some(0) | None => BodyFraming::Empty,
                Some(n) => BodyFraming::Length(n),
            });
        }
        // RFC 9112 §6.3 item 7: a request without either has no body.
        Ok(BodyFraming::Empty)
    }

    /// Whether the client wants the connection kept open after this request
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        // RFC 9112 §9.3.
        if self.has_connection_option("close") {
            return false;
        }
        match self.version {
            Version::Http11 => true,
            Version::Http10 => self.has_connection_option("keep-alive"),
        }
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub fn expects_continue(&self) -> bool {
        // RFC 9110 §10.1.1: ignored in HTTP/1.0 requests.
        self.version == Version::Http11
            && self
                .header_values("expect")
                .flat_map(list_elements)
                .any(|e| e.eq_ignore_ascii_case(b"100-continue"))
    }

    /// The form of the request target.
    pub fn target_form(&self) -> TargetForm {
        // RFC 9112 §3.2.3: CONNECT always uses authority-form.
        if self.method == "CONNECT" {
            TargetForm::Authority
        } else if self.target.starts_with('/') {
            TargetForm::Origin
        } else if self.target == "*" {
            TargetForm::Asterisk
        } else {
            TargetForm::Absolute
        }
    }

    /// Whether any `Connection` header lists `option` (case-insensitive).
    fn has_connection_option(&self, option: &str) -> bool {
        self.header_values("connection")
            .flat_map(list_elements)
            .any(|t| t.eq_ignore_ascii_case(option.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 64 * 1024,
        max_url_bytes: 8 * 1024,
    };

    fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
        parse_head(buf, &LIMITS)
    }

    fn complete(buf: &[u8]) -> (RequestHead, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { head, head_len }) => (head, head_len),
            other => panic!("expected a complete head for {buf:?}, got {other:?}"),
        }
    }

    fn head(buf: &[u8]) -> RequestHead {
        complete(buf).0
    }

    /// The BadRequest message, or a panic naming what came back instead.
    fn bad_request(buf: &[u8]) -> String {
        match parse(buf) {
            Err(ProxyError::BadRequest(msg)) => msg,
            other => panic!("expected BadRequest for {buf:?}, got {other:?}"),
        }
    }

    fn framing(buf: &[u8]) -> Result<BodyFraming, ProxyError> {
        head(buf).body_framing()
    }

    fn framing_error(buf: &[u8]) -> String {
        match framing(buf) {
            Err(ProxyError::BadRequest(msg)) => msg,
            other => panic!("expected a framing error for {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn absolute_form_request_parses_with_headers_in_order() {
        let buf = b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\n";
        let (head, len) = complete(buf);
        assert_eq!(len, buf.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "http://example.com/a?b=1");
        assert_eq!(head.version, Version::Http11);
        let names: Vec<_> = head.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "X-Two", "x-two"]);
        assert_eq!(head.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(head.header("x-TWO"), Some(&b"1"[..]));
        assert_eq!(
            head.header_values("X-Two").collect::<Vec<_>>(),
            [b"1", b"2"]
        );
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.target_form(), TargetForm::Absolute);
    }

    #[test]
    fn head_fed_one_byte_at_a_time_is_partial_until_complete() {
        let head_bytes = b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
        let mut stream = head_bytes.to_vec();
        stream.extend_from_slice(b"helloGET http://h/next HTTP/1.1\r\n\r\n");
        for end in 0..head_bytes.len() {
            match parse(&stream[..end]) {
                Ok(Parsed::Partial) => {}
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
        for end in head_bytes.len()..=stream.len() {
            let (head, len) = complete(&stream[..end]);
            assert_eq!(len, head_bytes.len(), "prefix of {end} bytes");
            assert_eq!(head.body_framing().ok(), Some(BodyFraming::Length(5)));
        }
    }

    #[test]
    fn pipelined_request_starts_right_after_head_len() {
        let stream = b"GET http://a/ HTTP/1.1\r\n\r\nGET http://b/ HTTP/1.1\r\n\r\n";
        let (first, len) = complete(stream);
        assert_eq!(first.target, "http://a/");
        let (second, len2) = complete(&stream[len..]);
        assert_eq!(second.target, "http://b/");
        assert_eq!(len + len2, stream.len());
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let buf = b"\r\n\r\n\nGET http://h/ HTTP/1.1\r\n\r\n";
        let (head, len) = complete(buf);
        assert_eq!(head.target, "http://h/");
        assert_eq!(len, buf.len());
        assert!(matches!(parse(b"\r\n\r\n"), Ok(Parsed::Partial)));
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        // RFC 9112 §2.2 allows a lone LF as a line terminator.
        let (head, len) = complete(b"GET http://h/ HTTP/1.1\nHost: h\n\n");
        assert_eq!(head.header("host"), Some(&b"h"[..]));
        assert_eq!(len, 32);
    }

    #[test]
    fn http_1_0_is_accepted_and_other_versions_are_not() {
        assert_eq!(
            head(b"GET http://h/ HTTP/1.0\r\n\r\n").version,
            Version::Http10
        );
        for version in [
            "HTTP/2.0",
            "HTTP/1.2",
            "HTTP/0.9",
            "HTTP/1.10",
            "http/1.1",
            "HTTP/1",
        ] {
            let buf = format!("GET http://h/ {version}\r\n\r\n");
            let msg = bad_request(buf.as_bytes());
            assert!(msg.contains("version"), "{version}: {msg}");
        }
    }

    #[test]
    fn target_with_nul_control_space_or_non_ascii_is_rejected() {
        for target in [
            &b"http://h/\0"[..],
            b"http://h/\x01",
            b"http://h/\x7f",
            b"http://h/\xc3\xa9",
            b"http://h/\xff\xfe",
        ] {
            let mut buf = b"GET ".to_vec();
            buf.extend_from_slice(target);
            buf.extend_from_slice(b" HTTP/1.1\r\n\r\n");
            let msg = bad_request(&buf);
            assert_eq!(msg, "invalid byte in request target", "{target:?}");
        }
        assert_eq!(
            bad_request(b"GET http://h/a b HTTP/1.1\r\n\r\n"),
            "malformed request line"
        );
    }

    #[test]
    fn target_error_is_found_before_the_line_ends() {
        assert_eq!(
            bad_request(b"GET http://h/\0"),
            "invalid byte in request target"
        );
    }

    #[test]
    fn malformed_request_lines_are_rejected() {
        for buf in [
            &b"GET  http://h/ HTTP/1.1\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET http://h/\r\n\r\n",
            b" GET http://h/ HTTP/1.1\r\n\r\n",
            b"G(T http://h/ HTTP/1.1\r\n\r\n",
            b"GET http://h/ HTTP/1.1 extra\r\n\r\n",
        ] {
            bad_request(buf);
        }
    }

    #[test]
    fn invalid_utf8_in_a_header_value_is_kept_as_bytes() {
        let head = head(b"GET http://h/ HTTP/1.1\r\nX-Bin: a\xff\xfeb\r\n\r\n");
        assert_eq!(head.header("x-bin"), Some(&b"a\xff\xfeb"[..]));
    }

    #[test]
    fn header_values_lose_surrounding_whitespace_only() {
        let head = head(b"GET http://h/ HTTP/1.1\r\nX-A: \t a  b \t\r\nX-Empty:\r\n\r\n");
        assert_eq!(head.header("x-a"), Some(&b"a  b"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
    }

    #[test]
    fn nul_and_control_bytes_in_header_values_are_rejected() {
        for value in [&b"a\0b"[..], b"\0", b"a\x01b", b"a\x7fb", b"a\rb"] {
            let mut buf = b"GET http://h/ HTTP/1.1\r\nX-V: ".to_vec();
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                bad_request(&buf),
                "invalid byte in header value",
                "{value:?}"
            );
        }
    }

    #[test]
    fn obs_fold_is_rejected() {
        let msg = bad_request(b"GET http://h/ HTTP/1.1\r\nX-A: a\r\n  folded\r\n\r\n");
        assert!(msg.contains("obs-fold"), "{msg}");
        let msg = bad_request(b"GET http://h/ HTTP/1.1\r\nX-A: a\r\n\tfolded\r\n\r\n");
        assert!(msg.contains("obs-fold"), "{msg}");
        // Whitespace before the first header line is the same smuggling trick.
        let msg = bad_request(b"GET http://h/ HTTP/1.1\r\n Host: h\r\n\r\n");
        assert!(msg.contains("obs-fold"), "{msg}");
    }

    #[test]
    fn whitespace_before_colon_is_rejected() {
        for buf in [
            &b"GET http://h/ HTTP/1.1\r\nContent-Length : 5\r\n\r\n"[..],
            b"GET http://h/ HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n",
        ] {
            assert_eq!(bad_request(buf), "whitespace before colon in header line");
        }
    }

    #[test]
    fn header_line_without_a_colon_is_rejected() {
        assert_eq!(
            bad_request(b"GET http://h/ HTTP/1.1\r\nHost h\r\n\r\n"),
            "invalid byte in header name"
        );
        assert_eq!(
            bad_request(b"GET http://h/ HTTP/1.1\r\nHost\r\n\r\n"),
            "header line without a colon"
        );
    }

    #[test]
    fn invalid_header_names_are_rejected() {
        for name in [&b"X(A)"[..], b"X\0A", b"X\xc3\xa9", b"X/A", b""] {
            let mut buf = b"GET http://h/ HTTP/1.1\r\n".to_vec();
            buf.extend_from_slice(name);
            buf.extend_from_slice(b": v\r\n\r\n");
            let msg = bad_request(&buf);
            assert!(msg.contains("header name"), "{name:?}: {msg}");
        }
    }

    #[test]
    fn header_names_keep_their_case() {
        let head = head(b"GET http://h/ HTTP/1.1\r\nX-MiXeD-CaSe: v\r\n\r\n");
        assert_eq!(head.headers[0].name, "X-MiXeD-CaSe");
    }

    #[test]
    fn ten_thousand_headers_are_too_large() {
        let mut buf = b"GET http://h/ HTTP/1.1\r\n".to_vec();
        for i in 0..10_000 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let huge = HeadLimits {
            max_header_bytes: 10 * 1024 * 1024,
            max_url_bytes: 8192,
        };
        assert!(matches!(
            parse_head(&buf, &huge),
            Err(ProxyError::HeadTooLarge { .. })
        ));
        assert!(matches!(
            parse(&buf),
            Err(ProxyError::HeadTooLarge { limit: 65536 })
        ));
    }

    #[test]
    fn partial_head_that_fills_the_limit_is_too_large() {
        let limits = HeadLimits {
            max_header_bytes: 100,
            max_url_bytes: 50,
        };
        let mut buf = b"GET http://h/ HTTP/1.1\r\nX-Long: ".to_vec();
        buf.resize(99, b'a');
        assert!(matches!(parse_head(&buf, &limits), Ok(Parsed::Partial)));
        buf.push(b'a');
        assert!(matches!(
            parse_head(&buf, &limits),
            Err(ProxyError::HeadTooLarge { limit: 100 })
        ));
    }

    #[test]
    fn complete_head_over_the_limit_is_too_large_and_at_the_limit_is_fine() {
        let buf = b"GET http://h/ HTTP/1.1\r\nX-A: 0123456789\r\n\r\n";
        let exact = HeadLimits {
            max_header_bytes: buf.len(),
            max_url_bytes: 100,
        };
        // A head of exactly the limit arrives together with body bytes.
        let mut with_body = buf.to_vec();
        with_body.extend_from_slice(b"body");
        assert!(matches!(
            parse_head(&with_body, &exact),
            Ok(Parsed::Complete { head_len, .. }) if head_len == buf.len()
        ));
        let smaller = HeadLimits {
            max_header_bytes: buf.len() - 1,
            ..exact
        };
        assert!(matches!(
            parse_head(buf, &smaller),
            Err(ProxyError::HeadTooLarge { .. })
        ));
    }

    #[test]
    fn overlong_target_is_refused_before_the_head_completes() {
        let limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_url_bytes: 100,
        };
        let mut buf = b"GET http://h/".to_vec();
        buf.resize(100 + 64 + 1, b'a');
        assert!(matches!(
            parse_head(&buf, &limits),
            Err(ProxyError::UrlTooLong { limit: 100 })
        ));
        // Fed a byte at a time: Partial while short, then 414, never 431.
        let mut stream = b"GET http://h/".to_vec();
        stream.resize(10_000, b'a');
        let mut refused = false;
        for end in 0..stream.len() {
            match parse_head(&stream[..end], &limits) {
                Ok(Parsed::Partial) => assert!(!refused),
                Err(ProxyError::UrlTooLong { .. }) => refused = true,
                other => panic!("prefix of {end} bytes: {other:?}"),
            }
        }
        assert!(refused);
    }

    /// Found by the `parse_head` fuzz target: a malformed request line was a
    /// 400 while short and a 414 once past the URL limit's slack.
    #[test]
    fn malformed_long_request_line_is_a_bad_request_however_it_arrives() {
        let limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_url_bytes: 1,
        };
        let mut buf = vec![0u8; 50];
        buf.extend_from_slice(b"\xff//h/\0 HTTP/1.1\0\x0e1\r\nX-A: a\r\n\r\n\xaf\r\n");
        for end in 1..=buf.len() {
            assert!(
                matches!(
                    parse_head(&buf[..end], &limits),
                    Err(ProxyError::BadRequest(_))
                ),
                "prefix of {end} bytes"
            );
        }
    }

    /// Found by the `parse_head` fuzz target: a target over the limit was a
    /// 414 once its line was through but a 400 when a bad header had arrived
    /// too.
    #[test]
    fn long_target_is_too_long_whatever_follows_it() {
        let limits = HeadLimits {
            max_header_bytes: 32,
            max_url_bytes: 1,
        };
        let buf = b"T t: t";
        for end in 4..=buf.len() {
            assert!(
                matches!(
                    parse_head(&buf[..end], &limits),
                    Err(ProxyError::UrlTooLong { limit: 1 })
                ),
                "prefix of {end} bytes"
            );
        }
        let limits = HeadLimits {
            max_header_bytes: 48,
            max_url_bytes: 17,
        };
        let buf = b"GET http://exam~le.test/a?b=c HTTP/1.1\r\nHost: example.test\r\nUser-Agen\xc8: t\r\n\r\n";
        assert!(matches!(
            parse_head(buf, &limits),
            Err(ProxyError::UrlTooLong { limit: 17 })
        ));
    }

    /// Found by the `parse_head` fuzz target: a space before the method was
    /// a 400 alone but a 414 once a target over the limit followed it.
    #[test]
    fn line_starting_with_a_space_is_a_bad_request_however_long() {
        let limits = HeadLimits {
            max_header_bytes: 16,
            max_url_bytes: 1,
        };
        let buf = b" /`";
        for end in 1..=buf.len() {
            assert!(
                matches!(
                    parse_head(&buf[..end], &limits),
                    Err(ProxyError::BadRequest(_))
                ),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn target_just_over_the_limit_is_refused_once_the_line_is_complete() {
        let limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_url_bytes: 100,
        };
        let ok = format!("GET http://h/{} HTTP/1.1\r\n", "a".repeat(100 - 9));
        assert!(matches!(
            parse_head(ok.as_bytes(), &limits),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(
            parse_head(format!("{ok}\r\n").as_bytes(), &limits),
            Ok(Parsed::Complete { .. })
        ));
        let long = format!("GET http://h/{} HTTP/1.1\r\n", "a".repeat(101 - 9));
        assert!(matches!(
            parse_head(long.as_bytes(), &limits),
            Err(ProxyError::UrlTooLong { .. })
        ));
        assert!(matches!(
            parse_head(format!("{long}\r\n").as_bytes(), &limits),
            Err(ProxyError::UrlTooLong { .. })
        ));
    }

    #[test]
    fn no_length_or_encoding_means_no_body() {
        assert_eq!(
            framing(b"GET http://h/ HTTP/1.1\r\n\r\n").ok(),
            Some(BodyFraming::Empty)
        );
    }

    #[test]
    fn content_length_is_parsed_and_zero_means_empty() {
        let cases: [(&[u8], BodyFraming); 6] = [
            (b"Content-Length: 42", BodyFraming::Length(42)),
            (b"Content-Length: 0", BodyFraming::Empty),
            (b"content-length:  7 ", BodyFraming::Length(7)),
            (b"Content-Length: 42, 42", BodyFraming::Length(42)),
            (
                b"Content-Length: 5\r\nContent-Length: 5",
                BodyFraming::Length(5),
            ),
            (
                b"Content-Length: 18446744073709551615",
                BodyFraming::Length(u64::MAX),
            ),
        ];
        for (line, expected) in cases {
            let mut buf = b"POST http://h/ HTTP/1.1\r\n".to_vec();
            buf.extend_from_slice(line);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(framing(&buf).ok(), Some(expected), "{line:?}");
        }
    }

    #[test]
    fn smuggling_forms_of_content_length_are_rejected() {
        for line in [
            &b"Content-Length: 5\r\nContent-Length: 6"[..],
            b"Content-Length: 5, 6",
            b"Content-Length: +5",
            b"Content-Length: -5",
            b"Content-Length: 5 5",
            b"Content-Length: 0x10",
            b"Content-Length: 1e3",
            b"Content-Length:",
            b"Content-Length: 5,",
            b"Content-Length: 18446744073709551616",
            b"Content-Length: 99999999999999999999999",
        ] {
            let mut buf = b"POST http://h/ HTTP/1.1\r\n".to_vec();
            buf.extend_from_slice(line);
            buf.extend_from_slice(b"\r\n\r\n");
            framing_error(&buf);
        }
    }

    #[test]
    fn chunked_is_accepted_in_any_case() {
        for value in [
            "chunked",
            "Chunked",
            "CHUNKED",
            " chunked ",
            "chunked,",
            ", chunked",
        ] {
            let buf = format!("POST http://h/ HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(
                framing(buf.as_bytes()).ok(),
                Some(BodyFraming::Chunked),
                "{value}"
            );
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_rejected() {
        let msg = framing_error(
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(
            msg.contains("content-length and transfer-encoding"),
            "{msg}"
        );
        framing_error(
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        );
        framing_error(
            b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
        );
    }

    #[test]
    fn codings_other_than_a_single_chunked_are_rejected() {
        for lines in [
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked-false",
            "Transfer-Encoding: chunked;q=1",
            "Transfer-Encoding: identity",
            "Transfer-Encoding:",
            "Transfer-Encoding: ,",
        ] {
            let buf = format!("POST http://h/ HTTP/1.1\r\n{lines}\r\n\r\n");
            framing_error(buf.as_bytes());
        }
    }

    #[test]
    fn transfer_encoding_in_http_1_0_is_rejected() {
        let msg = framing_error(b"POST http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(msg.contains("http/1.0"), "{msg}");
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        let cases: [(&[u8], bool); 8] = [
            (b"GET http://h/ HTTP/1.1\r\n\r\n", true),
            (
                b"GET http://h/ HTTP/1.1\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET http://h/ HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET http://h/ HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET http://h/ HTTP/1.1\r\nConnection: closed\r\n\r\n",
                true,
            ),
            (b"GET http://h/ HTTP/1.0\r\n\r\n", false),
            (
                b"GET http://h/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                true,
            ),
            (
                b"GET http://h/ HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
        ];
        for (buf, expected) in cases {
            assert_eq!(
                head(buf).keep_alive(),
                expected,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn expect_100_continue_is_recognised_in_http_1_1_only() {
        assert!(head(b"PUT http://h/ HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expects_continue());
        assert!(!head(b"PUT http://h/ HTTP/1.1\r\n\r\n").expects_continue());
        assert!(!head(b"PUT http://h/ HTTP/1.1\r\nExpect: 200-ok\r\n\r\n").expects_continue());
        assert!(
            !head(b"PUT http://h/ HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue()
        );
    }

    #[test]
    fn target_forms_are_told_apart() {
        let cases: [(&[u8], TargetForm); 5] = [
            (b"GET /healthz HTTP/1.1\r\n\r\n", TargetForm::Origin),
            (b"GET http://h/ HTTP/1.1\r\n\r\n", TargetForm::Absolute),
            (
                b"GET https://h:8443/x HTTP/1.1\r\n\r\n",
                TargetForm::Absolute,
            ),
            (b"CONNECT h:443 HTTP/1.1\r\n\r\n", TargetForm::Authority),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", TargetForm::Asterisk),
        ];
        for (buf, form) in cases {
            assert_eq!(head(buf).target_form(), form);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let samples: [&[u8]; 8] = [
            b"",
            b"\r",
            b"\r\r\n",
            b"\n\n\n",
            b"\xff\xff\xff\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\n:\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\n\r",
            b"GET http://h/ HTTP/1.1\r\nA: b\r\r\n\r\n",
        ];
        for buf in samples {
            for end in 0..=buf.len() {
                let _ = parse(&buf[..end]);
            }
        }
    }
}
