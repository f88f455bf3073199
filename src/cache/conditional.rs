//! Client preconditions evaluated against a stored response, so that a
//! fresh entry answers them itself (RFC 9110 §13.2.2, RFC 9111 §4.3.2):
//! `If-Match`, `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`.
//! `If-Range` belongs to `range`. Pure: no I/O.

use std::time::SystemTime;

use http::HeaderMap;

use crate::cache::normalise::parse_http_date;
use crate::http::request::RequestHead;

/// What the preconditions say about serving a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// None, or all hold: serve the response (or its range).
    Proceed,
    /// `If-None-Match` / `If-Modified-Since` says the client has it: 304.
    NotModified,
    /// `If-Match` / `If-Unmodified-Since` failed: 412.
    Failed,
}

/// Evaluates the request's preconditions in the order of RFC 9110 §13.2.2
/// against the stored response headers.
pub fn evaluate(head: &RequestHead, stored: &HeaderMap) -> Precondition {
    let etag = stored.get(http::header::ETAG).map(|v| v.as_bytes());
    // Parsed only when a date precondition needs it: most hits have none.
    let last_modified = || date_header(stored, "last-modified");
    let has = |name| head.header(name).is_some();
    if has("if-match") {
        // RFC 9110 §13.1.1: strong comparison.
        if !list_matches(head.header_values("if-match"), etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(since) = request_date(head, "if-unmodified-since")
        // Ignored when the response has no modification date (RFC 9110
        // §13.1.4).
        && last_modified().is_some_and(|modified| modified > since)
    {
        return Precondition::Failed;
    }
    let safe = head.method == "GET" || head.method == "HEAD";
    if has("if-none-match") {
        // RFC 9110 §13.1.2: weak comparison.
        if list_matches(head.header_values("if-none-match"), etag, false) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if safe && let Some(since) = request_date(head, "if-modified-since") {
        // RFC 9111 §4.3.2: Last-Modified, else the response's Date.
        let modified = last_modified().or_else(|| date_header(stored, "date"));
        if modified.is_some_and(|modified| modified <= since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// Whether an entity-tag list (`*` or tags) matches `etag`.
fn list_matches<'a>(
    lists: impl Iterator<Item = &'a [u8]>,
    etag: Option<&[u8]>,
    strong: bool,
) -> bool {
    let Some(etag) = etag.map(<[u8]>::trim_ascii) else {
        // `*` matches any current representation, and there is one.
        return lists.flat_map(split_tags).any(|tag| tag == b"*");
    };
    lists.flat_map(split_tags).any(|tag| {
        if tag == b"*" {
            return true;
        }
        if strong {
            !tag.starts_with(b"W/") && !etag.starts_with(b"W/") && tag == etag
        } else {
            opaque(tag) == opaque(etag)
        }
    })
}

/// Entity-tags of a list, split on commas outside quotes.
fn split_tags(list: &[u8]) -> Vec<&[u8]> {
    let mut tags = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in list.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                tags.push(list[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    tags.push(list[start..].trim_ascii());
    tags.retain(|tag| !tag.is_empty());
    tags
}

fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A request date header; an invalid date makes the header ignored
/// (RFC 9110 §13.1.3, §13.1.4).
fn request_date(head: &RequestHead, name: &str) -> Option<SystemTime> {
    parse_http_date(head.header(name)?)
}

/// A date header of the stored response.
pub fn date_header(headers: &HeaderMap, name: &str) -> Option<SystemTime> {
    parse_http_date(headers.get(name)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{headers, request};

    const URL: &str = "http://h/";
    const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const EARLIER: &str = "Sat, 05 Nov 1994 08:49:37 GMT";
    const LATER: &str = "Mon, 07 Nov 1994 08:49:37 GMT";

    fn stored() -> HeaderMap {
        headers(&[("etag", "\"v1\""), ("last-modified", MODIFIED)])
    }

    fn check(method: &str, sent: &[(&str, &str)], stored: &HeaderMap) -> Precondition {
        evaluate(&request(method, URL, sent), stored)
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let stored = stored();
        for sent in ["\"v1\"", "W/\"v1\"", "\"x\", \"v1\"", "*"] {
            let got = check("GET", &[("if-none-match", sent)], &stored);
            assert_eq!(got, Precondition::NotModified, "{sent}");
        }
        let got = check("GET", &[("if-none-match", "\"v2\"")], &stored);
        assert_eq!(got, Precondition::Proceed);
        let got = check("HEAD", &[("if-none-match", "\"v1\"")], &stored);
        assert_eq!(got, Precondition::NotModified);
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let got = check(
            "GET",
            &[("if-none-match", "\"other\""), ("if-modified-since", LATER)],
            &stored(),
        );
        assert_eq!(got, Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_uses_last_modified_then_date() {
        let stored = stored();
        let got = check("GET", &[("if-modified-since", MODIFIED)], &stored);
        assert_eq!(got, Precondition::NotModified);
        let got = check("GET", &[("if-modified-since", LATER)], &stored);
        assert_eq!(got, Precondition::NotModified);
        let got = check("GET", &[("if-modified-since", EARLIER)], &stored);
        assert_eq!(got, Precondition::Proceed);
        let rfc850 = "Sunday, 06-Nov-94 08:49:37 GMT";
        let got = check("GET", &[("if-modified-since", rfc850)], &stored);
        assert_eq!(got, Precondition::NotModified, "any HTTP-date form");
        let got = check("GET", &[("if-modified-since", "yesterday")], &stored);
        assert_eq!(got, Precondition::Proceed, "an invalid date is ignored");
        let dated = headers(&[("date", MODIFIED)]);
        let got = check("GET", &[("if-modified-since", LATER)], &dated);
        assert_eq!(got, Precondition::NotModified);
        let got = check("GET", &[("if-modified-since", LATER)], &HeaderMap::new());
        assert_eq!(got, Precondition::Proceed);
    }

    #[test]
    fn if_match_and_if_unmodified_since_fail_with_412() {
        let stored = stored();
        assert_eq!(
            check("GET", &[("if-match", "\"v1\"")], &stored),
            Precondition::Proceed
        );
        assert_eq!(
            check("GET", &[("if-match", "W/\"v1\"")], &stored),
            Precondition::Failed,
            "strong comparison"
        );
        assert_eq!(
            check("GET", &[("if-unmodified-since", EARLIER)], &stored),
            Precondition::Failed
        );
        assert_eq!(
            check("GET", &[("if-unmodified-since", LATER)], &stored),
            Precondition::Proceed
        );
        // No modification date: If-Unmodified-Since is ignored.
        let undated = headers(&[("etag", "\"v1\"")]);
        assert_eq!(
            check("GET", &[("if-unmodified-since", EARLIER)], &undated),
            Precondition::Proceed
        );
    }

    #[test]
    fn quoted_commas_do_not_split_tags() {
        let stored = headers(&[("etag", "\"a,b\"")]);
        let got = check("GET", &[("if-none-match", "\"x\", \"a,b\"")], &stored);
        assert_eq!(got, Precondition::NotModified);
    }
}
