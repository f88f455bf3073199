//! One connection's life on a worker thread: the keep-alive loop, routing
//! (the proxy's own endpoints, forwarding, CONNECT), the single point where
//! an error becomes a response, and the access-log line. Owns no listener.
//!
//! A request goes: head (parsed by the acceptor) → rules of the moment
//! (client, credentials) → loop check → route → `forward::forward` or
//! `tunnel::open` or an own endpoint → answer → log → next pipelined
//! request, or back to the acceptor to wait.
//!
//! A panic while a request is handled is caught here: it is logged and
//! counted, the client gets 500 if no byte of a response went out yet, and
//! the worker goes on to its next job.

use std::any::Any;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::access;
use crate::config::ServeConfig;
use crate::error::ProxyError;
use crate::http::headers;
use crate::http::request::{self, BodyFraming, HeadLimits, Parsed, RequestHead, TargetForm};
use crate::http::response;
use crate::logging::{self, AccessRecord};
use crate::metrics::Metrics;
use crate::rules::{Rules, SharedRules};
use crate::server::acceptor::Job;
use crate::server::conn::{ClientConn, ConnLimits};
use crate::server::endpoints;
use crate::server::forward;
use crate::server::handback::Handback;
use crate::server::request_id::RequestIds;
use crate::server::tunnel::{self, Relay, TunnelSlot};
use crate::shutdown::Shutdown;

/// Bytes of the buffer each worker copies bodies through.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// What every worker shares.
pub struct Context {
    pub config: Arc<ServeConfig>,
    /// The access rules in force; read once per request, replaced on reload.
    pub rules: SharedRules,
    pub agent: ureq::Agent,
    pub shutdown: Arc<Shutdown>,
    pub handback: Handback,
    pub ids: Arc<RequestIds>,
    pub relay: Relay,
    pub metrics: Arc<Metrics>,
    /// Open-connection counts, for `/metrics`.
    pub limits: Arc<ConnLimits>,
    /// The workers' queue, for its length on `/metrics`.
    pub queue: Receiver<Job>,
}

/// How a request was answered, for the access log and the keep-alive decision.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// The Proxy-Status error type, when something failed.
    pub error: Option<&'static str>,
    /// Whether the connection can carry another request.
    pub reusable: bool,
}

/// What happens to the connection after a request.
enum After {
    /// Read or wait for the next request.
    KeepAlive(ClientConn),
    /// Handed to the tunnel relay, or closed.
    Gone,
}

/// The worker thread's body: serve jobs until the acceptor drops the sender
/// and the queue is empty. A panic stays inside one connection.
pub fn run(jobs: Receiver<Job>, ctx: Arc<Context>) {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES].into_boxed_slice();
    for job in jobs.iter() {
        let _busy = ctx.metrics.worker_busy();
        let peer = job.conn.peer;
        // Panics while a request is handled are answered in `serve_one`;
        // this catches the rest (handing over a connection, the access log).
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| serve_connection(job, &ctx, &mut buf)));
        if let Err(payload) = outcome {
            ctx.metrics.worker_panicked();
            // The connection was dropped while unwinding, which closes it.
            log::error!(
                "worker panicked while serving {peer}: {}; connection closed",
                panic_message(payload.as_ref())
            );
        }
    }
}

/// Serves one connection's requests until it closes, is handed to the
/// relay, or has to wait for more input (then it goes back to the acceptor).
fn serve_connection(job: Job, ctx: &Context, buf: &mut [u8]) {
    let limits = HeadLimits {
        max_header_bytes: ctx.config.max_header_bytes,
        max_url_bytes: ctx.config.max_url_bytes,
    };
    let mut next = Some((job.conn, job.head));
    while let Some((conn, head)) = next.take() {
        let After::KeepAlive(mut conn) = serve_one(conn, head, ctx, buf) else {
            return;
        };
        if conn.pending().is_empty() {
            // The usual case: nothing more sent yet; the acceptor waits for it.
            ctx.handback.give_back(conn);
            return;
        }
        // Pipelined requests are answered in order, here, before waiting.
        match request::parse_head(conn.pending(), &limits) {
            Ok(Parsed::Complete { head, head_len }) => {
                conn.consume_pending(head_len);
                next = Some((conn, Ok(head)));
            }
            Ok(Parsed::Partial) => ctx.handback.give_back(conn),
            Err(err) => next = Some((conn, Err(err))),
        }
    }
}

