use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, Uri};
use http_cache_semantics::{AfterResponse, BeforeRequest, CachePolicy};

use super::*;
use crate::cache::testing::{headers, request};

const URL: &str = "http://h/x";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn at(secs: u64) -> SystemTime {
    t0() + Duration::from_secs(secs)
}

fn uri() -> Uri {
    URL.parse().expect("uri")
}

fn policy(response: &[(&str, &str)]) -> Policy {
    policy_for(&[], response)
}

fn policy_for(req: &[(&str, &str)], response: &[(&str, &str)]) -> Policy {
    Policy::new(
        &uri(),
        &request("GET", URL, req),
        StatusCode::OK,
        &headers(response),
        t0(),
    )
}

fn plain() -> RequestHead {
    request("GET", URL, &[])
}

fn with_cc(cc: &str) -> RequestHead {
    request("GET", URL, &[("cache-control", cc)])
}

const REVALIDATE: Decision = Decision::Revalidate {
    while_revalidate: false,
    by_request: false,
};

#[test]
fn max_age_is_fresh_then_stale() {
    let p = policy(&[("cache-control", "max-age=60")]);
    assert!(p.is_storable());
    assert_eq!(p.decide(&plain(), at(59)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(60)), REVALIDATE);
    assert_eq!(p.ttl_seconds(at(10)), 50);
    assert_eq!(p.ttl_seconds(at(70)), -10);
}

#[test]
fn s_maxage_wins_over_max_age_and_expires_in_a_shared_cache() {
    let p = policy(&[
        ("cache-control", "max-age=1000, s-maxage=10"),
        ("expires", "Thu, 01 Jan 2037 00:00:00 GMT"),
    ]);
    assert_eq!(p.decide(&plain(), at(9)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(11)), REVALIDATE);
}

#[test]
fn expires_and_heuristics_give_freshness() {
    let date = httpdate::fmt_http_date(t0());
    let expires = httpdate::fmt_http_date(at(100));
    let p = policy(&[("date", &date), ("expires", &expires)]);
    assert_eq!(p.decide(&plain(), at(99)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(101)), REVALIDATE);
    // 10% of the time since Last-Modified (RFC 9111 §4.2.2).
    let modified = httpdate::fmt_http_date(t0() - Duration::from_secs(1000));
    let p = policy(&[("date", &date), ("last-modified", &modified)]);
    assert_eq!(p.decide(&plain(), at(99)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(101)), REVALIDATE);
    let p = policy(&[("date", &date), ("expires", "0")]);
    assert_eq!(
        p.decide(&plain(), t0()),
        REVALIDATE,
        "invalid Expires is in the past"
    );
}

#[test]
fn immutable_gets_a_default_lifetime() {
    let p = policy(&[("cache-control", "public, immutable")]);
    assert_eq!(p.decide(&plain(), at(3600)), Decision::Fresh);
    // But extends no explicit one: an `Expires` already past is stale.
    let date = httpdate::fmt_http_date(at(0));
    let past = httpdate::fmt_http_date(at(0) - Duration::from_secs(60));
    let p = policy(&[
        ("cache-control", "public, immutable"),
        ("date", &date),
        ("expires", &past),
    ]);
    assert_eq!(p.decide(&plain(), at(10)), REVALIDATE);
}

#[test]
fn proxy_revalidate_keeps_a_fresh_response_fresh() {
    // RFC 9111 §5.2.2.8: it only forbids serving the response stale.
    let p = policy(&[(
        "cache-control",
        "public, max-age=3600, must-revalidate, proxy-revalidate",
    )]);
    assert_eq!(p.decide(&plain(), at(60)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(3700)), REVALIDATE);
}

#[test]
fn what_a_shared_cache_must_not_store() {
    for cc in ["private", "no-store", "private, max-age=60"] {
        assert!(!policy(&[("cache-control", cc)]).is_storable(), "{cc}");
    }
    assert!(
        !policy_for(
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60")]
        )
        .is_storable()
    );
    // RFC 9111 §3.5: credentials need an explicit permission.
    let auth = [("authorization", "Basic dTpw")];
    assert!(!policy_for(&auth, &[("cache-control", "max-age=60")]).is_storable());
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        assert!(
            policy_for(&auth, &[("cache-control", cc)]).is_storable(),
            "{cc}"
        );
    }
    let p = policy_for(&auth, &[("cache-control", "public, max-age=60")]);
    assert_eq!(
        p.request_headers()
            .get("authorization")
            .map(|v| v.as_bytes()),
        Some(&b"present"[..]),
        "credentials never kept"
    );
}

