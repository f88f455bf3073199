//! Forwarding end to end: bodies byte for byte both ways, methods, framing
//! (HEAD, 204, 304, HTTP/1.0, keep-alive, pipelining), the proxy header rules
//! (hop-by-hop, Via, Host, Max-Forwards, X-Request-Id), the proxy's own
//! endpoints, and every upstream failure turned into an honest answer.
//! curl is the client wherever a user would use curl; raw sockets send what
//! curl will not.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::support::origin::pattern_byte;
use crate::support::raw::{
    RawResponse, assert_curl_error, assert_raw_error, closes_within, exchange,
    http10_get_ending_in_reset, read_head, read_one, read_to_close, split_raw,
};
use crate::support::servers::{Responder, Streamer};
use crate::support::{
    Gate, Origin, OriginRequest, Proxy, Reply, curl, gated_origin, metric, scrape_metrics,
    test_config, wait_until,
};

/// Generous limit for anything that should take milliseconds.
const LIMIT: Duration = Duration::from_secs(30);

/// `len` bytes covering every byte value, CR and LF included.
fn binary_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// An origin that echoes the request path as a text body.
fn path_echo_origin() -> Origin {
    Origin::start(|req| Reply::ok("text/plain", format!("path={}", req.target)))
}

/// A `GET url HTTP/1.1` head with `Connection: close` and extra header lines.
fn get_request(url: &str, extra: &str) -> Vec<u8> {
    format!("GET {url} HTTP/1.1\r\nHost: ignored.example\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// Opens a connection to the proxy, writes `request`, reads one response.
fn send_one(stream: &mut TcpStream, request: &[u8], bodiless: bool) -> RawResponse {
    stream.write_all(request).expect("send request");
    read_one(stream, bodiless, LIMIT).unwrap_or_else(|| {
        panic!(
            "no complete response to {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

fn only_request(origin: &Origin) -> OriginRequest {
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "origin requests: {requests:#?}");
    requests.into_iter().next().expect("one request")
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file.flush().expect("flush temp file");
    file
}

// --- Bodies from the origin -------------------------------------------------

#[test]
fn content_length_bodies_arrive_byte_for_byte() {
    let body = binary_body(200_000);
    let origin = Origin::fixed("application/octet-stream", &body);
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/bin"), &[]);
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    assert_eq!(reply.exit, 0, "curl: {}", reply.stderr);
    assert_eq!(reply.header("content-length"), Some("200000"));
    assert!(
        reply.body == body,
        "body differs: got {} bytes",
        reply.body.len()
    );
}

#[test]
fn chunked_bodies_arrive_byte_for_byte() {
    let body = binary_body(100_003);
    let sent = body.clone();
    let origin = Origin::start(move |_| Reply::Chunked {
        status: 200,
        headers: vec![("Content-Type".into(), "application/octet-stream".into())],
        body: sent.clone(),
        piece: 977,
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/chunked"), &[]);
    assert_eq!(
        (reply.status, reply.exit),
        (200, 0),
        "curl: {}",
        reply.stderr
    );
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert!(
        reply.body == body,
        "body differs: got {} bytes",
        reply.body.len()
    );

    // And on a raw socket: well-formed chunks that end with the last chunk.
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = get_request(&origin.url("/chunked"), "");
    let response = send_one(&mut stream, &request, false);
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(
        response.body == body,
        "raw body differs: {} bytes",
        response.body.len()
    );
}

#[test]
fn a_five_mib_body_arrives_byte_for_byte() {
    let len: u64 = 5 * 1024 * 1024;
    let origin = Origin::start(move |_| Reply::Huge { len });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/huge"), &[]);
    assert_eq!(
        (reply.status, reply.exit),
        (200, 0),
        "curl: {}",
        reply.stderr
    );
    assert_eq!(reply.body.len() as u64, len);
    let first_bad = reply
        .body
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern_byte(i as u64));
    assert_eq!(first_bad, None, "first differing byte");
}

#[test]
fn head_has_no_body_and_keeps_content_length() {
    let origin = Origin::fixed("text/plain", &[b'x'; 1234]);
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let head = format!("HEAD {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/h"));
    let response = send_one(&mut stream, head.as_bytes(), true);
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("content-length"),
        Some("1234"),
        "{}",
        response.head
    );
    // No body bytes followed: the next answer on the connection starts clean.
    let get = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/g"));
    let next = send_one(&mut stream, get.as_bytes(), false);
    assert_eq!(next.status, 200, "{}", next.head);
    assert_eq!(next.body.len(), 1234);

    let reply = curl(proxy.addr, &origin.url("/h"), &["-I"]);
    assert_eq!(
        (reply.status, reply.exit),
        (200, 0),
        "curl: {}",
        reply.stderr
    );
    assert_eq!(reply.header("content-length"), Some("1234"));
    let methods: Vec<String> = origin.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["HEAD", "GET", "HEAD"]);
}

#[test]
fn no_content_and_not_modified_carry_no_body() {
    let origin = Origin::start(|req| match req.target.as_str() {
        "/204" => Reply::Full {
            status: 204,
            headers: vec![("X-Kind".into(), "none".into())],
            body: Vec::new(),
        },
        // The origin writes no body for a 304 but declares the representation's length.
        "/304" => Reply::Full {
            status: 304,
            headers: vec![("ETag".into(), "\"v1\"".into())],
            body: b"abcdef".to_vec(),
        },
        _ => Reply::ok("text/plain", "after"),
    });
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    for (path, status) in [("/204", 204), ("/304", 304)] {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"v1\"\r\n\r\n",
            origin.url(path)
        );
        let response = send_one(&mut stream, request.as_bytes(), true);
        assert_eq!(response.status, status, "{}", response.head);
        assert_eq!(
            response.header("transfer-encoding"),
            None,
            "{}",
            response.head
        );
        // Then a normal request on the same connection reads cleanly.
        let next = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/next"));
        let after = send_one(&mut stream, next.as_bytes(), false);
        assert_eq!(
            (after.status, after.text().as_str()),
            (200, "after"),
            "{}",
            after.head
        );
    }
    let reply = curl(proxy.addr, &origin.url("/204"), &[]);
    assert_eq!(
        (reply.status, reply.exit),
        (204, 0),
        "curl: {}",
        reply.stderr
    );
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("x-kind"), Some("none"));
}

#[test]
fn error_statuses_from_the_origin_pass_through_as_they_are() {
    let origin = Origin::start(|req| match req.target.as_str() {
        "/missing" => Reply::Full {
            status: 404,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: b"<h1>not here</h1>".to_vec(),
        },
        _ => Reply::Full {
            status: 500,
            headers: vec![("X-Origin-Error".into(), "yes".into())],
            body: b"origin broke".to_vec(),
        },
    });
    let proxy = Proxy::start();
    let missing = curl(proxy.addr, &origin.url("/missing"), &[]);
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "<h1>not here</h1>")
    );
    assert_eq!(missing.header("content-type"), Some("text/html"));
    assert_eq!(
        missing.header("proxy-status"),
        None,
        "{:?}",
        missing.headers
    );
    let broke = curl(proxy.addr, &origin.url("/broke"), &[]);
    assert_eq!((broke.status, broke.text().as_str()), (500, "origin broke"));
    assert_eq!(broke.header("x-origin-error"), Some("yes"));
    assert_eq!(broke.header("proxy-status"), None, "{:?}", broke.headers);
}

