//! Limits and malformed input, end to end over raw sockets: bad request
//! lines, oversized heads and URLs, request smuggling, pipelining, slow and
//! idle clients, the queue, and connection limits.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::raw::{Exchange, Response, exchange_until_close, read_to_close};
use crate::support::{
    Gate, Origin, Proxy, ProxyProcess, Reply, curl, gated_origin, read_response, read_until_close,
    wait_until,
};

/// Time allowed for anything that is not itself the subject of a test.
const LIMIT: Duration = Duration::from_secs(20);

/// `GET http://ADDR/path HTTP/1.1` with a Host header, keep-alive.
fn get(addr: SocketAddr, path: &str) -> String {
    format!("GET http://{addr}{path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
}

/// The exchange's only response, or a panic showing what was sent and got.
fn only_response(sent: &[u8], got: &Exchange) -> Response {
    let responses = got.responses();
    assert_eq!(
        responses.len(),
        1,
        "sent {:?}\ngot {:?}",
        String::from_utf8_lossy(&sent[..sent.len().min(400)]),
        got.text()
    );
    responses[0].clone()
}

/// Sends `request` and expects one error answer with `status` and a
/// Proxy-Status naming `error`, after which the proxy closes.
fn expect_error_and_close(proxy: &Proxy, request: &[u8], status: u16, error: &str) -> Response {
    let got = exchange_until_close(proxy.addr, request, LIMIT);
    let response = only_response(request, &got);
    let shown = String::from_utf8_lossy(&request[..request.len().min(400)]).into_owned();
    assert_eq!(
        response.status,
        status,
        "sent {shown:?}\ngot {:?}",
        got.text()
    );
    let proxy_status = response.header("proxy-status").unwrap_or_default();
    assert!(
        proxy_status.contains(&format!("error={error}")),
        "sent {shown:?}\ngot {:?}",
        got.text()
    );
    assert!(
        response.header("x-request-id").is_some(),
        "no X-Request-Id: {:?}",
        got.text()
    );
    assert!(
        got.closed,
        "connection left open after {status}: sent {shown:?}"
    );
    response
}

/// Asserts that no request reached `origin` within a short settling time.
fn assert_origin_untouched(origin: &Origin, sent: &[u8]) {
    let reached = wait_until(Duration::from_millis(300), || !origin.requests().is_empty());
    assert!(
        !reached,
        "sent {:?}\norigin received {:?}",
        String::from_utf8_lossy(sent),
        origin.requests()
    );
}

#[test]
fn garbage_request_line_is_answered_400_and_closed() {
    let proxy = Proxy::start();
    for request in [
        &b"HELLO THERE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET http://127.0.0.1/ HTTP/1.10\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET  http://127.0.0.1/ HTTP/1.1\r\n\r\n",
    ] {
        expect_error_and_close(&proxy, request, 400, "http_request_error");
    }
    // Well formed, in a version the proxy does not speak.
    let request = b"GET http://127.0.0.1/ HTTP/9.9\r\n\r\n";
    expect_error_and_close(&proxy, request, 505, "http_request_error");
}

#[test]
fn oversized_head_is_answered_431() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    // 80 headers of 1000 bytes: over the default 64 KiB, under the header count.
    let mut request = format!("GET {} HTTP/1.1\r\nHost: x\r\n", origin.url("/")).into_bytes();
    for n in 0..80 {
        request.extend_from_slice(format!("X-Filler-{n}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    expect_error_and_close(&proxy, &request, 431, "http_request_error");
    assert_origin_untouched(&origin, b"(80 KB head)");
}

#[test]
fn overlong_header_line_is_answered_431() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        origin.url("/"),
        "b".repeat(70 * 1024)
    );
    expect_error_and_close(&proxy, request.as_bytes(), 431, "http_request_error");
    assert_origin_untouched(&origin, b"(70 KB header line)");
}

#[test]
fn ten_thousand_headers_are_answered_431() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let mut request = format!("GET {} HTTP/1.1\r\n", origin.url("/")).into_bytes();
    for n in 0..10_000 {
        request.extend_from_slice(format!("h{n}:v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    expect_error_and_close(&proxy, &request, 431, "http_request_error");
    assert_origin_untouched(&origin, b"(10,000 headers)");
}

#[test]
fn oversized_url_is_answered_414() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let url = origin.url(&format!("/{}", "u".repeat(9000)));
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_error_and_close(&proxy, request.as_bytes(), 414, "http_request_error");
    assert_origin_untouched(&origin, b"(9000-byte URL)");
}

#[test]
fn oversized_url_is_answered_414_before_the_head_completes() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    // No line end at all: the proxy must not wait for one.
    let request = format!("GET {}", origin.url(&format!("/{}", "u".repeat(10_000))));
    expect_error_and_close(&proxy, request.as_bytes(), 414, "http_request_error");
    assert_origin_untouched(&origin, b"(unfinished 10,000-byte URL)");
}

/// A head whose framing is a smuggling vector, followed by what a
/// desynchronised server would read as a second request.
fn smuggling_request(origin: &Origin, framing: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n{framing}\r\n{body}",
        origin.url("/upload"),
        origin.addr
    )
    .into_bytes()
}

