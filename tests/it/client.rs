//! The fetch client end to end: the real binary, through a running proxy, to
//! origins the tests start on 127.0.0.1. Checks files, manifest lines, stderr
//! and exit codes; never speed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{
    Gate, Origin, OriginRequest, Proxy, ProxyProcess, Reply, gated_origin, wait_until,
};

/// How a finished client run went.
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) stderr: String,
}

/// Starts `fetchproxy fetch --proxy PROXY --out-dir OUT ARGS...` with stdin piped.
pub(crate) fn spawn_fetch(proxy: SocketAddr, out: &Path, args: &[&str]) -> Child {
    fetch_command(proxy, out, args)
        .spawn()
        .expect("spawn fetchproxy fetch")
}

/// The `fetch` command `spawn_fetch` runs, to set more on it first.
pub(crate) fn fetch_command(proxy: SocketAddr, out: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fetchproxy"));
    command
        .args(["fetch", "--proxy", &proxy.to_string(), "--out-dir"])
        .arg(out)
        .args(["--timeout", "30s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Waits for a client up to 60 s (killing it then), collecting its stderr.
pub(crate) fn finish(mut child: Child, stdin: Option<&str>) -> Ran {
    if let Some(text) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(text.as_bytes()).expect("write client stdin");
    }
    drop(child.stdin.take());
    let mut pipe = child.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let mut code = None;
    let exited = wait_until(Duration::from_secs(60), || match child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ran {
        code,
        stderr: reader.join().unwrap_or_default(),
    }
}

pub(crate) fn run_fetch(proxy: SocketAddr, out: &Path, args: &[&str], stdin: Option<&str>) -> Ran {
    finish(spawn_fetch(proxy, out, args), stdin)
}

pub(crate) fn write_input(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("urls.txt");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write input file");
    path
}

pub(crate) fn manifest(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line is JSON"))
        .collect()
}

/// The last manifest line for each URL.
pub(crate) fn by_url(lines: &[Value]) -> HashMap<String, Value> {
    lines
        .iter()
        .map(|v| (v["url"].as_str().expect("url").to_string(), v.clone()))
        .collect()
}

pub(crate) fn files(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .expect("read out-dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(crate) fn temp_files(out: &Path) -> Vec<String> {
    files(out)
        .into_iter()
        .filter(|n| n.starts_with(".fetchproxy-tmp-"))
        .collect()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The latest line of each URL that names a file: that file exists and
/// has the recorded hash and size. (An older line's file may have been
/// changed by hand since, which is why a newer copy was saved.)
pub(crate) fn assert_files_match_manifest(out: &Path) {
    for line in by_url(&manifest(out)).into_values() {
        if let Some(file) = line["file"].as_str() {
            let bytes = std::fs::read(out.join(file)).expect("recorded file exists");
            assert_eq!(
                line["sha256"].as_str(),
                Some(sha256_hex(&bytes).as_str()),
                "{line}"
            );
            assert_eq!(line["bytes"].as_u64(), Some(bytes.len() as u64), "{line}");
        }
    }
}

pub(crate) fn count_requests(origin: &Origin, target: &str) -> usize {
    origin
        .requests()
        .iter()
        .filter(|r| r.target == target)
        .count()
}

pub(crate) fn prefix(origin: &Origin) -> String {
    format!("127.0.0.1_{}", origin.addr.port())
}

/// An origin with a few content types, a 404, redirects and a loop.
pub(crate) fn site() -> Origin {
    Origin::start(|req: &OriginRequest| match req.target.as_str() {
        "/" => Reply::ok("text/html", "<h1>home</h1>"),
        "/docs/intro" => Reply::ok("text/html; charset=utf-8", "<p>intro</p>"),
        "/data" => Reply::ok("application/json", "{\"a\":1}"),
        "/logo" => Reply::ok("image/png", vec![0x89, b'P', b'N', b'G', 0, 1, 2]),
        "/notes.txt" => Reply::Chunked {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"chunked notes\n".repeat(1000),
            piece: 777,
        },
        "/search?q=rust" => Reply::ok("text/html", "results"),
        "/old" => Reply::Full {
            status: 301,
            headers: vec![("Location".into(), "/docs/intro".into())],
            body: b"moved".to_vec(),
        },
        "/loop" => Reply::Full {
            status: 302,
            headers: vec![("Location".into(), "/loop2".into())],
            body: Vec::new(),
        },
        "/loop2" => Reply::Full {
            status: 302,
            headers: vec![("Location".into(), "/loop".into())],
            body: Vec::new(),
        },
        _ => Reply::status(404),
    })
}

#[test]
fn mixed_batch_saves_good_urls_and_reports_the_rest() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let input = write_input(
        dir.path(),
        &[
            "# pages to fetch".into(),
            origin.url("/"),
            String::new(),
            origin.url("/docs/intro"),
            origin.url("/data"),
            "   ".into(),
            origin.url("/logo"),
            origin.url("/notes.txt"),
            origin.url("/search?q=rust"),
            origin.url("/data"),
            "not a url".into(),
            "ftp://127.0.0.1/file".into(),
            origin.url("/missing"),
            "http://nohost.invalid/".into(),
            format!("http://127.0.0.1/{}", "x".repeat(9000)),
            origin.url("/old"),
        ],
    );
    let ran = run_fetch(
        proxy.addr,
        &out,
        &["--input", input.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);

    let p = prefix(&origin);
    let want = [
        format!("{p}.html"),
        format!("{p}_docs_intro.html"),
        format!("{p}_data.json"),
        format!("{p}_logo.png"),
        format!("{p}_notes.txt"),
    ];
    let present = files(&out);
    for name in &want {
        assert!(
            present.contains(name),
            "{name} missing from {present:?}\n{}",
            ran.stderr
        );
    }
    let query_file = present
        .iter()
        .find(|n| n.starts_with(&format!("{p}_search_")) && n.ends_with(".html"))
        .expect("file for the query URL");
    assert_eq!(query_file.len(), format!("{p}_search_abcdef.html").len());
    // The redirect lands on the intro page but is named after the URL given.
    assert!(present.contains(&format!("{p}_old.html")), "{present:?}");
    assert_eq!(
        std::fs::read(out.join(format!("{p}_notes.txt"))).expect("notes"),
        b"chunked notes\n".repeat(1000)
    );
    assert!(temp_files(&out).is_empty());

    let lines = manifest(&out);
    let urls = by_url(&lines);
    // 7 saved, 404 and DNS failure recorded; bad lines and the repeat are not URLs to record.
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert_eq!(
        count_requests(&origin, "/data"),
        1,
        "the repeated URL is fetched once"
    );
    let missing = &urls[&origin.url("/missing")];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["file"], Value::Null);
    assert!(missing["error"].as_str().is_some_and(|e| e.contains("404")));
    let dns = &urls["http://nohost.invalid/"];
    assert_eq!(dns["status"], 502, "{dns}");
    assert!(
        dns["error"].as_str().is_some_and(|e| e.contains("dns")),
        "{dns}"
    );
    let home = &urls[&origin.url("/")];
    assert_eq!(home["content_type"], "text/html");
    assert!(
        home["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{home}"
    );
    assert!(home["elapsed_ms"].is_u64());
    assert_eq!(home["error"], Value::Null);
    assert_files_match_manifest(&out);

    for line in [11, 12, 15] {
        assert!(
            ran.stderr.contains(&format!("line {line}:")),
            "line {line}: {}",
            ran.stderr
        );
    }
    assert!(
        ran.stderr.contains("unsupported scheme \"ftp\""),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("line 11: not a URL (a URL has no spaces or tabs"),
        "{}",
        ran.stderr
    );
    let repeat = format!("skipped line 10: {} (repeats line 5)", origin.url("/data"));
    assert!(ran.stderr.contains(&repeat), "{repeat}: {}", ran.stderr);
    assert!(
        ran.stderr
            .contains("fetched 7, skipped 1, failed 2 (and 3 bad inputs)"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_saved_file_replaced_by_a_fifo_or_a_link_is_fetched_again_not_read() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = tempfile::tempdir().expect("temp dir");
    let urls = [origin.url("/"), origin.url("/data")];
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();
    let first = run_fetch(proxy.addr, dir.path(), &args, None);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let p = prefix(&origin);
    let data = dir.path().join(format!("{p}_data.json"));
    // The link points at a copy with the right bytes: still not ours.
    let copy = outside.path().join("copy.json");
    std::fs::copy(&data, &copy).expect("copy");
    std::fs::remove_file(&data).expect("remove");
    std::os::unix::fs::symlink(&copy, &data).expect("symlink");
    let index = dir.path().join(format!("{p}.html"));
    std::fs::remove_file(&index).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&index)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let second = run_fetch(proxy.addr, dir.path(), &args, None);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains("fetched 2, skipped 0, failed 0"),
        "{}",
        second.stderr
    );
}

#[test]
fn rerun_skips_saved_urls_and_overwrite_fetches_them_again() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let urls = [origin.url("/"), origin.url("/data")];
    let args: Vec<&str> = urls.iter().map(String::as_str).collect();

    let first = run_fetch(proxy.addr, dir.path(), &args, None);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let second = run_fetch(proxy.addr, dir.path(), &args, None);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert!(
        second.stderr.contains("fetched 0, skipped 2, failed 0"),
        "{}",
        second.stderr
    );
    assert_eq!(count_requests(&origin, "/"), 1);
    assert_eq!(manifest(dir.path()).len(), 2, "skips add no lines");

    // A saved file changed by hand is no longer intact: fetched again, and
    // the changed file is kept.
    let p = prefix(&origin);
    std::fs::write(dir.path().join(format!("{p}_data.json")), "edited").expect("edit");
    let third = run_fetch(proxy.addr, dir.path(), &args, None);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert_eq!(count_requests(&origin, "/data"), 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(format!("{p}_data.json"))).expect("kept"),
        "edited"
    );
    assert!(dir.path().join(format!("{p}_data-2.json")).exists());

    let mut with_overwrite = args.clone();
    with_overwrite.push("--overwrite");
    let fourth = run_fetch(proxy.addr, dir.path(), &with_overwrite, None);
    assert_eq!(fourth.code, Some(0), "{}", fourth.stderr);
    assert_eq!(count_requests(&origin, "/"), 2);
    assert!(
        fourth.stderr.contains("fetched 2, skipped 0"),
        "{}",
        fourth.stderr
    );
    assert_eq!(files(dir.path()).len(), 4, "{:?}", files(dir.path()));
    // The copy the manifest last recorded is replaced; the file changed by
    // hand before it is still left alone.
    assert_eq!(
        std::fs::read_to_string(dir.path().join(format!("{p}_data.json"))).expect("kept"),
        "edited"
    );
    let latest = &by_url(&manifest(dir.path()))[&origin.url("/data")];
    assert_eq!(latest["file"], format!("{p}_data-2.json"), "{latest}");
    assert_files_match_manifest(dir.path());
}

#[test]
fn overwrite_replaces_a_urls_file_saved_under_another_name() {
    // An out-dir of an earlier version, which named this archive
    // `..._b.tar_8f0ba7.gz`; the name is `..._b_8f0ba7.tar.gz` now.
    let origin = Origin::start(|_| Reply::ok("application/gzip", "archive"));
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = origin.url("/pkg/b.tar.gz?version=2");
    let p = prefix(&origin);
    let (old, new) = (
        format!("{p}_pkg_b.tar_8f0ba7.gz"),
        format!("{p}_pkg_b_8f0ba7.tar.gz"),
    );
    let body = b"old archive";
    std::fs::write(dir.path().join(&old), body).expect("old file");
    let line = serde_json::json!({
        "url": url, "file": old, "status": 200, "bytes": body.len(),
        "content_type": "application/gzip",
        "sha256": format!("{:x}", Sha256::digest(body)),
        "elapsed_ms": 1, "request_id": null, "error": null,
    });
    std::fs::write(dir.path().join("manifest.jsonl"), format!("{line}\n")).expect("manifest");
    // A file of another URL's name stays whatever happens.
    std::fs::write(dir.path().join("unrelated.gz"), "mine").expect("other file");

    let ran = run_fetch(proxy.addr, dir.path(), &[&url, "--overwrite"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&new)).expect("the fresh copy"),
        "archive"
    );
    assert!(
        !dir.path().join(&old).exists(),
        "replaced: {:?}",
        files(dir.path())
    );
    assert!(
        ran.stderr.contains(&format!("{new} replaces {old}")),
        "{}",
        ran.stderr
    );
    assert!(dir.path().join("unrelated.gz").exists());
    assert_eq!(by_url(&manifest(dir.path()))[&url]["file"], new.as_str());
    assert_files_match_manifest(dir.path());
}

#[test]
fn a_pre_existing_file_is_never_overwritten() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = dir.path().join(format!("{}_data.json", prefix(&origin)));
    std::fs::write(&taken, "my own file").expect("write");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[&origin.url("/data"), "--overwrite"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(&taken).expect("read"),
        "my own file"
    );
    let line = &manifest(dir.path())[0];
    assert_eq!(line["file"], format!("{}_data-2.json", prefix(&origin)));
    assert_files_match_manifest(dir.path());
}

#[test]
fn interactive_mode_reads_urls_from_stdin_until_end_of_input() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let typed = format!(
        "{}\n\n# a comment\nnonsense\n{}\n",
        origin.url("/"),
        origin.url("/logo")
    );
    let ran = run_fetch(proxy.addr, dir.path(), &[], Some(&typed));
    assert_eq!(ran.code, Some(1), "the bad line counts: {}", ran.stderr);
    assert!(ran.stderr.contains("line 4:"), "{}", ran.stderr);
    let p = prefix(&origin);
    assert!(dir.path().join(format!("{p}.html")).exists());
    assert!(dir.path().join(format!("{p}_logo.png")).exists());

    // `--input -` reads stdin the same way.
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &["--input", "-"],
        Some(&format!("{}\n", origin.url("/data"))),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(manifest(dir.path()).len(), 1);
}

