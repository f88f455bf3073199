//! The fetch client against real deployments, through the real binary: a
//! proxy with users (credentials in `--proxy` or `--proxy-user`, never
//! shown anywhere), and several proxies sharing a batch by rendezvous
//! hashing, with failover past a stopped proxy and one that answers 503.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use fetchproxy::auth::{User, hash_password, parse_password_hash};
use fetchproxy::client::fleet::{affinity_key, rank};
use serde_json::Value;
use url::Url;

use crate::client::{Ran, assert_files_match_manifest, by_url, finish, manifest, write_input};
use crate::support::{Origin, Proxy, Reply};

const USER: &str = "alice";
/// Characters that must be percent-encoded in a URL's userinfo.
const PASSWORD: &str = "p@ss:w/rd %";
const ENCODED_PASSWORD: &str = "p%40ss%3Aw%2Frd%20%25";

/// An in-process proxy whose one user is alice.
fn proxy_with_alice() -> Proxy {
    let hash = hash_password(PASSWORD).expect("hash the password");
    let user = User {
        name: USER.to_string(),
        password_hash: parse_password_hash(&hash).expect("parse the hash"),
    };
    Proxy::with(|config| config.users = vec![user])
}

/// `fetchproxy fetch --out-dir OUT ARGS...` in a session of its own, so that
/// it has no terminal to ask a password on.
fn fetch(out: &Path, args: &[&str]) -> Ran {
    fetch_with_password(out, args, None)
}

/// `fetch`, with `FETCHPROXY_PROXY_PASSWORD` set to `password` (or unset).
fn fetch_with_password(out: &Path, args: &[&str], password: Option<&str>) -> Ran {
    let mut command = Command::new("setsid");
    command.env_remove("FETCHPROXY_PROXY_PASSWORD");
    if let Some(password) = password {
        command.env("FETCHPROXY_PROXY_PASSWORD", password);
    }
    let child = command
        .arg(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(["fetch", "--timeout", "30s", "--out-dir"])
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setsid fetchproxy fetch (setsid is in util-linux)");
    finish(child, None)
}

/// Nothing of the password, in any spelling, in `text`.
fn assert_no_secret(text: &str, what: &str) {
    for secret in [PASSWORD, ENCODED_PASSWORD, "p@ss", "cEBzc", "YWxpY2U6"] {
        assert!(!text.contains(secret), "{secret:?} in {what}: {text}");
    }
}

fn manifest_text(out: &Path) -> String {
    std::fs::read_to_string(out.join("manifest.jsonl")).unwrap_or_default()
}

#[test]
fn credentials_in_the_proxy_url_are_percent_decoded_and_never_shown() {
    let origin = Origin::fixed("text/plain", b"members only");
    let proxy = proxy_with_alice();
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = format!("http://{USER}:{ENCODED_PASSWORD}@{}", proxy.addr);
    let ran = fetch(
        dir.path(),
        &["--proxy", &spec, &origin.url("/a"), &origin.url("/b")],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let lines = manifest(dir.path());
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["proxy"], proxy.addr.to_string(), "{line}");
    }
    assert_files_match_manifest(dir.path());
    for request in origin.requests() {
        assert_eq!(request.header("proxy-authorization"), None, "{request:?}");
    }
    assert_no_secret(&ran.stderr, "stderr");
    assert_no_secret(&manifest_text(dir.path()), "the manifest");
}

#[test]
fn proxy_user_with_a_password_is_sent_as_basic() {
    assert_fetched_as_alice(&format!("{USER}:{PASSWORD}"), None);
}

/// `fetch --proxy-user user` through a proxy that has alice, with
/// `FETCHPROXY_PROXY_PASSWORD` set to `password` (or unset): the file is
/// fetched, and no spelling of the password shows anywhere.
fn assert_fetched_as_alice(user: &str, password: Option<&str>) {
    let origin = Origin::fixed("text/plain", b"members only");
    let proxy = proxy_with_alice();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = fetch_with_password(
        dir.path(),
        &[
            "--proxy",
            &proxy.addr.to_string(),
            "--proxy-user",
            user,
            &origin.url("/"),
        ],
        password,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(manifest(dir.path())[0]["status"], 200);
    assert_no_secret(&ran.stderr, "stderr");
    assert_no_secret(&manifest_text(dir.path()), "the manifest");
}

/// In CI, where no terminal asks and a password in the command line would
/// show in `ps` and the logs, it comes from the environment.
#[test]
fn a_password_left_out_is_read_from_the_environment() {
    assert_fetched_as_alice(USER, Some(PASSWORD));
}

#[test]
fn a_batch_without_credentials_gives_the_advice_once() {
    let origin = Origin::fixed("text/plain", b"members only");
    let proxy = proxy_with_alice();
    let addr = proxy.addr.to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let urls: Vec<String> = (0..3).map(|n| origin.url(&format!("/{n}"))).collect();
    let mut args = vec!["--proxy", addr.as_str(), "--concurrency", "1"];
    args.extend(urls.iter().map(String::as_str));
    let ran = fetch(dir.path(), &args);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let advice = format!("HTTP 407: proxy {addr} wants credentials; pass --proxy-user USER");
    assert_eq!(ran.stderr.matches(&advice).count(), 1, "{}", ran.stderr);
    let short = format!("HTTP 407 from proxy {addr} (as above)");
    assert_eq!(ran.stderr.matches(&short).count(), 2, "{}", ran.stderr);
    // Each URL's manifest line keeps the whole reason.
    let lines = manifest(dir.path());
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["status"], 407, "{line}");
        assert!(
            line["error"].as_str().is_some_and(|e| e.contains(&advice)),
            "{line}"
        );
    }
}

