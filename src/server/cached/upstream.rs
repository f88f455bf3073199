//! Going to the origin through the cache: forwarding untouched (`pass`),
//! fetching and storing as the body streams (`fill`: the relay reads the
//! body through a `Tee` that hands every piece to the filler, so followers
//! read it as it arrives), and revalidating a stale entry (`revalidate`;
//! for `stale-while-revalidate`, `refresh_later` leaves it to `refresh`). What the client receives from the origin is exactly what
//! it would receive without a cache.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use ureq::http::{self, HeaderName, HeaderValue, StatusCode};

use crate::cache::fill::Fill;
use crate::cache::object::has_body;
use crate::cache::{Filler, Fwd, NotStored, OriginFailure, Outcome, Stale, StoredObject};
use crate::error::ProxyError;
use crate::http::request::{BodyFraming, Header, RequestHead};
use crate::server::cached::refresh::Refresh;
use crate::server::cached::{Exchange, answer, background};
use crate::server::finish::Served;
use crate::server::forward::{self, Upstream};
use crate::server::relay::{self, RelayLimits, UpstreamBody};
use crate::server::target::Origin;

/// Bodies at least this long, shared with followers and kept in memory or
/// in their disk file alone, are received by a thread of their own
/// (`background`; see `Filler::own_reader`): past what socket
/// buffers hold, a first client slower than the origin would otherwise
/// set the pace of every follower.
const RECEIVE_APART_MIN: u64 = 4 << 20;

/// Bodies at least this long are received apart as well when followers
/// already wait for them as the answer comes (a CI farm's runners asking
/// for the same artifact at once). A fill received apart costs its first
/// client more CPU than one it relays itself (a thread, and a hand-over
/// per piece), so a body nobody else waits for is only received apart
/// when it is large enough that followers may come for it while it lasts.
const RECEIVE_APART_FOLLOWED_MIN: u64 = 256 << 10;

/// Request headers a revalidation made for the cache alone leaves out:
/// the client's body, its expectation, its range and its preconditions
/// are not the cache's.
const NOT_REVALIDATED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "expect",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// Forwards the request with nothing stored. `why`: the kind of miss and
/// the Cache-Status detail, or `None` when the cache is off (then no
/// Cache-Status at all). An unsafe method's success invalidates what it
/// changed (RFC 9111 §4.4); a POST answer that says it is the URL's
/// representation is stored for later GETs (`Cache::post_filler`).
///
/// # Errors
/// As `forward::fetch` and `relay::relay_response`.
pub fn pass(ex: &mut Exchange<'_>, why: Option<(Fwd, &'static str)>) -> Result<Served, ProxyError> {
    let upstream = fetch(ex, None, None)?;
    let response = &upstream.response;
    let status = response.status().as_u16();
    ex.cache().invalidate(ex.head, status, response.headers());
    if let Some(filler) = ex.cache().post_filler(ex.head, status, response.headers()) {
        return fill(ex, Fwd::Miss, filler, Some(upstream));
    }
    let outcome = why.map(|(fwd, detail)| Outcome::Forward {
        fwd,
        fwd_status: Some(response.status().as_u16()),
        stored: false,
        collapsed: false,
        ttl: None,
        detail: Some(detail),
    });
    relay(ex, upstream, outcome, None)
}

