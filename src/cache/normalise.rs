//! The headers as the policy crate is given them. `http-cache-semantics`
//! reads `Cache-Control` names case-sensitively, splits on every comma,
//! parses dates as RFC 2822 (too lenient for HTTP-date, and blind to its
//! obsolete forms), takes `Age: 7200, 0` as 0, refuses statuses outside a
//! short list even with explicit freshness, and never lets a response with
//! `Set-Cookie` be fresh. So the crate reads a normalised copy (a "view")
//! and keeps every decision; the stored and replayed headers are the
//! origin's own:
//!
//! - `Cache-Control`: parsed as RFC 9111 §5.2 lists (quoted strings kept
//!   whole, names lowercased), written back with only the directives the
//!   policy acts on. `must-understand` (RFC 9111 §5.2.2.3) overrides
//!   `no-store` for statuses the cache understands, and stops all others.
//!   The qualified forms `no-cache="field"` and `private="field"` limit
//!   the fields they name, not the response (RFC 9111 §5.2.2.4,
//!   §5.2.2.7): those fields are not stored ([`unshared_fields`]), and the
//!   directives are left out of the view.
//!   `CDN-Cache-Control` (RFC 9213) is not read: it targets the caches an
//!   origin runs or hires (a CDN acts for the origin, which can purge it
//!   and may key it on cookies without saying so in `Vary`), and a forward
//!   proxy acts for its clients. Honouring it could share what the origin
//!   marked `private` or `no-store` for everyone but its CDN, or keep for
//!   a year what the origin means to purge. It is stored and passed on
//!   like any other header. `proxy-revalidate` is left out: it only keeps
//!   a stale response from being served (`Policy`'s own reading), where
//!   the crate makes a shared cache's copy stale on arrival, whatever its
//!   `max-age` (RFC 9111 §5.2.2.8). So is `immutable` beside `Expires`,
//!   to which the crate would give a day however far past it is (RFC
//!   8246 §2: `immutable` extends no lifetime).
//! - `Age`: the first value of the first line, when it is a number
//!   (RFC 9111 §5.1); otherwise ignored.
//! - `Date`, `Last-Modified`, `Expires`: one line in any HTTP-date form
//!   (RFC 9110 §5.6.7), case aside, rewritten as IMF-fixdate; an invalid or
//!   repeated `Expires` is "already expired" (RFC 9111 §5.3), the others are
//!   dropped.
//! - `Set-Cookie` is left out: RFC 9111 lets a shared cache store it. So
//!   is every header the crate does not read (only `Pragma`, `ETag`,
//!   `Vary` and `Warning` are given as they are).
//! - A final status the crate does not know is given as 200 when the
//!   response has explicit freshness or `public` (RFC 9111 §3: any final
//!   status may then be stored), since the crate then decides the same way;
//!   a 206 is given as 200, the response it is a part of.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Statuses the crate understands (and this cache, for `must-understand`).
const UNDERSTOOD: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Directives the policy acts on; others are left out of the view.
const KNOWN: &[&str] = &[
    "max-age",
    "s-maxage",
    "no-cache",
    "no-store",
    "private",
    "public",
    "must-revalidate",
    "immutable",
    "must-understand",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Request directives the policy acts on (RFC 9111 §5.2.1).
const REQUEST_KNOWN: &[&str] = &[
    "no-cache",
    "no-store",
    "max-age",
    "max-stale",
    "min-fresh",
    "only-if-cached",
    "stale-if-error",
];

/// Directives whose value is delta-seconds.
const SECONDS: &[&str] = &[
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
    "min-fresh",
    "max-stale",
];

/// RFC 9111 §1.2.2: larger delta-seconds are taken as 2^31.
const MAX_DELTA: u64 = 1 << 31;

/// One directive: lowercased name, unquoted value; borrowed from the
/// header line when it is already in that form, as it nearly always is.
pub type Directive<'a> = (Cow<'a, str>, Option<Cow<'a, str>>);

/// The response as the policy reads it: status and view headers.
pub fn response_view(status: StatusCode, headers: &HeaderMap) -> (StatusCode, HeaderMap) {
    let mut view = HeaderMap::with_capacity(8);
    for (name, value) in headers {
        // The crate reads no other header as it is (the dates and
        // directives are rewritten below): copying the rest would only
        // cost every miss a map of them.
        if matches!(name.as_str(), "pragma" | "etag" | "vary" | "warning") {
            view.append(name.clone(), value.clone());
        }
    }
    let lines = |name| headers.get_all(name).iter().map(HeaderValue::as_bytes);
    let mut directives = parse(lines(&CACHE_CONTROL));
    directives.retain(|directive| !is_field_limit(directive));
    let has = |ds: &[Directive], n: &str| ds.iter().any(|(name, _)| name == n);
    if has(&directives, "must-understand") {
        directives.retain(|(name, _)| name != "no-store");
        if !UNDERSTOOD.contains(&status.as_u16()) {
            directives.push((Cow::Borrowed("no-store"), None));
        }
    }
    // `immutable` extends no explicit lifetime (RFC 8246 §2): the crate
    // would give a past `Expires` a day.
    if headers.contains_key(EXPIRES) {
        directives.retain(|(name, _)| name != "immutable");
    }
    let rendered = render(&directives, KNOWN);
    if let Some(value) = rendered.and_then(|v| same_or(headers, &CACHE_CONTROL, v.as_bytes())) {
        view.insert(CACHE_CONTROL, value);
    }
    if let Some(age) = first_number(lines(&AGE)) {
        view.insert(AGE, HeaderValue::from(age));
    }
    for name in [DATE, LAST_MODIFIED] {
        if let Some(date) = single_date(headers, &name) {
            view.insert(name, date);
        }
    }
    if headers.contains_key(EXPIRES) {
        let date = single_date(headers, &EXPIRES).unwrap_or(HeaderValue::from_static("0"));
        view.insert(EXPIRES, date);
    }
    let explicit = ["max-age", "s-maxage", "public"]
        .iter()
        .any(|n| has(&directives, n))
        || headers.contains_key(EXPIRES);
    let final_unknown = status.as_u16() >= 200
        && !UNDERSTOOD.contains(&status.as_u16())
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    // The crate does not know 206; a part is as storable and as fresh as
    // the response it is part of (RFC 9111 §3.3), and the cache decides
    // itself which parts it keeps (`admission`).
    let status = if (final_unknown && explicit) || status == StatusCode::PARTIAL_CONTENT {
        StatusCode::OK
    } else {
        status
    };
    (status, view)
}

/// Whether `directive` is `no-cache` or `private` naming fields: it then
/// keeps those fields from being stored and limits nothing else (RFC 9111
/// §5.2.2.4, §5.2.2.7). One with an empty or broken list is taken
/// unqualified, which limits the whole response.
pub fn is_field_limit((name, value): &Directive) -> bool {
    matches!(name.as_ref(), "no-cache" | "private")
        && value
            .as_deref()
            .is_some_and(|list| field_names(list).next().is_some())
}

fn field_names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && name.bytes().all(is_tchar))
}

