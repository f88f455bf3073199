//! Writing response heads: the one builder (`Head`) that every answer of
//! the proxy goes through, so each ends the same way (`X-Request-Id`, then
//! `Connection` as decided), and the short `text/plain` answers for errors
//! the proxy generates itself. Picks no status: the caller decides.

use ureq::http::StatusCode;

use crate::error::ProxyError;
use crate::http::headers::http_date;

/// Longest `details` text in a `Proxy-Status` header, escapes included.
const MAX_DETAILS_BYTES: usize = 256;

/// The reason phrase for a status code ("" for unknown codes).
pub fn reason_phrase(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("")
}

/// Whether the connection carries another request after a response, as
/// its head tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `Connection: close`: the connection ends after this response.
    Close,
    /// Kept open; HTTP/1.0 clients are told so with `Connection: keep-alive`
    /// (RFC 9112 §9.3), HTTP/1.1 clients assume it.
    KeepAlive { http10: bool },
}

impl Persistence {
    /// Whether the connection stays open.
    pub fn is_kept(self) -> bool {
        matches!(self, Persistence::KeepAlive { .. })
    }
}

/// A response head being written: status line, then headers.
#[derive(Debug)]
pub struct Head(Vec<u8>);

impl Head {
    /// The head of an answer of the proxy's own: `status`, its canonical
    /// reason phrase, and `Date`, which the proxy as the origin of the
    /// answer sends (RFC 9110 §6.6.1).
    pub fn new(status: u16) -> Head {
        let mut head = Head::with_reason(status, reason_phrase(status));
        let now = http_date(std::time::SystemTime::now());
        head.header("Date", now.as_bytes());
        head
    }

    /// A head with `status` and `reason`.
    pub fn with_reason(status: u16, reason: &str) -> Head {
        let mut out = Vec::with_capacity(512);
        write_status_line(&mut out, status, reason);
        Head(out)
    }

    /// Adds one header line.
    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Head {
        write_header(&mut self.0, name, value);
        self
    }

