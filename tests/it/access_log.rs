//! Issue 14: the access log in a file of its own, in fetchproxy's, Squid's
//! or Apache's combined format, reopened on SIGHUP and SIGUSR1 so that
//! logrotate can rename it. Through the real binary, signals sent by PID.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    Origin, ProxyProcess, Reply, curl, metric, run_binary_within, scrape_metrics, wait_until,
};

const LIMIT: Duration = Duration::from_secs(20);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the file at `path` has `n` lines (the log is flushed within
/// a fraction of a second), and returns them.
fn wait_for_lines(path: &Path, n: usize, proxy: &ProxyProcess) -> Vec<String> {
    let arrived = wait_until(LIMIT, || lines(path).len() >= n);
    assert!(
        arrived,
        "{} has {:?}, expected {n} lines; log:\n{}",
        path.display(),
        lines(path),
        proxy.log().join("\n")
    );
    lines(path)
}

fn start(dir: &Path, format: &str) -> (ProxyProcess, PathBuf) {
    start_with(dir, format, &[])
}

/// As `start`, with more flags.
fn start_with(dir: &Path, format: &str, flags: &[&str]) -> (ProxyProcess, PathBuf) {
    let path = dir.join("access.log");
    let mut args = vec![
        "--allow-dest",
        "127.0.0.1",
        "--access-log",
        path.to_str().expect("UTF-8 temp path"),
        "--access-log-format",
        format,
    ];
    args.extend_from_slice(flags);
    let proxy = ProxyProcess::start(&args);
    (proxy, path)
}

fn get_ok(proxy: &ProxyProcess, url: &str) {
    let reply = curl(proxy.addr, url, &[]);
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\nlog:\n{}",
        proxy.log().join("\n")
    );
}

/// Renames the log away, signals, waits for the `n`th reopen, and checks
/// that the next request lands in a fresh file while the old one keeps its
/// lines.
fn rotate(proxy: &ProxyProcess, path: &Path, signal: &str, n: usize, url: &str) {
    let rotated = path.with_extension(format!("log.{n}"));
    let before = lines(path);
    std::fs::rename(path, &rotated).expect("rotate the log");
    proxy.signal(signal);
    let reopened = wait_until(LIMIT, || {
        proxy
            .log()
            .iter()
            .filter(|line| line.contains("reopened the access log"))
            .count()
            >= n
    });
    assert!(
        reopened,
        "no reopen after {signal}:\n{}",
        proxy.log().join("\n")
    );
    get_ok(proxy, url);
    let fresh = wait_for_lines(path, 1, proxy);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains(url), "{fresh:?}");
    assert_eq!(lines(&rotated), before, "the rotated file keeps its lines");
}

