//! The upstream side: the `ureq::Agent`s (one per group of workers, each
//! with its pool of connections; no redirects, statuses passed through,
//! bodies untouched), the one place
//! where a destination's addresses are resolved and checked against the
//! destination policy (for forwarding, through ureq's resolver, and for
//! CONNECT), and the mapping of `ureq::Error` to `ProxyError`. Never sees
//! the client socket.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ureq::config::AutoHeaderValue;
use ureq::http::Uri;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Connector, NextTimeout, RustlsConnector};

use crate::access;
use crate::config::ServeConfig;
use crate::error::{ProxyError, TimeoutPhase};
use crate::metrics::Metrics;
use crate::rules::{Rules, SharedRules};
use crate::transport::interim::InterimConnector;
use crate::transport::{self, OriginConnector};

/// Room beyond the response-head limit that the input buffer may grow to,
/// so that ureq sees a head over the limit (and refuses it) before the
/// buffer is full.
const INPUT_HEAD_SLACK_BYTES: usize = 4 * 1024;
/// Room beyond the request-head limit for what the proxy adds (`Via`,
/// `X-Request-Id`, `Host`).
const OUTPUT_HEAD_SLACK_BYTES: usize = 4 * 1024;
/// How many resolved addresses ureq accepts from a resolver.
const MAX_RESOLVED: usize = 16;

/// A CA file (`upstream_ca_file`) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("upstream_ca_file {path}: {problem}")]
pub struct CaFileError {
    path: String,
    problem: String,
}

/// The TLS settings of https origins: the bundled public roots, or the
/// authorities of `upstream_ca_file` in their place.
///
/// # Errors
/// When the file cannot be read, or holds no certificate.
pub fn tls_config(config: &ServeConfig) -> Result<TlsConfig, CaFileError> {
    let Some(path) = &config.upstream_ca_file else {
        return Ok(TlsConfig::default());
    };
    let failed = |problem: String| CaFileError {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|err| failed(format!("cannot read it: {err}")))?;
    let roots = authorities(&pem).map_err(failed)?;
    log::info!(
        "https origins: checked against the {} certificate(s) of {}",
        roots.len(),
        path.display()
    );
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build())
}

/// The certificates of a PEM file; anything else in it (a key) is skipped.
/// Each must read as an authority: ureq would drop one that does not
/// without a word, and every origin it signs would then be refused.
fn authorities(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(err) => return Err(format!("not a PEM file of certificates ({err})")),
        }
    }
    if certs.is_empty() {
        return Err("no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into());
    }
    let ders = certs
        .iter()
        .map(|cert| rustls::pki_types::CertificateDer::from(cert.der()));
    let (_, unreadable) = rustls::RootCertStore::empty().add_parsable_certificates(ders);
    if unreadable > 0 {
        return Err(format!(
            "{unreadable} of its {} certificates cannot be read as an authority",
            certs.len()
        ));
    }
    Ok(certs)
}

/// Builds the agent a group of `workers` workers shares.
fn agent(
    config: &ServeConfig,
    tls: &TlsConfig,
    workers: usize,
    rules: SharedRules,
    metrics: Arc<Metrics>,
) -> ureq::Agent {
    let agent_config = ureq::Agent::config_builder()
        .tls_config(tls.clone())
        // A proxy passes redirects and error statuses back; it follows nothing.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        // Never pick up HTTP_PROXY from the environment: we are the proxy.
        .proxy(None)
        // Forward exactly what the client sent: no headers of our own, no
        // Accept-Encoding (so no decompression either).
        .user_agent(AutoHeaderValue::None)
        .accept(AutoHeaderValue::None)
        .accept_encoding(AutoHeaderValue::None)
        .allow_non_standard_methods(true)
        .timeout_connect(Some(config.connect_timeout))
        // upstream_timeout bounds every silence of the origin: while it reads
        // the request, before its response head, and inside its body; and
        // the whole head, from the request sent to its last byte, so that
        // an origin trickling it in holds no worker for longer. Fixed
        // per-read and per-write limits (rather than shrinking per-phase
        // budgets throughout) also spare a setsockopt call on every socket
        // operation (and the head's shrinking budget, see
        // transport::read_timeout_changes).
        .timeout_per_read(Some(config.upstream_timeout))
        .timeout_per_write(Some(config.upstream_timeout))
        .timeout_recv_response(Some(config.upstream_timeout))
        .max_response_header_size(config.max_header_bytes)
        // Our plain-TCP transport's buffers start small and take these as
        // how far they may grow (see transport::buffers); ureq's TLS layer
        // allocates them whole. Either way a head that passed the request
        // limit fits going out, and one just over the response limit is
        // seen and refused coming in.
        .input_buffer_size(config.max_header_bytes + INPUT_HEAD_SLACK_BYTES)
        .output_buffer_size(config.max_header_bytes + OUTPUT_HEAD_SLACK_BYTES)
        // A worker uses one connection at a time: more idle ones than
        // workers for one origin are never all of use, and the pool scans
        // its idle list under a lock on every call.
        .max_idle_connections(workers * 2)
        .max_idle_connections_per_host(workers)
        .max_idle_age(config.idle_timeout)
        .build();
    let resolver = CheckingResolver { rules };
    // Plain TCP with a cheap liveness probe, then TLS for https origins.
    let connector = ()
        .chain(OriginConnector { metrics })
        .chain(RustlsConnector::default())
        // Over TLS, so that interim responses are seen in plain text.
        .chain(InterimConnector);
    ureq::Agent::with_parts(agent_config, connector, resolver)
}