/// Serves one request: route, answer, log.
fn serve_one(
    mut conn: ClientConn,
    head: Result<RequestHead, ProxyError>,
    ctx: &Context,
    buf: &mut [u8],
) -> After {
    let started = Instant::now();
    let head = match head {
        Ok(head) => head,
        Err(err) => {
            // We cannot tell where the next request would start: close.
            let request_id = ctx.ids.fresh();
            let served = answer_error(&mut conn, &err, &request_id, false, true);
            log_request(&conn, "-", "-", &served, started, &request_id, ctx);
            return After::Gone;
        }
    };
    let request_id = ctx.ids.for_request(&head);
    // The rules of the moment for the client, credential and CONNECT checks;
    // a reload meanwhile applies from the next request on.
    let rules = ctx.rules.current();
    if head.target_form() == TargetForm::Authority {
        return open_tunnel(conn, &head, &request_id, ctx, &rules, started);
    }
    let routed = catch_panic(&mut conn, &request_id, &ctx.metrics, |conn| {
        admit(conn, &head, &rules)?;
        route(conn, &head, &request_id, ctx, buf)
    });
    let served = match routed {
        Ok(Ok(served)) => served,
        Ok(Err(err)) => {
            // An unread request body leaves the stream mid-message: close.
            let has_body = !matches!(head.body_framing(), Ok(BodyFraming::Empty));
            let close = err.closes_connection() || has_body || !head.keep_alive();
            answer_error(&mut conn, &err, &request_id, head.method == "HEAD", close)
        }
        Err(panicked) => panicked,
    };
    log_request(
        &conn,
        &head.method,
        &head.target,
        &served,
        started,
        &request_id,
        ctx,
    );
    if served.reusable && head.keep_alive() && !ctx.shutdown.is_draining() {
        conn.consume_pending(0);
        After::KeepAlive(conn)
    } else {
        After::Gone
    }
}

/// Applies the rules that hold for every request under the rules of the
/// moment: the client range (a reload may have dropped a connected client's
/// range) and, for proxied requests, the credentials. The proxy's own
/// endpoints (origin-form, such as `/healthz`) need none.
fn admit(conn: &ClientConn, head: &RequestHead, rules: &Rules) -> Result<(), ProxyError> {
    let ip = conn.peer.ip().to_canonical();
    if !access::allows_client(ip, &rules.allow_clients) {
        return Err(ProxyError::ClientDenied { addr: ip });
    }
    if head.target_form() != TargetForm::Origin {
        rules
            .users
            .check(head.header_values("proxy-authorization"))?;
    }
    Ok(())
}

/// Picks the handler for a request that is not CONNECT.
fn route(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
    buf: &mut [u8],
) -> Result<Served, ProxyError> {
    // Bad framing is refused whoever answers: the next request's start is unknown.
    head.body_framing()?;
    // RFC 9110 §7.6.3: a request that already passed through us is a loop.
    if headers::is_loop(head.header_values("via"), &ctx.config.via_name) {
        return Err(ProxyError::LoopDetected);
    }
    match head.target_form() {
        TargetForm::Absolute => forward::forward(conn, head, request_id, ctx, buf),
        TargetForm::Origin => endpoints::answer(conn, head, request_id, ctx),
        TargetForm::Asterisk | TargetForm::Authority => Err(ProxyError::BadRequest(format!(
            "{} {} is not a request a proxy can forward",
            head.method, head.target
        ))),
    }
}

/// CONNECT: check and connect, answer 200, hand both sockets to the relay.
fn open_tunnel(
    mut conn: ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
    rules: &Rules,
    started: Instant,
) -> After {
    let upstream = catch_panic(&mut conn, request_id, &ctx.metrics, |conn| {
        connect_tunnel(conn, head, ctx, rules)
    });
    let served = match upstream {
        Err(panicked) => panicked,
        Ok(Ok((upstream, slot))) => {
            let mut out = Vec::with_capacity(128);
            response::write_status_line(&mut out, 200, "Connection Established");
            response::write_header(&mut out, "X-Request-Id", request_id.as_bytes());
            out.extend_from_slice(b"\r\n");
            if conn.write_all(&out).is_ok() {
                // The relay writes the tunnel's log line when it ends.
                ctx.relay
                    .start(conn, upstream, slot, &head.target, request_id, started);
                return After::Gone;
            }
            // The client left before its tunnel began.
            Served {
                status: 200,
                bytes: 0,
                error: None,
                reusable: false,
            }
        }
        Ok(Err(err)) => answer_error(&mut conn, &err, request_id, false, true),
    };
    log_request(
        &conn,
        &head.method,
        &head.target,
        &served,
        started,
        request_id,
        ctx,
    );
    After::Gone
}