#[test]
fn squid_format_file_is_reopened_on_sighup_and_sigusr1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::fixed("text/plain", b"hello");
    let url = origin.url("/");
    let (mut proxy, path) = start(dir.path(), "squid");
    get_ok(&proxy, &url);
    let first = wait_for_lines(&path, 1, &proxy);
    let fields: Vec<&str> = first[0].split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{first:?}");
    let (secs, millis) = fields[0].split_once('.').expect("time.millis");
    assert!(
        secs.parse::<u64>().is_ok() && millis.len() == 3,
        "{first:?}"
    );
    assert!(fields[1].parse::<u64>().is_ok(), "elapsed ms: {first:?}");
    assert_eq!(
        &fields[2..],
        [
            "127.0.0.1",
            "TCP_MISS/200",
            "5",
            "GET",
            &url,
            "-",
            "HIER_DIRECT/127.0.0.1",
            "text/plain"
        ],
        "{first:?}"
    );
    // The access lines go to the file, not to standard error.
    assert!(
        !proxy.log().iter().any(|line| line.contains(&url)),
        "{}",
        proxy.log().join("\n")
    );

    rotate(&proxy, &path, "HUP", 1, &url);
    rotate(&proxy, &path, "USR1", 2, &url);
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn squid_format_marks_denials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::fixed("text/plain", b"hello");
    let (mut proxy, path) = start(dir.path(), "squid");
    let denied = origin.url("/").replace("127.0.0.1", "127.0.0.2");
    let reply = curl(proxy.addr, &denied, &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    let logged = wait_for_lines(&path, 1, &proxy);
    let fields: Vec<&str> = logged[0].split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{logged:?}");
    assert_eq!(fields[3], "TCP_DENIED/403", "{logged:?}");
    assert_eq!(
        &fields[5..],
        ["GET", &denied, "-", "HIER_NONE/-", "-"],
        "{logged:?}"
    );
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn squid_format_marks_the_proxys_own_answers_as_not_forwarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut proxy, path) = start(dir.path(), "squid");
    let url = "http://127.0.0.1:9/never-stored";
    let purge = curl(proxy.addr, url, &["-X", "PURGE"]);
    assert_eq!(purge.status, 404, "{purge:?}");
    let health = curl(
        proxy.addr,
        &format!("http://{}/healthz", proxy.addr),
        &["--noproxy", "*"],
    );
    assert_eq!(health.status, 200, "{health:?}");
    let logged = wait_for_lines(&path, 2, &proxy);
    for (line, method, status) in [(&logged[0], "PURGE", 404), (&logged[1], "GET", 200)] {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 10, "{logged:?}");
        assert_eq!(fields[3], format!("NONE/{status}"), "{logged:?}");
        assert_eq!(fields[5], method, "{logged:?}");
        assert_eq!(fields[8], "HIER_NONE/-", "{logged:?}");
    }
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn own_pages_answered_well_can_be_left_out_of_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| Reply::ok("text/plain", "hello"));
    let (mut proxy, path) = start_with(
        dir.path(),
        "fetchproxy",
        &["--access-log-own-pages", "errors"],
    );
    let own = |path: &str| format!("http://{}{path}", proxy.addr);
    // A health check and a scrape, straight and through the proxy itself:
    // left out.
    for page in ["/healthz", "/metrics"] {
        let straight = curl(proxy.addr, &own(page), &["--noproxy", "*"]);
        assert_eq!(straight.status, 200, "{straight:?}");
        let through = curl(proxy.addr, &own(page), &[]);
        assert_eq!(through.status, 200, "{through:?}");
    }
    // Counted all the same: once the counter has them, their requests are
    // done with, and a line of theirs would come before any line below.
    let counted = wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(&page, "fetchproxy_requests_total{code=\"200\"}").unwrap_or(0.0) >= 4.0
    });
    assert!(counted, "the four requests are counted");
    // What is not a page of its own, or not answered well, keeps its line.
    let purge = curl(
        proxy.addr,
        "http://127.0.0.1:9/never-stored",
        &["-X", "PURGE"],
    );
    assert_eq!(purge.status, 404, "{purge:?}");
    let unknown = curl(proxy.addr, &own("/nope"), &["--noproxy", "*"]);
    assert_eq!(unknown.status, 400, "{unknown:?}");
    get_ok(&proxy, &origin.url("/page"));
    let logged = wait_for_lines(&path, 3, &proxy);
    assert!(
        !logged
            .iter()
            .any(|line| line.contains("/healthz") || line.contains("/metrics")),
        "{logged:#?}"
    );
    // Each request's line is written once it is answered: two workers may
    // write theirs in either order.
    for wanted in [
        " PURGE http://127.0.0.1:9/never-stored 404 ",
        " GET /nope 400 ",
    ] {
        assert!(
            logged.iter().any(|line| line.contains(wanted)),
            "{wanted}: {logged:#?}"
        );
    }
    let page_url = origin.url("/page");
    assert!(
        logged.iter().any(|line| line.contains(&page_url)),
        "{logged:#?}"
    );
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

/// Asks the proxy for `url`, reads the head and some of the body, and
/// closes with the rest unread.
fn leave_mid_answer(proxy: &ProxyProcess, url: &str) {
    let mut stream = TcpStream::connect(proxy.addr).expect("connect to proxy");
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut got = 0;
    let mut buf = [0u8; 16 * 1024];
    while got < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the answer ended after {got} bytes"),
            Ok(n) => got += n,
        }
    }
}

