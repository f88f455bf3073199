//! Interim (1xx) responses an origin sends before its final one, kept so
//! that the proxy can pass them on: a proxy must forward a 1xx it did not
//! ask for itself (RFC 9110 §15.2), such as `103 Early Hints` or `102
//! Processing`. ureq reads and drops them; this transport, chained over
//! the TLS layer so that it sees plain bytes, watches the first bytes of
//! each response while an upstream call is armed on this thread and keeps
//! every complete 1xx head but `100 Continue` (the proxy answers that
//! itself) and `101` (no upgrades are forwarded). Once a final status line
//! starts it watches no more, so a body is never looked at.

use std::cell::RefCell;

use ureq::Error;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Most bytes of interim heads kept for one response: more than any
/// honest origin sends; past it the rest are dropped, as ureq drops them.
const MAX_INTERIM_BYTES: usize = 64 * 1024;

/// What the watch of the call on this thread has seen.
#[derive(Debug, Default)]
struct Watch {
    /// Looking at the response's first bytes.
    armed: bool,
    /// Received and not yet seen to be a whole head.
    pending: Vec<u8>,
    /// Complete interim heads, as received.
    heads: Vec<Vec<u8>>,
    kept: usize,
}

thread_local! {
    static WATCH: RefCell<Watch> = RefCell::new(Watch::default());
}

/// Starts watching for interim responses to the upstream call about to be
/// made on this thread (each attempt anew).
pub fn arm() {
    WATCH.with(|watch| {
        *watch.borrow_mut() = Watch {
            armed: true,
            ..Watch::default()
        };
    });
}

/// The interim heads received by the call on this thread, in order;
/// watching stops.
pub fn take() -> Vec<Vec<u8>> {
    WATCH.with(|watch| std::mem::take(&mut *watch.borrow_mut()).heads)
}

/// Looks at bytes just received.
fn saw(bytes: &[u8]) {
    WATCH.with(|watch| {
        let mut watch = watch.borrow_mut();
        if !watch.armed {
            return;
        }
        // The usual case, a final status line at once, copies nothing.
        if watch.pending.is_empty() && bytes.len() >= 13 && !is_interim(bytes) {
            watch.armed = false;
            return;
        }
        watch.pending.extend_from_slice(bytes);
        scan(&mut watch);
    });
}

/// Whether a response starts with a 1xx status line (`HTTP/1.x 1`).
fn is_interim(start: &[u8]) -> bool {
    start.starts_with(b"HTTP/1.") && start.get(8) == Some(&b' ') && start.get(9) == Some(&b'1')
}

/// Moves complete interim heads out of `pending`, and disarms at the first
/// final status line (or anything that is not a status line).
fn scan(watch: &mut Watch) {
    while watch.armed {
        let pending = &watch.pending;
        // `HTTP/1.1 103 ` is 13 bytes.
        if pending.len() < 13 {
            return;
        }
        if !is_interim(pending) {
            watch.armed = false;
            watch.pending = Vec::new();
            return;
        }
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            if pending.len() > MAX_INTERIM_BYTES {
                watch.armed = false;
                watch.pending = Vec::new();
            }
            return;
        };
        let head: Vec<u8> = watch.pending.drain(..end + 4).collect();
        let own = head.starts_with(b"HTTP/1.1 100") || head.starts_with(b"HTTP/1.1 101");
        if !own && watch.kept + head.len() <= MAX_INTERIM_BYTES {
            watch.kept += head.len();
            watch.heads.push(head);
        }
    }
}

/// Wraps each connection (plain or TLS) in a `Watched` transport.
#[derive(Debug)]
pub struct InterimConnector;

impl<In: Transport> Connector<In> for InterimConnector {
    type Out = Watched<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        Ok(chained.map(|inner| Watched { inner }))
    }
}

/// A connection whose received bytes are shown to the watch.
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
}

impl<T: Transport> Transport for Watched<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        // What is there now stays; what the read appends comes after it.
        let before = self.inner.buffers().input().len();
        let more = self.inner.await_input(timeout)?;
        let input = self.inner.buffers().input();
        if let Some(new) = input.get(before..) {
            super::note_received(new.len());
            saw(new);
        }
        Ok(more)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        arm();
        for piece in pieces {
            saw(piece);
        }
        take()
    }

    #[test]
    fn interim_heads_are_kept_in_order_however_the_bytes_arrive() {
        let stream: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let whole = watched(&[stream]);
        assert_eq!(
            whole,
            [
                b"HTTP/1.1 102 Processing\r\n\r\n".to_vec(),
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n".to_vec(),
            ]
        );
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(watched(&bytes), whole, "a byte at a time");
    }

    #[test]
    fn the_final_response_and_its_body_are_never_kept() {
        let body_like_a_head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 28\r\n\r\nHTTP/1.1 103 Early\r\n\r\n";
        assert!(watched(&[&body_like_a_head[..]]).is_empty());
        assert!(
            watched(&[b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 204 No\r\n\r\n"]).is_empty()
        );
        assert!(watched(&[b"garbage"]).is_empty());
    }

    #[test]
    fn nothing_is_kept_unless_armed() {
        take();
        saw(b"HTTP/1.1 103 Early Hints\r\n\r\n");
        assert!(take().is_empty());
    }
}
