//! Fills received by a thread of their own. A large body that followers
//! share is read from the origin and stored by such a thread, as fast as
//! the origin sends it, while the client that asked first reads it from
//! the fill like any follower (Varnish fetches in a thread apart in the
//! same way). A slow first client then holds back nobody but itself.
//! Bounded: past `limit` fills at once, a fill stays with its request.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Stack of a fill thread: it copies through a heap buffer.
const STACK: usize = 256 * 1024;

/// The fills being received apart, and how many may be at once.
#[derive(Debug)]
pub struct BackgroundFills {
    running: AtomicUsize,
    limit: usize,
}

/// Room for one fill thread, given back when the thread ends.
#[derive(Debug)]
pub struct Slot(Arc<BackgroundFills>);

impl BackgroundFills {
    /// At most `limit` fills received apart at once.
    pub fn new(limit: usize) -> Arc<BackgroundFills> {
        Arc::new(BackgroundFills {
            running: AtomicUsize::new(0),
            limit,
        })
    }

    /// Room for one more fill thread, if there is any.
    pub fn slot(self: &Arc<Self>) -> Option<Slot> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// Fills being received apart now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

impl Slot {
    /// Runs `receive` on a thread of its own, which holds this slot.
    ///
    /// # Errors
    /// When the thread cannot be started (`receive` is then dropped).
    pub fn spawn(self, receive: impl FnOnce() + Send + 'static) -> io::Result<()> {
        thread::Builder::new()
            .name("cache-fill".to_string())
            .stack_size(STACK)
            .spawn(move || {
                let _slot = self;
                receive();
            })
            .map(drop)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let fills = BackgroundFills::new(2);
        let a = fills.slot().expect("first");
        let b = fills.slot().expect("second");
        assert!(fills.slot().is_none(), "past the limit");
        drop(a);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        b.spawn(move || done_tx.send(()).expect("send"))
            .expect("thread starts");
        done_rx.recv().expect("ran");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fills.running() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "slot never given back"
            );
            thread::yield_now();
        }
        assert!(fills.slot().is_some());
    }
}
