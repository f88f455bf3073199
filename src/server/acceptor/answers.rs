//! The answers the acceptor writes itself, without a worker and without
//! ever waiting on the client: refusals at accept (client range, connection
//! limits), 503 when the queue is full or the server is stopping, and a
//! health check that would wait in the queue. They end as every request
//! does (`finish`).

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use rustix::net::SendFlags;

use super::Acceptor;
use crate::error::ProxyError;
use crate::http::body::BodyFraming;
use crate::http::request::RequestHead;
use crate::http::response::{Head, Persistence};
use crate::server::conn::ClientConn;
use crate::server::endpoints;
use crate::server::finish::{self, Request, Served};
use crate::server::job::Job;
use crate::server::target::{self, Endpoint};

impl Acceptor {
    /// Answers a connection the proxy will not serve, and closes it.
    pub(super) fn refuse(&self, stream: &TcpStream, peer: SocketAddr, err: ProxyError) {
        log::debug!("refusing {peer}: {err}");
        let request_id = self.ids.fresh();
        let (answer, body_len) = finish::error_bytes(&err, &request_id, None, Persistence::Close);
        let sent = send_now(stream, &answer);
        let served = Served {
            bytes: if sent { body_len } else { 0 },
            ..Served::failed(&err, 0)
        };
        let request = Request::unparsed(peer, &request_id, Instant::now());
        finish::record(&self.metrics, &request, &served, None);
    }

    /// Answers a queued-to-be job with `err` from this thread and closes it.
    pub(super) fn answer_directly(&mut self, job: Job, err: ProxyError) {
        let Job {
            mut conn,
            head,
            queued_at,
        } = job;
        // The acceptor closes it: free its place here, not by message.
        if let Some(key) = conn.registration_key() {
            self.entries.try_remove(key);
        }
        conn.disarm_registration();
        let head = head.ok();
        let request_id = match &head {
            Some(head) => self.ids.for_request(head),
            None => self.ids.fresh(),
        };
        let (answer, body_len) =
            finish::error_bytes(&err, &request_id, head.as_ref(), Persistence::Close);
        let sent = send_now(&conn.stream, &answer);
        let served = Served {
            bytes: if sent { body_len } else { 0 },
            ..Served::failed(&err, 0)
        };
        let request = match &head {
            Some(head) => Request::of(conn.peer, head, &request_id, queued_at),
            None => Request::unparsed(conn.peer, &request_id, queued_at),
        };
        finish::record(&self.metrics, &request, &served, None);
    }
}

/// Whether `head` is a plain health check (`GET` or `HEAD /healthz`, no
/// body), which the acceptor may answer itself.
pub(super) fn is_health_check(head: &RequestHead) -> bool {
    let path = head.target.split('?').next().unwrap_or_default();
    target::own_page(&head.method, path) == Some(Endpoint::Healthz)
        && matches!(
            head.body_framing(),
            Ok(BodyFraming::Empty | BodyFraming::Length(0))
        )
}

impl Acceptor {
    /// Answers a health check from this thread, as a worker would (200 `ok`,
    /// or 503 `draining`), and closes the connection: the workers are busy,
    /// and it would have waited behind them.
    pub(super) fn answer_health_check(
        &mut self,
        mut conn: ClientConn,
        head: &RequestHead,
        received: Instant,
    ) {
        if let Some(key) = conn.registration_key() {
            self.entries.try_remove(key);
        }
        conn.disarm_registration();
        let request_id = self.ids.for_request(head);
        let (status, body) = endpoints::health(self.shutdown.is_draining());
        let mut out = Head::new(status);
        out.header("Content-Type", b"text/plain; charset=utf-8")
            .header("Content-Length", body.len().to_string().as_bytes())
            .header("Cache-Control", b"no-store");
        let mut bytes = out.finish(&request_id, Persistence::Close);
        let head_only = head.method == "HEAD";
        if !head_only {
            bytes.extend_from_slice(body.as_bytes());
        }
        let sent = send_now(&conn.stream, &bytes);
        let served = Served {
            status,
            bytes: if sent && !head_only {
                body.len() as u64
            } else {
                0
            },
            error: None,
            reusable: false,
            cache: None,
            own: true,
            cut: None,
            shown: None,
        };
        let request = Request::of(conn.peer, head, &request_id, received);
        finish::record(&self.metrics, &request, &served, None);
    }
}

/// Sends an answer without ever blocking: a peer that does not read it
/// does not get it. Says whether all of it went out.
pub(super) fn send_now(stream: &TcpStream, bytes: &[u8]) -> bool {
    rustix::net::send(stream, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
        .is_ok_and(|n| n == bytes.len())
}
