//! Shutdown of the real binary by signal (sent by PID): draining, the grace
//! period, the second signal, exit codes; and the startup and access-log lines.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::support::raw::{Exchange, exchange_until_close, header_in, read_to_close};
use crate::support::{Gate, Origin, ProxyProcess, gated_origin, read_response, wait_until};

const LIMIT: Duration = Duration::from_secs(20);
const BODY: &[u8] = b"the whole body, every byte of it\n";

fn start(extra: &[&str]) -> ProxyProcess {
    let mut args = vec!["--allow-dest", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

/// Sends `GET url` through the proxy from a thread.
fn request_in_background(proxy: SocketAddr, url: String) -> JoinHandle<Exchange> {
    thread::spawn(move || {
        let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
        exchange_until_close(proxy, request.as_bytes(), Duration::from_secs(60))
    })
}

fn log_of(proxy: &ProxyProcess) -> String {
    proxy.log().join("\n")
}

/// SIGTERM, then once the drain has begun, SIGTERM again.
fn signal_twice_while_draining(proxy: &ProxyProcess) {
    proxy.signal("TERM");
    assert!(
        proxy.wait_for_log("draining:", LIMIT).is_some(),
        "log:\n{}",
        log_of(proxy)
    );
    proxy.signal("TERM");
}

fn is_refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

fn exit_code(proxy: &mut ProxyProcess, limit: Duration) -> Option<i32> {
    proxy
        .wait_exit(limit)
        .map(|status| status.code().unwrap_or(-1))
}

/// Asserts that `got` is one complete 200 with `BODY`.
fn assert_complete(got: &Exchange, proxy: &ProxyProcess) {
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200],
        "got {:?}\nproxy log:\n{}",
        got.text(),
        log_of(proxy)
    );
    assert_eq!(got.responses()[0].body, BODY, "log:\n{}", log_of(proxy));
    assert!(got.closed, "connection not closed while draining");
}

#[test]
fn sigterm_with_no_traffic_exits_0_and_refuses_connections() {
    let mut proxy = start(&[]);
    proxy.signal("TERM");
    let code = exit_code(&mut proxy, LIMIT);
    assert_eq!(code, Some(0), "log:\n{}", log_of(&proxy));
    assert!(is_refused(proxy.addr), "port still accepts connections");
    assert!(
        proxy.log().iter().any(|l| l.contains("stopped")),
        "log:\n{}",
        log_of(&proxy)
    );
}

/// A request in flight when `signal` arrives is finished, the listener is
/// closed meanwhile, and the process exits 0 after it.
fn in_flight_request_completes_after(signal: &str) {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&[]);
    let client = request_in_background(proxy.addr, origin.url("/slow"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "request never reached the origin; log:\n{}",
        log_of(&proxy)
    );
    proxy.signal(signal);
    assert!(
        proxy.wait_for_log("draining:", LIMIT).is_some(),
        "no draining line; log:\n{}",
        log_of(&proxy)
    );
    assert!(
        is_refused(proxy.addr),
        "new connection accepted while draining"
    );
    // Still running: the request is held at the origin.
    assert_eq!(exit_code(&mut proxy, Duration::ZERO), None);
    gate.open();
    let got = client.join().expect("client thread");
    assert_complete(&got, &proxy);
    assert_eq!(
        exit_code(&mut proxy, LIMIT),
        Some(0),
        "log:\n{}",
        log_of(&proxy)
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    in_flight_request_completes_after("TERM");
}

#[test]
fn sigint_behaves_like_sigterm() {
    in_flight_request_completes_after("INT");
}

#[test]
fn sigterm_lets_queued_requests_finish() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&["--workers", "1", "--queue", "1"]);
    let first = request_in_background(proxy.addr, origin.url("/first"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "first request never reached the origin"
    );
    // Three more: one waits in the queue, two are turned away with 503.
    let answered = Arc::new(AtomicUsize::new(0));
    let later: Vec<_> = (0..3)
        .map(|n| {
            let (addr, url, answered) =
                (proxy.addr, origin.url(&format!("/q{n}")), answered.clone());
            thread::spawn(move || {
                let got = request_in_background(addr, url).join().expect("client");
                answered.fetch_add(1, Ordering::SeqCst);
                got
            })
        })
        .collect();
    assert!(
        wait_until(LIMIT, || answered.load(Ordering::SeqCst) >= 2),
        "queue never filled; log:\n{}",
        log_of(&proxy)
    );
    proxy.signal("TERM");
    assert!(proxy.wait_for_log("draining:", LIMIT).is_some());
    gate.open();
    assert_complete(&first.join().expect("first"), &proxy);
    let mut statuses: Vec<u16> = later
        .into_iter()
        .map(|h| h.join().expect("client"))
        .map(|got| got.responses().first().map_or(0, |r| r.status))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503, 503], "log:\n{}", log_of(&proxy));
    assert_eq!(
        exit_code(&mut proxy, LIMIT),
        Some(0),
        "log:\n{}",
        log_of(&proxy)
    );
}

