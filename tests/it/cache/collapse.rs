//! Concurrent misses: one origin request for many clients, followers
//! reading the body as it arrives, a fill that fails cutting every reader
//! short, a PURGE during a fill keeping its response out, and responses
//! that cannot be shared never making requests wait on each other
//! (hit-for-miss).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{LIMIT, cache_status, concurrent_gets, fresh_bytes_origin, get, reply_with};
use crate::support::origin::pattern_byte;
use crate::support::raw::{http10_get_ending_in_reset, parse_head};
use crate::support::{CurlReply, Gate, Origin, Proxy, Reply, metric, scrape_metrics, wait_until};
use fetchproxy::config::ServeConfig;

/// A proxy with a worker for every client of these tests.
fn roomy_proxy() -> Proxy {
    Proxy::with(|config| {
        config.workers = 64.try_into().expect("non-zero");
        config.queue = 128.try_into().expect("non-zero");
    })
}

/// Waits (up to `LIMIT`) until `proxy`'s metric `name` satisfies `holds`.
fn metric_reaches(proxy: SocketAddr, name: &str, holds: impl Fn(f64) -> bool) -> bool {
    wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy);
        metric(&page, name).is_some_and(&holds)
    })
}

/// An origin that holds every answer until `gate` opens, then sends
/// `body`, fresh for an hour.
fn held_origin(gate: &Gate, body: Vec<u8>) -> Origin {
    let gate = gate.clone();
    Origin::start(move |_| {
        gate.wait(LIMIT);
        Reply::Full {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=3600".into())],
            body: body.clone(),
        }
    })
}

/// A first client of `url`, on a thread of its own (join it for its reply),
/// once `origin` has its request: the fill is under way.
fn leader_under_way(proxy: SocketAddr, origin: &Origin, url: &str) -> JoinHandle<CurlReply> {
    let url = url.to_string();
    let leader = thread::spawn(move || get(proxy, &url, &[]));
    assert!(wait_until(LIMIT, || origin.requests().len() == 1));
    leader
}

/// Sends a GET for `url` through the proxy on a new connection.
fn send_get(proxy: SocketAddr, url: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).expect("connect to proxy");
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    stream
}

/// Reads until the response head and at least `body` bytes of body have
/// arrived (or the connection ends): (head text, body so far).
fn read_some(stream: &mut TcpStream, body: usize) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() - (end + 4) >= body
        {
            let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
            return (head, got[end + 4..].to_vec());
        }
        assert!(Instant::now() < deadline, "no response: {got:?}");
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let end = got
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap_or_else(|| panic!("no head: {got:?}"));
                let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                return (head, got[end + 4..].to_vec());
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads what is left until the proxy closes the connection.
fn read_rest(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    rest
}

#[test]
fn fifty_concurrent_cold_requests_make_one_origin_request() {
    let gate = Gate::new();
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let origin = held_origin(&gate, body.clone());
    let proxy = roomy_proxy();
    let url = origin.url("/popular");
    let clients = concurrent_gets(proxy.addr, &url, 50);
    // Every client is in: one at the origin, the others waiting on it
    // (and the worker answering this scrape).
    let all_in = metric_reaches(proxy.addr, "fetchproxy_workers_busy", |n| n >= 51.0);
    assert!(all_in, "50 clients never got a worker each");
    assert_eq!(
        origin.requests().len(),
        1,
        "one request while the rest wait"
    );
    gate.open();
    let replies: Vec<_> = clients
        .into_iter()
        .map(|client| client.join().expect("client thread"))
        .collect();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body == body,
            "a body differs: {} bytes",
            reply.body.len()
        );
    }
    let collapsed = replies
        .iter()
        .filter(|reply| cache_status(reply).contains("; collapsed"))
        .count();
    assert_eq!(collapsed, 49, "the others read the first one's fill");
    assert_eq!(origin.requests().len(), 1);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_collapsed_total"),
        Some(49.0)
    );
}

