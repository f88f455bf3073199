//! Lookups, revalidation, eviction, purge and invalidation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::{MAX_AGE, get, miss_kind};
use crate::cache::stats::read;
use crate::cache::testing::{
    expect_hit, headers, lead, ok_head, read_body, request, small_cache, store,
};
use crate::cache::*;

#[test]
fn a_body_of_32_to_128_kib_is_kept_in_a_memory_file_and_read_back_whole_or_in_part() {
    let cache = small_cache(4 << 20, 1 << 20, None);
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    store(&cache, &get("http://h/pages"), &[MAX_AGE], &body, 5).expect("stored");
    let hit = expect_hit(&cache, &get("http://h/pages"));
    assert!(
        matches!(hit.object.body, object::Body::Pages(_)),
        "in a memory file"
    );
    assert!(hit.object.memory_chunks().is_none());
    let len = hit.object.head.body_len;
    let whole = read_body(&mut hit.object.reader(0, len).expect("reader")).expect("body");
    assert_eq!(whole, body);
    let part = read_body(&mut hit.object.reader(1000, 70_000).expect("reader")).expect("part");
    assert_eq!(part, body[1000..65_536]);
    // Weighed as a body in memory.
    let (memory, _) = cache.usage();
    assert!(memory.bytes >= len, "{memory:?}");

    let small = b"small".repeat(100);
    store(&cache, &get("http://h/small"), &[MAX_AGE], &small, 1).expect("stored");
    let hit = expect_hit(&cache, &get("http://h/small"));
    assert!(
        hit.object.memory_chunks().is_some(),
        "small bodies stay chunks"
    );
}

#[test]
fn a_stored_response_is_a_hit_for_get_and_head() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let body = b"hello, cache".repeat(100);
    store(&cache, &get("http://h/a"), &[MAX_AGE], &body, 7).expect("stored");
    let hit = expect_hit(&cache, &get("http://H:80/a#x"));
    assert!(!hit.stale && !hit.revalidate);
    let chunks = hit.object.memory_chunks().expect("in memory");
    assert_eq!(chunks.concat(), body);
    for pair in chunks.windows(2) {
        assert_eq!(
            pair[0].as_ptr().wrapping_add(pair[0].len()),
            pair[1].as_ptr(),
            "the pieces share one buffer, in order"
        );
    }
    let head = expect_hit(&cache, &request("HEAD", "http://h/a", &[]));
    assert!(
        Arc::ptr_eq(&head.object, &hit.object),
        "GET and HEAD share the entry"
    );
    let Outcome::Hit { ttl, stale, .. } = hit.outcome(SystemTime::now()) else {
        panic!("a hit's outcome is a hit");
    };
    assert!((1..=60).contains(&ttl) && !stale, "ttl {ttl}");
    let (memory, disk) = cache.usage();
    assert_eq!(memory.urls, 1);
    assert!(memory.bytes >= body.len() as u64);
    assert!(disk.is_none());
}

#[test]
fn misses_say_whether_the_url_or_the_variant_was_missing() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    assert_eq!(miss_kind(&cache, &get("http://h/v")), Fwd::UriMiss);
    let french = request("GET", "http://h/v", &[("accept-language", "fr")]);
    store(
        &cache,
        &french,
        &[MAX_AGE, ("vary", "Accept-Language")],
        b"bonjour",
        1,
    )
    .expect("stored");
    let german = request("GET", "http://h/v", &[("accept-language", "de")]);
    assert_eq!(miss_kind(&cache, &german), Fwd::VaryMiss);
    store(
        &cache,
        &german,
        &[MAX_AGE, ("vary", "Accept-Language")],
        b"hallo",
        1,
    )
    .expect("stored");
    let hit = expect_hit(&cache, &french);
    assert_eq!(
        &hit.object.memory_chunks().expect("memory")[0][..],
        b"bonjour"
    );
    let hit = expect_hit(&cache, &german);
    assert_eq!(
        &hit.object.memory_chunks().expect("memory")[0][..],
        b"hallo"
    );
}

