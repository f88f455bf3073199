//! Cache keys. The primary key is the absolute URL, normalised (RFC 9110
//! §4.2.3); the secondary key is the request's values of the headers that
//! a stored response names in `Vary` (RFC 9111 §4.1). Pure: no I/O.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Uri};
use xxhash_rust::xxh3::Xxh3;

use crate::cache::{language, normal};
use crate::http::request::RequestHead;

/// Why a request target cannot be a cache key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not an absolute URL.
    #[error("bad URL {target:?}: {reason}")]
    BadUrl {
        /// The target as sent.
        target: String,
        /// What the URL parser said.
        reason: String,
    },
    /// Only http and https responses are cached.
    #[error("scheme {0:?} is not cached")]
    Scheme(String),
    /// Normalising changed the path or query, which go to the origin as
    /// written: an answer to one cannot stand for the other.
    #[error("{0:?} names its path or query in a form the key would rewrite")]
    Rewritten(String),
}

/// Ends the key of a URL's stored parts: a normalised URL never has a
/// fragment, so the key names no resource of its own.
const PARTIAL_MARK: &str = "#partial";

/// Begins the suffix of a variant's key in the collapse table (see
/// `CacheKey::of_variant`); a fragment too, so it names no resource.
const VARIANT_MARK: &str = "#variant-";