/// How many workers share one pool of idle upstream connections. ureq's
/// pool walks its whole idle list, under its lock, every time a connection
/// goes back to it: with one pool for 1,024 workers that walk and the
/// waiting on its lock were 14% of the CPU of a far-origin load. A pool per
/// group of workers keeps the list short; connections to an origin are
/// still reused within each group.
const WORKERS_PER_POOL: usize = 16;

/// The upstream agents: one per group of `WORKERS_PER_POOL` workers.
#[derive(Debug)]
pub struct Agents(Vec<ureq::Agent>);

thread_local! {
    /// The pool of upstream connections this worker thread uses.
    static POOL_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Agents {
    /// One agent per group of workers, checking https origins as `tls`
    /// says (see [`tls_config`]).
    pub fn new(
        config: &ServeConfig,
        tls: &TlsConfig,
        rules: &SharedRules,
        metrics: &Arc<Metrics>,
    ) -> Agents {
        let workers = config.workers.get();
        let groups = workers.div_ceil(WORKERS_PER_POOL);
        let per_group = workers.min(WORKERS_PER_POOL);
        Agents(
            (0..groups)
                .map(|_| agent(config, tls, per_group, rules.clone(), metrics.clone()))
                .collect(),
        )
    }

    /// The agent of the calling worker's group (the first group's on any
    /// other thread).
    pub fn current(&self) -> &ureq::Agent {
        let index = POOL_INDEX.with(std::cell::Cell::get);
        &self.0[index % self.0.len()]
    }

    /// Makes the calling thread, worker `n` (from 0), use its group's agent.
    pub fn enter(n: usize) {
        POOL_INDEX.with(|i| i.set(n / WORKERS_PER_POOL));
    }
}

thread_local! {
    /// The rules of the request this thread is sending upstream: ureq's
    /// resolver runs on the calling thread and has no other way to learn
    /// which snapshot the request took.
    static REQUEST_RULES: RefCell<Option<Arc<Rules>>> = const { RefCell::new(None) };
}

/// Runs `send` (an `Agent::run` call) with `rules` as the rules its
/// resolver checks addresses against, so a request uses one snapshot from
/// admission to connection even if a reload happens meanwhile.
pub fn with_rules<T>(rules: &Arc<Rules>, send: impl FnOnce() -> T) -> T {
    /// Clears the slot however `send` ends, a panic included.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            REQUEST_RULES.with(|slot| slot.borrow_mut().take());
        }
    }
    REQUEST_RULES.with(|slot| *slot.borrow_mut() = Some(rules.clone()));
    let _clear = Clear;
    send()
}

/// The host a URI names (an IPv6 literal with its brackets) and its port
/// (the scheme's default when it names none): what `Uri::host` and
/// `Uri::port_u16` give, found in one pass over the authority's bytes.
/// Every forwarded request asks several times, and the `http` crate's
/// generic string searches cost more than the request's cache lookup.
pub fn host_and_port(uri: &Uri) -> (&str, u16) {
    let default = default_port(uri);
    let Some(authority) = uri.authority() else {
        return ("", default);
    };
    let (host, rest) = split_host(without_userinfo(authority.as_str()));
    let port = rest
        .strip_prefix(':')
        .and_then(|port| port.parse().ok())
        .unwrap_or(default);
    (host, port)
}