    /// Adds one header line whose value is `parts` one after another,
    /// with no value built first.
    pub fn header_parts(&mut self, name: &str, parts: &[&[u8]]) -> &mut Head {
        push_line_safe(&mut self.0, name.as_bytes());
        self.0.extend_from_slice(b": ");
        for part in parts {
            push_line_safe(&mut self.0, part);
        }
        self.0.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the head the way every answer of the proxy ends: `X-Request-Id`,
    /// `Connection` as `persistence` says, and the blank line.
    pub fn finish(mut self, request_id: &str, persistence: Persistence) -> Vec<u8> {
        end_head(&mut self.0, request_id, persistence);
        self.0
    }
}

/// Appends the ending every answer of the proxy has to header lines
/// written elsewhere (a stored response's): `X-Request-Id`, `Connection`
/// as `persistence` says, and the blank line.
pub fn end_head(out: &mut Vec<u8>, request_id: &str, persistence: Persistence) {
    write_header(out, "X-Request-Id", request_id.as_bytes());
    match persistence {
        Persistence::Close => write_header(out, "Connection", b"close"),
        Persistence::KeepAlive { http10: true } => {
            write_header(out, "Connection", b"keep-alive");
        }
        Persistence::KeepAlive { http10: false } => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `HTTP/1.1 {status} {reason}\r\n` to `out`.
///
/// The status is written as three digits (RFC 9112 §4); CR, LF and NUL in
/// `reason` are dropped so it cannot end the line early.
pub fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let status = status.min(999);
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    push_line_safe(out, reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one `name: value\r\n` line to `out`.
///
/// CR, LF and NUL in `name` or `value` are dropped, so no caller can split
/// the response by accident (response splitting).
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    push_line_safe(out, name.as_bytes());
    out.extend_from_slice(b": ");
    push_line_safe(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_line_safe(out: &mut Vec<u8>, bytes: &[u8]) {
    let unsafe_byte = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
    // CR, LF and NUL are control bytes: a line with none (the least byte
    // at least a space) is copied as it is. The least byte is found with
    // no early exit, so that the compiler compares many at a time: this
    // runs for every header of every answer.
    let least = bytes.iter().fold(u8::MAX, |least, &b| least.min(b));
    if least >= b' ' || !bytes.iter().any(unsafe_byte) {
        // The usual case, copied in one go.
        out.extend_from_slice(bytes);
        return;
    }
    out.extend(bytes.iter().copied().filter(|b| !unsafe_byte(b)));
}

/// `text` as the content of an RFC 8941 §3.3.3 sf-string: printable ASCII
/// only (others dropped), `"` and `\` escaped, at most `MAX_DETAILS_BYTES`.
fn sf_string_content(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| (' '..='~').contains(c)) {
        let escaped = matches!(c, '"' | '\\');
        if out.len() + 1 + usize::from(escaped) > MAX_DETAILS_BYTES {
            break;
        }
        if escaped {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A complete error response and the length of its body: status line,
/// `Content-Type: text/plain`, `Content-Length`, `Proxy-Status: fetchproxy;
/// error=<token>; details="..."`, `Retry-After` and `Proxy-Authenticate`
/// when the error has them, then the ending every answer has (see
/// [`Head::finish`]); the body is the error's message and a newline. With
/// `head_only` the body is left out (answer to HEAD) but Content-Length kept.
pub fn error_response(
    err: &ProxyError,
    request_id: &str,
    persistence: Persistence,
    head_only: bool,
) -> (Vec<u8>, u64) {
    let message = err.to_string();
    let body = format!("{message}\n");
    let mut head = Head::new(err.status());
    head.header("Content-Type", b"text/plain; charset=utf-8")
        .header("Content-Length", body.len().to_string().as_bytes());
    // RFC 9209 §2: the proxy's name, then its error type and details.
    let proxy_status = format!(
        "fetchproxy; error={}; details=\"{}\"",
        err.proxy_status(),
        sf_string_content(&message)
    );
    head.header("Proxy-Status", proxy_status.as_bytes());
    if let Some(seconds) = err.retry_after() {
        head.header("Retry-After", seconds.to_string().as_bytes());
    }
    if let Some(methods) = err.allow() {
        head.header("Allow", methods.as_bytes());
    }
    if let Some(challenge) = err.proxy_authenticate() {
        head.header("Proxy-Authenticate", challenge.as_bytes());
    }
    let mut out = head.finish(request_id, persistence);
    if head_only {
        return (out, 0);
    }
    out.extend_from_slice(body.as_bytes());
    (out, body.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutPhase;

    const CLOSE: Persistence = Persistence::Close;
    const KEEP: Persistence = Persistence::KeepAlive { http10: false };

    #[test]
    fn reason_phrases_cover_the_common_codes() {
        let codes = [100, 101]
            .into_iter()
            .chain(200..=206)
            .chain(300..=305)
            .chain(307..=308)
            .chain(400..=418)
            .chain(421..=426)
            .chain(428..=429)
            .chain([431, 451])
            .chain(500..=508)
            .chain([511]);
        for code in codes {
            assert!(!reason_phrase(code).is_empty(), "{code}");
        }
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(508), "Loop Detected");
        for unknown in [0, 99, 199, 299, 306, 420, 499, 599, 999, 1000, u16::MAX] {
            assert_eq!(reason_phrase(unknown), "", "{unknown}");
        }
    }

    #[test]
    fn status_line_and_headers_are_written_exactly() {
        let mut out = Vec::new();
        write_status_line(&mut out, 204, "No Content");
        write_status_line(&mut out, 599, "");
        write_header(&mut out, "X-A", b"1, 2");
        write_header(&mut out, "X-Bin", b"\xff");
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nHTTP/1.1 599 \r\nX-A: 1, 2\r\nX-Bin: \xff\r\n"
        );
    }

    #[test]
    fn line_breaks_cannot_be_injected() {
        let mut out = Vec::new();
        write_status_line(&mut out, 200, "OK\r\nX-Evil: 1");
        write_header(&mut out, "X-A\r\n", b"a\r\nSet-Cookie: x\0");
        assert_eq!(out, b"HTTP/1.1 200 OKX-Evil: 1\r\nX-A: aSet-Cookie: x\r\n");
    }

    #[test]
    fn a_value_in_parts_is_written_as_one_and_checked_as_one() {
        let mut head = Head::with_reason(200, "OK");
        head.header_parts("Via", &[b"1.1 ", b"edge-1"]);
        head.header_parts("X-A", &[b"a\r\n", b"Set-Cookie: x"]);
        assert_eq!(
            head.finish("r", KEEP),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 edge-1\r\nX-A: aSet-Cookie: x\r\nX-Request-Id: r\r\n\r\n"
        );
    }

    /// `out` as text with its `Date` line taken out, after checking that it
    /// is the second line and an HTTP date of now.
    fn dated(out: &[u8]) -> String {
        let text = String::from_utf8_lossy(out).into_owned();
        let mut lines: Vec<&str> = text.split("\r\n").collect();
        let date = lines.remove(1);
        let value = date
            .strip_prefix("Date: ")
            .unwrap_or_else(|| panic!("{text}"));
        let at = httpdate::parse_http_date(value).unwrap_or_else(|_| panic!("{text}"));
        let age = std::time::SystemTime::now().duration_since(at);
        assert!(age.is_ok_and(|age| age.as_secs() < 60), "{text}");
        lines.join("\r\n")
    }

    #[test]
    fn loop_error_response_has_exact_bytes() {
        let out = error_response(&ProxyError::LoopDetected, "req-1", KEEP, false).0;
        let message = "request loop detected: this request already passed through this proxy";
        let expected = format!(
            "HTTP/1.1 508 Loop Detected\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Proxy-Status: fetchproxy; error=proxy_loop_detected; details=\"{message}\"\r\n\
             X-Request-Id: req-1\r\n\
             \r\n\
             {message}\n",
            message.len() + 1
        );
        assert_eq!(dated(&out), expected);
    }

    #[test]
    fn queue_full_response_parses_back_with_retry_after_and_close() {
        let out = error_response(&ProxyError::QueueFull, "abc", CLOSE, false).0;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(&out) else {
            panic!("unparseable: {}", String::from_utf8_lossy(&out));
        };
        assert_eq!(resp.code, Some(503));
        assert_eq!(resp.reason, Some("Service Unavailable"));
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let body = &out[head_len..];
        assert_eq!(body, b"proxy is overloaded, retry shortly\n");
        assert_eq!(
            get("content-length"),
            Some(body.len().to_string().as_bytes())
        );
        assert_eq!(get("retry-after"), Some(&b"1"[..]));
        assert_eq!(get("connection"), Some(&b"close"[..]));
        assert_eq!(get("x-request-id"), Some(&b"abc"[..]));
        assert_eq!(
            get("proxy-status"),
            Some(&b"fetchproxy; error=proxy_internal_error; details=\"proxy is overloaded, retry shortly\""[..])
        );
        let names: Vec<_> = resp.headers.iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            [
                "Date",
                "Content-Type",
                "Content-Length",
                "Proxy-Status",
                "Retry-After",
                "X-Request-Id",
                "Connection"
            ]
        );
    }

    #[test]
    fn head_only_keeps_content_length_but_drops_the_body() {
        let err = ProxyError::UpstreamTimeout(TimeoutPhase::Response);
        let (full, full_len) = error_response(&err, "id", KEEP, false);
        let (head, head_len) = error_response(&err, "id", KEEP, true);
        assert_eq!((full_len, head_len), ((full.len() - head.len()) as u64, 0));
        assert!(full.starts_with(&head));
        assert!(head.ends_with(b"\r\n\r\n"));
        let body = &full[head.len()..];
        assert_eq!(body, format!("{err}\n").as_bytes());
        let length = format!("Content-Length: {}\r\n", body.len());
        assert!(head.windows(length.len()).any(|w| w == length.as_bytes()));
        assert!(!head.windows(10).any(|w| w == b"Connection"));
    }

    #[test]
    fn every_head_ends_with_the_request_id_and_the_connection_decision() {
        let ends = [
            (CLOSE, "X-Request-Id: r\r\nConnection: close\r\n\r\n"),
            (
                Persistence::KeepAlive { http10: true },
                "X-Request-Id: r\r\nConnection: keep-alive\r\n\r\n",
            ),
            (KEEP, "X-Request-Id: r\r\n\r\n"),
        ];
        for (persistence, end) in ends {
            let mut head = Head::new(200);
            head.header("Content-Length", b"0");
            let out = head.finish("r", persistence);
            let expected = format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{end}");
            assert_eq!(dated(&out), expected);
        }
    }

    #[test]
    fn details_are_escaped_and_capped() {
        assert_eq!(sf_string_content(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(sf_string_content("caf\u{e9}\t\n!"), "caf!");
        let long = "\"".repeat(1000);
        let capped = sf_string_content(&long);
        assert_eq!(capped.len(), MAX_DETAILS_BYTES);
        assert_eq!(capped, "\\\"".repeat(MAX_DETAILS_BYTES / 2));
        assert_eq!(
            sf_string_content(&"x".repeat(1000)).len(),
            MAX_DETAILS_BYTES
        );
    }

    #[test]
    fn peer_text_in_an_error_stays_a_valid_header() {
        let err = ProxyError::DnsFailed {
            host: "evil\"\r\nX-Injected: 1\\".into(),
        };
        let out = error_response(&err, "id", CLOSE, false).0;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(matches!(
            resp.parse(&out),
            Ok(httparse::Status::Complete(_))
        ));
        assert!(!resp.headers.iter().any(|h| h.name == "X-Injected"));
        let status = resp
            .headers
            .iter()
            .find(|h| h.name == "Proxy-Status")
            .map(|h| h.value)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(status);
        assert!(
            text.starts_with("fetchproxy; error=dns_error; details=\""),
            "{text}"
        );
        assert!(text.ends_with('"'), "{text}");
    }
}