#[test]
fn missing_or_wrong_credentials_say_what_to_do_and_show_nothing_secret() {
    let origin = Origin::fixed("text/plain", b"members only");
    let proxy = proxy_with_alice();
    let addr = proxy.addr.to_string();

    let dir = tempfile::tempdir().expect("temp dir");
    let ran = fetch(dir.path(), &["--proxy", &addr, &origin.url("/")]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let want = format!(
        "failed {}: HTTP 407: proxy {addr} wants credentials; pass --proxy-user USER \
         or --proxy http://USER:PASS@HOST:PORT\n",
        origin.url("/")
    );
    assert!(ran.stderr.contains(&want), "{}", ran.stderr);
    assert_eq!(manifest(dir.path())[0]["status"], 407);

    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = format!("http://{USER}:{ENCODED_PASSWORD}x@{addr}");
    let ran = fetch(dir.path(), &["--proxy", &wrong, &origin.url("/")]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "HTTP 407: proxy {addr} did not accept the credentials"
        )),
        "{}",
        ran.stderr
    );
    assert_no_secret(&ran.stderr, "stderr");
    assert_no_secret(&manifest_text(dir.path()), "the manifest");
    assert!(origin.requests().is_empty());

    // A bad --proxy is named with its credentials hidden.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = format!("https://{USER}:{ENCODED_PASSWORD}@{addr}");
    let ran = fetch(dir.path(), &["--proxy", &bad, &origin.url("/")]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "fetchproxy: --proxy \"https://***@{addr}\": unsupported scheme \"https\"; \
             a proxy is reached over http://\n"
        )
    );
}

#[test]
fn a_password_left_out_without_a_terminal_is_a_usage_error() {
    let origin = Origin::fixed("text/plain", b"members only");
    let proxy = proxy_with_alice();
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = fetch(
        dir.path(),
        &[
            "--proxy",
            &proxy.addr.to_string(),
            "--proxy-user",
            USER,
            &origin.url("/"),
        ],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with(
            "fetchproxy: no password given for the proxy, and no terminal to ask for it on"
        ) && ran.stderr.contains("--proxy-user USER:PASSWORD")
            && ran.stderr.contains("FETCHPROXY_PROXY_PASSWORD"),
        "{}",
        ran.stderr
    );
    assert!(origin.requests().is_empty());
}

/// A port on which nothing listens.
fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Which proxy each URL should land on: the first in its ranking among `up`.
fn expected_owner(url: &str, names: &[String], up: &HashSet<String>) -> String {
    let key = affinity_key(&Url::parse(url).expect("url"));
    rank(&key, names)
        .into_iter()
        .map(|i| names[i].clone())
        .find(|n| up.contains(n))
        .expect("a live proxy")
}

fn urls(origin: &Origin, n: usize) -> Vec<String> {
    (0..n).map(|i| origin.url(&format!("/page/{i}"))).collect()
}

