//! A request head as the proxy reads it: the owned head (`parse` builds it
//! from bytes), its body framing (RFC 9112 §6), keep-alive, expectations,
//! target form and the `Host` rules. No policy: whether the request is
//! allowed is decided by the worker and `access`.

mod parse;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::error::ProxyError;
pub use crate::http::body::BodyFraming;
pub use parse::{HeadLimits, Parsed, parse_head, request_line_ended};

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One header line as received: name as sent, value as raw bytes. Both
/// share the buffer of the head they came in, so a head of many lines is
/// one copy, not two allocations a line, and a value goes upstream
/// without another copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// A token (RFC 9110 §5.6.2): ASCII, as the parser checked.
    name: Bytes,
    value: Bytes,
}

impl Header {
    /// A header line made by the proxy (or a test), copied.
    pub fn new(name: &str, value: &[u8]) -> Header {
        Header {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value),
        }
    }

    /// A header line whose name and value are slices of `head`.
    pub(crate) fn shared(name: Bytes, value: Bytes) -> Header {
        Header { name, value }
    }

    /// The name as sent.
    pub fn name(&self) -> &str {
        // Checked as a token when parsed; a name made by `new` is a `str`.
        std::str::from_utf8(&self.name).unwrap_or_default()
    }

    /// The value as received.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The value, sharing its buffer.
    pub fn shared_value(&self) -> Bytes {
        self.value.clone()
    }
}

/// An owned, parsed request head. Header order and repeats are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<Header>,
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

/// The elements of a comma-separated list, trimmed, empties dropped (RFC 9110 §5.6.1).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
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
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(Header::value)
    }

    /// Every value of a header, in order, by case-insensitive name.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(Header::value)
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

    /// Checks the `Host` rules of RFC 9112 §3.2: required in HTTP/1.1, never
    /// repeated, and a valid `uri-host [":" port]`; empty only when the
    /// target carries no authority of its own (origin-form, `*`). The
    /// absolute-form authority still wins over `Host` when forwarding.
    ///
    /// # Errors
    /// `BadRequest` naming the rule that was broken.
    pub fn check_host(&self) -> Result<(), ProxyError> {
        let mut hosts = self.header_values("host");
        let Some(host) = hosts.next() else {
            if self.version == Version::Http11 {
                return Err(bad("missing host header (required in HTTP/1.1)"));
            }
            return Ok(());
        };
        if hosts.next().is_some() {
            return Err(bad("more than one host header"));
        }
        if host.is_empty() {
            return match self.target_form() {
                TargetForm::Origin | TargetForm::Asterisk => Ok(()),
                TargetForm::Absolute | TargetForm::Authority => {
                    Err(bad("empty host header with a target that names a host"))
                }
            };
        }
        if !is_host_value(host) {
            return Err(bad("invalid host header"));
        }
        Ok(())
    }

    /// Whether any `Connection` header lists `option` (case-insensitive).
    fn has_connection_option(&self, option: &str) -> bool {
        self.header_values("connection")
            .flat_map(list_elements)
            .any(|t| t.eq_ignore_ascii_case(option.as_bytes()))
    }
}

fn bad(msg: &str) -> ProxyError {
    ProxyError::BadRequest(msg.to_owned())
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in
/// brackets, or a reg-name / IPv4 address, then optional digits.
fn is_host_value(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&value[1..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        }
    };
    let reg_name_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    let host_ok =
        host.first() == Some(&b'[') || (!host.is_empty() && host.iter().all(|&b| reg_name_byte(b)));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}