#[test]
fn redirects_are_followed_and_loops_detected() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[&origin.url("/old"), &origin.url("/loop")],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let urls = by_url(&manifest(dir.path()));
    let old = &urls[&origin.url("/old")];
    assert_eq!(old["status"], 200);
    let saved = std::fs::read_to_string(dir.path().join(old["file"].as_str().expect("file")))
        .expect("read");
    assert_eq!(saved, "<p>intro</p>");
    let looped = &urls[&origin.url("/loop")];
    assert!(
        looped["error"].as_str().is_some_and(|e| e.contains("loop")),
        "{looped}"
    );
    // Each hop went through the proxy: the origin saw every one.
    assert_eq!(count_requests(&origin, "/loop2"), 1);
}

#[test]
fn a_redirect_without_a_location_says_so() {
    let origin = Origin::start(|_| Reply::status(301));
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(proxy.addr, dir.path(), &[&origin.url("/moved")], None);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let error = &manifest(dir.path())[0]["error"];
    assert_eq!(
        error, "HTTP 301 Moved Permanently (a redirect with no Location to follow)",
        "{}",
        ran.stderr
    );
}

/// The `error` of the manifest's first line, empty when there is none.
fn first_error(out: &Path) -> String {
    manifest(out)[0]["error"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_web_server_given_as_the_proxy_is_suspected() {
    // The test origin plays a web server named by mistake in --proxy: it
    // answers the request for another host itself, with a 404 and no Via.
    let web_server = Origin::start(|_| Reply::status(404));
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        web_server.addr,
        dir.path(),
        &["http://127.0.0.1:9/file"],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let error = first_error(dir.path());
    assert!(error.starts_with("HTTP 404 "), "{error}");
    assert!(error.contains(" (no Via header in the reply"), "{error}");
    assert!(error.contains("--proxy names a web server"), "{error}");
    // Through a proxy, the origin's own 404 is said as it is.
    let origin = Origin::start(|_| Reply::status(404));
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(proxy.addr, dir.path(), &[&origin.url("/gone")], None);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let error = first_error(dir.path());
    assert!(error.starts_with("HTTP 404 "), "{error}");
    assert!(!error.contains("Via"), "{error}");
}

#[test]
fn a_503_is_retried_after_its_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let origin = Origin::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::status(503).with_header("Retry-After", "1")
        } else {
            Reply::ok("text/plain", "finally")
        }
    });
    let proxy = Proxy::start();
    // A fresh run against an origin that fails twice, then answers.
    let fetch_with_retries = |retries: &str| {
        calls.store(0, Ordering::SeqCst);
        let dir = tempfile::tempdir().expect("temp dir");
        let ran = run_fetch(
            proxy.addr,
            dir.path(),
            &[&origin.url("/flaky"), "--retries", retries],
            None,
        );
        (dir, ran)
    };
    let (dir, ran) = fetch_with_retries("3");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let line = &manifest(dir.path())[0];
    assert_eq!(line["status"], 200);
    assert!(
        line["elapsed_ms"].as_u64().is_some_and(|ms| ms >= 2000),
        "{line}"
    );

    // Without retries the 503 is the answer.
    let (dir, ran) = fetch_with_retries("0");
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(manifest(dir.path())[0]["status"], 503);
    assert!(!ran.stderr.contains("attempts"), "{}", ran.stderr);

    // Retries that all fail say how many requests were made, on the
    // terminal and in the manifest.
    let (dir, ran) = fetch_with_retries("1");
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("HTTP 503 Service Unavailable (after 2 attempts)"),
        "{}",
        ran.stderr
    );
    let line = &manifest(dir.path())[0];
    assert_eq!(
        line["error"], "HTTP 503 Service Unavailable (after 2 attempts)",
        "{line}"
    );
}

