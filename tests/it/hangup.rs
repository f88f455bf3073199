//! A client that hangs up before the origin answers: the proxy closes the
//! upstream connection at once and logs the request as `client_aborted`,
//! rather than holding a worker until the origin answers. A client that
//! half-closes right after its request (`nc -N`), pipelines, or sent more
//! before half-closing is still answered.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::support::raw::read_one;
use crate::support::servers::Silent;
use crate::support::{Gate, Origin, ProxyProcess, Reply, curl, gated_origin, wait_until};

const LIMIT: Duration = Duration::from_secs(10);

/// `GET url` in absolute-form, HTTP/`version`.
fn get(url: &str, version: &str) -> Vec<u8> {
    format!("GET {url} HTTP/{version}\r\nHost: x\r\n\r\n").into_bytes()
}
/// How long after its request a client's end of input is taken for a
/// half-close (the proxy's `hangup::GRACE`).
const GRACE: Duration = Duration::from_millis(500);

/// A client that sends its request and then ends its side (`nc -N`,
/// HTTP/1.0 tools), HTTP/1.1 and 1.0, still gets its answer, however long
/// the origin takes. The end comes once the request is upstream, where the
/// proxy watches for clients that leave.
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"late answer");
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    for (i, version) in ["1.1", "1.0"].into_iter().enumerate() {
        let url = origin.url(&format!("/half-closed-{version}"));
        let mut client = TcpStream::connect(proxy.addr).expect("connect");
        client.write_all(&get(&url, version)).expect("send");
        assert!(wait_until(LIMIT, || origin.requests().len() == i + 1));
        client.shutdown(Shutdown::Write).expect("half-close");
        std::thread::sleep(GRACE + Duration::from_millis(200));
        if version == "1.0" {
            gate.open();
        } else {
            let opener = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                opener.open();
            });
        }
        let answer = read_one(&mut client, false, LIMIT).expect("an answer");
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "late answer"),
            "{version}"
        );
    }
}

/// Two requests in one write, then the end of the client's side: both are
/// answered.
#[test]
fn pipelined_requests_then_a_half_close_are_all_answered() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"answer");
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let (first, second) = (origin.url("/one"), origin.url("/two"));
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    let both = [get(&first, "1.1"), get(&second, "1.1")].concat();
    client.write_all(&both).expect("send, in one write");
    assert!(wait_until(LIMIT, || origin.requests().len() == 1));
    std::thread::sleep(GRACE + Duration::from_millis(200));
    client.shutdown(Shutdown::Write).expect("half-close");
    std::thread::sleep(Duration::from_millis(200));
    gate.open();
    for path in ["/one", "/two"] {
        let answer = read_one(&mut client, false, LIMIT).expect("an answer");
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "answer"),
            "{path}"
        );
    }
}

#[test]
fn a_client_that_gives_up_before_the_answer_frees_the_upstream_and_is_logged() {
    let origin = Silent::start();
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8", "--workers", "2"]);
    let url = format!("http://{}/slow", origin.addr);
    // curl gives up after a second; the origin would keep the proxy's
    // worker for `upstream_timeout` (60 s).
    let reply = curl(proxy.addr, &url, &["--max-time", "1"]);
    assert_eq!(reply.exit, 28, "curl timed out: {reply:?}");
    assert!(
        wait_until(LIMIT, || origin.dropped() == 1),
        "the proxy closed its upstream connection when its client left \
         (requests {}, dropped {})",
        origin.requests(),
        origin.dropped()
    );
    let line = proxy
        .wait_for_log(&format!("GET {url} 499"), LIMIT)
        .unwrap_or_else(|| panic!("no 499 line:\n{}", proxy.log().join("\n")));
    assert!(line.contains("error=client_aborted"), "{line}");
    assert_eq!(origin.requests(), 1, "not sent again");
}

/// A client that resets its connection in the middle of its upload left:
/// its line says 499 `client_aborted`, not a malformed request. (One that
/// only ends its side may still be reading: it is answered 400.)
#[test]
fn a_client_that_resets_mid_upload_is_logged_as_gone() {
    let origin = Silent::start();
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let url = format!("http://{}/upload", origin.addr);
    // The head and ten bytes of a body of 1,000, once the origin has them.
    let start_upload = |nth: usize| {
        let mut client = TcpStream::connect(proxy.addr).expect("connect");
        let head = format!("POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
        client
            .write_all(format!("{head}ten bytes.").as_bytes())
            .expect("send");
        assert!(
            wait_until(LIMIT, || origin.requests() == nth),
            "the request never reached the origin"
        );
        client
    };
    let client = start_upload(1);
    // Closed with a zero linger: the kernel sends a reset.
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).expect("linger");
    drop(client);
    let line = proxy
        .wait_for_log(&format!("POST {url} 499"), LIMIT)
        .unwrap_or_else(|| panic!("no 499 line:\n{}", proxy.log().join("\n")));
    assert!(line.contains("error=client_aborted"), "{line}");

    // Its side ended with the body short: still reading, it gets the 400.
    let mut client = start_upload(2);
    client.shutdown(Shutdown::Write).expect("half-close");
    let answer = read_one(&mut client, false, LIMIT).expect("an answer");
    assert_eq!(answer.status, 400, "{}", answer.head);
}

