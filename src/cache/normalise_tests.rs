use std::time::{Duration, SystemTime};

use super::*;
use crate::cache::policy::{Decision, Policy};
use crate::cache::testing::{headers, request};

fn view(pairs: &[(&str, &str)]) -> HeaderMap {
    response_view(StatusCode::OK, &headers(pairs)).1
}

fn cc(pairs: &[(&str, &str)]) -> Option<String> {
    view(pairs)
        .get("cache-control")
        .map(|v| v.to_str().expect("ascii").to_string())
}

#[test]
fn cache_control_is_parsed_as_a_list_with_quoted_strings() {
    let cases: &[(&str, Option<&str>)] = &[
        ("MaX-aGe=3600", Some("max-age=3600")),
        ("No-StOrE", Some("no-store")),
        ("foobar, max-age=3600", Some("max-age=3600")),
        (
            "extension=\"max-age=3600, public\", max-age=1",
            Some("max-age=1"),
        ),
        ("max-age=1, extension=\"a\\\"b,c\"", Some("max-age=1")),
        ("max-age=\"3600\"", Some("max-age=3600")),
        ("max-age=-3600", Some("max-age=0")),
        ("max-age='3600'", Some("max-age=0")),
        ("max-age=003600", Some("max-age=3600")),
        ("max-age=99999999999", Some("max-age=2147483648")),
        ("max-age", Some("max-age=0")),
        // Naming fields, they limit those fields only (`unshared_fields`).
        ("no-cache=\"set-cookie, x\", s-maxage=5", Some("s-maxage=5")),
        ("private=x, max-age=5", Some("max-age=5")),
        ("no-cache=\"\", s-maxage=5", Some("no-cache, s-maxage=5")),
        ("unknown", None),
    ];
    for (value, want) in cases {
        assert_eq!(cc(&[("cache-control", value)]).as_deref(), *want, "{value}");
    }
    let two_lines = cc(&[
        ("cache-control", "max-age=3600"),
        ("cache-control", "s-maxage=1"),
    ]);
    assert_eq!(two_lines.as_deref(), Some("max-age=3600, s-maxage=1"));
}