#[test]
fn no_cache_responses_are_stored_but_always_revalidated() {
    let p = policy(&[("cache-control", "no-cache, max-age=60"), ("etag", "\"a\"")]);
    assert!(p.is_storable());
    assert_eq!(p.decide(&plain(), t0()), REVALIDATE);
    assert_eq!(p.decide(&with_cc("max-stale"), at(1)), REVALIDATE);
}

#[test]
fn no_cache_or_private_naming_fields_limit_only_those_fields() {
    // RFC 9111 §5.2.2.4, §5.2.2.7: the fields are not stored; the rest is
    // stored and reused as its lifetime says.
    for cc in [
        "max-age=60, no-cache=\"Set-Cookie\"",
        "max-age=60, private=\"Set-Cookie, X-User\"",
    ] {
        let p = policy(&[("cache-control", cc)]);
        assert!(p.is_storable(), "{cc}");
        assert_eq!(p.decide(&plain(), at(59)), Decision::Fresh, "{cc}");
    }
    // With an empty list they limit the whole response.
    assert!(!policy(&[("cache-control", "max-age=60, private=\"\"")]).is_storable());
    let p = policy(&[
        ("cache-control", "max-age=60, no-cache=\"\""),
        ("etag", "\"a\""),
    ]);
    assert_eq!(p.decide(&plain(), t0()), REVALIDATE);
}

#[test]
fn request_directives_can_ask_for_the_origin() {
    let p = policy(&[("cache-control", "max-age=100")]);
    let by_request = Decision::Revalidate {
        while_revalidate: false,
        by_request: true,
    };
    assert_eq!(p.decide(&with_cc("no-cache"), at(1)), by_request);
    assert_eq!(
        p.decide(&request("GET", URL, &[("pragma", "no-cache")]), at(1)),
        by_request
    );
    // With Cache-Control present, Pragma is ignored (RFC 9111 §5.4).
    let both = [("cache-control", "max-age=100"), ("pragma", "no-cache")];
    assert_eq!(
        p.decide(&request("GET", URL, &both), at(1)),
        Decision::Fresh
    );
    assert_eq!(p.decide(&with_cc("max-age=5"), at(10)), by_request);
    assert_eq!(p.decide(&with_cc("max-age=50"), at(10)), Decision::Fresh);
    assert_eq!(p.decide(&with_cc("min-fresh=95"), at(10)), by_request);
    assert_eq!(p.decide(&with_cc("min-fresh=50"), at(10)), Decision::Fresh);
}

#[test]
fn max_stale_serves_stale_unless_a_directive_forbids_it() {
    let p = policy(&[("cache-control", "max-age=10")]);
    assert_eq!(
        p.decide(&with_cc("max-stale"), at(1000)),
        Decision::StaleAllowed
    );
    assert_eq!(
        p.decide(&with_cc("max-stale=100"), at(50)),
        Decision::StaleAllowed
    );
    assert_eq!(p.decide(&with_cc("max-stale=5"), at(50)), REVALIDATE);
    for cc in [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
    ] {
        let p = policy(&[("cache-control", cc)]);
        assert_eq!(p.decide(&with_cc("max-stale"), at(50)), REVALIDATE, "{cc}");
    }
}

#[test]
fn stale_while_revalidate_has_a_window() {
    let p = policy(&[("cache-control", "max-age=10, stale-while-revalidate=20")]);
    let swr = Decision::Revalidate {
        while_revalidate: true,
        by_request: false,
    };
    assert_eq!(p.decide(&plain(), at(15)), swr);
    assert_eq!(p.decide(&plain(), at(31)), REVALIDATE);
    assert_eq!(p.decide(&with_cc("no-cache"), at(15)), REVALIDATE);
    let p = policy(&[(
        "cache-control",
        "max-age=10, stale-while-revalidate=20, must-revalidate",
    )]);
    assert_eq!(p.decide(&plain(), at(15)), REVALIDATE);
}

