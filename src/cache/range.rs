//! Range requests answered from a complete stored response (RFC 9110 §14):
//! one `bytes=` range gives 206 with `Content-Range`, an unsatisfiable one
//! 416. Several ranges are answered with the whole response (200), which
//! RFC 9110 §14.2 allows: a multipart body is rarely worth its cost.
//! `If-Range` (RFC 9110 §13.1.5) decides whether the range applies. Pure.

use http::HeaderMap;

use crate::cache::conditional::date_header;
use crate::http::request::RequestHead;

/// How to answer a request for a stored response of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole response (no Range, several ranges, or Range ignored).
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides the answer for `head` against a stored response.
pub fn select(head: &RequestHead, status: u16, stored: &HeaderMap, len: u64) -> RangeAnswer {
    // RFC 9110 §14.2: Range applies to GET only, and to a 200 here.
    if head.method != "GET" || status != 200 {
        return RangeAnswer::Full;
    }
    let mut values = head.header_values("range");
    let (Some(value), None) = (values.next(), values.next()) else {
        return RangeAnswer::Full;
    };
    if let Some(condition) = head.header("if-range")
        && !if_range_holds(condition, stored)
    {
        return RangeAnswer::Full;
    }
    parse(value, len)
}

/// Parses one `Range` value for a representation of `len` bytes.
/// Anything but a single well-formed `bytes=` range is answered in full.
pub fn parse(value: &[u8], len: u64) -> RangeAnswer {
    let value = value.trim_ascii();
    let Some((unit, set)) = value.split_first_chunk::<6>() else {
        return RangeAnswer::Full;
    };
    if !unit.eq_ignore_ascii_case(b"bytes=") || set.contains(&b',') {
        return RangeAnswer::Full;
    }
    let Some(dash) = set.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (set[..dash].trim_ascii(), set[dash + 1..].trim_ascii());
    let (first, last) = (number(first), number(last));
    match (first, last) {
        // RFC 9110 §14.1.2: "-N" is the last N bytes.
        (Some(None), Some(Some(suffix))) => {
            if suffix == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            if len == 0 {
                // Satisfiable (§14.1.1), and nothing to cut: all of it.
                return RangeAnswer::Full;
            }
            RangeAnswer::Partial {
                start: len.saturating_sub(suffix),
                end: len - 1,
            }
        }
        (Some(Some(start)), Some(last)) => {
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            let end = match last {
                None => len - 1,
                Some(last) if last < start => return RangeAnswer::Full,
                Some(last) => last.min(len - 1),
            };
            RangeAnswer::Partial { start, end }
        }
        _ => RangeAnswer::Full,
    }
}