/// The checks before a tunnel (client, credentials, loop, `max_tunnels`,
/// port and destination rules) and the connection to its target.
fn connect_tunnel(
    conn: &ClientConn,
    head: &RequestHead,
    ctx: &Context,
    rules: &Rules,
) -> Result<(TcpStream, TunnelSlot), ProxyError> {
    admit(conn, head, rules)?;
    if headers::is_loop(head.header_values("via"), &ctx.config.via_name) {
        return Err(ProxyError::LoopDetected);
    }
    let slot = ctx.relay.admit()?;
    let stream = tunnel::connect(&head.target, &ctx.config, rules)?;
    Ok((stream, slot))
}

/// Runs `handle` on `conn`, catching a panic inside it: the panic is logged
/// and counted, and while no byte of a response has gone out the
/// client is answered 500 `proxy_internal_error` (the connection then
/// closes: we cannot tell what of the request was read). The worker goes on
/// to its next job either way. `Err` holds what the access log records.
fn catch_panic<T>(
    conn: &mut ClientConn,
    request_id: &str,
    metrics: &Metrics,
    handle: impl FnOnce(&mut ClientConn) -> T,
) -> Result<T, Served> {
    let sent_before = conn.bytes_sent();
    let payload = match panic::catch_unwind(AssertUnwindSafe(|| handle(&mut *conn))) {
        Ok(value) => return Ok(value),
        Err(payload) => payload,
    };
    metrics.worker_panicked();
    let message = panic_message(payload.as_ref());
    let err = ProxyError::Internal("the proxy failed while handling this request".into());
    if conn.bytes_sent() == sent_before {
        log::error!(
            "worker panicked while serving {} {request_id}: {message}; answered 500",
            conn.peer
        );
        return Err(answer_error(conn, &err, request_id, false, true));
    }
    log::error!(
        "worker panicked while serving {} {request_id}: {message}; response already begun, connection closed",
        conn.peer
    );
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    Err(Served {
        status: err.status(),
        bytes: 0,
        error: Some(err.proxy_status()),
        reusable: false,
    })
}

/// The text a panic was raised with, made safe for a log line.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    logging::escape(text.as_bytes())
}

/// The one place where an error becomes a response to the client.
fn answer_error(
    conn: &mut ClientConn,
    err: &ProxyError,
    request_id: &str,
    head_only: bool,
    close: bool,
) -> Served {
    match err.status() {
        500.. => log::warn!("{} {}: {err}", conn.peer, request_id),
        _ => log::debug!("{} {}: {err}", conn.peer, request_id),
    }
    let answer = response::error_response(err, request_id, close, head_only);
    let sent = conn.write_all(&answer).is_ok();
    if sent && close {
        linger(conn);
    }
    Served {
        status: err.status(),
        bytes: 0,
        error: Some(err.proxy_status()),
        reusable: sent && !close,
    }
}

/// Lingering close: after the answer, stop sending and read (and drop) what
/// the client is still sending for a short while, so that closing with
/// unread bytes does not reset the connection before the client has read
/// the answer (as Apache httpd does).
fn linger(conn: &mut ClientConn) {
    const LINGER_TIME: Duration = Duration::from_millis(500);
    const LINGER_BYTES: usize = 256 * 1024;
    if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = conn.pending().len();
    let mut sink = [0u8; 8192];
    while drained < LINGER_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        if conn
            .stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            break;
        }
        match conn.stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn log_request(
    conn: &ClientConn,
    method: &str,
    url: &str,
    served: &Served,
    started: Instant,
    request_id: &str,
    ctx: &Context,
) {
    super::finished(
        &ctx.metrics,
        &AccessRecord {
            client: conn.peer,
            method,
            url,
            status: served.status,
            bytes: served.bytes,
            duration: started.elapsed(),
            request_id,
            error: served.error,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

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
}
