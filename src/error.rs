//! `ProxyError`: the DESIGN status table as one enum.
//!
//! Every error the proxy itself answers with is a variant here; `status()`,
//! `proxy_status()` and `retry_after()` turn it into the response that
//! `http::response::write_error` writes. No I/O happens in this module.

use std::net::IpAddr;
use std::time::Duration;

use crate::auth::{self, AuthFailure};

/// Which upstream phase ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Resolving or connecting to the origin.
    Connect,
    /// Waiting for the response head, or silence while a body streams.
    Response,
}

impl TimeoutPhase {
    /// The setting that bounds the phase.
    pub fn setting(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect_timeout",
            TimeoutPhase::Response => "upstream_timeout",
        }
    }
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::Response => "waiting for the response",
        })
    }
}

/// Everything that makes the proxy answer a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request head or body framing could not be parsed.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// An origin-form target that is not one of the proxy's own endpoints
    /// (400), or is one asked with a method it does not answer (405).
    #[error("{}", not_an_endpoint(.method, .target))]
    NotProxyEndpoint { method: String, target: String },
    /// A well-formed request in an HTTP major version other than 1.
    #[error(
        "HTTP/{major}.{minor} is not supported: this proxy speaks HTTP/1.1 and HTTP/1.0 \
         (send HTTP/1.1)"
    )]
    VersionNotSupported { major: u8, minor: u8 },
    /// The request head grew past `max_header_bytes`.
    #[error("request head over {limit} bytes (max_header_bytes)")]
    HeadTooLarge { limit: usize },
    /// The request head has more header lines than are parsed.
    #[error("request head with more than {limit} header lines")]
    TooManyHeaderLines { limit: usize },
    /// The request target is longer than `max_url_bytes`.
    #[error("request target over {limit} bytes (max_url_bytes)")]
    UrlTooLong { limit: usize },
    /// The whole request head did not arrive within `header_timeout`.
    #[error("request head not complete within {}", humantime::format_duration(*.0))]
    HeadTimeout(Duration),
    /// The request body is larger than `max_body_bytes`.
    #[error("request body over {limit} bytes (max_body_bytes)")]
    BodyTooLarge { limit: u64 },
    /// The request body stopped arriving (`idle_timeout`), or came slower
    /// than `client_min_rate`.
    #[error("request body not received in time: {0}")]
    BodyTimeout(String),
    /// A method the proxy does not forward.
    #[error("method {0} is not supported")]
    MethodNotSupported(String),
    /// A URL scheme the proxy does not fetch.
    #[error("scheme {0:?} is not supported; use http or https")]
    SchemeNotSupported(String),
    /// Users are configured and the request carries no valid `Proxy-Authorization`.
    #[error("{0}")]
    ProxyAuthRequired(AuthFailure),
    /// The client address is outside `allow_clients`.
    #[error(
        "client {addr} is not allowed to use this proxy; to allow it, add --allow-client {addr} to the ranges given (a list given replaces the default), or {addr} to allow_clients in the config file"
    )]
    ClientDenied { addr: IpAddr },
    /// A PURGE from a client outside `purge_clients`.
    #[error(
        "client {addr} may not purge the cache; to allow it, add --purge-client {addr} to the ranges given (a list given replaces the default, loopback), or {addr} to purge_clients in the config file"
    )]
    PurgeDenied { addr: IpAddr },
    /// The destination address is not globally routable and no `allow_dest` covers it.
    #[error("{}", destination_denied(addr))]
    DestinationDenied { addr: IpAddr },
    /// The destination port of a forwarded request is outside `dest_ports`.
    #[error(
        "destination port {port} is not allowed; to allow it, add --dest-port {port} to the ports given (a list given replaces the default 80, 443, 1024-65535), or {port} to dest_ports in the config file"
    )]
    PortDenied { port: u16 },
    /// The port of a CONNECT is outside `connect_ports`.
    #[error(
        "CONNECT to port {port} is not allowed; to allow it, add --connect-port {port} to the ports given (a list given replaces the default 443), or {port} to connect_ports in the config file"
    )]
    ConnectPortDenied { port: u16 },
    /// A CONNECT while `max_tunnels` is 0: tunnels are turned off.
    #[error(
        "CONNECT is turned off on this proxy (max_tunnels = 0); set max_tunnels in the config file to allow tunnels"
    )]
    TunnelsOff,
    /// This request already passed through this proxy (`Via`).
    #[error("request loop detected: this request already passed through this proxy")]
    LoopDetected,
    /// The origin's name did not resolve.
    #[error("could not resolve host {host:?}")]
    DnsFailed { host: String },
    /// The origin refused the connection.
    #[error("connection to {authority} refused")]
    ConnectionRefused { authority: String },
    /// The origin could not be reached for another reason.
    #[error("could not connect to {authority}: {reason}")]
    ConnectFailed { authority: String, reason: String },
    /// The origin did not answer in time.
    #[error("upstream timed out {phase} ({setting})", phase = .0, setting = .0.setting())]
    UpstreamTimeout(TimeoutPhase),
    /// The TLS handshake with the origin failed.
    #[error("TLS with the origin failed: {0}")]
    UpstreamTls(String),
    /// The origin's certificate did not verify: why, in words.
    #[error("the origin's certificate was refused: {0}")]
    UpstreamCertificate(String),
    /// The origin's response is malformed.
    #[error("malformed upstream response: {0}")]
    UpstreamProtocol(String),
    /// The origin closed the connection before a byte of its response.
    #[error("{0}")]
    UpstreamClosed(String),
    /// The origin's response stopped before its end (in its head or body).
    #[error("{0}")]
    UpstreamIncomplete(String),
    /// The origin's response head is over `max_header_bytes`.
    #[error("the origin's response head is over {limit} bytes (max_header_bytes)")]
    UpstreamHeadTooLarge { limit: usize },
    /// The origin's response head has more header lines than are parsed.
    #[error("the origin's response head has more than {limit} header lines")]
    UpstreamTooManyHeaderLines { limit: usize },
    /// The origin's response has a transfer coding the proxy does not pass on.
    #[error("malformed upstream response: {0}")]
    UpstreamTransferCoding(String),
    /// The origin's response body is larger than `max_body_bytes`.
    #[error("upstream response body over {limit} bytes (max_body_bytes)")]
    UpstreamBodyTooLarge { limit: u64 },
    /// The work queue is full.
    #[error("proxy is overloaded, retry shortly")]
    QueueFull,
    /// The proxy is shutting down.
    #[error("proxy is shutting down")]
    ShuttingDown,
    /// A connection limit (`max_connections`, `max_conns_per_client`, `max_tunnels`) was hit.
    #[error("too many connections ({what} limit {limit})")]
    TooManyConnections { what: &'static str, limit: usize },
    /// The client went away (a failed write or read on its connection)
    /// before it was answered: nobody is left to answer; the access log and
    /// the counters record it as nginx does, 499.
    #[error("the client closed the connection: {0}")]
    ClientGone(String),
    /// A bug or an OS failure inside the proxy.
    #[error("internal proxy error: {0}")]
    Internal(String),
}

