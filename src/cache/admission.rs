//! Admission: whether a response is stored, and where. RFC 9111 §3 via
//! the policy, then the cache's own rules: no partial responses, no
//! `Vary: *`, and a size that some tier's object limit allows (known up
//! front from `Content-Length`, else checked as the body streams). Small
//! objects are kept in memory; with a disk tier every object within its
//! limit is also written to disk, so the disk holds what survives a
//! restart and memory holds the hot small copies (Traffic Server's RAM
//! cache in front of its disk).

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

use crate::cache::Shared;
use crate::cache::disk::{DiskWriter, Header};
use crate::cache::fill::FillHead;
use crate::cache::key::{CacheKey, Variant, VaryNames};
use crate::cache::normalise;
use crate::cache::object;
use crate::cache::policy::Policy;
use crate::cache::range;
use crate::cache::stats::bump;
use crate::http::headers::{HopByHop, is_hop_by_hop};
use crate::http::request::RequestHead;

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The request rules it out (not a GET), or it answers the request's
    /// own precondition or range (a 412, a 416).
    Request,
    /// RFC 9111 §3 forbids it (method, status, no-store, private,
    /// Authorization, or nothing that makes it cacheable).
    Policy,
    /// `Vary: *`.
    VaryStar,
    /// A partial response (206) that is not one whole range of a known
    /// total.
    Partial,
    /// Longer than every object limit that applies.
    TooLarge,
    /// The disk write failed and no other tier could take it.
    DiskError,
    /// Fills in progress held all the memory, or disk room, they may.
    Busy,
    /// The body ended short of its `Content-Length`.
    Incomplete,
    /// A PURGE or an unsafe method invalidated the URL while the response
    /// was coming.
    Invalidated,
    /// Stale on arrival, with no validator and nothing in it that allows
    /// serving it stale: only a client's `max-stale` or an unreachable
    /// origin could ever make use of it.
    Useless,
    /// It sets a cookie, and its origin did not give it a lifetime of its
    /// own in which it may be reused as it is (`sets_cookie_for_one`).
    SetsCookie,
}

impl NotStored {
    /// A Cache-Status `detail` token.
    pub fn detail(self) -> &'static str {
        match self {
            NotStored::Request => "request",
            NotStored::Policy => "not-storable",
            NotStored::VaryStar => "vary-star",
            NotStored::Partial => "partial",
            NotStored::TooLarge => "too-large",
            NotStored::DiskError => "disk-error",
            NotStored::Busy => "busy",
            NotStored::Incomplete => "incomplete",
            NotStored::Invalidated => "invalidated",
            NotStored::Useless => "no-freshness",
            NotStored::SetsCookie => "sets-cookie",
        }
    }
}

/// Statuses storable without any caching field (heuristically cacheable,
/// RFC 9110 §15.1) among those the policy understands.
const STORABLE_BARE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The commonest response that is never kept, known without building its
/// policy (which decides the same, at the cost of a few allocations on
/// every such miss): no `Cache-Control`, `Expires`, `Last-Modified` or
/// `ETag`, from a status storable without them, to a request without
/// credentials or `no-store`. It may be stored, but is never fresh (no
/// lifetime, nothing to guess one from), cannot be revalidated, and allows
/// nothing stale: `NotStored::Useless`. Other statuses and requests go
/// through the policy, which tells `Policy` and `Useless` apart.
fn never_fresh(request: &RequestHead, status: StatusCode, headers: &HeaderMap) -> bool {
    use http::header::{CACHE_CONTROL, ETAG, EXPIRES, LAST_MODIFIED};
    let request_no_store = || {
        crate::cache::policy::directive(request.header_values("cache-control"), "no-store")
            .is_some()
    };
    STORABLE_BARE.contains(&status.as_u16())
        && request.header("authorization").is_none()
        // One pass over the few names a response has, instead of a hashed
        // lookup for each of the four.
        && !headers
            .keys()
            .any(|name| [CACHE_CONTROL, EXPIRES, LAST_MODIFIED, ETAG].contains(name))
        && !request_no_store()
}

/// Whether the response can be revalidated (RFC 9110 §8.8).
fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