#[test]
fn three_proxies_one_stopped_fetch_every_url_and_the_manifest_names_the_proxies() {
    let origin = Origin::start(|req| Reply::ok("text/plain", req.target.clone()));
    let proxies = [Proxy::start(), Proxy::start(), Proxy::start()];
    let names: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let [a, b, c] = proxies;
    // b is stopped: its port refuses connections.
    assert!(matches!(b.stop(), fetchproxy::server::Stopped::Clean));
    let up: HashSet<String> = [a.addr.to_string(), c.addr.to_string()].into();

    let dir = tempfile::tempdir().expect("temp dir");
    let list = urls(&origin, 30);
    let input = write_input(dir.path(), &list);
    let out = dir.path().join("out");
    let spec = names.join(",");
    let ran = fetch(
        &out,
        &["--proxy", &spec, "--input", input.to_str().expect("utf-8")],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let warning = format!(
        "warning: proxy {} does not answer (connection refused); its URLs go to the other proxies\n",
        names[1]
    );
    assert_eq!(ran.stderr.matches(&warning).count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("fetched 30, skipped 0, failed 0"),
        "{}",
        ran.stderr
    );

    let lines = manifest(&out);
    assert_eq!(lines.len(), 30);
    let recorded = by_url(&lines);
    let mut per_proxy: HashMap<String, usize> = HashMap::new();
    for url in &list {
        let line = &recorded[url];
        let proxy = line["proxy"].as_str().expect("proxy recorded").to_string();
        assert_eq!(proxy, expected_owner(url, &names, &up), "{line}");
        *per_proxy.entry(proxy).or_default() += 1;
    }
    assert_eq!(
        per_proxy.len(),
        2,
        "both live proxies served: {per_proxy:?}"
    );
    assert_files_match_manifest(&out);
    assert_eq!(origin.requests().len(), 30);
}

#[test]
fn the_same_url_goes_to_the_same_proxy_on_every_run() {
    let origin = Origin::fixed("text/plain", b"x");
    let proxies = [Proxy::start(), Proxy::start(), Proxy::start()];
    let names: Vec<String> = proxies.iter().map(|p| p.addr.to_string()).collect();
    let list = urls(&origin, 12);
    let args = |spec: &str| -> Vec<String> {
        let mut all = vec!["--proxy".to_string(), spec.to_string()];
        all.extend(list.iter().cloned());
        all
    };
    let mut runs: Vec<HashMap<String, Value>> = Vec::new();
    // The order of the list does not matter either.
    for spec in [
        names.join(","),
        names.iter().rev().cloned().collect::<Vec<_>>().join(","),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = args(&spec);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let ran = fetch(dir.path(), &refs);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        runs.push(by_url(&manifest(dir.path())));
    }
    let everyone: HashSet<String> = names.iter().cloned().collect();
    for url in &list {
        assert_eq!(runs[0][url]["proxy"], runs[1][url]["proxy"], "{url}");
        assert_eq!(
            runs[0][url]["proxy"].as_str(),
            Some(expected_owner(url, &names, &everyone).as_str())
        );
    }
}

#[test]
fn a_proxy_that_answers_503_is_failed_over() {
    let origin = Origin::fixed("text/plain", b"x");
    // A peer that speaks HTTP and answers every request, proxied or not, 503.
    let busy = Origin::start(|_| Reply::status(503));
    let good = Proxy::start();
    let names = vec![busy.addr.to_string(), good.addr.to_string()];
    let list = urls(&origin, 20);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = vec![
        "--proxy".to_string(),
        names.join(","),
        "--retries".into(),
        "1".into(),
    ];
    all.extend(list.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let ran = fetch(dir.path(), &refs);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let recorded = by_url(&manifest(dir.path()));
    let everyone: HashSet<String> = names.iter().cloned().collect();
    let mut first_on_busy = 0;
    for url in &list {
        assert_eq!(recorded[url]["proxy"], names[1], "{}", recorded[url]);
        if expected_owner(url, &names, &everyone) == names[0] {
            first_on_busy += 1;
        }
    }
    assert!(first_on_busy > 0, "no URL ranked the busy proxy first");
    assert_eq!(
        busy.requests().len(),
        first_on_busy,
        "each tried there once"
    );

    // With no retry left, a 503 is the answer.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = vec![
        "--proxy".to_string(),
        names.join(","),
        "--retries".into(),
        "0".into(),
    ];
    all.extend(list.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let ran = fetch(dir.path(), &refs);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let recorded = by_url(&manifest(dir.path()));
    let failed = list
        .iter()
        .filter(|u| recorded[*u]["status"] == 503)
        .count();
    assert_eq!(failed, first_on_busy);
}

/// A stopped proxy in the list costs no retry and is no attempt: with one
/// proxy up and an origin that always answers 503, `--retries 2` makes
/// three requests, as with that proxy alone, and says so.
#[test]
fn a_stopped_proxy_costs_no_retry_of_a_url_that_keeps_failing() {
    let origin = Origin::start(|_| Reply::status(503));
    let good = Proxy::start();
    let spec = format!("{},{}", good.addr, dead_port());
    let url = origin.url("/always-503");
    let dir = tempfile::tempdir().expect("temp dir");
    let ran = fetch(dir.path(), &["--proxy", &spec, "--retries", "2", &url]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert_eq!(origin.requests().len(), 3, "{}", ran.stderr);
    assert!(ran.stderr.contains("after 3 attempts"), "{}", ran.stderr);
}

#[test]
fn no_proxy_of_several_answering_is_one_usage_error() {
    let (x, y) = (dead_port(), dead_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = format!("{x},http://{y}/");
    let ran = fetch(
        &dir.path().join("out"),
        &["--proxy", &spec, "http://127.0.0.1:9/"],
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert_eq!(
        ran.stderr,
        format!(
            "fetchproxy: no proxy answers: {x} (connection refused), {y} (connection refused): \
             start them with \"fetchproxy serve --listen HOST:PORT\", or pass --proxy with ones that run\n"
        )
    );
}
