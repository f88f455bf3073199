//! How a request ends, whoever ends it (a worker, the acceptor, the tunnel
//! relay): whether the connection carries another request (decided here,
//! once), the error answers the proxy writes itself, and the one
//! access-log line and count that every request gets (but for the own
//! pages answered well that `access_log_own_pages = errors` leaves out of
//! the log). Every answer's head
//! is finished by `http::response::Head::finish` (`X-Request-Id`,
//! `Connection`); a closing connection lingers with the acceptor (see
//! `handback`).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ureq::http::header::CONTENT_TYPE;
use ureq::http::{HeaderMap, HeaderValue};

use crate::cache::{self, Fwd};
use crate::error::ProxyError;
use crate::http::request::{RequestHead, Version};
use crate::http::response::{self, Persistence};
pub use crate::logging::Cut;
use crate::logging::{self, AccessDetails, AccessRecord, Outcome, TunnelLog};
use crate::metrics::{Finished, Metrics};
use crate::pump::TunnelEnd;
use crate::server::conn::ClientConn;

/// How a request was answered: what the access log and the counters record,
/// and whether the connection can carry another request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// The `Proxy-Status` error type, when something failed.
    pub error: Option<&'static str>,
    /// The whole answer went out and its head kept the connection open.
    pub reusable: bool,
    /// How the cache took part, when it did.
    pub cache: Option<cache::Outcome>,
    /// Answered by the proxy itself (its own endpoints, `PURGE`), with no
    /// upstream to go to.
    pub own: bool,
    /// How the answer was cut short after it began, if it was.
    pub cut: Option<Cut>,
    /// What an access log that shows more (Squid's) needs; left out
    /// otherwise.
    pub shown: Option<Box<Shown>>,
}

/// The answer's `Content-Type`, and the origin's address when the request
/// went there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shown {
    pub content_type: Option<HeaderValue>,
    pub origin: Option<IpAddr>,
}

impl Shown {
    /// `Content-Type` from `headers`, when the access log shows it.
    pub fn of(headers: &HeaderMap, origin: Option<IpAddr>) -> Option<Box<Shown>> {
        logging::shows_origin_and_type().then(|| {
            Box::new(Shown {
                content_type: headers.get(CONTENT_TYPE).cloned(),
                origin,
            })
        })
    }
}

impl Served {
    /// A request that failed with `err` after `bytes` of a response went out
    /// (or none): the connection cannot be reused.
    pub fn failed(err: &ProxyError, bytes: u64) -> Served {
        Served {
            status: err.status(),
            bytes,
            error: Some(err.proxy_status()),
            reusable: false,
            cache: None,
            own: false,
            cut: None,
            shown: None,
        }
    }
}

/// A request whose client hung up before any of an answer went out: no
/// answer, and the access log's 499 (nginx's) with `client_aborted`.
pub fn client_left() -> Served {
    Served {
        status: 499,
        bytes: 0,
        error: None,
        reusable: false,
        cache: None,
        own: false,
        cut: Some(Cut::ClientLeft),
        shown: None,
    }
}

/// The request as the access log names it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    pub url: &'a str,
    pub request_id: &'a str,
    pub started: Instant,
    /// The head, when one was read: version, `Referer` and `User-Agent`
    /// for the Squid and combined formats.
    pub head: Option<&'a RequestHead>,
    /// The user the credentials named, once they were checked.
    pub user: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request whose head could not be read: no method or URL to name.
    pub fn unparsed(client: SocketAddr, request_id: &'a str, started: Instant) -> Request<'a> {
        Request {
            client,
            method: "-",
            url: "-",
            request_id,
            started,
            head: None,
            user: None,
        }
    }

    /// A request with a parsed `head`.
    pub fn of(
        client: SocketAddr,
        head: &'a RequestHead,
        request_id: &'a str,
        started: Instant,
    ) -> Request<'a> {
        Request {
            client,
            method: &head.method,
            url: &head.target,
            request_id,
            started,
            head: Some(head),
            user: None,
        }
    }
}

/// Whether the connection may carry another request after the answer to
/// `head`: the client wants it (RFC 9112 §9.3), the request body was read
/// to its end (else where the next request starts is unknown), and the
/// proxy is not draining.
pub fn persistence(head: &RequestHead, body_read: bool, draining: bool) -> Persistence {
    if head.keep_alive() && body_read && !draining {
        Persistence::KeepAlive {
            http10: head.version == Version::Http10,
        }
    } else {
        Persistence::Close
    }
}

/// The bytes of the proxy's answer to `err` and its body length; a HEAD
/// request gets the head only.
pub fn error_bytes(
    err: &ProxyError,
    request_id: &str,
    head: Option<&RequestHead>,
    persistence: Persistence,
) -> (Vec<u8>, u64) {
    let head_only = head.is_some_and(|head| head.method == "HEAD");
    response::error_response(err, request_id, persistence, head_only)
}

