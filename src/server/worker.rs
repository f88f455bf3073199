//! One connection's life on a worker thread. Start reading here.
//!
//! A request runs top to bottom through these phases, each one function:
//!
//! 1. `serve_one`: the request id and one snapshot of the rules;
//! 2. `admit`: client range, credentials, body framing, `Via` loop;
//! 3. `target::check_target`: the proxy's own answer, an origin, a PURGE,
//!    or a CONNECT target, under those rules;
//! 4. `endpoints::answer`; or for an origin `cached::serve`: the cache
//!    lookup, then a hit answered from the cache, or `forward::fetch`
//!    (upstream request, body, response head) and `relay::relay_response`
//!    streaming the body back (and into the cache when it may be stored);
//!    or `cached::purge`; or `tunnel::connect` and a hand-over to the
//!    relay thread;
//! 5. `finish`: an error becomes the answer, the access-log line and the
//!    counters, and the connection is kept, lingered or closed;
//! 6. `serve_connection`: the next pipelined request, or back to the
//!    acceptor to wait for one.
//!
//! A panic while a request is handled is caught here: it is logged and
//! counted, the client gets 500 if no byte of a response went out yet, and
//! the worker goes on to its next job.

use std::any::Any;
use std::io::Write;
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::access;
use crate::error::ProxyError;
use crate::http::headers;
use crate::http::request::{self, BodyFraming, HeadLimits, Parsed, RequestHead, TargetForm};
use crate::http::response::{Head, Persistence};
use crate::logging;
use crate::metrics::Metrics;
use crate::pump::TunnelEnd;
use crate::rules::Rules;
use crate::server::cached;
use crate::server::conn::ClientConn;
use crate::server::context::Context;
use crate::server::endpoints;
use crate::server::finish::{self, Request, Served};
use crate::server::idle::{self, Idler};
use crate::server::job::Job;
use crate::server::target::{self, Endpoint, Route};
use crate::server::tunnel::{self, TunnelSlot};

/// How long a worker waits on its connection for the client's next
/// request before handing it back, when other workers are asleep.
const NEXT_REQUEST_WAIT: Duration = Duration::from_millis(2);

/// Bytes of the buffer each worker keeps: what it reads a client's input
/// into, and copies bodies of up to this size through. Longer bodies move
/// through 64 KiB buffers lent while they move (`transport::lent`), so a
/// larger one here would only be resident in every worker for nothing.
pub const COPY_BUFFER_BYTES: usize = 16 * 1024;

/// How a request was handled, when nothing failed.
enum Handled {
    /// Answered; the connection may carry another request.
    Served(Served),
    /// A CONNECT target is connected: the client gets its 200 and both
    /// sockets go to the relay.
    Tunnel(TcpStream, TunnelSlot),
}

/// The worker thread's body: serve jobs until the acceptor drops the sender
/// and the queue is empty; between jobs, wait on the idle stack (`idle`).
/// A panic stays inside one connection.
pub fn run(jobs: Receiver<Job>, idler: Idler, ctx: Arc<Context>) {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES].into_boxed_slice();
    idler.enter();
    while let Some(job) = idler.next_job(&jobs) {
        let _busy = ctx.metrics.worker_busy();
        let peer = job.conn.peer;
        // Panics while a request is handled are answered in `serve_one`;
        // this catches the rest (handing over a connection, the access log).
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            serve_connection(job, &idler, &ctx, &mut buf)
        }));
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
/// Never inlined into `run`: its frame is kilobytes, and every worker of a
/// pool of thousands would touch those pages of its stack at start, idle
/// or not.
#[inline(never)]
fn serve_connection(job: Job, idler: &Idler, ctx: &Context, buf: &mut [u8]) {
    let limits = HeadLimits {
        max_header_bytes: ctx.config.max_header_bytes,
        max_url_bytes: ctx.config.max_url_bytes,
    };
    let mut next = Some((job.conn, job.head));
    // The first request's time counts from when its head was in, queue
    // included; the next ones', read here, from now.
    let mut received = Some(job.queued_at);
    while let Some((conn, head)) = next.take() {
        let started = received.take().unwrap_or_else(Instant::now);
        let Some(mut conn) = serve_one(conn, head, started, ctx, buf) else {
            return;
        };
        // A request already here was sent before its client had the answer
        // to the last one: pipelined.
        let pipelined = !conn.pending().is_empty();
        if !pipelined && !await_next_request(&mut conn, idler, ctx, buf) {
            // Nothing more sent yet. A client that reads one answer and sends
            // its next request at once (a crawler, a CI fetch, far origins
            // behind it) is served here, sparing the acceptor and a worker's
            // wake-up; otherwise the acceptor waits for it.
            let signals = conn.signals();
            ctx.handback
                .give_back(conn, signals.as_ref().map(|s| &s.input));
            return;
        }
        // Pipelined requests are answered in order, here, before waiting.
        match request::parse_head(conn.pending(), &limits) {
            Ok(Parsed::Complete { head, head_len }) => {
                conn.consume_pending(head_len);
                conn.set_next_head(pipelined);
                next = Some((conn, Ok(head)));
            }
            Ok(Parsed::Partial) => {
                let signals = conn.signals();
                ctx.handback
                    .give_back(conn, signals.as_ref().map(|s| &s.input));
            }
            Err(err) => next = Some((conn, Err(err))),
        }
    }
}