#[test]
fn redirects_are_passed_back_not_followed() {
    let origin = Origin::start(|req| match req.target.as_str() {
        "/old" => Reply::status(302).with_header("Location", "/new"),
        _ => Reply::ok("text/plain", "new place"),
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/old"), &[]);
    assert_eq!(reply.status, 302, "curl: {}", reply.stderr);
    assert_eq!(reply.header("location"), Some("/new"));
    assert_eq!(reply.text(), "status 302\n");
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/old"], "the proxy followed the redirect");
}

// --- Request bodies ---------------------------------------------------------

#[test]
fn request_bodies_arrive_intact_for_every_method() {
    let origin = Origin::start(|req| Reply::ok("text/plain", format!("{} ok", req.method)));
    let proxy = Proxy::start();
    let body = binary_body(70_001);
    let file = temp_file(&body);
    let data = format!("@{}", file.path().display());
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let reply = curl(
            proxy.addr,
            &origin.url("/upload"),
            &["-X", method, "--data-binary", &data, "-H", "Expect:"],
        );
        assert_eq!(
            (reply.status, reply.text()),
            (200, format!("{method} ok")),
            "{method}: {}",
            reply.stderr
        );
    }
    let requests = origin.requests();
    assert_eq!(requests.len(), 5, "{requests:#?}");
    for req in requests {
        assert!(
            req.body == body,
            "{} body: got {} bytes, headers {:?}",
            req.method,
            req.body.len(),
            req.headers
        );
    }
}

#[test]
fn empty_request_bodies_go_up_with_a_zero_length_not_chunked() {
    // An origin that takes no chunked request (411) must get what the
    // client sent: no body, said with `Content-Length: 0`, or nothing at
    // all for a method that expects none.
    let origin = Origin::start(|_| Reply::ok("text/plain", "ok"));
    let proxy = Proxy::start();
    let requests = [
        ("POST", "Content-Length: 0\r\n"),
        ("PUT", ""),
        ("PATCH", "Content-Length: 0\r\n"),
        ("DELETE", ""),
    ];
    for (method, length) in requests {
        let request = format!(
            "{method} {} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n{length}\r\n",
            origin.url("/empty")
        );
        let response = exchange(proxy.addr, request.as_bytes(), LIMIT);
        assert_eq!(response.status, 200, "{method}: {}", response.head);
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), requests.len());
    for req in &seen {
        assert_eq!(req.header("transfer-encoding"), None, "{req:?}");
        assert!(req.body.is_empty(), "{req:?}");
        let length = if req.method == "DELETE" {
            None
        } else {
            Some("0")
        };
        assert_eq!(req.header("content-length"), length, "{req:?}");
    }
}

#[test]
fn chunked_request_bodies_arrive_intact() {
    let origin = Origin::start(|req| Reply::ok("text/plain", format!("{} bytes", req.body.len())));
    let proxy = Proxy::start();
    let body = binary_body(150_000);
    let file = temp_file(&body);
    let data = format!("@{}", file.path().display());
    let reply = curl(
        proxy.addr,
        &origin.url("/chunked-up"),
        &[
            "--data-binary",
            &data,
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
        ],
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "150000 bytes"),
        "curl: {}",
        reply.stderr
    );
    let req = only_request(&origin);
    assert!(req.body == body, "origin got {} bytes", req.body.len());

    // A raw chunked body with odd chunk sizes and a trailer.
    let mut request = format!(
        "PUT {} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        origin.url("/raw")
    )
    .into_bytes();
    request.extend_from_slice(
        b"3\r\nabc\r\n1;ext=1\r\nd\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    let last = origin.requests().pop().expect("raw request arrived");
    assert_eq!(last.body, b"abcd0123456789");
}

#[test]
fn expect_100_continue_gets_the_body_to_the_origin() {
    let origin = Origin::start(|req| Reply::ok("text/plain", format!("got {}", req.body.len())));
    let proxy = Proxy::start();
    let body = binary_body(2 * 1024 * 1024);
    let file = temp_file(&body);
    let data = format!("@{}", file.path().display());
    let reply = curl(
        proxy.addr,
        &origin.url("/big"),
        &[
            "--data-binary",
            &data,
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "20",
        ],
    );
    assert_eq!(
        (reply.status, reply.text().as_str(), reply.exit),
        (200, "got 2097152", 0),
        "curl: {}",
        reply.stderr
    );
    let req = only_request(&origin);
    assert!(req.body == body, "origin got {} bytes", req.body.len());
    assert_eq!(
        req.header("expect"),
        None,
        "Expect is for this hop: {:?}",
        req.headers
    );

    // Raw: the head alone gets 100 Continue, then the body goes up.
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        origin.url("/small")
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let interim = read_head(&mut stream, LIMIT).expect("an interim answer");
    assert_eq!(interim.status, 100, "{}", interim.head);
    let response = send_one(&mut stream, b"hello", false);
    assert_eq!((response.status, response.text().as_str()), (200, "got 5"));
}

#[test]
fn continue_is_sent_once_the_origin_is_reached() {
    // An origin that cannot be reached is answered before the client sends
    // its body: no 100 Continue first.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let head = format!(
        "POST http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let answer = read_head(&mut stream, LIMIT).expect("an answer");
    assert_eq!(answer.status, 502, "{}", answer.head);

    // A chunked body: 100 Continue once the origin has the head, then the
    // chunks go up.
    let origin = Origin::start(|req| Reply::ok("text/plain", format!("got {}", req.body.len())));
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        origin.url("/chunks")
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let interim = read_head(&mut stream, LIMIT).expect("an interim answer");
    assert_eq!(interim.status, 100, "{}", interim.head);
    let response = send_one(&mut stream, b"5\r\nhello\r\n0\r\n\r\n", false);
    assert_eq!((response.status, response.text().as_str()), (200, "got 5"));
}

// --- Connections: HTTP/1.0, keep-alive, pipelining ---------------------------

#[test]
fn http_1_0_clients_get_a_close_delimited_body_for_chunked_replies() {
    let body = binary_body(30_000);
    let sent = body.clone();
    let origin = Origin::start(move |_| Reply::Chunked {
        status: 200,
        headers: vec![],
        body: sent.clone(),
        piece: 1000,
    });
    let proxy = Proxy::start();
    let request = format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/old-client"));
    let response = exchange(proxy.addr, request.as_bytes(), LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("transfer-encoding"),
        None,
        "{}",
        response.head
    );
    assert_eq!(response.header("content-length"), None, "{}", response.head);
    assert!(response.body == body, "got {} bytes", response.body.len());
}

#[test]
fn http_1_0_clients_get_a_length_body_and_a_close() {
    let origin = Origin::fixed("text/plain", b"ten bytes!");
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/"));
    let response = send_one(&mut stream, request.as_bytes(), false);
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("content-length"), Some("10"));
    assert_eq!(response.text(), "ten bytes!");
    assert!(
        closes_within(&mut stream, LIMIT),
        "HTTP/1.0 without keep-alive stays open"
    );
}

#[test]
fn http_1_0_keep_alive_is_honoured() {
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    for path in ["/one", "/two"] {
        let request = format!(
            "GET {} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            origin.url(path)
        );
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(
            response
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "{}",
            response.head
        );
        assert_eq!(response.text(), format!("path={path}"));
    }
}

#[test]
fn a_keep_alive_connection_carries_two_requests() {
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    for path in ["/first", "/second"] {
        let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url(path));
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(
            (response.status, response.text()),
            (200, format!("path={path}")),
            "{}",
            response.head
        );
        assert_eq!(response.header("connection"), None, "{}", response.head);
    }
}

#[test]
fn a_next_request_that_arrives_in_pieces_around_the_workers_wait_is_answered() {
    // After an answer the worker waits a moment for the next request; a head
    // that starts within that moment and ends after it goes to the acceptor
    // half read, and must be answered whole.
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let first = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/first"));
    let response = send_one(&mut stream, first.as_bytes(), false);
    assert_eq!(response.status, 200, "{}", response.head);
    let second = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/second"));
    let (start, rest) = second.split_at(20);
    stream
        .write_all(start.as_bytes())
        .expect("the head's start");
    std::thread::sleep(Duration::from_millis(100));
    let response = send_one(&mut stream, rest.as_bytes(), false);
    assert_eq!(
        (response.status, response.text()),
        (200, "path=/second".to_string()),
        "{}",
        response.head
    );
}

/// An origin that answers `/slow` after 300 ms and any other path at once,
/// with the path as the body.
fn slow_first_origin() -> Origin {
    Origin::start(|req| {
        let body = Reply::ok("text/plain", format!("path={}", req.target));
        if req.target.ends_with("/slow") {
            Reply::Slow {
                delay: Duration::from_millis(300),
                then: Box::new(body),
            }
        } else {
            body
        }
    })
}

/// A connection whose first request (to `/slow`) keeps its worker waiting
/// on the origin for a while yet.
fn busy_connection(proxy: &Proxy, origin: &Origin) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let first = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/slow"));
    stream.write_all(first.as_bytes()).expect("first request");
    std::thread::sleep(Duration::from_millis(100));
    stream
}

#[test]
fn many_requests_pipelined_while_the_worker_is_busy_are_all_answered() {
    // More than the worker's 16 KiB read takes in at once arrives while it
    // waits on the origin: the rest, left in the socket, must still be read.
    let origin = slow_first_origin();
    let proxy = Proxy::start();
    let mut stream = busy_connection(&proxy, &origin);
    let count = 800;
    let mut rest = Vec::new();
    for i in 0..count {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: h\r\n\r\n",
            origin.url(&format!("/p{i}"))
        );
        rest.extend_from_slice(request.as_bytes());
    }
    assert!(rest.len() > 2 * 16 * 1024, "{} bytes", rest.len());
    stream.write_all(&rest).expect("pipelined requests");
    let answer = read_one(&mut stream, false, LIMIT).expect("first answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    for i in 0..count {
        let answer = read_one(&mut stream, false, LIMIT).map(|r| (r.status, r.text()));
        assert_eq!(answer, Some((200, format!("path=/p{i}"))), "answer {i}");
    }
}

