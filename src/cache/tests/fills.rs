//! Fills and collapsed forwarding.

use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::{MAX_AGE, get, miss_kind};
use crate::cache::stats::read;
use crate::cache::testing::{
    expect_hit, follow, headers, lead, ok_head, read_body, request, small_cache,
};
use crate::cache::*;

#[test]
fn concurrent_misses_collapse_into_one_fill() {
    const FOLLOWERS: usize = 20;
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/collapse";
    let mut filler = lead(&cache, &get(url));
    let start = Arc::new(Barrier::new(FOLLOWERS + 1));
    let (first_tx, first_rx) = mpsc::channel();
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let (cache, start, first_tx) = (cache.clone(), Arc::clone(&start), first_tx.clone());
            thread::spawn(move || {
                let req = get(url);
                let follower = follow(&cache, &req);
                start.wait();
                let Following::Stream { mut reader, .. } = follower.follow(&req) else {
                    panic!("a storable response is shared");
                };
                let first = reader.next_chunk().expect("chunk").expect("bytes");
                first_tx.send(()).expect("send");
                let mut body = first.to_vec();
                body.extend(read_body(&mut reader).expect("rest"));
                body
            })
        })
        .collect();
    start.wait();
    assert_eq!(cache.fills_in_progress(), 1);
    filler
        .response_head(
            &get(url),
            StatusCode::OK,
            &headers(&[MAX_AGE, ("content-length", "10")]),
            SystemTime::now(),
        )
        .expect("storable");
    filler.body(b"01234");
    // Every follower has the first half while the fill is still open.
    for _ in 0..FOLLOWERS {
        first_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("follower got bytes before completion");
    }
    filler.body(b"56789");
    filler.finish().expect("stored");
    for follower in followers {
        assert_eq!(follower.join().expect("follower"), b"0123456789");
    }
    assert_eq!(cache.fills_in_progress(), 0);
    assert!(matches!(
        cache.lookup(&get(url), SystemTime::now()),
        Lookup::Hit(_)
    ));
}

#[test]
fn a_purge_during_a_fill_keeps_its_response_out_of_the_cache() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/purged-while-filling";
    let mut filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    ok_head(&mut filler, &get(url), &[MAX_AGE, ("content-length", "10")]).expect("storable");
    filler.body(b"old01");
    assert_eq!(cache.purge(url), Ok(true), "a fill was in progress");
    // A request after the purge fetches afresh: it does not follow the
    // fill that began before it.
    let mut next = lead(&cache, &get(url));
    filler.body(b"old23");
    assert_eq!(filler.finish().err(), Some(NotStored::Invalidated));
    // The follower from before the purge still gets its whole answer.
    let Following::Stream { mut reader, .. } = follower.follow(&get(url)) else {
        panic!("stream expected");
    };
    assert_eq!(read_body(&mut reader).expect("body"), b"old01old23");
    assert_eq!(miss_kind(&cache, &get(url)), Fwd::UriMiss);
    // The fill that began after the purge stores.
    ok_head(&mut next, &get(url), &[MAX_AGE, ("content-length", "3")]).expect("storable");
    next.body(b"new");
    next.finish().expect("stored");
    expect_hit(&cache, &get(url));
}

#[test]
fn an_invalidation_during_a_lone_fill_keeps_its_response_out_too() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/posted-while-filling";
    let key = crate::cache::key::CacheKey::from_target(url).expect("url");
    let mut filler = cache.fill_alone(key);
    ok_head(&mut filler, &get(url), &[MAX_AGE, ("content-length", "3")]).expect("storable");
    filler.body(b"old");
    let post = request("POST", url, &[]);
    // Nothing was stored yet, and a lone fill is in no table.
    assert!(!cache.invalidate(&post, 204, &http::HeaderMap::new()));
    assert_eq!(filler.finish().err(), Some(NotStored::Invalidated));
    assert_eq!(miss_kind(&cache, &get(url)), Fwd::UriMiss);
}

#[test]
fn a_fill_that_fails_cuts_followers_short_and_stores_nothing() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/fail";
    let mut filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    filler
        .response_head(
            &get(url),
            StatusCode::OK,
            &headers(&[MAX_AGE, ("content-length", "100")]),
            SystemTime::now(),
        )
        .expect("storable");
    filler.body(b"partial");
    let Following::Stream { mut reader, .. } = follower.follow(&get(url)) else {
        panic!("stream expected");
    };
    drop(filler); // The upstream failed mid-body.
    let err = read_body(&mut reader).expect_err("cut short");
    assert!(
        matches!(err, CacheError::FillFailed(FillFailure::Upstream)),
        "{err}"
    );
    assert_eq!(miss_kind(&cache, &get(url)), Fwd::UriMiss);
    assert_eq!(read(&cache.stats().fills_abandoned), 1);
}