#[test]
fn followers_receive_bytes_before_the_fill_completes() {
    let gate = Gate::new();
    let (first, rest) = (vec![b'a'; 64 * 1024], vec![b'b'; 64 * 1024]);
    let origin = Origin::start({
        let (gate, body, at) = (gate.clone(), [&first[..], &rest[..]].concat(), first.len());
        move |_| Reply::fresh_paused(&body, at, &gate)
    });
    let proxy = roomy_proxy();
    let url = origin.url("/slow");
    let mut leader = send_get(proxy.addr, &url);
    let (_, lead_part) = read_some(&mut leader, first.len());
    let mut follower = send_get(proxy.addr, &url);
    let (head, part) = read_some(&mut follower, first.len());
    // The gate is still shut: these bytes came from the fill in progress.
    assert_eq!(part, first, "the first half, before the origin sent more");
    assert_eq!(lead_part, first);
    let head = parse_head(head.as_bytes()).expect("a response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("131072"));
    let status = head.header("cache-status").expect("Cache-Status");
    assert!(status.contains("; collapsed"), "{status}");
    gate.open();
    let follower_rest = read_rest(&mut follower);
    let leader_rest = read_rest(&mut leader);
    assert_eq!(follower_rest, rest);
    assert_eq!(leader_rest, rest);
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn a_purge_during_a_fill_keeps_the_response_from_before_it_out_of_the_cache() {
    let gate = Gate::new();
    let (first, rest) = (vec![b'o'; 16 * 1024], vec![b'O'; 16 * 1024]);
    let answered = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, answered) = (gate.clone(), answered.clone());
        let (body, at) = ([&first[..], &rest[..]].concat(), first.len());
        move |_| {
            if answered.fetch_add(1, Ordering::SeqCst) > 0 {
                return reply_with("new", &[("Cache-Control", "max-age=3600")]);
            }
            Reply::fresh_paused(&body, at, &gate)
        }
    });
    // Loopback clients may PURGE by default.
    let proxy = roomy_proxy();
    let url = origin.url("/republished");
    let mut leader = send_get(proxy.addr, &url);
    let (_, part) = read_some(&mut leader, first.len());
    assert_eq!(part, first);
    let purged = get(proxy.addr, &url, &["-X", "PURGE"]);
    assert_eq!(purged.status, 200, "a fill was under way: {purged:?}");
    gate.open();
    assert_eq!(read_rest(&mut leader), rest, "the leader's answer is whole");
    let after = get(proxy.addr, &url, &[]);
    assert_eq!(after.text(), "new", "{}", cache_status(&after));
    assert!(cache_status(&after).contains("fwd=uri-miss"), "{after:?}");
    let hit = get(proxy.addr, &url, &[]);
    assert_eq!(hit.text(), "new");
    assert!(cache_status(&hit).contains("hit"), "{hit:?}");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn a_body_stored_in_more_pieces_than_one_write_takes_is_served_whole() {
    // A follower that keeps up with a fill trickling in cuts it at every
    // piece: the body is then stored in some 1,500 pieces, more than one
    // `sendmsg` takes (1,024 slices).
    let body: Vec<u8> = (0..24_000u32).flat_map(u32::to_le_bytes).collect();
    let origin = Origin::start({
        let body = body.clone();
        move |_| Reply::Trickle {
            headers: vec![("Cache-Control".into(), "max-age=3600".into())],
            body: body.clone(),
            piece: 64,
            gap: Duration::from_millis(1),
            reset: false,
        }
    });
    let proxy = roomy_proxy();
    let url = origin.url("/trickle");
    let leader = leader_under_way(proxy.addr, &origin, &url);
    let follower = get(proxy.addr, &url, &[]);
    assert!(
        cache_status(&follower).contains("; collapsed"),
        "{:?}",
        follower.headers
    );
    let leader = leader.join().expect("leader");
    for (name, reply) in [("leader", &leader), ("follower", &follower)] {
        assert_eq!((reply.status, reply.exit), (200, 0), "{name}: {reply:?}");
        assert!(
            reply.body == body,
            "{name}: {} bytes differ",
            reply.body.len()
        );
    }
    let hit = get(proxy.addr, &url, &[]);
    assert!(cache_status(&hit).contains("; hit"), "{:?}", hit.headers);
    assert_eq!((hit.status, hit.exit), (200, 0), "{:?}", hit.stderr);
    assert!(
        hit.body == body,
        "the hit's {} bytes differ",
        hit.body.len()
    );
    assert_eq!(origin.requests().len(), 1);
}

#[test]
fn a_body_to_the_close_cut_by_a_reset_is_cut_short_and_not_stored() {
    // No length: the body ends when the connection does. A reset is no
    // end, whatever ureq makes of it.
    let origin = Origin::start(|_| Reply::ResetUntilClose {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        sent: b"first-part".to_vec(),
    });
    let proxy = Proxy::start();
    let url = origin.url("/reset");
    let mut client = send_get(proxy.addr, &url);
    let (head, mut body) = read_some(&mut client, 0);
    body.extend(read_rest(&mut client));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(body.starts_with(b"a\r\nfirst-part\r\n"), "{body:?}");
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "a cut body must not end with the last chunk: {:?}",
        String::from_utf8_lossy(&body)
    );
    let again = get(proxy.addr, &url, &[]);
    assert!(!cache_status(&again).contains("; hit"), "{again:?}");
    assert_eq!(origin.requests().len(), 2, "nothing was stored");
}

#[test]
fn an_http10_follower_of_a_fill_that_fails_gets_a_reset_not_an_end() {
    // No length: an HTTP/1.0 follower's body runs to the close, so only a
    // reset can say the fill failed.
    let origin = Origin::start(|_| Reply::Trickle {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        body: vec![b'x'; 40 * 64],
        piece: 64,
        gap: Duration::from_millis(20),
        reset: true,
    });
    let proxy = roomy_proxy();
    let url = origin.url("/fails");
    let leader = leader_under_way(proxy.addr, &origin, &url);
    let got = http10_get_ending_in_reset(proxy.addr, &url, LIMIT);
    assert!(
        String::from_utf8_lossy(&got).contains("collapsed"),
        "a follower: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_ne!(
        leader.join().expect("leader").exit,
        0,
        "the leader is cut too"
    );
}