/// Fetches the response and relays it, storing it as it streams when it
/// may be stored; followers of `filler` read it as it arrives. `fetched`:
/// a response already received (a revalidation's full answer).
///
/// # Errors
/// As `forward::fetch` and `relay::relay_response`; the fill is then
/// given up, and its followers let go or cut short.
pub fn fill(
    ex: &mut Exchange<'_>,
    fwd: Fwd,
    mut filler: Filler,
    fetched: Option<Upstream>,
) -> Result<Served, ProxyError> {
    let upstream = match fetched {
        Some(upstream) => upstream,
        None => fetch(ex, None, Some(filler.fill()))?,
    };
    let now = SystemTime::now();
    let response = &upstream.response;
    let status = response.status();
    // A body declared over the limit is refused by the relay with a 502:
    // followers must not be given its head first.
    let declared = response.body().content_length();
    let over_limit =
        relay::response_framing(ex.head, status, declared, ex.ctx.config.max_body_bytes).is_err();
    let stored = if over_limit {
        filler.refuse(ex.head, status, NotStored::TooLarge);
        Err(NotStored::TooLarge)
    } else {
        filler.response_head(ex.head, status, response.headers(), now)
    };
    let outcome = Outcome::Forward {
        fwd,
        fwd_status: Some(status.as_u16()),
        stored: stored.is_ok(),
        collapsed: false,
        ttl: filler.ttl_seconds(now),
        detail: stored.err().map(|why| why.detail()),
    };
    relay(ex, upstream, Some(outcome), Some(filler))
}

/// Revalidates a stale entry: the request goes upstream with the entry's
/// validators. A 304 refreshes the entry (RFC 9111 §4.3.4) and the client
/// is answered from it; any other answer is relayed and stored in its
/// place (or, when it is not kept, the entry is dropped: see
/// `Filler::response_head`). When the origin fails, the stale entry
/// answers if its `stale-if-error` or the request's allows it, or the
/// origin could not be reached at all (RFC 9111 §4.2.4, RFC 5861 §4).
///
/// # Errors
/// The upstream's failure, when no stale answer may stand in.
pub fn revalidate(ex: &mut Exchange<'_>, stale: Stale) -> Result<Served, ProxyError> {
    let fwd = stale.fwd();
    let object = Arc::clone(&stale.object);
    let upstream = match fetch(ex, Some(&stale.validators), Some(stale.filler.fill())) {
        Ok(upstream) => upstream,
        Err(err) if is_origin_failure(&err) => {
            // An origin that answered, badly, is no disconnected one: only
            // `stale-if-error` lets a stale copy stand in, as for its 502.
            let status = (!is_unreachable(&err)).then(|| err.status());
            // Those waiting on this revalidation need not ask again.
            stale.filler.origin_failed(status);
            let now = SystemTime::now();
            if !may_stand_in(ex, &object, status, now) {
                return Err(err);
            }
            log::debug!("{}: serving stale: {err}", ex.head.target);
            let body_read = ex.head.body_framing().ok() == Some(BodyFraming::Empty);
            return answer_stale(ex, &object, status, now, body_read).map(from_origin);
        }
        Err(err) => return Err(err),
    };
    let now = SystemTime::now();
    let status = upstream.response.status();
    if status == StatusCode::NOT_MODIFIED {
        let (parts, body) = upstream.response.into_parts();
        drain(body);
        if let Some(updated) = ex.cache().refresh(&object, ex.head, &parts, now) {
            // Requests that waited on this revalidation look the entry up
            // again, before this client is answered.
            stale.filler.refreshed();
            let outcome = Outcome::Forward {
                fwd,
                fwd_status: Some(304),
                stored: true,
                collapsed: false,
                ttl: Some(updated.head.policy.ttl_seconds(now)),
                detail: None,
            };
            return answer::from_store(ex, &updated, outcome, now, upstream.body_read)
                .map(from_origin)
                .map_err(answer::Unsent::into_error);
        }
        // The 304 names other validators than the entry's (RFC 9111
        // §4.3.4): it says nothing about the entry, so fetch it whole.
        let whole = fetch(ex, Some(&[]), Some(stale.filler.fill()))?;
        return fill(ex, fwd, stale.filler, Some(whole));
    }
    if status == StatusCode::PRECONDITION_FAILED {
        // The client's own If-Match or If-Unmodified-Since failed: news
        // about its precondition, not a new representation. The entry
        // stays, for the next request and for stale-if-error.
        let outcome = Outcome::Forward {
            fwd,
            fwd_status: Some(412),
            stored: false,
            collapsed: false,
            ttl: None,
            detail: None,
        };
        return relay(ex, upstream, Some(outcome), None);
    }
    if ex.head.method == "HEAD" && status == StatusCode::OK {
        // Not stored itself, but it may show the stored GET response out
        // of date (RFC 9111 §4.3.5).
        ex.cache()
            .head_answered(&object, upstream.response.headers());
    }
    let error_status = matches!(status.as_u16(), 500 | 502 | 503 | 504);
    if error_status && may_stand_in(ex, &object, Some(status.as_u16()), now) {
        stale.filler.origin_failed(Some(status.as_u16()));
        let (_, body) = upstream.response.into_parts();
        drain(body);
        return answer_stale(ex, &object, Some(status.as_u16()), now, upstream.body_read)
            .map(from_origin);
    }
    fill(ex, fwd, stale.filler, Some(upstream))
}

