//! Where a request goes, decided once, under the request's rules: one of
//! the proxy's own answers, an origin to forward to, a PURGE of the cache,
//! or a CONNECT target.
//! Checks the URL (scheme, host, port), the method, `dest_ports` and
//! `connect_ports`, and that the proxy is not its own destination. The
//! destination's addresses are checked later, once resolved
//! (`upstream::resolve_allowed`). No I/O but one name lookup, only for a
//! URL on the proxy's own port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ureq::http::Uri;

use crate::access;
use crate::error::ProxyError;
use crate::http::body::BodyFraming;
use crate::http::headers;
use crate::http::request::{RequestHead, TargetForm};
use crate::rules::Rules;
use crate::upstream;

/// The methods named in `Allow` when the proxy answers `OPTIONS` itself
/// (DESIGN.md). Any other method the request line's grammar allows is
/// forwarded too (WebDAV's, `M-SEARCH`, ...), as Squid does: a general
/// proxy cannot know every extension. The cache treats those as unsafe.
pub const FORWARDED_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Methods never forwarded: `TRACE` would echo the request, credentials
/// and cookies included, to whoever can script a page (cross-site
/// tracing); Squid and most proxies refuse it as well. (`CONNECT` only
/// ever has a host and port, never a URL: RFC 9112 §3.2.3.)
const REFUSED_METHODS: &[&str] = &["TRACE"];

/// The method that removes a URL from the cache (Squid's and Varnish's
/// habit), answered by the proxy itself.
pub const PURGE: &str = "PURGE";

/// Where a request goes.
#[derive(Debug)]
pub enum Route {
    /// The proxy answers it itself.
    Own(Endpoint),
    /// Forward it to an origin.
    Forward(Origin),
    /// Open a CONNECT tunnel.
    Tunnel(TunnelTarget),
    /// Remove a URL from the cache.
    Purge,
}

/// The answers the proxy gives itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET`/`HEAD /healthz`.
    Healthz,
    /// `GET`/`HEAD /metrics`.
    Metrics,
    /// `OPTIONS` with `Max-Forwards: 0` (RFC 9110 §7.6.2).
    Options,
}

/// An origin to forward to.
#[derive(Debug)]
pub struct Origin {
    /// The URL to fetch, without credentials. For an OPTIONS about the
    /// whole server its path is `*`, the request-target to send (RFC 9112
    /// §3.2.4): then it prints as no URL does (`http://h*`), so show the
    /// client's target, never this.
    pub uri: Uri,
}

/// A CONNECT target.
#[derive(Debug, PartialEq, Eq)]
pub struct TunnelTarget {
    /// As the client wrote it (`[v6]` literals keep their brackets).
    pub host: String,
    pub port: u16,
}

/// Decides where `head` goes under `rules`. `local` is the address the
/// client reached the proxy on, to refuse URLs that name the proxy itself.
///
/// # Errors
/// `NotProxyEndpoint`, `BadRequest` (bad URL, bad port, `*`),
/// `SchemeNotSupported`, `MethodNotSupported`, `PortDenied`, `LoopDetected`,
/// `DestinationDenied` (for a host that is an address).
pub fn check_target(
    head: &RequestHead,
    rules: &Rules,
    local: Option<SocketAddr>,
) -> Result<Route, ProxyError> {
    match head.target_form() {
        TargetForm::Origin => own_endpoint(head).map(Route::Own),
        TargetForm::Authority => {
            // RFC 9110 §9.3.6: a CONNECT has no content. Bytes announced as
            // one would be piped into the tunnel, framed otherwise by any
            // hop that reads the announcement.
            if !matches!(
                head.body_framing()?,
                BodyFraming::Empty | BodyFraming::Length(0)
            ) {
                return Err(ProxyError::BadRequest(
                    "a CONNECT request has no content (RFC 9110 §9.3.6): send it without Content-Length or Transfer-Encoding".into(),
                ));
            }
            let (host, port) = split_authority(&head.target)?;
            if !rules.connect_ports.contains(&port) {
                return Err(ProxyError::ConnectPortDenied { port });
            }
            Ok(Route::Tunnel(TunnelTarget {
                host: host.to_string(),
                port,
            }))
        }
        TargetForm::Asterisk => Err(ProxyError::BadRequest(format!(
            "{} {} is not a request a proxy can forward",
            head.method, head.target
        ))),
        TargetForm::Absolute => {
            if REFUSED_METHODS.contains(&head.method.as_str()) {
                return Err(ProxyError::MethodNotSupported(head.method.clone()));
            }
            let uri = target_uri(&head.target)?;
            if head.method == PURGE {
                return Ok(Route::Purge);
            }
            if head.method == "OPTIONS"
                && headers::max_forwards(head.header_values("max-forwards")) == Some(0)
            {
                return Ok(Route::Own(Endpoint::Options));
            }
            let (host, port) = upstream::host_and_port(&uri);
            if local.is_some_and(|local| targets_this_proxy(host, port, local)) {
                // The proxy is the origin of its own pages: a client that
                // sends even those through it (`http_proxy` set for every
                // URL) gets them, where anything else would come back here.
                return own_page(&head.method, uri.path())
                    .map(Route::Own)
                    .ok_or_else(|| {
                        if crate::error::is_own_page(uri.path()) {
                            // Asked with another method: a 405, as straight.
                            ProxyError::NotProxyEndpoint {
                                method: head.method.clone(),
                                target: uri.path().to_string(),
                            }
                        } else {
                            ProxyError::LoopDetected
                        }
                    });
            }
            if !access::allows_port(port, &rules.dest_ports) {
                return Err(ProxyError::PortDenied { port });
            }
            // An address is checked here, before the cache: a hit needs no
            // DNS, and a rule a reload took back holds for hits too. A name
            // is checked against what it resolves to, when it is fetched.
            if let Some(ip) = literal_ip(host)
                && !access::allows_destination(ip, &rules.allow_dest)
            {
                return Err(ProxyError::DestinationDenied { addr: ip });
            }
            if head.method == "OPTIONS" && names_no_path(&head.target) {
                return Ok(Route::Forward(Origin {
                    uri: server_wide(uri),
                }));
            }
            Ok(Route::Forward(Origin { uri }))
        }
    }
}