fn smuggled_tail(origin: &Origin) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/smuggled"),
        origin.addr
    )
}

#[test]
fn conflicting_length_and_chunked_is_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let body = format!("0\r\n\r\n{}", smuggled_tail(&origin));
    let request = smuggling_request(
        &origin,
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        &body,
    );
    expect_error_and_close(&proxy, &request, 400, "http_request_error");
    assert_origin_untouched(&origin, &request);
}

#[test]
fn differing_content_lengths_are_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let body = format!("hello{}", smuggled_tail(&origin));
    for framing in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
    ] {
        let request = smuggling_request(&origin, framing, &body);
        expect_error_and_close(&proxy, &request, 400, "http_request_error");
        assert_origin_untouched(&origin, &request);
    }
}

#[test]
fn transfer_coding_other_than_chunked_alone_is_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let body = format!("0\r\n\r\n{}", smuggled_tail(&origin));
    for framing in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
    ] {
        let request = smuggling_request(&origin, framing, &body);
        expect_error_and_close(&proxy, &request, 400, "http_request_error");
        assert_origin_untouched(&origin, &request);
    }
}

/// A bad chunk size is only seen once the body streams, after the proxy
/// may have sent the head upstream. What is guaranteed: the client is not
/// told the request succeeded, the connection is closed (the rest of the
/// stream is never read as a request), and the origin never receives a
/// complete request, so neither the upload nor the smuggled tail.
#[test]
fn bad_chunk_size_in_request_body_is_rejected_and_nothing_smuggled() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let body = format!("zz\r\nhello\r\n0\r\n\r\n{}", smuggled_tail(&origin));
    let request = smuggling_request(&origin, "Transfer-Encoding: chunked\r\n", &body);
    let got = exchange_until_close(proxy.addr, &request, LIMIT);
    let responses = got.responses();
    let shown = String::from_utf8_lossy(&request);
    assert!(responses.len() <= 1, "sent {shown:?}\ngot {:?}", got.text());
    if let Some(response) = responses.first() {
        assert_eq!(response.status, 400, "sent {shown:?}\ngot {:?}", got.text());
        assert!(
            response
                .header("proxy-status")
                .is_some_and(|v| v.contains("error=http_request_error")),
            "got {:?}",
            got.text()
        );
    }
    assert!(got.closed, "connection left open: sent {shown:?}");
    // The origin records a request only once its body is complete.
    assert_origin_untouched(&origin, &request);
}

#[test]
fn obs_fold_is_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Folded: first\r\n second\r\n\r\n",
        origin.url("/")
    );
    expect_error_and_close(&proxy, request.as_bytes(), 400, "http_request_error");
    assert_origin_untouched(&origin, request.as_bytes());
}

#[test]
fn whitespace_before_the_colon_is_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    for line in ["Transfer-Encoding : chunked", "X-Thing\t: 1"] {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n",
            origin.url("/")
        );
        expect_error_and_close(&proxy, request.as_bytes(), 400, "http_request_error");
        assert_origin_untouched(&origin, request.as_bytes());
    }
}

#[test]
fn nul_bytes_in_the_head_are_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let url = origin.url("/");
    for request in [
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n"),
        format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-\0Nul: ab\r\n\r\n"),
        format!("GET {url}\0 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ] {
        expect_error_and_close(&proxy, request.as_bytes(), 400, "http_request_error");
        assert_origin_untouched(&origin, request.as_bytes());
    }
}

#[test]
fn header_line_without_a_colon_is_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        origin.url("/")
    );
    expect_error_and_close(&proxy, request.as_bytes(), 400, "http_request_error");
    assert_origin_untouched(&origin, request.as_bytes());
}

