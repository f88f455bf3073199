//! The upstream side end to end: a pooled connection the origin closes just
//! as it is reused is retried on a fresh one when that is safe, bad ports
//! are refused before anything is dialled, and an https origin of a
//! private CA is reached once `upstream_ca_file` names that CA.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::raw::{
    assert_curl_error, assert_raw_error, exchange, exchange_until_close, split_raw,
};
use crate::support::tls::{BODY, TlsOrigin};
use crate::support::{Proxy, ProxyProcess, metric, run_binary_within, scrape_metrics};

const LIMIT: Duration = Duration::from_secs(20);

/// An origin whose first connection answers one request and then, when the
/// next request arrives on it, closes without a word: the race of an origin
/// closing an idle connection just as the proxy reuses it. Every later
/// connection answers every request. Records each request line it reads.
struct ClosingOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl ClosingOrigin {
    fn start() -> ClosingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let nth = count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                thread::spawn(move || serve(stream, nth == 0, &log));
            }
        });
        ClosingOrigin {
            addr,
            seen,
            connections,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Serves one connection; the first connection closes on its second request.
fn serve(stream: TcpStream, first: bool, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(LIMIT));
    let mut writer = stream.try_clone().expect("clone origin socket");
    let mut reader = BufReader::new(stream);
    for nth in 0.. {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut chunked = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            let header = header.to_ascii_lowercase();
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            chunked |= header.starts_with("transfer-encoding:") && header.contains("chunked");
        }
        let whole = if chunked {
            read_chunked(&mut reader)
        } else {
            reader.read_exact(&mut vec![0u8; length]).is_ok()
        };
        if !whole {
            return;
        }
        if let Ok(mut seen) = seen.lock() {
            seen.push(line.trim_end().to_string());
        }
        if first && nth == 1 {
            // Closed just as the kept-alive connection was reused.
            return;
        }
        let answer = format!("answer {nth}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a chunked body to its end (chunks, the last chunk, no trailers);
/// false when the connection ends first.
fn read_chunked(reader: &mut impl BufRead) -> bool {
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return false;
        };
        // The chunk's data and its CRLF, or the last chunk's closing CRLF.
        if reader.read_exact(&mut vec![0u8; size + 2]).is_err() {
            return false;
        }
        if size == 0 {
            return true;
        }
    }
}

/// Sends `request` on `stream` and reads one response with a body of
/// Content-Length; the status and the body.
fn one_exchange(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).expect("send");
    stream.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap_or(0);
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                return (status, body);
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!("no whole response to {request:?}: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn retries(proxy: &Proxy) -> f64 {
    let (_, page) = scrape_metrics(proxy.addr);
    metric(&page, "fetchproxy_upstream_retries_total").expect("the retry counter")
}

/// Issue 11 (3): an idempotent request on a reused connection that the
/// origin closes before answering is sent again, and the client never sees
/// the race.
#[test]
fn issue_11_a_get_on_a_reused_connection_the_origin_closed_is_retried() {
    let origin = ClosingOrigin::start();
    let proxy = Proxy::start();
    let o = origin.addr;
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    let get = |path: &str| format!("GET http://{o}{path} HTTP/1.1\r\nHost: {o}\r\n\r\n");
    assert_eq!(
        one_exchange(&mut client, &get("/one")),
        (200, "answer 0".into())
    );
    // Same pooled upstream connection, closed by the origin on arrival.
    let (status, body) = one_exchange(&mut client, &get("/two"));
    assert_eq!(
        (status, body.as_str()),
        (200, "answer 0"),
        "{:?}",
        origin.seen()
    );
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        origin.seen(),
        [
            "GET /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /two HTTP/1.1"
        ]
    );
    assert_eq!(retries(&proxy), 1.0);
}

/// A POST whose body went out on the closed connection may have been acted
/// on: it is not sent again, and the client gets a 502.
#[test]
fn issue_11_a_post_whose_body_was_sent_is_not_retried() {
    assert_post_not_retried("Content-Length: 5\r\n\r\nhello");
}