#[test]
fn a_fill_that_fails_mid_body_cuts_its_followers_short_and_stores_nothing() {
    let gate = Gate::new();
    let served = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, served) = (gate.clone(), served.clone());
        move |_| {
            let headers = vec![("Cache-Control".into(), "max-age=3600".into())];
            if served.fetch_add(1, Ordering::SeqCst) > 0 {
                return Reply::Full {
                    status: 200,
                    headers,
                    body: vec![b'z'; 1000],
                };
            }
            Reply::Paused {
                status: 200,
                headers,
                first: vec![b'a'; 1000],
                gate: gate.clone(),
                rest: vec![b'b'; 1000],
                reset: true,
            }
        }
    });
    let proxy = roomy_proxy();
    let url = origin.url("/broken");
    let mut leader = send_get(proxy.addr, &url);
    read_some(&mut leader, 1000);
    let mut follower = send_get(proxy.addr, &url);
    let (head, part) = read_some(&mut follower, 1000);
    assert!(head.contains("collapsed"), "{head}");
    gate.open();
    // Both end short of the 2000 bytes their heads announced.
    assert_eq!(part.len() + read_rest(&mut follower).len(), 1000);
    read_rest(&mut leader);
    let after = get(proxy.addr, &url, &[]);
    assert_eq!(after.body, vec![b'z'; 1000], "{after:?}");
    assert!(cache_status(&after).contains("fwd=uri-miss"), "{after:?}");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn an_uncacheable_url_under_concurrency_is_not_serialised() {
    let gate = Gate::new();
    let served = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, served) = (gate.clone(), served.clone());
        move |_| {
            // The first answer comes at once; the next wait for the gate.
            if served.fetch_add(1, Ordering::SeqCst) > 0 {
                gate.wait(LIMIT);
            }
            reply_with("mine alone", &[("Cache-Control", "no-store")])
        }
    });
    let proxy = roomy_proxy();
    let url = origin.url("/uncacheable");
    let first = get(proxy.addr, &url, &[]);
    assert!(
        cache_status(&first).contains("detail=not-storable"),
        "{first:?}"
    );
    let clients = concurrent_gets(proxy.addr, &url, 5);
    // All five reach the origin while it holds them: none waits on another.
    let parallel = wait_until(LIMIT, || origin.requests().len() == 6);
    assert!(parallel, "{} origin requests", origin.requests().len());
    gate.open();
    for client in clients {
        let reply = client.join().expect("client thread");
        assert_eq!(reply.text(), "mine alone", "{reply:?}");
        assert!(!cache_status(&reply).contains("collapsed"), "{reply:?}");
    }
}

#[test]
fn followers_of_a_body_over_the_limit_get_the_leaders_error_not_a_cut_200() {
    // The leader's answer is refused (502) for its declared length: the
    // others must not have been given its 200 head first.
    let gate = Gate::new();
    let origin = Origin::start({
        let gate = gate.clone();
        move |_| {
            gate.wait(LIMIT);
            Reply::Full {
                status: 200,
                headers: vec![("Cache-Control".into(), "max-age=3600".into())],
                body: vec![b'x'; 200_000],
            }
        }
    });
    let proxy = Proxy::with(|c| c.max_body_bytes = Some(100_000));
    let url = origin.url("/over");
    let clients = concurrent_gets(proxy.addr, &url, 3);
    // All three are in (one at the origin, two following it), and the
    // worker answering this scrape.
    let all_in = metric_reaches(proxy.addr, "fetchproxy_workers_busy", |n| n >= 4.0);
    assert!(all_in);
    gate.open();
    for client in clients {
        let reply = client.join().expect("client");
        assert_eq!(reply.status, 502, "{reply:?}");
        assert!(
            reply
                .header("proxy-status")
                .is_some_and(|s| s.contains("http_response_body_size")),
            "{reply:?}"
        );
    }
}

