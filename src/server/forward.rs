//! Forwarding one request to its origin, as phases: the request built
//! from the client's (hop-by-hop headers out, `Via` in, and the cache's
//! validators in place of the client's own when it revalidates), then
//! the upstream call with the request body streamed up (`100 Continue`
//! first, when the client expects it, once the origin has the head),
//! until the response head. The body is
//! streamed back by `relay`; whether the cache answers instead, or keeps a
//! copy, is `cached`'s business. The route and the policy were settled
//! before (`target`); the addresses are checked when they are resolved
//! (`upstream`).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use ureq::SendBody;
use ureq::http::request::Parts;
use ureq::http::{self, HeaderName, HeaderValue};

use crate::cache::fill::Fill;
use crate::error::ProxyError;
use crate::http::body::BodyFraming;
use crate::http::field::is_token_byte;
use crate::http::headers::{self, HopByHop};
use crate::http::request::{RequestHead, Version, list_elements};
use crate::logging;
use crate::rules::Rules;
use crate::server::conn::ClientConn;
use crate::server::context::Context;
use crate::server::request_body::ClientBody;
use crate::server::target::Origin;
use crate::transport::{self, Attempt, interim};
use crate::upstream;

/// Request headers this proxy sets itself instead of copying.
const REPLACED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "expect",
    "max-forwards",
    "x-request-id",
    "content-length",
];

/// The request id's header, named once: a name given as text is parsed
/// on every use.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's validators, left out when the cache sends its own: the
/// answer must say whether the stored response is still good, not whether
/// the client's copy is (RFC 9111 §4.3.1).
const CLIENT_VALIDATORS: [HeaderName; 2] =
    [http::header::IF_NONE_MATCH, http::header::IF_MODIFIED_SINCE];

/// The origin's answer: its head, with the body still to be read.
pub struct Upstream {
    pub response: http::Response<ureq::Body>,
    /// The client's request body was read to its end, so the connection
    /// can carry another request.
    pub body_read: bool,
    /// Interim (1xx) heads the origin sent first, as received.
    pub interim: Vec<Vec<u8>>,
}

/// Sends `head` (and its body from `conn`) to `origin`, until the response
/// head arrives. `validators`, when the cache revalidates a stored
/// response, replace the client's `If-None-Match` and `If-Modified-Since`.
/// `fill` is the cache fill the answer goes to, if any: while other
/// requests wait on it, the call goes on when the client hangs up.
///
/// # Errors
/// A `ProxyError` for the client: its own fault (413, 400), the
/// upstream's (502, 504), or `ClientGone` when the client hung up before
/// the answer came (`hangup`); nothing has been sent to the client but
/// maybe `100 Continue`.
#[allow(clippy::too_many_arguments)] // each is a different part of the request
pub fn fetch(
    conn: &mut ClientConn,
    head: &RequestHead,
    origin: &Origin,
    validators: Option<&[(HeaderName, HeaderValue)]>,
    fill: Option<&Arc<Fill>>,
    request_id: &str,
    rules: &Arc<Rules>,
    ctx: &Context,
) -> Result<Upstream, ProxyError> {
    let framing = head.body_framing()?;
    if let (BodyFraming::Length(len), Some(limit)) = (framing, ctx.config.max_body_bytes)
        && len > limit
    {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let authority = origin.uri.authority().map_or("", |a| a.as_str());
    let request = || {
        upstream_request(
            head,
            origin,
            framing,
            validators,
            request_id,
            &ctx.config.via_name,
        )
    };
    let mut first = Some(request()?);
    // A GET or HEAD without a body is given up when its client hangs up
    // before the answer (`hangup`).
    let mut watching =
        if framing == BodyFraming::Empty && matches!(head.method.as_str(), "GET" | "HEAD") {
            conn.watch_hangup(fill).map_err(|_| client_gone())?
        } else {
            None
        };
    let (mut response, body_read) = loop {
        let call = match first.take() {
            Some(call) => call,
            None => request()?,
        };
        let body = ClientBody::new(conn, head, framing, ctx.config.max_body_bytes);
        let sent = send(body, call, &request, framing, authority, rules, ctx);
        match (sent, watching.take()) {
            (Err(_), Some(watch)) if watch.hung_up() => {
                if conn.at_end() {
                    return Err(client_gone());
                }
                // Input came before the end (the next request, then a
                // half-close): the client is still there. Sent again,
                // unwatched (the watch ends here), so at most once.
                log::debug!("{authority}: the client sent more and half-closed; sending again");
            }
            (sent, still) => {
                watching = still;
                break sent?;
            }
        }
    };
    drop(watching);
    check_response(&response)?;
    date_if_missing(&mut response);
    Ok(Upstream {
        response,
        body_read,
        interim: interim::take(),
    })
}

/// The client hung up before the answer came.
fn client_gone() -> ProxyError {
    ProxyError::ClientGone("it hung up before the origin answered".into())
}

/// Sends `head` to `origin` for the cache alone, with no client behind it
/// (a revalidation made after a stale answer went out): no body, no
/// retry, `validators` in place of the client's, under `rules`.
///
/// # Errors
/// The upstream's failure, as for `fetch`.
pub fn fetch_detached(
    head: &RequestHead,
    origin: &Origin,
    validators: &[(HeaderName, HeaderValue)],
    request_id: &str,
    rules: &Arc<Rules>,
    agent: &ureq::Agent,
    via_name: &str,
) -> Result<http::Response<ureq::Body>, ProxyError> {
    let authority = origin.uri.authority().map_or("", |a| a.as_str());
    let request = upstream_request(
        head,
        origin,
        BodyFraming::Empty,
        Some(validators),
        request_id,
        via_name,
    )?;
    transport::begin_attempt(head_bytes(&request));
    let call = http::Request::from_parts(request, ());
    let mut response = upstream::with_rules(rules, || agent.run(call.map(|()| SendBody::none())))
        .map_err(|err| upstream::map_error(err, authority))?;
    check_response(&response)?;
    date_if_missing(&mut response);
    Ok(response)
}

/// Gives a response without `Date` the time it was received, as a
/// recipient with a clock must before it forwards or caches it (RFC 9110
/// §6.6.1); its age is then counted from then.
fn date_if_missing<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    if headers.contains_key(http::header::DATE) {
        return;
    }
    let now = headers::http_date(std::time::SystemTime::now());
    headers.insert(http::header::DATE, now);
}