#[test]
fn a_large_next_head_sent_while_the_worker_is_busy_is_answered() {
    let origin = slow_first_origin();
    let proxy = Proxy::start();
    let mut stream = busy_connection(&proxy, &origin);
    let big = "a".repeat(20_000);
    let second = format!(
        "GET {} HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n",
        origin.url("/second")
    );
    stream.write_all(second.as_bytes()).expect("second request");
    let answer = read_one(&mut stream, false, LIMIT).expect("first answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    let answer = read_one(&mut stream, false, LIMIT).map(|r| (r.status, r.text()));
    assert_eq!(answer, Some((200, "path=/second".to_string())));
}

#[test]
fn a_client_that_closes_right_after_its_answer_leaves_no_connection_behind() {
    // It closes while the worker may still be waiting on it for a next
    // request: the close must be seen and the connection freed.
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    for path in ["/a", "/b", "/c"] {
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url(path));
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(response.status, 200, "{}", response.head);
    }
    // Only the scrape's own connection stays open.
    let mut page = String::new();
    let freed = wait_until(LIMIT, || {
        page = scrape_metrics(proxy.addr).1;
        metric(&page, "fetchproxy_connections_open") == Some(1.0)
    });
    assert!(freed, "{page}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let mut all = Vec::new();
    for path in ["/a", "/bb", "/ccc"] {
        all.extend_from_slice(
            format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url(path)).as_bytes(),
        );
    }
    stream.write_all(&all).expect("send three requests at once");
    for path in ["/a", "/bb", "/ccc"] {
        let response = read_one(&mut stream, false, LIMIT).unwrap_or_else(|| {
            panic!(
                "no answer for {path}; sent {:?}",
                String::from_utf8_lossy(&all)
            )
        });
        assert_eq!(
            (response.status, response.text()),
            (200, format!("path={path}")),
            "{}",
            response.head
        );
    }
}

#[test]
fn a_request_sent_while_the_previous_one_is_served_is_answered_next() {
    // The second request arrives while a worker has the connection, so only
    // the acceptor sees it: handing the connection back must wake it.
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"held");
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/held"));
    stream.write_all(request.as_bytes()).expect("first request");
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "the first request never reached the origin"
    );
    stream
        .write_all(request.as_bytes())
        .expect("second request");
    gate.open();
    for n in 1..=2 {
        let response = read_one(&mut stream, false, LIMIT)
            .unwrap_or_else(|| panic!("no answer to request {n}"));
        assert_eq!(
            (response.status, response.text()),
            (200, "held".to_string()),
            "{}",
            response.head
        );
    }
    assert_eq!(origin.requests().len(), 2);
}

// --- Proxy header rules -----------------------------------------------------

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    // Every option counts, however long the list (RFC 9110 §7.6.1).
    let long_list: String = (0..100).map(|i| format!("t{i}, ")).collect();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: h\r\n\
         Connection: keep-alive, X-Foo\r\n\
         Connection: {long_list}X-Late\r\n\
         X-Late: listed last\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Foo: listed in Connection\r\n\
         X-Keep: end-to-end\r\n\r\n",
        origin.url("/hop")
    );
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let response = send_one(&mut stream, request.as_bytes(), false);
    assert_eq!(response.status, 200, "{}", response.head);
    let req = only_request(&origin);
    for name in [
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-foo",
        "x-late",
    ] {
        assert_eq!(
            req.header(name),
            None,
            "{name} forwarded: {:?}",
            req.headers
        );
    }
    assert_eq!(
        req.header("x-keep"),
        Some("end-to-end"),
        "{:?}",
        req.headers
    );
}

#[test]
fn hop_by_hop_headers_from_the_origin_are_not_passed_back() {
    let origin = Origin::start(|_| {
        let long_list: String = (0..100).map(|i| format!("t{i}, ")).collect();
        Reply::ok("text/plain", "ok")
            .with_header("Connection", "x-bar")
            .with_header("Connection", &format!("{long_list}X-Late"))
            .with_header("X-Bar", "for the proxy only")
            .with_header("X-Late", "for the proxy too")
            .with_header("Keep-Alive", "timeout=5")
            .with_header("X-Kept", "yes")
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    assert_eq!(reply.header("x-bar"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("x-late"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("keep-alive"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("x-kept"), Some("yes"), "{:?}", reply.headers);
}

#[test]
fn via_is_added_both_ways() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let via = format!("1.1 {}", test_config().via_name);
    let reply = curl(
        proxy.addr,
        &origin.url("/"),
        &["-H", "Via: 1.0 other-proxy"],
    );
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    assert!(
        reply
            .headers
            .iter()
            .any(|(n, v)| n == "via" && v.contains(&via)),
        "client side: {:?}",
        reply.headers
    );
    let req = only_request(&origin);
    let vias: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("via"))
        .map(|(_, v)| v.as_str())
        .collect();
    let joined = vias.join(", ");
    assert!(joined.contains("1.0 other-proxy"), "origin side: {vias:?}");
    assert!(joined.ends_with(&via), "origin side: {vias:?}");
}

#[test]
fn host_is_set_from_the_url() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/host"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    let req = only_request(&origin);
    let hosts: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(hosts, [origin.addr.to_string()], "{:?}", req.headers);
    assert_eq!(req.target, "/host");
}

#[test]
fn a_loop_is_detected_through_via() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let via = format!(
        "Via: 1.0 a, 1.1 {} (fetchproxy)\r\n",
        test_config().via_name
    );
    let request = get_request(&origin.url("/loop"), &via);
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_raw_error(&request, &response, 508, "proxy_loop_detected");
    assert!(origin.requests().is_empty(), "origin was contacted");
}

/// A client that sends every URL through the proxy (`http_proxy` set for
/// all) gets the proxy's own pages, not a loop.
#[test]
fn own_pages_asked_for_through_the_proxy_itself_are_served() {
    let proxy = Proxy::start();
    let health = curl(proxy.addr, &format!("http://{}/healthz", proxy.addr), &[]);
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.text().trim(), "ok", "{health:?}");
    let metrics = curl(proxy.addr, &format!("http://{}/metrics", proxy.addr), &[]);
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.text().contains("fetchproxy_"), "{metrics:?}");
}

#[test]
fn the_proxy_pointed_at_itself_ends_without_hanging() {
    let proxy = Proxy::start();
    let url = format!("http://{}/self", proxy.addr);
    let reply = curl(proxy.addr, &url, &[]);
    assert!(
        matches!(reply.status, 508 | 400),
        "status {} exit {} {}\nheaders {:?}\nbody {}",
        reply.status,
        reply.exit,
        reply.stderr,
        reply.headers,
        reply.text()
    );
    let token = if reply.status == 508 {
        "proxy_loop_detected"
    } else {
        "http_request_error"
    };
    assert_curl_error(
        &format!("GET {url} via itself"),
        &reply,
        reply.status,
        token,
    );
}

#[test]
fn options_with_max_forwards_zero_is_answered_by_the_proxy() {
    let origin = Origin::fixed("text/plain", b"origin");
    let proxy = Proxy::start();
    let reply = curl(
        proxy.addr,
        &origin.url("/opt"),
        &["-X", "OPTIONS", "-H", "Max-Forwards: 0"],
    );
    assert_eq!(
        (reply.status, reply.exit),
        (200, 0),
        "curl: {}",
        reply.stderr
    );
    assert!(
        reply.header("allow").is_some_and(|v| v.contains("GET")),
        "{:?}",
        reply.headers
    );
    assert!(
        reply.header("x-request-id").is_some(),
        "{:?}",
        reply.headers
    );
    assert!(origin.requests().is_empty(), "origin was contacted");
}

#[test]
fn max_forwards_is_decremented() {
    let origin = Origin::fixed("text/plain", b"origin");
    let proxy = Proxy::start();
    let reply = curl(
        proxy.addr,
        &origin.url("/opt"),
        &["-X", "OPTIONS", "-H", "Max-Forwards: 5"],
    );
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "origin"),
        "{}",
        reply.stderr
    );
    let req = only_request(&origin);
    assert_eq!(req.header("max-forwards"), Some("4"), "{:?}", req.headers);
}

