//! Invalidations that fills in progress must heed: a PURGE, or an unsafe
//! method's success (RFC 9111 §4.4), removes what is stored for a URL, but
//! a fill that started before it would store the response it is receiving
//! when its body ends: content from before the invalidation, back in the
//! cache for its whole freshness lifetime. Each fill notes the count of
//! invalidations when it starts; one that ends after its URL was
//! invalidated stores nothing.
//!
//! The log is a fixed table of slots chosen by the key's fingerprint, each
//! holding the count at the last invalidation of a URL in that slot, as
//! the hit-for-miss table does: no lock, no growth. Two URLs sharing a slot
//! (1 in 4,096) only cost one fill of the other its store.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Slots in the table (a power of two): 32 KiB, made at the first
/// invalidation, so that a cache never purged never holds it.
const SLOTS: usize = 1 << 12;

/// The count of invalidations, and where each URL's last one came.
pub struct Invalidations {
    count: AtomicU64,
    slots: OnceLock<Box<[AtomicU64]>>,
}

/// When a fill started, in invalidations counted.
#[derive(Debug, Clone, Copy)]
pub struct Since(u64);

impl Invalidations {
    pub fn new() -> Invalidations {
        Invalidations {
            count: AtomicU64::new(0),
            slots: OnceLock::new(),
        }
    }

    /// Now, for a fill about to start.
    pub fn now(&self) -> Since {
        Since(self.count.load(Ordering::SeqCst))
    }

    /// Records that the URL with `fingerprint` is invalidated. Call before
    /// removing what is stored for it: a fill that stores meanwhile then
    /// either sees this (`since`), or has stored before the removal.
    pub fn record(&self, fingerprint: u64) {
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        let at = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        slot(slots, fingerprint).fetch_max(at, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Whether the URL with `fingerprint` may have been invalidated after
    /// `since`. A fill asks after storing: what it stored goes if so.
    pub fn since(&self, fingerprint: u64, since: Since) -> bool {
        fence(Ordering::SeqCst);
        self.slots
            .get()
            .is_some_and(|slots| slot(slots, fingerprint).load(Ordering::SeqCst) > since.0)
    }
}

fn slot(slots: &[AtomicU64], fingerprint: u64) -> &AtomicU64 {
    // The low bits: the fingerprint is a well-mixed hash.
    &slots[fingerprint as usize & (SLOTS - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_sees_only_invalidations_of_its_url_after_it_started() {
        let log = Invalidations::new();
        let (a, b) = (7, 8);
        log.record(a);
        let started = log.now();
        assert!(!log.since(a, started), "before the fill started");
        log.record(b);
        assert!(!log.since(a, started), "another URL");
        assert!(log.since(b, started));
        log.record(a);
        assert!(log.since(a, started));
        assert!(!log.since(a, log.now()), "a fill started afterwards");
    }

    #[test]
    fn urls_sharing_a_slot_count_as_invalidated_together() {
        let log = Invalidations::new();
        let started = log.now();
        log.record(3);
        assert!(log.since(3 + SLOTS as u64, started));
    }

    #[test]
    fn a_cache_never_invalidated_holds_no_table() {
        let log = Invalidations::new();
        assert!(!log.since(1, log.now()));
        assert!(log.slots.get().is_none());
    }
}