#[test]
fn second_sigterm_during_grace_exits_1_at_once() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&["--grace", "5m"]);
    let client = request_in_background(proxy.addr, origin.url("/held"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "request never reached the origin"
    );
    signal_twice_while_draining(&proxy);
    // Far less than the 5 minute grace.
    let code = exit_code(&mut proxy, LIMIT);
    assert_eq!(code, Some(1), "log:\n{}", log_of(&proxy));
    let got = client.join().expect("client");
    assert!(
        !got.responses().iter().any(|r| r.status == 200),
        "a cut request looked complete: {:?}",
        got.text()
    );
    assert_cut_line(&proxy, &origin.url("/held"));
    gate.open();
}

#[test]
fn grace_running_out_exits_1() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&["--grace", "300ms"]);
    let client = request_in_background(proxy.addr, origin.url("/held"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "request never reached the origin"
    );
    proxy.signal("TERM");
    let code = exit_code(&mut proxy, LIMIT);
    assert_eq!(code, Some(1), "log:\n{}", log_of(&proxy));
    let got = client.join().expect("client");
    assert!(
        !got.responses().iter().any(|r| r.status == 200),
        "a cut request looked complete: {:?}",
        got.text()
    );
    assert!(
        proxy
            .log()
            .iter()
            .any(|l| l.contains("stopped: 1 request was cut short")),
        "log:\n{}",
        log_of(&proxy)
    );
    assert_cut_line(&proxy, &origin.url("/held"));
    gate.open();
}

/// In Squid's format, a request cut at shutdown is an aborted one, and the
/// shutdown's message names what to look for in each format.
#[test]
fn grace_running_out_is_logged_aborted_in_squids_format() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let log_arg = log_path.to_str().expect("UTF-8 temp path");
    let mut proxy = start(&[
        "--grace",
        "300ms",
        "--access-log",
        log_arg,
        "--access-log-format",
        "squid",
    ]);
    let client = request_in_background(proxy.addr, origin.url("/held"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "request never reached the origin"
    );
    proxy.signal("TERM");
    assert_eq!(
        exit_code(&mut proxy, LIMIT),
        Some(1),
        "log:\n{}",
        log_of(&proxy)
    );
    let _ = client.join();
    let text = std::fs::read_to_string(&log_path).expect("read the access log");
    let url = origin.url("/held");
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" GET {url} ")))
        .unwrap_or_else(|| panic!("no line for {url}:\n{text}"));
    assert!(line.contains(" NONE_ABORTED/000 0 "), "{line}");
    assert!(
        proxy
            .log()
            .iter()
            .any(|l| l.contains("stopped: 1 request was cut short")
                && l.contains("NONE_ABORTED/000")),
        "log:\n{}",
        log_of(&proxy)
    );
    gate.open();
}

/// With `--workers 1`: a request to the gated `origin` that holds the one
/// worker (`/held`), then one that waits in the queue behind it
/// (`/queued`); both `Connection: close`.
fn hold_the_worker(
    proxy: &ProxyProcess,
    origin: &Origin,
) -> (JoinHandle<Exchange>, JoinHandle<Exchange>) {
    let get = |url: String| {
        let addr = proxy.addr;
        thread::spawn(move || {
            let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            exchange_until_close(addr, request.as_bytes(), LIMIT)
        })
    };
    let held = get(origin.url("/held"));
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 1),
        "request never reached the origin"
    );
    (held, get(origin.url("/queued")))
}

/// A request that waited in the queue for a worker has that wait in its
/// logged duration: the log says what the client waited.
#[test]
fn the_logged_duration_counts_the_wait_in_the_queue() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&["--workers", "1"]);
    let (held, queued) = hold_the_worker(&proxy, &origin);
    // The one worker is held: the second request waits at least this long.
    let waited = Duration::from_millis(400);
    thread::sleep(waited);
    gate.open();
    for client in [held, queued] {
        let got = client.join().expect("client");
        assert_eq!(got.responses().first().map(|r| r.status), Some(200));
    }
    let url = origin.url("/queued");
    let line = proxy
        .wait_for_log(&format!(" {url} 200 "), LIMIT)
        .unwrap_or_else(|| panic!("no line for {url}:\n{}", log_of(&proxy)));
    let ms: u64 = line
        .split_whitespace()
        .find_map(|field| field.strip_suffix("ms")?.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms >= waited.as_millis() as u64, "{line}");
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(0), "{}", log_of(&proxy));
}

