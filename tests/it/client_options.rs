//! The fetch client's request options and outputs through the real binary:
//! `-H` and `-A` reaching the origin (and refused where they would break
//! the exchange), and `--stdout` and `-O -`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::client::{count_requests, files, run_fetch, site};
use crate::support::{Origin, Proxy, Reply, run_binary_within};

const LIMIT: Duration = Duration::from_secs(60);

/// `fetchproxy fetch --proxy PROXY ARGS...` run in `dir`, all output kept.
fn fetch_in(dir: &Path, proxy: &Proxy, args: &[&str]) -> Output {
    let mut all = vec!["fetch", "--timeout", "30s", "--proxy"];
    let addr = proxy.addr.to_string();
    all.push(&addr);
    all.extend_from_slice(args);
    let child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(&all)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchproxy fetch");
    child.wait_with_output().expect("wait for fetchproxy fetch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn headers_and_user_agent_reach_the_origin() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[
            &origin.url("/a"),
            "-H",
            "X-Trace: abc 123",
            "--header",
            "Accept: application/json",
            "-H",
            "Cookie: session=1",
            "-A",
            "crawler/2.0 (+https://example.com/bot)",
        ],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.header("x-trace"), Some("abc 123"), "{request:?}");
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.header("cookie"), Some("session=1"));
    assert_eq!(
        request.header("user-agent"),
        Some("crawler/2.0 (+https://example.com/bot)")
    );

    // `-H 'Name:'` sends no such header, not even the default one.
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[&origin.url("/b"), "-H", "User-Agent:", "-H", "Accept:"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let request = origin
        .requests()
        .into_iter()
        .find(|r| r.target == "/b")
        .expect("request for /b");
    assert_eq!(request.header("user-agent"), None, "{request:?}");
    assert_eq!(request.header("accept"), None, "{request:?}");

    // Without either, fetch says who it is.
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(proxy.addr, dir.path(), &[&origin.url("/c")], None);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let request = origin
        .requests()
        .into_iter()
        .find(|r| r.target == "/c")
        .expect("request for /c");
    assert_eq!(
        request.header("user-agent"),
        Some(format!("fetchproxy/{}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn a_user_agent_with_a_line_break_is_refused_before_anything_is_sent() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    for agent in [
        "ua\r\nX-Injected: yes",
        "ua\r\n\r\nGET http://127.0.0.1:9/ HTTP/1.1",
    ] {
        let ran = run_fetch(
            proxy.addr,
            dir.path(),
            &[&origin.url("/a"), "-A", agent],
            None,
        );
        assert_eq!(ran.code, Some(2), "{}", ran.stderr);
        assert!(ran.stderr.contains("control character"), "{}", ran.stderr);
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

#[test]
fn an_origin_credential_is_not_sent_to_another_origin_after_a_redirect() {
    let other = Origin::fixed("text/plain", b"elsewhere");
    let target = other.url("/landing");
    let first = Origin::start(move |_| Reply::Full {
        status: 302,
        headers: vec![("Location".into(), target.clone())],
        body: Vec::new(),
    });
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[
            &first.url("/go"),
            "-H",
            "Authorization: Bearer secret-token",
            "-H",
            "X-Kept: yes",
        ],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let at_first = &first.requests()[0];
    assert_eq!(
        at_first.header("authorization"),
        Some("Bearer secret-token")
    );
    let at_other = &other.requests()[0];
    assert_eq!(at_other.header("authorization"), None, "{at_other:?}");
    assert_eq!(at_other.header("x-kept"), Some("yes"));
}

#[test]
fn headers_that_would_break_the_exchange_are_refused() {
    for (header, says) in [
        ("Connection: close", "Connection is a hop-by-hop header"),
        ("Transfer-Encoding: chunked", "hop-by-hop"),
        ("Proxy-Authorization: Basic eDp5", "--proxy-user"),
        ("Host: elsewhere.example", "Host comes from the URL"),
        ("Content-Length: 5", "fetch sends none"),
        ("X-Bad Name: v", "is not a header name"),
        ("no colon here", "expected 'Name: value'"),
    ] {
        let out = run_binary_within(
            &[
                "fetch",
                "--proxy",
                "127.0.0.1:9",
                "-H",
                header,
                "http://a.example/",
            ],
            LIMIT,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{header}: {stderr}");
        assert!(stderr.contains("--header"), "{header}: {stderr}");
        assert!(stderr.contains(says), "{header}: {stderr}");
    }
}

#[test]
fn stdout_writes_the_body_and_nothing_else() {
    let origin = site();
    let proxy = Proxy::start();
    for flag in [&["--stdout"][..], &["-O", "-"][..]] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = flag.to_vec();
        let url = origin.url("/notes.txt");
        args.push(&url);
        let out = fetch_in(dir.path(), &proxy, &args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flag:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.stdout, b"chunked notes\n".repeat(1000), "{flag:?}");
        assert_eq!(text(&out.stderr), "", "{flag:?}");
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }

    // Redirects are followed; a non-2xx answer writes nothing.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fetch_in(dir.path(), &proxy, &["--stdout", &origin.url("/old")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"<p>intro</p>");
    let out = fetch_in(dir.path(), &proxy, &["--stdout", &origin.url("/missing")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        format!("failed {}: HTTP 404 Not Found\n", origin.url("/missing"))
    );
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert_eq!(count_requests(&origin, "/missing"), 1);
}

#[test]
fn stdout_read_in_part_by_a_reader_that_leaves_is_no_failure() {
    // `fetchproxy fetch --stdout URL | head -c 10`: the reader closes the
    // pipe long before the 8 MiB body is written.
    let origin = Origin::start(|_| Reply::Huge { len: 8 << 20 });
    let proxy = Proxy::start();
    let addr = proxy.addr.to_string();
    let url = origin.url("/big");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .args([
            "fetch",
            "--timeout",
            "30s",
            "--proxy",
            &addr,
            "--stdout",
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchproxy fetch");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the first bytes");
    drop(stdout);
    let out = child.wait_with_output().expect("wait for fetchproxy fetch");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn stdout_takes_exactly_one_url() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fetch_in(
        dir.path(),
        &proxy,
        &["--stdout", &origin.url("/"), &origin.url("/data")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "fetchproxy: --stdout writes the body of one URL given as an argument; 2 given\n"
    );
    let out = fetch_in(dir.path(), &proxy, &["-O", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("0 given"),
        "{}",
        text(&out.stderr)
    );
    let out = fetch_in(dir.path(), &proxy, &["-O", "page.html", &origin.url("/")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("only '-' (standard output) is taken; files go to --out-dir"),
        "{}",
        text(&out.stderr)
    );
    let out = fetch_in(dir.path(), &proxy, &["--stdout", "-i", "urls.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
    assert!(origin.requests().is_empty());
    assert!(files(dir.path()).is_empty());
}

#[test]
fn a_url_over_its_time_limit_fails_and_says_which_limit() {
    let origin = Origin::start(|_| Reply::Silent);
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = proxy.addr.to_string();
    let url = origin.url("/silent");
    let child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(["fetch", "--timeout", "1s", "--proxy", &addr, &url])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchproxy fetch");
    let out = child.wait_with_output().expect("wait for fetchproxy fetch");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("timed out: the time limit for the URL (--timeout) passed"),
        "{}",
        text(&out.stderr)
    );
}