#[test]
fn an_origin_s_error_page_cannot_drive_the_terminal() {
    // Proxy-Status makes the client show the page's first line.
    let origin = Origin::start(|_| Reply::Full {
        status: 404,
        headers: vec![("Proxy-Status".into(), "evil; error=x".into())],
        body: "\u{1b}]0;TITLE\u{7}\u{1b}[31mRED\u{1b}[0m \u{1b}[2J gone\n".into(),
    });
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(proxy.addr, dir.path(), &[&origin.url("/esc")], None);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(!ran.stderr.contains('\u{1b}'), "{:?}", ran.stderr);
    assert!(ran.stderr.contains("x: \\u{1b}]0;TITLE"), "{}", ran.stderr);
    let error = manifest(dir.path())[0]["error"].to_string();
    assert!(!error.contains("\\u001b"), "{error}");
}

#[test]
fn exit_codes_are_0_1_and_2() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(
        run_fetch(proxy.addr, dir.path(), &[&origin.url("/")], None).code,
        Some(0)
    );
    assert_eq!(
        run_fetch(proxy.addr, dir.path(), &[&origin.url("/nope")], None).code,
        Some(1)
    );

    let zero = run_fetch(
        proxy.addr,
        dir.path(),
        &["--concurrency", "0", &origin.url("/")],
        None,
    );
    assert_eq!(zero.code, Some(2));
    assert!(zero.stderr.contains("--concurrency"), "{}", zero.stderr);

    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let bad_dir = run_fetch(proxy.addr, &file.join("sub"), &[&origin.url("/")], None);
    assert_eq!(bad_dir.code, Some(2));
    assert!(bad_dir.stderr.contains("--out-dir"), "{}", bad_dir.stderr);

    let unmade = dir.path().join("not-made-either");
    let missing = run_fetch(
        proxy.addr,
        &unmade,
        &["--input", "/nonexistent/urls.txt"],
        None,
    );
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(
        !unmade.exists(),
        "nothing made for an input that cannot be read"
    );

    let missing_input = missing.stderr.trim();
    assert!(
        missing_input.starts_with("fetchproxy: --input /nonexistent/urls.txt"),
        "{missing_input}"
    );

    let many = run_fetch(
        proxy.addr,
        dir.path(),
        &["--concurrency", "100000", &origin.url("/")],
        None,
    );
    assert_eq!(many.code, Some(2), "{}", many.stderr);
    assert!(
        many.stderr
            .contains("--concurrency 100000 is more than 1024"),
        "{}",
        many.stderr
    );

    // A file of URLs given where a URL goes is named, not fetched as
    // http://tmp/...; nothing is made or asked.
    let input = write_input(dir.path(), &[origin.url("/")]);
    let input = input.to_str().expect("utf-8");
    let out = dir.path().join("not-made-for-a-file");
    let asked = origin.requests().len();
    let file_as_url = run_fetch(proxy.addr, &out, &[&origin.url("/"), input], None);
    assert_eq!(file_as_url.code, Some(2), "{}", file_as_url.stderr);
    assert!(
        file_as_url.stderr.contains(&format!(
            "argument 2, {input}, is a path, not a URL: to read URLs from it, give --input {input}"
        )),
        "{}",
        file_as_url.stderr
    );
    assert_eq!(
        origin.requests().len(),
        asked,
        "not even the good URL fetched"
    );
    assert!(!out.exists(), "nothing made for a file given as a URL");

    // The same file named as it sits in the directory the client runs in.
    let child = fetch_command(proxy.addr, &out, &["urls.txt"])
        .current_dir(dir.path())
        .spawn()
        .expect("spawn fetchproxy fetch");
    let by_name = finish(child, None);
    assert_eq!(by_name.code, Some(2), "{}", by_name.stderr);
    assert!(
        by_name.stderr.contains(
            "argument 1, urls.txt, names a file of URLs: to read them, give --input urls.txt; \
             to fetch it as a URL, write http://urls.txt"
        ),
        "{}",
        by_name.stderr
    );
    assert_eq!(origin.requests().len(), asked, "nothing fetched");

    let out = dir.path().join("not-made");
    let input_dir = dir.path().to_str().expect("utf-8");
    let directory = run_fetch(proxy.addr, &out, &["--input", input_dir], None);
    assert_eq!(directory.code, Some(2), "{}", directory.stderr);
    assert!(
        directory.stderr.contains("is a directory"),
        "{}",
        directory.stderr
    );
    assert!(!out.exists(), "nothing made for a usage error");
}