#[test]
fn a_client_that_leaves_mid_answer_is_logged_as_aborted() {
    const LEN: u64 = 32 << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| Reply::HugeCacheable {
        len: LEN,
        chunked: false,
    });
    let (mut proxy, path) = start_with(dir.path(), "squid", &["--cache-max-object", "64MiB"]);
    let url = origin.url("/big");
    // Far more than the sockets between them hold: the proxy is still
    // writing when the client goes.
    leave_mid_answer(&proxy, &url);
    // Whole answers until one is a hit: the first request's fetch may
    // still be storing (it goes on without its client), or be read by
    // the next as it comes.
    let stored = wait_until(LIMIT, || {
        let reply = curl(proxy.addr, &url, &[]);
        assert_eq!(reply.status, 200, "{:?}", reply.header("cache-status"));
        reply
            .header("cache-status")
            .is_some_and(|s| s.contains("; hit"))
    });
    assert!(stored, "never stored; log:\n{}", proxy.log().join("\n"));
    leave_mid_answer(&proxy, &url);
    let logged = wait_until(LIMIT, || {
        lines(&path)
            .iter()
            .any(|l| l.contains(" TCP_HIT_ABORTED/200 "))
    });
    let lines = lines(&path);
    assert!(logged, "{lines:?}");
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (code, bytes): (&str, u64) = (fields[3], fields[4].parse().expect("bytes"));
        match code {
            "TCP_MISS_ABORTED/200" | "TCP_HIT_ABORTED/200" => assert!(bytes < LEN, "{lines:?}"),
            "TCP_MISS/200" | "TCP_CF_HIT/200" | "TCP_HIT/200" => {
                assert_eq!(bytes, LEN, "{lines:?}")
            }
            _ => panic!("{code}: {lines:?}"),
        }
    }
    let count = |code: &str| lines.iter().filter(|l| l.contains(code)).count();
    assert_eq!(count(" TCP_MISS_ABORTED/200 "), 1, "{lines:?}");
    assert_eq!(count(" TCP_HIT_ABORTED/200 "), 1, "{lines:?}");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(metric(&page, "fetchproxy_client_aborts_total"), Some(2.0));
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn combined_format_is_apaches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::fixed("text/plain", b"hello");
    let url = origin.url("/");
    let (mut proxy, path) = start(dir.path(), "combined");
    get_ok(&proxy, &url);
    let logged = wait_for_lines(&path, 1, &proxy);
    let line = &logged[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    // [10/Oct/2000:13:55:36 +0000]
    let time = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(time, _)| time)
        .expect("a [time]");
    assert_eq!(time.len(), 26, "{time}");
    assert!(time.ends_with(" +0000"), "{time}");
    assert!(
        line.contains(&format!("] \"GET {url} HTTP/1.1\" 200 5 \"")),
        "{line}"
    );
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn fetchproxy_format_in_a_file_is_stamped_and_set_from_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::fixed("text/plain", b"hello");
    let url = origin.url("/");
    let path = dir.path().join("access.log");
    let config = dir.path().join("fetchproxy.toml");
    std::fs::write(
        &config,
        format!(
            "allow_dest = [\"127.0.0.1\"]\naccess_log = {:?}\n",
            path.to_str().expect("UTF-8 temp path")
        ),
    )
    .expect("write config");
    let mut proxy = ProxyProcess::start(&["--config", config.to_str().expect("UTF-8")]);
    get_ok(&proxy, &url);
    let logged = wait_for_lines(&path, 1, &proxy);
    let (time, rest) = logged[0].split_once(' ').expect("a time first");
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert!(rest.starts_with("127.0.0.1:"), "{rest}");
    assert!(rest.contains(&format!(" GET {url} 200 5 ")), "{rest}");
    assert!(rest.ends_with(" error=- cache=MISS"), "{rest}");
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn an_access_log_that_cannot_be_opened_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-such-dir").join("access.log");
    let shown = path.to_str().expect("UTF-8 temp path");
    let output = run_binary_within(
        &["serve", "--listen", "127.0.0.1:0", "--access-log", shown],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("fetchproxy: cannot open the access log {shown}: ")),
        "{stderr}"
    );
}