#[test]
fn stale_if_error_has_a_window_from_response_or_request() {
    let status = OriginFailure::ErrorStatus;
    let p = policy(&[("cache-control", "max-age=10, stale-if-error=20")]);
    assert!(p.may_serve_on_error(&plain(), status, at(25)));
    assert!(!p.may_serve_on_error(&plain(), status, at(31)));
    assert!(p.may_serve_on_error(&with_cc("stale-if-error=100"), status, at(50)));
    let p = policy(&[("cache-control", "max-age=10")]);
    assert!(!p.may_serve_on_error(&plain(), status, at(11)));
    assert!(p.may_serve_on_error(&with_cc("stale-if-error=5"), status, at(12)));
    let p = policy(&[(
        "cache-control",
        "max-age=10, stale-if-error=20, must-revalidate",
    )]);
    assert!(!p.may_serve_on_error(&plain(), status, at(12)));
}

#[test]
fn an_unreachable_origin_lets_stale_be_served_unless_forbidden() {
    let gone = OriginFailure::Unreachable;
    let p = policy(&[("cache-control", "max-age=10")]);
    assert!(p.may_serve_on_error(&plain(), gone, at(3600)));
    let week = DISCONNECTED_STALE.as_secs();
    assert!(!p.may_serve_on_error(&plain(), gone, at(10 + week)));
    assert!(!p.may_serve_on_error(&with_cc("no-cache"), gone, at(20)));
    for cc in [
        "max-age=2, must-revalidate",
        "max-age=2, proxy-revalidate",
        "max-age=2, no-cache",
        "max-age=2, s-maxage=2",
    ] {
        let p = policy(&[("cache-control", cc)]);
        assert!(!p.may_serve_on_error(&plain(), gone, at(5)), "{cc}");
    }
}

#[test]
fn age_counts_the_origin_age_and_time_in_cache() {
    let p = policy(&[("cache-control", "max-age=60"), ("age", "30")]);
    assert_eq!(p.age(at(5)), Duration::from_secs(35));
    assert_eq!(p.decide(&plain(), at(29)), Decision::Fresh);
    assert_eq!(p.decide(&plain(), at(31)), REVALIDATE);
}

/// The shortcut for requests without directives gives the crate's answer,
/// and the crate's age.
#[test]
fn the_fast_path_agrees_with_the_crate() {
    let date = httpdate::fmt_http_date(t0());
    let modified = httpdate::fmt_http_date(t0() - Duration::from_secs(5000));
    let responses: &[&[(&str, &str)]] = &[
        &[("cache-control", "max-age=60")],
        &[("cache-control", "max-age=60"), ("age", "59")],
        &[("cache-control", "s-maxage=30, max-age=90")],
        &[("date", &date), ("last-modified", &modified)],
        &[("cache-control", "no-cache")],
        &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        &[("cache-control", "MAX-AGE=60"), ("age", "30, 0")],
        &[("expires", "Thu Aug  8 02:01:18 2050")],
        &[],
    ];
    for response in responses {
        let p = policy(response);
        let req = http::Request::get(URL)
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let res = {
            // The crate is given the normalised view, as `Policy` gives it.
            let (status, view) =
                crate::cache::normalise::response_view(StatusCode::OK, &headers(response));
            let mut res = http::Response::new(());
            *res.status_mut() = status;
            *res.headers_mut() = view;
            res.into_parts().0
        };
        let crate_policy = CachePolicy::new_options(&req, &res, t0(), Default::default());
        for secs in [0, 1, 29, 30, 31, 59, 60, 61, 499, 500, 501, 10_000] {
            let crate_fresh = matches!(
                crate_policy.before_request(&req, at(secs)),
                BeforeRequest::Fresh(_)
            );
            let ours = p.decide(&plain(), at(secs)) == Decision::Fresh;
            assert_eq!(ours, crate_fresh, "{response:?} at {secs}s");
            let age = crate_policy.age(at(secs));
            assert_eq!(p.age(at(secs)), age, "{response:?}: age at {secs}s");
        }
    }
}