/// Answers from the stale entry when `stale-if-error` allows it for the
/// origin's failure that another request's revalidation just met
/// (`status`: its 5xx, or `None` when the origin could not be reached);
/// else revalidates it alone.
///
/// # Errors
/// As `revalidate`.
pub fn stand_in(
    ex: &mut Exchange<'_>,
    stale: Stale,
    status: Option<u16>,
) -> Result<Served, ProxyError> {
    let now = SystemTime::now();
    if !may_stand_in(ex, &stale.object, status, now) {
        return revalidate(ex, stale);
    }
    let body_read = ex.head.body_framing().ok() == Some(BodyFraming::Empty);
    answer_stale(ex, &stale.object, status, now, body_read)
}

/// Whether the stale `object` may stand in for an origin's failure
/// (`status`: its 5xx, or `None` when the origin could not be reached) at
/// `now`: `stale-if-error`, or a disconnected origin (RFC 9111 §4.2.4,
/// RFC 5861 §4), as this request allows.
fn may_stand_in(
    ex: &Exchange<'_>,
    object: &StoredObject,
    status: Option<u16>,
    now: SystemTime,
) -> bool {
    let failure = match status {
        Some(_) => OriginFailure::ErrorStatus,
        None => OriginFailure::Unreachable,
    };
    object.head.policy.may_serve_on_error(ex.head, failure, now)
}

/// Answers from the stale `object` in place of an origin's failure, once
/// `may_stand_in` said it may.
fn answer_stale(
    ex: &mut Exchange<'_>,
    object: &Arc<StoredObject>,
    status: Option<u16>,
    now: SystemTime,
    body_read: bool,
) -> Result<Served, ProxyError> {
    let outcome = Outcome::StaleOnError {
        fwd_status: status,
        ttl: object.head.policy.ttl_seconds(now),
    };
    answer::from_store(ex, object, outcome, now, body_read).map_err(answer::Unsent::into_error)
}

/// `served`, an answer from the store right after this thread's call to
/// the origin (a 304, or an error the stale copy stands in for), with the
/// origin's address for an access log that shows it (Squid's
/// `HIER_DIRECT/ADDR`); none when the origin was not reached. Only there:
/// otherwise the thread's last call was another request's.
fn from_origin(mut served: Served) -> Served {
    if let Some(shown) = served.shown.as_mut() {
        shown.origin = crate::transport::attempt().origin.map(|addr| addr.ip());
    }
    served
}

/// After a `stale-while-revalidate` hit was answered: hands the entry's
/// revalidation to the cache's own threads (`refresh`), so that neither
/// this client nor its next request waits on it (RFC 5861 §3).
pub fn refresh_later(ex: &Exchange<'_>, object: &Arc<StoredObject>) {
    ex.ctx.refresher.submit(Refresh {
        head: cache_request(ex.head),
        origin: Origin {
            uri: ex.origin.uri.clone(),
        },
        object: Arc::clone(object),
        request_id: ex.request_id.to_string(),
        rules: Arc::clone(ex.rules),
    });
}

