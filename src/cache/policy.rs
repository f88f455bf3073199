//! Freshness and storability, from the `http-cache-semantics` crate in
//! shared-cache mode (RFC 9111), plus what the crate leaves out:
//! `stale-while-revalidate` and `stale-if-error` (RFC 5861), the rule that
//! `proxy-revalidate`, `s-maxage` and `no-cache` forbid serving stale even
//! when the client allows it (RFC 9111 §4.2.4), and the 304 merge done
//! without losing repeated header lines (RFC 9111 §4.3.4).
//!
//! Vary is matched by `key::Variant`, not here: the crate compares only the
//! first line of each header, so it is given none of the varied headers.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, DATE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, PRAGMA,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};

use crate::cache::normalise;
use crate::http::request::RequestHead;

/// Headers a 304 must not change in the stored response (RFC 9111 §4.3.4:
/// they describe the stored body, which the 304 does not carry).
const KEPT_ON_UPDATE: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
];

/// How long past its freshness a response may be served when the origin
/// cannot be reached (and nothing forbids it).
pub const DISCONNECTED_STALE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the origin failed a revalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    /// No response: connection refused or reset, DNS or timeout.
    Unreachable,
    /// A 500, 502, 503 or 504 (RFC 5861 §4).
    ErrorStatus,
}

/// What a stored response is good for, for one request, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Fresh: serve it.
    Fresh,
    /// Stale, but the client's `max-stale` accepts it: serve it.
    StaleAllowed,
    /// Must be revalidated first.
    Revalidate {
        /// `stale-while-revalidate` lets it be served now while a
        /// revalidation runs after (RFC 5861 §3).
        while_revalidate: bool,
        /// The entry is fresh, but the request's directives (`no-cache`,
        /// `max-age`, `min-fresh`) ask for the origin (Cache-Status
        /// `fwd=request`).
        by_request: bool,
    },
}

/// The cache policy of one stored response.
///
/// It keeps what the crate's policy was built from, not the crate's policy
/// itself: a hit without request directives needs only the times worked
/// out here, and every allocation an object holds is paid again, cold, when
/// the object is evicted. The crate's policy is rebuilt, from the same
/// parts, for the rarer requests that need it (those with directives).
#[derive(Debug, Clone)]
pub struct Policy {
    uri: Uri,
    /// The request headers the policy was built from (kept for the disk).
    request: HeaderMap,
    /// The response as the crate reads it (`normalise::response_view`).
    view_status: StatusCode,
    view: HeaderMap,
    response_time: SystemTime,
    /// The crate's `age` at `response_time`: the `Age` header's value.
    initial_age: Duration,
    storable: bool,
    /// When the entry stops being fresh: the crate's `time_to_live` at
    /// `response_time`, kept so a plain request costs one comparison.
    fresh_until: SystemTime,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// A directive forbids serving it stale at all (RFC 9111 §4.2.4).
    never_stale: bool,
}