#[test]
fn options_for_a_whole_server_reaches_the_origin_as_an_asterisk() {
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    let authority = origin.addr.to_string();
    let request = format!(
        "OPTIONS http://{authority} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    let reply = exchange(proxy.addr, request.as_bytes(), LIMIT);
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(String::from_utf8_lossy(&reply.body), "path=*");
    let req = only_request(&origin);
    assert_eq!((req.method.as_str(), req.target.as_str()), ("OPTIONS", "*"));
    assert_eq!(req.header("host"), Some(authority.as_str()));
    // With a path it is about that resource, and goes up as it came.
    let request = format!(
        "OPTIONS http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    let reply = exchange(proxy.addr, request.as_bytes(), LIMIT);
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        "path=/",
        "{}",
        reply.head
    );
}

#[test]
fn every_response_carries_a_request_id() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    // A fresh id on a forwarded answer, the same one at the origin, and a
    // different one on the next request.
    let first = curl(proxy.addr, &origin.url("/1"), &[]);
    let second = curl(proxy.addr, &origin.url("/2"), &[]);
    let id1 = first
        .header("x-request-id")
        .expect("id on the first answer")
        .to_string();
    let id2 = second
        .header("x-request-id")
        .expect("id on the second answer")
        .to_string();
    assert_ne!(id1, id2);
    let at_origin: Vec<String> = origin
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(at_origin, [id1, id2]);
    // On the proxy's own answers and errors too.
    let health = exchange(
        proxy.addr,
        b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        LIMIT,
    );
    assert!(health.header("x-request-id").is_some(), "{}", health.head);
    let bad = exchange(
        proxy.addr,
        b"GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        LIMIT,
    );
    assert!(bad.header("x-request-id").is_some(), "{}", bad.head);
}

#[test]
fn a_well_formed_client_request_id_is_echoed() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let reply = curl(
        proxy.addr,
        &origin.url("/"),
        &["-H", "X-Request-Id: client-abc.123:x_y"],
    );
    assert_eq!(
        reply.header("x-request-id"),
        Some("client-abc.123:x_y"),
        "{:?}",
        reply.headers
    );
    let req = only_request(&origin);
    assert_eq!(req.header("x-request-id"), Some("client-abc.123:x_y"));
    // Errors echo it too.
    let request = b"GET /nothing HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine-1\r\n\r\n";
    let response = exchange(proxy.addr, request, LIMIT);
    assert_eq!(
        response.header("x-request-id"),
        Some("mine-1"),
        "{}",
        response.head
    );
}

#[test]
fn a_malformed_client_request_id_is_replaced() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let long = "a".repeat(200);
    for bad in ["has spaces in it", "<script>", long.as_str()] {
        let reply = curl(
            proxy.addr,
            &origin.url("/"),
            &["-H", &format!("X-Request-Id: {bad}")],
        );
        assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(!id.is_empty() && id != bad, "id {id:?} for {bad:?}");
    }
    for req in origin.requests() {
        let id = req.header("x-request-id").unwrap_or_default();
        assert!(
            !id.is_empty() && !id.contains(' ') && !id.contains('<') && id.len() <= 128,
            "{id:?}"
        );
    }
}

// --- The proxy's own endpoints and refusals ----------------------------------

#[test]
fn healthz_answers_200() {
    let proxy = Proxy::start();
    let response = exchange(
        proxy.addr,
        b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        LIMIT,
    );
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.text(), "ok\n");
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "*"])
        .arg(format!("http://{}/healthz", proxy.addr))
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ok\n",
        "{output:?}"
    );
    // Another method gets 405 with the methods it takes, and the connection
    // stays open for the next request.
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    for method in ["OPTIONS", "POST"] {
        let request = format!("{method} /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send");
        let reply = read_one(&mut stream, false, LIMIT).expect("an answer");
        assert_eq!(reply.status, 405, "{}", reply.head);
        assert!(
            reply.head.contains("\r\nAllow: GET, HEAD\r\n"),
            "{}",
            reply.head
        );
        assert!(
            reply.head.contains("error=http_request_error"),
            "{}",
            reply.head
        );
    }
}

#[test]
fn metrics_count_what_was_answered() {
    let origin = Origin::start(|_| Reply::status(203));
    let refused_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let proxy = Proxy::start();
    for n in 0..3 {
        let reply = curl(proxy.addr, &origin.url(&format!("/{n}")), &[]);
        assert_eq!(reply.status, 203, "{}", reply.stderr);
    }
    let refused = curl(
        proxy.addr,
        &format!("http://127.0.0.1:{refused_port}/"),
        &[],
    );
    assert_eq!(refused.status, 502, "{}", refused.stderr);
    let request = b"GET /nothing-here HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(proxy.addr, request, LIMIT).status, 400);

    // A worker counts a request just after its last byte went out: wait for it.
    let counted = |page: &str| {
        metric(page, "fetchproxy_requests_total{code=\"203\"}") == Some(3.0)
            && metric(page, "fetchproxy_requests_total{code=\"502\"}") == Some(1.0)
            && metric(page, "fetchproxy_requests_total{code=\"400\"}") == Some(1.0)
    };
    let mut last = (String::new(), String::new());
    assert!(
        wait_until(LIMIT, || {
            last = scrape_metrics(proxy.addr);
            counted(&last.1)
        }),
        "{}",
        last.1
    );
    let (head, page) = last;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let value = |name: &str| metric(&page, name).unwrap_or_else(|| panic!("{name}:\n{page}"));
    assert_eq!(
        value("fetchproxy_errors_total{error=\"connection_refused\"}"),
        1.0
    );
    assert_eq!(
        value("fetchproxy_errors_total{error=\"http_request_error\"}"),
        1.0
    );
    assert_eq!(value("fetchproxy_errors_total{error=\"dns_error\"}"), 0.0);
    // The three 203s came from the origin (the refused connection never
    // opened), over one pooled connection unless the origin closed it.
    assert_eq!(value("fetchproxy_upstream_response_seconds_count"), 3.0);
    let opened = value("fetchproxy_upstream_connections_opened_total");
    assert!((1.0..=3.0).contains(&opened), "{page}");
    assert_eq!(value("fetchproxy_workers"), 4.0);
    assert_eq!(value("fetchproxy_queue_capacity"), 16.0);
    assert_eq!(value("fetchproxy_draining"), 0.0);
    // This scrape's own worker is busy and its connection open.
    assert!(value("fetchproxy_workers_busy") >= 1.0, "{page}");
    assert!(value("fetchproxy_connections_open") >= 1.0, "{page}");
    assert!(
        value("fetchproxy_connections_accepted_total") >= 6.0,
        "{page}"
    );
    // Three bodies of "status 203\n", and earlier scrapes' pages.
    assert!(
        value("fetchproxy_response_body_bytes_total") >= 33.0,
        "{page}"
    );
    let count = value("fetchproxy_request_duration_seconds_count");
    assert!(count >= 5.0, "{page}");
    assert_eq!(
        value("fetchproxy_request_duration_seconds_bucket{le=\"+Inf\"}"),
        count
    );

    let head_only = exchange(
        proxy.addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        LIMIT,
    );
    assert_eq!(head_only.status, 200, "{}", head_only.head);
    assert!(head_only.body.is_empty(), "{}", head_only.text());
    assert!(head_only.header("content-length").is_some());
}

#[test]
fn other_origin_form_targets_are_400() {
    let proxy = Proxy::start();
    let request = b"GET /index.html HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let response = exchange(proxy.addr, request, LIMIT);
    assert_raw_error(request, &response, 400, "http_request_error");
    assert!(
        response.text().contains("/index.html"),
        "{}",
        response.text()
    );
}

#[test]
fn trace_gets_a_clear_error_and_extension_methods_are_forwarded() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/pot"), "").to_vec();
    let trace = [b"TRACE", &request[3..]].concat();
    let response = exchange(proxy.addr, &trace, LIMIT);
    assert_raw_error(&trace, &response, 501, "http_request_error");
    assert!(response.text().contains("TRACE"), "{}", response.text());
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
    for method in ["BREW", "M-SEARCH", "PROPFIND"] {
        let request = [method.as_bytes(), &request[3..]].concat();
        let response = exchange(proxy.addr, &request, LIMIT);
        assert_eq!(response.status, 200, "{method}: {}", response.text());
    }
    let methods: Vec<String> = origin.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["BREW", "M-SEARCH", "PROPFIND"]);
}