#[test]
fn urls_that_would_share_a_name_take_suffixes_in_input_order() {
    // The first URL's answer waits until the second has been saved: the
    // second still gets the `-2`, as it would in any run.
    let gate = Gate::new();
    let held = gate.clone();
    let origin = Origin::start(move |req| {
        if req.target == "/pkg/a_b.tar.gz" {
            held.wait(Duration::from_secs(60));
        }
        Reply::ok("application/octet-stream", req.target.clone())
    });
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let first = origin.url("/pkg/a_b.tar.gz");
    let second = origin.url("/pkg/a/b.tar.gz");
    let input = write_input(dir.path(), &[first.clone(), second.clone()]);
    let child = spawn_fetch(
        proxy.addr,
        &out,
        &[
            "--concurrency",
            "2",
            "--input",
            input.to_str().expect("utf-8"),
        ],
    );
    // Read as text: a line may be half written when it is looked at.
    let second_saved = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(out.join("manifest.jsonl")).is_ok_and(|text| {
            text.lines()
                .any(|line| line.contains(second.as_str()) && line.ends_with('}'))
        })
    });
    gate.open();
    let ran = finish(child, None);
    assert!(second_saved, "{}", ran.stderr);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let host = format!("127.0.0.1_{}", origin.addr.port());
    let files: HashMap<String, String> = manifest(&out)
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap_or_default().to_string(),
                e["file"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(files[&first], format!("{host}_pkg_a_b.tar.gz"), "{files:?}");
    assert_eq!(
        files[&second],
        format!("{host}_pkg_a_b-2.tar.gz"),
        "{files:?}"
    );
    for (url, file) in &files {
        let body = std::fs::read_to_string(out.join(file)).expect("saved file");
        assert!(url.ends_with(&body), "{file} holds {body}");
    }
}

