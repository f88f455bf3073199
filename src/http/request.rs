//! Reading a request head with httparse under size limits, and working out
//! its body framing (RFC 9112 §6). No policy: whether the request is allowed
//! is decided by the worker and `access`.

use crate::error::ProxyError;

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
/// # Errors
/// `HeadTooLarge` when no complete head fits in `limits.max_header_bytes` (or there
/// are too many header lines), `UrlTooLong` when the target is over
/// `limits.max_url_bytes`, `BadRequest` for anything malformed: bad request line,
/// obs-fold, whitespace before a colon, NUL or non-ASCII bytes in the target.
pub fn parse_head(buf: &[u8], limits: &HeadLimits) -> Result<Parsed, ProxyError> {
    let _ = (buf, limits);
    todo!()
}

impl RequestHead {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let _ = name;
        todo!()
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
        todo!()
    }

    /// Whether the client wants the connection kept open after this request
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        todo!()
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub fn expects_continue(&self) -> bool {
        todo!()
    }

    /// The form of the request target.
    pub fn target_form(&self) -> TargetForm {
        todo!()
    }
}