#[test]
fn ftp_urls_are_400() {
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, "ftp://127.0.0.1/file.txt", &[]);
    // curl may tunnel ftp through an HTTP proxy as a GET with the ftp URL.
    if reply.status != 0 {
        assert_curl_error("ftp via curl", &reply, 400, "http_request_error");
    }
    let request = get_request("ftp://127.0.0.1/file.txt", "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_raw_error(&request, &response, 400, "http_request_error");
    assert!(response.text().contains("ftp"), "{}", response.text());
}

#[test]
fn https_to_a_port_without_tls_is_502_not_a_hang() {
    // A plain-HTTP server: whatever arrives, it answers with an HTTP error.
    let plain = Responder::start(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let proxy = Proxy::with(|c| c.upstream_timeout = Duration::from_secs(10));
    let request = get_request(&format!("https://{}/secure", plain.addr), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_raw_error(&request, &response, 502, "tls_protocol_error");
    assert!(plain.accepted() >= 1, "the proxy never connected");
}

// --- Nothing added, nothing changed ------------------------------------------

#[test]
fn the_proxy_adds_no_user_agent_or_accept_encoding() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/bare"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    let req = only_request(&origin);
    for name in ["user-agent", "accept-encoding", "accept"] {
        assert_eq!(req.header(name), None, "{name} added: {:?}", req.headers);
    }
}

#[test]
fn client_headers_pass_unchanged() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let reply = curl(
        proxy.addr,
        &origin.url("/h"),
        &[
            "-A",
            "Tester/1.0 (x)",
            "-H",
            "Accept-Encoding: gzip, br;q=0.5",
            "-H",
            "Accept: text/html",
            "-H",
            "X-Custom: a  b, c",
            "-H",
            "Cookie: k=v; k2=v2",
        ],
    );
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    let req = only_request(&origin);
    for (name, value) in [
        ("user-agent", "Tester/1.0 (x)"),
        ("accept-encoding", "gzip, br;q=0.5"),
        ("accept", "text/html"),
        ("x-custom", "a  b, c"),
        ("cookie", "k=v; k2=v2"),
    ] {
        assert_eq!(req.header(name), Some(value), "{:?}", req.headers);
    }
}

#[test]
fn gzip_bodies_pass_byte_for_byte() {
    // `printf 'hello gzip body\n' | gzip -9n`
    const GZIP: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x48, 0xaf, 0xca, 0x2c, 0x50, 0x48, 0xca, 0x4f, 0xa9, 0xe4, 0x02, 0x00, 0x10, 0x10,
        0xfc, 0x9a, 0x10, 0x00, 0x00, 0x00,
    ];
    let origin = Origin::start(|_| {
        Reply::ok("text/plain", GZIP.to_vec()).with_header("Content-Encoding", "gzip")
    });
    let proxy = Proxy::start();
    let reply = curl(
        proxy.addr,
        &origin.url("/z"),
        &["-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(
        reply.header("content-length"),
        Some(GZIP.len().to_string().as_str())
    );
    assert_eq!(reply.body, GZIP);
    assert_eq!(
        only_request(&origin).header("accept-encoding"),
        Some("gzip")
    );
    // curl's own decoding of what came through proves it is intact gzip.
    let decoded = curl(proxy.addr, &origin.url("/z"), &["--compressed"]);
    assert_eq!(
        decoded.text(),
        "hello gzip body\n",
        "curl: {}",
        decoded.stderr
    );
}

// --- Upstream failures ------------------------------------------------------

#[test]
fn an_unresolvable_host_is_502_dns_error() {
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, "http://nohost.invalid/", &[]);
    assert_curl_error("GET http://nohost.invalid/", &reply, 502, "dns_error");
    assert!(reply.text().contains("nohost.invalid"), "{}", reply.text());
}

#[test]
fn a_refused_port_is_502_connection_refused() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let proxy = Proxy::start();
    let url = format!("http://127.0.0.1:{port}/");
    let reply = curl(proxy.addr, &url, &[]);
    assert_curl_error(&format!("GET {url}"), &reply, 502, "connection_refused");
}

#[test]
fn the_response_head_goes_out_while_the_origin_holds_the_body_back() {
    // Passed through, and stored on its way.
    for cache_mem in [0, 64 << 20] {
        let gate = Gate::new();
        let origin = Origin::start({
            let gate = gate.clone();
            move |_| Reply::Paused {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "text/plain".into()),
                    ("Cache-Control".into(), "max-age=60".into()),
                ],
                first: Vec::new(),
                gate: gate.clone(),
                rest: b"held back".to_vec(),
                reset: false,
            }
        });
        let proxy = Proxy::with(|c| c.cache_mem = cache_mem);
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        stream
            .write_all(&get_request(&origin.url("/held"), ""))
            .expect("send");
        let head = read_head(&mut stream, LIMIT);
        gate.open();
        let head = head.expect("the head, while the origin holds the body back");
        assert_eq!(head.status, 200, "{}", head.head);
        let body = crate::support::read_until_close(&mut stream, LIMIT);
        assert_eq!(body, b"held back", "cache_mem = {cache_mem}");
    }
}

#[test]
fn a_slow_upstream_is_504_after_upstream_timeout() {
    let origin = Origin::start(|_| Reply::Slow {
        delay: Duration::from_secs(3),
        then: Box::new(Reply::ok("text/plain", "too late")),
    });
    let proxy = Proxy::with(|c| c.upstream_timeout = Duration::from_millis(500));
    let reply = curl(proxy.addr, &origin.url("/slow"), &[]);
    assert_curl_error("GET /slow", &reply, 504, "http_response_timeout");
}

#[test]
fn a_malformed_upstream_reply_is_502() {
    let origin = Origin::start(|_| Reply::Raw(b"garbage\r\n\r\n".to_vec()));
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/garbage"), &[]);
    assert_curl_error("GET /garbage", &reply, 502, "http_protocol_error");
}

#[test]
fn an_origin_answer_with_both_framings_is_502_and_not_stored() {
    // RFC 9112 §6.3: the sign of a response split, "ought to be handled as
    // an error" (nginx does the same).
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    for _ in 0..2 {
        let reply = curl(proxy.addr, &origin.url("/both"), &[]);
        assert_curl_error("GET /both", &reply, 502, "http_protocol_error");
    }
    assert_eq!(origin.requests().len(), 2, "nothing stored");
}

#[test]
fn a_malformed_first_chunk_is_502_not_a_head_and_a_close() {
    // The head waits for the first piece of body when it came with it; a
    // piece that cannot be read leaves nothing sent, so the client is told
    // plainly, and nothing is stored.
    let sizes: [&[u8]; 4] = [b"zz", b"0x3", b"-3", b"10000000000000003"];
    for size in sizes {
        let mut answer =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        answer.extend_from_slice(size);
        answer.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
        let origin = Origin::start(move |_| Reply::Raw(answer.clone()));
        let proxy = Proxy::start();
        for _ in 0..2 {
            let reply = curl(proxy.addr, &origin.url("/bad-chunk"), &[]);
            let context = format!("first chunk size {}", String::from_utf8_lossy(size));
            assert_curl_error(&context, &reply, 502, "http_protocol_error");
        }
        assert_eq!(origin.requests().len(), 2, "nothing stored");
    }
}