/// Answers `err` on `conn` (a blocking write, bounded by the socket's send
/// timeout). The connection is kept only when the error allows it and
/// `keep` says the request left it at a message boundary.
pub fn answer_error(
    conn: &mut ClientConn,
    err: &ProxyError,
    request_id: &str,
    head: Option<&RequestHead>,
    keep: Persistence,
) -> Served {
    // Warnings are for a proxy that is degraded (itself, or its upstreams);
    // what one client got wrong (501, 508, 4xx) is debug.
    match err.status() {
        500 | 502..=504 => log::warn!("{} {request_id}: {err}", conn.peer),
        _ => log::debug!("{} {request_id}: {err}", conn.peer),
    }
    let persistence = if err.closes_connection() {
        Persistence::Close
    } else {
        keep
    };
    let (answer, body_len) = error_bytes(err, request_id, head, persistence);
    let sent = conn.write_all(&answer).is_ok();
    Served {
        status: err.status(),
        bytes: if sent { body_len } else { 0 },
        error: Some(err.proxy_status()),
        reusable: sent && persistence.is_kept(),
        cache: None,
        own: false,
        cut: None,
        shown: None,
    }
}

/// Writes the access-log line of a finished request and counts it for
/// `/metrics`: every request gets exactly one of each, wherever it ends
/// (only the count, for an own page answered well that
/// `access_log_own_pages` leaves out).
/// A tunnel's line also gets its bytes up and why it ended.
pub fn record(
    metrics: &Metrics,
    request: &Request<'_>,
    served: &Served,
    tunnel: Option<(TunnelEnd, u64)>,
) {
    let duration = request.started.elapsed();
    // A tunnel's duration is its life, which would swamp the latency histogram.
    metrics.request(&Finished {
        status: served.status,
        bytes: served.bytes,
        duration: tunnel.is_none().then_some(duration),
        error: served.error,
        client_left: served.cut == Some(Cut::ClientLeft),
    });
    if let Some((end, up)) = tunnel {
        metrics.tunnel_ended(end, up);
    }
    // The proxy's own pages are the only answers of its own to a GET or
    // HEAD (PURGE is another method).
    let own_page = served.own && matches!(request.method, "GET" | "HEAD");
    if own_page && !logging::records_own_page(served.status) {
        return;
    }
    let record = AccessRecord {
        client: request.client,
        method: request.method,
        url: request.url,
        status: served.status,
        bytes: served.bytes,
        duration,
        request_id: request.request_id,
        error: served.error,
        cache: served.cache.map(|outcome| outcome.log_word()),
        tunnel: tunnel.map(|(end, bytes_up)| TunnelLog {
            bytes_up,
            end: end.as_str(),
        }),
        cut: served.cut,
    };
    let text = |name| {
        request
            .head
            .and_then(|head| head.header(name))
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    let shown = served.shown.as_deref();
    let peer = shown
        .and_then(|shown| shown.origin)
        .map(|ip| ip.to_string());
    let details = AccessDetails {
        user: request.user,
        peer: peer.as_deref(),
        content_type: shown
            .and_then(|shown| shown.content_type.as_ref())
            .and_then(|value| value.to_str().ok()),
        version: request.head.map(|head| match head.version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }),
        referer: text("referer"),
        user_agent: text("user-agent"),
        outcome: if served.own {
            Some(Outcome::NotForwarded)
        } else {
            served.cache.map(|outcome| squid_outcome(&outcome))
        },
    };
    logging::access_with(&record, &details);
}

/// The cache's outcome in the terms of Squid's result codes.
fn squid_outcome(outcome: &cache::Outcome) -> Outcome {
    match outcome {
        cache::Outcome::Hit { .. } => Outcome::Hit,
        cache::Outcome::StaleOnError { .. } => Outcome::RefreshFailOld,
        cache::Outcome::NotForwarded { .. } => Outcome::NotForwarded,
        cache::Outcome::Forward {
            collapsed: true, ..
        } => Outcome::CollapsedHit,
        cache::Outcome::Forward {
            fwd: Fwd::Stale | Fwd::Request,
            fwd_status: Some(304),
            ..
        } => Outcome::RefreshUnmodified,
        cache::Outcome::Forward {
            fwd: Fwd::Stale, ..
        } => Outcome::RefreshModified,
        cache::Outcome::Forward {
            fwd: Fwd::Request, ..
        } => Outcome::ClientRefresh,
        cache::Outcome::Forward { .. } => Outcome::Miss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, Parsed, parse_head};

    fn head(text: &str) -> RequestHead {
        let limits = HeadLimits {
            max_header_bytes: 4096,
            max_url_bytes: 1024,
        };
        match parse_head(text.as_bytes(), &limits) {
            Ok(Parsed::Complete { head, .. }) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_needs_the_client_a_read_body_and_no_draining() {
        let http11 = head("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
        let http10 = head("GET http://h/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let close = head("GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let plain10 = head("GET http://h/ HTTP/1.0\r\n\r\n");
        assert_eq!(
            persistence(&http11, true, false),
            Persistence::KeepAlive { http10: false }
        );
        assert_eq!(
            persistence(&http10, true, false),
            Persistence::KeepAlive { http10: true }
        );
        for (head, body_read, draining) in [
            (&close, true, false),
            (&plain10, true, false),
            (&http11, false, false),
            (&http11, true, true),
        ] {
            assert_eq!(
                persistence(head, body_read, draining),
                Persistence::Close,
                "{head:?} {body_read} {draining}"
            );
        }
    }

    #[test]
    fn errors_to_head_requests_have_no_body() {
        let err = ProxyError::LoopDetected;
        let get = head("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
        let head_request = head("HEAD http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
        let (full, full_len) = error_bytes(&err, "r", Some(&get), Persistence::Close);
        let (bare, bare_len) = error_bytes(&err, "r", Some(&head_request), Persistence::Close);
        assert_eq!(bare_len, 0);
        assert_eq!(full.len() as u64, bare.len() as u64 + full_len);
    }
}