/// Whether the response allows serving it stale (RFC 5861).
fn allows_stale(headers: &HeaderMap) -> bool {
    let values = || {
        headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .map(|v| v.as_bytes())
    };
    ["stale-while-revalidate", "stale-if-error"]
        .iter()
        .any(|name| crate::cache::policy::directive(values(), name).is_some())
}

/// Where a storable response goes.
pub(crate) struct Plan {
    pub head: Arc<FillHead>,
    /// Kept in memory (readers read the chunks).
    pub memory: bool,
    /// Written to disk.
    pub disk: Option<Box<DiskWriter>>,
}

/// Decides whether and where the response to `request` is stored, and
/// starts its disk file when it goes to disk.
///
/// # Errors
/// Why it is not stored.
pub(crate) fn plan(
    shared: &Shared,
    key: &CacheKey,
    request: &RequestHead,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Plan, NotStored> {
    let config = &shared.config;
    // A 412 answers the request's own precondition (`If-Match`), a 416 its
    // own `Range`, not what the URL is: stored (with the lifetime some
    // servers give every status), either would answer every later request.
    if request.method != "GET"
        || status == StatusCode::PRECONDITION_FAILED
        || status == StatusCode::RANGE_NOT_SATISFIABLE
    {
        return Err(NotStored::Request);
    }
    if !key.is_partial() && never_fresh(request, status, headers) {
        return Err(NotStored::Useless);
    }
    if forbids_storing(headers) {
        return Err(NotStored::Policy);
    }
    let declared = content_length(headers);
    let stored = stored_headers(headers);
    let uri = key.uri().map_err(|_| NotStored::Policy)?;
    let policy = Policy::new(&uri, request, status, &stored, now);
    if !policy.is_storable() {
        return Err(NotStored::Policy);
    }
    if sets_cookie_for_one(&stored) || (sets_cookie(&stored) && !policy.is_fresh(now)) {
        return Err(NotStored::SetsCookie);
    }
    // An origin that sends no caching fields at all (no lifetime, no
    // Last-Modified to guess one from, no ETag) makes responses that RFC
    // 9111 lets a cache store but that no plain request could use (only a
    // client's `max-stale`, or an origin that cannot be reached): storing
    // each one would cost every request a store and an eviction. What was
    // stored before for the request is dropped instead (the filler's
    // `drop_superseded`), so it is not served in the new one's place.
    if !policy.is_fresh(now) && !has_validator(&stored) && !allows_stale(&stored) {
        return Err(NotStored::Useless);
    }
    // A part of a response (206) is kept under the URL's partial key only,
    // whole, and when it holds one range of a known total (RFC 9111 §3.3);
    // it then answers ranges within it (§3.4). A `Content-Range` on another
    // status means nothing (RFC 9110 §14.4) and is stored like any field.
    let partial = key.is_partial();
    let declared = if status == StatusCode::PARTIAL_CONTENT || partial {
        let part = (status == StatusCode::PARTIAL_CONTENT && partial)
            .then(|| range::content_range(&stored))
            .flatten();
        let Some((first, last, _)) = part else {
            return Err(NotStored::Partial);
        };
        let len = last - first + 1;
        if declared.is_some_and(|declared| declared != len) {
            return Err(NotStored::Partial);
        }
        Some(len)
    } else {
        declared
    };
    let names = VaryNames::of_response(&stored);
    if names == VaryNames::Star {
        return Err(NotStored::VaryStar);
    }
    let declared = if object::has_body(status) {
        declared
    } else {
        Some(0)
    };
    let fits = |limit: u64| declared.is_none_or(|len| len <= limit);
    let memory = shared.memory.is_some() && fits(config.mem_max_object);
    // Parts stay in memory: few clients ask for the same range twice.
    let disk_fits = !partial && shared.disk.as_ref().is_some_and(|d| fits(d.max_object()));
    if !memory && !disk_fits {
        return Err(NotStored::TooLarge);
    }
    let variant = Variant::capture(&names, request);
    let mut disk = None;
    if let (true, Some(store)) = (disk_fits, &shared.disk) {
        let header = Header {
            key: key.clone(),
            variant: variant.clone(),
            response_time: now,
            status,
            request: policy.request_headers().clone(),
            response: stored.clone(),
        };
        let written = match store.writing_room(declared) {
            Some(room) => store.writer(&header, room).map(Some),
            // The files of fills in progress already hold their share.
            None if memory => Ok(None),
            None => return Err(NotStored::Busy),
        };
        match written {
            Ok(writer) => disk = writer.map(Box::new),
            Err(err) => {
                log::warn!("cache: cannot write {}: {err}", key);
                bump(&shared.stats.disk_write_errors);
                store.write_failed(&err);
                if !memory {
                    return Err(NotStored::DiskError);
                }
            }
        }
    }
    let head_block = object::head_block(
        status,
        &stored,
        declared.filter(|_| object::has_body(status)),
    );
    let head = FillHead {
        status,
        headers: stored,
        policy,
        variant,
        declared_len: declared,
        head_block,
    };
    Ok(Plan {
        head: Arc::new(head),
        memory,
        disk,
    })
}

/// Whether the response says `no-store`, or `private` (which a shared
/// cache must not store, RFC 9111 §5.2.2.5 and §5.2.2.7; `private="field"`
/// keeps only that field out), without `must-understand`: the answer the
/// policy would give, known without building it, for most responses that
/// are not to be stored.
fn forbids_storing(headers: &HeaderMap) -> bool {
    let lines = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .map(|v| v.as_bytes());
    let mut directives = normalise::parse(lines);
    directives.retain(|directive| !normalise::is_field_limit(directive));
    let has = |name: &str| directives.iter().any(|(n, _)| n == name);
    (has("no-store") || has("private")) && !has("must-understand")
}

/// A single valid `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value.to_str().ok()?.trim().parse().ok()
}

