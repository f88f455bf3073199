//! What requests with unsafe methods do to the cache: a success
//! invalidates the URL and the same-origin URLs the answer names (RFC 9111
//! §4.4), and a POST answer that says it is the URL's representation is
//! kept for later GETs (RFC 9110 §9.3.3). Extension methods the proxy
//! forwards count as unsafe.

use crate::cache::admission;
use crate::cache::key::CacheKey;
use crate::cache::policy::directive;
use crate::cache::stats;
use crate::cache::{Cache, Filler};
use crate::http::request::RequestHead;

impl Cache {
    /// After an unsafe method's response: RFC 9111 §4.4 invalidates the
    /// target URL and same-origin `Location` / `Content-Location` when the
    /// status is 2xx or 3xx. Returns whether anything was removed.
    pub fn invalidate(
        &self,
        head: &crate::http::request::RequestHead,
        status: u16,
        headers: &http::HeaderMap,
    ) -> bool {
        if matches!(head.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE")
            || !(200..400).contains(&status)
            || !self.is_enabled()
        {
            return false;
        }
        let Ok(key) = CacheKey::from_target(&head.target) else {
            return false;
        };
        let mut removed = self.remove(&key);
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            for value in headers.get_all(&name) {
                if let Some(other) = key.same_origin(value.as_bytes()) {
                    removed |= self.remove(&other);
                }
            }
        }
        if removed {
            stats::bump(&self.shared.stats.invalidations);
        }
        removed
    }

    /// A filler for the answer to a POST that later GETs of its URL may
    /// reuse (RFC 9110 §9.3.3): a 200 or 203 with explicit freshness and a
    /// `Content-Location` naming the request's own URL, whose content is
    /// then a representation of that resource (RFC 9110 §8.7: only a 2xx
    /// says so; an error's content describes the error). It is stored as
    /// the URL's GET response. `None` for any other answer; call after
    /// `invalidate`, which the POST's success calls for first.
    pub fn post_filler(
        &self,
        head: &RequestHead,
        status: u16,
        headers: &http::HeaderMap,
    ) -> Option<Filler> {
        if !self.is_enabled() || head.method != "POST" || !matches!(status, 200 | 203) {
            return None;
        }
        // The key as a GET of it is looked up (never one normalising would
        // rewrite: `/x/../victim` names another URL than the origin saw).
        let key = CacheKey::exact(&head.target).ok()?;
        if super::lookup::drops_named_fields(head) {
            return None;
        }
        let names_itself = headers
            .get_all(http::header::CONTENT_LOCATION)
            .iter()
            .any(|value| key.same_origin(value.as_bytes()).as_ref() == Some(&key));
        let cache_control = || {
            headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .map(|v| v.as_bytes())
        };
        let explicit = directive(cache_control(), "max-age").is_some()
            || directive(cache_control(), "s-maxage").is_some()
            || headers.contains_key(http::header::EXPIRES);
        if !names_itself || !explicit || sets_its_cookie(headers) {
            return None;
        }
        let body_headers = ["content-length", "transfer-encoding", "expect"];
        let as_get = RequestHead {
            method: "GET".to_string(),
            target: head.target.clone(),
            version: head.version,
            headers: head
                .headers
                .iter()
                .filter(|h| {
                    !body_headers
                        .iter()
                        .any(|n| h.name().eq_ignore_ascii_case(n))
                })
                .cloned()
                .collect(),
        };
        Some(self.fill_alone(key).stored_as(as_get))
    }
}

/// Whether a POST's answer sets a cookie that would be kept with it (one
/// not named by its `no-cache="..."` or `private="..."`): an answer to a
/// login or a form is its sender's, whatever lifetime the site gives every
/// page, and no later GET may be sent its cookie.
fn sets_its_cookie(headers: &http::HeaderMap) -> bool {
    if !admission::sets_cookie(headers) {
        return false;
    }
    let mut kept = headers.clone();
    admission::remove_unshared(&mut kept);
    admission::sets_cookie(&kept)
}