#[test]
fn an_input_of_blank_lines_and_comments_makes_nothing_and_says_so() {
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("not-made");
    for (name, text) in [("empty.txt", ""), ("comments.txt", "# none yet\n\n   \n")] {
        let input = dir.path().join(name);
        std::fs::write(&input, text).expect("write input");
        let ran = run_fetch(
            proxy.addr,
            &out,
            &["--input", input.to_str().expect("utf-8")],
            None,
        );
        assert_eq!(ran.code, Some(0), "{name}: {}", ran.stderr);
        assert_eq!(
            ran.stderr.trim(),
            "no URLs to fetch: the input held none",
            "{name}"
        );
        assert!(!out.exists(), "{name}: no out-dir and no manifest made");
    }
    // An out-dir that cannot be one is named all the same.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let input = dir.path().join("empty.txt");
    let ran = run_fetch(
        proxy.addr,
        &file,
        &["--input", input.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(ran.stderr.contains("--out-dir"), "{}", ran.stderr);
    // A line that is no URL is reported as before, in the manifest.
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, "not a url at all\n").expect("write input");
    let ran = run_fetch(
        proxy.addr,
        &out,
        &["--input", input.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(out.join("manifest.jsonl").is_file(), "{}", ran.stderr);
}

#[test]
fn a_url_file_written_with_a_byte_order_mark_is_read_from_its_first_line() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("urls.txt");
    let text = format!("\u{feff}{}\r\n{}\r\n", origin.url("/"), origin.url("/data"));
    std::fs::write(&input, text).expect("write");
    let out = dir.path().join("out");
    let input_arg = input.to_str().expect("utf-8");
    let ran = run_fetch(proxy.addr, &out, &["--input", input_arg], None);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(manifest(&out).len(), 2, "{}", ran.stderr);
}

#[test]
fn no_proxy_running_fails_at_once_with_one_message_that_says_what_to_do() {
    let origin = site();
    let dir = tempfile::tempdir().expect("temp dir");
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let input = write_input(
        dir.path(),
        &(0..18)
            .map(|i| origin.url(&format!("/{i}")))
            .collect::<Vec<_>>(),
    );
    let out = dir.path().join("out");
    let ran = run_fetch(
        dead,
        &out,
        &["--input", input.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "fetchproxy: no proxy answers at {dead} (connection refused): start one with \
             \"fetchproxy serve --listen {dead}\", or pass --proxy HOST:PORT of one that runs\n"
        )
    );
    assert!(
        !out.exists(),
        "nothing is created for a run that cannot start"
    );
    assert!(origin.requests().is_empty());
}

#[test]
fn out_dir_errors_name_the_out_dir() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("urls.txt");
    std::fs::write(&file, origin.url("/") + "\n").expect("write");

    let ran = run_fetch(proxy.addr, &file, &[&origin.url("/")], None);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "fetchproxy: --out-dir {}: is a file, not a directory\n",
            file.display()
        )
    );

    let under = file.join("pages");
    let ran = run_fetch(proxy.addr, &under, &[&origin.url("/")], None);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "fetchproxy: --out-dir {}: {} is a file, not a directory\n",
            under.display(),
            file.display()
        )
    );

    let locked = unwritable_dir(dir.path());
    let ran = run_fetch(proxy.addr, &locked, &[&origin.url("/")], None);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let prefix = format!(
        "fetchproxy: --out-dir {}: cannot write in it: ",
        locked.display()
    );
    assert!(ran.stderr.starts_with(&prefix), "{}", ran.stderr);
    assert!(!ran.stderr.contains("manifest"), "{}", ran.stderr);
    assert!(origin.requests().is_empty());
}