impl From<ureq::http::Error> for ProxyError {
    /// The `http` crate refusing a request the proxy built from the
    /// client's: a method, header or URL it cannot carry.
    fn from(err: ureq::http::Error) -> Self {
        ProxyError::BadRequest(err.to_string())
    }
}

/// Every `Proxy-Status` error type the proxy answers with (see `classify`).
pub const PROXY_STATUS_TYPES: [&str; 18] = [
    "http_request_error",
    "http_request_denied",
    "destination_ip_prohibited",
    "proxy_internal_error",
    "dns_error",
    "connection_refused",
    "destination_unavailable",
    "tls_protocol_error",
    "tls_certificate_error",
    "http_protocol_error",
    "connection_terminated",
    "http_response_incomplete",
    "http_response_header_section_size",
    "http_response_transfer_coding",
    "http_response_body_size",
    "connection_timeout",
    "http_response_timeout",
    "proxy_loop_detected",
];

/// Why an origin-form request got no answer from the proxy's own
/// endpoints, and how to send it through the proxy instead.
fn not_an_endpoint(method: &str, target: &str) -> String {
    if is_own_page(target) {
        let path = target.split('?').next().unwrap_or_default();
        return format!("{path} answers GET and HEAD, not {method}");
    }
    format!(
        "{target} is not an endpoint of the proxy (/healthz, /metrics); to go through the proxy, \
         send an absolute URL: {method} http://host/path (curl -x http://PROXY:PORT URL does)"
    )
}