#[test]
fn a_body_shorter_than_its_length_is_not_stored() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let mut filler = lead(&cache, &get("http://h/short"));
    filler
        .response_head(
            &get("http://h/short"),
            StatusCode::OK,
            &headers(&[MAX_AGE, ("content-length", "10")]),
            SystemTime::now(),
        )
        .expect("storable");
    filler.body(b"12345");
    assert_eq!(filler.finish().err(), Some(NotStored::Incomplete));
    assert_eq!(miss_kind(&cache, &get("http://h/short")), Fwd::UriMiss);
}

#[test]
fn an_unshareable_response_releases_followers_and_stops_collapsing() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/private";
    let mut filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    let waiting = thread::spawn(move || match follower.follow(&get(url)) {
        Following::Released { why, .. } => why,
        Following::Stream { .. } => panic!("a private response must not be shared"),
    });
    let got = filler.response_head(
        &get(url),
        StatusCode::OK,
        &headers(&[("cache-control", "private")]),
        SystemTime::now(),
    );
    assert_eq!(got, Err(NotStored::Policy));
    assert_eq!(waiting.join().expect("follower"), Release::NotShareable);
    // Hit-for-miss: concurrent requests now each fetch, none waits.
    let first = lead(&cache, &get(url));
    let second = lead(&cache, &get(url));
    assert_eq!(cache.fills_in_progress(), 0);
    drop((first, second, filler));
}

#[test]
fn a_url_that_stays_unshareable_stays_hit_for_miss() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/private-always";
    let private = [("cache-control", "private")];
    let mut filler = lead(&cache, &get(url));
    assert_eq!(
        ok_head(&mut filler, &get(url), &private),
        Err(NotStored::Policy)
    );
    // Marked: the next request fetches alone.
    let mut alone = lead(&cache, &get(url));
    assert_eq!(cache.fills_in_progress(), 0);
    // Its mark lapses (a purge forgets it, as time would) while it fetches;
    // the answer, private again, marks the URL once more.
    cache.purge(url).expect("a valid URL");
    assert_eq!(
        ok_head(&mut alone, &get(url), &private),
        Err(NotStored::Policy)
    );
    let _next = lead(&cache, &get(url));
    assert_eq!(cache.fills_in_progress(), 0, "fetched alone, not collapsed");
}

#[test]
fn requests_with_credentials_never_lead_a_shared_fill() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/auth";
    let asked = request("GET", url, &[("authorization", "Basic dTpw")]);
    let mut filler = lead(&cache, &asked);
    assert_eq!(cache.fills_in_progress(), 0);
    // Its private answer says nothing about the URL: others still collapse.
    let answer = ok_head(&mut filler, &asked, &[MAX_AGE]);
    assert_eq!(answer, Err(NotStored::Policy));
    let _other = lead(&cache, &get(url));
    assert_eq!(cache.fills_in_progress(), 1);
}

#[test]
fn a_conditional_miss_fills_alone_and_its_304_or_412_says_nothing_of_the_url() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/conditional";
    for (precondition, status) in [
        (("if-none-match", "\"v1\""), StatusCode::NOT_MODIFIED),
        (("if-match", "\"v0\""), StatusCode::PRECONDITION_FAILED),
    ] {
        let asked = request("GET", url, &[precondition]);
        let mut filler = lead(&cache, &asked);
        assert_eq!(cache.fills_in_progress(), 0, "nobody waits on it");
        let answer = filler.response_head(&asked, status, &headers(&[MAX_AGE]), SystemTime::now());
        assert!(answer.is_err(), "{status}: not stored");
        // Others still collapse on the URL.
        let other = lead(&cache, &get(url));
        assert_eq!(cache.fills_in_progress(), 1, "{status}");
        drop((other, filler));
    }
    // A 200 to it is the whole response, stored.
    let asked = request("GET", url, &[("if-none-match", "\"v0\"")]);
    let mut filler = lead(&cache, &asked);
    assert!(ok_head(&mut filler, &asked, &[MAX_AGE]).is_ok());
    filler.body(b"whole");
    assert!(filler.finish().is_ok());
    assert!(matches!(
        cache.lookup(&get(url), SystemTime::now()),
        Lookup::Hit(_)
    ));
}