#[test]
fn validators_come_from_the_stored_response() {
    let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
    let p = policy(&[
        ("cache-control", "max-age=0"),
        ("etag", "\"abc\""),
        ("last-modified", modified),
    ]);
    let validators = p.validators();
    let get = |name: &str| {
        validators
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().expect("ascii"))
    };
    assert_eq!(get("if-none-match"), Some("\"abc\""));
    assert_eq!(get("if-modified-since"), Some(modified));
    assert!(
        policy(&[("cache-control", "max-age=0")])
            .validators()
            .is_empty()
    );
}

/// The validators are those the crate's revalidation request carries.
#[test]
fn validators_agree_with_the_crate() {
    let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
    let responses: &[&[(&str, &str)]] = &[
        &[("cache-control", "max-age=0"), ("etag", "\"abc\"")],
        &[("cache-control", "max-age=0"), ("etag", "W/\"abc\"")],
        &[("cache-control", "max-age=0"), ("etag", "\"caf\u{e9}\"")],
        &[("cache-control", "max-age=0"), ("last-modified", modified)],
        &[
            ("cache-control", "max-age=0"),
            ("last-modified", "not a date"),
        ],
        &[("etag", "\"abc\""), ("last-modified", modified)],
        &[
            ("cache-control", "no-cache"),
            ("etag", "\"a\""),
            ("etag", "\"b\""),
        ],
        &[("cache-control", "no-store"), ("etag", "\"abc\"")],
        &[("cache-control", "private"), ("last-modified", modified)],
        &[("cache-control", "max-age=0")],
    ];
    for response in responses {
        let p = policy(response);
        let mut request = http::Request::new(());
        *request.uri_mut() = uri();
        request
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let (request, _) = request.into_parts();
        let expected: Vec<_> = match p.crate_policy().before_request(&request, at(1)) {
            BeforeRequest::Stale { request, .. } => [IF_NONE_MATCH, IF_MODIFIED_SINCE]
                .into_iter()
                .filter_map(|name| {
                    request
                        .headers
                        .get(&name)
                        .map(|v| (name.clone(), v.clone()))
                })
                .collect(),
            BeforeRequest::Fresh(_) => Vec::new(),
        };
        assert_eq!(p.validators(), expected, "{response:?}");
    }
}

/// A variant chosen by its `Vary` headers is revalidated with its own
/// validators, even when it varies on a header the crate is given (where
/// the crate, matching a made-up request, would send none).
#[test]
fn a_variant_is_revalidated_with_its_validators_whatever_it_varies_on() {
    for (varies_on, request) in [
        ("authorization", &[("authorization", "Bearer t")][..]),
        ("cache-control", &[][..]),
        ("pragma", &[("pragma", "no-cache")][..]),
    ] {
        let p = policy_for(
            request,
            &[
                ("cache-control", "public, max-age=0"),
                ("etag", "\"v1\""),
                ("vary", varies_on),
            ],
        );
        let validators = p.validators();
        assert_eq!(validators.len(), 1, "Vary: {varies_on}");
        assert_eq!(validators[0].0, IF_NONE_MATCH);
        assert_eq!(validators[0].1, "\"v1\"");
    }
}

/// Whether a 304 selects the stored entry is what the crate's
/// `after_response` says, for every pairing of validators; a 304 with none
/// answers the validators sent for the entry, and selects it.
#[test]
fn a_304_selects_the_entry_as_the_crate_says() {
    let (monday, tuesday) = (
        "Mon, 07 Nov 1994 08:49:37 GMT",
        "Tue, 08 Nov 1994 08:49:37 GMT",
    );
    let validators: &[&[(&str, &str)]] = &[
        &[],
        &[("etag", "\"v1\"")],
        &[("etag", "W/\"v1\"")],
        &[("etag", " \"v1\" ")],
        &[("etag", "\"v2\"")],
        &[("etag", "W/\"v2\"")],
        &[("last-modified", monday)],
        &[("last-modified", tuesday)],
        &[("etag", "\"v1\""), ("last-modified", monday)],
        &[("etag", "W/\"v1\""), ("last-modified", tuesday)],
        &[("etag", "\"v2\""), ("last-modified", monday)],
    ];
    for stored in validators {
        let stored = headers(&[&[("cache-control", "max-age=10")][..], stored].concat());
        let p = Policy::new(&uri(), &plain(), StatusCode::OK, &stored, t0());
        for answer in validators {
            let answer = not_modified(answer);
            let ours = p
                .refresh(&plain(), StatusCode::OK, &stored, &answer, at(20))
                .is_some();
            if answer.headers.is_empty() {
                assert!(ours, "a bare 304 for {stored:?}");
                continue;
            }
            let (status, view) =
                crate::cache::normalise::response_view(StatusCode::NOT_MODIFIED, &answer.headers);
            let mut answer_view = http::Response::new(());
            *answer_view.status_mut() = status;
            *answer_view.headers_mut() = view;
            let answer_view = answer_view.into_parts().0;
            let crate_says = matches!(
                p.crate_policy()
                    .after_response(&p.lookup_request(&plain()), &answer_view, at(20)),
                AfterResponse::NotModified(..)
            );
            assert_eq!(ours, crate_says, "{stored:?} answered by {answer:?}");
        }
    }
}

