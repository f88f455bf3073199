//! One connection's life on a worker thread: the keep-alive loop, routing
//! (the proxy's own endpoints, forwarding, CONNECT), the single point where
//! an error becomes a response, and the access-log line. Owns no listener.
//!
//! A request goes: head (parsed by the acceptor) → loop check → route →
//! `forward::forward` or `tunnel::open` or an own endpoint → answer → log →
//! next pipelined request, or back to the acceptor to wait.

use std::io::{Read, Write};

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::ServeConfig;
use crate::error::ProxyError;
use crate::http::headers;
use crate::http::request::{self, BodyFraming, HeadLimits, Parsed, RequestHead, TargetForm};
use crate::http::response;
use crate::logging::{self, AccessRecord};
use crate::server::acceptor::{Handback, Job};
use crate::server::conn::ClientConn;
use crate::server::forward;
use crate::server::request_id::RequestIds;
use crate::server::tunnel::{self, Relay};
use crate::shutdown::Shutdown;

/// Bytes of the buffer each worker copies bodies through.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// What every worker shares.
pub struct Context {
    pub config: Arc<ServeConfig>,
    pub agent: ureq::Agent,
    pub shutdown: Arc<Shutdown>,
    pub handback: Handback,
    pub ids: Arc<RequestIds>,
    pub relay: Relay,
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
        let peer = job.conn.peer;
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| serve_connection(job, &ctx, &mut buf)));
        if outcome.is_err() {
            // The connection was dropped while unwinding, which closes it.
            log::error!("worker panicked while serving {peer}; connection closed");
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
            log_request(&conn, "-", "-", &served, started, &request_id);
            return After::Gone;
        }
    };
    let request_id = ctx.ids.for_request(&head);
    if head.target_form() == TargetForm::Authority {
        return open_tunnel(conn, &head, &request_id, ctx, started);
    }
    let served = match route(&mut conn, &head, &request_id, ctx, buf) {
        Ok(served) => served,
        Err(err) => {
            // An unread request body leaves the stream mid-message: close.
            let has_body = !matches!(head.body_framing(), Ok(BodyFraming::Empty));
            let close = err.closes_connection() || has_body || !head.keep_alive();
            answer_error(&mut conn, &err, &request_id, head.method == "HEAD", close)
        }
    };
    log_request(
        &conn,
        &head.method,
        &head.target,
        &served,
        started,
        &request_id,
    );
    if served.reusable && head.keep_alive() && !ctx.shutdown.is_draining() {
        conn.consume_pending(0);
        After::KeepAlive(conn)
    } else {
        After::Gone
    }
}

/// Picks the handler for a request that is not CONNECT.
fn route(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
    buf: &mut [u8],
) -> Result<Served, ProxyError> {
    // RFC 9110 §7.6.3: a request that already passed through us is a loop.
    if headers::is_loop(head.header_values("via"), &ctx.config.via_name) {
        return Err(ProxyError::LoopDetected);
    }
    match head.target_form() {
        TargetForm::Absolute => forward::forward(conn, head, request_id, ctx, buf),
        TargetForm::Origin => own_endpoint(conn, head, request_id, ctx),
        TargetForm::Asterisk | TargetForm::Authority => Err(ProxyError::BadRequest(format!(
            "{} {} is not a request a proxy can forward",
            head.method, head.target
        ))),
    }
}

/// The proxy's own endpoints, reached with origin-form targets.
fn own_endpoint(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
) -> Result<Served, ProxyError> {
    let path = head.target.split('?').next().unwrap_or_default();
    match (head.method.as_str(), path) {
        ("GET" | "HEAD", "/healthz") => {
            let body: &[u8] = if ctx.shutdown.is_draining() {
                b"draining\n"
            } else {
                b"ok\n"
            };
            let close = !head.keep_alive();
            let mut out = Vec::with_capacity(256);
            response::write_status_line(&mut out, 200, "OK");
            response::write_header(&mut out, "Content-Type", b"text/plain; charset=utf-8");
            response::write_header(
                &mut out,
                "Content-Length",
                body.len().to_string().as_bytes(),
            );
            response::write_header(&mut out, "Cache-Control", b"no-store");
            response::write_header(&mut out, "X-Request-Id", request_id.as_bytes());
            if close {
                response::write_header(&mut out, "Connection", b"close");
            }
            out.extend_from_slice(b"\r\n");
            let head_only = head.method == "HEAD";
            if !head_only {
                out.extend_from_slice(body);
            }
            let sent = conn.stream.write_all(&out).is_ok();
            let bytes = if head_only { 0 } else { body.len() as u64 };
            Ok(Served {
                status: 200,
                bytes,
                error: None,
                reusable: sent && !close,
            })
        }
        _ => Err(ProxyError::NotProxyEndpoint(head.target.clone())),
    }
}

/// CONNECT: check and connect, answer 200, hand both sockets to the relay.
fn open_tunnel(
    mut conn: ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
    started: Instant,
) -> After {
    let upstream = if headers::is_loop(head.header_values("via"), &ctx.config.via_name) {
        Err(ProxyError::LoopDetected)
    } else {
        ctx.relay.admit().and_then(|slot| {
            tunnel::connect(&head.target, &ctx.config).map(|stream| (stream, slot))
        })
    };
    match upstream {
        Ok((upstream, slot)) => {
            let mut out = Vec::with_capacity(128);
            response::write_status_line(&mut out, 200, "Connection Established");
            response::write_header(&mut out, "X-Request-Id", request_id.as_bytes());
            out.extend_from_slice(b"\r\n");
            if conn.stream.write_all(&out).is_ok() {
                ctx.relay
                    .start(conn, upstream, slot, &head.target, request_id, started);
            }
        }
        Err(err) => {
            let served = answer_error(&mut conn, &err, request_id, false, true);
            log_request(
                &conn,
                &head.method,
                &head.target,
                &served,
                started,
                request_id,
            );
        }
    }
    After::Gone
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
    let sent = conn.stream.write_all(&answer).is_ok();
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
) {
    logging::access(&AccessRecord {
        client: conn.peer,
        method,
        url,
        status: served.status,
        bytes: served.bytes,
        duration: started.elapsed(),
        request_id,
        error: served.error,
    });
}