#[test]
fn non_ascii_bytes_in_the_target_are_rejected() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::start();
    let url = origin.url("/");
    for tail in [&b"\xff\xfe"[..], "caf\u{e9}".as_bytes(), b"\xc3("] {
        let mut request = format!("GET {url}").into_bytes();
        request.extend_from_slice(tail);
        request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        expect_error_and_close(&proxy, &request, 400, "http_request_error");
        assert_origin_untouched(&origin, &request);
    }
}

#[test]
fn pipelined_good_requests_are_answered_until_a_bad_one_closes() {
    let origin = Origin::start(|request| Reply::ok("text/plain", request.target.clone()));
    let proxy = Proxy::start();
    let mut request = get(origin.addr, "/one");
    request += &get(origin.addr, "/two");
    request += "BROKEN REQUEST LINE\r\n\r\n";
    request += &get(origin.addr, "/after");
    let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 400],
        "sent {request:?}\ngot {:?}",
        got.text()
    );
    let responses = got.responses();
    assert_eq!(responses[0].text(), "/one");
    assert_eq!(responses[1].text(), "/two");
    assert!(got.closed, "connection left open after the bad request");
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two"], "sent {request:?}");
}

#[test]
fn pipelined_smuggling_after_a_good_request_is_rejected() {
    let origin = Origin::start(|request| Reply::ok("text/plain", request.target.clone()));
    let proxy = Proxy::start();
    let mut request = get(origin.addr, "/first");
    request += &format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        origin.url("/post")
    );
    request += &get(origin.addr, "/smuggled");
    let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 400],
        "sent {request:?}\ngot {:?}",
        got.text()
    );
    assert!(got.closed, "connection left open after the bad request");
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/first"], "sent {request:?}");
}

/// Opens a connection and sends `head` one byte every 100 ms from a thread,
/// stopping at the first write error or after `head`'s last byte.
fn trickle(addr: SocketAddr, head: &'static [u8]) -> (TcpStream, thread::JoinHandle<usize>) {
    let stream = TcpStream::connect(addr).expect("connect to proxy");
    let mut writer = stream.try_clone().expect("clone socket");
    let handle = thread::spawn(move || {
        let mut sent = 0;
        for byte in head {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(100));
        }
        sent
    });
    (stream, handle)
}

/// A head long enough that trickling it takes far longer than any test.
const ENDLESS_HEAD: &[u8] = b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-Loris: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Ten clients at once, each with one request; returns each one's result.
fn ten_clients(proxy: SocketAddr, origin: &Origin) -> Vec<Exchange> {
    let handles: Vec<_> = (0..10)
        .map(|n| {
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                origin.url(&format!("/client-{n}"))
            );
            thread::spawn(move || exchange_until_close(proxy, request.as_bytes(), LIMIT))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

fn assert_all_ok(results: &[Exchange]) {
    for (n, got) in results.iter().enumerate() {
        let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200], "client {n} got {:?}", got.text());
        assert_eq!(got.responses()[0].text(), "hello", "client {n}");
    }
}

#[test]
fn trickled_head_gets_408_after_header_timeout_while_others_are_served() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| {
        c.workers = 2.try_into().expect("non-zero");
        c.header_timeout = Duration::from_secs(1);
    });
    let started = Instant::now();
    let (mut slow, trickler) = trickle(proxy.addr, ENDLESS_HEAD);
    let results = ten_clients(proxy.addr, &origin);
    let got = read_to_close(&mut slow, LIMIT);
    let waited = started.elapsed();
    let sent = trickler.join().expect("trickler");
    assert_all_ok(&results);
    let responses = got.responses();
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [408],
        "trickled {sent} bytes, got {:?}",
        got.text()
    );
    assert!(
        responses[0]
            .header("proxy-status")
            .is_some_and(|v| v.contains("error=http_request_error")),
        "got {:?}",
        got.text()
    );
    assert!(got.closed, "slow connection left open");
    // The deadline covers the whole head, however steadily it trickles in.
    assert!(
        waited >= Duration::from_millis(900),
        "408 after {waited:?}, before the 1 s header_timeout"
    );
    assert!(sent < ENDLESS_HEAD.len(), "the whole head went through");
}

