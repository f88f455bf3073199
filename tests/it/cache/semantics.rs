//! What is stored and served again, by RFC 9111's rules: fresh hits with
//! `Age`, HEAD from a GET entry, Vary variants, ranges, parts and client
//! preconditions answered from an entry, the request's own directives,
//! what is never stored, invalidation by unsafe methods, and
//! `only-if-cached`.

use std::time::Duration;

use super::{
    LIMIT, cache_status, fresh_bytes_origin, fresh_origin, get, reply_with, requests_for,
    revalidating_origin,
};
use crate::support::raw::parse_head;
use crate::support::{Origin, Proxy, Reply, metric, raw, scrape_metrics};

#[test]
fn a_fresh_response_is_served_again_without_the_origin() {
    let origin = fresh_origin("hello cache");
    let proxy = Proxy::start();
    let url = origin.url("/fresh");
    let first = get(proxy.addr, &url, &[]);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.text(), "hello cache");
    let status = cache_status(&first);
    assert!(
        status.starts_with("fetchproxy; fwd=uri-miss; fwd-status=200; stored; ttl="),
        "{status}"
    );
    let second = get(proxy.addr, &url, &[]);
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.text(), "hello cache");
    let status = cache_status(&second);
    assert!(status.starts_with("fetchproxy; hit; ttl="), "{status}");
    let age: u64 = second
        .header("age")
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("an Age on every hit: {second:?}"));
    assert!(age < 3600, "{age}");
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert!(second.header("x-request-id").is_some(), "{second:?}");
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
    assert_eq!(requests_for(&origin, "/fresh").len(), 1);
}

