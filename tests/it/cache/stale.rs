//! Stale entries: revalidated with 304 (the stored headers updated) or
//! replaced, served stale when `stale-if-error`, an unreachable origin or
//! `stale-while-revalidate` allows, and revalidated in the background
//! without holding up any request.

use super::{LIMIT, cache_status, get, reply_with, revalidating_origin};
use crate::support::{Origin, Proxy, Reply, metric, scrape_metrics, wait_until};

#[test]
fn a_stale_entry_revalidated_with_304_takes_the_new_headers() {
    let origin = revalidating_origin(
        "kept body",
        &[("Cache-Control", "max-age=0"), ("X-Version", "1")],
        &[("Cache-Control", "max-age=3600"), ("X-Version", "2")],
    );
    let proxy = Proxy::start();
    let url = origin.url("/stale");
    let first = get(proxy.addr, &url, &[]);
    assert_eq!(first.header("x-version"), Some("1"), "{first:?}");
    let revalidated = get(proxy.addr, &url, &[]);
    assert_eq!(revalidated.status, 200, "{revalidated:?}");
    assert_eq!(revalidated.text(), "kept body");
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "{revalidated:?}"
    );
    let status = cache_status(&revalidated);
    assert!(
        status.starts_with("fetchproxy; fwd=stale; fwd-status=304; stored"),
        "{status}"
    );
    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("if-none-match"), Some("\"v1\""));
    // Fresh now, with the headers the 304 brought.
    let hit = get(proxy.addr, &url, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.header("cache-control"), Some("max-age=3600"));
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn a_stale_entry_replaced_by_a_new_response_is_stored_anew() {
    let origin = Origin::start(|request| {
        let version = if request.header("if-none-match").is_some() {
            "new"
        } else {
            "old"
        };
        let cache_control = if version == "new" {
            "max-age=3600"
        } else {
            "max-age=0"
        };
        reply_with(
            version,
            &[("Cache-Control", cache_control), ("ETag", "\"x\"")],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/replaced");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "old");
    let replaced = get(proxy.addr, &url, &[]);
    assert_eq!(replaced.text(), "new");
    assert!(
        cache_status(&replaced).contains("fwd=stale; fwd-status=200; stored"),
        "{replaced:?}"
    );
    let hit = get(proxy.addr, &url, &[]);
    assert_eq!(hit.text(), "new");
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn stale_if_error_lets_the_stale_entry_stand_in_for_a_failing_origin() {
    let origin = Origin::start(|request| {
        if request.header("if-none-match").is_some() {
            return Reply::status(503);
        }
        reply_with(
            "still good",
            &[
                ("Cache-Control", "max-age=0, stale-if-error=600"),
                ("ETag", "\"e\""),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/flaky");
    get(proxy.addr, &url, &[]);
    let stale = get(proxy.addr, &url, &[]);
    assert_eq!(stale.status, 200, "{stale:?}");
    assert_eq!(stale.text(), "still good");
    let status = cache_status(&stale);
    assert!(
        status.starts_with("fetchproxy; fwd=stale; fwd-status=503; ttl=")
            && status.ends_with("detail=stale-if-error"),
        "{status}"
    );
    assert_eq!(origin.requests().len(), 2);
}

/// Stops `origin` and waits until its port refuses connections.
fn gone(origin: Origin) {
    let addr = origin.addr;
    drop(origin);
    let closed = wait_until(LIMIT, || std::net::TcpStream::connect(addr).is_err());
    assert!(closed, "{addr} still accepts");
}

#[test]
fn a_stale_entry_stands_in_for_an_origin_that_cannot_be_reached() {
    // `Connection: close`: no pooled connection outlives the origin.
    let origin = Origin::start(|_| {
        reply_with(
            "remembered",
            &[
                ("Cache-Control", "max-age=0"),
                ("ETag", "\"r\""),
                ("Connection", "close"),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/gone");
    get(proxy.addr, &url, &[]);
    gone(origin);
    let stale = get(proxy.addr, &url, &[]);
    assert_eq!((stale.status, stale.text().as_str()), (200, "remembered"));
    let status = cache_status(&stale);
    assert!(status.ends_with("detail=origin-unreachable"), "{status}");
    // Unless the response forbids it (RFC 9111 §4.2.4).
    let strict = Origin::start(|_| {
        reply_with(
            "strict",
            &[
                ("Cache-Control", "max-age=0, must-revalidate"),
                ("ETag", "\"s\""),
                ("Connection", "close"),
            ],
        )
    });
    let url = strict.url("/strict");
    get(proxy.addr, &url, &[]);
    gone(strict);
    let refused = get(proxy.addr, &url, &[]);
    assert_eq!(refused.status, 502, "{refused:?}");
}

/// An origin that answers, but badly (here, no HTTP at all), is no
/// disconnected one: without `stale-if-error` the client gets the 502, not
/// a stale copy for up to a week.
#[test]
fn a_malformed_answer_is_no_unreachable_origin() {
    let origin = Origin::start(|request| {
        if request.header("if-none-match").is_some() {
            return Reply::Raw(b"garbage\r\n\r\n".to_vec());
        }
        reply_with(
            "kept",
            &[
                ("Cache-Control", "max-age=0"),
                ("ETag", "\"k\""),
                ("Connection", "close"),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/garbled");
    get(proxy.addr, &url, &[]);
    let failed = get(proxy.addr, &url, &[]);
    assert_eq!(failed.status, 502, "{failed:?}");
    // With `stale-if-error`, as for a 502 from the origin, it stands in.
    let lenient = Origin::start(|request| {
        if request.header("if-none-match").is_some() {
            return Reply::Raw(b"garbage\r\n\r\n".to_vec());
        }
        reply_with(
            "kept",
            &[
                ("Cache-Control", "max-age=0, stale-if-error=600"),
                ("ETag", "\"k\""),
                ("Connection", "close"),
            ],
        )
    });
    let url = lenient.url("/garbled");
    get(proxy.addr, &url, &[]);
    let stood_in = get(proxy.addr, &url, &[]);
    assert_eq!((stood_in.status, stood_in.text().as_str()), (200, "kept"));
}

#[test]
fn without_stale_if_error_the_origin_error_goes_through() {
    let origin = Origin::start(|request| {
        if request.header("if-none-match").is_some() {
            return Reply::status(503);
        }
        reply_with("old", &[("Cache-Control", "max-age=0"), ("ETag", "\"e\"")])
    });
    let proxy = Proxy::start();
    let url = origin.url("/down");
    get(proxy.addr, &url, &[]);
    let failed = get(proxy.addr, &url, &[]);
    assert_eq!(failed.status, 503, "{failed:?}");
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_after() {
    let origin = Origin::start({
        let served = std::sync::atomic::AtomicUsize::new(0);
        move |_| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            reply_with(
                &format!("version {n}"),
                &[("Cache-Control", "max-age=0, stale-while-revalidate=600")],
            )
        }
    });
    let proxy = Proxy::start();
    let url = origin.url("/swr");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "version 0");
    let stale = get(proxy.addr, &url, &[]);
    assert_eq!(stale.text(), "version 0", "answered from the stale entry");
    let status = cache_status(&stale);
    let ttl: i64 = status
        .strip_prefix("fetchproxy; hit; ttl=")
        .and_then(|rest| rest.split(';').next())
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    assert!(ttl <= 0, "stale: {status}");
    assert!(
        status.ends_with("detail=stale-while-revalidate"),
        "{status}"
    );
    // The revalidation after that answer stores the next version.
    let refreshed = wait_until(LIMIT, || get(proxy.addr, &url, &[]).text() != "version 0");
    assert!(refreshed, "{:?}", origin.requests());
}

#[test]
fn a_revalidation_in_the_background_holds_up_no_request() {
    let gate = crate::support::Gate::new();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, served) = (gate.clone(), served.clone());
        move |_| {
            // The first answer at once; the revalidation waits for the gate.
            let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n > 0 {
                gate.wait(LIMIT);
            }
            reply_with(
                &format!("version {n}"),
                &[("Cache-Control", "max-age=0, stale-while-revalidate=600")],
            )
        }
    });
    let proxy = Proxy::start();
    let url = origin.url("/background");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "version 0");
    // The fill is stored just after its last byte went out: under load a
    // request could come before and fetch on its own, held at the gate.
    let stored = wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(&page, "fetchproxy_cache_stored_total") == Some(1.0)
    });
    assert!(stored, "the first answer is stored");
    // Two requests on one connection while the origin holds the
    // revalidation: both answered from the stale entry.
    let mut conn = std::net::TcpStream::connect(proxy.addr).expect("connect");
    let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n");
    for _ in 0..2 {
        std::io::Write::write_all(&mut conn, request.as_bytes()).expect("send");
        let response = crate::support::raw::read_one(&mut conn, false, LIMIT).expect("an answer");
        assert_eq!(response.text(), "version 0", "{}", response.head);
    }
    let asked = wait_until(LIMIT, || origin.requests().len() == 2);
    assert!(asked, "the revalidation reached the origin");
    gate.open();
    let refreshed = wait_until(LIMIT, || get(proxy.addr, &url, &[]).text() != "version 0");
    assert!(refreshed, "{:?}", origin.requests());
}

#[test]
fn an_entry_superseded_by_a_response_not_kept_is_not_served_again() {
    // The origin stops sending caching fields: its new answers are not
    // stored, and the stale entry they replace must not keep answering.
    let served = std::sync::atomic::AtomicUsize::new(0);
    let origin = Origin::start(move |_| {
        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == 0 {
            reply_with(
                "version 0",
                &[("Cache-Control", "max-age=0, stale-while-revalidate=600")],
            )
        } else {
            reply_with(&format!("version {n}"), &[("Content-Type", "text/plain")])
        }
    });
    let proxy = Proxy::start();
    let url = origin.url("/superseded");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "version 0");
    // Served stale while the revalidation runs in the background; once it
    // is back, the old entry is gone.
    let replaced = wait_until(LIMIT, || get(proxy.addr, &url, &[]).text() != "version 0");
    assert!(replaced, "{:?}", origin.requests());
    for _ in 0..3 {
        let reply = get(proxy.addr, &url, &[]);
        assert_ne!(reply.text(), "version 0", "{}", cache_status(&reply));
        assert!(cache_status(&reply).contains("fwd="), "{reply:?}");
    }
}

#[test]
fn an_entry_superseded_by_a_response_too_large_to_keep_is_not_served_again() {
    // v1 is stored; its replacement comes chunked (no length), over the
    // object limit, so storing it is given up halfway; then the origin
    // fails. v1 is out of date: the failure must go through, not v1.
    let served = std::sync::atomic::AtomicUsize::new(0);
    let origin = Origin::start(move |_| {
        let caching = "max-age=0, stale-if-error=600";
        match served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => reply_with(
                "small v1",
                &[("Cache-Control", caching), ("ETag", "\"v1\"")],
            ),
            1 => Reply::Chunked {
                status: 200,
                headers: vec![
                    ("Cache-Control".into(), caching.into()),
                    ("ETag".into(), "\"v2\"".into()),
                ],
                body: vec![b'2'; 200_000],
                piece: 16 * 1024,
            },
            _ => Reply::status(503),
        }
    });
    let proxy = Proxy::with(|config| config.cache_max_object = 64 << 10);
    let url = origin.url("/grown");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "small v1");
    let grown = get(proxy.addr, &url, &[]);
    assert_eq!(grown.header("etag"), Some("\"v2\""), "{grown:?}");
    assert_eq!(grown.body.len(), 200_000);
    let failed = get(proxy.addr, &url, &[]);
    assert_eq!(failed.status, 503, "{failed:?}");
    assert!(cache_status(&failed).contains("fwd=uri-miss"), "{failed:?}");
}

#[test]
fn a_clients_failed_precondition_leaves_the_stale_entry_in_place() {
    // A 412 to the client's If-Match says nothing new about the entry: it
    // must still stand in when the origin fails next.
    let served = std::sync::atomic::AtomicUsize::new(0);
    let origin = Origin::start(move |request| {
        if request.header("if-match").is_some() {
            return Reply::status(412);
        }
        match served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => reply_with(
                "v1",
                &[
                    ("Cache-Control", "max-age=0, stale-if-error=600"),
                    ("ETag", "\"v1\""),
                ],
            ),
            _ => Reply::status(503),
        }
    });
    let proxy = Proxy::start();
    let url = origin.url("/guarded");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "v1");
    let failed = get(proxy.addr, &url, &["-H", "If-Match: \"other\""]);
    assert_eq!(failed.status, 412, "{failed:?}");
    let status = cache_status(&failed);
    assert!(
        status.contains("fwd-status=412") && !status.contains("stored"),
        "{status}"
    );
    let stale = get(proxy.addr, &url, &[]);
    assert_eq!(stale.status, 200, "{stale:?}");
    assert_eq!(stale.text(), "v1");
    assert!(
        cache_status(&stale).ends_with("detail=stale-if-error"),
        "{stale:?}"
    );
}