/// A directory this process cannot create files in: a read-only one, or,
/// for root (whom permissions do not stop), /sys.
fn unwritable_dir(base: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = base.join("read-only");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let probe = dir.join("probe");
    if std::fs::write(&probe, "x").is_ok() {
        let _ = std::fs::remove_file(&probe);
        return PathBuf::from("/sys");
    }
    dir
}

#[test]
fn a_url_without_a_scheme_is_fetched_over_http_and_said_so() {
    let origin = site();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let bare = format!("{}/data", origin.addr);
    let input = write_input(
        dir.path(),
        &["# list".into(), origin.url("/"), bare.clone()],
    );
    let out = dir.path().join("out");
    let ran = run_fetch(
        proxy.addr,
        &out,
        &[&bare, "--input", input.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let want = origin.url("/data");
    assert!(
        ran.stderr
            .contains(&format!("argument 1: no scheme; assuming {want}\n")),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains(&format!("line 3: no scheme; assuming {want}\n")),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("skipped"), "the repeat: {}", ran.stderr);
    assert_eq!(by_url(&manifest(&out))[&want]["status"], 200);
    assert_eq!(count_requests(&origin, "/data"), 1);
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let origin = Origin::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            // Two seconds ahead, truncated to the second: a wait of 1 to 2 s,
            // longer than the first backoff (0.5 to 0.75 s).
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            Reply::status(503).with_header("Retry-After", &httpdate::fmt_http_date(at))
        } else {
            Reply::ok("text/plain", "finally")
        }
    });
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = run_fetch(
        proxy.addr,
        dir.path(),
        &[&origin.url("/flaky"), "--retries", "1"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let line = &manifest(dir.path())[0];
    assert_eq!(line["status"], 200);
    assert!(
        line["elapsed_ms"].as_u64().is_some_and(|ms| ms >= 1000),
        "waited as the date asked: {line}"
    );
}

/// An origin whose first request for each connection gets a head and part
/// of a long body, then silence until `release` is set; later requests get
/// the whole body.
struct StallingOrigin {
    addr: SocketAddr,
    release: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

const STALL_BODY: usize = 1 << 20;
/// Sent before the stall: enough to pass any buffer between origin and client.
const STALL_AFTER: usize = 256 * 1024;

impl StallingOrigin {
    fn start() -> StallingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let release = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (release.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (flag, count) = (flag.clone(), count.clone());
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                    let body = vec![b'z'; STALL_BODY];
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {STALL_BODY}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(reply.as_bytes());
                    if first {
                        let _ = stream.write_all(&body[..STALL_AFTER]);
                        wait_until(Duration::from_secs(60), || flag.load(Ordering::SeqCst));
                    } else {
                        let _ = stream.write_all(&body);
                    }
                });
            }
        });
        StallingOrigin {
            addr,
            release,
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for StallingOrigin {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

/// Starts `fetch --retries RETRIES` of a download that stalls, kills the
/// proxy once the download is under way, and waits for the client.
fn proxy_killed_mid_download(retries: &str) -> (Ran, tempfile::TempDir, StallingOrigin) {
    let origin = StallingOrigin::start();
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8", "--workers", "4"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let client = spawn_fetch(
        proxy.addr,
        dir.path(),
        &["--retries", retries, &origin.url("/big")],
    );
    assert!(
        wait_until(Duration::from_secs(20), || !temp_files(dir.path())
            .is_empty()),
        "download never started"
    );
    drop(proxy); // kills the server process
    (finish(client, None), dir, origin)
}

#[test]
fn server_killed_mid_download_leaves_no_partial_file() {
    let (ran, dir, origin) = proxy_killed_mid_download("0");
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(
        files(dir.path()),
        ["manifest.jsonl"],
        "no partial or temporary file"
    );
    let line = &manifest(dir.path())[0];
    assert_eq!(line["file"], Value::Null);
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn a_download_cut_by_a_proxy_that_then_went_away_reports_the_cut() {
    // Retries find the proxy gone (connection refused); what is reported
    // is what happened to the request, with the status and request id the
    // proxy answered with, not the last refusal.
    let (ran, dir, _origin) = proxy_killed_mid_download("2");
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let line = &manifest(dir.path())[0];
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{line}"
    );
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("body ended after"), "{line}");
    assert!(ran.stderr.contains(error), "{}", ran.stderr);
}