#[test]
fn an_origin_that_resets_in_the_middle_of_its_head_is_502_http_response_incomplete() {
    let origin = Origin::start(|_| {
        Reply::RawThenReset(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl".to_vec())
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/half"), &[]);
    assert_curl_error("GET /half", &reply, 502, "http_response_incomplete");
}

#[test]
fn a_switch_of_protocols_nobody_asked_for_is_502() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/upgrade"), &[]);
    assert_curl_error("GET /upgrade", &reply, 502, "http_protocol_error");
}

#[test]
fn a_transfer_coding_that_codes_the_bytes_is_502_and_not_stored() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    for _ in 0..2 {
        let reply = curl(proxy.addr, &origin.url("/coded"), &[]);
        assert_curl_error("GET /coded", &reply, 502, "http_response_transfer_coding");
        assert!(reply.text().contains("gzip"), "{}", reply.text());
    }
    assert_eq!(origin.requests().len(), 2, "nothing stored");
}

/// A cacheable chunked answer whose `Transfer-Encoding` is `codings` is
/// 502 `http_response_transfer_coding`, twice: nothing was stored.
fn assert_codings_refused_and_not_stored(codings: &'static str) {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nTransfer-Encoding: {codings}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let origin = Origin::start(move |_| Reply::Raw(answer.clone().into_bytes()));
    let proxy = Proxy::start();
    for _ in 0..2 {
        let reply = curl(proxy.addr, &origin.url("/coded"), &[]);
        assert_curl_error(codings, &reply, 502, "http_response_transfer_coding");
    }
    assert_eq!(origin.requests().len(), 2, "{codings}: nothing stored");
}

#[test]
fn chunked_before_another_transfer_coding_is_502_and_not_stored() {
    // RFC 9112 §6.3: such a body runs to the close; read as chunked, the
    // connection would be taken up again after it.
    for codings in [
        "chunked, identity",
        "chunked\r\nTransfer-Encoding: identity",
    ] {
        assert_codings_refused_and_not_stored(codings);
    }
}

#[test]
fn chunked_with_parameters_or_quoted_is_502_and_not_stored() {
    // ureq reads a body as chunked only where the element is the bare word,
    // in a value of visible ASCII; the first five would reach the client,
    // and the cache, with the chunks' framing in the body. A coding with no
    // name is as malformed.
    for codings in [
        "chunked;x=1",
        "chunked ; x",
        "\"chunked\"",
        "identity, Chunked;y",
        "x;p=\u{e9}, chunked",
        ";x, chunked",
    ] {
        assert_codings_refused_and_not_stored(codings);
    }
    // The bare word in any case is read as chunked.
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  ChunKed \r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/cased"), &[]);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, b"hello");
}

#[test]
fn an_http_1_0_response_with_transfer_encoding_is_502_and_not_stored() {
    // RFC 9112 §6.1: its framing is faulty. Passed on, the chunks' framing
    // would reach the client as part of the body.
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.0 200 OK\r\nCache-Control: max-age=999\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    for _ in 0..2 {
        let reply = curl(proxy.addr, &origin.url("/old"), &[]);
        assert_curl_error("GET /old", &reply, 502, "http_protocol_error");
    }
    assert_eq!(origin.requests().len(), 2, "nothing stored");
}

#[test]
fn a_204_goes_on_without_content_length() {
    // RFC 9110 §8.6: no Content-Length in a 204, whatever the origin said;
    // fresh for a minute, so the second answer is the cache's.
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    for _ in 0..2 {
        let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/empty"));
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let response = read_one(&mut stream, true, LIMIT).expect("an answer");
        assert_eq!(response.status, 204, "{}", response.head);
        assert_eq!(response.header("content-length"), None, "{}", response.head);
    }
}

#[test]
fn a_transfer_coding_nobody_knows_is_dropped_with_its_field() {
    // As the public cache tests expect of a cache: the field is hop by
    // hop, and the body is framed as the rest of the head says.
    let origin = Origin::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: made-up\r\n\r\nplain body".to_vec())
    });
    let proxy = Proxy::start();
    let reply = curl(proxy.addr, &origin.url("/made-up"), &[]);
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "plain body"),
        "{reply:?}"
    );
    // Framed anew by the proxy, chunked alone.
    assert_eq!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "{reply:?}"
    );
}

#[test]
fn an_upstream_reset_mid_body_is_never_made_to_look_complete() {
    let origin = Origin::start(|_| Reply::ResetMidBody {
        declared: 100_000,
        sent: 10_000,
    });
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/reset"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("content-length"),
        Some("100000"),
        "{}",
        response.head
    );
    assert!(
        response.body.len() < 100_000,
        "got {} of 100000 bytes: looks complete",
        response.body.len()
    );
    let reply = curl(proxy.addr, &origin.url("/reset"), &[]);
    assert_ne!(
        reply.exit, 0,
        "curl thought the body was complete: {}",
        reply.stderr
    );
    assert!(reply.body.len() < 100_000);
}

#[test]
fn an_http10_client_of_a_body_cut_short_gets_a_reset_not_an_end() {
    // An HTTP/1.0 client's body runs to the close: a FIN would say "all
    // of it", so a cut body ends with a reset.
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nonly part"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    http10_get_ending_in_reset(proxy.addr, &origin.url("/cut10"), LIMIT);
}

#[test]
fn a_chunked_upstream_cut_mid_body_gets_no_final_chunk() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nonly part"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/cut"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("transfer-encoding"),
        Some("chunked"),
        "{}",
        response.head
    );
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("hello"), "{body:?}");
    assert!(!body.contains("0\r\n\r\n"), "final chunk sent: {body:?}");
    let reply = curl(proxy.addr, &origin.url("/cut"), &[]);
    assert_ne!(
        reply.exit, 0,
        "curl thought the body was complete: {}",
        reply.stderr
    );
}

#[test]
fn a_response_over_max_body_bytes_with_a_length_is_502() {
    let origin = Origin::fixed("text/plain", &[b'x'; 5000]);
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(1000));
    let reply = curl(proxy.addr, &origin.url("/big"), &[]);
    assert_curl_error("GET /big", &reply, 502, "http_response_body_size");
    assert!(reply.text().contains("1000"), "{}", reply.text());
    // At the limit exactly is fine.
    let small = Origin::fixed("text/plain", &[b'y'; 1000]);
    let reply = curl(proxy.addr, &small.url("/exact"), &[]);
    assert_eq!(
        (reply.status, reply.body.len()),
        (200, 1000),
        "{}",
        reply.stderr
    );
}

#[test]
fn a_chunked_response_over_max_body_bytes_is_cut() {
    let origin = Origin::start(|_| Reply::Chunked {
        status: 200,
        headers: vec![],
        body: vec![b'z'; 50_000],
        piece: 500,
    });
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(1000));
    let request = get_request(&origin.url("/endless"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    let body = String::from_utf8_lossy(&response.body);
    assert!(
        !body.ends_with("0\r\n\r\n"),
        "final chunk sent after cutting: {body:?}"
    );
    let zs = response.body.iter().filter(|&&b| b == b'z').count();
    assert!(zs <= 1000, "{zs} payload bytes passed a 1000-byte limit");
    let reply = curl(proxy.addr, &origin.url("/endless"), &[]);
    assert_ne!(
        reply.exit, 0,
        "curl thought the body was complete: {}",
        reply.stderr
    );
}

#[test]
fn a_request_body_over_max_body_bytes_is_413() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(1000));
    let file = temp_file(&[b'b'; 5000]);
    let data = format!("@{}", file.path().display());
    let reply = curl(proxy.addr, &origin.url("/up"), &["--data-binary", &data]);
    assert_curl_error(
        "POST 5000 bytes, Content-Length",
        &reply,
        413,
        "http_request_error",
    );
    assert!(reply.text().contains("1000"), "{}", reply.text());

    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        origin.url("/up-chunked")
    )
    .into_bytes();
    for _ in 0..5 {
        request.extend_from_slice(b"3e8\r\n");
        request.extend_from_slice(&[b'c'; 1000]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_raw_error(&request[..80], &response, 413, "http_request_error");
    assert!(response.text().contains("1000"), "{}", response.text());
    assert!(
        origin.requests().iter().all(|r| r.body.len() <= 1000),
        "a body over the limit reached the origin"
    );
}

/// An origin port that speaks another protocol (an SSH banner here): the
/// 502 names the origin and says it did not answer in HTTP.
#[test]
fn an_origin_that_does_not_speak_http_is_named_in_the_error() {
    let origin = Responder::start(b"SSH-2.0-OpenSSH_9.6\r\n");
    let proxy = Proxy::start();
    let url = format!("http://{}/", origin.addr);
    let reply = curl(proxy.addr, &url, &[]);
    assert_curl_error(&url, &reply, 502, "http_protocol_error");
    let said = reply.text();
    assert!(said.contains(&origin.addr.to_string()), "{said}");
    assert!(said.contains("did not answer in HTTP"), "{said}");
}

#[test]
fn an_origin_refusing_an_upload_before_reading_it_is_heard() {
    // The origin answers as soon as it has the head and closes without
    // reading the body, which resets the connection while the proxy still
    // sends it: the client gets the origin's answer, not a 502.
    let origin = Responder::start(
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
    );
    let proxy = Proxy::start();
    let file = temp_file(&binary_body(8 << 20));
    let data = format!("@{}", file.path().display());
    let url = format!("http://{}/upload", origin.addr);
    for method in ["POST", "PUT"] {
        let reply = curl(proxy.addr, &url, &["-X", method, "--data-binary", &data]);
        assert_eq!(reply.status, 413, "{method}: {}", reply.stderr);
        assert_eq!(reply.body, b"too large", "{method}");
    }
    // The same with a chunked upload.
    let reply = curl(
        proxy.addr,
        &url,
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &data],
    );
    assert_eq!(reply.status, 413, "chunked: {}", reply.stderr);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_upstream_retries_total"),
        Some(0.0),
        "an answered request was sent again"
    );
}

