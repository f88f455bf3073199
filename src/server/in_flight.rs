//! The request each worker is serving, so that those still running when
//! the grace period runs out get their access-log line: the process exits
//! then, and a worker in the middle of a request never writes it. One slot
//! a worker, written as a request starts and ends: an uncontended lock and
//! a copy of a few short words into buffers kept from one request to the
//! next. The bytes a worker writes to its client are counted on the side,
//! so that a cut request's line says how much of the answer went out.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::logging::{self, AccessDetails, AccessRecord, Cut};
use crate::server::finish::Request;

/// What the access log says of a request cut short at shutdown, in place
/// of a `Proxy-Status` error type.
pub const CUT_AT_SHUTDOWN: &str = "cut_at_shutdown";

/// Where the shutdown's message points, in every access-log format.
pub const CUT_LINES: &str = "access log: error=cut_at_shutdown, or NONE_ABORTED/000 in Squid's format, status 0 in combined";

thread_local! {
    /// The slot of the worker running on this thread.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
    /// Its count of bytes written to the client in the current request.
    static SENT: RefCell<Option<Arc<AtomicU64>>> = const { RefCell::new(None) };
}

/// The workers' slots.
pub struct InFlight {
    slots: Box<[Mutex<Slot>]>,
    /// Bytes written to each worker's client in its current request.
    sent: Box<[Arc<AtomicU64>]>,
}

/// Counts `n` bytes written to the client of the worker on this thread (on
/// any other thread, nothing).
pub fn count_sent(n: usize) {
    SENT.with(|sent| {
        if let Some(sent) = &*sent.borrow() {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
}

/// One worker's request.
#[derive(Debug, Default)]
struct Slot {
    /// A request is being served and has no line yet.
    open: bool,
    /// The request's line was written at shutdown: its worker writes none.
    cut: bool,
    client: Option<SocketAddr>,
    method: String,
    url: String,
    request_id: String,
    started: Option<Instant>,
}

impl InFlight {
    /// Slots for `workers` workers.
    pub fn new(workers: usize) -> InFlight {
        InFlight {
            slots: (0..workers).map(|_| Mutex::default()).collect(),
            sent: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Makes the calling thread worker `index` (from 0).
    pub fn enter(index: usize) {
        SLOT.with(|slot| slot.set(Some(index)));
    }

    /// The calling worker's slot; `None` on a thread that is no worker.
    fn mine(&self) -> Option<MutexGuard<'_, Slot>> {
        let index = SLOT.with(Cell::get)?;
        let slot = self.slots.get(index)?;
        Some(slot.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The calling worker starts serving `request`.
    pub fn begin(&self, request: &Request<'_>) {
        if let Some(sent) = SLOT.with(Cell::get).and_then(|index| self.sent.get(index)) {
            sent.store(0, Ordering::Relaxed);
            SENT.with(|mine| {
                let mut mine = mine.borrow_mut();
                if !mine.as_ref().is_some_and(|mine| Arc::ptr_eq(mine, sent)) {
                    *mine = Some(sent.clone());
                }
            });
        }
        if let Some(mut slot) = self.mine() {
            slot.open = true;
            slot.cut = false;
            slot.client = Some(request.client);
            copy(&mut slot.method, request.method);
            copy(&mut slot.url, request.url);
            copy(&mut slot.request_id, request.request_id);
            slot.started = Some(request.started);
        }
    }

    /// The calling worker is done with its request (or handed it on). False
    /// when its line was written already, as cut at shutdown: the worker
    /// must not write another.
    pub fn end(&self) -> bool {
        match self.mine() {
            Some(mut slot) => {
                slot.open = false;
                !slot.cut
            }
            None => true,
        }
    }

    /// Writes the access-log line of every request still being served, as
    /// cut short at shutdown (status 0: it did not end as any status says;
    /// Squid's format says `NONE_ABORTED/000`; the bytes are all that went
    /// to the client, its head included), and returns how many there were.
    pub fn cut_all(&self) -> usize {
        let mut cut = 0;
        for (slot, sent) in self.slots.iter().zip(&self.sent) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let (Some(client), Some(started), true) = (slot.client, slot.started, slot.open) else {
                continue;
            };
            let record = AccessRecord {
                client,
                method: &slot.method,
                url: &slot.url,
                status: 0,
                bytes: sent.load(Ordering::Relaxed),
                duration: started.elapsed(),
                request_id: &slot.request_id,
                error: Some(CUT_AT_SHUTDOWN),
                cache: None,
                tunnel: None,
                // Whatever went out, the answer did not reach the client whole.
                cut: Some(Cut::Failed),
            };
            logging::access_with(&record, &AccessDetails::default());
            slot.open = false;
            slot.cut = true;
            cut += 1;
        }
        cut
    }
}

/// Copies `text` into `buf`, reusing its room.
fn copy(buf: &mut String, text: &str) {
    buf.clear();
    buf.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str) -> Request<'_> {
        Request {
            client: "127.0.0.1:5000".parse().expect("address"),
            method: "GET",
            url,
            request_id: "id-1",
            started: Instant::now(),
            head: None,
            user: None,
        }
    }

    #[test]
    fn only_requests_still_open_are_cut_and_their_workers_then_log_nothing() {
        let in_flight = InFlight::new(2);
        InFlight::enter(0);
        in_flight.begin(&request("http://a.example/done"));
        assert!(in_flight.end(), "a request that ended logs its own line");
        assert_eq!(in_flight.cut_all(), 0);

        in_flight.begin(&request("http://a.example/slow"));
        assert_eq!(in_flight.cut_all(), 1);
        assert_eq!(in_flight.cut_all(), 0, "cut once");
        assert!(!in_flight.end(), "its line was written at the cut");

        in_flight.begin(&request("http://a.example/next"));
        assert!(in_flight.end(), "the next request is the worker's again");
    }

    #[test]
    fn a_thread_that_is_no_worker_has_no_slot() {
        let in_flight = InFlight::new(1);
        std::thread::spawn(move || {
            in_flight.begin(&request("http://a.example/"));
            assert_eq!(in_flight.cut_all(), 0);
            assert!(in_flight.end());
        })
        .join()
        .expect("thread");
    }
}