#[test]
fn trickling_clients_hold_no_worker() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| {
        c.workers = 2.try_into().expect("non-zero");
        c.header_timeout = Duration::from_secs(60);
    });
    // More slow clients than workers: if they held workers, nobody else would be served.
    let slow: Vec<_> = (0..4).map(|_| trickle(proxy.addr, ENDLESS_HEAD)).collect();
    let results = ten_clients(proxy.addr, &origin);
    assert_all_ok(&results);
    for (mut stream, _) in slow {
        // Still waiting for its head: nothing was answered.
        let got = read_to_close(&mut stream, Duration::from_millis(50));
        assert!(
            got.bytes.is_empty() && !got.closed,
            "slow client answered early: {:?}",
            got.text()
        );
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

#[test]
fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| c.idle_timeout = Duration::from_millis(500));
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = get(origin.addr, "/");
    stream.write_all(request.as_bytes()).expect("send");
    let (status, head, body) = read_response(&mut stream, LIMIT).expect("a response");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"hello");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The default idle_timeout (15 s) would outlast this limit.
    let got = read_to_close(&mut stream, Duration::from_secs(10));
    assert!(got.closed, "idle connection still open after 10 s");
    assert!(got.bytes.is_empty(), "idle connection got {:?}", got.text());
}

#[test]
fn full_queue_answers_503_with_retry_after_and_recovers() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"slow body");
    let proxy = Proxy::with(|c| {
        c.workers = 1.try_into().expect("non-zero");
        c.queue = 1.try_into().expect("non-zero");
    });
    let addr = proxy.addr;
    let first_request = get(origin.addr, "/first");
    let first = thread::spawn(move || exchange_until_close(addr, first_request.as_bytes(), LIMIT));
    // The only worker is now busy until the gate opens.
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "first request never reached the origin"
    );
    // Three more at once: one fits in the queue, the others are turned away.
    let answered = Arc::new(AtomicUsize::new(0));
    let later: Vec<_> = (0..3)
        .map(|n| {
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                origin.url(&format!("/later-{n}"))
            );
            let answered = answered.clone();
            thread::spawn(move || {
                let got = exchange_until_close(addr, request.as_bytes(), LIMIT);
                answered.fetch_add(1, Ordering::SeqCst);
                got
            })
        })
        .collect();
    let two_refused = wait_until(LIMIT, || answered.load(Ordering::SeqCst) >= 2);
    gate.open();
    let first = first.join().expect("first client");
    let later: Vec<Exchange> = later
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    assert!(two_refused, "the queue never overflowed");
    let first_statuses: Vec<u16> = first.responses().iter().map(|r| r.status).collect();
    assert_eq!(first_statuses, [200], "first got {:?}", first.text());
    let mut statuses: Vec<u16> = later
        .iter()
        .map(|got| got.responses().first().map_or(0, |r| r.status))
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 503, 503],
        "got {:?}",
        later.iter().map(Exchange::text).collect::<Vec<_>>()
    );
    for got in later.iter().filter(|g| g.responses()[0].status == 503) {
        let response = &got.responses()[0];
        assert_eq!(
            response.header("retry-after").as_deref(),
            Some("1"),
            "{:?}",
            got.text()
        );
        assert!(
            response
                .header("proxy-status")
                .is_some_and(|v| v.contains("error=proxy_internal_error")),
            "{:?}",
            got.text()
        );
        assert!(got.closed, "503 left the connection open");
    }
    // Recovery: with the slow requests done, a new one is served.
    let got = exchange_until_close(
        addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url("/recovered")
        )
        .as_bytes(),
        LIMIT,
    );
    assert_eq!(
        got.responses().first().map(|r| r.status),
        Some(200),
        "after recovery got {:?}",
        got.text()
    );
}

/// Opens `n` connections that send nothing yet.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

/// The extra connection is refused with 503; after one of the open ones
/// closes, a new connection is served.
fn check_connection_limit(proxy: &Proxy, origin: &Origin, limit_name: &str) {
    let mut open = open_idle(proxy.addr, 3);
    let request = get(origin.addr, "/extra");
    let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
    let response = only_response(request.as_bytes(), &got);
    assert_eq!(response.status, 503, "got {:?}", got.text());
    assert!(
        response
            .header("proxy-status")
            .is_some_and(|v| v.contains("error=proxy_internal_error")),
        "got {:?}",
        got.text()
    );
    assert!(response.text().contains(limit_name), "got {:?}", got.text());
    assert!(got.closed, "refused connection left open");
    assert!(
        origin.requests().is_empty(),
        "the refused request was forwarded"
    );
    // The open ones are still served.
    let mut first = open.remove(0);
    first
        .write_all(get(origin.addr, "/kept").as_bytes())
        .expect("send");
    let (status, head, _) = read_response(&mut first, LIMIT).expect("an answer");
    assert_eq!(status, 200, "{head}");
    drop(first);
    // Once the proxy notices the close, there is room again.
    let mut last = String::new();
    let served = wait_until(LIMIT, || {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url("/again")
        );
        let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
        last = got.text();
        got.responses().first().is_some_and(|r| r.status == 200)
    });
    assert!(
        served,
        "no connection accepted after one closed; last got {last:?}"
    );
    drop(open);
}