/// A proxy stopped mid-batch (draining: the requests under way are
/// answered, new connections refused) is reported once, and the batch
/// stops there instead of failing every URL left after its retries; the
/// URLs not fetched stay out of the manifest, and a rerun fetches them.
#[test]
fn a_batch_whose_only_proxy_stops_reports_it_once_and_stops() {
    let origin = Origin::start(|request| {
        thread::sleep(Duration::from_millis(300));
        Reply::ok("text/plain", request.target.clone().into_bytes())
    });
    let mut proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8", "--grace", "5s"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let urls: Vec<String> = (0..30).map(|i| origin.url(&format!("/page/{i}"))).collect();
    let input = write_input(dir.path(), &urls);
    let out = dir.path().join("out");
    let out_arg = out.to_str().expect("UTF-8 temp path");
    let input_arg = input.to_str().expect("UTF-8 temp path");
    let client = spawn_fetch(
        proxy.addr,
        &out,
        &["-c", "4", "--retries", "1", "-i", input_arg],
    );
    assert!(
        wait_until(Duration::from_secs(20), || manifest(&out).len() >= 4),
        "the batch never got going"
    );
    proxy.signal("TERM");
    let ran = finish(client, None);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(
        ran.stderr.matches("stopped taking connections").count(),
        1,
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("stopped: no proxy takes connections any more"),
        "{}",
        ran.stderr
    );
    let recorded = manifest(&out).len();
    assert!(recorded < urls.len(), "{recorded} lines: the batch went on");
    // Once a proxy is back, a rerun fetches what is missing.
    assert!(proxy.wait_exit(Duration::from_secs(20)).is_some());
    let again = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let rerun = run_fetch(again.addr, &out, &["-c", "4", "-i", input_arg], None);
    assert_eq!(rerun.code, Some(0), "{}", rerun.stderr);
    let saved = by_url(&manifest(&out));
    for url in &urls {
        assert!(
            saved.get(url).is_some_and(|line| line["error"].is_null()),
            "{url} not saved in {out_arg}"
        );
    }
}