#[test]
fn requests_that_cannot_use_the_cache_bypass_it() {
    let off = small_cache(0, 1, None);
    assert!(matches!(
        off.lookup(&get("http://h/"), SystemTime::now()),
        Lookup::Bypass(Bypass::Off)
    ));
    let cache = small_cache(1 << 20, 64 << 10, None);
    let post = request("POST", "http://h/", &[]);
    assert!(matches!(
        cache.lookup(&post, SystemTime::now()),
        Lookup::Bypass(Bypass::Method)
    ));
    for framing in [("content-length", "5"), ("transfer-encoding", "chunked")] {
        let with_body = request("GET", "http://h/", &[framing]);
        assert!(matches!(
            cache.lookup(&with_body, SystemTime::now()),
            Lookup::Bypass(Bypass::Body)
        ));
    }
    let empty = request("GET", "http://h/", &[("content-length", "0")]);
    assert!(!matches!(
        cache.lookup(&empty, SystemTime::now()),
        Lookup::Bypass(_)
    ));
    let ftp = get("ftp://h/");
    assert!(matches!(
        cache.lookup(&ftp, SystemTime::now()),
        Lookup::Bypass(Bypass::Target)
    ));
    let role = |req| match cache.lookup(&req, SystemTime::now()) {
        Lookup::Miss(Miss {
            role: MissRole::NoStore(why),
            ..
        }) => Some(why),
        _ => None,
    };
    assert_eq!(role(request("HEAD", "http://h/", &[])), Some(NoStore::Head));
    let if_range = request(
        "GET",
        "http://h/",
        &[("range", "bytes=0-1"), ("if-range", "\"a\"")],
    );
    assert_eq!(role(if_range), Some(NoStore::Conditional));
    assert!(matches!(
        cache.lookup(
            &request("GET", "http://h/", &[("range", "bytes=0-1")]),
            SystemTime::now()
        ),
        Lookup::Miss(Miss {
            role: MissRole::Fill(ref filler),
            ..
        }) if filler.key().is_partial()
    ));
    assert_eq!(
        role(request(
            "GET",
            "http://h/",
            &[("cache-control", "no-store")]
        )),
        Some(NoStore::RequestNoStore)
    );
    let if_range = request("GET", "http://h/", &[("if-range", "\"a\"")]);
    assert_eq!(role(if_range), Some(NoStore::Conditional));
    // Other preconditions fill alone: a 200 is kept, a 304 not.
    let conditional = request("GET", "http://h/", &[("if-none-match", "\"a\"")]);
    assert!(matches!(
        cache.lookup(&conditional, SystemTime::now()),
        Lookup::Miss(Miss {
            role: MissRole::Fill(_),
            ..
        })
    ));
    let only = request("GET", "http://h/", &[("cache-control", "only-if-cached")]);
    assert!(matches!(
        cache.lookup(&only, SystemTime::now()),
        Lookup::OnlyIfCached
    ));
    assert_eq!(cache.fills_in_progress(), 0);
}