#[test]
fn connection_past_max_conns_per_client_gets_503_and_room_comes_back() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| c.max_conns_per_client = 3);
    check_connection_limit(&proxy, &origin, "max_conns_per_client");
}

#[test]
fn connection_past_max_connections_gets_503_and_room_comes_back() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| c.max_connections = 3);
    check_connection_limit(&proxy, &origin, "max_connections");
}

#[test]
fn client_that_stops_reading_does_not_block_others() {
    let origin = Origin::start(|request| {
        if request.target == "/huge" {
            Reply::Huge { len: 256 << 20 }
        } else {
            Reply::ok("text/plain", "hello")
        }
    });
    let proxy = Proxy::with(|c| c.workers = 2.try_into().expect("non-zero"));
    let mut stuck = TcpStream::connect(proxy.addr).expect("connect");
    stuck
        .write_all(get(origin.addr, "/huge").as_bytes())
        .expect("send");
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "huge request never reached the origin"
    );
    // The stuck client never reads; everyone else is still served.
    for n in 0..10 {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url(&format!("/other-{n}"))
        );
        let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
        let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200], "client {n} got {:?}", got.text());
    }
    drop(stuck);
}

#[test]
fn clients_that_stop_reading_do_not_hold_up_queued_requests() {
    // A queued job wakes no worker while enough are running (two per CPU).
    // These clients keep that many workers stuck in a write: a worker
    // blocked on a full socket counts as waiting, not running, so the jobs
    // behind them still get a worker at once. (Should running workers be
    // held up otherwise, the acceptor's nudge wakes one: job.rs tests it.)
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let stuck_count = 2 * cpus;
    let origin = Origin::start(|request| {
        if request.target == "/huge" {
            Reply::Huge { len: 256 << 20 }
        } else {
            Reply::ok("text/plain", "hello")
        }
    });
    let proxy = Proxy::with(|c| {
        c.workers = (stuck_count + 4).try_into().expect("non-zero");
        // Every client request here is a miss: cached or not, the stuck
        // workers are what the test is about.
        c.cache_mem = 0;
    });
    let stuck = clients_asking(proxy.addr, &origin, "/huge", stuck_count);
    assert!(
        wait_until(LIMIT, || origin.requests().len() == stuck_count),
        "the huge requests never all reached the origin"
    );
    // Stuck for good once nothing more arrives at these clients: the
    // workers then block in their writes.
    wait_until_stuck(&stuck);
    ten_others_are_served(proxy.addr, &origin);
    drop(stuck);
}

/// `count` connections to `proxy`, each having sent a GET for `path` at
/// `origin` and read nothing.
fn clients_asking(proxy: SocketAddr, origin: &Origin, path: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(proxy).expect("connect");
            stream
                .write_all(get(origin.addr, path).as_bytes())
                .expect("send");
            stream
        })
        .collect()
}

/// Waits until nothing more arrives at the `stuck` clients, each of which
/// has unread bytes: their workers wait on full sockets.
fn wait_until_stuck(stuck: &[TcpStream]) {
    let unread = || -> Vec<u64> {
        stuck
            .iter()
            .map(|s| rustix::io::ioctl_fionread(s).expect("FIONREAD"))
            .collect()
    };
    let mut last = unread();
    assert!(
        wait_until(LIMIT, || {
            thread::sleep(Duration::from_millis(100));
            let now = unread();
            let still = now == last && now.iter().all(|&n| n > 0);
            last = now;
            still
        }),
        "the answers never stopped arriving"
    );
}

