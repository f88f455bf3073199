//! CONNECT tunnels end to end: bytes relayed both ways (including those sent
//! with the CONNECT head), half-close, the port and destination rules,
//! `max_tunnels`, the idle timeout, tunnels holding no worker, and curl's
//! `--proxytunnel`. Every destination is on loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use crate::support::raw::{
    RawResponse, assert_raw_error, closes_within, connect_through, read_one,
};
use crate::support::servers::EchoServer;
use crate::support::{
    Origin, Proxy, curl, metric, read_until_close, scrape_metrics, test_config, wait_until,
};

/// Generous limit for anything that should take milliseconds.
const LIMIT: Duration = Duration::from_secs(30);

/// A proxy whose `connect_ports` hold just `port`.
fn proxy_for_port(port: u16) -> Proxy {
    Proxy::with(|c| c.connect_ports = vec![port])
}

/// Opens a tunnel to `target` and checks the 200.
fn open_tunnel(proxy: &Proxy, target: &str) -> TcpStream {
    let (stream, response, sent) = connect_through(proxy.addr, target, b"");
    assert_tunnel_open(&sent, &response);
    stream
}

fn assert_tunnel_open(sent: &[u8], response: &RawResponse) {
    assert_eq!(
        response.status,
        200,
        "sent {:?}\ngot {}{}",
        String::from_utf8_lossy(sent),
        response.head,
        response.text()
    );
    assert!(
        response.header("x-request-id").is_some(),
        "{}",
        response.head
    );
    assert_eq!(response.header("content-length"), None, "{}", response.head);
    assert_eq!(
        response.header("transfer-encoding"),
        None,
        "{}",
        response.head
    );
}

/// Writes `message` into the tunnel and reads the echo of it.
fn echo_through(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).expect("write into tunnel");
    let mut got = vec![0u8; message.len()];
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("set read timeout");
    match stream.read_exact(&mut got) {
        Ok(()) => got,
        Err(err) => panic!("echo of {} bytes not received: {err}", message.len()),
    }
}

#[test]
fn bytes_are_relayed_both_ways() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let mut stream = open_tunnel(&proxy, &echo.addr.to_string());
    assert_eq!(echo_through(&mut stream, b"hello tunnel"), b"hello tunnel");
    // Binary and larger than any one buffer, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().expect("clone stream");
    let sent = big.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent).is_ok());
    let mut got = vec![0u8; big.len()];
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("set read timeout");
    stream.read_exact(&mut got).expect("the whole echo");
    assert!(writing.join().expect("writer thread"), "write failed");
    assert!(got == big, "echo differs");
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn bytes_sent_with_the_connect_head_are_relayed() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let (mut stream, response, sent) =
        connect_through(proxy.addr, &echo.addr.to_string(), b"early bytes\r\n\r\n");
    assert_tunnel_open(&sent, &response);
    let mut got = vec![0u8; 15];
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("set read timeout");
    stream.read_exact(&mut got).unwrap_or_else(|err| {
        panic!(
            "early bytes not echoed ({err}); sent {:?}",
            String::from_utf8_lossy(&sent)
        )
    });
    assert_eq!(got, b"early bytes\r\n\r\n");
    assert_eq!(echo_through(&mut stream, b"later"), b"later");
}

#[test]
fn half_close_is_passed_on_and_the_tunnel_closes_cleanly() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let mut stream = open_tunnel(&proxy, &echo.addr.to_string());
    stream.write_all(b"last words").expect("write");
    stream.shutdown(Shutdown::Write).expect("shut down writing");
    // The echo server sees end of input, answers, and closes its side; the
    // client gets everything and then a clean end of stream.
    let got = read_until_close(&mut stream, LIMIT);
    assert_eq!(got, b"last words");
    assert!(
        wait_until(LIMIT, || echo.eofs() == 1),
        "echo server never saw EOF"
    );
    assert!(closes_within(&mut stream, LIMIT), "tunnel still open");
}

#[test]
fn connect_to_a_port_outside_connect_ports_is_403() {
    let echo = EchoServer::start();
    let proxy = Proxy::start();
    assert!(!test_config().connect_ports.contains(&echo.addr.port()));
    let (_, response, sent) = connect_through(proxy.addr, &echo.addr.to_string(), b"");
    assert_raw_error(
        &sent,
        &response_with_body(response),
        403,
        "http_request_denied",
    );
    assert_eq!(echo.accepted(), 0, "the proxy connected anyway");
}