impl Policy {
    /// The policy of a response received at `response_time` for a request
    /// of `head` to `uri` (the cache key's URI).
    pub fn new(
        uri: &Uri,
        head: &RequestHead,
        status: StatusCode,
        response: &HeaderMap,
        response_time: SystemTime,
    ) -> Policy {
        let mut request = HeaderMap::new();
        if let Some(value) = normalise::request_cache_control(head.header_values("cache-control")) {
            request.insert(CACHE_CONTROL, value);
        }
        for value in pragma(head) {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request.append(PRAGMA, value);
            }
        }
        // The credentials themselves are not needed, only whether there
        // were some (RFC 9111 §3.5): never keep them.
        if head.header("authorization").is_some() {
            request.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_static("present"),
            );
        }
        Policy::from_parts(uri, request, status, response, response_time)
    }

    /// Rebuilds a policy from stored parts (after a restart).
    pub fn from_parts(
        uri: &Uri,
        request: HeaderMap,
        status: StatusCode,
        response: &HeaderMap,
        response_time: SystemTime,
    ) -> Policy {
        let (view_status, mut view) = normalise::response_view(status, response);
        if let Some(age) = apparent_age(&view, response_time) {
            view.insert(AGE, HeaderValue::from(age));
        }
        let (req, mut res) = crate_parts(uri, request, view_status, view);
        let mut inner =
            CachePolicy::new_options(&req, &res, response_time, CacheOptions::default());
        let mut storable = inner.is_storable();
        let mut ttl = inner.time_to_live(response_time);
        if caps_heuristic(&mut res.headers, storable, ttl) {
            inner = CachePolicy::new_options(&req, &res, response_time, CacheOptions::default());
            storable = inner.is_storable();
            ttl = inner.time_to_live(response_time);
        }
        // One pass over the directives for what the crate does not say.
        let mut never_stale = false;
        let mut stale_while_revalidate = None;
        let mut stale_if_error = None;
        let cache_control = res.headers.get_all(CACHE_CONTROL);
        for (name, value) in directives(cache_control.iter().map(|v| v.as_bytes())) {
            let named = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
            let seconds = || value.and_then(parse_seconds).unwrap_or(Duration::ZERO);
            if NEVER_STALE.iter().any(|wanted| named(wanted)) {
                never_stale = true;
            } else if named("stale-while-revalidate") {
                stale_while_revalidate.get_or_insert_with(seconds);
            } else if named("stale-if-error") {
                stale_if_error.get_or_insert_with(seconds);
            }
        }
        // Left out of the crate's view (see `normalise`): read here.
        let proxy_revalidate = || {
            let lines = response.get_all(CACHE_CONTROL);
            directives(lines.iter().map(|v| v.as_bytes()))
                .any(|(name, _)| name.eq_ignore_ascii_case(b"proxy-revalidate"))
        };
        never_stale = never_stale || proxy_revalidate();
        Policy {
            fresh_until: later(response_time, ttl),
            stale_while_revalidate: stale_while_revalidate.unwrap_or(Duration::ZERO),
            stale_if_error: stale_if_error.unwrap_or(Duration::ZERO),
            never_stale,
            initial_age: inner.age(response_time),
            storable,
            uri: req.uri,
            request: req.headers,
            view_status: res.status,
            view: res.headers,
            response_time,
        }
    }

    /// The crate's policy, rebuilt from the parts it was first built from.
    fn crate_policy(&self) -> CachePolicy {
        let (req, res) = crate_parts(
            &self.uri,
            self.request.clone(),
            self.view_status,
            self.view.clone(),
        );
        CachePolicy::new_options(&req, &res, self.response_time, CacheOptions::default())
    }

    /// Whether the response may be stored at all (RFC 9111 §3, §3.5).
    pub fn is_storable(&self) -> bool {
        self.storable
    }

    /// The request headers the policy was built from.
    pub fn request_headers(&self) -> &HeaderMap {
        &self.request
    }

    /// When the response was received.
    pub fn response_time(&self) -> SystemTime {
        self.response_time
    }

    /// The `Age` to send now (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        // As the crate counts it: the `Age` received, plus the time since.
        let resident = now
            .duration_since(self.response_time)
            .unwrap_or(Duration::ZERO);
        self.initial_age + resident
    }

    /// Seconds of freshness left: negative once stale (Cache-Status `ttl`).
    pub fn ttl_seconds(&self, now: SystemTime) -> i64 {
        match self.fresh_until.duration_since(now) {
            Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// Whether the entry is fresh, requests aside.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until
    }

    /// Whether the response was fresh when it came: one stale from the
    /// start (`no-cache`, `max-age=0`) must be revalidated on every use.
    pub fn had_lifetime(&self) -> bool {
        self.response_time < self.fresh_until
    }

    /// What the entry is good for, for `head`, at `now`.
    pub fn decide(&self, head: &RequestHead, now: SystemTime) -> Decision {
        let has_directives =
            head.header("cache-control").is_some() || head.header("pragma").is_some();
        if !has_directives {
            // Same answer as the crate's `before_request` for a request
            // without directives, without building its response parts.
            if self.is_fresh(now) {
                return Decision::Fresh;
            }
            return Decision::Revalidate {
                while_revalidate: self.within_while_revalidate(now),
                by_request: false,
            };
        }
        let request = self.lookup_request(head);
        match self.crate_policy().before_request(&request, now) {
            BeforeRequest::Fresh(_) if self.is_fresh(now) => Decision::Fresh,
            // The crate honours max-stale past proxy-revalidate and s-maxage.
            BeforeRequest::Fresh(_) if !self.never_stale => Decision::StaleAllowed,
            _ => {
                let by_request = self.is_fresh(now);
                let forbids = forbids_stale(head);
                Decision::Revalidate {
                    while_revalidate: !by_request && !forbids && self.within_while_revalidate(now),
                    by_request,
                }
            }
        }
    }

    fn within_while_revalidate(&self, now: SystemTime) -> bool {
        !self.never_stale && now < later(self.fresh_until, self.stale_while_revalidate)
    }

    /// Whether the stale entry may answer `head` because the origin
    /// failed: within the response's or the request's `stale-if-error`
    /// (RFC 5861 §4, for an error status or no answer at all), or, when the
    /// origin could not be reached at all, for up to `DISCONNECTED_STALE`
    /// (RFC 9111 §4.2.4 allows a disconnected cache to serve stale; Squid's
    /// `max_stale` is the same week). Never when a directive forbids it.
    pub fn may_serve_on_error(
        &self,
        head: &RequestHead,
        failure: OriginFailure,
        now: SystemTime,
    ) -> bool {
        if self.never_stale || forbids_stale(head) {
            return false;
        }
        let from_request = directive(head.header_values("cache-control"), "stale-if-error")
            .flatten()
            .and_then(parse_seconds)
            .unwrap_or(Duration::ZERO);
        let mut window = self.stale_if_error.max(from_request);
        if failure == OriginFailure::Unreachable {
            window = window.max(DISCONNECTED_STALE);
        }
        now < later(self.fresh_until, window)
    }

    /// The validators to send upstream when revalidating (RFC 9111
    /// §4.3.1): `If-None-Match` with the stored `ETag`, `If-Modified-Since`
    /// with `Last-Modified`; none for a response that may not be stored.
    /// The crate's revalidation request carries the same for a GET (the
    /// tests check it against the crate), but building its policy for them
    /// cost an eighth of a revalidation. One case differs, on purpose: for
    /// a response that varies on `Authorization`, `Cache-Control` or
    /// `Pragma` (request headers the crate is given), the crate matched
    /// them against a made-up request and sent no validators, though
    /// `key::Variant` had already chosen this variant.
    pub fn validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        if !self.storable {
            return Vec::new();
        }
        [(ETAG, IF_NONE_MATCH), (LAST_MODIFIED, IF_MODIFIED_SINCE)]
            .into_iter()
            .filter_map(|(stored, sent)| {
                let value = self.view.get(&stored)?;
                value.to_str().ok()?;
                Some((sent, value.clone()))
            })
            .collect()
    }

    /// Applies a revalidation answer (RFC 9111 §4.3.3): for a 304 that
    /// selects this entry, the stored headers updated by the 304's (RFC 9111
    /// §4.3.4) and the refreshed policy; `None` when the response replaces
    /// the entry (or a 304 names other validators, RFC 9111 §4.3.4).
    pub fn refresh(
        &self,
        head: &RequestHead,
        status: StatusCode,
        stored: &HeaderMap,
        answer: &http::response::Parts,
        now: SystemTime,
    ) -> Option<(HeaderMap, Policy)> {
        if answer.status != StatusCode::NOT_MODIFIED {
            return None;
        }
        // A 304 without validators of its own answers the validators the
        // cache sent for this very entry: it selects the entry (RFC 9111
        // §4.3.3), though a server ought to have repeated them (RFC 9110
        // §15.4.5). The crate would only select an entry that has none.
        let (_, view) = normalise::response_view(answer.status, &answer.headers);
        let bare = [ETAG, LAST_MODIFIED]
            .iter()
            .all(|name| !view.contains_key(name));
        if !bare && !selects(&self.view, &view) {
            return None;
        }
        let mut merged = merge_not_modified(stored, &answer.headers);
        // A 304 without `Date` is dated on arrival (RFC 9110 §6.6.1), or
        // the stored `Date` would age the refreshed entry from the first
        // fetch.
        if !answer.headers.contains_key(DATE) {
            merged.insert(DATE, crate::http::headers::http_date(now));
        }
        let policy = Policy::new(&self.uri(), head, status, &merged, now);
        Some((merged, policy))
    }

    fn uri(&self) -> Uri {
        self.uri.clone()
    }

    /// The request as the crate must see it: GET (GET and HEAD share one
    /// entry), the entry's URI, and the request's directives only.
    fn lookup_request(&self, head: &RequestHead) -> http::request::Parts {
        let mut request = http::Request::new(());
        *request.uri_mut() = self.uri();
        if let Some(value) = normalise::request_cache_control(head.header_values("cache-control")) {
            request.headers_mut().insert(CACHE_CONTROL, value);
        }
        for value in pragma(head) {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                request.headers_mut().append(PRAGMA, value);
            }
        }
        request.into_parts().0
    }
}

