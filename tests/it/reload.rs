//! SIGHUP through the real binary: the access rules and users are read
//! again from the config file (flags still over it) without dropping
//! connections; a bad file is refused with a log line naming the key, and
//! the old rules stay.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::origin::Reply;
use crate::support::{CurlReply, Origin, ProxyProcess, curl, read_response};

const LIMIT: Duration = Duration::from_secs(20);
const ALLOW_LOOPBACK: &str = "allow_dest = [\"127.0.0.0/8\"]\n";

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.toml");
    std::fs::write(&path, text).expect("write config file");
    (dir, path)
}

/// Replaces the file in one step (a rename), as editors and config managers do.
fn rewrite(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).expect("write new config");
    std::fs::rename(&temp, path).expect("replace config");
}

fn start(path: &Path, flags: &[&str]) -> ProxyProcess {
    let mut args = vec!["--config", path.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(flags);
    ProxyProcess::start(&args)
}

/// Sends SIGHUP and waits for the `n`th log line holding `needle`.
fn reload(proxy: &ProxyProcess, needle: &str, n: usize) -> String {
    proxy.signal("HUP");
    let mut found = Vec::new();
    let done = crate::support::wait_until(LIMIT, || {
        found = proxy
            .log()
            .into_iter()
            .filter(|line| line.contains(needle))
            .collect();
        found.len() >= n
    });
    assert!(
        done,
        "no {needle:?} after SIGHUP:\n{}",
        proxy.log().join("\n")
    );
    found.pop().expect("at least one line")
}

fn assert_status(reply: &CurlReply, status: u16, proxy: &ProxyProcess) {
    assert_eq!(
        reply.status,
        status,
        "{reply:?}\nlog:\n{}",
        proxy.log().join("\n")
    );
}

/// A 403 for a destination the rules no longer allow.
fn assert_destination_refused(reply: &CurlReply, proxy: &ProxyProcess) {
    assert_status(reply, 403, proxy);
    assert!(
        reply
            .header("proxy-status")
            .is_some_and(|v| v.contains("destination_ip_prohibited")),
        "{reply:?}"
    );
}

/// One keep-alive request on `stream`: (status, head).
fn keep_alive_get(stream: &mut TcpStream, url: &str) -> (u16, String) {
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send on the kept connection");
    let (status, head, _) = read_response(stream, LIMIT).expect("an answer on the kept connection");
    (status, head)
}

#[test]
fn sighup_applies_new_rules_to_new_and_kept_alive_connections() {
    let origin = Origin::fixed("text/plain", b"hello");
    let (_dir, path) = write_config(ALLOW_LOOPBACK);
    let proxy = start(&path, &[]);
    let url = origin.url("/");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);
    let mut kept = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let (status, head) = keep_alive_get(&mut kept, &url);
    assert_eq!(status, 200, "{head}");

    rewrite(&path, "# loopback destinations no longer allowed\n");
    reload(&proxy, "reloaded rules", 1);

    assert_destination_refused(&curl(proxy.addr, &url, &[]), &proxy);
    // The connection opened before the reload is still open, under the new rules.
    let (status, head) = keep_alive_get(&mut kept, &url);
    assert_eq!(status, 403, "{head}");
    assert_eq!(
        origin.requests().len(),
        2,
        "only the requests before the reload"
    );
}

#[test]
fn a_destination_taken_back_by_a_reload_is_refused_for_cached_responses_too() {
    let origin = Origin::start(|_| {
        Reply::ok("text/plain", "cached").with_header("Cache-Control", "max-age=600")
    });
    let (_dir, path) = write_config(ALLOW_LOOPBACK);
    let proxy = start(&path, &[]);
    let url = origin.url("/kept");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);
    let hit = curl(proxy.addr, &url, &[]);
    assert_status(&hit, 200, &proxy);
    assert!(
        hit.header("cache-status")
            .is_some_and(|v| v.starts_with("fetchproxy; hit")),
        "{hit:?}"
    );

    rewrite(&path, "# loopback destinations no longer allowed\n");
    reload(&proxy, "reloaded rules", 1);

    assert_destination_refused(&curl(proxy.addr, &url, &[]), &proxy);
    assert_eq!(origin.requests().len(), 1, "one fetch, then hits");
}

#[test]
fn sighup_without_a_config_file_says_there_is_none_to_read() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let line = reload(&proxy, "no config file to reload", 1);
    assert!(
        line.ends_with(
            "no config file to reload (no --config): the rules stay as the flags set them"
        ),
        "{line}"
    );
    assert_status(&curl(proxy.addr, &origin.url("/"), &[]), 200, &proxy);
}

#[test]
fn a_bad_file_on_reload_is_refused_by_key_and_the_old_rules_stay() {
    let origin = Origin::fixed("text/plain", b"hello");
    let (_dir, path) = write_config(ALLOW_LOOPBACK);
    let proxy = start(&path, &[]);
    let url = origin.url("/");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);

    rewrite(&path, "allow_dest = [\"10.0.0.0/33\"]\n");
    let line = reload(&proxy, "reload failed", 1);
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("allow_dest") && line.contains("10.0.0.0/33"),
        "{line}"
    );
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);

    rewrite(&path, "allow_dest = [\"127.0.0.0/8\"]\nallow_dset = []\n");
    let line = reload(&proxy, "reload failed", 2);
    assert!(line.contains("allow_dset"), "{line}");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);

    // The process is still serving and still reloads good files.
    rewrite(&path, "dest_ports = [80]\nallow_dest = [\"127.0.0.0/8\"]\n");
    reload(&proxy, "reloaded rules", 1);
    let reply = curl(proxy.addr, &url, &[]);
    assert_status(&reply, 403, &proxy);
    assert!(
        reply
            .header("proxy-status")
            .is_some_and(|v| v.contains("http_request_denied")),
        "port rule from the reloaded file: {reply:?}"
    );
}

#[test]
fn flags_still_override_the_file_on_reload() {
    let origin = Origin::fixed("text/plain", b"hello");
    let (_dir, path) = write_config("workers = 2\n");
    let proxy = start(&path, &["--allow-dest", "127.0.0.0/8"]);
    let url = origin.url("/");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);
    rewrite(&path, "workers = 3\nallow_dest = [\"10.0.0.0/8\"]\n");
    let line = reload(&proxy, "reloaded rules", 1);
    assert!(
        line.ends_with("workers changed but not applied: it takes a restart"),
        "a changed worker count is named as not applied: {line}"
    );
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);
}

#[test]
fn sighup_reloads_the_users() {
    let origin = Origin::fixed("text/plain", b"hello");
    let (_dir, path) = write_config(ALLOW_LOOPBACK);
    let proxy = start(&path, &[]);
    let url = origin.url("/");
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);

    let hash = fetchproxy::auth::hash_password("pw").expect("hash");
    rewrite(
        &path,
        &format!("{ALLOW_LOOPBACK}[[users]]\nname = \"dora\"\npassword_hash = \"{hash}\"\n"),
    );
    reload(&proxy, "reloaded rules", 1);
    assert_status(&curl(proxy.addr, &url, &[]), 407, &proxy);
    assert_status(&curl(proxy.addr, &url, &["-U", "dora:pw"]), 200, &proxy);

    rewrite(&path, ALLOW_LOOPBACK);
    reload(&proxy, "reloaded rules", 2);
    assert_status(&curl(proxy.addr, &url, &[]), 200, &proxy);
}
