//! Request framing (issue 15), with the exact bytes of the smuggling sweep:
//! every request's body is consumed, or the connection closed, before the
//! next request is parsed, whoever answers it; lines end in CRLF only;
//! look-alike framing headers are dropped; the Host rules of RFC 9112 §3.2;
//! trailers follow the head's field grammar; and a smuggled request behind
//! HAProxy never reaches another client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use fetchproxy::auth::{User, parse_password_hash};

use crate::support::haproxy::Haproxy;
use crate::support::raw::{Exchange, assert_raw_error, exchange_until_close, split_raw};
use crate::support::{Origin, Proxy, Reply, wait_until};

const LIMIT: Duration = Duration::from_secs(20);

/// An origin that answers every request with its own path.
fn echo_origin() -> Origin {
    Origin::start(|request| Reply::ok("text/plain", request.target.clone()))
}

/// The request the sweep hid in a body.
fn smuggled(origin: &Origin) -> Vec<u8> {
    let o = origin.addr;
    format!("GET http://{o}/smuggled-abs?v=28739 HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes()
}

/// A request for `/after` that closes the connection, so the exchange ends.
fn after(origin: &Origin) -> Vec<u8> {
    let o = origin.addr;
    format!("GET http://{o}/after HTTP/1.1\r\nHost: {o}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `head` (which ends in the framing header's line) with `body` after it.
fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// `body` as one chunk and the last chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

fn origin_saw(origin: &Origin, path: &str) -> bool {
    origin.requests().iter().any(|r| r.target.contains(path))
}

fn describe(sent: &[u8], got: &Exchange) -> String {
    format!(
        "sent: {:?}\ngot: {:?}",
        String::from_utf8_lossy(sent),
        got.text()
    )
}

/// The issue's report: the body of a request the proxy answers itself was
/// parsed as the next request, and the origin got `/smuggled-abs`.
#[test]
fn issue_15_the_body_of_a_request_the_proxy_answers_is_never_the_next_request() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let hidden = smuggled(&origin);
    let len = hidden.len();
    let carriers = [
        format!("GET /healthz HTTP/1.1\r\nHost: {o}\r\nContent-Length: {len}\r\n\r\n"),
        format!("HEAD /healthz HTTP/1.1\r\nHost: {o}\r\nContent-Length: {len}\r\n\r\n"),
        format!("GET /metrics HTTP/1.1\r\nHost: {o}\r\nContent-Length: {len}\r\n\r\n"),
        format!(
            "OPTIONS http://{o}/ HTTP/1.1\r\nHost: {o}\r\nMax-Forwards: 0\r\nContent-Length: {len}\r\n\r\n"
        ),
        format!("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {len}\r\n\r\n"),
    ];
    for carrier in carriers {
        let mut sent = with_body(&carrier, &hidden);
        sent.extend_from_slice(&after(&origin));
        let got = exchange_until_close(proxy.addr, &sent, LIMIT);
        let responses = got.responses();
        let context = describe(&sent, &got);
        assert!(!origin_saw(&origin, "/smuggled-abs"), "{context}");
        // The carrier's answer, then the next request's, on one connection:
        // the body was read and dropped, and the connection kept.
        let head_only = carrier.starts_with("HEAD");
        assert_eq!(responses.len(), 2, "{context}");
        assert_eq!(responses[0].status, 200, "{context}");
        assert_eq!(responses[1].status, 200, "{context}");
        if !head_only {
            assert_eq!(responses[1].text(), "/after", "{context}");
        }
    }
}

#[test]
fn issue_15_a_chunked_body_of_a_request_the_proxy_answers_is_read_and_dropped() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut sent = with_body(&head, &chunked(&smuggled(&origin)));
    sent.extend_from_slice(&after(&origin));
    let got = exchange_until_close(proxy.addr, &sent, LIMIT);
    let context = describe(&sent, &got);
    let responses = got.responses();
    assert!(!origin_saw(&origin, "/smuggled-abs"), "{context}");
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200],
        "{context}"
    );
    assert_eq!(responses[1].text(), "/after", "{context}");
}