/// The one byte range a 206 holds, from its `Content-Range`:
/// `bytes first-last/total` with the total known (RFC 9110 §14.4).
pub fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let mut values = headers.get_all(http::header::CONTENT_RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let value = value.to_str().ok()?.trim();
    let (unit, rest) = value.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let digits = |text: &str| {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    let (first, last, total) = (digits(first)?, digits(last)?, digits(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

/// `None`: malformed; `Some(None)`: empty; `Some(Some(n))`: a number.
fn number(digits: &[u8]) -> Option<Option<u64>> {
    if digits.is_empty() {
        return Some(None);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .map(Some)
        // Larger than any length: still a valid number.
        .or(Some(Some(u64::MAX)))
}

/// RFC 9110 §13.1.5: a strong entity-tag equal to the stored one, or a
/// date equal to a strong `Last-Modified`: for an intermediate cache, one
/// at least 60 seconds before the stored `Date` (§8.8.2.2), as one changed
/// twice within its second would not be.
fn if_range_holds(condition: &[u8], stored: &HeaderMap) -> bool {
    let condition = condition.trim_ascii();
    if condition.starts_with(b"\"") {
        let etag = stored
            .get(http::header::ETAG)
            .map(|v| v.as_bytes().trim_ascii());
        return etag == Some(condition);
    }
    if condition.starts_with(b"W/") {
        return false;
    }
    let since = crate::cache::normalise::parse_http_date(condition);
    let modified = date_header(stored, "last-modified");
    let strong = match (modified, date_header(stored, "date")) {
        (Some(modified), Some(date)) => date
            .duration_since(modified)
            .is_ok_and(|gap| gap >= std::time::Duration::from_secs(60)),
        _ => false,
    };
    strong && since.is_some() && since == modified
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{headers, request};

    #[test]
    fn single_ranges_are_parsed() {
        let cases: &[(&str, RangeAnswer)] = &[
            ("bytes=0-9", RangeAnswer::Partial { start: 0, end: 9 }),
            ("bytes=10-", RangeAnswer::Partial { start: 10, end: 99 }),
            ("bytes=90-200", RangeAnswer::Partial { start: 90, end: 99 }),
            ("bytes=-5", RangeAnswer::Partial { start: 95, end: 99 }),
            ("bytes=-500", RangeAnswer::Partial { start: 0, end: 99 }),
            ("BYTES= 3 - 4 ", RangeAnswer::Partial { start: 3, end: 4 }),
            ("bytes=99-99", RangeAnswer::Partial { start: 99, end: 99 }),
            ("bytes=100-", RangeAnswer::Unsatisfiable),
            ("bytes=-0", RangeAnswer::Unsatisfiable),
            ("bytes=5-2", RangeAnswer::Full),
            ("bytes=0-1,5-6", RangeAnswer::Full),
            ("items=0-1", RangeAnswer::Full),
            ("bytes=a-b", RangeAnswer::Full),
            ("bytes=-", RangeAnswer::Full),
            ("bytes", RangeAnswer::Full),
            ("bytes=99999999999999999999999-", RangeAnswer::Unsatisfiable),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value.as_bytes(), 100), *want, "{value}");
        }
        assert_eq!(parse(b"bytes=0-", 0), RangeAnswer::Unsatisfiable);
        assert_eq!(parse(b"bytes=-0", 0), RangeAnswer::Unsatisfiable);
        // A suffix of an empty representation is satisfiable: all of it.
        assert_eq!(parse(b"bytes=-5", 0), RangeAnswer::Full);
    }

    #[test]
    fn if_range_gates_the_range() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("date", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ]);
        let partial = RangeAnswer::Partial { start: 0, end: 0 };
        let ask = |cond: &str| {
            let head = request(
                "GET",
                "http://h/",
                &[("range", "bytes=0-0"), ("if-range", cond)],
            );
            select(&head, 200, &stored, 10)
        };
        assert_eq!(ask("\"v1\""), partial);
        assert_eq!(ask("\"v2\""), RangeAnswer::Full);
        assert_eq!(ask("W/\"v1\""), RangeAnswer::Full);
        assert_eq!(ask("Sun, 06 Nov 1994 08:49:37 GMT"), partial);
        assert_eq!(ask("Mon, 07 Nov 1994 08:49:37 GMT"), RangeAnswer::Full);
        // Modified within a minute of the response's Date (or no Date to
        // tell): a weak date, which If-Range does not take.
        for date in [Some("Sun, 06 Nov 1994 08:50:36 GMT"), None] {
            let mut weak = vec![("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")];
            weak.extend(date.map(|d| ("date", d)));
            let head = request(
                "GET",
                "http://h/",
                &[
                    ("range", "bytes=0-0"),
                    ("if-range", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ],
            );
            assert_eq!(
                select(&head, 200, &headers(&weak), 10),
                RangeAnswer::Full,
                "{date:?}"
            );
        }
    }

    #[test]
    fn content_ranges_of_stored_parts_are_read_when_whole() {
        let range = |value: &str| content_range(&headers(&[("content-range", value)]));
        assert_eq!(range("bytes 4-9/10"), Some((4, 9, 10)));
        assert_eq!(range("BYTES 0-0/1"), Some((0, 0, 1)));
        assert_eq!(range("bytes 4-9/*"), None, "unknown total");
        assert_eq!(range("bytes */10"), None);
        assert_eq!(range("bytes 9-4/10"), None);
        assert_eq!(range("bytes 4-10/10"), None);
        assert_eq!(range("items 0-1/2"), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn ranges_apply_to_get_on_a_200_only() {
        let stored = HeaderMap::new();
        let head = request("HEAD", "http://h/", &[("range", "bytes=0-0")]);
        assert_eq!(select(&head, 200, &stored, 10), RangeAnswer::Full);
        let head = request("GET", "http://h/", &[("range", "bytes=0-0")]);
        assert_eq!(select(&head, 404, &stored, 10), RangeAnswer::Full);
        assert_eq!(
            select(&head, 200, &stored, 10),
            RangeAnswer::Partial { start: 0, end: 0 }
        );
    }
}
