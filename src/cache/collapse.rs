//! Collapsed forwarding: the table of fills in progress by URL, so that
//! concurrent misses make one upstream request, the hit-for-miss marks
//! (`hit_for_miss`): URLs whose last response could not be shared are
//! fetched by each request on its own for a while, never serialised
//! behind a fill, and the invalidations that fills in progress heed
//! (`invalidations`). All are bounded: fills leave theirs when they end
//! (their `Drop` guarantees it); the marks and invalidations are fixed
//! tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quick_cache::DefaultHashBuilder;

use crate::cache::fill::Fill;
use crate::cache::hit_for_miss::HitForMiss;
use crate::cache::invalidations::{Invalidations, Since};
use crate::cache::key::CacheKey;

/// Room for this many fills at once before the table grows: a table
/// with room to spare takes a fill and lets it go without rehashing.
const FILLS_ROOM: usize = 1024;

/// What a miss does.
pub enum Role {
    /// Fetch, and publish the response in this new fill.
    Lead(Arc<Fill>),
    /// Read the fill another request leads.
    Follow(Arc<Fill>),
    /// Fetch alone: the URL is marked hit-for-miss.
    Alone,
    /// Look again: a fill stored the response after the caller looked and
    /// before it joined.
    Stored,
}

/// Fills in progress and hit-for-miss marks.
pub struct Collapser {
    /// Hashed with the key's own hash (`CacheKey`), not SipHash again.
    fills: Mutex<HashMap<CacheKey, Joinable, DefaultHashBuilder>>,
    /// URLs fetched alone for a while, by fingerprint.
    hit_for_miss: HitForMiss,
    /// Invalidations, for fills that started before them.
    invalidations: Arc<Invalidations>,
}