#[test]
fn followers_of_a_chunked_body_that_outgrows_the_cache_get_it_whole() {
    // 24 MiB of unknown length, over the default 16 MiB object limit, and
    // no disk tier: the fill gives up storing halfway, and passes the rest
    // on to the clients following it instead of cutting them short.
    const LEN: u64 = 24 << 20;
    const CLIENTS: usize = 4;
    let gate = Gate::new();
    let body: Vec<u8> = (0..LEN).map(pattern_byte).collect();
    let origin = Origin::start({
        let gate = gate.clone();
        move |_| {
            gate.wait(LIMIT);
            // In 1 MiB pieces 20 ms apart: a client slow to join still
            // finds the fill storing, well before the limit.
            Reply::Trickle {
                headers: vec![("Cache-Control".into(), "max-age=3600".into())],
                body: body.clone(),
                piece: 1 << 20,
                gap: Duration::from_millis(20),
                reset: false,
            }
        }
    });
    let proxy = roomy_proxy();
    let url = origin.url("/toolchain.tar");
    let clients = concurrent_gets(proxy.addr, &url, CLIENTS);
    // Every client is in (one fetching, the others following), and the
    // worker answering this scrape.
    let all_in = metric_reaches(proxy.addr, "fetchproxy_workers_busy", |n| {
        n >= (CLIENTS + 1) as f64
    });
    assert!(all_in);
    gate.open();
    let replies: Vec<CurlReply> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    for reply in &replies {
        assert_eq!((reply.status, reply.exit), (200, 0), "{}", reply.stderr);
        assert_eq!(reply.body.len() as u64, LEN, "{:?}", reply.headers);
        let wrong = (0..LEN).find(|&i| reply.body[i as usize] != pattern_byte(i));
        assert_eq!(wrong, None, "first wrong byte");
    }
    let collapsed = replies
        .iter()
        .filter(|r| cache_status(r).contains("collapsed"))
        .count();
    assert_eq!(collapsed, CLIENTS - 1, "{:?}", replies[0].headers);
    assert_eq!(origin.requests().len(), 1);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_fills_passed_on_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "fetchproxy_cache_followers_let_go_total"),
        Some(0.0)
    );
    // Not stored: the next request goes to the origin.
    let again = get(proxy.addr, &url, &[]);
    assert_eq!(again.body.len() as u64, LEN);
    assert!(cache_status(&again).contains("fwd="), "{again:?}");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn a_fill_whose_first_client_leaves_goes_on_for_its_followers() {
    // Stored, so the next request is a hit.
    let (head, body) = first_client_leaves(48 << 20, false, |c| {
        c.cache_mem = 512 << 20;
        c.cache_max_object = 128 << 20;
    });
    assert!(head.contains("collapsed"), "{head}");
    assert_eq!(body, (48 << 20) as u64, "the whole body: {head}");
}

#[test]
fn a_fill_passed_on_whose_first_client_leaves_goes_on_for_its_followers() {
    // Chunked past the default 16 MiB limit: given up storing, and still
    // received for the follower once the first client is gone.
    let (head, body) = first_client_leaves(24 << 20, true, |_| {});
    assert!(head.contains("collapsed"), "{head}");
    assert_eq!(body, (24 << 20) as u64, "the whole body: {head}");
}

/// A first client of a `len`-byte body (`chunked` or not) takes a few bytes
/// and hangs up while another follows the fill, through a proxy set up by
/// `adjust`: the follower's head and how many body bytes it got. Checks
/// that the origin was asked once, and once more for the next request
/// unless the body was stored.
fn first_client_leaves(
    len: u64,
    chunked: bool,
    adjust: impl FnOnce(&mut ServeConfig),
) -> (String, u64) {
    let origin = Origin::start(move |_| Reply::HugeCacheable { len, chunked });
    let proxy = Proxy::with(adjust);
    let url = origin.url("/big");
    let mut leader = TcpStream::connect(proxy.addr).expect("connect");
    write!(leader, "GET {url} HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
    let mut some = [0u8; 1024];
    leader.read_exact(&mut some).expect("the first bytes");
    let (reading, first_bytes) = std::sync::mpsc::channel();
    let follower = thread::spawn({
        let url = url.clone();
        let addr = proxy.addr;
        move || {
            let mut follower = TcpStream::connect(addr).expect("connect");
            write!(
                follower,
                "GET {url} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            .expect("send");
            follower.set_read_timeout(Some(LIMIT)).expect("timeout");
            let mut got = vec![0u8; 64 * 1024];
            follower.read_exact(&mut got).expect("the first bytes");
            reading.send(()).expect("tell");
            let _ = follower.read_to_end(&mut got);
            got
        }
    });
    first_bytes.recv_timeout(LIMIT).expect("the follower reads");
    // Unread bytes in its socket: closing it resets the connection.
    drop(leader);
    let got = follower.join().expect("follower");
    let head_len = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = parse_head(&got[..head_len]).expect("a head");
    assert_eq!(head.status, 200, "{}", head.head);
    let body = &got[head_len..];
    let body = if chunked {
        dechunk(body).unwrap_or_else(|| panic!("not whole chunks: {}", head.head))
    } else {
        body.to_vec()
    };
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)),
        "the origin's bytes"
    );
    assert_eq!(origin.requests().len(), 1);
    let again = get(proxy.addr, &url, &[]);
    assert_eq!(again.body.len() as u64, len);
    let stored = cache_status(&again).contains("; hit");
    assert_eq!(origin.requests().len(), if stored { 1 } else { 2 });
    assert_eq!(stored, !chunked, "{again:?}");
    (head.head, body.len() as u64)
}

