//! The answers the acceptor writes itself, without a worker and without
//! ever waiting on the client: refusals at accept (client range, connection
//! limits), and 503 when the queue is full or the server is stopping.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustix::net::SendFlags;

use super::{Acceptor, Job};
use crate::error::ProxyError;
use crate::http::response;
use crate::logging::AccessRecord;

impl Acceptor {
    /// Answers a connection the proxy will not serve, and closes it.
    pub(super) fn refuse(&self, stream: &TcpStream, peer: SocketAddr, err: ProxyError) {
        log::debug!("refusing {peer}: {err}");
        let request_id = self.ids.fresh();
        let answer = response::error_response(&err, &request_id, true, false);
        send_now(stream, &answer);
        crate::server::finished(
            &self.metrics,
            &AccessRecord {
                client: peer,
                method: "-",
                url: "-",
                status: err.status(),
                bytes: 0,
                duration: Duration::ZERO,
                request_id: &request_id,
                error: Some(err.proxy_status()),
            },
        );
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
        let (method, url, request_id) = match &head {
            Ok(head) => (
                head.method.as_str(),
                head.target.as_str(),
                self.ids.for_request(head),
            ),
            Err(_) => ("-", "-", self.ids.fresh()),
        };
        let head_only = method == "HEAD";
        let answer = response::error_response(&err, &request_id, true, head_only);
        send_now(&conn.stream, &answer);
        crate::server::finished(
            &self.metrics,
            &AccessRecord {
                client: conn.peer,
                method,
                url,
                status: err.status(),
                bytes: 0,
                duration: queued_at.elapsed(),
                request_id: &request_id,
                error: Some(err.proxy_status()),
            },
        );
    }
}

/// Sends an answer without ever blocking: a peer that does not read it
/// does not get it.
pub(super) fn send_now(stream: &TcpStream, bytes: &[u8]) {
    let _ = rustix::net::send(stream, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}
