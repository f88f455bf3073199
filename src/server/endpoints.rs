//! The proxy's own endpoints, reached with origin-form targets: `/healthz`
//! for load balancers and supervisors, `/metrics` for Prometheus. Anything
//! else in origin-form is an error the worker answers.

use std::io::Write;

use crate::error::ProxyError;
use crate::http::request::RequestHead;
use crate::http::response;
use crate::metrics::{self, Gauges};
use crate::server::conn::ClientConn;
use crate::server::request_body;
use crate::server::worker::{Context, Served};

/// Answers `GET` or `HEAD` for `/healthz` and `/metrics`.
///
/// # Errors
/// `NotProxyEndpoint` for any other origin-form request.
pub fn answer(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    ctx: &Context,
) -> Result<Served, ProxyError> {
    let path = head.target.split('?').next().unwrap_or_default();
    let (content_type, body) = match (head.method.as_str(), path) {
        ("GET" | "HEAD", "/healthz") => {
            let body = if ctx.shutdown.is_draining() {
                "draining\n"
            } else {
                "ok\n"
            };
            ("text/plain; charset=utf-8", body.to_string())
        }
        ("GET" | "HEAD", "/metrics") => (metrics::CONTENT_TYPE, metrics_page(ctx)),
        _ => return Err(ProxyError::NotProxyEndpoint(head.target.clone())),
    };
    // The body, if any, is read before answering (or the connection closes).
    let close = !request_body::discard(conn, head) || !head.keep_alive();
    let head_only = head.method == "HEAD";
    let mut out = Vec::with_capacity(256 + body.len());
    response::write_status_line(&mut out, 200, "OK");
    response::write_header(&mut out, "Content-Type", content_type.as_bytes());
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
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    let sent = conn.write_all(&out).is_ok();
    Ok(Served {
        status: 200,
        bytes: if head_only { 0 } else { body.len() as u64 },
        error: None,
        reusable: sent && !close,
    })
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
    })
}