#[test]
fn responses_over_the_object_limit_are_not_stored() {
    let cache = small_cache(1 << 20, 1024, None);
    let url = "http://h/big";
    let mut filler = lead(&cache, &get(url));
    let declared = headers(&[MAX_AGE, ("content-length", "2000")]);
    assert_eq!(
        filler.response_head(&get(url), StatusCode::OK, &declared, SystemTime::now()),
        Err(NotStored::TooLarge)
    );
    drop(filler);
    // Unknown length: given up once it outgrows the limit, the rest passed
    // on to the follower, which gets the whole body; nothing is stored.
    let chunked_url = "http://h/big-chunked";
    let mut filler = lead(&cache, &get(chunked_url));
    let follower = follow(&cache, &get(chunked_url));
    ok_head(&mut filler, &get(chunked_url), &[MAX_AGE]).expect("storable so far");
    let Following::Stream { mut reader, .. } = follower.follow(&get(chunked_url)) else {
        panic!("stream expected");
    };
    let follower = thread::spawn(move || read_body(&mut reader));
    let sent: Vec<u8> = (0..5000).map(|i| (i % 251) as u8).collect();
    for piece in sent.chunks(1000) {
        filler.body(piece);
    }
    assert_eq!(filler.finish().err(), Some(NotStored::TooLarge));
    let got = follower.join().expect("follower").expect("the whole body");
    assert_eq!(got, sent);
    assert_eq!(read(&cache.stats().stored), 0);
    assert_eq!(read(&cache.stats().fills_passed_on), 1);
    assert_eq!(read(&cache.stats().followers_let_go), 0);
    assert_eq!(cache.inflight_bytes(), 0, "the window's memory given back");
    assert_eq!(miss_kind(&cache, &get(chunked_url)), Fwd::UriMiss);
}

#[test]
fn fills_in_progress_share_a_bounded_amount_of_memory() {
    // Limit: a quarter of 64 KiB, at least the 16 KiB object limit.
    let cache = small_cache(64 << 10, 16 << 10, None);
    let mut first = lead(&cache, &get("http://h/one"));
    let mut second = lead(&cache, &get("http://h/two"));
    for (filler, url) in [(&mut first, "http://h/one"), (&mut second, "http://h/two")] {
        ok_head(filler, &get(url), &[MAX_AGE]).expect("storable");
    }
    first.body(&[1; 12 << 10]);
    assert_eq!(cache.inflight_bytes(), 12 << 10);
    second.body(&[2; 12 << 10]);
    assert_eq!(second.finish().err(), Some(NotStored::Busy));
    first.finish().expect("the first fill is stored");
    assert_eq!(cache.inflight_bytes(), 0, "every reservation returned");
    let mut dropped = lead(&cache, &get("http://h/three"));
    ok_head(&mut dropped, &get("http://h/three"), &[MAX_AGE]).expect("storable");
    dropped.body(&[3; 1000]);
    drop(dropped);
    assert_eq!(cache.inflight_bytes(), 0);
}

#[test]
fn a_filler_that_panics_releases_its_followers() {
    let cache = small_cache(1 << 20, 64 << 10, None);
    let url = "http://h/panic";
    let filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    let crashed = thread::spawn(move || {
        let _filler = filler;
        panic!("the worker fetching the response panicked");
    });
    assert!(crashed.join().is_err());
    let Following::Released { why, .. } = follower.follow(&get(url)) else {
        panic!("nothing to stream from a filler that is gone");
    };
    // Released because the filler is gone, not because the wait ran out.
    assert_eq!(why, Release::FillerGone);
    assert_eq!(cache.fills_in_progress(), 0);
}

#[test]
fn a_fill_read_by_its_own_client_reserves_its_whole_body_first() {
    // Limit for fills in progress: a quarter of 256 KiB.
    let cache = small_cache(256 << 10, 64 << 10, None);
    let declared = |len: usize| headers(&[MAX_AGE, ("content-length", &len.to_string())]);
    let started = |url: &str, len: usize| {
        let mut filler = lead(&cache, &get(url));
        filler
            .response_head(&get(url), StatusCode::OK, &declared(len), SystemTime::now())
            .expect("storable");
        filler
    };
    let mut small = started("http://h/small", 1000);
    assert!(
        small.own_reader(&get("http://h/small"), 4096).is_none(),
        "shorter than the minimum"
    );
    drop(small);
    let mut large = started("http://h/large", 40 << 10);
    let mut own = large
        .own_reader(&get("http://h/large"), 4096)
        .expect("a reader for its client");
    assert_eq!(cache.inflight_bytes(), 40 << 10, "reserved up front");
    let mut other = started("http://h/other", 40 << 10);
    assert!(
        other.own_reader(&get("http://h/other"), 4096).is_none(),
        "no room for a second body"
    );
    drop(other);
    let body: Vec<u8> = (0..40 << 10).map(|i| (i % 251) as u8).collect();
    let receiving = thread::spawn(move || {
        for piece in body.chunks(1000) {
            large.body(piece);
        }
        large.finish().expect("stored");
    });
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut own, &mut got).expect("the body through the fill");
    receiving.join().expect("filler");
    assert_eq!(got.len(), 40 << 10);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(cache.inflight_bytes(), 0, "every reservation returned");
    let key = CacheKey::from_target("http://h/alone").expect("key");
    let mut alone = cache.fill_alone(key);
    let ask = get("http://h/alone");
    alone
        .response_head(&ask, StatusCode::OK, &declared(40 << 10), SystemTime::now())
        .expect("storable");
    assert!(
        alone.own_reader(&ask, 4096).is_none(),
        "nobody can follow it"
    );
}
