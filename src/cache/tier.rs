//! One storage tier's index: URL → its stored variants, under a byte
//! budget kept by `quick_cache` (S3-FIFO-like admission and eviction, with
//! a weighter, no background thread). Used for memory (objects hold their
//! bodies) and for disk (objects point at files, which are deleted when
//! their last object is dropped: see `object::DiskFile`). What an insert
//! pushes out is dropped after the locks are released, so no file is
//! deleted under a lock.
//!
//! A URL's variants are one value, so storing or removing one variant
//! reads the list and writes a new one. Those updates take a lock of the
//! URL's stripe: two at once on one URL (a `gzip` and a `br` client's
//! fills ending together, a PURGE and a store) would otherwise each write
//! the list it read, and the later write would undo the earlier: a variant
//! lost, or a purged or replaced one back. Lookups take no lock.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::cache::object::{ObjectHead, StoredObject};
use crate::cache::stats::{Stats, TierUsage, bump};

/// Most variants kept per URL; storing one more drops the oldest.
pub const MAX_VARIANTS: usize = 16;

/// Locks that serialise updates of a URL's variants, chosen by its hash:
/// enough that two busy URLs rarely share one.
const UPDATE_STRIPES: usize = 64;

/// The variants stored under one URL, most recent last.
pub type Variants = Arc<[Arc<StoredObject>]>;

/// A byte-budgeted map from normalised URL to variants.
pub struct Tier {
    map: Cache<Arc<str>, Variants, ByWeight, DefaultHashBuilder, Evict>,
    /// The budget, as last set.
    capacity: AtomicU64,
    /// Shards of `map`, each with its share of the budget.
    shards: u64,
    /// How `map` weighs an entry.
    weigher: ByWeight,
    /// One of these is held while a URL's list is read and rewritten.
    updates: Box<[Mutex<()>]>,
    stripe_of: DefaultHashBuilder,
}

impl Tier {
    /// A tier of `budget` bytes whose objects are at most `max_object`
    /// bytes; evictions are counted in `stats` under `kind`.
    pub fn new(budget: u64, max_object: u64, stats: Arc<Stats>, kind: TierKind) -> Tier {
        Tier::with_index(budget, max_object, stats, kind, 1)
    }