/// Sends a POST (with `rest`: its framing header, the blank line and its
/// body) on a kept-alive connection the origin closes as it reads it:
/// the client gets a 502, the origin saw the POST once, nothing retried.
fn assert_post_not_retried(rest: &str) {
    let origin = ClosingOrigin::start();
    let proxy = Proxy::start();
    let o = origin.addr;
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    let first = format!("GET http://{o}/warm HTTP/1.1\r\nHost: {o}\r\n\r\n");
    assert_eq!(one_exchange(&mut client, &first).0, 200);
    let post = format!("POST http://{o}/order HTTP/1.1\r\nHost: {o}\r\n{rest}");
    let (status, _) = one_exchange(&mut client, &post);
    assert_eq!(status, 502, "{:?}", origin.seen());
    let posts = origin
        .seen()
        .iter()
        .filter(|line| line.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "{:?}", origin.seen());
    assert_eq!(retries(&proxy), 0.0);
}

/// A POST whose chunked body is empty went out whole (the last chunk is
/// the whole body): the origin may have acted on it, so it is not sent
/// again, though no byte of body was read.
#[test]
fn a_post_with_an_empty_chunked_body_is_not_retried() {
    assert_post_not_retried("Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
}

/// An origin that trickles its response head in, a byte every 50 ms, is
/// cut at `upstream_timeout` from the request sent (504), though no single
/// read waits that long.
#[test]
fn a_response_head_trickling_in_is_504_after_upstream_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_read_timeout(Some(LIMIT));
        let mut writer = stream.try_clone().expect("clone origin socket");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
            line.clear();
        }
        // About 6.5 s of head at this pace.
        let head = format!(
            "HTTP/1.1 200 OK\r\nX-Padding: {}\r\nContent-Length: 2\r\n\r\nok",
            "p".repeat(100)
        );
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let proxy = Proxy::with(|c| c.upstream_timeout = Duration::from_secs(1));
    let reply = crate::support::curl(proxy.addr, &format!("http://{addr}/trickle"), &[]);
    assert_curl_error("GET /trickle", &reply, 504, "http_response_timeout");
}

/// Issue 11 (4): a port that is no port is a bad request; nothing is dialled.
#[test]
fn issue_11_urls_with_a_bad_port_are_400_and_nothing_is_dialled() {
    let proxy = Proxy::start();
    for url in [
        "http://127.0.0.1:-1/",
        "http://127.0.0.1:99999/",
        "http://localhost:0/",
    ] {
        let sent = format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let got = exchange_until_close(proxy.addr, sent.as_bytes(), LIMIT);
        let response = split_raw(&got.bytes).unwrap_or_else(|| panic!("no answer to {url}"));
        assert_raw_error(sent.as_bytes(), &response, 400, "http_request_error");
        assert!(response.text().contains("port"), "{}", response.text());
    }
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_upstream_connections_opened_total"),
        Some(0.0)
    );
}

/// A header line longer than the upstream connection's output buffer
/// still reaches the origin whole: heads up to `max_header_bytes` are
/// accepted, so a single field can be nearly that long.
#[test]
fn a_40_kib_header_reaches_the_origin_whole() {
    let origin = crate::support::Origin::start(|request| {
        let cookie = request.header("cookie").unwrap_or_default().len();
        crate::support::Reply::ok("text/plain", cookie.to_string())
    });
    let proxy = Proxy::start();
    let cookie = "c".repeat(40 * 1024);
    let reply = crate::support::curl(
        proxy.addr,
        &origin.url("/big"),
        &["-H", &format!("Cookie: {cookie}")],
    );
    assert_eq!(
        (reply.status, reply.text()),
        (200, cookie.len().to_string()),
        "{}",
        reply.stderr
    );
}

/// Issue 11: far origins at the default pool size. 128 keep-alive clients
/// (far more than CPUs) each send 3 requests to an origin that answers after
/// 100 ms; every one is answered 200 with its own body, none refused.
#[test]
fn issue_11_many_clients_of_a_far_origin_all_succeed_at_the_defaults() {
    const CLIENTS: usize = 128;
    const REQUESTS: usize = 3;
    let origin = crate::support::Origin::start(|request| crate::support::Reply::Slow {
        delay: Duration::from_millis(100),
        then: Box::new(crate::support::Reply::ok(
            "text/plain",
            request.target.clone(),
        )),
    });
    let defaults = fetchproxy::config::ServeConfig::default();
    let proxy = Proxy::with(|config| {
        config.workers = defaults.workers;
        config.queue = defaults.queue;
        config.max_conns_per_client = defaults.max_conns_per_client;
    });
    let o = origin.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = proxy.addr;
            thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                (0..REQUESTS)
                    .map(|n| {
                        let path = format!("/c{client}-r{n}");
                        let request = format!("GET http://{o}{path} HTTP/1.1\r\nHost: {o}\r\n\r\n");
                        let (status, body) = one_exchange(&mut stream, &request);
                        (status, body == path)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        for (status, own_body) in client.join().expect("client thread") {
            assert_eq!(status, 200);
            assert!(own_body, "a body went to the wrong request");
            answered += 1;
        }
    }
    assert_eq!(answered, CLIENTS * REQUESTS);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_requests_total{code=\"503\"}"),
        None
    );
}