#[test]
fn connect_to_a_denied_destination_is_403_in_every_spelling() {
    let echo = EchoServer::start();
    let port = echo.addr.port();
    let proxy = Proxy::with(|c| {
        c.allow_dest.clear();
        c.connect_ports = vec![port];
    });
    for target in [
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (_, response, sent) = connect_through(proxy.addr, &target, b"");
        assert_raw_error(
            &sent,
            &response_with_body(response),
            403,
            "destination_ip_prohibited",
        );
    }
    assert_eq!(echo.accepted(), 0, "the proxy connected anyway");
}

#[test]
fn bytes_after_a_refused_connect_are_never_read_as_requests() {
    let origin = Origin::start(|_| crate::support::Reply::ok("text/plain", "smuggled"));
    let proxy = Proxy::start();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let smuggled = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/after-connect"),
        origin.addr
    );
    // Refused by the port rule, and refused by the target itself.
    for (proxy, target, status) in [
        (&proxy, origin.addr.to_string(), 403),
        (&proxy_for_port(closed), format!("127.0.0.1:{closed}"), 502),
    ] {
        let (mut stream, response, sent) =
            connect_through(proxy.addr, &target, smuggled.as_bytes());
        let response = response_with_body(response);
        assert_eq!(response.status, status, "{}", response.head);
        assert_eq!(
            response.header("connection"),
            Some("close"),
            "sent {:?}\n{}",
            String::from_utf8_lossy(&sent),
            response.head
        );
        assert!(closes_within(&mut stream, LIMIT), "connection kept open");
    }
    assert!(
        origin.requests().is_empty(),
        "bytes after a CONNECT were forwarded: {:?}",
        origin.requests()
    );
}

#[test]
fn a_connect_with_content_is_400_and_connects_nowhere() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let target = echo.addr.to_string();
    for framing in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        let mut stream = TcpStream::connect(proxy.addr).expect("connect");
        let request =
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{framing}\r\n\r\nhello");
        stream.write_all(request.as_bytes()).expect("send");
        let response = read_one(&mut stream, false, LIMIT).expect("an answer");
        assert_raw_error(request.as_bytes(), &response, 400, "http_request_error");
        assert!(
            response.text().contains("no content"),
            "{}",
            response.text()
        );
        assert!(closes_within(&mut stream, LIMIT), "connection kept open");
    }
    // An empty Content-Length announces no content: still a tunnel.
    let (first, response, sent) = connect_through(proxy.addr, &target, b"");
    assert_tunnel_open(&sent, &response);
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    let request =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let response = read_one(&mut stream, true, LIMIT).expect("an answer");
    assert_tunnel_open(request.as_bytes(), &response);
    // An echo through each tunnel shows the echo server has accepted (and
    // counted, in order) every connection made to it so far.
    for mut tunnel in [first, stream] {
        tunnel.set_read_timeout(Some(LIMIT)).expect("timeout");
        tunnel.write_all(b"ping").expect("send through the tunnel");
        let mut back = [0u8; 4];
        tunnel.read_exact(&mut back).expect("the echo");
        assert_eq!(&back, b"ping");
    }
    assert_eq!(echo.accepted(), 2, "only the two tunnels without content");
}

#[test]
fn a_connect_target_without_a_port_is_400() {
    let proxy = proxy_for_port(443);
    for target in ["127.0.0.1", "127.0.0.1:", "localhost"] {
        let (_, response, sent) = connect_through(proxy.addr, target, b"");
        assert_raw_error(
            &sent,
            &response_with_body(response),
            400,
            "http_request_error",
        );
    }
}

#[test]
fn a_connect_to_a_closed_port_is_502_connection_refused() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let proxy = proxy_for_port(port);
    let (_, response, sent) = connect_through(proxy.addr, &format!("127.0.0.1:{port}"), b"");
    assert_raw_error(
        &sent,
        &response_with_body(response),
        502,
        "connection_refused",
    );
}

#[test]
fn a_connect_loop_is_detected_through_via() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let target = echo.addr.to_string();
    let request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nVia: 1.1 {}\r\n\r\n",
        test_config().via_name
    );
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let response = read_one(&mut stream, false, LIMIT).expect("an answer");
    assert_raw_error(request.as_bytes(), &response, 508, "proxy_loop_detected");
    assert_eq!(echo.accepted(), 0);
}