#[test]
fn a_client_gone_while_its_request_was_queued_is_not_sent_upstream() {
    let origin = Silent::start();
    // One worker, kept busy by a first client, so the second waits queued.
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8", "--workers", "1"]);
    let first = format!("http://{}/first", origin.addr);
    let second = format!("http://{}/second", origin.addr);
    let mut holder = TcpStream::connect(proxy.addr).expect("connect");
    holder.write_all(&get(&first, "1.1")).expect("send");
    assert!(wait_until(LIMIT, || origin.requests() == 1));
    let mut queued = TcpStream::connect(proxy.addr).expect("connect");
    queued.write_all(&get(&second, "1.1")).expect("send");
    // Past the grace in which an end of input is taken for a half-close.
    std::thread::sleep(GRACE + Duration::from_millis(200));
    drop(queued);
    // The first client leaves too, which frees the worker for the queue.
    std::thread::sleep(Duration::from_millis(200));
    drop(holder);
    let line = proxy
        .wait_for_log(&format!("GET {second} 499"), LIMIT)
        .unwrap_or_else(|| panic!("no 499 line:\n{}", proxy.log().join("\n")));
    assert!(line.contains("error=client_aborted"), "{line}");
    assert_eq!(origin.requests(), 1, "only the first went upstream");
}

#[test]
fn a_pipelined_request_then_a_half_close_still_gets_both_answers() {
    let gate = Gate::new();
    let origin = gated_origin(&gate, b"slow answer");
    let fast = Origin::start(|_| Reply::ok("text/plain", b"fast answer".to_vec()));
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let (first, second) = (origin.url("/first"), fast.url("/second"));
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client.write_all(&get(&first, "1.1")).expect("send");
    assert!(wait_until(LIMIT, || origin.requests().len() == 1));
    // While the first waits on its origin, past the grace: the next
    // request, and the end of what this client sends; it still reads.
    std::thread::sleep(GRACE + Duration::from_millis(200));
    client.write_all(&get(&second, "1.1")).expect("send");
    client.shutdown(Shutdown::Write).expect("half-close");
    // The end cut the first call; with a request before it, the client is
    // still there, and the first request is sent again.
    assert!(
        wait_until(LIMIT, || origin.requests().len() == 2),
        "sent again: {:?}",
        origin.requests()
    );
    gate.open();
    let one = read_one(&mut client, false, LIMIT).expect("the first answer");
    assert_eq!(
        (one.status, one.text().as_str()),
        (200, "slow answer"),
        "{}",
        one.head
    );
    let two = read_one(&mut client, false, LIMIT).expect("the second answer");
    assert_eq!(
        (two.status, two.text().as_str()),
        (200, "fast answer"),
        "{}",
        two.head
    );
}

#[test]
fn a_fill_that_others_wait_on_goes_on_when_its_client_hangs_up() {
    let gate = Gate::new();
    let opener = gate.clone();
    let origin = Origin::start(move |_| {
        opener.wait(Duration::from_secs(60));
        Reply::ok("text/plain", b"shared answer".to_vec())
            .with_header("Cache-Control", "max-age=60")
    });
    let proxy = ProxyProcess::start(&["--allow-dest", "127.0.0.0/8"]);
    let url = origin.url("/shared");
    let request = get(&url, "1.1");
    let mut leader = TcpStream::connect(proxy.addr).expect("connect");
    leader.write_all(&request).expect("send");
    assert!(wait_until(LIMIT, || origin.requests().len() == 1));
    let mut follower = TcpStream::connect(proxy.addr).expect("connect");
    follower.write_all(&request).expect("send");
    std::thread::sleep(GRACE + Duration::from_millis(200));
    drop(leader);
    std::thread::sleep(Duration::from_millis(300));
    gate.open();
    let answer = read_one(&mut follower, false, LIMIT).expect("the follower's answer");
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "shared answer"),
        "{}",
        answer.head
    );
    assert_eq!(
        origin.requests().len(),
        1,
        "the leader's fetch went on for the follower"
    );
}