/// The `Host` header for a request to `uri` (RFC 9112 §3.2.2): its host,
/// and its port when that is not the scheme's default, as ureq would write
/// it. Set by the proxy so that ureq does not format it for every request.
/// `None` for a URI without an authority.
pub fn host_header(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?;
    let host_port = without_userinfo(authority.as_str());
    let (host, rest) = split_host(host_port);
    let default = default_port(uri);
    match rest
        .strip_prefix(':')
        .and_then(|port| port.parse::<u16>().ok())
    {
        Some(port) if port != default => Some(host_port),
        _ => Some(host),
    }
}

/// The port a URI's scheme implies: 443 for https, 80 otherwise.
fn default_port(uri: &Uri) -> u16 {
    match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    }
}

/// An authority's `host[:port]`, without the userinfo before its last `@`.
pub fn without_userinfo(authority: &str) -> &str {
    match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

/// Splits `host[:port]` after its host (an IPv6 literal with its
/// brackets): the host, and what follows it (`:port`, or nothing).
pub fn split_host(host_port: &str) -> (&str, &str) {
    let host_end = if host_port.starts_with('[') {
        host_port.bytes().position(|b| b == b']').map(|end| end + 1)
    } else {
        host_port.bytes().position(|b| b == b':')
    }
    .unwrap_or(host_port.len());
    host_port.split_at(host_end)
}

/// Resolves `host` and keeps the addresses the destination policy allows
/// (at most `MAX_RESOLVED`): forwarding and CONNECT both connect only to
/// what this returns, so DNS rebinding cannot slip past the check.
///
/// # Errors
/// `DnsFailed` when the name does not resolve, `DestinationDenied` naming
/// the first address when none is allowed.
pub fn resolve_allowed(
    host: &str,
    port: u16,
    rules: &Rules,
) -> Result<Vec<SocketAddr>, ProxyError> {
    let resolved = resolve(host, port)?;
    let first = resolved[0].ip();
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| access::allows_destination(addr.ip(), &rules.allow_dest))
        .take(MAX_RESOLVED)
        .collect();
    if allowed.is_empty() {
        return Err(ProxyError::DestinationDenied { addr: first });
    }
    Ok(allowed)
}

/// ureq's resolver: [`resolve_allowed`] under the rules of the request
/// being sent (see [`with_rules`]), or the rules in force when none was set.
#[derive(Debug)]
struct CheckingResolver {
    rules: SharedRules,
}

impl Resolver for CheckingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let rules = REQUEST_RULES
            .with(|slot| slot.borrow().clone())
            .unwrap_or_else(|| self.rules.current());
        let (host, port) = host_and_port(uri);
        let allowed =
            resolve_allowed(host, port, &rules).map_err(|err| ureq::Error::Other(Box::new(err)))?;
        let mut addrs = self.empty();
        for addr in allowed {
            addrs.push(addr);
        }
        Ok(addrs)
    }
}

/// Resolves `host` (a name, or an IP literal in any spelling the system
/// accepts, such as `127.1`) to socket addresses.
///
/// # Errors
/// `DnsFailed` when the name does not resolve to any address.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ProxyError> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let dns_failed = || ProxyError::DnsFailed {
        host: host.to_string(),
    };
    // A name lookup waits on a DNS server: the worker does not count as
    // running meanwhile (see `server::idle`).
    let addrs: Vec<SocketAddr> = {
        let _waiting = crate::server::idle::waiting();
        (literal, port).to_socket_addrs()
    }
    .map_err(|_| dns_failed())?
    .collect();
    if addrs.is_empty() {
        Err(dns_failed())
    } else {
        Ok(addrs)
    }
}