/// Content codings that change a body's bytes: named as a transfer
/// coding, the proxy would drop them and pass the bytes on still coded.
const BYTE_CODINGS: [&str; 7] = [
    "gzip",
    "x-gzip",
    "deflate",
    "compress",
    "x-compress",
    "br",
    "zstd",
];

/// Refuses a response the proxy cannot pass on as it came: a switch of
/// protocols it never asked for (it sends no `Upgrade`, a hop-by-hop
/// field); both `Content-Length` and `Transfer-Encoding`, the sign of a
/// response split (RFC 9112 §6.3, which nginx refuses too); an HTTP/1.0
/// response with `Transfer-Encoding`, whose framing RFC 9112 §6.1 calls
/// faulty (its body would reach the client with the chunks' framing in it);
/// a transfer coding that codes the bytes (`gzip, chunked`), which would
/// reach the client with the coding dropped and the bytes still coded; and
/// `chunked` followed by another coding, given parameters, or a coding
/// that is no token (the body would reach the client still chunked).
/// A coding it does not know is left as before (dropped with the field,
/// the body framed as the rest of the head says), as the public cache
/// tests expect. All are 502 `http_protocol_error`, but for the codings,
/// `http_response_transfer_coding`.
fn check_response<B>(response: &http::Response<B>) -> Result<(), ProxyError> {
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpstreamProtocol(
            "the origin switched protocols (101), which was not asked for".into(),
        ));
    }
    let headers = response.headers();
    if !headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(());
    }
    if headers.contains_key(http::header::CONTENT_LENGTH) {
        return Err(ProxyError::UpstreamProtocol(
            "the origin sent both Content-Length and Transfer-Encoding".into(),
        ));
    }
    if response.version() == http::Version::HTTP_10 {
        return Err(ProxyError::UpstreamProtocol(
            "the origin sent Transfer-Encoding in an HTTP/1.0 response".into(),
        ));
    }
    let malformed = |value: &[u8]| {
        ProxyError::UpstreamTransferCoding(format!(
            "the origin's Transfer-Encoding is malformed: {:?}",
            String::from_utf8_lossy(value)
        ))
    };
    let mut codings = Vec::new();
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        // ureq reads a body as chunked only where an element of a value
        // that is all visible ASCII is the bare word: `chunked;x=1`,
        // `"chunked"`, or a byte over 0x7f anywhere in the value would
        // have the body reach the client with the chunks' framing in its
        // bytes, and be stored so.
        if value.to_str().is_err() {
            return Err(malformed(value.as_bytes()));
        }
        codings_of(value.as_bytes(), &mut codings).map_err(|()| malformed(value.as_bytes()))?;
    }
    if let Some(coding) = codings
        .iter()
        .find(|coding| BYTE_CODINGS.contains(&coding.as_str()))
    {
        return Err(ProxyError::UpstreamTransferCoding(format!(
            "transfer coding {coding:?} is not decoded by this proxy; only chunked"
        )));
    }
    // RFC 9112 §6.3: chunked anywhere but last leaves the body to run to
    // the close, while ureq would read it as chunked and reuse the
    // connection after it.
    let chunked = codings.iter().position(|coding| coding == "chunked");
    if chunked.is_some_and(|at| at + 1 != codings.len()) {
        return Err(ProxyError::UpstreamTransferCoding(
            "the origin's Transfer-Encoding has chunked before another coding".into(),
        ));
    }
    Ok(())
}