/// Whether an absolute-form `target` has an empty path and no query
/// (`http://h`, `http://h:8080`): for OPTIONS, a question about the server
/// as a whole.
fn names_no_path(target: &str) -> bool {
    let after_scheme = target.find("://").map_or(target, |i| &target[i + 3..]);
    !after_scheme.contains(['/', '?'])
}

/// `uri` with `*` as its request-target: an OPTIONS for the whole server,
/// which the last proxy sends as `OPTIONS * HTTP/1.1` (RFC 9112 §3.2.4).
fn server_wide(uri: Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(ureq::http::uri::PathAndQuery::from_static("*"));
    Uri::from_parts(parts).unwrap_or(uri)
}

/// The proxy's own endpoint an origin-form request asks for.
fn own_endpoint(head: &RequestHead) -> Result<Endpoint, ProxyError> {
    let path = head.target.split('?').next().unwrap_or_default();
    own_page(&head.method, path).ok_or_else(|| ProxyError::NotProxyEndpoint {
        method: head.method.clone(),
        target: head.target.clone(),
    })
}

/// The proxy's own page that `method` and `path` ask for, if any.
pub fn own_page(method: &str, path: &str) -> Option<Endpoint> {
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => Some(Endpoint::Healthz),
        ("GET" | "HEAD", "/metrics") => Some(Endpoint::Metrics),
        _ => None,
    }
}

/// The address a URL's host spells (`10.0.0.1`, `[::1]`, and the numeric
/// spellings the resolver also reads as one: `127.1`, `2130706433`,
/// `0x7f.1`, as the WHATWG URL rules parse them); `None` for a name.
fn literal_ip(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse().ok();
    }
    // The usual spelling first: the URL parser below runs IDNA on the way,
    // which cost a 1 KiB hit a fifth more instructions.
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    // Only digits, hex digits, `x` and dots can spell a number: a name
    // such as `example.com` is not handed to the URL parser at all.
    if !host
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'.' || b.eq_ignore_ascii_case(&b'x'))
    {
        return None;
    }
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        _ => None,
    }
}

/// Parses an absolute-form target into the URI to fetch (credentials dropped).
fn target_uri(target: &str) -> Result<Uri, ProxyError> {
    let bad = |why: &str| ProxyError::BadRequest(format!("bad URL {target:?}: {why}"));
    let uri: Uri = target
        .parse()
        .map_err(|err: ureq::http::uri::InvalidUri| bad(&err.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(ProxyError::SchemeNotSupported(other.to_string())),
        None => return Err(bad("no scheme")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("no host"));
    };
    // userinfo is deprecated in http(s) URLs (RFC 9110 §4.2.4): never forwarded.
    let host_port = upstream::without_userinfo(authority.as_str());
    let (host, after_host) = upstream::split_host(host_port);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let host_port = match check_port(after_host).map_err(|why| bad(&why))? {
        // `:08080` reaches port 8080: the Host header and the cache key
        // say 8080 too, as an origin comparing names as text expects.
        Port::Padded(port) => format!("{host}:{port}"),
        Port::Plain if host_port.len() == authority.as_str().len() => return Ok(uri),
        Port::Plain => host_port.to_string(),
    };
    let mut parts = uri.into_parts();
    parts.authority = Some(host_port.parse().map_err(|_| bad("bad host"))?);
    Uri::from_parts(parts).map_err(|err| bad(&err.to_string()))
}

/// How a valid port is written.
enum Port {
    /// As a number is (or not at all): the authority can stay as it is.
    Plain,
    /// With leading zeros, which RFC 3986 allows: this port.
    Padded(u16),
}

/// Checks what follows the host in `host[:port]` (see
/// `upstream::split_host`): the `http` crate reads `:-1` or `:99999` as no
/// port at all, which would send the request to port 80, and takes text
/// after an IPv6 literal (`[::1]x:81`) with its port unread. An empty
/// port means the default (RFC 3986 §3.2.3).
fn check_port(after_host: &str) -> Result<Port, String> {
    let Some(port) = after_host.strip_prefix(':') else {
        return match after_host {
            "" => Ok(Port::Plain),
            text => Err(format!("{text:?} follows the host")),
        };
    };
    if port.is_empty() {
        return Ok(Port::Plain);
    }
    match port.parse::<u16>() {
        Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(if port.starts_with('0') {
                Port::Padded(n)
            } else {
                Port::Plain
            })
        }
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// Splits `host:port` (`[v6]:port` too); the port is required (RFC 9110 §9.3.6).
fn split_authority(target: &str) -> Result<(&str, u16), ProxyError> {
    let bad = || ProxyError::BadRequest(format!("CONNECT target {target:?} is not host:port"));
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@']) {
        return Err(bad());
    }
    Ok((host, port))
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

#[cfg(test)]
mod tests;