/// The body of chunked `raw`, or `None` unless it is whole chunks ending
/// in the last one.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let httparse::Status::Complete((at, size)) = httparse::parse_chunk_size(raw).ok()? else {
            return None;
        };
        let size = usize::try_from(size).ok()?;
        raw = &raw[at..];
        if size == 0 {
            return (raw == b"\r\n").then_some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[test]
fn a_slow_first_client_does_not_hold_back_its_followers() {
    // More than socket buffers hold, so that a first client that stops
    // reading would stop the fill, were the body received on its behalf.
    const LEN: u64 = 24 << 20;
    let body: Vec<u8> = (0..LEN).map(pattern_byte).collect();
    let origin = fresh_bytes_origin(body.clone());
    let proxy = Proxy::with(|config| {
        config.workers = 64.try_into().expect("non-zero");
        config.cache_max_object = 64 << 20;
        // The first client's stalled answer would outlast the followers'
        // 30 s: only a fill that goes on without it lets them finish.
        config.upstream_timeout = Duration::from_secs(120);
    });
    let url = origin.url("/artifact.tar");
    let mut first = send_get(proxy.addr, &url);
    let (head, first_body) = read_some(&mut first, 1);
    assert!(head.contains("stored"), "{head}");
    // The first client now reads nothing for a while.
    followers_then_the_first_get_it_whole(proxy.addr, &url, &body, first, first_body);
    assert_eq!(origin.requests().len(), 1, "one origin request for all");
}

#[test]
fn a_slow_first_client_does_not_hold_back_followers_of_a_disk_only_fill() {
    // Over the memory tier's object limit, so the body is kept in its disk
    // file alone (a CI farm's toolchain archive).
    slow_first_client_with_a_disk_tier(1 << 20, false);
}

#[test]
fn a_fill_without_memory_to_reserve_goes_on_in_its_file() {
    // Within the memory tier's object limit, but another large fill holds
    // the memory that fills in progress may take: the memory cannot be
    // reserved up front, so the fill is received apart on the strength of
    // its file, where it goes on once memory runs short.
    slow_first_client_with_a_disk_tier(32 << 20, true);
}

#[test]
fn a_fill_that_followers_wait_for_is_received_apart_from_a_smaller_size() {
    // Smaller than a fill received apart on its own account, but followers
    // wait for it as the answer comes (a CI farm asking for an artifact at
    // once), so that a slow first client cannot pace them. (Loopback's
    // socket buffers hold 3 MiB, so here the first client could not hold
    // them back either way; over the internet they hold far less.)
    let Artifact {
        body,
        asked,
        seen,
        origin,
    } = Artifact::start();
    let proxy = roomy_proxy();
    let url = origin.url("/artifact.tar");
    let mut first = send_get(proxy.addr, &url);
    let arrived = wait_until(LIMIT, || origin.requests().len() == 1);
    assert!(arrived, "the first request never reached the origin");
    let followers = concurrent_gets(proxy.addr, &url, 3);
    // The first client, the three followers, and the worker answering
    // this scrape.
    let all_in = metric_reaches(proxy.addr, "fetchproxy_workers_busy", |n| n >= 5.0);
    assert!(all_in, "the followers never got a worker each");
    asked.open();
    let apart = metric_reaches(proxy.addr, "fetchproxy_cache_fills_received_apart", |n| {
        n == 1.0
    });
    assert!(apart, "the fill is received by a thread of its own");
    seen.open();
    // The first client reads nothing until the followers are done.
    for follower in followers {
        let reply = follower.join().expect("follower thread");
        assert_eq!(reply.status, 200, "{:?}", reply.headers);
        assert!(cache_status(&reply).contains("; collapsed"), "{reply:?}");
        assert!(
            reply.body == body,
            "a follower got {} of {ARTIFACT_LEN} bytes",
            reply.body.len()
        );
    }
    let (head, mut first_body) = read_some(&mut first, 1);
    assert!(head.contains("stored"), "{head}");
    first_body.extend(read_rest(&mut first));
    assert!(
        first_body == body,
        "the first client got {} of {ARTIFACT_LEN} bytes",
        first_body.len()
    );
    assert_eq!(origin.requests().len(), 1, "one origin request for all");
}

#[test]
fn a_fill_of_that_size_that_nobody_waits_for_is_relayed_by_its_request() {
    let Artifact {
        body,
        asked,
        seen,
        origin,
    } = Artifact::start();
    let proxy = roomy_proxy();
    asked.open();
    let mut alone = send_get(proxy.addr, &origin.url("/artifact.tar"));
    let (head, mut got) = read_some(&mut alone, 1);
    assert!(head.contains("stored"), "{head}");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_fills_in_progress"),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "fetchproxy_cache_fills_received_apart"),
        Some(0.0),
        "no thread of its own for a fill nobody follows"
    );
    seen.open();
    got.extend(read_rest(&mut alone));
    assert!(got == body, "got {} of {ARTIFACT_LEN} bytes", got.len());
}

/// A body large enough to be received apart when followers wait for it,
/// but not otherwise.
const ARTIFACT_LEN: u64 = 3 << 20;