/// Ten clients at once, each asking `origin` for a path of its own, each
/// answered 200.
fn ten_others_are_served(proxy: SocketAddr, origin: &Origin) {
    let clients: Vec<_> = (0..10)
        .map(|n| {
            let url = origin.url(&format!("/other-{n}"));
            thread::spawn(move || {
                let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                exchange_until_close(proxy, request.as_bytes(), LIMIT)
            })
        })
        .collect();
    for (n, client) in clients.into_iter().enumerate() {
        let got = client.join().expect("client thread");
        let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200], "client {n} got {:?}", got.text());
    }
}

#[test]
fn clients_that_stop_reading_a_stored_answer_sent_from_its_file_do_not_hold_up_others() {
    // As above, for cache hits that go from a file to the socket with
    // `sendfile` (a disk object here): a worker whose client's socket is
    // full waits for room as a write does, and the others are served.
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let stuck_count = 2 * cpus;
    const LEN: usize = 32 << 20;
    let origin = Origin::start(|request| {
        if request.target == "/stored" {
            Reply::Full {
                status: 200,
                headers: vec![("Cache-Control".into(), "max-age=3600".into())],
                body: vec![b's'; LEN],
            }
        } else {
            Reply::ok("text/plain", "hello")
        }
    });
    let dir = tempfile::tempdir().expect("cache dir");
    let proxy = Proxy::with(|c| {
        c.workers = (stuck_count + 4).try_into().expect("non-zero");
        c.cache_dir = Some(dir.path().to_path_buf());
        // On disk only: every hit is a sendfile of the whole file.
        c.cache_max_object = 1024;
    });
    let first = exchange_until_close(
        proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url("/stored")
        )
        .as_bytes(),
        LIMIT,
    );
    assert_eq!(only_response(b"stored", &first).body.len(), LEN);
    let stuck = clients_asking(proxy.addr, &origin, "/stored", stuck_count);
    wait_until_stuck(&stuck);
    assert_eq!(origin.requests().len(), 1, "the stuck clients got hits");
    ten_others_are_served(proxy.addr, &origin);
    drop(stuck);
}

#[test]
fn an_oversized_body_sent_in_full_still_gets_its_413_not_a_reset() {
    let origin = Origin::fixed("text/plain", b"never");
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(1000));
    let mut client = std::net::TcpStream::connect(proxy.addr).expect("connect to proxy");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
        origin.url("/upload")
    );
    let mut writer = client.try_clone().expect("clone socket");
    // The client keeps sending its body as the answer comes back, like curl
    // without Expect: 100-continue; the proxy must not reset it mid-answer.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let chunk = [b'x'; 16 * 1024];
        for _ in 0..122 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let answer = read_until_close(&mut client, Duration::from_secs(10));
    let _ = sender.join();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "got: {text:?}");
    assert!(origin.requests().is_empty(), "nothing forwarded");
}

#[test]
fn a_request_body_that_trickles_in_is_cut_off_with_408() {
    // Each byte comes well within idle_timeout of the last, so no single
    // wait runs out; together they are far slower than client_min_rate.
    let origin = Origin::fixed("text/plain", b"never");
    let proxy = Proxy::with(|c| {
        c.idle_timeout = Duration::from_secs(2);
        c.client_min_rate = 1024;
    });
    let mut client = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        origin.url("/upload")
    );
    client.write_all(head.as_bytes()).expect("send head");
    let mut writer = client.try_clone().expect("clone socket");
    let trickler = thread::spawn(move || {
        // At most 60 bytes (18 s), or until the proxy stops listening.
        for _ in 0..60 {
            if writer.write_all(b"x").is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let got = read_to_close(&mut client, LIMIT);
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "{}", got.text());
    let response = &responses[0];
    assert_eq!(response.status, 408, "{}", got.text());
    assert!(
        response
            .header("proxy-status")
            .is_some_and(|v| v.contains("error=http_request_error")),
        "{}",
        response.head
    );
    assert!(
        response
            .text()
            .contains("slower than client_min_rate (1KiB a second)"),
        "{}",
        response.text()
    );
    assert!(got.closed, "connection left open after a cut body");
    drop(client);
    trickler.join().expect("trickler");
}

#[test]
fn a_client_that_reads_its_answer_too_slowly_frees_its_worker_and_a_fast_one_is_served_whole() {
    const LEN: u64 = 64 << 20;
    let origin = Origin::start(|request| {
        if request.target == "/other" {
            Reply::ok("text/plain", "other")
        } else {
            Reply::Huge { len: LEN }
        }
    });
    // One worker: while a client holds it, nobody else is served.
    let proxy = Proxy::with(|c| {
        c.workers = 1.try_into().expect("non-zero");
        c.idle_timeout = Duration::from_millis(500);
        c.client_min_rate = 4 << 20;
        c.cache_mem = 0;
    });
    // A client that takes the whole answer at loopback speed keeps up.
    let close = |path: &str| {
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url(path)
        )
    };
    let fast = exchange_until_close(proxy.addr, close("/fast").as_bytes(), LIMIT);
    let responses = fast.responses();
    assert_eq!(
        responses.len(),
        1,
        "fast client: {} bytes",
        fast.bytes.len()
    );
    assert_eq!(responses[0].body.len() as u64, LEN, "fast client cut short");

    // One that reads 4 KiB every 100 ms (40 KiB a second) would hold the
    // worker for half an hour.
    let mut slow = TcpStream::connect(proxy.addr).expect("connect to proxy");
    slow.write_all(close("/slow").as_bytes()).expect("send");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reading = Arc::clone(&stop);
    let reader = thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let _ = slow.set_read_timeout(Some(LIMIT));
        // Longer than the next client waits: only a cut frees the worker.
        while started.elapsed() < 2 * LIMIT && !stop_reading.load(Ordering::Relaxed) {
            if !matches!(std::io::Read::read(&mut slow, &mut buf), Ok(n) if n > 0) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 2),
        "the slow request never reached the origin"
    );
    // Cut off, it leaves the worker to the next client.
    let other = exchange_until_close(proxy.addr, close("/other").as_bytes(), LIMIT);
    let statuses: Vec<u16> = other.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "{}", other.text());
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("slow reader");
}