#[test]
fn max_tunnels_reached_is_503_and_a_place_frees_when_one_closes() {
    let echo = EchoServer::start();
    let port = echo.addr.port();
    let proxy = Proxy::with(|c| {
        c.connect_ports = vec![port];
        c.max_tunnels = 2;
    });
    let target = echo.addr.to_string();
    let mut first = open_tunnel(&proxy, &target);
    let mut second = open_tunnel(&proxy, &target);
    let (_, response, sent) = connect_through(proxy.addr, &target, b"");
    let response = response_with_body(response);
    assert_raw_error(&sent, &response, 503, "proxy_internal_error");
    assert!(
        response.header("retry-after").is_some(),
        "{}",
        response.head
    );
    // Both open tunnels still work.
    assert_eq!(echo_through(&mut first, b"1"), b"1");
    assert_eq!(echo_through(&mut second, b"2"), b"2");
    drop(first);
    let mut third = None;
    let freed = wait_until(LIMIT, || {
        let (stream, response, _) = connect_through(proxy.addr, &target, b"");
        if response.status == 200 {
            third = Some(stream);
        }
        third.is_some()
    });
    assert!(freed, "no place freed after a tunnel closed");
    let mut third = third.expect("third tunnel");
    assert_eq!(echo_through(&mut third, b"3"), b"3");
    assert_eq!(echo_through(&mut second, b"2 again"), b"2 again");
}

#[test]
fn max_tunnels_0_turns_connect_off_with_a_403_not_a_retry() {
    let echo = EchoServer::start();
    let port = echo.addr.port();
    let proxy = Proxy::with(|c| {
        c.connect_ports = vec![port];
        c.max_tunnels = 0;
    });
    let (_, response, sent) = connect_through(proxy.addr, &echo.addr.to_string(), b"");
    let response = response_with_body(response);
    assert_raw_error(&sent, &response, 403, "http_request_denied");
    assert!(
        response.header("retry-after").is_none(),
        "{}",
        response.head
    );
    assert!(
        String::from_utf8_lossy(&response.body).contains("max_tunnels = 0"),
        "{response:?}"
    );
    assert_eq!(echo.accepted(), 0);
}

#[test]
fn a_silent_tunnel_is_closed_after_the_idle_timeout() {
    let echo = EchoServer::start();
    let port = echo.addr.port();
    let proxy = Proxy::with(|c| {
        c.connect_ports = vec![port];
        c.tunnel_idle_timeout = Duration::from_millis(1500);
    });
    let mut stream = open_tunnel(&proxy, &echo.addr.to_string());
    assert_eq!(echo_through(&mut stream, b"ping"), b"ping");
    // The echo server would wait a minute; only the proxy closes this soon.
    assert!(
        closes_within(&mut stream, LIMIT),
        "silent tunnel still open after {LIMIT:?}"
    );
}

#[test]
fn open_tunnels_hold_no_worker() {
    let echo = EchoServer::start();
    let origin = Origin::fixed("text/plain", b"plain get");
    let port = echo.addr.port();
    let proxy = Proxy::with(|c| {
        c.connect_ports = vec![port];
        c.workers = 2.try_into().expect("non-zero");
    });
    let target = echo.addr.to_string();
    let mut tunnels: Vec<TcpStream> = (0..100).map(|_| open_tunnel(&proxy, &target)).collect();
    for (i, tunnel) in tunnels.iter_mut().enumerate() {
        let message = format!("tunnel {i}");
        assert_eq!(echo_through(tunnel, message.as_bytes()), message.as_bytes());
    }
    for i in 0..20 {
        let reply = curl(proxy.addr, &origin.url(&format!("/get/{i}")), &[]);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "plain get"),
            "GET {i} with 100 tunnels open: {}",
            reply.stderr
        );
    }
    // The tunnels are all still there.
    for (i, tunnel) in tunnels.iter_mut().enumerate() {
        let message = format!("again {i}");
        assert_eq!(echo_through(tunnel, message.as_bytes()), message.as_bytes());
    }
    assert_eq!(echo.accepted(), 100);
}