#[test]
fn a_declared_body_over_max_body_bytes_is_413_before_100_continue() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(1000));
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        origin.url("/up")
    );
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send head");
    let response = read_one(&mut stream, false, LIMIT).expect("an answer without the body");
    assert_raw_error(request.as_bytes(), &response, 413, "http_request_error");
    assert!(
        closes_within(&mut stream, LIMIT),
        "connection left open mid-request"
    );
    assert!(origin.requests().is_empty(), "{:?}", origin.requests());
}

// --- Standard clients unchanged ------------------------------------------------

#[test]
fn wget_fetches_through_the_proxy() {
    let origin = Origin::fixed("text/plain", b"fetched by wget\n");
    let proxy = Proxy::start();
    let output = Command::new("wget")
        .args([
            "-q",
            "-O",
            "-",
            "-T",
            "30",
            "-t",
            "1",
            "-e",
            "use_proxy=yes",
            "-e",
        ])
        .arg(format!("http_proxy=http://{}", proxy.addr))
        .arg(origin.url("/wget"))
        .output()
        .expect("run wget (.ci/run installs it; a missing wget fails this test)");
    assert!(output.status.success(), "wget: {output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "fetched by wget\n");
    let req = only_request(&origin);
    assert!(
        req.header("user-agent")
            .is_some_and(|ua| ua.contains("Wget")),
        "{:?}",
        req.headers
    );
}

#[test]
fn python_urllib_fetches_through_the_proxy() {
    let origin = Origin::fixed("text/plain", b"fetched by urllib\n");
    let proxy = Proxy::start();
    let script = "import sys, urllib.request\n\
        handler = urllib.request.ProxyHandler({'http': sys.argv[1]})\n\
        opener = urllib.request.build_opener(handler)\n\
        with opener.open(sys.argv[2], timeout=30) as r:\n\
        \x20   sys.stdout.write(str(r.status) + ' ' + r.read().decode())\n";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("http://{}", proxy.addr))
        .arg(origin.url("/urllib"))
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("run python3 (.ci/run installs it; a missing python3 fails this test)");
    assert!(output.status.success(), "python3: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200 fetched by urllib\n"
    );
    assert_eq!(only_request(&origin).target, "/urllib");
}

// --- Edges: URLs, repeated headers, clients that leave --------------------------

#[test]
fn the_path_and_query_reach_the_origin_unchanged() {
    let origin = path_echo_origin();
    let proxy = Proxy::start();
    for path in [
        "/a%2Fb/c%20d?q=%41&x=y+z&e=",
        "/~user/./x/../y?a=1;b=2",
        "/",
    ] {
        let request = get_request(&origin.url(path), "");
        let response = exchange(proxy.addr, &request, LIMIT);
        assert_eq!(
            (response.status, response.text()),
            (200, format!("path={path}")),
            "{}",
            response.head
        );
    }
    // An absolute URL without a path asks for "/".
    let request = get_request(&format!("http://{}", origin.addr), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.text(), "path=/", "{}", response.head);
}

#[test]
fn credentials_in_the_url_are_not_forwarded() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let url = format!("http://user:secret@{}/private", origin.addr);
    let request = get_request(&url, "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 200, "{}", response.head);
    let req = only_request(&origin);
    assert_eq!(req.header("authorization"), None, "{:?}", req.headers);
    assert_eq!(req.header("host"), Some(origin.addr.to_string().as_str()));
    assert!(!format!("{req:?}").contains("secret"), "{req:?}");
}

#[test]
fn repeated_response_headers_pass_through_in_order() {
    let origin = Origin::start(|_| {
        Reply::ok("text/plain", "ok")
            .with_header("Set-Cookie", "a=1; Path=/")
            .with_header("Set-Cookie", "b=2; HttpOnly")
            .with_header("X-Multi", "one")
            .with_header("X-Multi", "two")
    });
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(
        response.headers_named("set-cookie"),
        ["a=1; Path=/", "b=2; HttpOnly"],
        "{}",
        response.head
    );
    assert_eq!(
        response.headers_named("x-multi"),
        ["one", "two"],
        "{}",
        response.head
    );
}

#[test]
fn a_request_body_cut_short_by_the_client_is_answered_400() {
    let origin = Origin::fixed("text/plain", b"ok");
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly ten!!",
        origin.url("/short")
    );
    stream.write_all(request.as_bytes()).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let got = crate::support::read_until_close(&mut stream, LIMIT);
    let response = split_raw(&got).unwrap_or_else(|| {
        panic!(
            "no answer to a cut-short body\nsent: {request:?}\ngot: {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    assert_raw_error(request.as_bytes(), &response, 400, "http_request_error");
    assert!(response.text().contains("body"), "{}", response.text());
}

#[test]
fn a_keep_alive_connection_carries_requests_with_bodies() {
    let origin = Origin::start(|req| Reply::ok("text/plain", req.body.clone()));
    let proxy = Proxy::start();
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let url = origin.url("/post");
    let requests = [
        (
            format!("POST {url} HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nfirst body"),
            "first body",
        ),
        (
            format!(
                "PUT {url} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nchunky\r\n0\r\n\r\n"
            ),
            "chunky",
        ),
        (
            format!("POST {url} HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nthird body!"),
            "third body!",
        ),
    ];
    for (request, body) in &requests {
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, *body),
            "sent {request:?}\ngot {}",
            response.head
        );
        assert_eq!(response.header("connection"), None, "{}", response.head);
    }
}

#[test]
fn a_client_that_leaves_mid_body_drops_the_upstream_connection() {
    let streamer = Streamer::start();
    let proxy = Proxy::start();
    let url = format!("http://{}/endless", streamer.addr);
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = get_request(&url, "");
    stream.write_all(&request).expect("send");
    let head = read_head(&mut stream, LIMIT).expect("a head");
    assert_eq!(head.status, 200, "{}", head.head);
    let mut some = [0u8; 64 * 1024];
    stream.read_exact(&mut some).expect("some of the body");
    drop(stream);
    assert!(
        wait_until(LIMIT, || streamer.abandoned() == 1),
        "the upstream kept streaming after the client left"
    );
}

#[test]
fn an_origin_that_closes_without_a_complete_answer_is_502_terminated_or_incomplete() {
    let proxy = Proxy::start();
    for (sent, error) in [
        (&b""[..], "connection_terminated"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            "http_response_incomplete",
        ),
    ] {
        let origin = Origin::start(move |_| Reply::Raw(sent.to_vec()));
        let request = get_request(&origin.url("/closes"), "");
        let response = exchange(proxy.addr, &request, LIMIT);
        let context = format!("origin sent {:?}", String::from_utf8_lossy(sent));
        assert_eq!(response.status, 502, "{context}\n{}", response.head);
        assert_raw_error(&request, &response, 502, error);
    }
}

#[test]
fn odd_but_valid_upstream_framing_is_relayed_as_clean_http_1_1() {
    let proxy = Proxy::start();
    // An interim 103 is passed on: see
    // `interim_responses_are_passed_on_before_the_final_one`.
    let cases: [(&str, &[u8], &str); 2] = [
        (
            "HTTP/1.0 close-delimited body",
            b"HTTP/1.0 200 OK\r\n\r\nclose delimited",
            "close delimited",
        ),
        (
            "bare LF line ends",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
            "ok",
        ),
    ];
    for (name, sent, body) in cases {
        let origin = Origin::start(move |_| Reply::Raw(sent.to_vec()));
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/odd"));
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, body),
            "{name}: {}",
            response.head
        );
        // Framing the client can trust: one of the two, never both.
        let framed = [
            response.header("content-length").is_some(),
            response.header("transfer-encoding").is_some(),
        ];
        assert!(
            framed == [true, false] || framed == [false, true],
            "{name}: {}",
            response.head
        );
    }
}

#[test]
fn malformed_upstream_heads_are_502_http_protocol_error() {
    let proxy = Proxy::start();
    let cases: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    ];
    for sent in cases {
        let origin = Origin::start(move |_| Reply::Raw(sent.to_vec()));
        let request = get_request(&origin.url("/bad"), "");
        let response = exchange(proxy.addr, &request, LIMIT);
        assert_eq!(
            response.status,
            502,
            "origin sent {:?}\n{}",
            String::from_utf8_lossy(sent),
            response.head
        );
        assert_raw_error(&request, &response, 502, "http_protocol_error");
    }
}