#[test]
fn a_head_sent_a_byte_at_a_time_gets_the_verdict_a_whole_one_gets() {
    // The acceptor parses a trickled head again only when a line ends:
    // a good head is answered when its blank line comes, a bad header
    // line as soon as it ends, long before the header timeout.
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = Proxy::with(|c| c.header_timeout = Duration::from_secs(60));
    let good = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nConnection: close\r\n\r\n",
        origin.url("/trickled")
    );
    let bad = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n",
        origin.url("/never")
    );
    for (head, status) in [(good, 200), (bad, 400)] {
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        for byte in head.bytes() {
            stream.write_all(&[byte]).expect("send a byte");
            thread::sleep(Duration::from_millis(2));
        }
        let got = read_to_close(&mut stream, LIMIT);
        let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [status], "sent {head:?}, got {:?}", got.text());
    }
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/trickled"]);
}

#[test]
fn a_long_target_after_an_empty_line_is_refused_as_it_arrives() {
    // An empty line may come before the request line (RFC 9112 §2.2); the
    // request line after it is still judged as it arrives, not when the
    // head is complete or times out.
    let proxy = Proxy::with(|c| {
        c.max_url_bytes = 100;
        c.header_timeout = Duration::from_secs(60);
    });
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(b"\r\n").expect("send an empty line");
    thread::sleep(Duration::from_millis(200));
    let line = format!("GET http://127.0.0.1:9/{}", "a".repeat(300));
    stream
        .write_all(line.as_bytes())
        .expect("send a long target");
    let got = read_to_close(&mut stream, LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [414], "got {:?}", got.text());
}

/// A machine whose hard open-files limit is 4,096 (common) runs the proxy
/// at its defaults: `max_connections` is lowered to what fits beside the
/// workers' and tunnels' descriptors, with a warning saying how to serve
/// more, and requests are served. A `max_connections` given that does not
/// fit stops the start with the value that would.
#[test]
fn the_defaults_start_under_a_low_hard_file_limit() {
    let origin = Origin::fixed("text/plain", b"hello");
    let proxy = ProxyProcess::start_with_file_limit(4096, &["--allow-dest", "127.0.0.0/8"]);
    let log = proxy.log().join("\n");
    assert!(
        log.contains("max_connections lowered from 10000 to 1304") && log.contains("LimitNOFILE="),
        "{log}"
    );
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]));

    let given = Command::new("sh")
        .args(["-c", "ulimit -n 4096 && exec \"$0\" serve \"$@\""])
        .arg(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(["--listen", "127.0.0.1:0", "--max-connections", "5000"])
        .stdin(Stdio::null())
        .output()
        .expect("run fetchproxy under sh");
    let stderr = String::from_utf8_lossy(&given.stderr);
    assert_eq!(given.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-connections 1304"), "{stderr}");
}
