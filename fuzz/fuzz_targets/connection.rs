//! Whole-connection handling: arbitrary bytes sent to an in-process server.
//!
//! One server per fuzz process, with a loopback origin that answers a fixed
//! 200 to anything. Each input is written to a fresh client connection (byte 0
//! picks whether a valid request to the origin goes first, so mutations reach
//! the paths after one request; the text `ORIGIN` in the input is replaced by
//! the origin's `127.0.0.1:port`), the write side is shut, and whatever comes
//! back within a short time is read. Every response head that comes back must
//! parse, and every so often `/healthz` must still answer 200.
//!
//! The proxy forwards to whatever address a request names, and the fuzzer
//! makes up addresses: run this target only in a network namespace that has
//! nothing but loopback (`unshare -rn`, see the README); it refuses to start
//! anywhere else.

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use fetchproxy::access::PortRange;
use fetchproxy::config::ServeConfig;
use fetchproxy::server;
use libfuzzer_sys::fuzz_target;

/// How long the answer to one input is waited for.
const ANSWER_TIME: Duration = Duration::from_millis(200);
/// Inputs between two health checks.
const HEALTH_EVERY: u64 = 64;

struct Harness {
    proxy: SocketAddr,
    origin: SocketAddr,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
/// The server, kept reachable so the leak checker at exit does not report it.
static SERVER: OnceLock<Mutex<server::Running>> = OnceLock::new();
static INPUTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(start);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let origin = harness.origin.to_string();
    let mut sent = Vec::with_capacity(rest.len() + 128);
    if mode & 1 == 1 {
        sent.extend_from_slice(
            format!("GET http://{origin}/first HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
        );
    }
    sent.extend_from_slice(&replace(rest, b"ORIGIN", origin.as_bytes()));

    let answer = exchange(harness.proxy, &sent, ANSWER_TIME);
    check_responses(&answer, &sent);

    if INPUTS.fetch_add(1, Ordering::Relaxed) % HEALTH_EVERY == 0 {
        assert_healthy(harness.proxy);
    }
});

/// Starts the origin and the proxy, once per process.
fn start() -> Harness {
    assert_only_loopback();
    // libFuzzer's main does not ignore SIGPIPE the way Rust's does.
    // SAFETY: setting a signal disposition to SIG_IGN, before any socket use.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let origin = start_origin();
    let config = ServeConfig {
        listen: vec!["127.0.0.1:0".parse().expect("loopback address")],
        workers: 4.try_into().expect("non-zero"),
        queue: 32.try_into().expect("non-zero"),
        allow_dest: vec!["127.0.0.0/8".parse().expect("cidr")],
        dest_ports: vec![PortRange {
            first: 1,
            last: 65535,
        }],
        connect_ports: vec![origin.port()],
        grace: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        upstream_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_millis(500),
        header_timeout: Duration::from_millis(500),
        tunnel_idle_timeout: Duration::from_millis(500),
        max_header_bytes: 8 * 1024,
        max_url_bytes: 2 * 1024,
        max_body_bytes: Some(64 * 1024),
        via_name: "fuzz".to_string(),
        log_level: log::LevelFilter::Off,
        ..ServeConfig::default()
    };
    let running = server::start(config).expect("start the proxy");
    let proxy = running.local_addrs()[0];
    // It runs until the fuzz process ends.
    let _ = SERVER.set(Mutex::new(running));
    Harness { proxy, origin }
}

/// Refuses to run where the proxy could reach anything but loopback.
fn assert_only_loopback() {
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    let others: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .filter(|name| *name != "lo")
        .collect();
    assert!(
        others.is_empty(),
        "the connection target must run in a network namespace with only loopback \
         (unshare -rn); interfaces here: {others:?}"
    );
}

/// A loopback origin: reads a request head (or gives up after a moment) and
/// answers a fixed 200, then closes.
fn start_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let addr = listener.local_addr().expect("origin address");
    thread::Builder::new()
        .name("origin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("origin-conn".into())
                    .spawn(move || answer_fixed(stream));
            }
        })
        .expect("spawn the origin");
    addr
}

fn answer_fixed(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(300)));
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    );
    let _ = stream.shutdown(Shutdown::Both);
}

/// Sends `bytes` on a new connection, shuts the write side, and returns what
/// comes back before end of stream or `wait`.
fn exchange(proxy: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    assert!(proxy.ip().is_loopback(), "only ever connect to loopback");
    let Ok(mut stream) = TcpStream::connect_timeout(&proxy, Duration::from_secs(1)) else {
        return Vec::new();
    };
    let _ = stream.set_write_timeout(Some(wait));
    // The proxy may answer and close before reading everything: not a failure.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    answer
}

/// Every response head the proxy sent must parse. Bodies are skipped by their
/// framing; after a response whose body length the client side cannot know
/// (HEAD, CONNECT, close-delimited) the rest is not checked.
fn check_responses(answer: &[u8], sent: &[u8]) {
    let unframeable = contains(sent, b"HEAD") || contains(sent, b"CONNECT");
    let mut rest = answer;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            // Cut short by the time limit.
            Ok(httparse::Status::Partial) => return,
            Err(e) => panic!(
                "unparsable response ({e}) in {:?}\nfor input {:?}",
                String::from_utf8_lossy(answer),
                String::from_utf8_lossy(sent)
            ),
        };
        let code = response.code.expect("a complete head has a status");
        assert!(
            (100..600).contains(&code),
            "status {code} in {:?}",
            String::from_utf8_lossy(answer)
        );
        assert_eq!(response.version, Some(1), "the proxy speaks HTTP/1.1");
        if unframeable || code == 101 {
            return;
        }
        if (100..200).contains(&code) {
            rest = &rest[head_len..];
            continue;
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        if header("transfer-encoding").is_some() {
            // Not decoded here; the chunked target covers the decoder.
            return;
        }
        let Some(length) = header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return;
        };
        let Some(next) = rest.get(head_len + length..) else {
            return;
        };
        rest = next;
    }
}

/// `/healthz` answers 200 within a few seconds (retried: a full queue may
/// answer 503 for a moment).
fn assert_healthy(proxy: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = exchange(
            proxy,
            b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        );
        if answer.starts_with(b"HTTP/1.1 200 ") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy is not healthy: /healthz answered {:?}",
            String::from_utf8_lossy(&answer)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
