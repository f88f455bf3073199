//! What one client sends must never become another's answer: a field the
//! request names in `Connection` (dropped on the way up) cannot key a
//! variant, a 304 that makes an entry private takes it out of the shared
//! cache, a cookie the origin marks as one user's stays with that user,
//! and a POST's answer is stored only under the URL the origin was asked
//! for, as written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    cache_status, full_or_not_modified, get, reply_with, requests_for, revalidating_origin,
};
use crate::support::{Origin, Proxy, Reply};

#[test]
fn a_field_named_in_connection_keys_no_variant() {
    // The origin varies on Accept; the proxy drops a field the request
    // names in Connection, so the origin sees no Accept at all.
    let origin = Origin::start(|request| {
        let json = request
            .header("accept")
            .is_some_and(|accept| accept.contains("application/json"));
        reply_with(
            if json { "{\"json\":1}" } else { "<html>" },
            &[("Cache-Control", "public, max-age=600"), ("Vary", "Accept")],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/api");
    let crafted = get(
        proxy.addr,
        &url,
        &["-H", "Accept: application/json", "-H", "Connection: Accept"],
    );
    assert_eq!(crafted.text(), "<html>", "the origin never saw Accept");
    assert_eq!(
        cache_status(&crafted),
        "fetchproxy; fwd=bypass; fwd-status=200; detail=connection-field"
    );
    let victim = get(proxy.addr, &url, &["-H", "Accept: application/json"]);
    assert_eq!(victim.text(), "{\"json\":1}", "{victim:?}");
    assert!(cache_status(&victim).contains("fwd=uri-miss"), "{victim:?}");
    assert_eq!(requests_for(&origin, "/api").len(), 2);
}

#[test]
fn a_304_that_makes_an_entry_private_takes_it_out_of_the_shared_cache() {
    // Stored public and at once stale; a revalidation on behalf of a client
    // with a cookie is answered 304, now private, with the client's session.
    let origin = revalidating_origin(
        "shared page",
        &[("Cache-Control", "public, max-age=0")],
        &[
            ("Cache-Control", "private, max-age=60"),
            ("Set-Cookie", "session=alice-token"),
        ],
    );
    let proxy = Proxy::start();
    let url = origin.url("/page");
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let alice = get(proxy.addr, &url, &["-H", "Cookie: alice"]);
    assert_eq!(alice.text(), "shared page", "{alice:?}");
    assert_eq!(alice.header("set-cookie"), Some("session=alice-token"));
    // Bob would take a stale entry: there must be none to take.
    let bob = get(proxy.addr, &url, &["-H", "Cache-Control: max-stale=3600"]);
    assert_eq!(bob.text(), "shared page", "{bob:?}");
    assert_eq!(
        bob.header("set-cookie"),
        None,
        "alice's session leaked: {bob:?}"
    );
    assert!(cache_status(&bob).contains("fwd=uri-miss"), "{bob:?}");
}

#[test]
fn a_cookie_the_origin_marks_as_one_users_reaches_no_other() {
    // RFC 9111 §7.3: an origin that sets a session says so. `private`
    // keeps the response to its client; `no-cache="Set-Cookie"` and
    // `private="Set-Cookie"` keep only the cookie (§5.2.2.4, §5.2.2.7).
    let origin = Origin::start(|request| {
        let user = request.header("cookie").unwrap_or("nobody").to_string();
        let control = match request.target.as_str() {
            "/private" => "private, max-age=600",
            "/no-cache-cookie" => "max-age=600, no-cache=\"Set-Cookie\"",
            _ => "max-age=600, private=\"Set-Cookie\"",
        };
        reply_with(
            "same page for all",
            &[
                ("Cache-Control", control),
                ("Set-Cookie", &format!("session={user}")),
            ],
        )
    });
    let proxy = Proxy::start();
    for (path, page_shared) in [
        ("/private", false),
        ("/no-cache-cookie", true),
        ("/private-cookie", true),
    ] {
        let url = origin.url(path);
        let alice = get(proxy.addr, &url, &["-H", "Cookie: alice"]);
        assert_eq!(alice.header("set-cookie"), Some("session=alice"), "{path}");
        let bob = get(proxy.addr, &url, &[]);
        assert_eq!(bob.text(), "same page for all", "{bob:?}");
        if page_shared {
            assert!(cache_status(&bob).contains("; hit"), "{path}: {bob:?}");
            assert_eq!(bob.header("set-cookie"), None, "{path}: leaked: {bob:?}");
            assert_eq!(requests_for(&origin, path).len(), 1, "{path}");
        } else {
            assert_eq!(bob.header("set-cookie"), Some("session=nobody"));
            assert_eq!(requests_for(&origin, path).len(), 2, "{path}");
        }
    }
}

#[test]
fn a_cookie_a_304_names_in_no_cache_reaches_only_its_client() {
    // Rolling sessions: the origin sets the cookie again on the 304.
    let origin = revalidating_origin(
        "shared page",
        &[("Cache-Control", "max-age=0")],
        &[
            ("Cache-Control", "max-age=600, no-cache=\"Set-Cookie\""),
            ("Set-Cookie", "session=alice-token"),
        ],
    );
    let proxy = Proxy::start();
    let url = origin.url("/rolling");
    get(proxy.addr, &url, &[]);
    let alice = get(proxy.addr, &url, &["-H", "Cookie: alice"]);
    assert!(cache_status(&alice).contains("fwd-status=304"), "{alice:?}");
    assert_eq!(alice.header("set-cookie"), Some("session=alice-token"));
    // The entry was refreshed for everyone, without Alice's session.
    let bob = get(proxy.addr, &url, &[]);
    assert!(cache_status(&bob).contains("; hit"), "{bob:?}");
    assert_eq!(bob.text(), "shared page");
    assert_eq!(
        bob.header("set-cookie"),
        None,
        "alice's session leaked: {bob:?}"
    );
}

#[test]
fn a_post_answer_is_stored_only_under_the_url_as_written() {
    // The origin says its POST answer is a representation of the target it
    // was sent, as written (Content-Location), fresh for a while.
    let posted = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&posted);
    let origin = Origin::start(move |request| {
        if request.method == "POST" {
            seen.store(true, Ordering::SeqCst);
        }
        reply_with(
            &format!("{} for {}", request.method, request.target),
            &[
                ("Cache-Control", "max-age=999"),
                ("Content-Location", &request.target),
            ],
        )
    });
    let proxy = Proxy::start();
    for crafted in ["/x/%2e%2e/victim/b", "/x/../victim/b", "/victim/./b"] {
        let post = get(
            proxy.addr,
            &origin.url(crafted),
            &["--path-as-is", "-X", "POST", "--data", "x"],
        );
        assert_eq!(post.text(), format!("POST for {crafted}"), "{post:?}");
    }
    assert!(posted.load(Ordering::SeqCst));
    let victim = get(proxy.addr, &origin.url("/victim/b"), &[]);
    assert_eq!(victim.text(), "GET for /victim/b", "{victim:?}");
    assert!(cache_status(&victim).contains("fwd=uri-miss"), "{victim:?}");
}

#[test]
fn a_failed_post_does_not_become_the_answer_to_gets() {
    // The origin labels its error answers to a POST as the URL's content
    // (Content-Location, fresh): only a 2xx is the resource's content.
    let origin = Origin::start(|request| {
        if request.method == "POST" {
            let status = request
                .target
                .trim_start_matches("/p")
                .parse()
                .unwrap_or(500);
            return Reply::Full {
                status,
                headers: vec![
                    ("Cache-Control".into(), "max-age=100".into()),
                    ("Content-Location".into(), request.target.clone()),
                ],
                body: format!("post failed {status}").into_bytes(),
            };
        }
        reply_with(
            &format!("page {}", request.target),
            &[("Cache-Control", "max-age=100")],
        )
    });
    let proxy = Proxy::start();
    for status in [400, 409, 500, 303] {
        let url = origin.url(&format!("/p{status}"));
        let before = get(proxy.addr, &url, &[]);
        assert_eq!(before.text(), format!("page /p{status}"), "{before:?}");
        let post = get(proxy.addr, &url, &["-X", "POST", "--data", "x"]);
        assert_eq!(post.status, status, "{post:?}");
        let after = get(proxy.addr, &url, &[]);
        assert_eq!(after.status, 200, "{after:?}");
        assert_eq!(after.text(), format!("page /p{status}"), "{after:?}");
    }
}

#[test]
fn a_cookie_set_without_a_lifetime_of_its_own_reaches_only_its_client() {
    // Frameworks set a session on the first visit of a page that has no
    // lifetime (a Last-Modified, or `no-cache` and an ETag) and revalidate
    // it on every use. Shared, the first visitor's session would be every
    // later visitor's: by heuristic freshness, or with each revalidation's
    // 304.
    let origin = Origin::start(|request| {
        let validated = request.header("if-none-match") == Some("\"home\"");
        let control = match request.target.as_str() {
            "/no-cache" => "no-cache",
            "/expired" => "max-age=0",
            _ => "",
        };
        let mut headers = vec![
            ("ETag".to_string(), "\"home\"".to_string()),
            (
                "Last-Modified".to_string(),
                "Wed, 01 Jan 2020 00:00:00 GMT".to_string(),
            ),
        ];
        if !control.is_empty() {
            headers.push(("Cache-Control".to_string(), control.to_string()));
        }
        if request.header("cookie").is_none() {
            let user = format!("session=for-{}", request.header("x-user").unwrap_or("?"));
            headers.push(("Set-Cookie".to_string(), user));
        }
        full_or_not_modified(validated, headers, "home")
    });
    let proxy = Proxy::start();
    for path in ["/heuristic", "/no-cache", "/expired"] {
        let url = origin.url(path);
        let first = get(proxy.addr, &url, &["-H", "X-User: alice"]);
        assert_eq!(
            first.header("set-cookie"),
            Some("session=for-alice"),
            "{path}"
        );
        assert!(
            cache_status(&first).contains("detail=sets-cookie"),
            "{path}: {first:?}"
        );
        // Bob, logged in already, is sent no one's session.
        let bob = get(proxy.addr, &url, &["-H", "Cookie: session=bob"]);
        assert_eq!(bob.text(), "home", "{path}: {bob:?}");
        assert_eq!(bob.header("set-cookie"), None, "{path}: leaked: {bob:?}");
        // Bob's answer set no cookie: it may be shared. Newcomers get it,
        // or, where it must be revalidated, a 304 with a session of their
        // own, which the next one is not sent.
        for user in ["carol", "dave"] {
            let reply = get(proxy.addr, &url, &["-H", &format!("X-User: {user}")]);
            assert_eq!(reply.text(), "home", "{path}: {reply:?}");
            let own = format!("session=for-{user}");
            let expected = (path != "/heuristic").then_some(own.as_str());
            assert_eq!(reply.header("set-cookie"), expected, "{path}: {reply:?}");
        }
    }
}

#[test]
fn a_cookie_with_a_lifetime_its_origin_gave_is_shared_as_rfc_9111_allows() {
    // `max-age` says the response, cookie and all, may be reused as it is
    // (RFC 9111 §3.1, §7.3): kept, as the public cache tests require.
    let origin = Origin::start(|_| {
        reply_with(
            "shared",
            &[("Cache-Control", "max-age=600"), ("Set-Cookie", "lang=en")],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/lang");
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let hit = get(proxy.addr, &url, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(hit.header("set-cookie"), Some("lang=en"));
    assert_eq!(requests_for(&origin, "/lang").len(), 1);
}

#[test]
fn a_cookie_a_304_sets_reaches_only_the_client_that_revalidated() {
    // A page stored without a cookie, stale at once; the origin's 304 to
    // Alice's revalidation sets her session. Bob's hit must not carry it.
    let origin = Origin::start(|request| {
        let validated = request.header("if-none-match") == Some("\"v1\"");
        let mut headers = vec![
            ("ETag".to_string(), "\"v1\"".to_string()),
            ("Cache-Control".to_string(), "max-age=600".to_string()),
        ];
        if validated {
            headers.push(("Set-Cookie".to_string(), "session=alice".to_string()));
        }
        full_or_not_modified(validated, headers, "page")
    });
    let proxy = Proxy::start();
    let url = origin.url("/page");
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let alice = get(proxy.addr, &url, &["-H", "Cache-Control: no-cache"]);
    assert!(cache_status(&alice).contains("fwd-status=304"), "{alice:?}");
    assert_eq!(alice.header("set-cookie"), Some("session=alice"));
    let bob = get(proxy.addr, &url, &[]);
    assert!(cache_status(&bob).contains("; hit"), "{bob:?}");
    assert_eq!(bob.text(), "page");
    assert_eq!(
        bob.header("set-cookie"),
        None,
        "alice's session leaked: {bob:?}"
    );
}

#[test]
fn a_post_answer_that_sets_a_cookie_is_not_kept_for_gets() {
    // A login answer, fresh as the site makes every page, naming itself.
    let origin = Origin::start(|request| {
        let mut headers = vec![
            ("Cache-Control", "max-age=300"),
            ("Content-Location", "/login"),
        ];
        if request.method == "POST" {
            headers.push(("Set-Cookie", "session=alice"));
        }
        reply_with(&format!("{} page", request.method), &headers)
    });
    let proxy = Proxy::start();
    let url = origin.url("/login");
    let login = get(proxy.addr, &url, &["-X", "POST", "--data", "user=alice"]);
    assert_eq!(login.header("set-cookie"), Some("session=alice"));
    let next = get(proxy.addr, &url, &[]);
    assert_eq!(next.text(), "GET page", "{next:?}");
    assert_eq!(
        next.header("set-cookie"),
        None,
        "alice's session leaked: {next:?}"
    );
}

#[test]
fn a_304_that_takes_away_a_cookies_lifetime_takes_the_cookie_from_the_entry() {
    // Stored with a lifetime and a cookie (shared, as its origin said);
    // once stale, the 304 says `no-cache`: others must not get the cookie
    // on every revalidation from then on.
    let origin = Origin::start(|request| {
        if request.header("if-none-match") == Some("\"v1\"") {
            return Reply::Full {
                status: 304,
                headers: vec![
                    ("ETag".into(), "\"v1\"".into()),
                    ("Cache-Control".into(), "no-cache".into()),
                ],
                body: Vec::new(),
            };
        }
        reply_with(
            "page",
            &[
                ("ETag", "\"v1\""),
                ("Cache-Control", "max-age=1"),
                ("Set-Cookie", "lang=en"),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/page");
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let refreshed = get(proxy.addr, &url, &["-H", "Cache-Control: no-cache"]);
    assert!(
        cache_status(&refreshed).contains("fwd-status=304"),
        "{refreshed:?}"
    );
    let later = get(proxy.addr, &url, &[]);
    assert!(cache_status(&later).contains("fwd-status=304"), "{later:?}");
    assert_eq!(later.text(), "page");
    assert_eq!(later.header("set-cookie"), None, "{later:?}");
}
