//! Writing responses: status line and headers into one buffer, and the
//! short `text/plain` answers for errors the proxy generates itself.
//! Picks no status: the caller (the worker) decides.

use crate::error::ProxyError;

/// The reason phrase for a status code ("" for unknown codes).
pub fn reason_phrase(status: u16) -> &'static str {
    let _ = status;
    todo!()
}

/// Appends `HTTP/1.1 {status} {reason}\r\n` to `out`.
pub fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    let _ = (out, status, reason);
    todo!()
}

/// Appends one `name: value\r\n` line to `out`.
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let _ = (out, name, value);
    todo!()
}

/// A complete error response: status line, `Content-Type: text/plain`,
/// `Content-Length`, `Proxy-Status: fetchproxy; error=<token>; details="..."`,
/// `Retry-After` when the error has one, `X-Request-Id`, `Via`-free, and
/// `Connection: close` when `close` is set; body is the error's message and a newline.
/// With `head_only` the body is left out (answer to HEAD) but Content-Length kept.
pub fn error_response(err: &ProxyError, request_id: &str, close: bool, head_only: bool) -> Vec<u8> {
    let _ = (err, request_id, close, head_only);
    todo!()
}