#[test]
fn an_upstream_head_over_the_limits_is_502_header_section_size() {
    let proxy = Proxy::with(|c| c.max_header_bytes = 8 * 1024);
    let mut many_lines = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    for n in 0..200 {
        many_lines.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
    }
    many_lines.extend_from_slice(b"\r\nok");
    let mut long = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    long.extend_from_slice(format!("X-Long: {}\r\n\r\nok", "v".repeat(10_000)).as_bytes());
    for (sent, words) in [(many_lines, "header lines"), (long, "bytes")] {
        let origin = Origin::start(move |_| Reply::Raw(sent.clone()));
        let request = get_request(&origin.url("/big-head"), "");
        let response = exchange(proxy.addr, &request, LIMIT);
        assert_raw_error(
            &request,
            &response,
            502,
            "http_response_header_section_size",
        );
        assert!(response.text().contains(words), "{}", response.text());
    }
}

#[test]
fn the_proxy_pointed_at_itself_with_one_worker_is_a_loop_not_a_timeout() {
    // With one worker the inner request cannot be served while the outer one
    // waits for it: only recognising its own address avoids a timeout.
    let proxy = Proxy::with(|c| {
        c.workers = 1.try_into().expect("non-zero");
        c.upstream_timeout = Duration::from_secs(5);
    });
    let port = proxy.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/self"),
        format!("http://localhost:{port}/self"),
        format!("http://127.1:{port}/self"),
    ] {
        let reply = curl(proxy.addr, &url, &[]);
        assert_curl_error(
            &format!("GET {url} via itself"),
            &reply,
            508,
            "proxy_loop_detected",
        );
    }
}

/// An origin that sends a head and the first 1,000 bytes of a 2,000-byte
/// body, then waits until `release` is set before sending the rest.
fn pausing_origin(release: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let mut first = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec();
        first.extend(std::iter::repeat_n(b'a', 1000));
        let _ = stream.write_all(&first);
        let released = wait_until(Duration::from_secs(20), || {
            release.load(std::sync::atomic::Ordering::SeqCst)
        });
        if released {
            let _ = stream.write_all(&[b'b'; 1000]);
        }
    });
    addr
}

#[test]
fn body_bytes_reach_the_client_before_the_origin_finishes() {
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let origin = pausing_origin(release.clone());
    let proxy = Proxy::start();
    let mut client = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let request = get_request(&format!("http://{origin}/slow"), "");
    client.write_all(&request).expect("send request");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The head and the first half must arrive while the origin still holds the rest.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let streamed = wait_until(Duration::from_secs(10), || {
        if let Ok(n) = client.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| got.len() - end - 4 >= 1000)
    });
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        streamed,
        "the first 1,000 body bytes were held back while the origin paused\nsent: {:?}\ngot: {:?}",
        String::from_utf8_lossy(&request),
        String::from_utf8_lossy(&got)
    );
    let response = read_until_close_or(&mut client, &mut got, 2000);
    assert!(
        response.ends_with(&[b'b'; 1000]),
        "the rest arrives after the pause"
    );
}

/// Reads until the body after the head is `body_len` bytes long (or 10 s pass).
fn read_until_close_or(stream: &mut TcpStream, got: &mut Vec<u8>, body_len: usize) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    wait_until(Duration::from_secs(10), || {
        let end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(usize::MAX, |e| e + 4);
        if end != usize::MAX && got.len() - end >= body_len {
            return true;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => {}
        }
        false
    });
    got.clone()
}

/// RFC 9110 §15.2: a proxy forwards the 1xx responses it did not ask for.
#[test]
fn interim_responses_are_passed_on_before_the_final_one() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 4\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                .to_vec(),
        )
    });
    let proxy = Proxy::start();
    let request = get_request(&origin.url("/hints"), "");
    let response = exchange(proxy.addr, &request, LIMIT);
    assert_eq!(response.status, 103, "{}", response.head);
    assert_eq!(response.header("link"), Some("</s.css>; rel=preload"));
    assert_eq!(
        response.header("x-hop"),
        None,
        "hop-by-hop fields stay behind"
    );
    assert_eq!(
        response.header("content-length"),
        None,
        "a 1xx has no body to frame"
    );
    let rest = split_raw(&response.body).expect("the final response");
    assert_eq!(rest.status, 200, "{}", rest.head);
    assert!(rest.body.ends_with(b"ok"), "{:?}", rest.text());
    let http10 = b"GET URL HTTP/1.0\r\n\r\n".to_vec();
    let http10 = String::from_utf8(http10)
        .expect("ascii")
        .replace("URL", &origin.url("/hints"));
    let response = exchange(proxy.addr, http10.as_bytes(), LIMIT);
    assert_eq!(response.status, 200, "no 1xx to an HTTP/1.0 client");
}

#[test]
fn a_closing_connection_keeps_the_end_of_its_answer_though_the_client_sent_more() {
    // A client that asks for the close, then sends another request anyway
    // and reads late: closing over its unread input would reset the
    // connection and throw away the end of the answer still buffered.
    let body = binary_body(16 * 1024 * 1024);
    let origin = Origin::fixed("application/octet-stream", &body);
    let proxy = Proxy::with(|config| config.cache_mem = 0);
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let first = format!(
        "GET {} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        origin.url("/big")
    );
    stream
        .write_all(first.as_bytes())
        .expect("send the request");
    // Sent while the answer is being written, this stays in the socket.
    std::thread::sleep(Duration::from_millis(300));
    let more = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/more"));
    stream.write_all(more.as_bytes()).expect("send one more");
    // The proxy fills the sockets' buffers and finishes while this waits.
    std::thread::sleep(Duration::from_millis(300));
    let got = read_to_close(&mut stream, LIMIT);
    assert!(got.closed, "the connection stays open");
    let responses = got.responses();
    let first = responses.first().expect("an answer");
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(first.body.len(), body.len(), "{}", first.head);
    assert!(first.body == body, "the body differs");
    assert_eq!(
        responses.len(),
        1,
        "the request after the close was answered"
    );
}

#[test]
fn an_empty_body_keeps_its_zero_length_and_the_connection() {
    let origin = Origin::start(|_| Reply::Full {
        status: 302,
        headers: vec![("Location".into(), "/elsewhere".into())],
        body: Vec::new(),
    });
    let proxy = Proxy::start();
    // An HTTP/1.1 client gets the length, not a chunked empty body.
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request = format!("GET {} HTTP/1.1\r\nHost: h\r\n\r\n", origin.url("/a"));
    let response = send_one(&mut stream, request.as_bytes(), false);
    assert_eq!(response.status, 302, "{}", response.head);
    assert_eq!(
        response.header("content-length"),
        Some("0"),
        "{}",
        response.head
    );
    assert_eq!(
        response.header("transfer-encoding"),
        None,
        "{}",
        response.head
    );
    // An HTTP/1.0 keep-alive client keeps its connection for the next one.
    empty_302s_keep_an_http_1_0_connection(&proxy, &origin, "0");
}

/// Two requests of an HTTP/1.0 keep-alive client on one connection, for an
/// origin whose 302 has an empty body (its length spelled `length`): each
/// answer says `Content-Length: 0` and keeps the connection.
fn empty_302s_keep_an_http_1_0_connection(proxy: &Proxy, origin: &Origin, length: &str) {
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    for path in ["/b", "/c"] {
        let request = format!(
            "GET {} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            origin.url(path)
        );
        let response = send_one(&mut stream, request.as_bytes(), false);
        assert_eq!(response.status, 302, "{length}: {}", response.head);
        assert_eq!(
            response.header("content-length"),
            Some("0"),
            "{length}: {}",
            response.head
        );
        assert_eq!(
            response
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive"),
            "{length}: {}",
            response.head
        );
    }
}

#[test]
fn a_zero_length_spelled_otherwise_is_kept_too() {
    // RFC 9110 §8.6: leading zeros, and a list of one value repeated.
    for length in ["00", "0, 0"] {
        let raw = format!("HTTP/1.1 302 Found\r\nLocation: /e\r\nContent-Length: {length}\r\n\r\n");
        let origin = Origin::start(move |_| Reply::Raw(raw.clone().into_bytes()));
        let proxy = Proxy::with(|config| config.cache_mem = 0);
        empty_302s_keep_an_http_1_0_connection(&proxy, &origin, length);
    }
}

#[test]
fn via_names_the_protocol_the_response_came_in() {
    let origin = Origin::start(|_| {
        Reply::Raw(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        )
    });
    let proxy = Proxy::with(|config| config.cache_mem = 0);
    let reply = curl(proxy.addr, &origin.url("/"), &[]);
    assert_eq!(reply.status, 200, "curl: {}", reply.stderr);
    let via = format!("1.0 {}", test_config().via_name);
    assert!(
        reply.headers.iter().any(|(n, v)| n == "via" && v == &via),
        "{:?}",
        reply.headers
    );
}
