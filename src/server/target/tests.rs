//! Unit tests of routing decisions, on heads parsed from bytes.

use super::*;
use crate::config::ServeConfig;
use crate::http::request::{HeadLimits, Parsed, parse_head};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 64 * 1024,
    max_url_bytes: 8 * 1024,
};

fn head(text: &str) -> RequestHead {
    match parse_head(text.as_bytes(), &LIMITS) {
        Ok(Parsed::Complete { head, .. }) => head,
        other => panic!("{text:?}: {other:?}"),
    }
}

fn route(text: &str) -> Result<Route, ProxyError> {
    let rules = Rules::from_config(&ServeConfig::default());
    check_target(&head(text), &rules, None)
}

#[test]
fn own_endpoints_are_routed_by_method_and_path() {
    for (text, endpoint) in [
        (
            "GET /healthz HTTP/1.1\r\nHost: p\r\n\r\n",
            Endpoint::Healthz,
        ),
        (
            "HEAD /healthz?x=1 HTTP/1.1\r\nHost: p\r\n\r\n",
            Endpoint::Healthz,
        ),
        (
            "GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n",
            Endpoint::Metrics,
        ),
        (
            "OPTIONS http://h/ HTTP/1.1\r\nHost: h\r\nMax-Forwards: 0\r\n\r\n",
            Endpoint::Options,
        ),
    ] {
        assert!(
            matches!(route(text), Ok(Route::Own(e)) if e == endpoint),
            "{text:?}"
        );
    }
    for (text, says) in [
        (
            "POST /healthz HTTP/1.1\r\nHost: p\r\n\r\n",
            "/healthz answers GET and HEAD, not POST",
        ),
        (
            "POST /metrics?x HTTP/1.1\r\nHost: p\r\n\r\n",
            "/metrics answers GET and HEAD, not POST",
        ),
        (
            "GET /other HTTP/1.1\r\nHost: p\r\n\r\n",
            "/other is not an endpoint of the proxy",
        ),
        (
            "PURGE /cache/a HTTP/1.1\r\nHost: p\r\n\r\n",
            "send an absolute URL: PURGE http://host/path",
        ),
    ] {
        let err = route(text).expect_err(text);
        // A page of the proxy's asked with another method is a 405.
        let status = if says.contains("answers GET and HEAD") {
            405
        } else {
            400
        };
        assert_eq!(err.status(), status, "{text:?}");
        assert_eq!(err.allow().is_some(), status == 405, "{text:?}");
        assert!(err.to_string().contains(says), "{text:?}: {err}");
    }
}