/// Headers never stored: the framing, and this hop's proxy authentication
/// (RFC 9111 §3.1 names `Proxy-Authentication-Info` with the hop-by-hop set).
const NOT_STORED: &[&str] = &["content-length", "proxy-authentication-info"];

/// The response headers worth storing: hop-by-hop ones (and those its
/// `Connection` lists), this hop's authentication, the framing, and the
/// fields its `no-cache="..."` or `private="..."` name go (RFC 9111 §3.1).
pub fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let hop = HopByHop::from_connection(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let mut stored = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_str = name.as_str();
        if is_hop_by_hop(name_str) || hop.contains(name_str) || NOT_STORED.contains(&name_str) {
            continue;
        }
        stored.append(name.clone(), value.clone());
    }
    remove_unshared(&mut stored);
    stored
}

/// Whether `headers` set a cookie (`Set-Cookie`, or the old `Set-Cookie2`).
pub fn sets_cookie(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::SET_COOKIE) || headers.contains_key("set-cookie2")
}

/// Whether a response that sets a cookie (as stored: without the fields
/// its `no-cache="..."` or `private="..."` name) was meant for the one
/// client it answers, as far as a shared cache can tell: its origin gave
/// it no lifetime of its own (`max-age`, `s-maxage`, `Expires`), so only a
/// heuristic would make it fresh, or it must be revalidated on every use
/// (a bare `no-cache`), when each client's revalidation would be answered
/// with the first client's cookie. RFC 9111 §3.1 lets a cache store
/// `Set-Cookie`; nginx stores no response that sets one, Varnish none,
/// Squid strips it from every hit. Here a response that sets a cookie is
/// shared only as long as its origin said, explicitly, that it may be
/// reused as it is (checked with its freshness by the caller).
pub(crate) fn sets_cookie_for_one(stored: &HeaderMap) -> bool {
    if !sets_cookie(stored) {
        return false;
    }
    let directives = normalise::parse(
        stored
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .map(http::HeaderValue::as_bytes),
    );
    // `no-cache` without a list of fields (`no-cache=""` is none either).
    let bare_no_cache = directives
        .iter()
        .any(|directive| directive.0 == "no-cache" && !normalise::is_field_limit(directive));
    let explicit = stored.contains_key(http::header::EXPIRES)
        || directives
            .iter()
            .any(|(name, _)| name == "max-age" || name == "s-maxage");
    bare_no_cache || !explicit
}