    /// `new`, for a tier whose objects' index entries (in memory) must
    /// also stay within `budget / index_ratio` bytes: each object weighs
    /// the larger of its bytes and its entry's times `index_ratio`, so the
    /// one budget bounds both (the disk tier's files and its index).
    pub fn with_index(
        budget: u64,
        max_object: u64,
        stats: Arc<Stats>,
        kind: TierKind,
        index_ratio: u64,
    ) -> Tier {
        // quick_cache refuses an entry heavier than about one shard's
        // budget, so shards are sized to hold the largest object 4 times.
        // The disk tier keeps one: its budget shrinks with the file
        // system's free room (`set_capacity`), and so would each shard's
        // share, until large objects pushed each other out of a tier mostly
        // empty. Its lookups are few beside the disk's own work.
        let per_shard = max_object.max(1).saturating_mul(4);
        let shards = match kind {
            TierKind::Disk => 1,
            TierKind::Memory => (budget / per_shard).clamp(1, 64) as usize,
        };
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let items = (budget / (16 * 1024)).clamp(64, 1 << 20) as usize;
        let options = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(budget)
            .shards(shards)
            .build()
            .expect("options are in range: positive shards and items");
        Tier {
            weigher: ByWeight { index_ratio },
            map: Cache::with_options(
                options,
                ByWeight { index_ratio },
                DefaultHashBuilder::default(),
                Evict { stats, kind },
            ),
            capacity: AtomicU64::new(budget),
            shards: shards as u64,
            updates: (0..UPDATE_STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_of: DefaultHashBuilder::default(),
        }
    }

    /// Runs `update` under the lock of `url`'s stripe. What it returns
    /// (what it pushed out or took out) is dropped by the caller, after the
    /// lock is let go: dropping a disk object may delete its file.
    fn updating<R>(&self, url: &str, update: impl FnOnce() -> R) -> R {
        let stripe = self.stripe_of.hash_one(url) as usize % UPDATE_STRIPES;
        // Guards no data of its own: a panic leaves nothing half-done.
        let _stripe = self.updates[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        update()
    }

    /// The variants stored under `url`.
    pub fn get(&self, url: &str) -> Option<Variants> {
        self.map.get(url)
    }

    /// Stores `object`, replacing a variant with the same secondary key.
    pub fn put(&self, object: Arc<StoredObject>) {
        let url = object.head.key.as_str();
        drop(self.updating(url, || self.put_locked(Arc::clone(&object))));
    }

    /// `put`, under the URL's update lock; returns what it pushed out.
    fn put_locked(&self, object: Arc<StoredObject>) -> Evicted {
        let url = object.head.key.as_str();
        let before = self.map.get(url);
        let mut list: Vec<Arc<StoredObject>> = Vec::new();
        for old in before.iter().flat_map(|old| old.iter()) {
            if old.head.variant != object.head.variant {
                list.push(Arc::clone(old));
            } else if old.duplicates_file(&object) {
                // The loader's view of the file a fill has just stored,
                // or the reverse: the file stays, with the new object.
                old.disown_file();
            }
        }
        if list.len() >= MAX_VARIANTS {
            list.remove(0);
        }
        list.push(Arc::clone(&object));
        // A list heavier than a shard holds would be refused whole, every
        // variant with it: the oldest give way instead.
        while list.len() > 1 && self.weigher.of(url.len(), list.iter()) > self.largest() {
            list.remove(0);
        }
        let mut pushed_out = self.replace(url, list);
        // Evicted by another URL's insert meanwhile, the list read holds
        // the last references to what it replaces.
        pushed_out.dropped.extend(before);
        pushed_out
    }

    /// Inserts `list` under `url`. quick_cache reports the value it
    /// replaces as evicted; the request state knows which key is being
    /// replaced, so only true evictions are counted.
    fn replace(&self, url: &str, list: Vec<Arc<StoredObject>>) -> Evicted {
        let key: Arc<str> = Arc::from(url);
        let mut state = Evicted {
            replacing: Some(Arc::clone(&key)),
            dropped: Vec::new(),
        };
        self.map.insert_with_lifecycle(key, list.into(), &mut state);
        state
    }

    /// Stores `object` unless a response for its variant received later
    /// is there (the disk loader must not replace what a fill just stored).
    pub fn put_if_newer(&self, object: Arc<StoredObject>) -> bool {
        let url = object.head.key.as_str();
        let pushed_out = self.updating(url, || {
            let time = |o: &StoredObject| o.head.policy.response_time();
            let list = self.get(url);
            let same_variant = || {
                list.iter()
                    .flat_map(|list| list.iter())
                    .filter(|o| o.head.variant == object.head.variant)
            };
            if same_variant().any(|o| o.duplicates_file(&object)) {
                // A fill stored this very file while the loader was reading
                // the directory: it is indexed already.
                object.disown_file();
                return None;
            }
            let newer_there = same_variant().any(|o| time(o) >= time(&object));
            (!newer_there).then(|| self.put_locked(Arc::clone(&object)))
        });
        // `object`, when not kept, goes after the lock too.
        pushed_out.is_some()
    }

    /// Puts `new` in the place of `old` if the index still holds that very
    /// object (not purged, nor replaced by a newer response meanwhile);
    /// returns whether it did.
    pub fn replace_exact(&self, old: &StoredObject, new: Arc<StoredObject>) -> bool {
        let pushed_out = self.updating(old.head.key.as_str(), || {
            self.holds_exact(old)
                .then(|| self.put_locked(Arc::clone(&new)))
        });
        pushed_out.is_some()
    }

    /// Whether the index holds this very object.
    pub fn holds_exact(&self, object: &StoredObject) -> bool {
        self.get(object.head.key.as_str())
            .is_some_and(|list| list.iter().any(|o| std::ptr::eq(Arc::as_ptr(o), object)))
    }

    /// Removes `object`'s variant, under the URL's update lock; returns
    /// what it took out.
    fn remove_variant_locked(&self, object: &StoredObject) -> Evicted {
        let url = object.head.key.as_str();
        let Some(old) = self.map.get(url) else {
            return Evicted::default();
        };
        let list: Vec<Arc<StoredObject>> = old
            .iter()
            .filter(|o| o.head.variant != object.head.variant)
            .cloned()
            .collect();
        let mut removed = if list.is_empty() {
            Evicted {
                replacing: None,
                dropped: self
                    .map
                    .remove(url)
                    .map(|(_, all)| all)
                    .into_iter()
                    .collect(),
            }
        } else {
            self.replace(url, list)
        };
        // See `put_locked`.
        removed.dropped.push(old);
        removed
    }

    /// Removes `object` if the index still holds this very object (not a
    /// newer one of the same variant); returns whether it did.
    pub fn remove_exact(&self, object: &StoredObject) -> bool {
        let removed = self.updating(object.head.key.as_str(), || {
            self.holds_exact(object)
                .then(|| self.remove_variant_locked(object))
        });
        removed.is_some()
    }

    /// Removes the object stored with `head` (the memory and the disk
    /// copies of one response share it) if the index still holds it, not
    /// a newer response of its variant; returns whether it did.
    pub fn remove_with_head(&self, head: &Arc<ObjectHead>) -> bool {
        let removed = self.updating(head.key.as_str(), || {
            let list = self.get(head.key.as_str())?;
            let found = list.iter().find(|o| Arc::ptr_eq(&o.head, head))?;
            Some(self.remove_variant_locked(found))
        });
        removed.is_some()
    }

    /// Removes every variant of `url`, returning them (to be dropped by
    /// the caller, outside the lock).
    pub fn remove(&self, url: &str) -> Option<Variants> {
        self.updating(url, || self.map.remove(url).map(|(_, variants)| variants))
    }

    /// URLs and bytes held, and the budget.
    pub fn usage(&self) -> TierUsage {
        TierUsage {
            urls: self.map.len() as u64,
            bytes: self.map.weight(),
            capacity: self.capacity.load(Ordering::Relaxed),
        }
    }

    /// The budget.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// The heaviest object the tier takes now: quick_cache refuses an entry
    /// heavier than most of one shard's share of the budget (97%; this
    /// leaves room for the head too). The shards are sized for the largest
    /// object, but a budget set lower (`set_capacity`) shrinks each share.
    pub fn largest(&self) -> u64 {
        self.capacity() / self.shards * 9 / 10
    }

    /// Sets a new budget; going down evicts at once, and what that pushes
    /// out is dropped outside the locks. One caller at a time (the disk
    /// tier's fitting, under its lock).
    pub fn set_capacity(&self, budget: u64) {
        if self.capacity.swap(budget, Ordering::Relaxed) != budget {
            self.map.set_capacity(budget);
        }
    }
}

/// Weighs an entry by the bytes its variants hold, or by their index
/// entries times `index_ratio` where that is more (see `Tier::with_index`).
#[derive(Clone)]
struct ByWeight {
    index_ratio: u64,
}

impl ByWeight {
    /// The weight of `objects` stored under a key of `key_len` bytes.
    fn of<'a>(&self, key_len: usize, objects: impl Iterator<Item = &'a Arc<StoredObject>>) -> u64 {
        let objects: u64 = objects
            .map(|o| {
                o.weight()
                    .max(o.index_weight().saturating_mul(self.index_ratio))
            })
            .sum();
        (key_len as u64).saturating_add(objects).max(1)
    }
}

impl Weighter<Arc<str>, Variants> for ByWeight {
    fn weight(&self, key: &Arc<str>, val: &Variants) -> u64 {
        self.of(key.len(), val.iter())
    }
}

/// Which tier, for counting evictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierKind {
    /// The memory tier.
    Memory,
    /// The disk tier.
    Disk,
}