#[test]
fn a_304_that_comes_back_after_a_purge_does_not_store_the_entry_again() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let req = get("http://h/purged");
    let stale_headers = [("cache-control", "max-age=0"), ("etag", "\"v1\"")];
    store(&cache, &req, &stale_headers, b"body", 1).expect("stored");
    let Lookup::Stale(stale) = cache.lookup(&req, SystemTime::now()) else {
        panic!("expected stale");
    };
    // Purged while the revalidation was at the origin.
    assert_eq!(cache.purge("http://h/purged"), Ok(true));
    let mut answer = http::Response::new(());
    *answer.status_mut() = StatusCode::NOT_MODIFIED;
    *answer.headers_mut() = headers(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let answer = answer.into_parts().0;
    let refreshed = cache
        .refresh(&stale.object, &req, &answer, SystemTime::now())
        .expect("the 304 still answers this request");
    assert_eq!(&refreshed.memory_chunks().expect("memory")[0][..], b"body");
    assert!(matches!(
        cache.lookup(&req, SystemTime::now()),
        Lookup::Miss(_)
    ));
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let req = get("http://h/s");
    let stored = store(
        &cache,
        &req,
        &[
            ("cache-control", "max-age=0"),
            ("etag", "\"v1\""),
            ("x-old", "1"),
        ],
        b"body",
        1,
    )
    .expect("stored: it has a validator");
    let Lookup::Stale(stale) = cache.lookup(&req, SystemTime::now()) else {
        panic!("expected stale");
    };
    assert!(Arc::ptr_eq(&stale.object, &stored));
    assert_eq!(stale.fwd(), Fwd::Stale);
    let etag = stale
        .validators
        .iter()
        .find(|(name, _)| name == "if-none-match");
    assert_eq!(etag.map(|(_, v)| v.as_bytes()), Some(&b"\"v1\""[..]));
    let mut answer = http::Response::new(());
    *answer.status_mut() = StatusCode::NOT_MODIFIED;
    *answer.headers_mut() = headers(&[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let answer = answer.into_parts().0;
    let refreshed = cache
        .refresh(&stale.object, &req, &answer, SystemTime::now())
        .expect("304 applies");
    assert_eq!(
        refreshed.head.headers.get("x-old").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let hit = expect_hit(&cache, &req);
    assert!(Arc::ptr_eq(&hit.object, &refreshed));
    assert_eq!(&hit.object.memory_chunks().expect("memory")[0][..], b"body");
}

#[test]
fn a_stale_entry_refetched_in_full_is_replaced() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let req = get("http://h/r");
    store(
        &cache,
        &req,
        &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
        b"old",
        1,
    )
    .expect("stored");
    let Lookup::Stale(mut stale) = cache.lookup(&req, SystemTime::now()) else {
        panic!("expected stale");
    };
    ok_head(&mut stale.filler, &req, &[MAX_AGE]).expect("storable");
    stale.filler.body(b"new");
    stale.filler.finish().expect("stored");
    let hit = expect_hit(&cache, &req);
    assert_eq!(&hit.object.memory_chunks().expect("memory")[0][..], b"new");
    assert_eq!(cache.usage().0.urls, 1);
}

#[test]
fn the_memory_budget_is_kept_by_eviction() {
    let budget = 64 << 10;
    let cache = small_cache(budget, 8 << 10, None);
    for i in 0..40 {
        store(
            &cache,
            &get(&format!("http://h/e{i}")),
            &[MAX_AGE],
            &[b'e'; 6000],
            1,
        )
        .expect("stored");
        assert!(cache.usage().0.bytes <= budget, "over budget after {i}");
    }
    assert!(read(&cache.stats().evictions_memory) > 0);
    assert!(cache.usage().0.urls < 40);
}

#[test]
fn purge_removes_every_variant() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    for lang in ["fr", "de"] {
        let req = request("GET", "http://h/p", &[("accept-language", lang)]);
        store(
            &cache,
            &req,
            &[MAX_AGE, ("vary", "accept-language")],
            lang.as_bytes(),
            1,
        )
        .expect("stored");
    }
    assert_eq!(cache.purge("http://H/p"), Ok(true));
    assert_eq!(cache.purge("http://h/p"), Ok(false));
    assert!(cache.purge("not a url").is_err());
    assert_eq!(
        miss_kind(
            &cache,
            &request("GET", "http://h/p", &[("accept-language", "fr")])
        ),
        Fwd::UriMiss
    );
    assert_eq!(read(&cache.stats().purges), 1);
}

#[test]
fn successful_unsafe_methods_invalidate_the_url_and_same_origin_locations() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    for path in ["/list", "/item", "/other"] {
        store(
            &cache,
            &get(&format!("http://h{path}")),
            &[MAX_AGE],
            b"x",
            1,
        )
        .expect("stored");
    }
    store(&cache, &get("http://elsewhere/item"), &[MAX_AGE], b"x", 1).expect("stored");
    let post = request("POST", "http://h/list", &[]);
    let failed = headers(&[]);
    assert!(
        !cache.invalidate(&post, 500, &failed),
        "errors invalidate nothing"
    );
    let answer = headers(&[
        ("location", "/item"),
        ("content-location", "http://elsewhere/item"),
    ]);
    assert!(cache.invalidate(&post, 201, &answer));
    assert_eq!(miss_kind(&cache, &get("http://h/list")), Fwd::UriMiss);
    assert_eq!(miss_kind(&cache, &get("http://h/item")), Fwd::UriMiss);
    expect_hit(&cache, &get("http://h/other"));
    expect_hit(&cache, &get("http://elsewhere/item"));
    assert!(
        !cache.invalidate(&get("http://h/other"), 200, &failed),
        "safe methods invalidate nothing"
    );
}

