//! Unit tests of the worker's panic handling, on real loopback sockets.

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use super::*;
use crate::server::limits::ConnLimits;

/// A proxy-side connection and the client's end of it.
fn connection() -> (ClientConn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).expect("connect");
    let (stream, peer) = listener.accept().expect("accept");
    let slot = ConnLimits::new(4, 4).admit(peer.ip()).expect("slot");
    (ClientConn::new(stream, peer, addr, slot), client)
}

fn received(client: &mut TcpStream) -> String {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut text = Vec::new();
    let _ = client.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn a_panic_before_the_response_is_answered_500_and_counted() {
    let (mut conn, mut client) = connection();
    let metrics = Metrics::new();
    let outcome = catch_panic(&mut conn, "req-1", &metrics, |_| -> u16 {
        panic!("test panic before any response")
    });
    let served = outcome.expect_err("the panic is caught");
    assert_eq!((served.status, served.reusable), (500, false));
    assert_eq!(served.error, Some("proxy_internal_error"));
    assert!(served.bytes > 0, "the 500's body counts as sent");
    assert_eq!(metrics.worker_panics(), 1);
    drop(conn);
    let text = received(&mut client);
    assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
    assert!(text.contains("error=proxy_internal_error"), "{text}");
    assert!(text.contains("X-Request-Id: req-1"), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(
        !text.contains("test panic"),
        "the panic stays in the log: {text}"
    );
}

#[test]
fn a_panic_after_the_response_began_adds_nothing_to_it() {
    let (mut conn, mut client) = connection();
    let outcome = catch_panic(&mut conn, "req-2", &Metrics::new(), |conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
        panic!("test panic mid-body")
    });
    let served: Served = match outcome {
        Err(served) => served,
        Ok(()) => unreachable!("the closure always panics"),
    };
    assert!(!served.reusable);
    drop(conn);
    let text = received(&mut client);
    assert_eq!(text, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
}

#[test]
fn without_a_panic_the_value_passes_through() {
    let (mut conn, _client) = connection();
    let outcome = catch_panic(&mut conn, "req-3", &Metrics::new(), |_| 7);
    assert!(matches!(outcome, Ok(7)));
}

#[test]
fn panic_messages_are_escaped_for_the_log() {
    let payload: Box<dyn Any + Send> = Box::new(String::from("bad\nline"));
    assert_eq!(panic_message(payload.as_ref()), "bad\\nline");
    let payload: Box<dyn Any + Send> = Box::new(42);
    assert_eq!(panic_message(payload.as_ref()), "(no message)");
}