/// A `GET https://...` in absolute form, as `fetchproxy fetch` and HTTP
/// libraries send it: the proxy makes the TLS connection itself.
fn get_https(proxy: SocketAddr, url: &str) -> crate::support::raw::RawResponse {
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    exchange(proxy, request.as_bytes(), LIMIT)
}

#[test]
fn an_origin_of_a_private_ca_is_refused_until_upstream_ca_file_names_it() {
    let origin = TlsOrigin::start();
    let url = origin.url("/artifact");
    let mut bundled = ProxyProcess::start(&["--allow-dest", "127.0.0.1"]);
    let refused = get_https(bundled.addr, &url);
    assert_eq!(refused.status, 502, "{}", refused.head);
    let text = refused.text();
    assert!(
        text.contains("not signed by an authority the proxy trusts"),
        "{text}"
    );
    assert!(text.contains("--upstream-ca-file"), "{text}");
    // Whole in Proxy-Status too.
    let status = refused
        .head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("proxy-status:"))
        .unwrap_or_default()
        .to_string();
    assert!(status.ends_with("(https_proxy)\""), "{status}");
    assert_eq!(bundled.terminate(LIMIT).and_then(|s| s.code()), Some(0));

    let ca = origin.ca_file.to_str().expect("UTF-8 path");
    let mut trusting =
        ProxyProcess::start(&["--allow-dest", "127.0.0.1", "--upstream-ca-file", ca]);
    let fetched = get_https(trusting.addr, &url);
    assert_eq!(fetched.status, 200, "{}", fetched.head);
    assert_eq!(fetched.text(), BODY);
    assert!(
        trusting
            .log()
            .iter()
            .any(|l| l.contains("checked against the 1 certificate(s)")),
        "{:?}",
        trusting.log()
    );
    assert_eq!(trusting.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

/// A "self-signed" origin, whose certificate is a CA's (CA:TRUE), is
/// refused even with that certificate as `upstream_ca_file`, and the answer
/// says why and what to do, not to give the file already given.
#[test]
fn an_origin_presenting_a_ca_certificate_is_refused_saying_why() {
    let origin = TlsOrigin::start_self_signed();
    let ca = origin.ca_file.to_str().expect("UTF-8 path");
    let mut proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.1", "--upstream-ca-file", ca]);
    let refused = get_https(proxy.addr, &origin.url("/artifact"));
    assert_eq!(refused.status, 502, "{}", refused.head);
    let status = refused
        .head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("proxy-status:"))
        .unwrap_or_default()
        .to_string();
    assert!(status.contains("error=tls_certificate_error"), "{status}");
    assert!(status.contains("CA:TRUE"), "{status}");
    assert!(status.ends_with("--upstream-ca-file\""), "{status}");
    assert!(
        !refused.text().contains("not signed by"),
        "{}",
        refused.text()
    );
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn the_fetch_client_saves_a_private_ca_origins_file_through_a_proxy_that_trusts_it() {
    let origin = TlsOrigin::start();
    let ca = origin.ca_file.to_str().expect("UTF-8 path");
    let mut proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.1", "--upstream-ca-file", ca]);
    let out = tempfile::tempdir().expect("temp dir");
    let url = origin.url("/artifact.txt");
    let ran = crate::client::run_fetch(proxy.addr, out.path(), &[&url], None);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let saved = crate::client::files(out.path());
    let name = format!("127.0.0.1_{}_artifact.txt", origin.addr.port());
    assert_eq!(saved, [name.as_str(), "manifest.jsonl"]);
    let body = std::fs::read_to_string(out.path().join(&name)).expect("saved file");
    assert_eq!(body, BODY);
    assert_eq!(proxy.terminate(LIMIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn an_upstream_ca_file_that_cannot_be_used_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n").expect("write");
    let missing = dir.path().join("missing.pem");
    for (path, problem) in [
        (&not_pem, "no certificate in it"),
        (&missing, "cannot read it"),
    ] {
        let path = path.to_str().expect("UTF-8 path");
        let out = run_binary_within(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--upstream-ca-file",
                path,
            ],
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("upstream_ca_file {path}: {problem}")),
            "{stderr}"
        );
    }
}