/// An origin serving `body` once `asked` opens: the head and half of it
/// (fresh for an hour), then the rest once `seen` opens, so that tests see
/// the fill in progress.
struct Artifact {
    body: Vec<u8>,
    asked: Gate,
    seen: Gate,
    origin: Origin,
}

impl Artifact {
    fn start() -> Artifact {
        let body: Vec<u8> = (0..ARTIFACT_LEN).map(pattern_byte).collect();
        let (asked, seen) = (Gate::new(), Gate::new());
        let origin = Origin::start({
            let (body, asked, seen) = (body.clone(), asked.clone(), seen.clone());
            move |_| {
                asked.wait(LIMIT);
                Reply::fresh_paused(&body, body.len() / 2, &seen)
            }
        });
        Artifact {
            body,
            asked,
            seen,
            origin,
        }
    }
}

/// A 24 MiB body (more than socket buffers hold) whose first client stops
/// reading after the head, through a proxy with a disk tier and a 64 MiB
/// memory budget: three followers get it whole, then the first client; the
/// origin sees one request, and the object is a hit afterwards. With
/// `busy`, a fill of another 24 MiB body, stalled halfway at the origin,
/// holds the memory for fills in progress meanwhile (the larger of a
/// quarter of the budget and `max_object`).
fn slow_first_client_with_a_disk_tier(max_object: u64, busy: bool) {
    const LEN: u64 = 24 << 20;
    let body: Vec<u8> = (0..LEN).map(pattern_byte).collect();
    let gate = Gate::new();
    // Holds the fill under test halfway until its count is read: a fill
    // received apart counts while it runs, and one that ran to its end
    // before the look would not be seen.
    let held = Gate::new();
    let origin = Origin::start({
        let (body, gate, held) = (body.clone(), gate.clone(), held.clone());
        move |request| {
            let headers = vec![("Cache-Control".into(), "max-age=3600".into())];
            let stalled = if request.target.ends_with("/other.tar") {
                &gate
            } else {
                &held
            };
            let half = body.len() / 2;
            Reply::Paused {
                status: 200,
                headers,
                first: body[..half].to_vec(),
                gate: stalled.clone(),
                rest: body[half..].to_vec(),
                reset: false,
            }
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    // The fill goes apart only with its length free on disk, plus a
    // quarter and 64 MiB.
    let fs = rustix::fs::statvfs(dir.path()).expect("statvfs");
    let free = fs.f_bavail * fs.f_frsize;
    assert!(
        free > 2 * LEN + (64 << 20),
        "this test needs more than {} bytes free in {}, which has {free}",
        2 * LEN + (64 << 20),
        dir.path().display()
    );
    let proxy = Proxy::with(|config| {
        config.workers = 64.try_into().expect("non-zero");
        config.cache_mem = 64 << 20;
        config.cache_max_object = max_object;
        config.cache_dir = Some(dir.path().to_path_buf());
        config.upstream_timeout = Duration::from_secs(120);
    });
    let occupant = busy.then(|| {
        let mut other = send_get(proxy.addr, &origin.url("/other.tar"));
        let (head, _) = read_some(&mut other, 1);
        assert!(head.contains("stored"), "{head}");
        other
    });
    let url = origin.url("/toolchain.tar");
    let mut first = send_get(proxy.addr, &url);
    let (head, first_body) = read_some(&mut first, 1);
    assert!(head.contains("stored"), "{head}");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_fills_received_apart"),
        Some(if busy { 2.0 } else { 1.0 }),
        "the fill is received by a thread of its own"
    );
    held.open();
    // The first client now reads nothing for a while.
    followers_then_the_first_get_it_whole(proxy.addr, &url, &body, first, first_body);
    let fetched = 1 + usize::from(busy);
    assert_eq!(
        origin.requests().len(),
        fetched,
        "one origin request for all"
    );
    let again = get(proxy.addr, &url, &[]);
    assert!(again.body == body, "the stored body, whole");
    assert!(cache_status(&again).contains("; hit"), "{again:?}");
    assert_eq!(origin.requests().len(), fetched, "a hit from the store");
    gate.open();
    drop(occupant);
}

/// Three followers of `url` get `body` whole while the first client
/// (`first`, which has read `first_body` so far) reads nothing; then the
/// first client gets the rest of it.
fn followers_then_the_first_get_it_whole(
    addr: SocketAddr,
    url: &str,
    body: &[u8],
    mut first: TcpStream,
    mut first_body: Vec<u8>,
) {
    let len = body.len();
    let followers = concurrent_gets(addr, url, 3);
    for follower in followers {
        let reply = follower.join().expect("follower thread");
        assert_eq!(reply.status, 200, "{:?}", reply.headers);
        assert!(
            reply.body == body,
            "a follower got {} of {len} bytes",
            reply.body.len()
        );
    }
    first_body.extend(read_rest(&mut first));
    assert!(
        first_body == body,
        "the first client got {} of {len} bytes",
        first_body.len()
    );
}

#[test]
fn a_fill_received_apart_that_fails_cuts_every_reader_short() {
    const HALF: usize = 5 << 20;
    let gate = Gate::new();
    let served = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, served) = (gate.clone(), served.clone());
        move |_| {
            let headers = vec![("Cache-Control".into(), "max-age=3600".into())];
            if served.fetch_add(1, Ordering::SeqCst) > 0 {
                return Reply::Full {
                    status: 200,
                    headers,
                    body: vec![b'z'; 1000],
                };
            }
            // Large enough to be received apart; reset halfway.
            Reply::Paused {
                status: 200,
                headers,
                first: vec![b'a'; HALF],
                gate: gate.clone(),
                rest: vec![b'b'; HALF],
                reset: true,
            }
        }
    });
    let proxy = roomy_proxy();
    let url = origin.url("/broken-artifact");
    let mut first = send_get(proxy.addr, &url);
    let (_, first_part) = read_some(&mut first, 1000);
    let mut follower = send_get(proxy.addr, &url);
    let (head, follower_part) = read_some(&mut follower, 1000);
    assert!(head.contains("collapsed"), "{head}");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_fills_received_apart"),
        Some(1.0),
        "the fill is received by a thread of its own"
    );
    gate.open();
    // Both end short of the 10 MiB their heads announced.
    let follower_got = follower_part.len() + read_rest(&mut follower).len();
    let first_got = first_part.len() + read_rest(&mut first).len();
    assert_eq!((first_got, follower_got), (HALF, HALF));
    let after = get(proxy.addr, &url, &[]);
    assert_eq!(after.body, vec![b'z'; 1000], "{after:?}");
    assert!(cache_status(&after).contains("fwd=uri-miss"), "{after:?}");
    assert_eq!(origin.requests().len(), 2);
}