/// With `Expect: 100-continue` the client may or may not send the body, so
/// where the next request starts is unknown: answered, then closed.
#[test]
fn issue_15_an_expected_body_of_a_request_the_proxy_answers_closes_the_connection() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let hidden = smuggled(&origin);
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {o}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    );
    let sent = with_body(&head, &hidden);
    let got = exchange_until_close(proxy.addr, &sent, LIMIT);
    let context = describe(&sent, &got);
    let responses = got.responses();
    assert!(got.closed, "{context}");
    assert_eq!(responses.len(), 1, "{context}");
    assert_eq!(responses[0].status, 200, "{context}");
    assert_eq!(
        responses[0].header("connection").as_deref(),
        Some("close"),
        "{context}"
    );
    assert!(!origin_saw(&origin, "/smuggled-abs"), "{context}");
}

/// A body too large to drop is not read at all: the answer says
/// `Connection: close` and nothing after it is parsed.
#[test]
fn issue_15_a_large_body_of_a_request_the_proxy_answers_closes_the_connection() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let mut body = smuggled(&origin);
    body.resize(200 * 1024, b'x');
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {o}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sent = with_body(&head, &body);
    let got = exchange_until_close(proxy.addr, &sent, LIMIT);
    let context = describe(&sent[..200], &got);
    let responses = got.responses();
    assert!(got.closed, "{context}");
    assert_eq!(responses.len(), 1, "{context}");
    assert_eq!(
        responses[0].header("connection").as_deref(),
        Some("close"),
        "{context}"
    );
    assert!(!origin_saw(&origin, "/smuggled-abs"), "{context}");
}

/// A 407 (and any error) with a body closes the connection.
#[test]
fn issue_15_a_407_with_a_body_never_lets_the_body_through() {
    let origin = echo_origin();
    let hash = fetchproxy::auth::hash_password("secret").expect("hash");
    let user = User {
        name: "alice".into(),
        password_hash: parse_password_hash(&hash).expect("parse hash"),
    };
    let proxy = Proxy::with(|config| config.users = vec![user]);
    let o = origin.addr;
    let hidden = smuggled(&origin);
    let head = format!(
        "POST http://{o}/form HTTP/1.1\r\nHost: {o}\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    );
    let mut sent = with_body(&head, &hidden);
    sent.extend_from_slice(&after(&origin));
    let got = exchange_until_close(proxy.addr, &sent, LIMIT);
    let context = describe(&sent, &got);
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "{context}");
    assert_eq!(responses[0].status, 407, "{context}");
    assert!(got.closed, "{context}");
    assert!(origin.requests().is_empty(), "{context}");
}