/// The fields, lowercased, that a response's `no-cache="..."` and
/// `private="..."` keep out of a shared cache (RFC 9111 §3.1): stored
/// without them, the rest of the response is shared.
pub fn unshared_fields(headers: &HeaderMap) -> Vec<String> {
    let lines = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .map(HeaderValue::as_bytes);
    let mut fields = Vec::new();
    for directive in parse(lines) {
        if is_field_limit(&directive)
            && let Some(list) = &directive.1
        {
            fields.extend(field_names(list).map(str::to_ascii_lowercase));
        }
    }
    fields
}

/// `normal` as a header value: the header's own line when it is just that
/// (most origins send the normal form already), whose clone shares its
/// bytes; else a new value.
fn same_or(headers: &HeaderMap, name: &HeaderName, normal: &[u8]) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) if line.as_bytes() == normal => Some(line.clone()),
        _ => HeaderValue::from_bytes(normal).ok(),
    }
}

/// A request's `Cache-Control` lines as one normalised value.
pub fn request_cache_control<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<HeaderValue> {
    render(&parse(lines), REQUEST_KNOWN).and_then(|value| HeaderValue::from_str(&value).ok())
}

/// Parses `Cache-Control` lines (RFC 9111 §5.2): a comma list of
/// `token [ "=" ( token / quoted-string ) ]`; commas inside quoted strings
/// do not split, names are lowercased, broken items are skipped.
pub fn parse<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<Directive<'a>> {
    let mut out = Vec::new();
    for line in lines {
        let mut rest = line;
        while !rest.is_empty() {
            let (item, next) = split_item(rest);
            rest = next;
            if let Some(directive) = parse_item(item) {
                out.push(directive);
            }
        }
    }
    out
}

/// Splits off the next list item, honouring quoted strings.
fn split_item(s: &[u8]) -> (&[u8], &[u8]) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, &[])
}