#[test]
fn stale_while_revalidate_serves_stale_and_asks_one_request_to_revalidate() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let req = get("http://h/swr");
    let response = [
        ("cache-control", "max-age=0, stale-while-revalidate=60"),
        ("etag", "\"a\""),
    ];
    store(&cache, &req, &response, b"x", 1).expect("stored");
    let first = expect_hit(&cache, &req);
    let second = expect_hit(&cache, &req);
    assert!(first.stale && first.revalidate);
    assert!(
        second.stale && !second.revalidate,
        "one revalidation at a time"
    );
    let later = SystemTime::now() + Duration::from_secs(11);
    let retry = Duration::from_secs(10);
    assert!(
        second.object.claim_revalidation(later, retry),
        "a failed claimant is replaced"
    );
    assert!(!second.object.claim_revalidation(later, retry));
    let status = first.outcome(SystemTime::now()).header_value();
    assert!(
        status.starts_with("fetchproxy; hit; ttl=")
            && status.ends_with("detail=stale-while-revalidate"),
        "{status}"
    );
}

#[test]
fn impossible_sizes_are_refused() {
    let zero_object = CacheConfig {
        mem_max_object: 0,
        ..CacheConfig::default()
    };
    let err = Cache::open(zero_object).err().expect("refused");
    assert!(matches!(err, CacheError::Config(_)), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let zero_disk = CacheConfig {
        dir: Some(dir.path().to_path_buf()),
        dir_bytes: 0,
        ..CacheConfig::default()
    };
    assert!(matches!(Cache::open(zero_disk), Err(CacheError::Config(_))));
    let off = CacheConfig {
        mem_bytes: 0,
        mem_max_object: 0,
        ..CacheConfig::default()
    };
    assert!(!Cache::open(off).expect("off is fine").is_enabled());
}

#[test]
fn storing_a_url_again_is_not_an_eviction() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    for round in 0..10u8 {
        store(&cache, &get("http://h/again"), &[MAX_AGE], &[round; 100], 1).expect("stored");
    }
    assert_eq!(read(&cache.stats().evictions_memory), 0);
    assert_eq!(cache.usage().0.urls, 1);
}