/// The request a revalidation for the cache alone sends: the client's,
/// as GET, without its body, range or preconditions.
fn cache_request(head: &RequestHead) -> RequestHead {
    let headers: Vec<Header> = head
        .headers
        .iter()
        .filter(|h| {
            !NOT_REVALIDATED
                .iter()
                .any(|name| h.name().eq_ignore_ascii_case(name))
        })
        .cloned()
        .collect();
    RequestHead {
        method: "GET".to_string(),
        target: head.target.clone(),
        version: head.version,
        headers,
    }
}

/// The upstream call, with `validators` in place of the client's own when
/// the cache revalidates.
fn fetch(
    ex: &mut Exchange<'_>,
    validators: Option<&[(HeaderName, HeaderValue)]>,
    fill: Option<&Arc<Fill>>,
) -> Result<Upstream, ProxyError> {
    forward::fetch(
        ex.conn,
        ex.head,
        ex.origin,
        validators,
        fill,
        ex.request_id,
        ex.rules,
        ex.ctx,
    )
}

/// Relays the response, with its `Cache-Status`, through `filler` when
/// the response is being stored. The fill is complete only when the
/// upstream body ended as it should: a client that went away, an upstream
/// that failed or a limit leaves it incomplete, and then it is dropped
/// unstored (its followers cut short).
fn relay(
    ex: &mut Exchange<'_>,
    upstream: Upstream,
    outcome: Option<Outcome>,
    filler: Option<Filler>,
) -> Result<Served, ProxyError> {
    let status = outcome.map(|outcome| outcome.header_value());
    let limits = RelayLimits {
        max_body_bytes: ex.ctx.config.max_body_bytes,
        via_name: &ex.ctx.config.via_name,
        draining: ex.ctx.shutdown.is_draining(),
        cache_status: status.as_deref(),
        authority: ex.origin.uri.authority().map_or("upstream", |a| a.as_str()),
    };
    relay::send_interim(ex.conn, ex.head, &upstream.interim);
    let (parts, body) = upstream.response.into_parts();
    // A 204's or 304's body is empty by definition: the relay reads none.
    let bodiless = !has_body(parts.status);
    let body = UpstreamBody::of(body, &parts);
    let mut filler = filler.filter(Filler::is_storing);
    let apart_min = match &filler {
        Some(filler) if filler.has_followers() => RECEIVE_APART_FOLLOWED_MIN,
        _ => RECEIVE_APART_MIN,
    };
    let large = body.declared.is_some_and(|len| len >= apart_min);
    let apart = match filler.as_mut() {
        Some(filler) if large && !bodiless => ex.ctx.background.slot().and_then(|slot| {
            let own = filler.own_reader(ex.head, apart_min)?;
            Some((slot, own))
        }),
        _ => None,
    };
    if let Some((slot, own)) = apart
        && let Some(filler) = filler.take()
    {
        receive_apart(slot, filler, body.reader, &ex.head.target);
        let own = UpstreamBody {
            reader: own,
            declared: body.declared,
        };
        return relay_body(ex, parts, own, upstream.body_read, &limits, outcome);
    }
    let mut tee = Tee {
        reader: body.reader,
        filler,
        ended: false,
    };
    let teed = UpstreamBody {
        reader: &mut tee,
        declared: body.declared,
    };
    let mut served = relay_body(ex, parts, teed, upstream.body_read, &limits, outcome)?;
    // The client stopped taking the body (a write failed or timed out,
    // which is not an upstream error) while others read it from the fill:
    // the fill goes on without the client, as fast as the origin sends.
    let client_gone = served.error.is_none() && !tee.ended && !bodiless;
    if client_gone && tee.filler.as_ref().is_some_and(Filler::has_followers) {
        log::debug!("{}: client gone, filling on for others", ex.head.target);
        if let Err(err) = tee.fill_on(ex.buf) {
            served.error = Some(crate::upstream::map_io_error(err, "upstream").proxy_status());
        }
    }
    if let Some(filler) = tee.filler.take()
        && served.error.is_none()
        && (tee.ended || bodiless)
        && let Err(why) = filler.finish()
    {
        log::debug!("{} not stored: {}", ex.head.target, why.detail());
    }
    Ok(served)
}