/// Waits a moment on `conn` for its next request, when no other worker is
/// running and no job is queued: a client that sends its next request as
/// soon as it has read an answer is then served without a trip through
/// the acceptor. Under load a worker rather goes for the next queued job;
/// waiting here costs a sleep and a wake-up per request, which with many
/// clients near by took a third of the throughput of cache hits.
fn await_next_request(conn: &mut ClientConn, idler: &Idler, ctx: &Context, buf: &mut [u8]) -> bool {
    if !(idler.alone() && ctx.queue.is_empty()) {
        return false;
    }
    let _waiting = idle::waiting();
    conn.await_input(NEXT_REQUEST_WAIT, buf)
}

/// Serves one request, whose head was complete at `started`, through its
/// phases; gives the connection back when it can carry another request.
fn serve_one(
    mut conn: ClientConn,
    head: Result<RequestHead, ProxyError>,
    started: Instant,
    ctx: &Context,
    buf: &mut [u8],
) -> Option<ClientConn> {
    conn.begin_request(started);
    conn.start_pace(
        ctx.config.client_min_rate,
        ctx.config.idle_timeout,
        ctx.config.upstream_timeout,
    );
    let head = match head {
        Ok(head) => head,
        Err(err) => {
            // We cannot tell where the next request would start: close.
            let request_id = ctx.ids.fresh();
            let served =
                finish::answer_error(&mut conn, &err, &request_id, None, Persistence::Close);
            let request = Request::unparsed(conn.peer, &request_id, started);
            finish::record(&ctx.metrics, &request, &served, None);
            close_lingering(conn, ctx);
            return None;
        }
    };
    let request_id = ctx.ids.for_request(&head);
    // One snapshot of the rules for the whole request; a reload meanwhile
    // applies from the next request on.
    let rules = ctx.rules.current();
    let mut request = Request::of(conn.peer, &head, &request_id, started);
    ctx.in_flight.begin(&request);
    let handled = catch_panic(&mut conn, &request_id, &ctx.metrics, |conn| {
        handle(
            conn,
            &head,
            &request_id,
            &rules,
            &mut request.user,
            ctx,
            buf,
        )
    });
    let served = match handled {
        Ok(Ok(Handled::Served(served))) => served,
        Ok(Ok(Handled::Tunnel(upstream, slot))) => {
            // The relay writes the tunnel's line.
            ctx.in_flight.end();
            open_tunnel(conn, upstream, slot, &request, ctx);
            return None;
        }
        Ok(Err(ProxyError::ClientGone(why))) => {
            // Nobody is left to answer: the access log says so.
            log::debug!("{} {request_id}: the client left: {why}", conn.peer);
            finish::client_left()
        }
        Ok(Err(err)) => {
            // What follows a CONNECT that did not become a tunnel was meant
            // for the tunnel (a client may send it at once, RFC 9110
            // §9.3.6): never read it as requests.
            let keep = if head.target_form() == TargetForm::Authority {
                Persistence::Close
            } else {
                finish::persistence(&head, !has_body(&head), ctx.shutdown.is_draining())
            };
            finish::answer_error(&mut conn, &err, &request_id, Some(&head), keep)
        }
        Err(panicked) => panicked,
    };
    if !ctx.in_flight.end() {
        // Logged as cut short: the process is on its way out.
        return None;
    }
    finish::record(&ctx.metrics, &request, &served, None);
    if served.reusable {
        // The answer said keep-alive: if draining began since, the
        // acceptor gives the connection one more request (answered with
        // `Connection: close`) or closes it at its deadline, as it does
        // every idle one. Closing it here could meet the client's next
        // request on the way.
        return Some(conn);
    }
    if conn.ends_with_reset() {
        // Dropped now: the reset is the message.
        return None;
    }
    // Closing a socket with unread input resets it, and a reset throws
    // away the end of the answer still on its way to the client. So the
    // connection is closed in stages (RFC 9112 §9.6), its input drained
    // for a moment, unless the client asked for the close and sent nothing
    // more: after an error or a request body, input may be left unread; a
    // client that expected to keep the connection (the proxy is draining)
    // may be sending its next request.
    if served.error.is_some() || has_body(&head) || head.keep_alive() || conn.has_unread_input() {
        close_lingering(conn, ctx);
    }
    None
}