/// An origin whose `/popular` is fresh for a second (`ETag: "v1"`), and
/// which holds each revalidation of it until `gate` opens, then answers
/// it with `revalidated`.
fn stale_origin(gate: &Gate, revalidated: Reply) -> Origin {
    let gate = gate.clone();
    Origin::start(move |request| {
        if request.header("if-none-match") == Some("\"v1\"") {
            gate.wait(LIMIT);
            return revalidated.clone();
        }
        reply_with(
            "stored body",
            &[
                ("Cache-Control", "max-age=1, stale-if-error=600"),
                ("ETag", "\"v1\""),
            ],
        )
    })
}

/// Stores `/popular` of a `stale_origin` and waits until it is stale.
fn stored_then_stale(origin: &Origin, proxy: &Proxy) -> String {
    let url = origin.url("/popular");
    assert_eq!(get(proxy.addr, &url, &[]).text(), "stored body");
    thread::sleep(Duration::from_millis(2100));
    url
}

/// Stores `/popular`, then sends `n` requests for it at once while its
/// revalidation is held; opens `gate` once the others had time to come.
fn revalidated_at_once(gate: &Gate, origin: &Origin, proxy: &Proxy, n: usize) -> Vec<CurlReply> {
    let url = stored_then_stale(origin, proxy);
    let clients = concurrent_gets(proxy.addr, &url, n);
    assert!(wait_until(LIMIT, || origin.requests().len() == 2));
    // Those that come after the gate opens find the outcome stored; this
    // only gives the others time to wait on the revalidation first.
    thread::sleep(Duration::from_millis(300));
    gate.open();
    clients
        .into_iter()
        .map(|client| client.join().expect("client"))
        .collect()
}

#[test]
fn concurrent_requests_for_a_stale_entry_wait_on_one_revalidation() {
    let gate = Gate::new();
    let not_modified = Reply::Full {
        status: 304,
        headers: vec![
            ("ETag".into(), "\"v1\"".into()),
            ("Cache-Control".into(), "max-age=600".into()),
        ],
        body: Vec::new(),
    };
    let origin = stale_origin(&gate, not_modified);
    let proxy = roomy_proxy();
    for reply in revalidated_at_once(&gate, &origin, &proxy, 10) {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "stored body", "{reply:?}");
    }
    assert_eq!(origin.requests().len(), 2, "{:?}", origin.requests());
}

#[test]
fn followers_of_a_revalidation_read_the_new_body_it_brings() {
    let gate = Gate::new();
    let changed = Reply::Full {
        status: 200,
        headers: vec![
            ("ETag".into(), "\"v2\"".into()),
            ("Cache-Control".into(), "max-age=600".into()),
        ],
        body: b"new body".to_vec(),
    };
    let origin = stale_origin(&gate, changed);
    let proxy = roomy_proxy();
    let replies = revalidated_at_once(&gate, &origin, &proxy, 10);
    for reply in &replies {
        assert_eq!(reply.text(), "new body", "{reply:?}");
    }
    assert!(
        replies
            .iter()
            .any(|reply| cache_status(reply).contains("; collapsed")),
        "{replies:?}"
    );
    assert_eq!(origin.requests().len(), 2, "{:?}", origin.requests());
}