/// Turns a ureq failure into the error the client is answered with.
pub fn map_error(err: ureq::Error, authority: &str) -> ProxyError {
    use ureq::Error as E;
    match err {
        E::Other(inner) => match inner.downcast::<ProxyError>() {
            Ok(proxy_error) => *proxy_error,
            Err(other) => ProxyError::UpstreamProtocol(other.to_string()),
        },
        E::HostNotFound => ProxyError::DnsFailed {
            host: authority.to_string(),
        },
        E::Timeout(timeout) => ProxyError::UpstreamTimeout(timeout_phase(timeout)),
        E::Io(io_err) => map_io_error(io_err, authority),
        E::ConnectionFailed => ProxyError::ConnectFailed {
            authority: authority.to_string(),
            reason: "connection failed".into(),
        },
        E::BodyExceedsLimit(limit) => ProxyError::UpstreamBodyTooLarge { limit },
        E::LargeResponseHeader(_, limit) => ProxyError::UpstreamHeadTooLarge { limit },
        E::Tls(reason) => ProxyError::UpstreamTls(reason.to_string()),
        E::Rustls(tls_err) => tls_error(&tls_err),
        E::Protocol(proto) => protocol_failure(&proto, authority),
        E::BadUri(uri) => ProxyError::BadRequest(format!("bad URL {uri:?}")),
        E::Http(http_err) => ProxyError::BadRequest(http_err.to_string()),
        other => ProxyError::UpstreamProtocol(other.to_string()),
    }
}

/// Turns an I/O error while talking to the origin into the client's answer.
pub fn map_io_error(err: io::Error, authority: &str) -> ProxyError {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ProxyError::ConnectionRefused {
            authority: authority.to_string(),
        },
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            ProxyError::UpstreamTimeout(TimeoutPhase::Response)
        }
        io::ErrorKind::FileTooLarge => ProxyError::UpstreamBodyTooLarge { limit: 0 },
        // Connected, then closed or reset: before a byte of the answer, the
        // connection was terminated; after some, the answer is incomplete.
        // Either way its address was reachable.
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => {
            if transport::attempt().received == 0 {
                ProxyError::UpstreamClosed(format!(
                    "{authority} closed the connection before answering"
                ))
            } else {
                ProxyError::UpstreamIncomplete(format!(
                    "{authority} closed the connection before a complete response"
                ))
            }
        }
        _ => match err.downcast::<ureq::Error>() {
            Ok(ureq_err) => map_error(ureq_err, authority),
            // rustls reports a failed handshake or a corrupt record as an
            // InvalidData I/O error, and ureq passes it on as `Error::Io`;
            // nothing else on the way to the origin fails that way.
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                let tls_err = err
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>());
                tls_err.map_or_else(|| ProxyError::UpstreamTls(err.to_string()), tls_error)
            }
            Err(err) => ProxyError::ConnectFailed {
                authority: authority.to_string(),
                reason: err.to_string(),
            },
        },
    }
}

/// A response that broke HTTP/1.1's rules, in words: the origin, and when
/// its first line was no status line at all, that it may not speak HTTP
/// (an SSH, SMTP or database port given by mistake). A head of too many
/// lines is too large a head, not a broken one.
fn protocol_failure(proto: &impl std::fmt::Display, authority: &str) -> ProxyError {
    let said = proto.to_string();
    if said == TOO_MANY_HEADERS {
        return ProxyError::UpstreamTooManyHeaderLines {
            limit: RESPONSE_HEADER_LINES,
        };
    }
    // ureq passes httparse's words on for a head it cannot read.
    let no_status_line = ["invalid HTTP version", "invalid response status"]
        .iter()
        .any(|why| said.ends_with(why));
    ProxyError::UpstreamProtocol(if no_status_line {
        format!("{authority} did not answer in HTTP ({said}): is that port a web server?")
    } else {
        format!("{authority} broke the protocol: {said}")
    })
}

/// How ureq words a response head with more header lines than it parses
/// (`RESPONSE_HEADER_LINES`); it has no error of its own for that.
const TOO_MANY_HEADERS: &str = "http parse resulted in too many headers";

/// Most header lines ureq parses in a response head (ureq-proto's
/// `MAX_RESPONSE_HEADERS`).
const RESPONSE_HEADER_LINES: usize = 128;

