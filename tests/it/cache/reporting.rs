//! How the cache reports itself and is managed: PURGE from allowed and
//! other clients, the cache's counters and gauges on `/metrics`, and the
//! outcome of every request in the access log (fetchproxy's word and
//! Squid's result code).

use std::path::Path;

use super::{LIMIT, cache_status, fresh_origin, get, revalidating_origin};
use crate::support::{Proxy, ProxyProcess, metric, scrape_metrics, wait_until};

#[test]
fn purge_from_an_allowed_client_removes_every_variant() {
    let origin = crate::support::Origin::start(|request| {
        let language = request.header("accept-language").unwrap_or("none");
        super::reply_with(
            language,
            &[
                ("Cache-Control", "max-age=3600"),
                ("Vary", "Accept-Language"),
            ],
        )
    });
    let proxy = Proxy::start();
    let url = origin.url("/purged");
    for language in ["Accept-Language: en", "Accept-Language: fr"] {
        get(proxy.addr, &url, &["-H", language]);
    }
    let purged = get(proxy.addr, &url, &["-X", "PURGE"]);
    assert_eq!(purged.status, 200, "{purged:?}");
    let again = get(proxy.addr, &url, &["-X", "PURGE"]);
    assert_eq!(again.status, 404, "{again:?}");
    assert_eq!(again.text(), "not in the cache\n");
    for (language, miss) in [
        ("Accept-Language: en", "fwd=uri-miss"),
        ("Accept-Language: fr", "fwd=vary-miss"),
    ] {
        let reply = get(proxy.addr, &url, &["-H", language]);
        assert!(cache_status(&reply).contains(miss), "{reply:?}");
    }
    assert_eq!(origin.requests().len(), 4, "PURGE never reaches the origin");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(metric(&page, "fetchproxy_cache_purges_total"), Some(1.0));
}

#[test]
fn purge_with_caching_off_says_so() {
    let origin = fresh_origin("kept");
    let proxy = Proxy::with(|config| config.cache_mem = 0);
    let url = origin.url("/kept");
    get(proxy.addr, &url, &[]);
    let purged = get(proxy.addr, &url, &["-X", "PURGE"]);
    assert_eq!(purged.status, 404, "{purged:?}");
    assert!(
        purged.text().contains("caching is off"),
        "{}",
        purged.text()
    );
}

#[test]
fn purge_from_other_clients_is_403_with_proxy_status() {
    let origin = fresh_origin("kept");
    let proxy = Proxy::with(|config| {
        config.purge_clients = vec!["10.0.0.0/8".parse().expect("cidr")];
    });
    let url = origin.url("/kept");
    get(proxy.addr, &url, &[]);
    let denied = get(proxy.addr, &url, &["-X", "PURGE"]);
    assert_eq!(denied.status, 403, "{denied:?}");
    let proxy_status = denied.header("proxy-status").unwrap_or_default();
    assert!(
        proxy_status.contains("error=http_request_denied"),
        "{denied:?}"
    );
    assert!(
        denied.text().contains("--purge-client"),
        "{}",
        denied.text()
    );
    let still = get(proxy.addr, &url, &[]);
    assert!(cache_status(&still).contains("; hit"), "{still:?}");
}

#[test]
fn metrics_count_hits_misses_and_what_is_stored() {
    let origin = fresh_origin("0123456789");
    let proxy = Proxy::start();
    let url = origin.url("/counted");
    for _ in 0..3 {
        get(proxy.addr, &url, &[]);
    }
    get(proxy.addr, &url, &["-d", "x"]);
    let (_, page) = scrape_metrics(proxy.addr);
    let value = |name: &str| metric(&page, name).unwrap_or_else(|| panic!("{name}:\n{page}"));
    assert_eq!(value("fetchproxy_cache_misses_total"), 1.0);
    assert_eq!(value("fetchproxy_cache_hits_total"), 2.0);
    assert_eq!(
        value("fetchproxy_cache_disk_hits_total"),
        0.0,
        "memory hits"
    );
    assert_eq!(value("fetchproxy_cache_bypassed_total"), 1.0);
    assert_eq!(value("fetchproxy_cache_stored_total"), 1.0);
    assert_eq!(value("fetchproxy_cache_served_bytes_total"), 20.0);
    assert_eq!(value("fetchproxy_cache_invalidations_total"), 1.0);
    assert_eq!(value("fetchproxy_cache_urls{tier=\"memory\"}"), 0.0);
    assert_eq!(
        value("fetchproxy_cache_capacity_bytes{tier=\"memory\"}"),
        (256u64 << 20) as f64
    );
    assert_eq!(value("fetchproxy_cache_capacity_bytes{tier=\"disk\"}"), 0.0);
    assert_eq!(value("fetchproxy_cache_disk_index_loaded"), 1.0);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn the_access_log_names_each_outcome() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = revalidating_origin(
        "logged",
        &[
            ("Content-Type", "text/plain"),
            ("Cache-Control", "max-age=3600"),
        ],
        &[],
    );
    let url = origin.url("/logged");
    for (format, miss, hit, revalidated) in [
        (
            "fetchproxy",
            " cache=MISS",
            " cache=HIT",
            " cache=REVALIDATED",
        ),
        (
            "squid",
            " TCP_MISS/200 ",
            " TCP_HIT/200 ",
            " TCP_REFRESH_UNMODIFIED/200 ",
        ),
    ] {
        let path = dir.path().join(format!("{format}.log"));
        let mut proxy = ProxyProcess::start(&[
            "--allow-dest",
            "127.0.0.1",
            "--access-log",
            path.to_str().expect("UTF-8 temp path"),
            "--access-log-format",
            format,
        ]);
        get(proxy.addr, &url, &[]);
        get(proxy.addr, &url, &[]);
        let again = get(proxy.addr, &url, &["-H", "Cache-Control: no-cache"]);
        assert!(cache_status(&again).contains("fwd-status=304"), "{again:?}");
        let logged = wait_until(LIMIT, || lines(&path).len() >= 3);
        assert!(logged, "{:?}\n{}", lines(&path), proxy.log().join("\n"));
        let logged = lines(&path);
        assert!(logged[0].contains(miss), "{format}: {logged:?}");
        assert!(logged[1].contains(hit), "{format}: {logged:?}");
        assert!(logged[2].contains(revalidated), "{format}: {logged:?}");
        if format == "squid" {
            // The origin and the type on a miss and on a revalidation that
            // went there; no origin on a hit.
            assert!(
                logged[0].ends_with(" HIER_DIRECT/127.0.0.1 text/plain"),
                "{logged:?}"
            );
            assert!(logged[1].ends_with(" HIER_NONE/- text/plain"), "{logged:?}");
            assert!(
                logged[2].ends_with(" HIER_DIRECT/127.0.0.1 text/plain"),
                "{logged:?}"
            );
        }
        assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
    }
}

#[test]
fn cache_settings_that_cannot_work_exit_2_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let under_file = file.join("cache");
    let shown = under_file.to_str().expect("UTF-8 temp path");
    for (args, expected) in [
        (
            vec!["--cache-mem", "lots"],
            "'--cache-mem <SIZE>': expected a whole number of bytes or a size",
        ),
        (
            vec!["--cache-dir", shown, "--cache-mem", "0"],
            "needs cache_mem above 0",
        ),
        (
            vec!["--cache-dir", shown],
            "cannot start the cache: cache directory",
        ),
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(&args);
        let output = crate::support::run_binary_within(&all, LIMIT);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