/// Issue 15 (2): a bare LF anywhere in a head is a 400, and nothing is forwarded.
#[test]
fn issue_15_bare_lf_in_a_request_head_is_400() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let heads = [
        format!(
            "POST http://{o}/lf HTTP/1.1\r\nHost: {o}\r\nX: y\nFoo: barn\nContent-Length: 5\n\nhello"
        ),
        format!("GET http://{o}/lf HTTP/1.1\nHost: {o}\n\n"),
        format!("GET http://{o}/lf HTTP/1.1\r\nHost: {o}\r\n\n"),
        format!("GET http://{o}/lf HTTP/1.1\r\nHost: {o}\n\r\n"),
        format!("\nGET http://{o}/lf HTTP/1.1\r\nHost: {o}\r\n\r\n"),
    ];
    for head in heads {
        let got = exchange_until_close(proxy.addr, head.as_bytes(), LIMIT);
        let response = split_raw(&got.bytes)
            .unwrap_or_else(|| panic!("no answer\n{}", describe(head.as_bytes(), &got)));
        assert_raw_error(head.as_bytes(), &response, 400, "http_request_error");
        assert!(
            response.text().contains("bare LF"),
            "{}",
            describe(head.as_bytes(), &got)
        );
        assert!(got.closed, "{}", describe(head.as_bytes(), &got));
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

/// RFC 9110 §2.5 and §15.6.6: a later HTTP/1 minor version is served as
/// HTTP/1.1, on a connection kept alive; another major version gets 505 and
/// a close, and nothing is forwarded.
#[test]
fn a_request_line_in_another_http_version() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let mut sent = format!("GET http://{o}/one-two HTTP/1.2\r\nHost: {o}\r\n\r\n").into_bytes();
    sent.extend_from_slice(&after(&origin));
    let got = exchange_until_close(proxy.addr, &sent, LIMIT);
    let first = split_raw(&got.bytes).unwrap_or_else(|| panic!("{}", describe(&sent, &got)));
    assert_eq!(first.status, 200, "{}", describe(&sent, &got));
    assert!(first.head.starts_with("HTTP/1.1 200"), "{}", first.head);
    let text = got.text();
    assert!(
        text.contains("/one-two") && text.contains("/after"),
        "{text}"
    );
    assert!(origin_saw(&origin, "/one-two") && origin_saw(&origin, "/after"));

    for version in ["HTTP/2.0", "HTTP/0.9", "HTTP/3.0"] {
        let head = format!("GET http://{o}/other-{version} {version}\r\nHost: {o}\r\n\r\n");
        let got = exchange_until_close(proxy.addr, head.as_bytes(), LIMIT);
        let response = split_raw(&got.bytes)
            .unwrap_or_else(|| panic!("no answer\n{}", describe(head.as_bytes(), &got)));
        assert_raw_error(head.as_bytes(), &response, 505, "http_request_error");
        assert!(
            response
                .text()
                .contains(&format!("{version} is not supported")),
            "{}",
            describe(head.as_bytes(), &got)
        );
        assert!(got.closed, "{}", describe(head.as_bytes(), &got));
    }
    assert!(!origin_saw(&origin, "/other-"), "{:?}", origin.requests());
}

/// Issue 15 (3): `transfer_encoding` and `content_length` never reach the
/// origin next to the proxy's own framing.
#[test]
fn issue_15_look_alike_framing_headers_are_not_forwarded() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let sent = format!(
        "POST http://{o}/alike HTTP/1.1\r\nHost: {o}\r\ntransfer_encoding: chunked\r\ncontent_length: 99\r\nContent_Length: 7\r\nX_Host: kept\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    );
    let got = exchange_until_close(proxy.addr, sent.as_bytes(), LIMIT);
    let context = describe(sent.as_bytes(), &got);
    assert_eq!(
        got.responses().first().map(|r| r.status),
        Some(200),
        "{context}"
    );
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{context}");
    let names: Vec<String> = requests[0]
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    for dropped in ["transfer_encoding", "content_length"] {
        assert!(!names.iter().any(|n| n == dropped), "{names:?}");
    }
    assert!(names.iter().any(|n| n == "x_host"), "{names:?}");
    assert_eq!(requests[0].body, b"hello");
}

/// Issue 15 (4): RFC 9112 §3.2's Host rules, each a 400 with nothing forwarded.
#[test]
fn issue_15_requests_breaking_the_host_rules_are_400() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let requests = [
        format!("GET http://{o}/nohost HTTP/1.1\r\n\r\n"),
        format!("GET http://{o}/two HTTP/1.1\r\nHost: {o}\r\nHost: {o}\r\n\r\n"),
        format!("GET http://{o}/empty HTTP/1.1\r\nHost:\r\n\r\n"),
        format!("GET http://{o}/slash HTTP/1.1\r\nHost: foo/bar\r\n\r\n"),
        "GET /healthz HTTP/1.1\r\n\r\n".to_string(),
    ];
    for sent in requests {
        let got = exchange_until_close(proxy.addr, sent.as_bytes(), LIMIT);
        let response = split_raw(&got.bytes)
            .unwrap_or_else(|| panic!("no answer\n{}", describe(sent.as_bytes(), &got)));
        assert_raw_error(sent.as_bytes(), &response, 400, "http_request_error");
        assert!(
            response.text().contains("host"),
            "{}",
            describe(sent.as_bytes(), &got)
        );
    }
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

