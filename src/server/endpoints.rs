//! The answers the proxy gives itself: `/healthz` for load balancers and
//! supervisors (503 `draining` once shutdown began, so a balancer stops
//! sending work), `/metrics` for Prometheus, and `OPTIONS` with
//! `Max-Forwards: 0`. A request body is read and dropped first, or the
//! connection closes (see `request_body::discard`).

use std::io::Write;

use crate::http::request::RequestHead;
use crate::http::response::Head;
use crate::metrics::{self, Gauges};
use crate::server::cached;
use crate::server::conn::ClientConn;
use crate::server::context::Context;
use crate::server::finish::{self, Served};
use crate::server::request_body;
use crate::server::target::{Endpoint, FORWARDED_METHODS};

/// Answers `endpoint` for `head`.
pub fn answer(
    conn: &mut ClientConn,
    head: &RequestHead,
    endpoint: Endpoint,
    request_id: &str,
    ctx: &Context,
) -> Served {
    let body_read = request_body::discard(conn, head);
    let draining = ctx.shutdown.is_draining();
    let persistence = finish::persistence(head, body_read, draining);
    let (status, body, mut out) = match endpoint {
        Endpoint::Healthz => {
            let (status, body) = health(draining);
            let body = body.to_string();
            let mut out = Head::new(status);
            out.header("Content-Type", b"text/plain; charset=utf-8");
            (status, body, out)
        }
        Endpoint::Metrics => {
            let mut out = Head::new(200);
            out.header("Content-Type", metrics::CONTENT_TYPE.as_bytes());
            (200, metrics_page(ctx), out)
        }
        Endpoint::Options => {
            let mut out = Head::new(200);
            out.header("Allow", FORWARDED_METHODS.join(", ").as_bytes());
            (200, String::new(), out)
        }
    };
    out.header("Content-Length", body.len().to_string().as_bytes())
        .header("Cache-Control", b"no-store");
    let mut bytes = out.finish(request_id, persistence);
    let head_only = head.method == "HEAD";
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    let sent = conn.write_all(&bytes).is_ok();
    Served {
        status,
        bytes: if sent && !head_only {
            body.len() as u64
        } else {
            0
        },
        error: None,
        reusable: sent && persistence.is_kept(),
        cache: None,
        own: true,
        cut: None,
        shown: None,
    }
}

/// `/healthz`'s status and body: 200 `ok`, or 503 `draining` once
/// shutdown began, so that a balancer stops sending work.
pub fn health(draining: bool) -> (u16, &'static str) {
    if draining {
        (503, "draining\n")
    } else {
        (200, "ok\n")
    }
}

/// The counters, with the gauges of this moment.
fn metrics_page(ctx: &Context) -> String {
    ctx.metrics.render(&Gauges {
        connections_open: ctx.limits.open(),
        workers: ctx.config.workers.get(),
        workers_busy: ctx.metrics.workers_busy(),
        queue_length: ctx.queue.len(),
        queue_capacity: ctx.config.queue.get(),
        tunnels_open: ctx.relay.open_tunnels(),
        draining: ctx.shutdown.is_draining(),
        cache: cached::figures(&ctx.cache, &ctx.background),
    })
}