#[test]
fn followers_of_a_failed_revalidation_get_the_stale_entry_without_asking_again() {
    // The origin fails the revalidation: stale-if-error answers the one
    // that asked and every request that waited on it, and the failing
    // origin is not asked again.
    let gate = Gate::new();
    let origin = stale_origin(&gate, Reply::status(503));
    let proxy = roomy_proxy();
    for reply in revalidated_at_once(&gate, &origin, &proxy, 5) {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), "stored body", "{reply:?}");
        assert!(
            cache_status(&reply).ends_with("detail=stale-if-error"),
            "{reply:?}"
        );
    }
    assert_eq!(origin.requests().len(), 2, "{:?}", origin.requests());
}

#[test]
fn a_request_with_directives_revalidates_alone() {
    // A reload (`max-age=0`) may not be given a stale entry: it must not
    // lead plain GETs, whose stale-if-error would then be lost, nor wait
    // on them.
    let gate = Gate::new();
    let origin = stale_origin(&gate, Reply::status(503));
    let proxy = roomy_proxy();
    let url = stored_then_stale(&origin, &proxy);
    let reload = {
        let url = url.clone();
        let addr = proxy.addr;
        thread::spawn(move || get(addr, &url, &["-H", "Cache-Control: max-age=0"]))
    };
    assert!(wait_until(LIMIT, || origin.requests().len() == 2));
    let plain = concurrent_gets(proxy.addr, &url, 4);
    assert!(wait_until(LIMIT, || origin.requests().len() == 3));
    thread::sleep(Duration::from_millis(300));
    gate.open();
    let reload = reload.join().expect("reload");
    assert_eq!(reload.status, 503, "{reload:?}");
    for reply in plain {
        let reply = reply.join().expect("client");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            cache_status(&reply).ends_with("detail=stale-if-error"),
            "{reply:?}"
        );
    }
    assert_eq!(origin.requests().len(), 3, "{:?}", origin.requests());
}

#[test]
fn requests_for_each_variant_wait_on_one_revalidation_of_it() {
    // `/popular` varies on Accept-Encoding. Once both stored variants are
    // stale, each variant's requests make one revalidation, and neither
    // variant's waits on the other's: both reach the origin while held.
    let gate = Gate::new();
    let origin = {
        let gate = gate.clone();
        Origin::start(move |request| {
            let coding = request
                .header("accept-encoding")
                .unwrap_or("none")
                .to_string();
            let etag = format!("\"v1-{coding}\"");
            let headers = [
                ("Cache-Control", "max-age=1"),
                ("Vary", "Accept-Encoding"),
                ("ETag", etag.as_str()),
            ];
            if request.header("if-none-match") == Some(etag.as_str()) {
                gate.wait(LIMIT);
                // Fresh for long enough that every follower finds it so.
                return Reply::Full {
                    status: 304,
                    headers: vec![
                        ("Cache-Control".into(), "max-age=600".into()),
                        ("ETag".into(), etag.clone()),
                    ],
                    body: Vec::new(),
                };
            }
            reply_with(&format!("body for {coding}"), &headers)
        })
    };
    let proxy = roomy_proxy();
    let url = origin.url("/popular");
    let codings = ["gzip", "br"];
    for coding in codings {
        let header = format!("Accept-Encoding: {coding}");
        assert_eq!(
            get(proxy.addr, &url, &["-H", &header]).text(),
            format!("body for {coding}")
        );
    }
    thread::sleep(Duration::from_millis(2100));
    let clients: Vec<(&str, JoinHandle<CurlReply>)> = codings
        .iter()
        .flat_map(|coding| (0..4).map(move |_| *coding))
        .map(|coding| {
            let (url, addr) = (url.clone(), proxy.addr);
            let header = format!("Accept-Encoding: {coding}");
            (
                coding,
                thread::spawn(move || get(addr, &url, &["-H", &header])),
            )
        })
        .collect();
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 4),
        "each variant's revalidation reaches the origin: {:?}",
        origin.requests()
    );
    thread::sleep(Duration::from_millis(300));
    gate.open();
    let mut statuses = Vec::new();
    for (coding, client) in clients {
        let reply = client.join().expect("client");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.text(), format!("body for {coding}"), "{reply:?}");
        statuses.push(format!("{coding}: {}", cache_status(&reply)));
    }
    let requests = origin.requests();
    assert_eq!(
        requests.len(),
        4,
        "one revalidation per variant: {statuses:#?}"
    );
    let mut revalidated: Vec<_> = requests[2..]
        .iter()
        .map(|r| r.header("accept-encoding").unwrap_or("none").to_string())
        .collect();
    revalidated.sort();
    assert_eq!(revalidated, ["br", "gzip"]);
    assert!(
        metric_reaches(proxy.addr, "fetchproxy_cache_fills_in_progress", |n| n
            == 0.0),
        "each revalidation left the collapse table"
    );
}