/// A proxy that restarts within the retries' back-off loses nothing, even
/// when its first answer after the restart is an error (a 404): an answer
/// says the proxy is up, and only a URL given up on refusals stops a batch.
#[test]
fn a_proxy_back_within_the_back_off_loses_nothing_even_after_a_404() {
    let origin = Origin::start(|request| {
        if request.target.contains("/missing") {
            thread::sleep(Duration::from_millis(1500));
            return Reply::status(404);
        }
        Reply::ok("text/plain", request.target.clone().into_bytes())
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", listen.as_str(), "--allow-dest", "127.0.0.0/8"];
    let mut proxy = ProxyProcess::spawn(&args).unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut urls = vec![origin.url("/missing")];
    urls.extend((0..4).map(|i| origin.url(&format!("/ok/{i}"))));
    let input = write_input(dir.path(), &urls);
    let out = dir.path().join("out");
    let client = spawn_fetch(
        proxy.addr,
        &out,
        &["-c", "1", "-i", input.to_str().expect("UTF-8 temp path")],
    );
    // The 404 is under way: the proxy is killed. The client's first retry
    // (after 0.5 s) is refused and marks it down; it is back before the
    // second (1 s later), which gets the 404.
    assert!(wait_until(Duration::from_secs(20), || !origin
        .requests()
        .is_empty()));
    drop(proxy);
    thread::sleep(Duration::from_millis(900));
    proxy = ProxyProcess::spawn(&args).unwrap_or_else(|err| panic!("{err}"));
    let ran = finish(client, None);
    drop(proxy);
    assert_eq!(ran.code, Some(1), "the 404 fails: {}", ran.stderr);
    assert!(
        !ran.stderr.contains("no proxy takes connections"),
        "{}",
        ran.stderr
    );
    let saved = by_url(&manifest(&out));
    for url in &urls[1..] {
        assert!(
            saved.get(url).is_some_and(|line| line["error"].is_null()),
            "{url}: {}",
            ran.stderr
        );
    }
    assert_eq!(saved[&urls[0]]["status"], 404);
}

#[test]
fn client_killed_mid_batch_then_rerun_fetches_only_the_missing_urls() {
    let site = site();
    let stall = StallingOrigin::start();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let urls = [
        site.url("/"),
        site.url("/data"),
        stall.url("/big"),
        site.url("/logo"),
    ];
    let input = write_input(dir.path(), &urls);
    let out = dir.path().join("out");
    let input_arg = input.to_str().expect("utf-8");
    let args = ["--concurrency", "1", "--input", input_arg];

    let mut child = spawn_fetch(proxy.addr, &out, &args);
    let started = wait_until(Duration::from_secs(20), || {
        manifest(&out).len() == 2 && out.exists() && !temp_files(&out).is_empty()
    });
    let _ = child.kill(); // SIGKILL: no chance to clean up
    let _ = child.wait();
    assert!(started, "batch did not reach the stalled download");
    assert_eq!(
        temp_files(&out).len(),
        1,
        "a killed run leaves its temporary file"
    );

    stall.release.store(true, Ordering::SeqCst);
    let ran = run_fetch(proxy.addr, &out, &args, None);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("fetched 2, skipped 2, failed 0"),
        "{}",
        ran.stderr
    );
    assert!(temp_files(&out).is_empty(), "stale temporary file removed");
    assert_eq!(count_requests(&site, "/"), 1);
    assert_eq!(count_requests(&site, "/data"), 1);
    let lines = manifest(&out);
    assert_eq!(lines.len(), 4, "one success line per URL: {lines:#?}");
    let recorded: Vec<&str> = lines.iter().filter_map(|l| l["url"].as_str()).collect();
    for url in &urls {
        assert_eq!(recorded.iter().filter(|u| *u == url).count(), 1, "{url}");
    }
    assert_files_match_manifest(&out);
}

#[test]
fn ctrl_c_removes_temporary_files_and_exits_130() {
    let stall = StallingOrigin::start();
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let child = spawn_fetch(proxy.addr, dir.path(), &[&stall.url("/big")]);
    let pid = child.id();
    assert!(
        wait_until(Duration::from_secs(20), || !temp_files(dir.path())
            .is_empty()),
        "download never started"
    );
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let ran = finish(child, None);
    assert_eq!(ran.code, Some(130), "{}", ran.stderr);
    // What the stopped download had received is said apart from what was
    // saved (0 B), once the first piece of it was counted.
    let summary = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("fetched 0, skipped 0, failed 0, 0 B in "))
        .unwrap_or_else(|| panic!("no summary: {}", ran.stderr));
    assert!(
        summary.contains(", interrupted: 1 download stopped")
            && summary.ends_with("; run again for the rest"),
        "{summary}"
    );
    if summary.contains("received") {
        assert!(
            summary.contains(" (256.00 KiB received, not kept);"),
            "{summary}"
        );
    }
    assert!(temp_files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[test]
fn a_second_run_into_an_out_dir_in_use_stops_and_touches_nothing() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"slow");
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = origin.url("/held");
    let first = spawn_fetch(proxy.addr, dir.path(), &[url.as_str()]);
    assert!(
        wait_until(Duration::from_secs(20), || origin.requests().len() == 1),
        "the first run never asked"
    );
    let second = run_fetch(proxy.addr, dir.path(), &[url.as_str()], None);
    assert_eq!(second.code, Some(2), "{}", second.stderr);
    assert!(
        second.stderr.contains("is in use by another fetch run"),
        "{}",
        second.stderr
    );
    assert_eq!(origin.requests().len(), 1, "the second run fetched too");
    gate.open();
    let first = finish(first, None);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(manifest(dir.path()).len(), 1);
    assert_files_match_manifest(dir.path());
    // Once the first run is over, the directory is free again.
    let third = run_fetch(proxy.addr, dir.path(), &[url.as_str()], None);
    assert_eq!(third.code, Some(0), "{}", third.stderr);
    assert!(third.stderr.contains("skipped 1"), "{}", third.stderr);
}