/// The request's `Pragma` values, which count only when it has no
/// `Cache-Control` (RFC 9111 §5.4).
fn pragma(head: &RequestHead) -> impl Iterator<Item = &[u8]> {
    let counts = head.header("cache-control").is_none();
    head.header_values("pragma").filter(move |_| counts)
}

/// The longest a response is fresh by heuristic (RFC 9111 §4.2.2): the
/// crate takes a tenth of the time since `Last-Modified`, which for a file
/// untouched for years is months. Traffic Server caps it at a day, Squid
/// at three; after a day here the entry is revalidated (a 304 is cheap).
pub const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// Gives `view` (the response as the crate reads it) a `max-age` of
/// [`HEURISTIC_MAX`] when its freshness is heuristic and longer than
/// that (`ttl`, the crate's at arrival); true when it did, and the crate's
/// policy must be made again. A response with a lifetime of its own, or
/// not `storable`, is left alone.
fn caps_heuristic(view: &mut HeaderMap, storable: bool, ttl: Duration) -> bool {
    let directives = view
        .get(CACHE_CONTROL)
        .map(|value| normalise::parse(std::iter::once(value.as_bytes())))
        .unwrap_or_default();
    let explicit = view.contains_key(http::header::EXPIRES)
        || directives
            .iter()
            .any(|(name, _)| name == "max-age" || name == "s-maxage");
    if explicit || !storable || ttl <= HEURISTIC_MAX {
        return false;
    }
    let cap = format!("max-age={}", HEURISTIC_MAX.as_secs());
    let value = match view.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()) {
        Some(given) if !given.trim().is_empty() => format!("{given}, {cap}"),
        _ => cap,
    };
    match HeaderValue::from_str(&value) {
        Ok(value) => {
            view.insert(CACHE_CONTROL, value);
            true
        }
        Err(_) => false,
    }
}