/// A fill in the table, and when it started (in invalidations counted).
struct Joinable {
    fill: Arc<Fill>,
    started: Since,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Collapser {
    /// Empty tables; marks last `hfm_ttl`.
    pub fn new(hfm_ttl: Duration) -> Collapser {
        Collapser {
            fills: Mutex::new(HashMap::with_capacity_and_hasher(
                FILLS_ROOM,
                DefaultHashBuilder::default(),
            )),
            hit_for_miss: HitForMiss::new(hfm_ttl),
            invalidations: Arc::new(Invalidations::new()),
        }
    }

    /// Joins the fill for `key`, or starts one, or says to go alone.
    /// `stored` says whether the store now holds a response for `key`: a
    /// fill stores its response before it leaves the table, so a caller
    /// that missed just before a fill ended finds it there, and looks
    /// again instead of fetching a second time.
    pub fn join(&self, key: &CacheKey, stored: impl FnOnce() -> bool) -> Role {
        if self.hit_for_miss.is_marked(key.fingerprint()) {
            return Role::Alone;
        }
        let mut fills = lock(&self.fills);
        if let Some(joinable) = fills.get(key) {
            return Role::Follow(Arc::clone(&joinable.fill));
        }
        if stored() {
            return Role::Stored;
        }
        self.start(&mut fills, key)
    }

    /// Joins the revalidation of one variant of `url`, in the table under
    /// `joined` (`CacheKey::of_variant`), or starts one, or says to go
    /// alone (`url` is marked hit-for-miss). `invalidate` removes only the
    /// URL's own fills, so a revalidation that started before an
    /// invalidation of `url` is not joined here but replaced: its answer
    /// may be what the invalidation was meant to drop.
    pub fn join_variant(&self, url: &CacheKey, joined: &CacheKey) -> Role {
        if self.hit_for_miss.is_marked(url.fingerprint()) {
            return Role::Alone;
        }
        let mut fills = lock(&self.fills);
        if let Some(joinable) = fills.get(joined)
            && !self.invalidated_since(url, joinable.started)
        {
            return Role::Follow(Arc::clone(&joinable.fill));
        }
        self.start(&mut fills, joined)
    }

    /// Puts a new fill in the table under `key`, in place of any there.
    fn start(
        &self,
        fills: &mut HashMap<CacheKey, Joinable, DefaultHashBuilder>,
        key: &CacheKey,
    ) -> Role {
        let fill = Fill::new();
        let started = self.invalidations.now();
        let joinable = Joinable {
            fill: Arc::clone(&fill),
            started,
        };
        fills.insert(key.clone(), joinable);
        Role::Lead(fill)
    }

    /// Removes `fill` from the table (if it is still the one for `key`).
    pub fn leave(&self, key: &CacheKey, fill: &Arc<Fill>) {
        let mut fills = lock(&self.fills);
        if fills.get(key).is_some_and(|j| Arc::ptr_eq(&j.fill, fill)) {
            fills.remove(key);
        }
    }

    /// Invalidates `key` (a PURGE, an unsafe method's success), before
    /// what is stored for it is removed: a fill in progress for it leaves
    /// the table, so the next miss fetches afresh instead of following it,
    /// and no fill that started before now stores its response. Returns
    /// whether a fill was in progress.
    pub fn invalidate(&self, key: &CacheKey) -> bool {
        self.invalidations.record(key.fingerprint());
        lock(&self.fills).remove(key).is_some()
    }

    /// The invalidation log, for the disk loader: a file it indexes after
    /// its URL was invalidated may hold what the invalidation dropped.
    pub fn invalidations(&self) -> Arc<Invalidations> {
        Arc::clone(&self.invalidations)
    }

    /// When a fill starting now started, for [`Collapser::invalidated_since`].
    pub fn fill_starts(&self) -> Since {
        self.invalidations.now()
    }

    /// Whether `key` may have been invalidated after `since`.
    pub fn invalidated_since(&self, key: &CacheKey, since: Since) -> bool {
        self.invalidations.since(key.fingerprint(), since)
    }

    /// Fills in progress.
    pub fn fills_in_progress(&self) -> usize {
        lock(&self.fills).len()
    }

    /// Marks `key` hit-for-miss for the configured time.
    pub fn mark_hit_for_miss(&self, key: &CacheKey) {
        self.hit_for_miss.mark(key.fingerprint());
    }

    /// Forgets a hit-for-miss mark (the URL was stored after all, or purged).
    pub fn clear_hit_for_miss(&self, key: &CacheKey) {
        self.hit_for_miss.clear(key.fingerprint());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The store holds nothing.
    fn never() -> bool {
        false
    }

    #[test]
    fn a_miss_that_finds_the_response_stored_meanwhile_looks_again() {
        let table = Collapser::new(Duration::from_secs(60));
        assert!(matches!(table.join(&key("/a"), || true), Role::Stored));
        // Nothing was registered: the next miss leads.
        assert!(matches!(table.join(&key("/a"), never), Role::Lead(_)));
        // A fill in progress is followed without asking the store.
        assert!(matches!(
            table.join(&key("/a"), || panic!("store asked")),
            Role::Follow(_)
        ));
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::from_target(&format!("http://h{path}")).expect("key")
    }

    #[test]
    fn the_first_miss_leads_and_the_next_follow() {
        let table = Collapser::new(Duration::from_secs(60));
        let Role::Lead(fill) = table.join(&key("/a"), never) else {
            panic!("first miss must lead");
        };
        assert!(matches!(table.join(&key("/a"), never), Role::Follow(f) if Arc::ptr_eq(&f, &fill)));
        assert!(matches!(table.join(&key("/b"), never), Role::Lead(_)));
        table.leave(&key("/a"), &fill);
        assert!(matches!(table.join(&key("/a"), never), Role::Lead(_)));
    }

    #[test]
    fn leaving_never_removes_a_newer_fill() {
        let table = Collapser::new(Duration::from_secs(60));
        let Role::Lead(old) = table.join(&key("/a"), never) else {
            panic!("lead");
        };
        table.leave(&key("/a"), &old);
        let Role::Lead(new) = table.join(&key("/a"), never) else {
            panic!("lead");
        };
        table.leave(&key("/a"), &old);
        assert!(matches!(table.join(&key("/a"), never), Role::Follow(f) if Arc::ptr_eq(&f, &new)));
    }

    #[test]
    fn an_invalidated_fill_leaves_the_table_and_may_not_store() {
        let table = Collapser::new(Duration::from_secs(60));
        let started = table.fill_starts();
        let Role::Lead(old) = table.join(&key("/a"), never) else {
            panic!("lead");
        };
        assert!(table.invalidate(&key("/a")));
        assert!(!table.invalidate(&key("/b")), "no fill for /b");
        assert!(table.invalidated_since(&key("/a"), started));
        // The next miss leads a fill of its own, which may store.
        let Role::Lead(new) = table.join(&key("/a"), never) else {
            panic!("the next miss must lead");
        };
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(!table.invalidated_since(&key("/a"), table.fill_starts()));
        table.leave(&key("/a"), &old);
        assert!(matches!(table.join(&key("/a"), never), Role::Follow(f) if Arc::ptr_eq(&f, &new)));
    }

    #[test]
    fn a_variant_revalidation_started_before_an_invalidation_is_not_joined() {
        let table = Collapser::new(Duration::from_secs(60));
        let url = key("/a");
        let joined = CacheKey::from_target("http://h/a#variant-1").expect("key");
        let Role::Lead(old) = table.join_variant(&url, &joined) else {
            panic!("lead");
        };
        assert!(
            matches!(table.join_variant(&url, &joined), Role::Follow(f) if Arc::ptr_eq(&f, &old))
        );
        // Another URL's invalidation changes nothing; this URL's does.
        table.invalidate(&key("/b"));
        assert!(matches!(table.join_variant(&url, &joined), Role::Follow(_)));
        table.invalidate(&url);
        let Role::Lead(new) = table.join_variant(&url, &joined) else {
            panic!("a request after the invalidation must lead a fill of its own");
        };
        assert!(!Arc::ptr_eq(&old, &new));
        table.leave(&joined, &old);
        assert!(
            matches!(table.join_variant(&url, &joined), Role::Follow(f) if Arc::ptr_eq(&f, &new))
        );
        table.leave(&joined, &new);
        assert_eq!(table.fills_in_progress(), 0);
        table.mark_hit_for_miss(&url);
        assert!(matches!(table.join_variant(&url, &joined), Role::Alone));
    }

    #[test]
    fn hit_for_miss_marks_send_requests_alone_until_they_expire() {
        let table = Collapser::new(Duration::from_millis(50));
        table.mark_hit_for_miss(&key("/a"));
        assert!(matches!(table.join(&key("/a"), never), Role::Alone));
        assert!(matches!(table.join(&key("/a"), never), Role::Alone));
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(table.join(&key("/a"), never), Role::Alone) {
            assert!(Instant::now() < deadline, "mark never expired");
            std::thread::sleep(Duration::from_millis(5));
        }
        table.mark_hit_for_miss(&key("/b"));
        table.clear_hit_for_miss(&key("/b"));
        assert!(matches!(table.join(&key("/b"), never), Role::Lead(_)));
    }
}