/// Ends the answer now (a body that runs to the close ends with this FIN,
/// not at the acceptor's next turn), then leaves the connection to the
/// acceptor to drain its input for a moment before closing it.
fn close_lingering(conn: ClientConn, ctx: &Context) {
    conn.shut_write();
    ctx.handback.linger(conn);
}

/// Phases 2 to 4 for one request; `user` learns who the credentials named.
fn handle<'r>(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    rules: &'r Arc<Rules>,
    user: &mut Option<&'r str>,
    ctx: &Context,
    buf: &mut [u8],
) -> Result<Handled, ProxyError> {
    let route = target::check_target(head, rules, conn.local_addr());
    // The proxy's pages need no credentials, however they are asked for: a
    // health check with `http_proxy` set for every URL asks for them in
    // absolute-form. Any other request meets the credentials first, so an
    // unauthenticated client learns nothing of the rules beyond them.
    let own = matches!(route, Ok(Route::Own(Endpoint::Healthz | Endpoint::Metrics)));
    *user = admit(conn, head, rules, own, &ctx.config.via_name)?;
    match route? {
        Route::Own(endpoint) => Ok(Handled::Served(endpoints::answer(
            conn, head, endpoint, request_id, ctx,
        ))),
        Route::Forward(origin) => {
            cached::serve(conn, head, &origin, request_id, rules, ctx, buf).map(Handled::Served)
        }
        Route::Purge => cached::purge(conn, head, request_id, rules, ctx).map(Handled::Served),
        Route::Tunnel(target) => {
            let slot = ctx.relay.admit()?;
            let upstream = tunnel::connect(&target, ctx.config.connect_timeout, rules)?;
            Ok(Handled::Tunnel(upstream, slot))
        }
    }
}

/// The rules every request meets under the rules of the moment: the client
/// range (a reload may have dropped a connected client's range), the
/// credentials of proxied requests (not of the proxy's `own` pages, nor of
/// any request in origin-form), framing the proxy can trust whoever
/// answers, and no `Via` loop (RFC 9110 §7.6.3). Gives the user the
/// credentials named, if any.
fn admit<'r>(
    conn: &ClientConn,
    head: &RequestHead,
    rules: &'r Rules,
    own: bool,
    via_name: &str,
) -> Result<Option<&'r str>, ProxyError> {
    let ip = conn.peer.ip().to_canonical();
    if !access::allows_client(ip, &rules.allow_clients) {
        return Err(ProxyError::ClientDenied { addr: ip });
    }
    let user = if own || head.target_form() == TargetForm::Origin {
        None
    } else {
        rules
            .users
            .check(head.header_values("proxy-authorization"))
            .map_err(ProxyError::ProxyAuthRequired)?
    };
    head.body_framing()?;
    if headers::is_loop(head.header_values("via"), via_name) {
        return Err(ProxyError::LoopDetected);
    }
    Ok(user)
}

/// CONNECT, connected: the 200, then both sockets to the relay, which
/// writes the tunnel's access-log line when it ends.
fn open_tunnel(
    mut conn: ClientConn,
    upstream: TcpStream,
    slot: TunnelSlot,
    request: &Request<'_>,
    ctx: &Context,
) {
    // No Connection header: the connection becomes the tunnel.
    let head = Head::with_reason(200, "Connection Established")
        .finish(request.request_id, Persistence::KeepAlive { http10: false });
    if conn.write_all(&head).is_ok() {
        ctx.relay.start(conn, upstream, slot, request);
        return;
    }
    // The client left before its tunnel began.
    let served = Served {
        status: 200,
        bytes: 0,
        error: None,
        reusable: false,
        cache: None,
        own: false,
        cut: None,
        shown: None,
    };
    finish::record(
        &ctx.metrics,
        request,
        &served,
        Some((TunnelEnd::ClientError, 0)),
    );
}

/// Whether the request announced a body (read or not).
fn has_body(head: &RequestHead) -> bool {
    !matches!(head.body_framing(), Ok(BodyFraming::Empty))
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
        return Err(finish::answer_error(
            conn,
            &err,
            request_id,
            None,
            Persistence::Close,
        ));
    }
    log::error!(
        "worker panicked while serving {} {request_id}: {message}; response already begun, connection closed",
        conn.peer
    );
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    Err(Served::failed(&err, 0))
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

#[cfg(test)]
mod tests;