/// A health check that would wait behind busy workers is answered at once
/// by the acceptor: a balancer must not take a busy proxy for a dead one.
#[test]
fn a_health_check_does_not_wait_behind_busy_workers() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, BODY);
    let mut proxy = start(&["--workers", "1"]);
    let (held, queued) = hold_the_worker(&proxy, &origin);
    thread::sleep(Duration::from_millis(500));
    let answered = Arc::new(AtomicUsize::new(0));
    let check = {
        let answered = answered.clone();
        let addr = proxy.addr;
        thread::spawn(move || {
            let got =
                exchange_until_close(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", LIMIT);
            answered.store(1, Ordering::SeqCst);
            got
        })
    };
    // Answered while the worker is still held.
    let in_time = wait_until(LIMIT, || answered.load(Ordering::SeqCst) == 1);
    gate.open();
    let got = check.join().expect("health check");
    assert!(in_time, "the health check waited for the worker");
    let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "{}", got.text());
    for client in [held, queued] {
        let got = client.join().expect("client");
        assert_eq!(got.responses().first().map(|r| r.status), Some(200));
    }
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(0), "{}", log_of(&proxy));
}

/// A request cut at shutdown after part of its answer went out says how
/// much did: its line counts every byte the client got.
#[test]
fn a_request_cut_mid_body_logs_the_bytes_sent() {
    let gate = Gate::new();
    let first = b"the first part of the body".to_vec();
    let origin = {
        let (gate, first) = (gate.clone(), first.clone());
        Origin::start(move |_| crate::support::Reply::Paused {
            status: 200,
            headers: Vec::new(),
            first: first.clone(),
            gate: gate.clone(),
            rest: b"and the rest".to_vec(),
            reset: false,
        })
    };
    let mut proxy = start(&["--grace", "300ms"]);
    let url = origin.url("/part");
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client
        .set_read_timeout(Some(LIMIT))
        .expect("client timeout");
    client
        .write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(first.len()).any(|w| w == first.as_slice()) {
        match std::io::Read::read(&mut client, &mut buf) {
            Ok(0) | Err(_) => panic!("the first part never came: {got:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(1), "{}", log_of(&proxy));
    got.extend(read_to_close(&mut client, LIMIT).bytes);
    let line = proxy
        .log()
        .into_iter()
        .find(|l| l.contains(&format!(" {url} ")))
        .unwrap_or_else(|| panic!("no line for {url}:\n{}", log_of(&proxy)));
    assert!(line.contains("cut_at_shutdown"), "{line}");
    assert!(
        line.contains(&format!(" 0 {} ", got.len())),
        "{} bytes received: {line}",
        got.len()
    );
    gate.open();
}

/// Asserts that the request for `url` got one access-log line, as cut at
/// shutdown.
fn assert_cut_line(proxy: &ProxyProcess, url: &str) {
    let lines: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains(&format!(" {url} ")))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{}", log_of(proxy));
    assert!(lines[0].contains(" 0 0 "), "{}", lines[0]);
    assert!(lines[0].contains("cut_at_shutdown"), "{}", lines[0]);
}

#[test]
fn startup_line_names_addresses_workers_and_queue() {
    // A second listener on ::1 when this machine has IPv6 loopback.
    let has_v6 = TcpListener::bind("[::1]:0").is_ok();
    let mut args = vec!["--workers", "3", "--queue", "7"];
    if has_v6 {
        args.extend(["--listen", "[::1]:0"]);
    }
    let mut proxy = start(&args);
    let line = proxy
        .wait_for_log("listening on", LIMIT)
        .expect("startup line");
    assert!(
        line.contains(&format!("listening on {}", proxy.addr)),
        "{line}"
    );
    assert!(line.contains("with 3 workers, queue 7"), "{line}");
    if has_v6 {
        assert!(line.contains(", [::1]:"), "{line}");
    }
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(0));
}

#[test]
fn every_request_gets_an_access_log_line_with_its_request_id() {
    let origin = Origin::fixed("text/plain", BODY);
    let mut proxy = start(&[]);
    let requests = [
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            origin.url("/ok")
        ),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "NOT HTTP AT ALL\r\n\r\n".to_string(),
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Request-Id: client-chosen-42\r\nConnection: close\r\n\r\n",
            origin.url("/mine")
        ),
    ];
    let mut ids = Vec::new();
    for request in &requests {
        let got = exchange_until_close(proxy.addr, request.as_bytes(), LIMIT);
        let response = got
            .responses()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("sent {request:?}, got {:?}", got.text()));
        let id = header_in(&response.head, "x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id: {:?}", got.text()));
        ids.push((request, response.status, id));
    }
    assert_eq!(ids[4].2, "client-chosen-42", "client's own id not kept");
    for (request, status, id) in &ids {
        let needle = format!("id={id} ");
        let line = proxy.wait_for_log(&needle, LIMIT).unwrap_or_else(|| {
            panic!(
                "no access line for {request:?} ({id}); log:\n{}",
                log_of(&proxy)
            )
        });
        assert!(line.contains(&format!(" {status} ")), "{line}");
        let count = proxy.log().iter().filter(|l| l.contains(&needle)).count();
        assert_eq!(count, 1, "lines for {id}; log:\n{}", log_of(&proxy));
    }
    proxy.signal("TERM");
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(0));
}

