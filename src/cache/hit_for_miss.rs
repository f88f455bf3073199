//! Hit-for-miss marks (Varnish): URLs whose last response could not be
//! shared are fetched by each request on its own for a while, never
//! serialised behind a fill. A crawler marks a new URL on nearly every
//! request, so a mark costs one atomic store and a check one atomic load:
//! the marks live in a fixed table of slots, chosen by the key's 64-bit
//! fingerprint, each holding the fingerprint's top bits and the mark's end.
//! A new mark takes its slot whatever held it, as a CPU cache line does:
//! the table never grows, needs no lock and no eviction. Losing a mark
//! costs little (the next request for that URL leads a fill that lets its
//! followers go when the response cannot be shared), and a check that
//! meets another URL's mark with the same top bits (about once in 2^24
//! lookups of a slot holding a live mark) only fetches that URL alone.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots in the table (a power of two): 512 KiB, made at the first mark,
/// so that a proxy whose responses are all cacheable, or whose cache is
/// off, never holds it.
pub const SLOTS: usize = 1 << 16;

/// Bits of a slot that hold the mark's end, in milliseconds since the
/// table was made (plus one, so that 0 is an empty slot): 2^40 ms is
/// over 34 years.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// A fixed, lossy table of hit-for-miss marks.
pub struct HitForMiss {
    slots: OnceLock<Box<[AtomicU64]>>,
    epoch: Instant,
    ttl: Duration,
}

impl HitForMiss {
    /// An empty table whose marks last `ttl`.
    pub fn new(ttl: Duration) -> HitForMiss {
        HitForMiss {
            slots: OnceLock::new(),
            epoch: Instant::now(),
            ttl,
        }
    }

    /// Whether `fingerprint` is marked and its mark has not expired.
    pub fn is_marked(&self, fingerprint: u64) -> bool {
        let Some(slots) = self.slots.get() else {
            return false;
        };
        let slot = slot(slots, fingerprint).load(Ordering::Relaxed);
        slot != 0 && slot >> TIME_BITS == tag(fingerprint) && slot & TIME_MASK > self.now()
    }

    /// Marks `fingerprint` for the table's time.
    pub fn mark(&self, fingerprint: u64) {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(TIME_MASK);
        let until = self.now().saturating_add(ttl).min(TIME_MASK);
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        slot(slots, fingerprint).store(tag(fingerprint) << TIME_BITS | until, Ordering::Relaxed);
    }

    /// Forgets the mark of `fingerprint`, if its slot holds it.
    pub fn clear(&self, fingerprint: u64) {
        let Some(slots) = self.slots.get() else {
            return;
        };
        let slot = slot(slots, fingerprint);
        let held = slot.load(Ordering::Relaxed);
        if held >> TIME_BITS == tag(fingerprint) {
            // A mark stored meanwhile for another URL stays.
            let _ = slot.compare_exchange(held, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Milliseconds since the table was made, plus one.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(TIME_MASK)
            .saturating_add(1)
            .min(TIME_MASK)
    }
}

/// The slot of `fingerprint`: its low bits pick it (the tag is its top bits).
fn slot(slots: &[AtomicU64], fingerprint: u64) -> &AtomicU64 {
    &slots[(fingerprint as usize) & (SLOTS - 1)]
}

/// The fingerprint's bits a slot keeps.
fn tag(fingerprint: u64) -> u64 {
    fingerprint >> TIME_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_holds_until_it_expires_or_is_cleared() {
        let marks = HitForMiss::new(Duration::from_millis(50));
        let (a, b) = (0xdead_beef_0000_0001, 0x1234_5678_0000_0002);
        marks.mark(a);
        assert!(marks.is_marked(a));
        assert!(!marks.is_marked(b));
        marks.mark(b);
        marks.clear(b);
        assert!(!marks.is_marked(b));
        assert!(marks.is_marked(a), "clearing one URL leaves another");
        let deadline = Instant::now() + Duration::from_secs(5);
        while marks.is_marked(a) {
            assert!(Instant::now() < deadline, "mark never expired");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_new_mark_takes_its_slot_and_another_url_there_is_not_marked() {
        let marks = HitForMiss::new(Duration::from_secs(60));
        // Same slot (low bits), different tags (top bits).
        let (old, new) = (0xaaaa_aa00_0000_0007, 0x5555_5500_0000_0007);
        marks.mark(old);
        marks.mark(new);
        assert!(marks.is_marked(new));
        assert!(!marks.is_marked(old), "the slot holds the newest mark");
        marks.clear(old);
        assert!(
            marks.is_marked(new),
            "clearing a URL whose mark is gone changes nothing"
        );
    }

    #[test]
    fn marks_stay_in_a_fixed_table() {
        let marks = HitForMiss::new(Duration::from_secs(60));
        assert!(
            marks.slots.get().is_none(),
            "no table before the first mark"
        );
        marks.clear(1);
        assert!(!marks.is_marked(1));
        for n in 0..2 * SLOTS as u64 {
            marks.mark(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert_eq!(marks.slots.get().map(|slots| slots.len()), Some(SLOTS));
        let last = (2 * SLOTS as u64 - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        assert!(marks.is_marked(last), "a new mark is kept");
    }
}