/// A normalised absolute URL: scheme and host lowercased, default port
/// dropped, no userinfo, no fragment, dot segments resolved, empty path as
/// `/`. Two targets that name the same resource get the same key.
///
/// The URL is hashed once, when the key is made: a request looks its key
/// up in several tables (fills, hit-for-miss marks), which then hash the
/// stored hash alone.
#[derive(Clone)]
pub struct CacheKey {
    url: Arc<str>,
    hash: u64,
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.hash == other.hash && self.url == other.url
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl CacheKey {
    /// The key of an absolute-form request target.
    ///
    /// # Errors
    /// `BadUrl` when `target` is not an absolute URL with a host, `Scheme`
    /// when it is not http or https.
    pub fn from_target(target: &str) -> Result<CacheKey, KeyError> {
        if normal::is_normal(target) {
            return Ok(CacheKey::of(target));
        }
        let bad = |reason: String| KeyError::BadUrl {
            target: target.to_string(),
            reason,
        };
        let mut url = url::Url::parse(target).map_err(|err| bad(err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(KeyError::Scheme(url.scheme().to_string()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".to_string()));
        }
        // Credentials never identify a resource (RFC 9110 §4.2.4), and a
        // fragment is never sent (RFC 9110 §4.2.5).
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(CacheKey::of(url.as_str()))
    }

    /// The key a request is answered and stored under: as
    /// [`CacheKey::from_target`], but only when normalising left its path
    /// and query as they go to the origin, since the origin answers what it
    /// was asked. `/a/%2e%2e/b` would otherwise be stored as `/b`, and a
    /// query's `'` as `%27`: a client could put its own answer under
    /// another URL. Scheme and host case, a default port, userinfo and a
    /// fragment may differ (the origin never sees them differently).
    ///
    /// # Errors
    /// As `from_target`, and `Rewritten` when the path or query would be.
    pub fn exact(target: &str) -> Result<CacheKey, KeyError> {
        if normal::is_normal(target) {
            return Ok(CacheKey::of(target));
        }
        let key = CacheKey::from_target(target)?;
        let raw = raw_path_and_query(target);
        let kept = match raw.as_bytes().first() {
            Some(b'/') => path_and_query(key.resource()) == raw,
            // An empty path is `/` (RFC 9110 §4.2.3).
            _ => path_and_query(key.resource()).strip_prefix('/') == Some(raw),
        };
        if !kept {
            return Err(KeyError::Rewritten(target.to_string()));
        }
        Ok(key)
    }

    /// The key of a URL already normalised.
    fn of(url: &str) -> CacheKey {
        CacheKey {
            url: Arc::from(url),
            hash: xxhash_rust::xxh3::xxh3_64(url.as_bytes()),
        }
    }

    /// A 64-bit hash of the URL, taken when the key was made: a stand-in
    /// for the key where a rare collision does no harm (hit-for-miss
    /// marks, invalidations).
    pub fn fingerprint(&self) -> u64 {
        self.hash
    }

    /// The normalised URL (with a mark for a partial key).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The key under which parts of this URL's responses (206s) are
    /// kept, apart from complete ones.
    pub fn partial(&self) -> CacheKey {
        if self.is_partial() {
            return self.clone();
        }
        CacheKey::of(&format!("{}{PARTIAL_MARK}", self.url))
    }

    /// The key under which requests for `variant` of this URL wait on
    /// one revalidation (the collapse table's, never the store's): the URL
    /// and the variant's identity (`Variant::id`, the disk's file name).
    pub fn of_variant(&self, variant: &Variant) -> CacheKey {
        CacheKey::of(&format!(
            "{}{VARIANT_MARK}{:032x}",
            self.resource(),
            variant.id(self)
        ))
    }

    /// The key of the URL's whole responses: itself, or for a partial key
    /// the URL's own.
    pub fn whole(&self) -> CacheKey {
        if self.is_partial() {
            CacheKey::of(self.resource())
        } else {
            self.clone()
        }
    }

    /// Whether this is the key of parts of responses (see `partial`).
    pub fn is_partial(&self) -> bool {
        self.url.ends_with(PARTIAL_MARK)
    }

    /// The URL itself, without the mark of a partial key.
    fn resource(&self) -> &str {
        self.url.strip_suffix(PARTIAL_MARK).unwrap_or(&self.url)
    }

    /// The normalised URL as an `http::Uri`, for the policy crate.
    ///
    /// # Errors
    /// `BadUrl` when the normalised URL is not a valid `http::Uri`.
    pub fn uri(&self) -> Result<Uri, KeyError> {
        self.resource()
            .parse()
            .map_err(|err: http::uri::InvalidUri| KeyError::BadUrl {
                target: self.url.to_string(),
                reason: err.to_string(),
            })
    }

    /// The key of `reference` (a `Location` or `Content-Location` value,
    /// maybe relative) when it has the same origin as this key: only such
    /// URLs may be invalidated by a response (RFC 9111 §4.4).
    pub fn same_origin(&self, reference: &[u8]) -> Option<CacheKey> {
        let base = url::Url::parse(self.resource()).ok()?;
        let reference = std::str::from_utf8(reference).ok()?.trim();
        let joined = base.join(reference).ok()?;
        if joined.origin() != base.origin() {
            return None;
        }
        CacheKey::from_target(joined.as_str()).ok()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.url, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The header names a response varies on (its `Vary`, lowercased and
/// without repeats), or `Star` for `Vary: *`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaryNames {
    /// Names of request headers that select this response.
    Names(Vec<HeaderName>),
    /// `Vary: *`: no later request matches (RFC 9110 §12.5.5).
    Star,
}

impl VaryNames {
    /// Reads every `Vary` field line of a response.
    pub fn of_response(headers: &HeaderMap) -> VaryNames {
        let mut names: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(http::header::VARY) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token == b"*" {
                    return VaryNames::Star;
                }
                // An unparseable name cannot match any request header.
                let Ok(name) = HeaderName::from_bytes(token) else {
                    if token.is_empty() {
                        continue;
                    }
                    return VaryNames::Star;
                };
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        VaryNames::Names(names)
    }
}

/// One varied header: its name and the request's normalised value (`None`
/// when the request did not send it).
pub type VaryField = (HeaderName, Option<Vec<u8>>);

/// The secondary key of one stored response: the values the request that
/// caused it had for each header its `Vary` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `None` for `Vary: *`.
    fields: Option<Vec<VaryField>>,
}

impl Variant {
    /// A variant for responses without `Vary`: matches every request.
    pub fn any() -> Variant {
        Variant {
            fields: Some(Vec::new()),
        }
    }

    /// Captures `request`'s values of `names`.
    pub fn capture(names: &VaryNames, request: &RequestHead) -> Variant {
        let fields = match names {
            VaryNames::Star => None,
            VaryNames::Names(names) => Some(
                names
                    .iter()
                    .map(|name| (name.clone(), request_value(request, name.as_str())))
                    .collect(),
            ),
        };
        Variant { fields }
    }

    /// Bytes it takes in memory, roughly but not below the truth: each
    /// field's name and value, and about 64 bytes of overhead a field.
    pub fn memory_bytes(&self) -> usize {
        self.fields
            .iter()
            .flatten()
            .map(|(name, value)| name.as_str().len() + value.as_ref().map_or(0, Vec::len) + 64)
            .sum()
    }

    /// Rebuilds a variant from stored fields (the disk format).
    pub fn from_fields(fields: Option<Vec<VaryField>>) -> Variant {
        Variant { fields }
    }

    /// The stored fields, `None` for `Vary: *`.
    pub fn fields(&self) -> Option<&[VaryField]> {
        self.fields.as_deref()
    }

    /// Whether `request` selects this variant (RFC 9111 §4.1): each named
    /// header has the same normalised value, or is absent in both.
    pub fn matches(&self, request: &RequestHead) -> bool {
        let Some(fields) = &self.fields else {
            return false;
        };
        fields
            .iter()
            .all(|(name, value)| request_value(request, name.as_str()) == *value)
    }

    /// Whether `request` selects this variant of a stored response with
    /// headers `response`: `matches`, or every varied header matches but
    /// `Accept-Language`, and the one language the response is in
    /// (`Content-Language`) is the one the request prefers above all
    /// others. An origin negotiating as RFC 9110 §12.5.4 describes has that
    /// language, since it sent it, and would send it again; RFC 9111 §4.1
    /// lets a cache use such knowledge of a header's semantics.
    pub fn selects(&self, request: &RequestHead, response: &HeaderMap) -> bool {
        if self.matches(request) {
            return true;
        }
        let Some(fields) = &self.fields else {
            return false;
        };
        let mut negotiated = false;
        for (name, value) in fields {
            if request_value(request, name.as_str()) == *value {
                continue;
            }
            if name != http::header::ACCEPT_LANGUAGE {
                return false;
            }
            negotiated = true;
        }
        if !negotiated {
            return false;
        }
        let mut languages = response.get_all(http::header::CONTENT_LANGUAGE).iter();
        let (Some(served), None) = (languages.next(), languages.next()) else {
            return false;
        };
        let served = served.as_bytes().trim_ascii();
        if served.contains(&b',') {
            return false;
        }
        language::preferred(request.header_values("accept-language"))
            .is_some_and(|preferred| preferred.eq_ignore_ascii_case(served))
    }

    /// A stable 128-bit identity of `key` plus this variant: the disk
    /// object's file name.
    pub fn id(&self, key: &CacheKey) -> u128 {
        let mut hasher = Xxh3::new();
        hasher.update(key.as_str().as_bytes());
        for (name, value) in self.fields.iter().flatten() {
            hasher.update(b"\0");
            hasher.update(name.as_str().as_bytes());
            match value {
                Some(value) => {
                    hasher.update(b"=");
                    hasher.update(value);
                }
                None => hasher.update(b"!"),
            }
        }
        hasher.digest128()
    }
}

/// Request headers whose list order carries no meaning and whose items are
/// case-insensitive (RFC 9110 §12.5.3, §12.5.4: preference is in the
/// q-values, and codings and language tags ignore case).
const UNORDERED: &[&str] = &["accept-encoding", "accept-language"];

/// A request header's value normalised for comparison: every field line
/// joined with ", ", whitespace around the commas dropped (RFC 9111 §4.1
/// allows normalising when it keeps the meaning). For `UNORDERED` headers
/// items are also lowercased, stripped of inner spaces and sorted.
fn request_value(request: &RequestHead, name: &str) -> Option<Vec<u8>> {
    let mut lines = request.header_values(name).peekable();
    lines.peek()?;
    let mut items: Vec<Vec<u8>> = lines
        .flat_map(|line| line.split(|&b| b == b','))
        .map(|item| item.trim_ascii().to_vec())
        .collect();
    if UNORDERED.contains(&name) {
        for item in &mut items {
            item.retain(|b| !b.is_ascii_whitespace());
            item.make_ascii_lowercase();
        }
        items.retain(|item| !item.is_empty());
        items.sort_unstable();
    }
    Some(items.join(&b", "[..]))
}

/// The path and query of an absolute URL as written: from the end of its
/// authority (the first `/`, `?` or `#` after `://`) to its fragment.
fn raw_path_and_query(target: &str) -> &str {
    let rest = target.split_once("://").map_or(target, |(_, rest)| rest);
    let tail = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
    &tail[..tail.find('#').unwrap_or(tail.len())]
}

/// The path and query of a normalised URL (which has a path).
fn path_and_query(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    &rest[rest.find('/').unwrap_or(rest.len())..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::request;

    #[test]
    fn a_variant_weighs_the_values_it_keeps() {
        let mut response = http::HeaderMap::new();
        response.insert(http::header::VARY, http::HeaderValue::from_static("Cookie"));
        let names = VaryNames::of_response(&response);
        let cookie = "c".repeat(4096);
        let with = Variant::capture(
            &names,
            &request("GET", "http://h/", &[("cookie", cookie.as_str())]),
        );
        let without = Variant::capture(&names, &request("GET", "http://h/", &[]));
        assert!(with.memory_bytes() >= without.memory_bytes() + 4096);
        assert_eq!(Variant::any().memory_bytes(), 0);
    }

    #[test]
    fn a_request_is_keyed_only_as_it_goes_to_the_origin() {
        for (target, key) in [
            ("http://Example.COM/a/b?x=1", "http://example.com/a/b?x=1"),
            (
                "HTTP://example.com:80/a/b?x=1",
                "http://example.com/a/b?x=1",
            ),
            (
                "http://user:pw@example.com/a?x=1#frag",
                "http://example.com/a?x=1",
            ),
            ("http://example.com", "http://example.com/"),
            ("http://example.com?x=1", "http://example.com/?x=1"),
            (
                "http://example.com/a%20b?q=%41",
                "http://example.com/a%20b?q=%41",
            ),
        ] {
            let exact = CacheKey::exact(target).expect(target);
            assert_eq!(exact.as_str(), key, "{target}");
        }
        for target in [
            "http://example.com/evil/%2e%2e/target",
            "http://example.com/a/./b",
            "http://example.com/a/../b",
            "http://example.com/q?x='",
            "http://example.com/a b",
        ] {
            assert_eq!(
                CacheKey::exact(target),
                Err(KeyError::Rewritten(target.to_string())),
                "{target}"
            );
            // Invalidation and PURGE still find the normalised URL.
            assert!(CacheKey::from_target(target).is_ok(), "{target}");
        }
    }

    #[test]
    fn urls_naming_one_resource_share_a_key() {
        let same = [
            "http://Example.COM/a/b?x=1",
            "HTTP://example.com:80/a/b?x=1",
            "http://user:pw@example.com/a/./c/../b?x=1#frag",
        ];
        for target in same {
            let key = CacheKey::from_target(target).expect("key");
            assert_eq!(key.as_str(), "http://example.com/a/b?x=1", "{target}");
        }
        let https = CacheKey::from_target("https://example.com:443").expect("key");
        assert_eq!(https.as_str(), "https://example.com/");
        let port = CacheKey::from_target("http://example.com:8080/").expect("key");
        assert_eq!(port.as_str(), "http://example.com:8080/");
        assert!(port.uri().is_ok());
    }

    #[test]
    fn partial_keys_are_apart_from_their_url() {
        let key = CacheKey::from_target("http://h/a?b=1").expect("key");
        let partial = key.partial();
        assert_ne!(partial, key);
        assert!(partial.is_partial() && !key.is_partial());
        assert_eq!(partial.partial(), partial);
        assert_eq!(
            partial.uri().expect("uri").to_string(),
            "http://h/a?b=1",
            "the same resource"
        );
        let other = CacheKey::from_target("http://h/a?b=1#partial").expect("key");
        assert_eq!(other, key, "a target's fragment is dropped");
    }

    #[test]
    fn targets_that_cannot_be_keys_are_refused() {
        assert!(matches!(
            CacheKey::from_target("/relative"),
            Err(KeyError::BadUrl { .. })
        ));
        assert_eq!(
            CacheKey::from_target("ftp://example.com/"),
            Err(KeyError::Scheme("ftp".to_string()))
        );
    }

    #[test]
    fn only_same_origin_locations_give_keys() {
        let key = CacheKey::from_target("http://example.com/dir/page").expect("key");
        let rel = key.same_origin(b"other").expect("relative");
        assert_eq!(rel.as_str(), "http://example.com/dir/other");
        let abs = key
            .same_origin(b"http://EXAMPLE.com:80/x")
            .expect("absolute");
        assert_eq!(abs.as_str(), "http://example.com/x");
        assert!(key.same_origin(b"http://other.example/x").is_none());
        assert!(key.same_origin(b"https://example.com/x").is_none());
    }

    #[test]
    fn variants_match_on_normalised_values() {
        let mut response = HeaderMap::new();
        response.append(
            "vary",
            "Accept-Encoding, accept-language".parse().expect("v"),
        );
        response.append("vary", "accept-encoding".parse().expect("v"));
        let names = VaryNames::of_response(&response);
        assert_eq!(
            names,
            VaryNames::Names(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language"),
            ])
        );
        let first = request("GET", "http://h/", &[("Accept-Encoding", "gzip,br")]);
        let variant = Variant::capture(&names, &first);
        let spaced = request("GET", "http://h/", &[("accept-encoding", "gzip, br")]);
        let split = request(
            "GET",
            "http://h/",
            &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
        );
        assert!(variant.matches(&first));
        assert!(variant.matches(&spaced));
        assert!(variant.matches(&split));
        let other = request("GET", "http://h/", &[("accept-encoding", "br")]);
        assert!(!variant.matches(&other));
        let extra = request(
            "GET",
            "http://h/",
            &[("accept-encoding", "gzip,br"), ("accept-language", "en")],
        );
        assert!(!variant.matches(&extra), "absent and present differ");
    }

    #[test]
    fn language_and_coding_lists_ignore_order_case_and_spaces() {
        let names = VaryNames::Names(vec![HeaderName::from_static("accept-language")]);
        let stored = request("GET", "http://h/", &[("accept-language", "en, de")]);
        let variant = Variant::capture(&names, &stored);
        for same in ["de, en", "eN, De", " en ,   de", "en,de"] {
            let req = request("GET", "http://h/", &[("accept-language", same)]);
            assert!(variant.matches(&req), "{same}");
        }
        let other = request("GET", "http://h/", &[("accept-language", "en;q=0.5, de")]);
        assert!(!variant.matches(&other));
        let names = VaryNames::Names(vec![HeaderName::from_static("foo")]);
        let ordered = Variant::capture(&names, &request("GET", "http://h/", &[("foo", "1, 2")]));
        assert!(
            !ordered.matches(&request("GET", "http://h/", &[("foo", "2, 1")])),
            "other headers keep their order"
        );
    }

    #[test]
    fn a_language_the_request_prefers_most_selects_the_stored_one() {
        let names = VaryNames::Names(vec![HeaderName::from_static("accept-language")]);
        let stored = request("GET", "http://h/", &[("accept-language", "en, de")]);
        let variant = Variant::capture(&names, &stored);
        let mut response = HeaderMap::new();
        response.insert("content-language", "de".parse().expect("v"));
        let asks = |value: &str| {
            variant.selects(
                &request("GET", "http://h/", &[("accept-language", value)]),
                &response,
            )
        };
        assert!(asks("fr;q=0.5, de;q=1.0"));
        assert!(asks("DE, fr;q=0.9"));
        assert!(!asks("fr, de"), "fr is preferred");
        assert!(!asks("de;q=0.5, fr;q=0.5"), "a tie");
        assert!(!asks("*, de;q=0.5"));
        assert!(!asks("de-AT, de;q=0.9"), "another tag is preferred");
        assert!(!asks("de;q=x"), "a malformed weight");
        assert!(!variant.selects(&request("GET", "http://h/", &[]), &response));
        let mut two = HeaderMap::new();
        two.insert("content-language", "de, en".parse().expect("v"));
        assert!(!variant.selects(
            &request("GET", "http://h/", &[("accept-language", "de")]),
            &two
        ));
    }

    #[test]
    fn vary_star_never_matches() {
        let mut response = HeaderMap::new();
        response.append("vary", "accept, *".parse().expect("v"));
        let names = VaryNames::of_response(&response);
        assert_eq!(names, VaryNames::Star);
        let req = request("GET", "http://h/", &[]);
        assert!(!Variant::capture(&names, &req).matches(&req));
        assert!(Variant::any().matches(&req));
    }

    #[test]
    fn variant_ids_differ_by_url_and_values() {
        let names = VaryNames::Names(vec![HeaderName::from_static("accept")]);
        let a = Variant::capture(&names, &request("GET", "http://h/", &[("accept", "a")]));
        let b = Variant::capture(&names, &request("GET", "http://h/", &[("accept", "b")]));
        let none = Variant::capture(&names, &request("GET", "http://h/", &[]));
        let k1 = CacheKey::from_target("http://h/1").expect("key");
        let k2 = CacheKey::from_target("http://h/2").expect("key");
        let ids = [a.id(&k1), b.id(&k1), none.id(&k1), a.id(&k2)];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(a.id(&k1), a.clone().id(&k1));
    }

    #[test]
    fn each_variant_has_a_collapse_key_of_its_own() {
        let names = VaryNames::Names(vec![HeaderName::from_static("accept-encoding")]);
        let gzip = request("GET", "http://h/", &[("accept-encoding", "gzip")]);
        let key = CacheKey::from_target("http://h/").expect("key");
        let of = |request: &RequestHead| key.of_variant(&Variant::capture(&names, request));
        let upper = request("GET", "http://h/", &[("accept-encoding", "GZIP")]);
        assert_eq!(of(&gzip), of(&upper), "the same variant");
        let br = request("GET", "http://h/", &[("accept-encoding", "br")]);
        assert_ne!(of(&gzip), of(&br));
        assert_ne!(of(&gzip), key);
        assert!(!of(&gzip).is_partial());
        assert_ne!(of(&gzip), key.partial());
    }
}
