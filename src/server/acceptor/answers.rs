//! The answers the acceptor writes itself, without a worker and without
//! ever waiting on the client: refusals at accept (client range, connection
//! limits), and 503 when the queue is full or the server is stopping. They
//! end as every request does (`finish`).

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use rustix::net::SendFlags;

use super::Acceptor;
use crate::error::ProxyError;
use crate::http::response::Persistence;
use crate::server::finish::{self, Request, Served};
use crate::server::job::Job;

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

/// Sends an answer without ever blocking: a peer that does not read it
/// does not get it. Says whether all of it went out.
pub(super) fn send_now(stream: &TcpStream, bytes: &[u8]) -> bool {
    rustix::net::send(stream, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)
        .is_ok_and(|n| n == bytes.len())
}