/// A client still sending its head when the grace period ends must not
/// hold the process for a whole `header_timeout`: it is answered 503 at the
/// end of the grace, which counts as cutting a request short.
#[test]
fn head_still_arriving_is_cut_when_grace_ends() {
    let mut proxy = start(&["--grace", "300ms", "--header-timeout", "5m"]);
    let mut stream = TcpStream::connect(proxy.addr).expect("connect");
    // A first request proves the connection was accepted and is parked.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, head, _) = read_response(&mut stream, LIMIT).expect("healthz answer");
    assert_eq!(status, 200, "{head}");
    stream
        .write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\nX-Slow")
        .expect("send partial head");
    proxy.signal("TERM");
    // Far sooner than the 5 minute header_timeout.
    let code = exit_code(&mut proxy, LIMIT);
    let got = read_to_close(&mut stream, LIMIT);
    match got.responses().first() {
        // The proxy had read part of the head: it was cut at the end of the grace.
        Some(response) => {
            assert_eq!(response.status, 503, "got {:?}", got.text());
            assert!(
                response
                    .header("proxy-status")
                    .is_some_and(|v| v.contains("error=proxy_internal_error")),
                "got {:?}",
                got.text()
            );
            assert_eq!(code, Some(1), "log:\n{}", log_of(&proxy));
        }
        // The signal came before the proxy read anything: an idle connection, closed.
        None => assert_eq!(code, Some(0), "log:\n{}", log_of(&proxy)),
    }
    assert!(got.closed, "connection left open");
}

#[test]
fn two_quick_signals_to_an_idle_proxy_exit_0() {
    // `timeout` signals its child, then the child's process group: an idle
    // proxy gets two signals at once, and has cut nothing.
    let mut proxy = start(&[]);
    proxy.signal("TERM");
    proxy.signal("TERM");
    let code = exit_code(&mut proxy, LIMIT);
    assert_eq!(code, Some(0), "log:\n{}", log_of(&proxy));
    assert!(
        !log_of(&proxy).contains("cut short"),
        "log:\n{}",
        log_of(&proxy)
    );
}

/// A CONNECT tunnel through `proxy` to `target`, open (its 200 read).
fn open_tunnel(proxy: &ProxyProcess, target: SocketAddr) -> TcpStream {
    let mut tunnel = TcpStream::connect(proxy.addr).expect("connect");
    tunnel.set_read_timeout(Some(LIMIT)).expect("read timeout");
    write!(
        tunnel,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut tunnel, &mut byte).expect("the CONNECT answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tunnel
}

/// A tunnel kept busy past the grace period is cut when it ends, as a
/// request would be: the process does not wait on it (systemd would kill
/// it), and exits 1.
#[test]
fn a_busy_tunnel_is_cut_when_the_grace_ends() {
    let echo = crate::support::servers::EchoServer::start();
    let port = echo.addr.port().to_string();
    let mut proxy = start(&["--connect-port", &port, "--grace", "1s"]);
    let mut tunnel = open_tunnel(&proxy, echo.addr);
    proxy.signal("TERM");
    // Busy through the tunnel, never silent for long, until it is cut.
    let started = std::time::Instant::now();
    let mut echoed = [0u8; 4];
    while tunnel.write_all(b"ping").is_ok()
        && std::io::Read::read_exact(&mut tunnel, &mut echoed).is_ok()
    {
        assert!(started.elapsed() < LIMIT, "the tunnel was never cut");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(exit_code(&mut proxy, LIMIT), Some(1), "{}", log_of(&proxy));
    assert!(
        log_of(&proxy).contains("stopped: 1 open tunnel was closed"),
        "log:\n{}",
        log_of(&proxy)
    );
}

#[test]
fn a_second_signal_that_cuts_an_open_tunnel_exits_1() {
    let echo = crate::support::servers::EchoServer::start();
    let port = echo.addr.port().to_string();
    let mut proxy = start(&["--connect-port", &port, "--grace", "5m"]);
    let _tunnel = open_tunnel(&proxy, echo.addr);
    // The open tunnel holds the drain; the second signal cuts it.
    signal_twice_while_draining(&proxy);
    let code = exit_code(&mut proxy, LIMIT);
    assert_eq!(code, Some(1), "log:\n{}", log_of(&proxy));
    assert!(
        log_of(&proxy).contains("stopped: 1 open tunnel was closed"),
        "log:\n{}",
        log_of(&proxy)
    );
}