/// Takes out of `headers` the fields its `no-cache="..."` or
/// `private="..."` name (RFC 9111 §5.2.2.4, §5.2.2.7): a field one client
/// was sent, such as its `Set-Cookie`, that the rest may not have. True
/// when there were any.
pub fn remove_unshared(headers: &mut HeaderMap) -> bool {
    let fields = normalise::unshared_fields(headers);
    for field in &fields {
        headers.remove(field.as_str());
    }
    !fields.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::headers;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_not_stored() {
        let response = headers(&[
            ("connection", "a, b"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("keep-alive", "x"),
            ("te", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "x"),
            ("proxy-connection", "x"),
            ("proxy-authenticate", "x"),
            ("proxy-authentication-info", "x"),
            ("content-length", "10"),
            ("content-range", "bytes 0-1/2"),
            ("set-cookie", "a=b"),
            ("set-cookie", "c=d"),
        ]);
        let stored = stored_headers(&response);
        let names: Vec<&str> = stored.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["c", "content-range", "set-cookie"]);
        assert_eq!(stored.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn fields_a_qualified_no_cache_or_private_names_are_not_stored() {
        let response = headers(&[
            (
                "cache-control",
                "max-age=60, no-cache=\"Set-Cookie, X-A\", private=x-b",
            ),
            ("set-cookie", "session=alice"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ]);
        let stored = stored_headers(&response);
        let names: Vec<&str> = stored.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["cache-control", "x-c"]);
        // Unqualified, or with an empty list, they name no field.
        for value in ["no-cache", "private", "no-cache=\"\", private=\",\""] {
            let response = headers(&[("cache-control", value), ("set-cookie", "a=b")]);
            assert!(
                stored_headers(&response).contains_key("set-cookie"),
                "{value}"
            );
        }
    }

    #[test]
    fn no_store_and_private_are_known_without_the_policy() {
        for (value, forbids) in [
            ("no-store", true),
            ("max-age=60, Private", true),
            ("private=\"set-cookie\"", false),
            ("private=\"\"", true),
            ("no-store, must-understand", false),
            ("max-age=60", false),
            ("no-cache", false),
            ("x=\"no-store\"", false),
        ] {
            let headers = headers(&[("cache-control", value)]);
            assert_eq!(forbids_storing(&headers), forbids, "{value}");
        }
        assert!(!forbids_storing(&HeaderMap::new()));
    }

    /// The shortcut says `Useless` only where the policy would: storable,
    /// never fresh, nothing to revalidate with, nothing stale allowed.
    #[test]
    fn a_bare_response_is_known_useless_as_the_policy_would_decide() {
        let now = SystemTime::now();
        let uri: http::Uri = "http://h/x".parse().expect("uri");
        let bare = headers(&[("content-type", "text/plain"), ("content-length", "3")]);
        let plain = crate::cache::testing::request("GET", "http://h/x", &[]);
        let mut shortcuts = 0;
        for code in 100..=599 {
            let Ok(status) = StatusCode::from_u16(code) else {
                continue;
            };
            if !never_fresh(&plain, status, &bare) {
                continue;
            }
            shortcuts += 1;
            let policy = Policy::new(&uri, &plain, status, &bare, now);
            assert!(policy.is_storable(), "{code}");
            assert!(!policy.is_fresh(now), "{code}");
            assert!(!has_validator(&bare) && !allows_stale(&bare), "{code}");
        }
        assert_eq!(shortcuts, STORABLE_BARE.len());
        let ok = StatusCode::OK;
        for (request, response) in [
            (vec![("authorization", "Basic eDp5")], vec![]),
            (vec![("cache-control", "no-store")], vec![]),
            (vec![], vec![("cache-control", "max-age=60")]),
            (vec![], vec![("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]),
            (
                vec![],
                vec![("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT")],
            ),
            (vec![], vec![("etag", "\"v1\"")]),
        ] {
            let request = crate::cache::testing::request("GET", "http://h/x", &request);
            assert!(
                !never_fresh(&request, ok, &headers(&response)),
                "{request:?} {response:?}: left to the policy"
            );
        }
        assert!(
            !never_fresh(&plain, StatusCode::FOUND, &bare),
            "302: the policy's"
        );
    }

    #[test]
    fn content_length_is_read_only_when_single_and_valid() {
        assert_eq!(
            content_length(&headers(&[("content-length", "10")])),
            Some(10)
        );
        assert_eq!(content_length(&headers(&[("content-length", "x")])), None);
        let two = headers(&[("content-length", "1"), ("content-length", "1")]);
        assert_eq!(content_length(&two), None);
    }
}