/// How long before `response_time` the origin dated the response, in whole
/// seconds, when that is more than its `Age` says: RFC 9111 §4.2.3 counts
/// a response at least that old on arrival (`apparent_age`), where the
/// crate reads `Age` alone. A `Date` from behind an HTTP/1.0 cache, which
/// adds no `Age`, or from an origin whose clock is late, then makes it
/// stale as much sooner; a `Date` ahead of this clock changes nothing.
fn apparent_age(view: &HeaderMap, response_time: SystemTime) -> Option<u64> {
    let date = view.get(DATE)?.to_str().ok()?;
    let dated = httpdate::parse_http_date(date).ok()?;
    let apparent = response_time.duration_since(dated).ok()?.as_secs();
    let received = view
        .get(AGE)
        .and_then(|age| age.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (apparent > received).then_some(apparent)
}

/// Whether a 304 whose validators are in `answer` selects the response
/// stored as `stored` (both as the crate reads them), by the rule of the
/// crate's `after_response` (RFC 9111 §4.3.4): the same strong `ETag`; else
/// the same weak one; else, when the stored response has a `Last-Modified`,
/// the same date; else only when neither has a validator. Written out
/// because `after_response` builds two policies and a response that are
/// then thrown away, a third of a revalidation; the tests check it against
/// the crate.
fn selects(stored: &HeaderMap, answer: &HeaderMap) -> bool {
    fn text<'a>(map: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
        map.get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    }
    fn weakless(tag: &str) -> &str {
        tag.trim_start_matches("W/")
    }
    let (old_tag, new_tag) = (text(stored, &ETAG), text(answer, &ETAG));
    let old_modified = text(stored, &LAST_MODIFIED);
    let new_modified = text(answer, &LAST_MODIFIED);
    match (old_tag, new_tag) {
        (_, Some(new)) if !new.starts_with("W/") => old_tag.map(weakless) == Some(new),
        (Some(old), Some(new)) => weakless(old) == weakless(new),
        _ if old_modified.is_some() => old_modified == new_modified,
        _ => old_tag.is_none() && new_tag.is_none() && new_modified.is_none(),
    }
}