fn parse_item(item: &[u8]) -> Option<Directive<'_>> {
    let item = item.trim_ascii();
    let (name, value) = match item.iter().position(|&b| b == b'=') {
        Some(eq) => (item[..eq].trim_ascii(), Some(item[eq + 1..].trim_ascii())),
        None => (item, None),
    };
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let value = match value {
        None => None,
        Some(v) if v.first() == Some(&b'"') => Some(unquote(v)?),
        // Token characters are ASCII.
        Some(v) if !v.is_empty() && v.iter().all(|&b| is_tchar(b)) => Some(ascii(v)),
        // A value that is neither a token nor a quoted string.
        Some(_) => Some(Cow::Borrowed("")),
    };
    let name = match ascii(name) {
        Cow::Borrowed(name) if name.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Owned(name.to_ascii_lowercase())
        }
        name => name,
    };
    Some((name, value))
}

/// Token characters as text (they are ASCII, so this does not copy).
fn ascii(token: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(token)
}

fn unquote(v: &[u8]) -> Option<Cow<'_, str>> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(String::from_utf8_lossy(inner));
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if escaped || b != b'\\' {
            out.push(b);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `known` directives as one header value; invalid delta-seconds
/// become 0 (RFC 9111 §4.2.1: invalid freshness is taken as stale), and a
/// bare `max-stale` stays bare (any staleness, RFC 9111 §5.2.1.2).
fn render(directives: &[Directive], known: &[&str]) -> Option<String> {
    let mut out = String::new();
    for (name, value) in directives {
        if !known.contains(&name.as_ref()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(name);
        let bare_max_stale = name == "max-stale" && value.is_none();
        if SECONDS.contains(&name.as_ref()) && !bare_max_stale {
            let secs = value.as_deref().map_or(0, delta_seconds);
            let _ = write!(out, "={secs}");
        }
    }
    (!out.is_empty()).then_some(out)
}

fn delta_seconds(value: &str) -> u64 {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    value.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA))
}

/// The first element of the first line, if a number (RFC 9111 §5.1).
fn first_number<'a>(mut lines: impl Iterator<Item = &'a [u8]>) -> Option<u64> {
    let first = lines.next()?.split(|&b| b == b',').next()?.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let text = std::str::from_utf8(first).ok()?;
    Some(text.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// The header's single HTTP-date line, as IMF-fixdate.
fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return None;
    };
    if is_imf_fixdate(line.as_bytes()) {
        return Some(line.clone());
    }
    let time = parse_http_date(line.as_bytes())?;
    // IMF-fixdate is 29 bytes: formatted on the stack, to keep the line
    // itself when it is that already.
    let mut fixdate = std::io::Cursor::new([0u8; 32]);
    std::io::Write::write_fmt(
        &mut fixdate,
        format_args!("{}", httpdate::HttpDate::from(time)),
    )
    .ok()?;
    let len = usize::try_from(fixdate.position()).ok()?;
    same_or(headers, name, &fixdate.get_ref()[..len])
}

/// Whether `line` is an IMF-fixdate exactly as `httpdate` writes it, as
/// most origins send their dates: 29 bytes with the weekday's comma
/// fourth (no other form of HTTP-date has that shape), which `httpdate`
/// reads strictly, accepting only a date that it would write back byte
/// for byte (weekday and day of month included). Such a line is its own
/// normal form, kept without formatting it again.
fn is_imf_fixdate(line: &[u8]) -> bool {
    line.len() == 29
        && line[3] == b','
        && std::str::from_utf8(line).is_ok_and(|text| httpdate::parse_http_date(text).is_ok())
}

/// Parses an HTTP-date in any of its three forms (RFC 9110 §5.6.7),
/// forgiving letter case in names, which recipients may (the `httpdate`
/// crate is strict about it).
pub fn parse_http_date(value: &[u8]) -> Option<std::time::SystemTime> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(time) = httpdate::parse_http_date(text) {
        return Some(time);
    }
    // Title-case each alphabetic word, except the zone: "THU" -> "Thu".
    let mut fixed = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            fixed.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            fixed.push(c);
            word_start = true;
        }
    }
    let fixed = match fixed.strip_suffix("Gmt") {
        Some(head) => format!("{head}GMT"),
        None => fixed,
    };
    if let Ok(time) = httpdate::parse_http_date(&fixed) {
        return Some(time);
    }
    // A weekday that does not match the date is redundant, not an error.
    let word_end = fixed.find(|c: char| !c.is_ascii_alphabetic())?;
    let long = word_end > 3;
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    DAYS.iter().find_map(|day| {
        let day = if long { day } else { &day[..3] };
        httpdate::parse_http_date(&format!("{day}{}", &fixed[word_end..])).ok()
    })
}

#[cfg(test)]
#[path = "normalise_tests.rs"]
mod tests;
