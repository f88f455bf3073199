//! Proxy authentication through the real binary: `[[users]]` in the config
//! file, 407 with a challenge when credentials are missing or wrong, curl's
//! `-U` let through, credentials never reaching the origin or the log,
//! CONNECT asking too, `/healthz` and `/metrics` not, and `hash-password` round trips.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    CurlReply, Origin, ProxyProcess, curl, read_response, run_binary_within, wait_until,
};

const LIMIT: Duration = Duration::from_secs(20);
const USER: &str = "alice";
const PASSWORD: &str = "correct horse:battery";
/// base64 of `alice:correct horse:battery`, as curl sends it.
const ENCODED: &str = "YWxpY2U6Y29ycmVjdCBob3JzZTpiYXR0ZXJ5";

/// A config file with `alice` (hashed in-process) and loopback destinations.
fn config_with_alice(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let hash = fetchproxy::auth::hash_password(PASSWORD).expect("hash the password");
    write_config(&format!(
        "allow_dest = [\"127.0.0.0/8\"]\n{extra}\n[[users]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\n"
    ))
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fetchproxy.toml");
    std::fs::write(&path, text).expect("write config file");
    (dir, path)
}

fn start(path: &std::path::Path, flags: &[&str]) -> ProxyProcess {
    let mut args = vec!["--config", path.to_str().expect("UTF-8 temp path")];
    args.extend_from_slice(flags);
    ProxyProcess::start(&args)
}

fn assert_challenged(reply: &CurlReply, proxy: &ProxyProcess) {
    assert_eq!(
        reply.status,
        407,
        "{reply:?}\nlog:\n{}",
        proxy.log().join("\n")
    );
    assert_eq!(
        reply.header("proxy-authenticate"),
        Some("Basic realm=\"fetchproxy\""),
        "{reply:?}"
    );
    assert!(
        reply
            .header("proxy-status")
            .is_some_and(|v| v.contains("error=http_request_denied")),
        "{reply:?}"
    );
}

#[test]
fn requests_without_credentials_get_407_with_a_challenge() {
    let origin = Origin::fixed("text/plain", b"secret");
    let (_dir, path) = config_with_alice("");
    let proxy = start(&path, &[]);
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_challenged(&reply, &proxy);
    assert!(origin.requests().is_empty(), "the origin was reached");
}

#[test]
fn a_wrong_password_or_an_unknown_user_gets_407() {
    let origin = Origin::fixed("text/plain", b"secret");
    let (_dir, path) = config_with_alice("");
    let proxy = start(&path, &[]);
    for user in [
        "alice:wrong",
        "alice:",
        "mallory:correct horse:battery",
        "ALICE:correct horse:battery",
    ] {
        let reply = curl(proxy.addr, &origin.url("/"), &["-U", user]);
        assert_challenged(&reply, &proxy);
    }
    assert!(origin.requests().is_empty(), "the origin was reached");
}

#[test]
fn right_credentials_pass_and_never_reach_the_origin_or_the_log() {
    let origin = Origin::fixed("text/plain", b"secret");
    let (_dir, path) = config_with_alice("");
    let proxy = start(&path, &[]);
    let credentials = format!("{USER}:{PASSWORD}");
    for _ in 0..2 {
        let reply = curl(proxy.addr, &origin.url("/page?q=1"), &["-U", &credentials]);
        assert_eq!(
            reply.status,
            200,
            "{reply:?}\nlog:\n{}",
            proxy.log().join("\n")
        );
        assert_eq!(reply.text(), "secret");
    }
    let wrong = curl(
        proxy.addr,
        &origin.url("/"),
        &["-U", "alice:not the password"],
    );
    assert_eq!(wrong.status, 407, "{wrong:?}");
    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.header("proxy-authorization"), None, "{request:?}");
    }
    let logged = wait_until(LIMIT, || {
        proxy.log().iter().filter(|l| l.contains("access:")).count() >= 3
    });
    let log = proxy.log().join("\n");
    assert!(logged, "three access lines expected:\n{log}");
    for secret in [
        PASSWORD,
        ENCODED,
        "not the password",
        "bm90IHRoZSBwYXNzd29yZA",
    ] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
}

