//! Access rules end to end: non-global destinations in every spelling,
//! destination ports, and the client allow list. Only loopback is ever
//! contacted; the denial of other private ranges is unit-tested in `access`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::raw::{Exchange, Response, exchange_until_close};
use crate::support::servers::Tripwire;
use crate::support::{Proxy, wait_until};

const LIMIT: Duration = Duration::from_secs(20);

fn get(proxy: SocketAddr, url: &str) -> (String, Exchange) {
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let got = exchange_until_close(proxy, request.as_bytes(), LIMIT);
    (request, got)
}

/// The one response to `request`, or a panic showing what was sent and got.
fn answer(request: &str, got: &Exchange) -> Response {
    let responses = got.responses();
    assert_eq!(responses.len(), 1, "sent {request:?}\ngot {:?}", got.text());
    responses[0].clone()
}

fn assert_denied(request: &str, got: &Exchange, status: u16, error: &str) {
    let response = answer(request, got);
    assert_eq!(
        response.status,
        status,
        "sent {request:?}\ngot {:?}",
        got.text()
    );
    assert!(
        response
            .header("proxy-status")
            .is_some_and(|v| v.contains(&format!("error={error}"))),
        "sent {request:?}\ngot {:?}",
        got.text()
    );
}

/// Asserts that nothing connected to `wire` within a short settling time.
fn assert_untouched(wire: &Tripwire, what: &str) {
    let touched = wait_until(Duration::from_millis(300), || wire.hits() > 0);
    assert!(
        !touched,
        "{what}: {} connection(s) reached the origin",
        wire.hits()
    );
}

#[test]
fn local_origin_is_reachable_when_allowed() {
    // The control for the denials below: the same origin, allowed.
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let proxy = Proxy::start();
    let (request, got) = get(proxy.addr, &format!("http://{}/", wire.addr));
    let response = answer(&request, &got);
    assert_eq!(response.status, 200, "got {:?}", got.text());
    assert_eq!(response.text(), "tripwire");
    assert_eq!(wire.hits(), 1);
}

#[test]
fn every_loopback_spelling_is_denied_by_default() {
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let port = wire.addr.port();
    // Also watch the same port on ::1 when it is free, so a connection over
    // IPv6 would be seen too.
    let wire6 = Tripwire::bind(&format!("[::1]:{port}")).ok();
    let proxy = Proxy::with(|c| c.allow_dest.clear());
    let hosts = [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "localhost",
        "LOCALHOST",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[0:0:0:0:0:0:0:1]",
        "0.0.0.0",
        "0",
        "[::]",
    ];
    for host in hosts {
        let (request, got) = get(proxy.addr, &format!("http://{host}:{port}/secret"));
        let response = answer(&request, &got);
        // A spelling the resolver does not understand fails as DNS; it must
        // never get through.
        let allowed_failures = ["destination_ip_prohibited", "dns_error"];
        let proxy_status = response.header("proxy-status").unwrap_or_default();
        assert!(
            (response.status == 403 && proxy_status.contains("error=destination_ip_prohibited"))
                || (response.status == 502 && proxy_status.contains("error=dns_error")),
            "{host}: expected one of {allowed_failures:?}\nsent {request:?}\ngot {:?}",
            got.text()
        );
        assert_untouched(&wire, host);
        if let Some(wire6) = &wire6 {
            assert_untouched(wire6, host);
        }
    }
}

#[test]
fn numeric_loopback_spellings_are_denied_as_destinations() {
    // These all resolve (glibc accepts the inet_aton forms): each must be
    // denied as the address it is, not fail for another reason.
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let port = wire.addr.port();
    let proxy = Proxy::with(|c| c.allow_dest.clear());
    for host in [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ] {
        let (request, got) = get(proxy.addr, &format!("http://{host}:{port}/"));
        assert_denied(&request, &got, 403, "destination_ip_prohibited");
        assert_untouched(&wire, host);
    }
}

#[test]
fn denied_destination_is_answered_without_closing_the_connection() {
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let proxy = Proxy::with(|c| c.allow_dest.clear());
    let one = format!("GET http://{}/a HTTP/1.1\r\nHost: x\r\n\r\n", wire.addr);
    let two = format!(
        "GET http://{}/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        wire.addr
    );
    let request = format!("{one}{two}");
    let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [403, 403],
        "sent {request:?}\ngot {:?}",
        got.text()
    );
    assert_untouched(&wire, "pipelined");
}

#[test]
fn port_outside_dest_ports_is_denied() {
    let proxy = Proxy::start();
    for port in [25, 22, 1023] {
        let (request, got) = get(proxy.addr, &format!("http://127.0.0.1:{port}/"));
        assert_denied(&request, &got, 403, "http_request_denied");
        let body = answer(&request, &got).text();
        assert!(body.contains(&port.to_string()), "body {body:?}");
    }
}

#[test]
fn dest_ports_setting_replaces_the_default() {
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let port = wire.addr.port();
    let proxy = Proxy::with(|c| c.dest_ports = vec!["80".parse().expect("port")]);
    let (request, got) = get(proxy.addr, &format!("http://{}/", wire.addr));
    assert_denied(&request, &got, 403, "http_request_denied");
    assert_untouched(&wire, &format!("port {port} outside dest_ports"));
}

#[test]
fn client_outside_allow_clients_is_refused() {
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let proxy = Proxy::with(|c| c.allow_clients = vec!["10.0.0.0/8".parse().expect("cidr")]);
    let (request, got) = get(proxy.addr, &format!("http://{}/", wire.addr));
    assert_denied(&request, &got, 403, "http_request_denied");
    assert!(got.closed, "refused client left connected");
    assert_untouched(&wire, "refused client");
    let body = String::from_utf8_lossy(&got.responses()[0].body).into_owned();
    assert!(
        body.contains("to allow it, add --allow-client 127.0.0.1 to the ranges given"),
        "{body}"
    );
    // Also the proxy's own endpoints.
    let (request, got) = get(proxy.addr, "/healthz");
    assert_denied(&request, &got, 403, "http_request_denied");
}

#[test]
fn client_inside_allow_clients_is_served() {
    let wire = Tripwire::bind("127.0.0.1:0").expect("bind tripwire");
    let proxy = Proxy::with(|c| c.allow_clients = vec!["127.0.0.1/32".parse().expect("cidr")]);
    let (request, got) = get(proxy.addr, &format!("http://{}/", wire.addr));
    assert_eq!(answer(&request, &got).status, 200, "got {:?}", got.text());
}

/// The access log counts the body bytes of the proxy's own answers, as it
/// does for forwarded ones: a 403 is not logged as `403 0`.
#[test]
fn the_access_log_counts_the_body_of_the_proxys_own_answers() {
    let proxy = crate::support::ProxyProcess::start(&[]);
    let tripwire = Tripwire::bind("127.0.0.1:0").expect("bind a loopback tripwire");
    let url = format!("http://{}/", tripwire.addr);
    let (request, got) = get(proxy.addr, &url);
    let response = answer(&request, &got);
    assert_eq!(response.status, 403, "{}", got.text());
    let line = proxy
        .wait_for_log(&format!("GET {url} 403"), LIMIT)
        .unwrap_or_else(|| panic!("no access line; log:\n{}", proxy.log().join("\n")));
    let logged = format!(" 403 {} ", response.body.len());
    assert!(line.contains(&logged), "want {logged:?} in {line}");
    assert_eq!(tripwire.hits(), 0, "the denied destination was contacted");
}