fn not_modified(pairs: &[(&str, &str)]) -> http::response::Parts {
    let mut res = http::Response::new(());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    *res.headers_mut() = headers(pairs);
    res.into_parts().0
}

#[test]
fn a_matching_304_updates_the_stored_headers() {
    let stored = headers(&[
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("link", "</a>; rel=preload"),
        ("link", "</b>; rel=preload"),
        ("content-length", "5"),
        ("content-type", "text/plain"),
        ("age", "3"),
    ]);
    let p = Policy::new(&uri(), &plain(), StatusCode::OK, &stored, t0());
    let answer = not_modified(&[
        ("cache-control", "max-age=100"),
        ("etag", "\"v1\""),
        ("x-new", "1"),
        ("content-length", "0"),
    ]);
    let (merged, refreshed) = p
        .refresh(&plain(), StatusCode::OK, &stored, &answer, at(50))
        .expect("304 selects the entry");
    assert_eq!(
        merged.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"max-age=100"[..])
    );
    assert_eq!(
        merged.get_all("link").iter().count(),
        2,
        "repeated lines kept"
    );
    assert_eq!(merged.get("x-new").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(
        merged.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..]),
        "body headers kept"
    );
    assert!(merged.get("age").is_none(), "the 304 is the new age source");
    assert_eq!(refreshed.decide(&plain(), at(140)), Decision::Fresh);
    assert_eq!(refreshed.decide(&plain(), at(151)), REVALIDATE);
}

#[test]
fn other_answers_do_not_update_the_entry() {
    let stored = headers(&[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
    let p = Policy::new(&uri(), &plain(), StatusCode::OK, &stored, t0());
    let other_tag = not_modified(&[("etag", "\"v2\"")]);
    assert!(
        p.refresh(&plain(), StatusCode::OK, &stored, &other_tag, at(20))
            .is_none()
    );
    let mut full = http::Response::new(());
    *full.headers_mut() = HeaderMap::new();
    let full = full.into_parts().0;
    assert!(
        p.refresh(&plain(), StatusCode::OK, &stored, &full, at(20))
            .is_none()
    );
}

#[test]
fn a_304_without_validators_selects_the_entry_it_answers() {
    let stored = headers(&[("cache-control", "max-age=10"), ("etag", "\"v1\"")]);
    let p = Policy::new(&uri(), &plain(), StatusCode::OK, &stored, t0());
    let bare = not_modified(&[("x-new", "1")]);
    let (merged, _) = p
        .refresh(&plain(), StatusCode::OK, &stored, &bare, at(20))
        .expect("the answer to this entry's validators");
    assert_eq!(
        merged.get("etag").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..])
    );
    assert_eq!(merged.get("x-new").map(|v| v.as_bytes()), Some(&b"1"[..]));
}

#[test]
fn a_304_without_date_is_dated_on_arrival() {
    let an_hour_ago = httpdate::fmt_http_date(t0() - Duration::from_secs(3600));
    let stored = headers(&[
        ("cache-control", "max-age=600"),
        ("etag", "\"v1\""),
        ("date", &an_hour_ago),
    ]);
    let p = Policy::new(&uri(), &plain(), StatusCode::OK, &stored, t0());
    let answer = not_modified(&[("etag", "\"v1\"")]);
    let (merged, refreshed) = p
        .refresh(&plain(), StatusCode::OK, &stored, &answer, at(10))
        .expect("304 selects the entry");
    let date = merged.get("date").and_then(|v| v.to_str().ok());
    assert_eq!(date, Some(httpdate::fmt_http_date(at(10)).as_str()));
    assert_eq!(refreshed.age(at(10)), Duration::ZERO);
    assert_eq!(refreshed.decide(&plain(), at(600)), Decision::Fresh);
}

