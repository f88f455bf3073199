//! Deadlines and draining: parked connections past `header_timeout` or
//! `idle_timeout` are closed (408 for a head that began to arrive, then a
//! lingering close), and on shutdown the listeners close and every
//! connection that has not begun a request with them.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use rustix::net::RecvFlags;

use super::{Acceptor, Entry, LINGER, Phase, send_now};
use crate::error::ProxyError;
use crate::http::response;
use crate::logging::AccessRecord;

impl Acceptor {
    /// Closes connections past their deadline: 408 for a head that started
    /// to arrive (503 when the grace period ended it), silently for one
    /// that sent nothing.
    pub(super) fn expire(&mut self, now: Instant) {
        let expired: Vec<(usize, bool)> = self
            .entries
            .iter()
            .filter_map(|(key, entry)| match entry {
                Entry::Parked {
                    conn,
                    phase,
                    deadline,
                } if *deadline <= now => Some((
                    key,
                    *phase == Phase::Linger
                        || (*phase == Phase::Head && !conn.pending().is_empty()),
                )),
                _ => None,
            })
            .collect();
        let grace_over = self.grace_end.is_some_and(|end| now >= end);
        for (key, started) in expired {
            if !started {
                self.close(key);
                continue;
            }
            let Some(Entry::Parked {
                conn,
                phase,
                deadline,
            }) = self.entries.get_mut(key)
            else {
                continue;
            };
            if *phase == Phase::Linger {
                self.close(key);
                continue;
            }
            {
                // A head cut by the end of the grace period is a request cut short.
                self.cut_short |= grace_over;
                let err = if grace_over {
                    ProxyError::ShuttingDown
                } else {
                    ProxyError::HeadTimeout(self.config.header_timeout)
                };
                let request_id = self.ids.fresh();
                let answer = response::error_response(&err, &request_id, true, false);
                send_now(&conn.stream, &answer);
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                let unread = conn.pending().len();
                conn.consume_pending(unread);
                *phase = Phase::Linger;
                *deadline = now + LINGER;
                crate::server::finished(
                    &self.metrics,
                    &AccessRecord {
                        client: conn.peer,
                        method: "-",
                        url: "-",
                        status: err.status(),
                        bytes: 0,
                        duration: self.config.header_timeout,
                        request_id: &request_id,
                        error: Some(err.proxy_status()),
                    },
                );
            }
        }
    }

    /// Closes the listeners and every connection that has not begun a request.
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
        // A request that already arrived, on a parked connection or one just
        // handed back, is served rather than dropped.
        self.take_returns();
        let parked: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Parked { .. }))
            .map(|(key, _)| key)
            .collect();
        for key in parked {
            self.on_readable(key);
        }
        let idle: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, entry)| match entry {
                Entry::Parked { conn, phase, .. } => {
                    *phase == Phase::Idle || conn.pending().is_empty()
                }
                Entry::Busy { .. } => false,
            })
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key);
        }
        for (_, entry) in self.entries.iter_mut() {
            if let Entry::Parked { deadline, .. } = entry {
                *deadline = (*deadline).min(grace_end);
            }
        }
        let arriving = self
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Parked { .. }))
            .count();
        log::info!("draining: listeners closed, {arriving} request heads still arriving");
    }

    /// Whether any connection is waiting here (the acceptor must stay to serve it).
    pub(super) fn has_parked(&self) -> bool {
        self.entries
            .iter()
            .any(|(_, entry)| matches!(entry, Entry::Parked { .. }))
    }
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