/// A TLS failure in words: rustls shows some certificate problems only as
/// their debug names (`UnknownIssuer`, `Other(OtherError(CaUsedAsEndEntity))`).
fn tls_error(err: &rustls::Error) -> ProxyError {
    use rustls::CertificateError as C;
    if let rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) = err {
        // The first bytes back were no TLS record: most often a plain HTTP
        // answer, from a port that does not speak TLS.
        return ProxyError::UpstreamTls(format!(
            "{err}: the origin did not answer in TLS; if that port serves plain HTTP, \
             ask for the http:// URL"
        ));
    }
    let rustls::Error::InvalidCertificate(problem) = err else {
        return ProxyError::UpstreamTls(err.to_string());
    };
    // Short enough that `Proxy-Status` (256 bytes) carries them whole.
    let why = match problem {
        C::UnknownIssuer => "it is not signed by an authority the proxy trusts (self-signed or a \
                             private CA); give that CA with --upstream-ca-file (in place of the \
                             public ones), or use a CONNECT tunnel (https_proxy)"
            .to_string(),
        // webpki refuses a CA's certificate as a server's own before it
        // looks for its issuer, so listing it as a CA does not help.
        C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "it is a CA certificate (CA:TRUE, as openssl req -x509 makes), refused as a server's \
             own even when given as a CA; sign the origin's with a CA and give that CA with \
             --upstream-ca-file"
                .to_string()
        }
        C::BadEncoding => "it is malformed".to_string(),
        C::Revoked => "it is revoked".to_string(),
        C::BadSignature => "its signature does not verify".to_string(),
        other => other.to_string(),
    };
    ProxyError::UpstreamCertificate(why)
}