/// `/metrics` shows a tunnel while it is open and counts it once when it
/// closes, as a 200 left out of the duration histogram (its duration is the
/// tunnel's life). Scrapes are the only other requests, and they are in both.
#[test]
fn metrics_show_an_open_tunnel_and_count_it_once_closed() {
    let echo = EchoServer::start();
    let proxy = proxy_for_port(echo.addr.port());
    let mut stream = open_tunnel(&proxy, &echo.addr.to_string());
    assert_eq!(echo_through(&mut stream, b"ping"), b"ping");
    let tunnels_counted = |page: &str| {
        let ok = metric(page, "fetchproxy_requests_total{code=\"200\"}").unwrap_or(0.0);
        let timed = metric(page, "fetchproxy_request_duration_seconds_count").unwrap_or(0.0);
        ok - timed
    };
    let mut page = String::new();
    assert!(
        wait_until(LIMIT, || {
            page = scrape_metrics(proxy.addr).1;
            metric(&page, "fetchproxy_tunnels_open") == Some(1.0)
        }),
        "{page}"
    );
    assert_eq!(tunnels_counted(&page), 0.0, "{page}");
    stream.shutdown(Shutdown::Both).expect("close the tunnel");
    drop(stream);
    assert!(
        wait_until(LIMIT, || {
            page = scrape_metrics(proxy.addr).1;
            metric(&page, "fetchproxy_tunnels_open") == Some(0.0) && tunnels_counted(&page) == 1.0
        }),
        "{page}"
    );
}

#[test]
fn curl_proxytunnel_reaches_a_plain_http_origin() {
    let origin = Origin::fixed("text/plain", b"through the tunnel");
    let proxy = proxy_for_port(origin.addr.port());
    let reply = curl(proxy.addr, &origin.url("/tunnelled"), &["-p"]);
    assert_eq!(
        (reply.status, reply.text().as_str(), reply.exit),
        (200, "through the tunnel", 0),
        "curl: {}",
        reply.stderr
    );
    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    // Tunnelled, not forwarded: the proxy added nothing.
    assert_eq!(requests[0].target, "/tunnelled");
    assert_eq!(requests[0].header("via"), None, "{:?}", requests[0].headers);
    assert_eq!(requests[0].header("x-request-id"), None);
}

/// An error answer from `connect_through` with its body split off the bytes
/// read after the head.
fn response_with_body(mut response: RawResponse) -> RawResponse {
    let declared = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(response.body.len());
    response.body.truncate(declared);
    response
}

/// Issue 10 (4): a tunnel's access-log line carries its bytes both ways and
/// why it ended, and `/metrics` counts it by that ending.
#[test]
fn a_tunnel_logs_its_bytes_both_ways_and_why_it_ended() {
    let echo = EchoServer::start();
    let port = echo.addr.port().to_string();
    let proxy = crate::support::ProxyProcess::start(&[
        "--allow-dest",
        "127.0.0.0/8",
        "--connect-port",
        &port,
    ]);
    let target = echo.addr.to_string();
    let (mut stream, response, sent) = connect_through(proxy.addr, &target, b"");
    assert_tunnel_open(&sent, &response);
    assert_eq!(echo_through(&mut stream, b"twelve bytes"), b"twelve bytes");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert!(closes_within(&mut stream, LIMIT), "tunnel still open");
    let line = proxy
        .wait_for_log(&format!("CONNECT {target} 200"), LIMIT)
        .unwrap_or_else(|| panic!("no access line; log:\n{}", proxy.log().join("\n")));
    assert!(line.contains(" 200 12 "), "12 bytes to the client: {line}");
    assert!(line.ends_with("up=12 end=done"), "{line}");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_tunnels_closed_total{end=\"done\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "fetchproxy_tunnel_bytes_up_total"),
        Some(12.0)
    );
}

/// A tunnel whose target resets the connection ends as `upstream_error`.
#[test]
fn a_tunnel_cut_by_its_target_is_counted_as_an_upstream_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr");
    let resetter = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accept");
        // Once the tunnel carries a byte (so the proxy's connect is long
        // done), close with linger zero: a reset.
        let _ = socket.set_read_timeout(Some(LIMIT));
        let _ = socket.read(&mut [0u8; 1]);
        socket2_reset(socket);
    });
    let proxy = proxy_for_port(target.port());
    let (mut stream, response, sent) = connect_through(proxy.addr, &target.to_string(), b"");
    assert_tunnel_open(&sent, &response);
    stream.write_all(b"x").expect("write into the tunnel");
    resetter.join().expect("resetter");
    assert!(closes_within(&mut stream, LIMIT), "tunnel still open");
    let counted = wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(
            &page,
            "fetchproxy_tunnels_closed_total{end=\"upstream_error\"}",
        ) == Some(1.0)
    });
    assert!(counted, "{}", scrape_metrics(proxy.addr).1);
}

/// Closes `socket` with a reset (SO_LINGER 0).
fn socket2_reset(socket: TcpStream) {
    rustix::net::sockopt::set_socket_linger(&socket, Some(Duration::ZERO)).expect("linger 0");
    drop(socket);
}