/// Counts evictions; what is pushed out is dropped with the request state.
#[derive(Clone)]
struct Evict {
    stats: Arc<Stats>,
    kind: TierKind,
}

/// What one operation pushed out, dropped once the shard lock is released
/// (a dropped disk object may delete its file).
#[derive(Default)]
pub struct Evicted {
    /// The key whose value this operation replaces: not an eviction.
    replacing: Option<Arc<str>>,
    dropped: Vec<Variants>,
}

impl Lifecycle<Arc<str>, Variants> for Evict {
    type RequestState = Evicted;

    fn on_evict(&self, state: &mut Evicted, key: Arc<str>, val: Variants) {
        if state.replacing.as_ref() == Some(&key) {
            state.replacing = None;
        } else {
            bump(match self.kind {
                TierKind::Memory => &self.stats.evictions_memory,
                TierKind::Disk => &self.stats.evictions_disk,
            });
        }
        state.dropped.push(val);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{CacheKey, Variant, VaryNames};
    use crate::cache::object::{Body, ObjectHead};
    use crate::cache::policy::Policy;
    use crate::cache::stats::Stats;
    use crate::cache::testing::{headers, request};
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::SystemTime;

    const URL: &str = "http://h/index";

    /// The variant of `URL` for clients sending `Accept-Encoding: coding`.
    fn variant(coding: &str) -> Arc<StoredObject> {
        sized_variant(coding, 1)
    }

    /// `variant`, with a body of `len` bytes.
    fn sized_variant(coding: &str, len: usize) -> Arc<StoredObject> {
        let key = CacheKey::from_target(URL).expect("key");
        let req = request("GET", URL, &[("accept-encoding", coding)]);
        let response = headers(&[("cache-control", "max-age=60"), ("vary", "accept-encoding")]);
        let policy = Policy::new(
            &key.uri().expect("uri"),
            &req,
            StatusCode::OK,
            &response,
            SystemTime::now(),
        );
        let variant = Variant::capture(&VaryNames::of_response(&response), &req);
        let head = ObjectHead::new(key, variant, StatusCode::OK, response, policy, len as u64);
        Arc::new(StoredObject::new(
            Arc::new(head),
            Body::Memory(Box::new([Bytes::from(vec![b'x'; len])])),
        ))
    }

    #[test]
    fn variants_heavier_than_a_shard_push_out_the_oldest_not_all() {
        // One shard holds 90% of 4 MiB: three 1 MiB variants, not four.
        let tier = Tier::new(
            4 << 20,
            1 << 20,
            Arc::new(Stats::default()),
            TierKind::Memory,
        );
        for n in 0..4 {
            tier.put(sized_variant(&format!("coding-{n}"), 1 << 20));
        }
        let kept = tier.get(URL).expect("the URL's variants");
        assert_eq!(kept.len(), 3);
        let first = request("GET", URL, &[("accept-encoding", "coding-0")]);
        assert!(kept.iter().all(|o| !o.head.variant.matches(&first)));
    }

    fn tier() -> Tier {
        Tier::new(
            64 << 20,
            1 << 20,
            Arc::new(Stats::default()),
            TierKind::Memory,
        )
    }

    #[test]
    fn variants_stored_at_once_on_one_url_are_all_kept() {
        let tier = tier();
        let codings: Vec<String> = (0..8).map(|n| format!("coding-{n}")).collect();
        for _ in 0..100 {
            tier.remove(URL);
            let start = std::sync::Barrier::new(codings.len());
            std::thread::scope(|scope| {
                for coding in &codings {
                    let (tier, start) = (&tier, &start);
                    scope.spawn(move || {
                        let object = variant(coding);
                        start.wait();
                        tier.put(object);
                    });
                }
            });
            let stored = tier.get(URL).expect("stored");
            assert_eq!(stored.len(), codings.len(), "a variant was lost");
        }
    }

    #[test]
    fn removing_a_stored_response_spares_a_newer_one_of_its_variant() {
        let tier = tier();
        let old = variant("gzip");
        tier.put(Arc::clone(&old));
        let newer = variant("gzip");
        tier.put(Arc::clone(&newer));
        assert!(!tier.remove_exact(&old));
        assert!(!tier.remove_with_head(&old.head));
        assert!(tier.holds_exact(&newer), "the newer response went too");
        assert!(tier.remove_with_head(&newer.head));
        assert!(tier.get(URL).is_none());
    }

    #[test]
    fn a_removed_variant_stays_removed_while_others_are_stored() {
        let tier = tier();
        for _ in 0..200 {
            let gone = variant("gzip");
            tier.put(Arc::clone(&gone));
            let (br, start) = (variant("br"), std::sync::Barrier::new(2));
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    start.wait();
                    tier.put(br);
                });
                scope.spawn(|| {
                    start.wait();
                    tier.remove_exact(&gone);
                });
            });
            let stored = tier.get(URL).expect("br is stored");
            assert!(
                stored.iter().all(|o| o.head.variant != gone.head.variant),
                "the removed variant came back"
            );
        }
    }
}
