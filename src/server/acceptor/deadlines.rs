//! Deadlines, lingering and draining: parked connections past
//! `header_timeout` or `idle_timeout` are closed (408 for a head that began
//! to arrive, then a lingering close); answered connections that must close
//! linger here, whoever answered them; on shutdown the listeners close, and
//! open connections get one more answer or their idle deadline, within the
//! grace period.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use rustix::net::RecvFlags;

use super::{Acceptor, Entry, LINGER, Phase, send_now};
use crate::error::ProxyError;
use crate::http::response::Persistence;
use crate::server::conn::ClientConn;
use crate::server::finish::{self, Request, Served};

impl Acceptor {
    /// Closes connections past their deadline: 408 for a head that started
    /// to arrive (503 when the grace period ended it), then a lingering
    /// close; silently for one that sent nothing or was lingering already.
    pub(super) fn expire(&mut self, now: Instant) {
        let expired: Vec<(usize, bool)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Parked {
                    conn,
                    phase,
                    deadline,
                } if *deadline <= now => {
                    Some((key, *phase == Phase::Head && !conn.pending().is_empty()))
                }
                _ => None,
            })
            .collect();
        for (key, head_started) in expired {
            if head_started {
                self.answer_late_head(key, now);
            } else {
                self.close(key);
            }
        }
    }

    /// Answers a head that did not arrive in time, and lingers.
    fn answer_late_head(&mut self, key: usize, now: Instant) {
        let grace_over = self.grace_end.is_some_and(|end| now >= end);
        let Some(Entry::Parked {
            conn,
            phase,
            deadline,
        }) = self.entries.get_mut(key)
        else {
            return;
        };
        // A head cut by the end of the grace period is a request cut short.
        self.cut_short |= grace_over;
        let err = if grace_over {
            ProxyError::ShuttingDown
        } else {
            ProxyError::HeadTimeout(self.config.header_timeout)
        };
        let request_id = self.ids.fresh();
        let (answer, body_len) = finish::error_bytes(&err, &request_id, None, Persistence::Close);
        let sent = send_now(&conn.stream, &answer);
        start_lingering(conn);
        *phase = Phase::Linger;
        *deadline = within_grace(now + LINGER, self.grace_end);
        let started = now.checked_sub(self.config.header_timeout).unwrap_or(now);
        let served = Served {
            bytes: if sent { body_len } else { 0 },
            ..Served::failed(&err, 0)
        };
        let request = Request::unparsed(conn.peer, &request_id, started);
        finish::record(&self.metrics, &request, &served, None);
    }

    /// Takes an answered connection that must close from a worker (which
    /// shut its write side), and drains its input for a moment before
    /// closing it (lingering close).
    pub(super) fn linger(&mut self, mut conn: ClientConn) {
        let Some(key) = conn.registration_key() else {
            return;
        };
        if !matches!(self.entries.get(key), Some(Entry::Busy { .. })) {
            log::error!(
                "connection {} handed back to a place it does not own",
                conn.peer
            );
            conn.disarm_registration();
            return;
        }
        // Its worker shut the write side already, as the answer ended.
        forget_unread(&mut conn);
        self.entries[key] = Entry::Parked {
            conn,
            phase: Phase::Linger,
            deadline: within_grace(Instant::now() + LINGER, self.grace_end),
        };
        self.on_readable(key);
    }

    /// Closes the listeners; the connections already open stay until they
    /// are answered or their deadline passes, at the latest at the end of
    /// the grace period.
    ///
    /// An idle keep-alive connection is not closed here: its client (a load
    /// balancer above all) may be sending its next request at this very
    /// moment, and a close would lose that request with no answer (RFC 9112
    /// §9.3.1: only the client can tell whether to retry it). Instead a
    /// request that arrives is served with `Connection: close`, and an idle
    /// connection closes at its idle deadline, by which time the balancer
    /// has seen the closed listener (or `/healthz` 503) and sends nothing more.
    pub(super) fn start_draining(&mut self) {
        self.draining = true;
        // A head still arriving gets until the end of the grace period, not
        // a whole header_timeout: a slow client must not hold up the exit.
        let grace_end =
            self.shutdown.draining_since().unwrap_or_else(Instant::now) + self.config.grace;
        self.grace_end = Some(grace_end);
        for listener in &self.listeners {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
        }
        // Dropping the listeners closes them: new connections are refused.
        self.listeners.clear();
        // Connections just handed back are parked first, so that they too
        // wait under the grace period's deadline.
        self.take_returns();
        let mut parked = 0;
        let mut last = None;
        for (_, entry) in self.entries.iter_mut() {
            if let Entry::Parked { deadline, .. } = entry {
                *deadline = (*deadline).min(grace_end);
                parked += 1;
                last = last.max(Some(*deadline));
            }
        }
        // Say how long the wait can be: an idle client's deadline is its
        // idle timeout, which surprises whoever pressed Ctrl-C. Requests
        // being served are the workers', within the grace.
        let grace = self.config.grace.as_secs_f64();
        match last {
            None => log::info!(
                "draining: listeners closed; no idle connection waits; requests being served \
                 have up to {grace:.1}s"
            ),
            Some(last) => {
                let within = last.saturating_duration_since(Instant::now()).as_secs_f64();
                let they = if parked == 1 {
                    "connection gets"
                } else {
                    "connections get"
                };
                log::info!(
                    "draining: listeners closed; {parked} idle {they} one more answer or \
                     close within {within:.1}s; requests being served have up to {grace:.1}s"
                );
            }
        }
    }

    /// `wait` from now, or the end of the grace period when that comes first.
    pub(super) fn deadline_after(&self, wait: Duration) -> Instant {
        within_grace(Instant::now() + wait, self.grace_end)
    }

    /// Whether the acceptor must stay: a connection waits here, or, within
    /// the grace period, a worker has one that it may hand back (answered
    /// just before draining began, it waits for one more request).
    pub(super) fn has_connections(&self) -> bool {
        let in_grace = self.grace_end.is_none_or(|end| Instant::now() < end);
        self.entries.iter().any(|(_, entry)| match entry {
            Entry::Parked { .. } => true,
            Entry::Busy { .. } => in_grace,
        })
    }
}

/// Stops sending on `conn` and forgets what it holds unread: from here on
/// its input is only drained.
fn start_lingering(conn: &mut ClientConn) {
    conn.shut_write();
    forget_unread(conn);
}

/// Drops what `conn` holds unread: a lingering connection's input is only
/// drained.
fn forget_unread(conn: &mut ClientConn) {
    let unread = conn.pending().len();
    conn.consume_pending(unread);
}

/// Reads and drops whatever the peer sent, without blocking; true once the
/// peer has closed (or the socket failed).
pub(super) fn drain_input(stream: &TcpStream, scratch: &mut [u8]) -> bool {
    loop {
        match rustix::net::recv(stream, &mut *scratch, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) => {}
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
    }
}

/// `deadline`, or the end of the grace period when that comes first.
pub(super) fn within_grace(deadline: Instant, grace_end: Option<Instant>) -> Instant {
    grace_end.map_or(deadline, |end| deadline.min(end))
}