/// The request and response parts the crate's policy is built from: a
/// GET, as GET and HEAD share one entry and only GET responses are stored.
fn crate_parts(
    uri: &Uri,
    request: HeaderMap,
    status: StatusCode,
    response: HeaderMap,
) -> (http::request::Parts, http::response::Parts) {
    let mut req = http::Request::new(());
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = request;
    let mut res = http::Response::new(());
    *res.status_mut() = status;
    *res.headers_mut() = response;
    (req.into_parts().0, res.into_parts().0)
}

/// RFC 9111 §4.3.4: every header line of the 304 replaces all lines of
/// that name in the stored response, except those describing the body.
/// `Age` is dropped from the stored head: the 304 is the new age source.
pub fn merge_not_modified(stored: &HeaderMap, answer: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    merged.remove(http::header::AGE);
    // Hop-by-hop fields, and those the 304's `Connection` names, are not
    // stored (RFC 9111 §3.2, §3.1).
    let hop = crate::http::headers::HopByHop::from_connection(
        answer
            .get_all(http::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    for name in answer.keys() {
        if KEPT_ON_UPDATE.contains(&name.as_str()) || hop.contains(name.as_str()) {
            continue;
        }
        merged.remove(name);
        for value in answer.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

/// `time + by`, saturating far in the future instead of overflowing.
fn later(time: SystemTime, by: Duration) -> SystemTime {
    time.checked_add(by)
        .unwrap_or_else(|| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64))
}

/// Whether the request itself rules out `stale-while-revalidate`.
fn forbids_stale(head: &RequestHead) -> bool {
    let values = || head.header_values("cache-control");
    ["no-cache", "max-age", "min-fresh"]
        .iter()
        .any(|name| directive(values(), name).is_some())
        || pragma(head).any(|v| v.windows(8).any(|w| w.eq_ignore_ascii_case(b"no-cache")))
}

/// Response directives under which a stale response is never served
/// without revalidation, whatever the request allows (RFC 9111 §5.2.2);
/// `proxy-revalidate` too, read from the response itself.
const NEVER_STALE: [&str; 3] = ["must-revalidate", "s-maxage", "no-cache"];

/// Looks up a Cache-Control directive in a list of field values:
/// `Some(None)` when present without a value, `Some(Some(v))` with one.
pub fn directive<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<Option<&'a [u8]>> {
    directives(values)
        .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, value)| value)
}

/// The Cache-Control directives in a list of field values, in order:
/// each name as sent (to be compared ignoring case) and its value,
/// unquoted, when it has one.
pub fn directives<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .map(|item| {
            let mut parts = item.splitn(2, |&b| b == b'=');
            let key = parts.next().unwrap_or_default().trim_ascii();
            let value = parts.next().map(|v| {
                let v = v.trim_ascii();
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v)
            });
            (key, value)
        })
}

/// A delta-seconds value (RFC 9111 §1.2.2); too large saturates.
fn parse_seconds(value: &[u8]) -> Option<Duration> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::from(u32::MAX));
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