/// Adds the coding names of one `Transfer-Encoding` value to `codings`,
/// lowercased. `Err` for a name that is no token, and for `chunked` with
/// parameters, which it has none of (RFC 9112 §7.1).
fn codings_of(value: &[u8], codings: &mut Vec<String>) -> Result<(), ()> {
    for element in list_elements(value) {
        let name = element.split(|&b| b == b';').next().unwrap_or_default();
        let name = name.trim_ascii();
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return Err(());
        }
        if name.eq_ignore_ascii_case(b"chunked") && name.len() != element.len() {
            return Err(());
        }
        codings.push(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    Ok(())
}

/// The request sent upstream: the client's method and end-to-end headers
/// (RFC 9110 §7.6.1), the URL without credentials, `Max-Forwards` one less,
/// the body's length, our `Via`, and the request id.
fn upstream_request(
    head: &RequestHead,
    origin: &Origin,
    framing: BodyFraming,
    validators: Option<&[(HeaderName, HeaderValue)]>,
    request_id: &str,
    via_name: &str,
) -> Result<Parts, ProxyError> {
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(origin.uri.clone());
    let headers = request.headers_mut().ok_or_else(|| {
        ProxyError::BadRequest(format!("cannot forward {} {}", head.method, head.target))
    })?;
    if let Some(host) = upstream::host_header(&origin.uri) {
        headers.insert(http::header::HOST, header_value(host.as_bytes())?);
    }
    copy_request_headers(head, headers)?;
    if let Some(validators) = validators {
        for name in &CLIENT_VALIDATORS {
            headers.remove(name);
        }
        for (name, value) in validators {
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(n) = headers::max_forwards(head.header_values("max-forwards")) {
        headers.insert(
            http::header::MAX_FORWARDS,
            HeaderValue::from(n.saturating_sub(1)),
        );
    }
    match framing {
        BodyFraming::Length(len) => {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        // Without a length, ureq sends these methods' empty body chunked
        // (`0\r\n\r\n`), which an origin that takes no chunked request
        // refuses (411 Length Required).
        BodyFraming::Empty if matches!(head.method.as_str(), "POST" | "PUT" | "PATCH") => {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0u64));
        }
        _ => {}
    }
    headers.append(http::header::VIA, via_value(head.version, via_name)?);
    headers.insert(X_REQUEST_ID, header_value(request_id.as_bytes())?);
    Ok(request.body(())?.into_parts().0)
}

/// The upstream call: the request and its body (read from `conn` as it is
/// sent) until the response head. Says whether the request body was read
/// to its end (a body the origin did not wait for leaves bytes unread).
///
/// A pooled connection can be closed by the origin just as it is reused
/// (many servers close idle ones after a few seconds). When that happens
/// before any byte of an answer arrived, the call is made once more, on
/// a fresh connection as it turns out: always for an idempotent method
/// (RFC 9110 §9.2.2, RFC 9112 §9.3.1), for others only while none of their
/// body was sent, since then the origin cannot have acted on them. The
/// request is `first`, and made `again` for a second call (ureq takes it
/// whole, and a copy made in case is a dozen allocations a request).
fn send(
    mut body: ClientBody<'_>,
    first: Parts,
    again: &dyn Fn() -> Result<Parts, ProxyError>,
    framing: BodyFraming,
    authority: &str,
    rules: &Arc<Rules>,
    ctx: &Context,
) -> Result<(http::Response<ureq::Body>, bool), ProxyError> {
    let idempotent = is_idempotent(&first.method);
    let sent = Instant::now();
    let mut retried = false;
    let head_bytes = head_bytes(&first);
    let mut next = Some(first);
    let result = loop {
        let request = match next.take() {
            Some(request) => request,
            None => again()?,
        };
        transport::begin_attempt(head_bytes);
        interim::arm();
        let call = http::Request::from_parts(request, ());
        let result = upstream::with_rules(rules, || match framing {
            BodyFraming::Empty | BodyFraming::UntilClose => {
                ctx.agents.current().run(call.map(|()| SendBody::none()))
            }
            _ => ctx
                .agents
                .current()
                .run(call.map(|()| SendBody::from_reader(&mut body))),
        });
        let Err(err) = &result else {
            break result;
        };
        // Not one byte of the body left the client, so the origin cannot
        // have had the whole request. (An empty chunked body reads no
        // bytes and is done: the whole request went.)
        let untouched = framing != BodyFraming::Empty && body.bytes_read() == 0 && !body.is_done();
        let may_retry = !retried
            && closed_before_answering(err, transport::attempt())
            && (idempotent || untouched)
            && body.rewind();
        if !may_retry {
            break result;
        }
        log::debug!("{authority} closed a reused connection before answering; trying again");
        ctx.metrics.upstream_retried();
        retried = true;
    };
    let body_read = body.is_done();
    // A client fault while its body was read is the client's (400, 413).
    if let Some(err) = body.take_failure() {
        return Err(err);
    }
    let response = result.map_err(|err| upstream::map_error(err, authority))?;
    ctx.metrics.upstream_answered(sent.elapsed());
    Ok((response, body_read))
}

/// Whether an upstream call failed because the origin closed a connection
/// it had kept alive, before sending a byte of its answer.
fn closed_before_answering(err: &ureq::Error, attempt: Attempt) -> bool {
    let closed = match err {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
        _ => false,
    };
    closed && !attempt.opened && attempt.received == 0
}

/// About how many bytes the request head takes on the wire (what ureq adds,
/// Host and the like, is covered by the slack).
fn head_bytes(request: &Parts) -> usize {
    const SLACK: usize = 1024;
    let uri = &request.uri;
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = request.method.as_str().len() + target + 16;
    let fields: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields + SLACK
}

/// GET, HEAD, OPTIONS, TRACE, PUT and DELETE (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Copies the client's end-to-end headers (RFC 9110 §7.6.1).
fn copy_request_headers(head: &RequestHead, into: &mut http::HeaderMap) -> Result<(), ProxyError> {
    let hop = HopByHop::from_connection(head.header_values("connection"));
    for header in &head.headers {
        let name = header.name();
        if headers::is_framing_look_alike(name) {
            log::debug!(
                "dropped look-alike framing header {}",
                logging::escape(name.as_bytes())
            );
            continue;
        }
        if hop.contains(name)
            || REPLACED_REQUEST_HEADERS
                .iter()
                .any(|replaced| replaced.eq_ignore_ascii_case(name))
        {
            continue;
        }
        // `from_bytes` lowercases the name itself.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ProxyError::BadRequest(format!("bad header name {:?}", header.name())))?;
        into.append(name, shared_header_value(header.shared_value())?);
    }
    Ok(())
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_bytes(bytes).map_err(|_| ProxyError::BadRequest("bad header value".into()))
}

/// A client's header value for the upstream request, without a copy.
fn shared_header_value(bytes: bytes::Bytes) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_maybe_shared(bytes)
        .map_err(|_| ProxyError::BadRequest("bad header value".into()))
}

/// Our `Via` entry (RFC 9110 §7.6.3) for a request of `version`, made
/// without formatting machinery or a second copy: this runs for every
/// request forwarded.
fn via_value(version: Version, via_name: &str) -> Result<HeaderValue, ProxyError> {
    let token = version_token(version);
    let mut via = Vec::with_capacity(token.len() + 1 + via_name.len());
    via.extend_from_slice(token.as_bytes());
    via.push(b' ');
    via.extend_from_slice(via_name.as_bytes());
    // A vector filled to its capacity becomes `Bytes` without copying.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(via))
        .map_err(|_| ProxyError::BadRequest("bad via_name".into()))
}

fn version_token(version: Version) -> &'static str {
    match version {
        Version::Http10 => "1.0",
        Version::Http11 => "1.1",
    }
}
