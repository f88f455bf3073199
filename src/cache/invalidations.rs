//! Invalidations that fills in progress must heed: a PURGE, or an unsafe
//! method's success (RFC 9111 §4.4), removes what is stored for a URL, but
//! a fill that started before it would store the response it is receiving
//! when its body ends: content from before the invalidation, back in the
//! cache for its whole freshness lifetime. Each fill notes the count of
//! invalidations when it starts; one that ends after its URL was
//! invalidated stores nothing.
//!
//! The log is a fixed table of slots, each holding the count at the last
//! invalidation of a URL that chose it: no lock, no growth. A URL chooses
//! two slots by its fingerprint, and counts as invalidated only when both
//! moved since its fill started (a counting Bloom filter): an invalidation
//! is never missed, and an invalidation of other URLs costs a fill its
//! store only when they moved both (about once in 460,000 fills while three
//! other URLs are invalidated, where one slot each was once in 1,400).

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
        for slot in chosen(slots, fingerprint) {
            slot.fetch_max(at, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    /// Whether the URL with `fingerprint` may have been invalidated after
    /// `since`. A fill asks after storing: what it stored goes if so.
    pub fn since(&self, fingerprint: u64, since: Since) -> bool {
        fence(Ordering::SeqCst);
        self.slots.get().is_some_and(|slots| {
            chosen(slots, fingerprint)
                .iter()
                .all(|slot| slot.load(Ordering::SeqCst) > since.0)
        })
    }
}

/// The two slots of the URL with `fingerprint`: from its low bits and from
/// its high bits, independent since the fingerprint is a well-mixed hash.
fn chosen(slots: &[AtomicU64], fingerprint: u64) -> [&AtomicU64; 2] {
    let index = |bits: u64| bits as usize & (SLOTS - 1);
    [&slots[index(fingerprint)], &slots[index(fingerprint >> 32)]]
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
    fn urls_sharing_one_slot_are_apart_and_sharing_both_together() {
        let log = Invalidations::new();
        let started = log.now();
        let url = 3 | (5 << 32);
        log.record(url);
        let low_only = 3 | (6 << 32);
        let high_only = 4 | (5 << 32);
        assert!(!log.since(low_only, started), "one slot in common");
        assert!(!log.since(high_only, started), "one slot in common");
        let both = url + SLOTS as u64;
        assert!(log.since(both, started), "both slots in common");
        // Two others that moved one of its slots each also count: the
        // slots cannot tell whose invalidation moved them.
        let later = log.now();
        log.record(3 | (7 << 32));
        log.record(8 | (9 << 32));
        assert!(log.since(3 | (9 << 32), later));
        assert!(!log.since(3 | (10 << 32), later));
    }

    #[test]
    fn a_cache_never_invalidated_holds_no_table() {
        let log = Invalidations::new();
        assert!(!log.since(1, log.now()));
        assert!(log.slots.get().is_none());
    }
}