#[test]
fn a_stored_part_answers_ranges_within_it() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let suffix = request("GET", "http://h/p", &[("range", "bytes=-5")]);
    let mut filler = lead(&cache, &suffix);
    let part = headers(&[MAX_AGE, ("content-range", "bytes 5-9/10")]);
    filler
        .response_head(
            &suffix,
            StatusCode::PARTIAL_CONTENT,
            &part,
            SystemTime::now(),
        )
        .expect("a whole part is kept");
    filler.body(b"56789");
    filler.finish().expect("stored");
    let now = SystemTime::now();
    for (range, body) in [
        ("bytes=-5", "56789"),
        ("bytes=6-8", "678"),
        ("bytes=7-", "789"),
    ] {
        let ask = request("GET", "http://h/p", &[("range", range)]);
        let hit = expect_hit(&cache, &ask);
        let reply::Reply::Partial { head, start, end } = reply::plan(&hit.object, &ask, now) else {
            panic!("{range}: a 206");
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let (first, last) = (
            body.as_bytes()[0] - b'0',
            body.as_bytes()[body.len() - 1] - b'0',
        );
        assert!(
            head.contains(&format!("Content-Range: bytes {first}-{last}/10\r\n")),
            "{range}: {head}"
        );
        assert_eq!(
            head.matches("ontent-Range").count() + head.matches("ontent-range").count(),
            1,
            "{head}"
        );
        let mut reader = hit.object.reader(start, end + 1).expect("reader");
        assert_eq!(
            read_body(&mut reader).expect("body"),
            body.as_bytes(),
            "{range}"
        );
    }
    for outside in ["bytes=0-5", "bytes=2-"] {
        let ask = request("GET", "http://h/p", &[("range", outside)]);
        assert!(
            matches!(cache.lookup(&ask, now), Lookup::Miss(_)),
            "{outside}"
        );
    }
    assert_eq!(
        miss_kind(&cache, &get("http://h/p")),
        Fwd::UriMiss,
        "a part is no response"
    );
    assert!(
        cache.purge("http://h/p").expect("url"),
        "purge takes the part too"
    );
    let ask = request("GET", "http://h/p", &[("range", "bytes=-5")]);
    assert!(matches!(cache.lookup(&ask, now), Lookup::Miss(_)));
}

#[test]
fn parts_that_are_not_one_whole_range_are_not_kept() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let ask = request("GET", "http://h/q", &[("range", "bytes=0-4")]);
    for content_range in ["bytes 0-4/*", "bytes 0-9/10"] {
        let mut filler = lead(&cache, &ask);
        let part = headers(&[
            MAX_AGE,
            ("content-range", content_range),
            ("content-length", "5"),
        ]);
        let refused =
            filler.response_head(&ask, StatusCode::PARTIAL_CONTENT, &part, SystemTime::now());
        assert_eq!(refused, Err(NotStored::Partial), "{content_range}");
    }
}

#[test]
fn a_whole_answer_to_a_range_request_is_kept_as_the_urls_response() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let ask = request("GET", "http://h/q", &[("range", "bytes=0-4")]);
    let mut filler = lead(&cache, &ask);
    ok_head(&mut filler, &ask, &[MAX_AGE]).expect("stored");
    filler.body(b"0123456789");
    filler.finish().expect("stored");
    let hit = expect_hit(&cache, &get("http://h/q"));
    assert_eq!(
        &hit.object.memory_chunks().expect("memory")[0][..],
        b"0123456789"
    );
}

#[test]
fn a_post_answer_naming_its_own_url_is_kept_for_gets() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let post = request("POST", "http://h/form", &[("content-length", "3")]);
    let fresh = headers(&[MAX_AGE, ("content-location", "/form")]);
    let mut filler = cache.post_filler(&post, 200, &fresh).expect("storable");
    filler
        .response_head(&post, StatusCode::OK, &fresh, SystemTime::now())
        .expect("stored");
    filler.body(b"done");
    filler.finish().expect("stored");
    let hit = expect_hit(&cache, &get("http://h/form"));
    assert_eq!(&hit.object.memory_chunks().expect("memory")[0][..], b"done");
    let elsewhere = headers(&[MAX_AGE, ("content-location", "/other")]);
    assert!(cache.post_filler(&post, 200, &elsewhere).is_none());
    let no_freshness = headers(&[("content-location", "/form")]);
    assert!(cache.post_filler(&post, 200, &no_freshness).is_none());
    assert!(
        cache
            .post_filler(&get("http://h/form"), 200, &fresh)
            .is_none()
    );
    // An error's content describes the error, not the resource: a failed
    // POST must not become every later GET's answer.
    for status in [201, 204, 206, 303, 400, 409, 500] {
        assert!(
            cache.post_filler(&post, status, &fresh).is_none(),
            "{status}"
        );
    }
    assert!(cache.post_filler(&post, 203, &fresh).is_some());
}
