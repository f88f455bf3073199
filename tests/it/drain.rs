//! Draining as a load balancer sees it, through the real binary: after
//! SIGTERM a connection the balancer keeps open is never closed under a
//! request it may be sending; the request is answered, with
//! `Connection: close`, and `/healthz` on such a connection says 503
//! `draining`. Idle connections end the drain at their idle deadline or at
//! the end of the grace period, whichever comes first.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::raw::read_to_close;
use crate::support::{Origin, ProxyProcess, read_response};

const LIMIT: Duration = Duration::from_secs(20);
const BODY: &[u8] = b"served while draining\n";

fn start(extra: &[&str]) -> ProxyProcess {
    let mut args = vec!["--allow-dest", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

fn log_of(proxy: &ProxyProcess) -> String {
    proxy.log().join("\n")
}

/// A keep-alive connection that has had one answer and is now idle.
fn idle_connection(proxy: SocketAddr, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let (status, head, _) = read_response(&mut stream, LIMIT).expect("first answer");
    assert_eq!(status, 200, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    stream
}

/// SIGTERM, then waits for the proxy to say it is draining.
fn drain(proxy: &ProxyProcess) {
    proxy.signal("TERM");
    assert!(
        proxy.wait_for_log("draining:", LIMIT).is_some(),
        "no draining line; log:\n{}",
        log_of(proxy)
    );
}

fn exit_code(proxy: &mut ProxyProcess) -> Option<i32> {
    proxy
        .wait_exit(LIMIT)
        .map(|status| status.code().unwrap_or(-1))
}

#[test]
fn a_request_on_an_idle_connection_after_sigterm_is_answered_then_closed() {
    let origin = Origin::fixed("text/plain", BODY);
    let mut proxy = start(&[]);
    let forward = |path: &str| {
        let url = origin.url(path);
        format!("GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.addr)
    };
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut balancer = idle_connection(proxy.addr, &forward("/before"));
    let mut checker = idle_connection(proxy.addr, health);
    drain(&proxy);
    assert!(
        TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(2)).is_err(),
        "a new connection was accepted while draining"
    );

    balancer
        .write_all(forward("/after").as_bytes())
        .expect("send on the idle connection");
    let got = read_to_close(&mut balancer, LIMIT);
    let responses = got.responses();
    assert_eq!(
        responses.len(),
        1,
        "got {:?}\n{}",
        got.text(),
        log_of(&proxy)
    );
    assert_eq!(responses[0].status, 200, "got {:?}", got.text());
    assert_eq!(responses[0].body, BODY);
    assert_eq!(responses[0].header("connection").as_deref(), Some("close"));
    assert!(got.closed, "connection left open after the last answer");

    checker.write_all(health.as_bytes()).expect("send");
    let got = read_to_close(&mut checker, LIMIT);
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "got {:?}", got.text());
    assert_eq!(responses[0].status, 503, "got {:?}", got.text());
    assert_eq!(responses[0].text(), "draining\n");
    assert_eq!(responses[0].header("connection").as_deref(), Some("close"));
    assert!(got.closed, "connection left open after the last answer");

    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/before", "/after"]);
    assert_eq!(exit_code(&mut proxy), Some(0), "log:\n{}", log_of(&proxy));
}

/// An idle connection during a drain started with `flags` closes with
/// nothing sent, long before the other (5 minute) limit, and the proxy
/// exits 0: an idle connection is no request cut short.
fn idle_connection_closes_silently_and_exit_is_clean(flags: &[&str]) {
    let mut proxy = start(flags);
    let mut idle = idle_connection(proxy.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    drain(&proxy);
    let got = read_to_close(&mut idle, LIMIT);
    assert!(got.closed, "idle connection held open");
    assert!(got.bytes.is_empty(), "sent {:?}", got.text());
    assert_eq!(exit_code(&mut proxy), Some(0), "log:\n{}", log_of(&proxy));
}

#[test]
fn an_idle_connection_ends_the_drain_at_its_idle_deadline_with_nothing_sent() {
    idle_connection_closes_silently_and_exit_is_clean(&["--idle-timeout", "1s", "--grace", "5m"]);
}

#[test]
fn an_idle_connection_ends_the_drain_at_the_end_of_the_grace_and_cuts_nothing() {
    idle_connection_closes_silently_and_exit_is_clean(&[
        "--idle-timeout",
        "5m",
        "--grace",
        "500ms",
    ]);
}