#[test]
fn a_client_may_answer_the_challenge_on_the_same_connection() {
    let origin = Origin::fixed("text/plain", b"secret");
    let (_dir, path) = config_with_alice("");
    let proxy = start(&path, &[]);
    let mut stream = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let url = origin.url("/");
    let plain = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(plain.as_bytes()).expect("send");
    let (status, head, _) = read_response(&mut stream, LIMIT).expect("a 407");
    assert_eq!(status, 407, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let with_credentials =
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {ENCODED}\r\n\r\n");
    stream
        .write_all(with_credentials.as_bytes())
        .expect("send again");
    let (status, head, body) = read_response(&mut stream, LIMIT).expect("an answer");
    assert_eq!((status, body.as_slice()), (200, &b"secret"[..]), "{head}");
}

#[test]
fn connect_needs_credentials_too() {
    let origin = Origin::fixed("text/plain", b"tunnelled");
    let (_dir, path) = config_with_alice("");
    let port = origin.addr.port().to_string();
    let proxy = start(&path, &["--connect-port", &port]);
    // curl reports a refused CONNECT as exit 56, with the proxy's headers.
    let reply = curl(proxy.addr, &origin.url("/"), &["-p"]);
    assert!(reply.stderr.contains("407"), "{reply:?}");
    assert_eq!(
        reply.header("proxy-authenticate"),
        Some("Basic realm=\"fetchproxy\""),
        "{reply:?}"
    );
    assert!(origin.requests().is_empty(), "the tunnel was opened");

    let credentials = format!("{USER}:{PASSWORD}");
    let reply = curl(proxy.addr, &origin.url("/"), &["-p", "-U", &credentials]);
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\nlog:\n{}",
        proxy.log().join("\n")
    );
    assert_eq!(reply.text(), "tunnelled");
    assert!(!proxy.log().join("\n").contains(ENCODED));
}

#[test]
fn own_endpoints_need_no_credentials() {
    let (_dir, path) = config_with_alice("");
    let proxy = start(&path, &[]);
    for endpoint in ["/healthz", "/metrics"] {
        let reply = get_own(proxy.addr, endpoint);
        assert_eq!(reply.0, 200, "{endpoint}: {}", reply.1);
        // Asked through the proxy itself, as a health check with
        // `http_proxy` set for every URL does.
        for host in [
            proxy.addr.to_string(),
            format!("localhost:{}", proxy.addr.port()),
        ] {
            let url = format!("http://{host}{endpoint}");
            let reply = curl(proxy.addr, &url, &[]);
            assert_eq!(reply.status, 200, "{url}: {reply:?}");
        }
    }
    // Any other URL naming the proxy still asks for credentials.
    let other = curl(proxy.addr, &format!("http://{}/self", proxy.addr), &[]);
    assert_challenged(&other, &proxy);
}

fn get_own(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to proxy");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let (status, head, body) = read_response(&mut stream, LIMIT).expect("an answer");
    (status, format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// Runs `fetchproxy hash-password` with `input` on stdin.
fn hash_password(input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchproxy hash-password");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("write the password");
    child.wait_with_output().expect("hash-password finishes")
}

#[test]
fn hash_password_output_serves_as_a_users_password_hash() {
    let output = hash_password(b"s3cret pass\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let hash = String::from_utf8(output.stdout).expect("UTF-8 hash");
    let hash = hash.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"), "{hash}");

    let origin = Origin::fixed("text/plain", b"hello");
    let (_dir, path) = write_config(&format!(
        "allow_dest = [\"127.0.0.0/8\"]\n[[users]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n"
    ));
    let proxy = start(&path, &[]);
    let reply = curl(proxy.addr, &origin.url("/"), &["-U", "bob:s3cret pass"]);
    assert_eq!(
        reply.status,
        200,
        "{reply:?}\nlog:\n{}",
        proxy.log().join("\n")
    );
    let reply = curl(proxy.addr, &origin.url("/"), &["-U", "bob:s3cret pass\n"]);
    assert_eq!(reply.status, 407, "the newline is not part of the password");
}

#[test]
fn hash_password_refuses_an_empty_password() {
    for input in [&b""[..], b"\n"] {
        let output = hash_password(input);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("empty password"));
    }
}

#[test]
fn a_bad_password_hash_exits_2_naming_the_key() {
    let (_dir, path) =
        write_config("[[users]]\nname = \"carol\"\npassword_hash = \"plaintext-password\"\n");
    let output = run_binary_within(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().expect("UTF-8"),
        ],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("password_hash") && stderr.contains("carol"),
        "{stderr}"
    );
    assert!(!stderr.contains("plaintext-password"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}