#[test]
fn a_url_spelt_differently_is_the_same_entry() {
    let origin = fresh_origin("same");
    let proxy = Proxy::start();
    let port = origin.addr.port();
    get(proxy.addr, &format!("http://127.0.0.1:{port}/a/b"), &[]);
    let other = get(proxy.addr, &format!("HTTP://127.0.0.1:{port}/a/b"), &[]);
    assert!(cache_status(&other).contains("; hit"), "{other:?}");
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn a_path_the_key_would_rewrite_is_neither_answered_nor_stored_under_it() {
    // The origin answers what it is asked, as written: `/evil/%2e%2e/b`
    // is not `/b` to it, nor `?x='` `?x=%27`.
    let origin = Origin::start(|request| {
        reply_with(
            &format!("for {}", request.target),
            &[("Cache-Control", "max-age=3600")],
        )
    });
    let proxy = Proxy::start();
    for (crafted, plain) in [
        ("/evil/%2e%2e/b", "/b"),
        ("/q?x='", "/q?x=%27"),
        ("/a/./c", "/a/c"),
    ] {
        // curl resolves `./` itself unless told not to.
        let first = get(proxy.addr, &origin.url(crafted), &["--path-as-is"]);
        assert_eq!(first.text(), format!("for {crafted}"));
        assert!(cache_status(&first).contains("fwd=bypass"), "{first:?}");
        let real = get(proxy.addr, &origin.url(plain), &[]);
        assert_eq!(
            real.text(),
            format!("for {plain}"),
            "not the crafted answer"
        );
        let again = get(proxy.addr, &origin.url(plain), &[]);
        assert!(cache_status(&again).contains("; hit"), "{again:?}");
        assert_eq!(again.text(), format!("for {plain}"));
        let crafted_again = get(proxy.addr, &origin.url(crafted), &["--path-as-is"]);
        assert_eq!(
            crafted_again.text(),
            format!("for {crafted}"),
            "not the plain answer"
        );
    }
}

#[test]
fn head_requests_are_answered_from_the_get_entry() {
    let origin = fresh_origin("twelve bytes");
    let proxy = Proxy::start();
    let url = origin.url("/head");
    get(proxy.addr, &url, &[]);
    let head = get(proxy.addr, &url, &["-I"]);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("12"));
    assert!(cache_status(&head).contains("; hit"), "{head:?}");
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn vary_keeps_one_variant_per_header_value() {
    let origin = Origin::start(|request| {
        let language = request.header("accept-language").unwrap_or("none");
        reply_with(
            &format!("in {language}"),
            &[
                ("Cache-Control", "max-age=3600"),
                ("Vary", "Accept-Language"),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/greeting");
    let en = get(proxy.addr, &url, &["-H", "Accept-Language: en"]);
    assert!(cache_status(&en).contains("fwd=uri-miss"), "{en:?}");
    let fr = get(proxy.addr, &url, &["-H", "Accept-Language: fr"]);
    assert_eq!(fr.text(), "in fr");
    assert!(cache_status(&fr).contains("fwd=vary-miss"), "{fr:?}");
    for language in ["en", "fr"] {
        let header = format!("Accept-Language: {language}");
        let again = get(proxy.addr, &url, &["-H", &header]);
        assert_eq!(again.text(), format!("in {language}"));
        assert!(cache_status(&again).contains("; hit"), "{again:?}");
    }
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn ranges_are_answered_from_a_complete_entry() {
    let origin = fresh_origin("0123456789");
    let proxy = Proxy::start();
    let url = origin.url("/digits");
    get(proxy.addr, &url, &[]);
    let part = get(proxy.addr, &url, &["-r", "2-4"]);
    assert_eq!(part.status, 206, "{part:?}");
    assert_eq!(part.text(), "234");
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    let tail = get(proxy.addr, &url, &["-r", "-3"]);
    assert_eq!((tail.status, tail.text().as_str()), (206, "789"));
    let beyond = get(proxy.addr, &url, &["-r", "20-"]);
    assert_eq!(beyond.status, 416, "{beyond:?}");
    assert_eq!(beyond.header("content-range"), Some("bytes */10"));
    assert_eq!(origin.requests().len(), 1, "{:?}", origin.requests());
}

/// An origin that ignores `Range` (Python's http.server, many scripts)
/// answers a range request whole: that 200 is the URL's response, stored
/// as such, and later ranges and whole requests are answered from it.
#[test]
fn a_whole_answer_to_a_range_request_is_stored_for_every_later_request() {
    let origin = fresh_origin("0123456789");
    let proxy = Proxy::start();
    let url = origin.url("/ignores-range");
    let first = get(proxy.addr, &url, &["-r", "2-4"]);
    assert_eq!((first.status, first.text().as_str()), (200, "0123456789"));
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let part = get(proxy.addr, &url, &["-r", "2-4"]);
    assert_eq!(
        (part.status, part.text().as_str()),
        (206, "234"),
        "{part:?}"
    );
    assert!(cache_status(&part).contains("; hit"), "{part:?}");
    let whole = get(proxy.addr, &url, &[]);
    assert_eq!((whole.status, whole.text().as_str()), (200, "0123456789"));
    assert!(cache_status(&whole).contains("; hit"), "{whole:?}");
    assert_eq!(origin.requests().len(), 1, "{:?}", origin.requests());
}

#[test]
fn a_large_stored_body_is_served_whole_and_in_ranges() {
    // Over 1 MiB, so that a hit goes out in several writes (pieces of
    // 512 KiB); no stretch of it repeats, so a byte sent twice or skipped
    // at a piece's edge shows.
    let body: Vec<u8> = (0..325_000u32).flat_map(u32::to_le_bytes).collect();
    let origin = fresh_bytes_origin(body.clone());
    let proxy = Proxy::start();
    let url = origin.url("/large");
    let first = get(proxy.addr, &url, &[]);
    assert_eq!((first.status, first.body.len()), (200, body.len()));
    // Read to the close: nothing may follow the declared length. The
    // first client can have every byte before the fill is stored; a
    // request then joins the fill, so ask until one is a hit.
    let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    for attempt in 1.. {
        let answer = raw(proxy.addr, request.as_bytes(), LIMIT);
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = parse_head(&answer[..split]).expect("a response head");
        assert_eq!(head.status, 200, "{}", head.head);
        let hit = &answer[split + 4..];
        assert!(hit == body, "the answer's {} bytes differ", hit.len());
        if head.head.contains("; hit") {
            break;
        }
        assert!(attempt < 50, "never a hit: {}", head.head);
        std::thread::sleep(Duration::from_millis(20));
    }
    let part = get(proxy.addr, &url, &["-r", "500000-1299999"]);
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert!(
        part.body == body[500_000..],
        "the range's {} bytes differ",
        part.body.len()
    );
    assert_eq!(requests_for(&origin, "/large").len(), 1);
}

#[test]
fn a_body_sent_from_a_memory_file_is_framed_whole_for_each_request() {
    // 32 to 128 KiB: a hit goes out with `sendfile` from a memory file.
    let body: Vec<u8> = (0..25_000u32).flat_map(u32::to_le_bytes).collect();
    let origin = fresh_bytes_origin(body.clone());
    let proxy = Proxy::start();
    let url = origin.url("/paged");
    assert_eq!(get(proxy.addr, &url, &[]).body, body);
    for attempt in 1.. {
        let again = get(proxy.addr, &url, &[]);
        assert!(again.body == body, "{} bytes differ", again.body.len());
        if cache_status(&again).contains("; hit") {
            break;
        }
        assert!(attempt < 50, "never a hit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two hits on one connection, then a HEAD (a head alone), read to the
    // close: each answer is its head and exactly its body.
    let one = format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = format!("HEAD {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let answer = raw(proxy.addr, format!("{one}{one}{head}").as_bytes(), LIMIT);
    let mut rest = &answer[..];
    for expected in [&body[..], &body[..], &[][..]] {
        let split = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let parsed = parse_head(&rest[..split]).expect("a response head");
        assert_eq!(parsed.status, 200, "{}", parsed.head);
        assert!(parsed.head.contains("; hit"), "{}", parsed.head);
        assert!(
            parsed
                .head
                .contains(&format!("Content-Length: {}", body.len())),
            "{}",
            parsed.head
        );
        let answered = &rest[split + 4..split + 4 + expected.len()];
        assert!(answered == expected, "a body differs");
        rest = &rest[split + 4 + expected.len()..];
    }
    assert!(
        rest.is_empty(),
        "{} bytes after the last answer",
        rest.len()
    );
    let part = get(proxy.addr, &url, &["-r", "1000-60999"]);
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert!(part.body == body[1000..61_000], "the range differs");
    assert_eq!(requests_for(&origin, "/paged").len(), 1);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_memory_files"),
        Some(1.0),
        "{page}"
    );
}

/// An origin serving "0123456789" that honours a single `bytes=` range.
fn range_origin() -> Origin {
    Origin::start(|request| {
        let body = b"0123456789";
        let headers = vec![("Cache-Control".to_string(), "max-age=3600".to_string())];
        let Some(range) = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
        else {
            return Reply::Full {
                status: 200,
                headers,
                body: body.to_vec(),
            };
        };
        let (first, last) = range.split_once('-').expect("a byte range");
        let (first, last): (usize, usize) = match (first.parse().ok(), last.parse().ok()) {
            (None, Some(suffix)) => (10 - suffix, 9),
            (Some(first), None) => (first, 9),
            (Some(first), Some(last)) => (first, last),
            (None, None) => panic!("range {range}"),
        };
        let mut headers = headers;
        headers.push(("Content-Range".into(), format!("bytes {first}-{last}/10")));
        Reply::Full {
            status: 206,
            headers,
            body: body[first..=last].to_vec(),
        }
    })
}

#[test]
fn a_stored_part_answers_ranges_within_it() {
    let origin = range_origin();
    let proxy = Proxy::start();
    let url = origin.url("/part");
    let first = get(proxy.addr, &url, &["-r", "-5"]);
    assert_eq!((first.status, first.text().as_str()), (206, "56789"));
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    for (range, body, content_range) in [
        ("-5", "56789", "bytes 5-9/10"),
        ("6-8", "678", "bytes 6-8/10"),
        ("7-", "789", "bytes 7-9/10"),
    ] {
        let part = get(proxy.addr, &url, &["-r", range]);
        assert_eq!((part.status, part.text().as_str()), (206, body), "{range}");
        assert_eq!(part.header("content-range"), Some(content_range));
        assert!(cache_status(&part).contains("; hit"), "{part:?}");
    }
    let outside = get(proxy.addr, &url, &["-r", "0-3"]);
    assert_eq!(outside.text(), "0123");
    let whole = get(proxy.addr, &url, &[]);
    assert_eq!((whole.status, whole.text().as_str()), (200, "0123456789"));
    assert_eq!(
        origin.requests().len(),
        3,
        "a part is never a whole response"
    );
}

#[test]
fn client_preconditions_get_304_from_a_fresh_entry() {
    let origin = Origin::start(|_| {
        reply_with(
            "validated",
            &[("Cache-Control", "max-age=3600"), ("ETag", "\"v1\"")],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/etag");
    get(proxy.addr, &url, &[]);
    let same = get(proxy.addr, &url, &["-H", "If-None-Match: \"v1\""]);
    assert_eq!(same.status, 304, "{same:?}");
    assert!(same.body.is_empty());
    assert_eq!(same.header("etag"), Some("\"v1\""));
    let other = get(proxy.addr, &url, &["-H", "If-None-Match: \"v0\""]);
    assert_eq!((other.status, other.text().as_str()), (200, "validated"));
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn request_no_cache_goes_to_the_origin() {
    let origin = fresh_origin("again");
    let proxy = Proxy::start();
    let url = origin.url("/no-cache");
    get(proxy.addr, &url, &[]);
    let refreshed = get(proxy.addr, &url, &["-H", "Cache-Control: no-cache"]);
    assert!(
        cache_status(&refreshed).contains("fwd=request"),
        "{refreshed:?}"
    );
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn responses_the_origin_keeps_private_are_not_stored() {
    for cache_control in ["private", "no-store", "s-maxage=60, private"] {
        let origin =
            Origin::start(move |_| reply_with("mine", &[("Cache-Control", cache_control)]));
        let proxy = Proxy::start();
        let url = origin.url("/private");
        let first = get(proxy.addr, &url, &[]);
        let status = cache_status(&first);
        assert!(
            status.ends_with("detail=not-storable"),
            "{cache_control}: {status}"
        );
        get(proxy.addr, &url, &[]);
        assert_eq!(origin.requests().len(), 2, "{cache_control}");
    }
}

#[test]
fn requests_with_credentials_are_stored_only_when_the_origin_says_so() {
    for (cache_control, stored) in [("max-age=3600", false), ("public, max-age=3600", true)] {
        let origin =
            Origin::start(move |_| reply_with("secret", &[("Cache-Control", cache_control)]));
        let proxy = Proxy::start();
        let url = origin.url("/auth");
        let auth = ["-H", "Authorization: Bearer abc"];
        get(proxy.addr, &url, &auth);
        let again = get(proxy.addr, &url, &auth);
        let expected = if stored { 1 } else { 2 };
        assert_eq!(
            origin.requests().len(),
            expected,
            "{cache_control}: {again:?}"
        );
    }
}

#[test]
fn an_unsafe_method_invalidates_the_url_and_its_location() {
    let origin = Origin::start(|request| match request.method.as_str() {
        "POST" => reply_with("posted", &[("Location", "/other")]),
        _ => reply_with(
            &format!("page {}", request.target),
            &[("Cache-Control", "max-age=3600")],
        ),
    });
    let proxy = Proxy::start();
    let (page, other) = (origin.url("/page"), origin.url("/other"));
    get(proxy.addr, &page, &[]);
    get(proxy.addr, &other, &[]);
    assert!(cache_status(&get(proxy.addr, &page, &[])).contains("; hit"));
    let posted = get(proxy.addr, &page, &["-d", "x=1"]);
    assert_eq!(posted.text(), "posted");
    assert_eq!(
        cache_status(&posted),
        "fetchproxy; fwd=bypass; fwd-status=200; detail=method"
    );
    for url in [&page, &other] {
        let again = get(proxy.addr, url, &[]);
        assert!(cache_status(&again).contains("fwd=uri-miss"), "{again:?}");
    }
    assert_eq!(requests_for(&origin, "/page").len(), 3);
    assert_eq!(requests_for(&origin, "/other").len(), 2);
}

#[test]
fn an_extension_method_is_forwarded_and_invalidates() {
    let origin =
        Origin::start(|request| reply_with(&request.method, &[("Cache-Control", "max-age=3600")]));
    let proxy = Proxy::start();
    let url = origin.url("/ext");
    get(proxy.addr, &url, &[]);
    let searched = get(proxy.addr, &url, &["-X", "M-SEARCH"]);
    assert_eq!(searched.text(), "M-SEARCH");
    let again = get(proxy.addr, &url, &[]);
    assert!(cache_status(&again).contains("fwd=uri-miss"), "{again:?}");
    assert_eq!(origin.requests().len(), 3);
}

#[test]
fn only_if_cached_gets_504_when_nothing_is_stored() {
    let origin = fresh_origin("here");
    let proxy = Proxy::start();
    let url = origin.url("/only");
    let only = ["-H", "Cache-Control: only-if-cached"];
    let missing = get(proxy.addr, &url, &only);
    assert_eq!(missing.status, 504, "{missing:?}");
    assert_eq!(cache_status(&missing), "fetchproxy; detail=only-if-cached");
    assert!(origin.requests().is_empty());
    // Nor does one the cache could never answer (a GET with a body).
    let with_body = get(
        proxy.addr,
        &url,
        &[
            "-X",
            "GET",
            "--data",
            "x",
            "-H",
            "Cache-Control: only-if-cached",
        ],
    );
    assert_eq!(with_body.status, 504, "{with_body:?}");
    assert!(origin.requests().is_empty());
    get(proxy.addr, &url, &[]);
    let cached = get(proxy.addr, &url, &only);
    assert_eq!((cached.status, cached.text().as_str()), (200, "here"));
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn with_the_cache_off_every_request_goes_upstream_untold() {
    let origin = fresh_origin("plain");
    let proxy = Proxy::with(|config| config.cache_mem = 0);
    let url = origin.url("/off");
    for _ in 0..2 {
        let reply = get(proxy.addr, &url, &[]);
        assert_eq!(reply.text(), "plain");
        assert_eq!(reply.header("cache-status"), None, "{reply:?}");
    }
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn a_get_with_a_body_passes_the_cache_by_and_keeps_its_neighbours() {
    // A GET with a body could be sent upstream only once, and an answer
    // from the cache may need a second upstream request: it is passed
    // through, its body sent once, and the request pipelined after it is
    // read as a request.
    let origin = Origin::start(|request| {
        reply_with(
            &format!(
                "{} body={}",
                request.target,
                String::from_utf8_lossy(&request.body)
            ),
            &[("Cache-Control", "max-age=3600")],
        )
    });
    let proxy = Proxy::start();
    let (page, other) = (origin.url("/page"), origin.url("/other"));
    get(proxy.addr, &page, &[]);
    let mut stream = std::net::TcpStream::connect(proxy.addr).expect("connect");
    let pipelined = format!(
        "GET {page} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET {other} HTTP/1.1\r\nHost: h\r\n\r\n"
    );
    std::io::Write::write_all(&mut stream, pipelined.as_bytes()).expect("send");
    let first = crate::support::raw::read_one(&mut stream, false, super::LIMIT).expect("answer");
    assert_eq!(first.text(), "/page body=hello", "{}", first.head);
    assert_eq!(
        first.header("cache-status"),
        Some("fetchproxy; fwd=bypass; fwd-status=200; detail=body")
    );
    let second = crate::support::raw::read_one(&mut stream, false, super::LIMIT).expect("answer");
    assert_eq!(second.text(), "/other body=", "{}", second.head);
    let bodies: Vec<Vec<u8>> = origin.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [b"".to_vec(), b"hello".to_vec(), b"".to_vec()]);
}

#[test]
fn preconditions_leave_a_stored_error_as_it_is() {
    // RFC 9110 §13.2.1: preconditions apply to a 2xx answer only.
    let origin = Origin::start(|_| Reply::Full {
        status: 404,
        headers: vec![("Cache-Control".into(), "max-age=300".into())],
        body: b"no such page".to_vec(),
    });
    let proxy = Proxy::start();
    let url = origin.url("/gone");
    let first = get(proxy.addr, &url, &[]);
    assert_eq!(first.status, 404, "{first:?}");
    for condition in ["If-None-Match: *", "If-Match: \"x\""] {
        let again = get(proxy.addr, &url, &["-H", condition]);
        assert_eq!(again.status, 404, "{condition}: {again:?}");
        assert_eq!(again.text(), "no such page", "{condition}");
        assert!(cache_status(&again).contains("; hit"), "{again:?}");
    }
}

#[test]
fn a_revalidation_for_a_no_store_request_leaves_the_entry_as_it_was() {
    // Stored at once stale; the origin's 304 would make it fresh a minute.
    let origin = revalidating_origin(
        "page",
        &[("Cache-Control", "max-age=0")],
        &[("Cache-Control", "max-age=60")],
    );
    let proxy = Proxy::start();
    let url = origin.url("/kept-as-was");
    get(proxy.addr, &url, &[]);
    let no_store = get(proxy.addr, &url, &["-H", "Cache-Control: no-store"]);
    assert_eq!(no_store.text(), "page", "{no_store:?}");
    // Nothing of the answer to it was kept: the entry is still stale.
    let next = get(proxy.addr, &url, &[]);
    assert!(cache_status(&next).contains("fwd=stale"), "{next:?}");
    // Refreshed by a plain request, it is fresh.
    let after = get(proxy.addr, &url, &[]);
    assert!(cache_status(&after).contains("; hit"), "{after:?}");
}

#[test]
fn a_response_without_date_gets_one_when_forwarded_and_stored() {
    // The test origins send no Date (RFC 9110 §6.6.1: the proxy must add it).
    let origin = fresh_origin("no date");
    let proxy = Proxy::start();
    let url = origin.url("/undated");
    let first = get(proxy.addr, &url, &[]);
    let date = first
        .header("date")
        .unwrap_or_else(|| panic!("no Date on the miss: {first:?}"))
        .to_string();
    assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
    let hit = get(proxy.addr, &url, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(hit.header("date"), Some(date.as_str()), "{hit:?}");
    let passed = get(
        proxy.addr,
        &origin.url("/other"),
        &["-H", "Cache-Control: no-store"],
    );
    assert!(passed.header("date").is_some(), "{passed:?}");
}

#[test]
fn a_head_that_sees_a_new_version_drops_the_stored_get_response() {
    // RFC 9111 §4.3.5: the HEAD's ETag differs from the stored one.
    let version = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let current = std::sync::Arc::clone(&version);
    let origin = Origin::start(move |request| {
        let v = current.load(std::sync::atomic::Ordering::SeqCst);
        let etag = format!("\"v{v}\"");
        if request.header("if-none-match") == Some(etag.as_str()) {
            return Reply::Full {
                status: 304,
                headers: vec![("ETag".into(), etag)],
                body: Vec::new(),
            };
        }
        reply_with(
            &format!("body of v{v}"),
            &[("Cache-Control", "max-age=100"), ("ETag", &etag)],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/versioned");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "body of v1");
    version.store(2, std::sync::atomic::Ordering::SeqCst);
    let head = get(proxy.addr, &url, &["-I", "-H", "Cache-Control: no-cache"]);
    assert_eq!(head.header("etag"), Some("\"v2\""), "{head:?}");
    let after = get(proxy.addr, &url, &[]);
    assert_eq!(after.text(), "body of v2", "{after:?}");
    assert!(cache_status(&after).contains("fwd="), "{after:?}");
}

#[test]
fn a_full_answer_to_a_conditional_miss_is_stored_and_a_304_is_not() {
    // A crawler revisits with the validators it kept; the proxy has nothing
    // yet. A 200 is the whole response, kept for everyone; a 304 is that
    // client's answer alone.
    let origin = revalidating_origin("page", &[("Cache-Control", "max-age=600")], &[]);
    let proxy = Proxy::start();
    let changed = origin.url("/changed");
    let first = get(proxy.addr, &changed, &["-H", "If-None-Match: \"v0\""]);
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "page"),
        "{first:?}"
    );
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let hit = get(proxy.addr, &changed, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(requests_for(&origin, "/changed").len(), 1);

    let same = origin.url("/same");
    let revisit = get(proxy.addr, &same, &["-H", "If-None-Match: \"v1\""]);
    assert_eq!(revisit.status, 304, "{revisit:?}");
    assert!(!cache_status(&revisit).contains("stored"), "{revisit:?}");
    let plain = get(proxy.addr, &same, &[]);
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (200, "page"),
        "{plain:?}"
    );
    assert!(cache_status(&plain).contains("fwd=uri-miss"), "{plain:?}");
    assert_eq!(requests_for(&origin, "/same").len(), 2);

    // A 412 answers the client's `If-Match`, however fresh it says it is:
    // the next request gets the page, not the 412.
    let guarded = Origin::start(|request| {
        if request.header("if-match").is_some() {
            Reply::Full {
                status: 412,
                headers: vec![("Cache-Control".into(), "max-age=600".into())],
                body: b"precondition failed".to_vec(),
            }
        } else {
            reply_with("page", &[("Cache-Control", "max-age=600")])
        }
    });
    let url = guarded.url("/guarded");
    let refused = get(proxy.addr, &url, &["-H", "If-Match: \"nope\""]);
    assert_eq!(refused.status, 412, "{refused:?}");
    assert!(
        cache_status(&refused).contains("detail=request"),
        "{refused:?}"
    );
    let plain = get(proxy.addr, &url, &[]);
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (200, "page"),
        "{plain:?}"
    );

    // With a range too: a 416 answers that range, whatever its lifetime.
    let ranged = Origin::start(|request| {
        if request.header("range").is_some() {
            Reply::Full {
                status: 416,
                headers: vec![
                    ("Cache-Control".into(), "public, max-age=31536000".into()),
                    ("Content-Range".into(), "bytes */4".into()),
                ],
                body: Vec::new(),
            }
        } else {
            reply_with("page", &[("Cache-Control", "max-age=600")])
        }
    });
    let url = ranged.url("/app.js");
    let refused = get(
        proxy.addr,
        &url,
        &["-H", "Range: bytes=999-", "-H", "If-None-Match: \"nope\""],
    );
    assert_eq!(refused.status, 416, "{refused:?}");
    let plain = get(proxy.addr, &url, &[]);
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (200, "page"),
        "{plain:?}"
    );
}