#[test]
fn absolute_urls_are_forwarded_with_their_port() {
    for (text, port) in [
        ("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 80),
        ("GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 443),
        ("GET http://h:8080/x HTTP/1.1\r\nHost: h\r\n\r\n", 8080),
        ("GET http://h:/x HTTP/1.1\r\nHost: h\r\n\r\n", 80),
        ("GET http://u:p@h:8080/x HTTP/1.1\r\nHost: h\r\n\r\n", 8080),
    ] {
        match route(text) {
            Ok(Route::Forward(origin)) => {
                assert_eq!(upstream::host_and_port(&origin.uri).1, port, "{text:?}");
                assert!(!origin.uri.to_string().contains('@'), "{text:?}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

/// Issue 11 (4): a bad port is a bad request, and nothing is dialled.
#[test]
fn issue_11_bad_ports_are_400_not_a_connection_to_port_80() {
    for url in [
        "http://127.0.0.1:-1/",
        "http://host:99999/",
        "http://host:0/",
        "http://host:8o/",
        "http://[::1]:70000/",
        "http://[::1]x:8081/",
        "http://[::1]:8081x/",
    ] {
        let err = route(&format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n")).expect_err(url);
        assert_eq!(
            (err.status(), err.proxy_status()),
            (400, "http_request_error"),
            "{url}"
        );
    }
}

#[test]
fn a_port_with_leading_zeros_is_forwarded_as_its_number() {
    for (url, authority) in [
        ("http://h:08080/x", "h:8080"),
        ("http://u@h:0008080/x", "h:8080"),
        ("http://[2606:4700::1]:08081/x", "[2606:4700::1]:8081"),
        ("http://h:080/x", "h:80"),
    ] {
        match route(&format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n")) {
            Ok(Route::Forward(origin)) => {
                let uri = &origin.uri;
                assert_eq!(
                    uri.authority().map(|a| a.as_str()),
                    Some(authority),
                    "{url}"
                );
                assert_eq!(uri.path(), "/x", "{url}");
                let host = upstream::host_header(uri);
                assert_eq!(host, Some(authority.trim_end_matches(":80")), "{url}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

/// A literal address is refused here, before the cache and without DNS,
/// as the rules stand now; a name waits for what it resolves to.
#[test]
fn literal_addresses_outside_the_rules_are_refused_before_the_cache() {
    for (url, addr) in [
        ("http://10.1.2.3/x", "10.1.2.3"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        ("http://[::1]:8080/x", "::1"),
        ("https://127.0.0.1:8443/x", "127.0.0.1"),
        ("http://[::ffff:10.0.0.1]/x", "::ffff:10.0.0.1"),
        ("http://127.1/x", "127.0.0.1"),
        ("http://2130706433/x", "127.0.0.1"),
        ("http://0x7f.1/x", "127.0.0.1"),
        ("http://0177.0.0.1/x", "127.0.0.1"),
    ] {
        match route(&format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n")) {
            Err(ProxyError::DestinationDenied { addr: denied }) => {
                assert_eq!(denied.to_string(), addr, "{url}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    let allowing = Rules::from_config(&ServeConfig {
        allow_dest: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..ServeConfig::default()
    });
    let allowed = check_target(
        &head("GET http://10.1.2.3/x HTTP/1.1\r\nHost: h\r\n\r\n"),
        &allowing,
        None,
    );
    assert!(matches!(allowed, Ok(Route::Forward(_))), "{allowed:?}");
    for url in [
        "http://internal.example/x",
        "http://deadbeef/x",
        "http://1.2.3.4.example/x",
    ] {
        let named = route(&format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(matches!(named, Ok(Route::Forward(_))), "{url}: {named:?}");
    }
}

/// The proxy's own pages, asked for through the proxy itself, are served
/// rather than refused as a loop (or answered 405 for another method, as
/// straight); any other URL of its own is a loop.
#[test]
fn own_pages_asked_through_the_proxy_are_served() {
    let rules = Rules::from_config(&ServeConfig::default());
    let local: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    let through = |text: &str| check_target(&head(text), &rules, Some(local));
    assert!(matches!(
        through("GET http://127.0.0.1:8080/healthz HTTP/1.1\r\nHost: h\r\n\r\n"),
        Ok(Route::Own(Endpoint::Healthz))
    ));
    assert!(matches!(
        through("HEAD http://127.0.0.1:8080/metrics?x HTTP/1.1\r\nHost: h\r\n\r\n"),
        Ok(Route::Own(Endpoint::Metrics))
    ));
    assert!(matches!(
        through("GET http://127.0.0.1:8080/other HTTP/1.1\r\nHost: h\r\n\r\n"),
        Err(ProxyError::LoopDetected)
    ));
    let other_method = through("POST http://127.0.0.1:8080/healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect_err("POST");
    assert_eq!(other_method.status(), 405, "{other_method}");
    assert_eq!(other_method.allow(), Some("GET, HEAD"));
    // Its own port need not be one that requests may be forwarded to.
    let web_only = Rules::from_config(&ServeConfig {
        dest_ports: vec!["80".parse().expect("port")],
        ..ServeConfig::default()
    });
    assert!(matches!(
        check_target(
            &head("GET http://127.0.0.1:8080/healthz HTTP/1.1\r\nHost: h\r\n\r\n"),
            &web_only,
            Some(local)
        ),
        Ok(Route::Own(Endpoint::Healthz))
    ));
}

#[test]
fn ports_outside_dest_ports_are_refused() {
    let err = route("GET http://h:25/ HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("port 25");
    assert_eq!(
        (err.status(), err.proxy_status()),
        (403, "http_request_denied")
    );
}

#[test]
fn methods_and_schemes_that_are_not_forwarded_are_refused() {
    let err = route("TRACE http://h/ HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("TRACE");
    assert_eq!(err.status(), 501);
    let err = route("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("ftp");
    assert_eq!(err.status(), 400);
    let err = route("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("*");
    assert_eq!(err.status(), 400);
}

#[test]
fn options_for_a_whole_server_goes_up_as_an_asterisk() {
    // RFC 9112 §3.2.4: an empty path and no query; the last proxy sends `*`.
    for target in ["http://h", "http://h:8080", "http://user@h:8080"] {
        let text = format!("OPTIONS {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let Ok(Route::Forward(origin)) = route(&text) else {
            panic!("{target}: forwarded");
        };
        assert_eq!(
            origin.uri.path_and_query().map(|p| p.as_str()),
            Some("*"),
            "{target}"
        );
        assert!(origin.uri.authority().is_some(), "{target}");
    }
    // A path, even `/`, or a query, is a resource; other methods keep `/`.
    for text in [
        "OPTIONS http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "OPTIONS http://h?x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let Ok(Route::Forward(origin)) = route(text) else {
            panic!("{text:?}: forwarded");
        };
        assert_ne!(origin.uri.path(), "*", "{text:?}");
    }
}

#[test]
fn extension_methods_are_forwarded_and_purge_stays_here() {
    for method in ["M-SEARCH", "PROPFIND", "BREW", "LINK"] {
        let text = format!("{method} http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(route(&text), Ok(Route::Forward(_))), "{method}");
    }
    assert!(matches!(
        route("PURGE http://h/a HTTP/1.1\r\nHost: h\r\n\r\n"),
        Ok(Route::Purge)
    ));
    let err = route("PURGE ftp://h/a HTTP/1.1\r\nHost: h\r\n\r\n").expect_err("ftp");
    assert_eq!(err.status(), 400);
}

#[test]
fn connect_targets_need_host_and_port() {
    assert_eq!(
        split_authority("example.com:443").expect("valid"),
        ("example.com", 443)
    );
    assert_eq!(
        split_authority("[::1]:8443").expect("valid"),
        ("[::1]", 8443)
    );
    for bad in [
        "example.com",
        "example.com:",
        ":443",
        "example.com:0",
        "a:99999",
        "u@h:443",
    ] {
        assert!(split_authority(bad).is_err(), "{bad}");
    }
}

#[test]
fn connect_is_routed_to_allowed_ports_only() {
    match route("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n") {
        Ok(Route::Tunnel(target)) => {
            assert_eq!(
                target,
                TunnelTarget {
                    host: "h".into(),
                    port: 443
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let err = route("CONNECT h:25 HTTP/1.1\r\nHost: h:25\r\n\r\n").expect_err("port 25");
    assert_eq!(
        (err.status(), err.proxy_status()),
        (403, "http_request_denied")
    );
}

#[test]
fn urls_naming_the_proxy_own_socket_are_recognised() {
    let local: SocketAddr = "127.0.0.1:8080".parse().expect("address");
    for (host, port) in [("127.0.0.1", 8080), ("127.1", 8080), ("0.0.0.0", 8080)] {
        assert!(targets_this_proxy(host, port, local), "{host}:{port}");
    }
    for (host, port) in [("127.0.0.1", 8081), ("127.0.0.2", 8080), ("[::1]", 8080)] {
        assert!(!targets_this_proxy(host, port, local), "{host}:{port}");
    }
}