#[test]
fn directives_are_found_case_insensitively_with_values() {
    let values = [&b"public, Max-Age=\"60\""[..], b"no-cache"];
    assert_eq!(
        directive(values.iter().copied(), "max-age"),
        Some(Some(&b"60"[..]))
    );
    assert_eq!(directive(values.iter().copied(), "no-cache"), Some(None));
    assert_eq!(directive(values.iter().copied(), "private"), None);
    assert_eq!(
        parse_seconds(b"99999999999999999999999"),
        Some(Duration::from_secs(u64::from(u32::MAX)))
    );
    assert_eq!(parse_seconds(b"-1"), None);
}

#[test]
fn a_response_dated_before_it_arrived_is_that_old_on_arrival() {
    let dated = |secs_before: u64| httpdate::fmt_http_date(t0() - Duration::from_secs(secs_before));
    // An hour old by its Date, no Age: stale on arrival (RFC 9111 §4.2.3).
    let hour = dated(3600);
    let p = policy(&[("cache-control", "max-age=60"), ("date", &hour)]);
    assert_eq!(p.age(t0()), Duration::from_secs(3600));
    assert_eq!(p.decide(&plain(), t0()), REVALIDATE);
    // Expires an hour ago by both clocks: stale too, not fresh for the
    // 100 s between Date and Expires.
    let expired = dated(3500);
    let p = policy(&[("date", &hour), ("expires", &expired)]);
    assert!(!p.is_fresh(t0()));
    // An Age above the apparent age wins.
    let p = policy(&[
        ("cache-control", "max-age=600"),
        ("date", &dated(10)),
        ("age", "100"),
    ]);
    assert_eq!(p.age(t0()), Duration::from_secs(100));
    assert_eq!(p.ttl_seconds(t0()), 500);
    // A Date ahead of this clock changes nothing.
    let ahead = httpdate::fmt_http_date(t0() + Duration::from_secs(300));
    let p = policy(&[("cache-control", "max-age=60"), ("date", &ahead)]);
    assert_eq!(p.age(t0()), Duration::ZERO);
    assert_eq!(p.decide(&plain(), at(59)), Decision::Fresh);
}

#[test]
fn heuristic_freshness_is_capped_at_a_day() {
    let days_ago = |days: u64| httpdate::fmt_http_date(t0() - Duration::from_secs(days * 86_400));
    let date = httpdate::fmt_http_date(t0());
    let cap = i64::try_from(HEURISTIC_MAX.as_secs()).expect("fits");
    // Untouched for 1,000 days: a tenth would be 100 days.
    let old = days_ago(1000);
    for extra in [None, Some(("cache-control", "public"))] {
        let mut response = vec![("date", date.as_str()), ("last-modified", old.as_str())];
        response.extend(extra);
        let p = policy(&response);
        assert!(p.is_storable(), "{response:?}");
        assert_eq!(p.ttl_seconds(t0()), cap, "{response:?}");
        assert_eq!(p.decide(&plain(), at(86_399)), Decision::Fresh);
        assert_eq!(p.decide(&plain(), at(86_400)), REVALIDATE);
    }
    // A tenth of 5 days is under the cap: as the crate says.
    let recent = days_ago(5);
    let p = policy(&[("date", &date), ("last-modified", &recent)]);
    assert_eq!(p.ttl_seconds(t0()), 5 * 8_640);
    // An explicit lifetime is the origin's to give, however long.
    let p = policy(&[
        ("cache-control", "max-age=864000"),
        ("date", &date),
        ("last-modified", &old),
    ]);
    assert_eq!(p.ttl_seconds(t0()), 864_000);
    // Not storable stays not storable.
    let p = Policy::new(
        &uri(),
        &plain(),
        StatusCode::FOUND,
        &headers(&[("date", &date), ("last-modified", &old)]),
        t0(),
    );
    assert!(!p.is_storable());
}