fn timeout_phase(timeout: ureq::Timeout) -> TimeoutPhase {
    match timeout {
        ureq::Timeout::Resolve | ureq::Timeout::Connect => TimeoutPhase::Connect,
        _ => TimeoutPhase::Response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA certificate (EC P-256, valid until 2126), made with openssl.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBqjCCAVGgAwIBAgIUSg4KZhwxFxTg15hDpXNBeP5fOcIwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXZmV0Y2hwcm94eSB1bml0IHRlc3QgQ0EwIBcNMjYxMjA2MDMz
MzU1WhgPMjEyNjExMTIwMzMzNTVaMCIxIDAeBgNVBAMMF2ZldGNocHJveHkgdW5p
dCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcHZHaMhB2hVy71RL
7Wg85rzCZYDE3tMOIq/5hXzwNiJ1yUalEQIoTqHSoL5sfDBvpwOLBmNpKAc9Tc5n
YuwqA6NjMGEwHQYDVR0OBBYEFD3Jfyp968TebCc62fVkCJQ2viKxMB8GA1UdIwQY
MBaAFD3Jfyp968TebCc62fVkCJQ2viKxMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0P
AQH/BAQDAgIEMAoGCCqGSM49BAMCA0cAMEQCIEiXdoDBxw3puNEwh0AzD366Yz1f
nGGLp51Yyb3TtxNiAiAKTmHdoKVJI6DKPrpS1xaDdfevOc405DGRo1ZldDK0Ag==
-----END CERTIFICATE-----
";

    #[test]
    fn a_ca_file_gives_its_certificates_and_nothing_else() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let two = format!("{CA_PEM}{key}{CA_PEM}");
        assert_eq!(authorities(two.as_bytes()).map(|c| c.len()), Ok(2));
        for nothing in ["", "just text", key] {
            let err = authorities(nothing.as_bytes()).expect_err(nothing);
            assert!(err.contains("no certificate"), "{err}");
        }
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = authorities(format!("{CA_PEM}{garbled}").as_bytes()).expect_err("garbled");
        assert_eq!(
            err,
            "1 of its 2 certificates cannot be read as an authority"
        );
    }

    #[test]
    fn host_and_port_agree_with_the_http_crate() {
        for text in [
            "http://example.com/",
            "https://example.com/",
            "http://example.com:8080/a",
            "https://EXAMPLE.com:443/",
            "http://127.0.0.1:18080/1k.bin?n=1",
            "http://[::1]/",
            "http://[::1]:8080/",
            "https://[fe80::1%25eth0]:8443/",
            "http://user:pw@example.com/",
            "http://user:pw@example.com:81/",
            "http://user@[::1]:82/",
            "http://example.com:/",
            "http://a:b@c:d@e:83/",
        ] {
            let uri: Uri = text.parse().expect("test URI");
            let default = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let expected = (
                uri.host().unwrap_or_default(),
                uri.port_u16().unwrap_or(default),
            );
            assert_eq!(host_and_port(&uri), expected, "{text}");
        }
    }

    #[test]
    fn the_host_header_is_the_authority_without_a_default_port() {
        for (text, host) in [
            ("http://example.com/", "example.com"),
            ("http://example.com:80/", "example.com"),
            ("http://example.com:443/", "example.com:443"),
            ("https://example.com:443/", "example.com"),
            ("http://example.com:8080/a", "example.com:8080"),
            ("http://example.com:/", "example.com"),
            ("http://[::1]/", "[::1]"),
            ("http://[::1]:8080/", "[::1]:8080"),
            ("http://user:pw@127.0.0.1:81/", "127.0.0.1:81"),
            ("http://a:b@c:d@e:83/", "e:83"),
        ] {
            let uri: Uri = text.parse().expect("test URI");
            assert_eq!(host_header(&uri), Some(host), "{text}");
        }
    }

    #[test]
    fn ip_literals_resolve_without_dns() {
        assert_eq!(
            resolve("127.0.0.1", 80).expect("literal"),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1]", 443).expect("literal"),
            vec!["[::1]:443".parse().unwrap()]
        );
    }

    #[test]
    fn other_spellings_of_loopback_resolve_to_loopback() {
        // The system resolver (inet_aton) reads these as IPv4 addresses; the
        // policy then judges the address, whatever the spelling.
        for spelling in ["127.1", "2130706433", "0x7f.1"] {
            let addrs = resolve(spelling, 80).expect(spelling);
            assert!(
                addrs.iter().all(|a| a.ip().is_loopback()),
                "{spelling}: {addrs:?}"
            );
        }
    }

    #[test]
    fn reserved_invalid_names_fail_as_dns_errors() {
        let err = resolve("nothing.invalid", 80).expect_err("RFC 6761 .invalid never resolves");
        assert_eq!(err.proxy_status(), "dns_error");
    }

    #[test]
    fn refused_connections_map_to_connection_refused() {
        let err = map_io_error(io::Error::from(io::ErrorKind::ConnectionRefused), "a:1");
        assert_eq!(
            (err.status(), err.proxy_status()),
            (502, "connection_refused")
        );
    }

    #[test]
    fn an_origin_closing_early_is_a_terminated_connection_not_an_unreachable_one() {
        for kind in [
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            let err = map_io_error(io::Error::new(kind, "Peer disconnected"), "a:1");
            // Nothing was received on this thread's attempt.
            assert_eq!(
                (err.status(), err.proxy_status()),
                (502, "connection_terminated"),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn tls_failures_passed_on_as_io_errors_map_to_tls_protocol_error() {
        let err = map_io_error(
            io::Error::new(io::ErrorKind::InvalidData, "received corrupt message"),
            "a:443",
        );
        assert_eq!(
            (err.status(), err.proxy_status()),
            (502, "tls_protocol_error")
        );
    }

    #[test]
    fn connect_timeouts_are_told_apart_from_response_timeouts() {
        let connect = map_error(ureq::Error::Timeout(ureq::Timeout::Connect), "a:1");
        let response = map_error(ureq::Error::Timeout(ureq::Timeout::RecvResponse), "a:1");
        assert_eq!(connect.proxy_status(), "connection_timeout");
        assert_eq!(response.proxy_status(), "http_response_timeout");
    }

    #[test]
    fn a_plain_http_answer_to_tls_is_told_as_such() {
        let said = tls_error(&rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ))
        .to_string();
        assert!(said.contains("did not answer in TLS"), "{said}");
        assert!(said.contains("http:// URL"), "{said}");
    }

    #[test]
    fn certificate_problems_are_told_in_words() {
        #[derive(Debug)]
        struct CaUsedAsEndEntity;
        impl std::fmt::Display for CaUsedAsEndEntity {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{self:?}")
            }
        }
        impl std::error::Error for CaUsedAsEndEntity {}
        let self_signed = rustls::CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
            CaUsedAsEndEntity,
        )));
        for (problem, said) in [
            (
                rustls::CertificateError::UnknownIssuer,
                "not signed by an authority the proxy trusts",
            ),
            (self_signed, "it is a CA certificate (CA:TRUE"),
        ] {
            let tls_err = rustls::Error::InvalidCertificate(problem);
            // As ureq passes it on: inside an I/O error.
            let err = map_io_error(io::Error::new(io::ErrorKind::InvalidData, tls_err), "a:443");
            assert_eq!(err.proxy_status(), "tls_certificate_error");
            let text = err.to_string();
            assert!(text.contains(said), "{text}");
            assert!(text.contains("--upstream-ca-file"), "{text}");
            assert!(!text.contains("Other("), "{text}");
            // Whole in Proxy-Status, which carries 256 bytes.
            assert!(text.len() <= 256, "{} bytes: {text}", text.len());
        }
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let err = map_error(ureq::Error::Rustls(expired), "a:443");
        assert_eq!(err.proxy_status(), "tls_certificate_error");
        assert!(err.to_string().contains("certificate was refused"), "{err}");
    }
}