/// Relays the response head `parts` and `body` to the client, with the
/// cache's `outcome`.
fn relay_body<R: Read>(
    ex: &mut Exchange<'_>,
    parts: http::response::Parts,
    body: UpstreamBody<R>,
    body_read: bool,
    limits: &RelayLimits<'_>,
    outcome: Option<Outcome>,
) -> Result<Served, ProxyError> {
    let response = http::Response::from_parts(parts, body);
    let mut served = relay::relay_response(
        ex.conn,
        ex.head,
        response,
        body_read,
        ex.request_id,
        limits,
        ex.buf,
    )?;
    served.cache = outcome;
    Ok(served)
}

/// Receives the rest of the body into `filler` on a thread of its own
/// (holding `slot`), and stores it when it is complete. A failure there
/// fails the fill: its readers, the first client among them, are cut short.
fn receive_apart(
    slot: background::Slot,
    filler: Filler,
    reader: impl Read + Send + 'static,
    target: &str,
) {
    let receive = {
        let target = target.to_string();
        move || {
            let mut tee = Tee {
                reader,
                filler: Some(filler),
                ended: false,
            };
            let mut buf = vec![0u8; RECEIVE_BUFFER];
            if let Err(err) = tee.fill_on(&mut buf) {
                log::debug!("{target}: receiving apart failed: {err}");
                return;
            }
            if let Some(filler) = tee.filler.take()
                && tee.ended
                && let Err(why) = filler.finish()
            {
                log::debug!("{target} not stored: {}", why.detail());
            }
        }
    };
    if let Err(err) = slot.spawn(receive) {
        log::warn!("cache: cannot start a thread to receive {target}: {err}");
    }
}

/// Bytes a fill received apart copies through at once.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The upstream body on its way to the client, each piece handed to the
/// filler too (the one copy a stored body needs: the relay's buffer is
/// reused for the next piece). Remembers whether the body reached its end.
struct Tee<R> {
    reader: R,
    filler: Option<Filler>,
    ended: bool,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n == 0 {
            self.ended = true;
        } else if let Some(filler) = self.filler.as_mut() {
            filler.body(&buf[..n]);
        }
        Ok(n)
    }
}

impl<R: Read> Tee<R> {
    /// Reads the rest of the body into the filler alone, while it stores
    /// or passes the body on to followers still reading.
    fn fill_on(&mut self, buf: &mut [u8]) -> io::Result<()> {
        while !self.ended && self.filler.as_ref().is_some_and(Filler::wants_body) {
            match self.read(buf) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Reads a body the client will not see to its end (a 304's, a 5xx's
/// replaced by a stale entry), so that its connection goes back to the
/// pool; a long one is dropped instead, with its connection.
fn drain(body: ureq::Body) {
    let mut reader = body.into_reader().take(64 * 1024);
    let _ = io::copy(&mut reader, &mut io::sink());
}

/// Whether the upstream call failed for want of an origin answer (as
/// opposed to the client's fault).
fn is_origin_failure(err: &ProxyError) -> bool {
    matches!(err.status(), 502 | 504)
}

/// Whether the origin could not be reached at all (refused, reset before
/// answering, DNS, timeout): a disconnected origin, for which a stale copy
/// may stand in (RFC 9111 §4.2.4). One that answered badly (malformed, a
/// refused certificate) is not.
fn is_unreachable(err: &ProxyError) -> bool {
    matches!(
        err,
        ProxyError::DnsFailed { .. }
            | ProxyError::ConnectionRefused { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamClosed(_)
            | ProxyError::UpstreamTimeout(_)
    )
}