/// Whether an origin-form `target` (or a URL's path) is one of the proxy's
/// own pages, whatever the method.
pub fn is_own_page(target: &str) -> bool {
    matches!(
        target.split('?').next().unwrap_or_default(),
        "/healthz" | "/metrics"
    )
}

/// Why a destination is refused, and what would allow it. `0.0.0.0` and
/// `::` are no host's address (connecting to them reaches this machine):
/// the hint is to name the host instead, not to allow them.
fn destination_denied(addr: &IpAddr) -> String {
    let canonical = addr.to_canonical();
    if canonical.is_unspecified() {
        let loopback = if canonical.is_ipv4() {
            "127.0.0.1"
        } else {
            "::1"
        };
        return format!(
            "destination {addr} is not allowed: it is no host's address (a name resolving \
             to it is blocked by DNS); this machine is {loopback}, which --allow-dest \
             {loopback} allows"
        );
    }
    format!(
        "destination {addr} is not allowed; allow it with --allow-dest {addr} (or allow_dest in the config file)"
    )
}

impl ProxyError {
    /// The HTTP status code this error is answered with.
    pub fn status(&self) -> u16 {
        self.classify().0
    }

    /// The RFC 9209 `Proxy-Status` error type.
    pub fn proxy_status(&self) -> &'static str {
        self.classify().1
    }

    /// Seconds for `Retry-After`, on the errors that have one.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ProxyError::QueueFull
            | ProxyError::ShuttingDown
            | ProxyError::TooManyConnections { .. } => Some(1),
            _ => None,
        }
    }

    /// The methods for `Allow`, on a 405 (RFC 9110 §15.5.6).
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            ProxyError::NotProxyEndpoint { target, .. } if is_own_page(target) => Some("GET, HEAD"),
            _ => None,
        }
    }

    /// The `Proxy-Authenticate` challenge, on the errors that have one.
    pub fn proxy_authenticate(&self) -> Option<&'static str> {
        match self {
            ProxyError::ProxyAuthRequired(_) => Some(auth::CHALLENGE),
            _ => None,
        }
    }

    /// Whether the connection must be closed after answering (we cannot
    /// tell where the next request would start, or the client is unwelcome).
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            ProxyError::NotProxyEndpoint { .. }
                | ProxyError::ProxyAuthRequired(_)
                | ProxyError::PurgeDenied { .. }
                | ProxyError::MethodNotSupported(_)
                | ProxyError::SchemeNotSupported(_)
                | ProxyError::DestinationDenied { .. }
                | ProxyError::PortDenied { .. }
                | ProxyError::ConnectPortDenied { .. }
                | ProxyError::TunnelsOff
                | ProxyError::LoopDetected
                | ProxyError::DnsFailed { .. }
                | ProxyError::ConnectionRefused { .. }
                | ProxyError::ConnectFailed { .. }
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::UpstreamTls(_)
                | ProxyError::UpstreamCertificate(_)
                | ProxyError::UpstreamProtocol(_)
                | ProxyError::UpstreamClosed(_)
                | ProxyError::UpstreamIncomplete(_)
                | ProxyError::UpstreamHeadTooLarge { .. }
                | ProxyError::UpstreamTooManyHeaderLines { .. }
                | ProxyError::UpstreamTransferCoding(_)
                | ProxyError::UpstreamBodyTooLarge { .. }
        )
    }

    /// The one table: (status, Proxy-Status error type).
    fn classify(&self) -> (u16, &'static str) {
        use ProxyError::*;
        match self {
            // A page of the proxy's own, asked with another method.
            NotProxyEndpoint { target, .. } if is_own_page(target) => (405, "http_request_error"),
            BadRequest(_) | NotProxyEndpoint { .. } | SchemeNotSupported(_) => {
                (400, "http_request_error")
            }
            ClientDenied { .. } | PurgeDenied { .. } => (403, "http_request_denied"),
            DestinationDenied { .. } => (403, "destination_ip_prohibited"),
            PortDenied { .. } | ConnectPortDenied { .. } | TunnelsOff => {
                (403, "http_request_denied")
            }
            ProxyAuthRequired(_) => (407, "http_request_denied"),
            HeadTimeout(_) | BodyTimeout(_) => (408, "http_request_error"),
            BodyTooLarge { .. } => (413, "http_request_error"),
            UrlTooLong { .. } => (414, "http_request_error"),
            HeadTooLarge { .. } | TooManyHeaderLines { .. } => (431, "http_request_error"),
            // Not a status anyone receives: the client is gone.
            ClientGone(_) => (499, "http_request_error"),
            Internal(_) => (500, "proxy_internal_error"),
            MethodNotSupported(_) => (501, "http_request_error"),
            VersionNotSupported { .. } => (505, "http_request_error"),
            DnsFailed { .. } => (502, "dns_error"),
            ConnectionRefused { .. } => (502, "connection_refused"),
            ConnectFailed { .. } => (502, "destination_unavailable"),
            UpstreamTls(_) => (502, "tls_protocol_error"),
            UpstreamCertificate(_) => (502, "tls_certificate_error"),
            UpstreamProtocol(_) => (502, "http_protocol_error"),
            UpstreamClosed(_) => (502, "connection_terminated"),
            UpstreamIncomplete(_) => (502, "http_response_incomplete"),
            UpstreamHeadTooLarge { .. } | UpstreamTooManyHeaderLines { .. } => {
                (502, "http_response_header_section_size")
            }
            UpstreamTransferCoding(_) => (502, "http_response_transfer_coding"),
            UpstreamBodyTooLarge { .. } => (502, "http_response_body_size"),
            QueueFull | ShuttingDown | TooManyConnections { .. } => (503, "proxy_internal_error"),
            UpstreamTimeout(TimeoutPhase::Connect) => (504, "connection_timeout"),
            UpstreamTimeout(TimeoutPhase::Response) => (504, "http_response_timeout"),
            LoopDetected => (508, "proxy_loop_detected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks DESIGN.md's status table row by row.
    #[test]
    fn design_table_rows_map_to_status_and_proxy_status() {
        let loopback: IpAddr = [127, 0, 0, 1].into();
        let rows: Vec<(ProxyError, u16, &str)> = vec![
            (
                ProxyError::BadRequest("x".into()),
                400,
                "http_request_error",
            ),
            (
                ProxyError::NotProxyEndpoint {
                    method: "GET".into(),
                    target: "/other".into(),
                },
                400,
                "http_request_error",
            ),
            (
                ProxyError::NotProxyEndpoint {
                    method: "OPTIONS".into(),
                    target: "/healthz".into(),
                },
                405,
                "http_request_error",
            ),
            (
                ProxyError::DestinationDenied { addr: loopback },
                403,
                "destination_ip_prohibited",
            ),
            (
                ProxyError::PortDenied { port: 25 },
                403,
                "http_request_denied",
            ),
            (
                ProxyError::HeadTooLarge { limit: 1 },
                431,
                "http_request_error",
            ),
            (
                ProxyError::TooManyHeaderLines { limit: 1 },
                431,
                "http_request_error",
            ),
            (
                ProxyError::UrlTooLong { limit: 1 },
                414,
                "http_request_error",
            ),
            (ProxyError::DnsFailed { host: "x".into() }, 502, "dns_error"),
            (
                ProxyError::ConnectionRefused {
                    authority: "x".into(),
                },
                502,
                "connection_refused",
            ),
            (
                ProxyError::UpstreamTimeout(TimeoutPhase::Connect),
                504,
                "connection_timeout",
            ),
            (
                ProxyError::UpstreamTimeout(TimeoutPhase::Response),
                504,
                "http_response_timeout",
            ),
            (
                ProxyError::UpstreamBodyTooLarge { limit: 1 },
                502,
                "http_response_body_size",
            ),
            (
                ProxyError::UpstreamProtocol("x".into()),
                502,
                "http_protocol_error",
            ),
            (
                ProxyError::UpstreamClosed("x".into()),
                502,
                "connection_terminated",
            ),
            (
                ProxyError::UpstreamIncomplete("x".into()),
                502,
                "http_response_incomplete",
            ),
            (
                ProxyError::UpstreamHeadTooLarge { limit: 1 },
                502,
                "http_response_header_section_size",
            ),
            (
                ProxyError::UpstreamTransferCoding("x".into()),
                502,
                "http_response_transfer_coding",
            ),
            (
                ProxyError::ProxyAuthRequired(AuthFailure::Missing),
                407,
                "http_request_denied",
            ),
            (
                ProxyError::ProxyAuthRequired(AuthFailure::Rejected),
                407,
                "http_request_denied",
            ),
            (
                ProxyError::Internal("worker panicked".into()),
                500,
                "proxy_internal_error",
            ),
            (ProxyError::LoopDetected, 508, "proxy_loop_detected"),
            (ProxyError::QueueFull, 503, "proxy_internal_error"),
            (ProxyError::ShuttingDown, 503, "proxy_internal_error"),
        ];
        for (err, status, token) in rows {
            assert_eq!(err.status(), status, "{err}");
            assert_eq!(err.proxy_status(), token, "{err}");
        }
    }

    /// `/metrics` counts errors by type over this list: none may be missing.
    #[test]
    fn every_error_type_is_listed_once() {
        let loopback: IpAddr = [127, 0, 0, 1].into();
        let every_variant = [
            ProxyError::BadRequest("x".into()),
            ProxyError::NotProxyEndpoint {
                method: "GET".into(),
                target: "/".into(),
            },
            ProxyError::SchemeNotSupported("ftp".into()),
            ProxyError::ClientDenied { addr: loopback },
            ProxyError::PurgeDenied { addr: loopback },
            ProxyError::DestinationDenied { addr: loopback },
            ProxyError::PortDenied { port: 25 },
            ProxyError::ConnectPortDenied { port: 25 },
            ProxyError::TunnelsOff,
            ProxyError::ProxyAuthRequired(AuthFailure::Missing),
            ProxyError::HeadTimeout(Duration::from_secs(1)),
            ProxyError::BodyTimeout("x".into()),
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::UrlTooLong { limit: 1 },
            ProxyError::HeadTooLarge { limit: 1 },
            ProxyError::TooManyHeaderLines { limit: 1 },
            ProxyError::ClientGone("x".into()),
            ProxyError::Internal("x".into()),
            ProxyError::MethodNotSupported("BREW".into()),
            ProxyError::VersionNotSupported { major: 2, minor: 0 },
            ProxyError::DnsFailed { host: "x".into() },
            ProxyError::ConnectionRefused {
                authority: "x".into(),
            },
            ProxyError::ConnectFailed {
                authority: "x".into(),
                reason: "x".into(),
            },
            ProxyError::UpstreamTls("x".into()),
            ProxyError::UpstreamCertificate("x".into()),
            ProxyError::UpstreamProtocol("x".into()),
            ProxyError::UpstreamClosed("x".into()),
            ProxyError::UpstreamIncomplete("x".into()),
            ProxyError::UpstreamHeadTooLarge { limit: 1 },
            ProxyError::UpstreamTooManyHeaderLines { limit: 1 },
            ProxyError::UpstreamTransferCoding("x".into()),
            ProxyError::UpstreamBodyTooLarge { limit: 1 },
            ProxyError::QueueFull,
            ProxyError::ShuttingDown,
            ProxyError::TooManyConnections {
                what: "max_connections",
                limit: 1,
            },
            ProxyError::UpstreamTimeout(TimeoutPhase::Connect),
            ProxyError::UpstreamTimeout(TimeoutPhase::Response),
            ProxyError::LoopDetected,
        ];
        // A new variant fails to compile here until it joins the list above.
        for err in &every_variant {
            match err {
                ProxyError::BadRequest(_)
                | ProxyError::NotProxyEndpoint { .. }
                | ProxyError::SchemeNotSupported(_)
                | ProxyError::ClientDenied { .. }
                | ProxyError::PurgeDenied { .. }
                | ProxyError::DestinationDenied { .. }
                | ProxyError::PortDenied { .. }
                | ProxyError::ConnectPortDenied { .. }
                | ProxyError::TunnelsOff
                | ProxyError::ProxyAuthRequired(_)
                | ProxyError::HeadTimeout(_)
                | ProxyError::BodyTimeout(_)
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::UrlTooLong { .. }
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::TooManyHeaderLines { .. }
                | ProxyError::ClientGone(_)
                | ProxyError::Internal(_)
                | ProxyError::MethodNotSupported(_)
                | ProxyError::VersionNotSupported { .. }
                | ProxyError::DnsFailed { .. }
                | ProxyError::ConnectionRefused { .. }
                | ProxyError::ConnectFailed { .. }
                | ProxyError::UpstreamTls(_)
                | ProxyError::UpstreamCertificate(_)
                | ProxyError::UpstreamProtocol(_)
                | ProxyError::UpstreamClosed(_)
                | ProxyError::UpstreamIncomplete(_)
                | ProxyError::UpstreamHeadTooLarge { .. }
                | ProxyError::UpstreamTooManyHeaderLines { .. }
                | ProxyError::UpstreamTransferCoding(_)
                | ProxyError::UpstreamBodyTooLarge { .. }
                | ProxyError::QueueFull
                | ProxyError::ShuttingDown
                | ProxyError::TooManyConnections { .. }
                | ProxyError::UpstreamTimeout(_)
                | ProxyError::LoopDetected => {}
            }
        }
        let mut used: Vec<&str> = every_variant.iter().map(ProxyError::proxy_status).collect();
        used.sort_unstable();
        used.dedup();
        let mut listed = PROXY_STATUS_TYPES.to_vec();
        listed.sort_unstable();
        assert_eq!(used, listed);
    }

    #[test]
    fn only_overload_errors_carry_retry_after() {
        assert_eq!(ProxyError::QueueFull.retry_after(), Some(1));
        assert_eq!(ProxyError::LoopDetected.retry_after(), None);
    }

    #[test]
    fn only_missing_or_wrong_credentials_carry_a_challenge() {
        let err = ProxyError::ProxyAuthRequired(AuthFailure::Malformed);
        assert_eq!(err.proxy_authenticate(), Some(auth::CHALLENGE));
        assert!(auth::CHALLENGE.starts_with("Basic realm=\"fetchproxy\""));
        assert!(
            !err.closes_connection(),
            "the client may retry on the same connection"
        );
        assert!(!err.to_string().ends_with('.'), "{err}");
        assert_eq!(ProxyError::LoopDetected.proxy_authenticate(), None);
    }

    /// Issue 14: a refusal says which flag or key would allow the request.
    #[test]
    fn refusals_name_the_flag_and_key_that_allow_them() {
        let loopback: IpAddr = [127, 0, 0, 1].into();
        let v6: IpAddr = "::1".parse().expect("address");
        assert_eq!(
            ProxyError::DestinationDenied { addr: loopback }.to_string(),
            "destination 127.0.0.1 is not allowed; allow it with --allow-dest 127.0.0.1 (or allow_dest in the config file)"
        );
        assert!(
            ProxyError::DestinationDenied { addr: v6 }
                .to_string()
                .contains("--allow-dest ::1 ")
        );
        // No host's address: the hint is not to allow it.
        for (unspecified, loopback) in [
            ("0.0.0.0", "127.0.0.1"),
            ("::", "::1"),
            ("::ffff:0.0.0.0", "127.0.0.1"),
        ] {
            let message = ProxyError::DestinationDenied {
                addr: unspecified.parse().expect("address"),
            }
            .to_string();
            assert!(
                !message.contains(&format!("--allow-dest {unspecified} ")),
                "{message}"
            );
            assert!(
                message.contains(&format!("--allow-dest {loopback}")),
                "{message}"
            );
        }
        assert_eq!(
            ProxyError::PortDenied { port: 25 }.to_string(),
            "destination port 25 is not allowed; to allow it, add --dest-port 25 to the ports given (a list given replaces the default 80, 443, 1024-65535), or 25 to dest_ports in the config file"
        );
        assert_eq!(
            ProxyError::ConnectPortDenied { port: 8443 }.to_string(),
            "CONNECT to port 8443 is not allowed; to allow it, add --connect-port 8443 to the ports given (a list given replaces the default 443), or 8443 to connect_ports in the config file"
        );
        for err in [
            ProxyError::DestinationDenied { addr: loopback },
            ProxyError::PortDenied { port: 25 },
            ProxyError::ConnectPortDenied { port: 25 },
        ] {
            assert!(!err.to_string().ends_with('.'), "{err}");
            assert_eq!(err.status(), 403, "{err}");
            assert!(!err.closes_connection(), "{err}");
        }
    }

    #[test]
    fn framing_errors_close_the_connection() {
        assert!(ProxyError::BadRequest("x".into()).closes_connection());
        assert!(!ProxyError::DnsFailed { host: "x".into() }.closes_connection());
    }
}