/// Issue 15 (5): a trailer a head would refuse fails the request; the
/// origin, which got the head and the chunks read so far, sees the
/// upstream connection end, never a second request.
#[test]
fn issue_15_trailers_a_head_would_refuse_fail_the_request() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let o = origin.addr;
    let trailers = [
        format!("GET http://{o}/smuggled-trailer HTTP/1.1"),
        "NoColon".to_string(),
        "X: a\0b".to_string(),
        " folded".to_string(),
    ];
    for trailer in trailers {
        let sent = format!(
            "POST http://{o}/upload HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{trailer}\r\n\r\n"
        );
        let got = exchange_until_close(proxy.addr, sent.as_bytes(), LIMIT);
        let context = describe(sent.as_bytes(), &got);
        assert!(got.closed, "{context}");
        let response = split_raw(&got.bytes).unwrap_or_else(|| panic!("no answer\n{context}"));
        assert_raw_error(sent.as_bytes(), &response, 400, "http_request_error");
    }
    assert!(!origin_saw(&origin, "/smuggled-trailer"));
    // No body that the origin received was complete: each upload was cut.
    assert!(
        origin.requests().iter().all(|r| r.target != "/upload"),
        "{:?}",
        origin.requests()
    );
}

/// Reads one response off `stream`: head, then a Content-Length body.
fn read_one_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        got.len() >= end + 4 + len
    };
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    while !complete(&got) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// HAProxy in front, sharing its connections to the proxy between clients
/// (`http-reuse always`, one connection): a client's `/healthz` with a
/// smuggled request in its body never puts an answer in another client's
/// stream, and the origin never gets the smuggled request.
#[test]
fn issue_15_a_smuggled_request_behind_haproxy_never_reaches_another_client() {
    let origin = echo_origin();
    let proxy = Proxy::start();
    let haproxy = Haproxy::start(&haproxy_config(proxy.addr));
    let o = origin.addr;
    let hidden = smuggled(&origin);
    for round in 0..5 {
        let mut attacker = TcpStream::connect(haproxy.addr).expect("connect");
        let sent = with_body(
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: {o}\r\nContent-Length: {}\r\n\r\n",
                hidden.len()
            ),
            &hidden,
        );
        attacker.write_all(&sent).expect("send");
        let answer = read_one_response(&mut attacker);
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
            "round {round}: {:?}\n{}",
            String::from_utf8_lossy(&answer),
            haproxy.log()
        );
        let mut victim = TcpStream::connect(haproxy.addr).expect("connect");
        let path = format!("/victim-{round}");
        victim
            .write_all(format!("GET http://{o}{path} HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
            .expect("send");
        let reply = String::from_utf8_lossy(&read_one_response(&mut victim)).into_owned();
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.ends_with(&path),
            "round {round}: the victim got {reply:?}\n{}",
            haproxy.log()
        );
    }
    assert!(wait_until(LIMIT, || origin.requests().len() >= 5));
    assert!(
        !origin_saw(&origin, "/smuggled-abs"),
        "{:?}",
        origin.requests()
    );
}

/// The config for the HAProxy in front: every request logged with its
/// timers and termination state, for the failure messages.
fn haproxy_config(proxy: SocketAddr) -> String {
    format!(
        "global\n  maxconn 64\n  log stdout format raw local0\n  stats socket {{dir}}/admin.sock mode 600\n\
         defaults\n  mode http\n  log global\n  option httplog\n  timeout connect 5s\n  timeout client 20s\n  timeout server 20s\n  http-reuse always\n\
         frontend front\n  bind 127.0.0.1:{{port}}\n  default_backend proxies\n\
         backend proxies\n  server one {proxy} maxconn 1\n"
    )
}