#[test]
fn age_is_the_first_number_of_the_first_line() {
    let age = |values: &[&str]| {
        let pairs: Vec<_> = values.iter().map(|v| ("age", *v)).collect();
        view(&pairs)
            .get("age")
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    assert_eq!(age(&["7200, 0"]).as_deref(), Some("7200"));
    assert_eq!(age(&["0, 7200"]).as_deref(), Some("0"));
    assert_eq!(age(&["7200", "0"]).as_deref(), Some("7200"));
    assert_eq!(age(&["2147483649"]).as_deref(), Some("2147483648"));
    for bad in ["abc", "-7200", "7200.0", ""] {
        assert_eq!(age(&[bad]), None, "{bad}");
    }
}

#[test]
fn expires_must_be_one_valid_http_date() {
    let expires = |value: &str| {
        view(&[("expires", value)])
            .get("expires")
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    let valid = [
        (
            "Thu, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ),
        (
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ),
        ("Thu Aug  8 02:01:18 2050", "Mon, 08 Aug 2050 02:01:18 GMT"),
        (
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ),
        (
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ),
        (
            "Thu, 18 Aug 2050 02:01:18 gMT",
            "Thu, 18 Aug 2050 02:01:18 GMT",
        ),
        (
            "Sun, 21 Nov 2286 04:46:39 GMT",
            "Sun, 21 Nov 2286 04:46:39 GMT",
        ),
    ];
    for (value, want) in valid {
        let got = expires(value).expect("kept");
        assert!(got.len() > 4, "{value} gave {got:?}");
        // The weekday is the parser's; the instant is what matters.
        assert_eq!(&got[4..], &want[4..], "{value}");
    }
    let invalid = [
        "0",
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 AEST",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
    ];
    for value in invalid {
        assert_eq!(expires(value).as_deref(), Some("0"), "{value}");
    }
    let two = view(&[
        ("expires", "Thu, 18 Aug 2050 02:01:18 GMT"),
        ("expires", "Thu, 18 Aug 2050 02:01:19 GMT"),
    ]);
    assert_eq!(
        two.get("expires").map(HeaderValue::as_bytes),
        Some(&b"0"[..])
    );
    let bad_date = view(&[("date", "foo"), ("last-modified", "bar")]);
    assert!(bad_date.get("date").is_none() && bad_date.get("last-modified").is_none());
}

#[test]
fn cdn_cache_control_is_not_read() {
    let both = |cdn: &str| cc(&[("cache-control", "no-store"), ("cdn-cache-control", cdn)]);
    assert_eq!(both("max-age=10000").as_deref(), Some("no-store"));
    let only = cc(&[("cdn-cache-control", "max-age=10000")]);
    assert_eq!(only, None);
}

#[test]
fn must_understand_depends_on_the_status() {
    let pairs = [("cache-control", "max-age=3600, no-store, must-understand")];
    let (_, ok) = response_view(StatusCode::OK, &headers(&pairs));
    assert_eq!(
        ok.get("cache-control").map(HeaderValue::as_bytes),
        Some(&b"max-age=3600, must-understand"[..])
    );
    let odd = StatusCode::from_u16(599).expect("status");
    let (_, unknown) = response_view(odd, &headers(&pairs));
    let value = unknown
        .get("cache-control")
        .map(|v| v.to_str().expect("ascii").to_string());
    assert!(value.is_some_and(|v| v.contains("no-store")));
}

#[test]
fn unknown_statuses_with_explicit_freshness_are_judged_as_200() {
    let status = |code: u16, pairs: &[(&str, &str)]| {
        response_view(StatusCode::from_u16(code).expect("status"), &headers(pairs))
            .0
            .as_u16()
    };
    assert_eq!(status(500, &[("cache-control", "max-age=60")]), 200);
    assert_eq!(status(599, &[("cache-control", "public")]), 200);
    assert_eq!(status(400, &[("expires", "0")]), 200);
    assert_eq!(
        status(503, &[("last-modified", "Thu, 18 Aug 2050 02:01:18 GMT")]),
        503
    );
    assert_eq!(
        status(206, &[("cache-control", "max-age=60")]),
        200,
        "a part"
    );
    assert_eq!(status(206, &[]), 200);
    assert_eq!(status(404, &[]), 404);
}

#[test]
fn the_view_holds_only_what_the_crate_reads() {
    let v = view(&[
        ("set-cookie", "a=b"),
        ("cache-control", "max-age=60"),
        ("x", "1"),
        ("etag", "\"e\""),
        ("vary", "accept"),
        ("pragma", "no-cache"),
    ]);
    assert!(v.get("set-cookie").is_none());
    assert!(v.get("x").is_none());
    for kept in ["cache-control", "etag", "vary", "pragma"] {
        assert!(v.get(kept).is_some(), "{kept}");
    }
}

#[test]
fn request_directives_are_normalised() {
    let value = request_cache_control(
        [&b"No-Cache, MAX-STALE"[..], b"foo=\"a,b\", min-fresh=5"].into_iter(),
    );
    assert_eq!(
        value
            .map(|v| v.to_str().expect("ascii").to_string())
            .as_deref(),
        Some("no-cache, max-stale, min-fresh=5")
    );
}

// Through the policy: what the crate alone would decide otherwise.

const URL: &str = "http://h/x";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn at(secs: u64) -> SystemTime {
    t0() + Duration::from_secs(secs)
}

fn plain() -> crate::http::request::RequestHead {
    request("GET", URL, &[])
}

fn policy(response: &[(&str, &str)]) -> Policy {
    policy_status(200, response)
}

const REVALIDATE: Decision = Decision::Revalidate {
    while_revalidate: false,
    by_request: false,
};

fn policy_status(code: u16, response: &[(&str, &str)]) -> Policy {
    let status = StatusCode::from_u16(code).expect("status");
    let uri = URL.parse().expect("uri");
    Policy::new(&uri, &plain(), status, &headers(response), t0())
}

#[test]
fn what_the_crate_alone_would_get_wrong() {
    // Directive names are case-insensitive (RFC 9111 §5.2).
    assert!(!policy(&[("cache-control", "No-StOrE")]).is_storable());
    let p = policy(&[
        ("cache-control", "max-age=10000, No-CaChE"),
        ("etag", "\"a\""),
    ]);
    assert_eq!(p.decide(&plain(), at(1)), REVALIDATE);
    // RFC 9111 lets a shared cache reuse a response that sets a cookie.
    let p = policy(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
    assert_eq!(p.decide(&plain(), at(1)), Decision::Fresh);
    // `Age: 7200, 0` is 7200 (its first value).
    let p = policy(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]);
    assert_eq!(p.decide(&plain(), at(1)), REVALIDATE);
    // A two-digit year is not an HTTP-date: the response is already expired.
    let p = policy(&[("expires", "Thu, 18 Aug 50 02:01:18 GMT")]);
    assert_eq!(p.decide(&plain(), at(1)), REVALIDATE);
    let p = policy(&[("expires", "Thursday, 18-Aug-50 02:01:18 GMT")]);
    assert_eq!(p.decide(&plain(), at(1)), Decision::Fresh);
}

#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    for code in [299, 400, 499, 500, 502, 503, 504, 599] {
        let p = policy_status(code, &[("cache-control", "max-age=100000")]);
        assert!(p.is_storable(), "{code}");
        assert_eq!(p.decide(&plain(), at(10)), Decision::Fresh, "{code}");
    }
    let lm = httpdate::fmt_http_date(t0() - Duration::from_secs(86_400));
    let date = httpdate::fmt_http_date(t0());
    for code in [201, 202, 403, 502, 503, 504, 599] {
        let p = policy_status(code, &[("last-modified", &lm), ("date", &date)]);
        assert!(!p.is_storable(), "{code}: no heuristic freshness");
    }
    let public = policy_status(
        599,
        &[
            ("last-modified", &lm),
            ("date", &date),
            ("cache-control", "public"),
        ],
    );
    assert!(public.is_storable());
    assert_eq!(public.decide(&plain(), at(10)), Decision::Fresh);
    let must = [("cache-control", "max-age=3600, no-store, must-understand")];
    assert!(policy_status(200, &must).is_storable());
    assert!(!policy_status(599, &must).is_storable());
}

#[test]
fn cdn_cache_control_neither_allows_nor_forbids() {
    let p = policy(&[
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=10000"),
    ]);
    assert!(
        !p.is_storable(),
        "what the origin keeps from caches stays kept"
    );
    let p = policy(&[
        ("cache-control", "max-age=3600"),
        ("cdn-cache-control", "private"),
    ]);
    assert_eq!(p.decide(&plain(), at(10)), Decision::Fresh);
}

#[test]
fn huge_lifetimes_do_not_overflow() {
    let p = policy(&[(
        "cache-control",
        "max-age=99999999999999999999, stale-while-revalidate=99999999999",
    )]);
    assert_eq!(p.decide(&plain(), at(10_000)), Decision::Fresh);
    assert!(p.ttl_seconds(at(1)) > 0);
    let far = policy(&[("expires", "Sun, 21 Nov 2286 04:46:39 GMT")]);
    assert_eq!(far.decide(&plain(), at(10)), Decision::Fresh);
}

#[test]
fn lines_already_normal_are_shared_and_others_rewritten() {
    let date = "Sun, 06 Nov 1994 08:49:37 GMT";
    let response = headers(&[
        ("cache-control", "public, max-age=60"),
        ("date", date),
        ("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ("expires", date),
    ]);
    let (_, view) = response_view(StatusCode::OK, &response);
    let same_bytes = |name: &str| {
        let (ours, theirs) = (view.get(name).expect(name), response.get(name).expect(name));
        ours.as_bytes().as_ptr() == theirs.as_bytes().as_ptr()
    };
    for name in ["cache-control", "date", "expires"] {
        assert!(same_bytes(name), "{name} is shared");
    }
    assert!(!same_bytes("last-modified"));
    assert_eq!(
        view.get("last-modified").map(HeaderValue::as_bytes),
        Some(date.as_bytes())
    );
    let odd = headers(&[("cache-control", "Max-Age=60,  Public, x-other")]);
    let (_, view) = response_view(StatusCode::OK, &odd);
    assert_eq!(
        view.get("cache-control").map(HeaderValue::as_bytes),
        Some(&b"max-age=60, public"[..])
    );
}

#[test]
fn a_date_kept_as_sent_is_the_one_httpdate_writes() {
    let lines = [
        "Thu, 18 Aug 2050 02:01:18 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Mon, 18 Aug 2050 02:01:18 GMT",
        "THU, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 aug 2050 02:01:18 GMT",
        "Thu, 31 Feb 2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02:01:61 GMT",
        "Thu, 18 Aug 1950 02:01:18 GMT",
        "Thu,  8 Aug 2050 02:01:18 GMT",
        "Thursday, 18-Aug-50 02:01:18 GMT",
        "Thu Aug 18 02:01:18 2050",
        " Thu, 18 Aug 2050 02:01:18 GM",
    ];
    let mut kept = 0;
    for line in lines {
        if is_imf_fixdate(line.as_bytes()) {
            kept += 1;
            let time = parse_http_date(line.as_bytes()).expect("a date");
            assert_eq!(httpdate::fmt_http_date(time), line);
        }
    }
    assert_eq!(kept, 2, "only the two canonical lines are kept as sent");
}
