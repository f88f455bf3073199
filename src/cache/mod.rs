//! The HTTP cache: an RFC 9111 shared cache in memory and, optionally, on
//! disk. It owns keys (`key`, with `normal` for targets that are their own
//! key and `language` for `Accept-Language` variants), policy (`policy`,
//! from the `http-cache-semantics` crate, reading headers as `normalise`
//! prepares them), what is stored where (`admission`), the stored objects
//! and their readers (`object`, `reader`), the two stores (`tier`,
//! `disk`), fills that followers read while they are written (`fill`,
//! `filler`, `collapse`) and the URLs not worth waiting for
//! (`hit_for_miss`), what unsafe methods do (`unsafe_methods`), the
//! pure helpers that answer from a stored object (`reply`, `conditional`,
//! `range`) and the outcome and its counters (`status`, `stats`).
//! It owns no sockets and never calls the upstream: the request path does
//! both, and calls the cache in between.
//!
//! # How the request path calls it
//!
//! One `Cache` is shared by all workers (`Cache` is a cheap clone). For
//! each forwarded request `head` (absolute-form), with `now =
//! SystemTime::now()`, after the access checks and before the upstream:
//!
//! 1. `cache.lookup(&head, now)` returns a `Lookup`:
//!    - `Hit(hit)` (fresh; or stale allowed by `max-stale` or
//!      `stale-while-revalidate`): `reply::plan(&hit.object, &head, now)`
//!      says what to send. For `Reply::Full`, write `head_block`,
//!      `age_line`, the proxy's own headers (`Via`, `X-Request-Id`,
//!      `Cache-Status: hit.outcome(now).header_value()`, `Connection`) and
//!      `\r\n`, then the body: `hit.object.memory_chunks()` go into the same
//!      vectored write; a disk object is read with
//!      `hit.object.reader(0, len)` and `next_chunk` until `None` (an `Err`
//!      means: close the connection short of the length). HEAD sends no
//!      body. `Reply::Partial` reads `reader(start, end + 1)`;
//!      `Reply::HeadOnly` (304, 412, 416) sends no body. If
//!      `hit.revalidate` is set, after answering, revalidate in the same
//!      worker as for `Stale` below, with no client waiting: a 304 goes to
//!      `cache.refresh`, a 200 to `cache.fill_alone(&head, key)`.
//!    - `Stale(stale)`: send the request upstream with `stale.validators`
//!      added and the client's own `If-None-Match` / `If-Modified-Since`
//!      removed (ours replace them; `Range` may stay, a 206 is simply not
//!      stored). On a 304, `cache.refresh(&stale.object, &head, &parts,
//!      now)` gives the updated object: call `stale.filler.refreshed()`,
//!      then answer from it as from a hit, with the outcome `Forward { fwd:
//!      stale.fwd(), fwd_status: Some(304), .. }`; `None` (the 304 names
//!      other validators) means fetch again without validators. On any
//!      other response, use `stale.filler` exactly as a `Fill` miss below.
//!      If the upstream fails and
//!      `stale.object.head.policy.may_serve_on_error(&head, failure, now)`
//!      (`OriginFailure::Unreachable` for no answer, `ErrorStatus` for a
//!      500/502/503/504), call `stale.filler.origin_failed(status)` and
//!      answer from the stale object instead (`stale-if-error`, or a
//!      disconnected origin: RFC 9111 §4.2.4). The filler may have
//!      followers: plain GETs of the same entry that wait on this
//!      revalidation (`Miss` of kind `Fwd::Stale` below).
//!    - `Miss(miss)`, `miss.kind` being `Fwd::UriMiss` or `Fwd::VaryMiss`,
//!      or `Fwd::Stale` for a follower of a stale entry's revalidation:
//!      - `MissRole::Fill(filler)`: fetch upstream as today; give the
//!        response head to `filler.response_head(status, &headers, now)`
//!        (its `Err` says why it is not stored: a Cache-Status `detail`),
//!        every body piece to `filler.body(bytes)` as it is relayed, and
//!        call `filler.finish()` once the body is complete (`Ok` means
//!        `stored`). On an upstream failure just drop the filler: its
//!        followers are cut short and nothing is stored. What the client
//!        gets is exactly what it gets without a cache.
//!      - `MissRole::Follow(follower)`: `follower.follow(&head)` waits
//!        (at most `collapse_wait`) for the fill's head.
//!        `Following::Stream { head, reader }`: write `head.head_block`,
//!        `head.age_line(now)`, the proxy's headers (chunked framing when
//!        `head.declared_len` is `None`), then loop on `reader.next_chunk()`;
//!        an `Err` means the fill failed: close the connection short of the
//!        declared length or without the last chunk. Outcome: `Forward {
//!        collapsed: true, .. }`. `Following::Released { filler, .. }`:
//!        fetch on its own with that filler, as a `Fill` miss; but for a
//!        follower of a revalidation, when `following.looks_again()` says
//!        so, look up again with `cache.lookup_alone` (a fresh hit after a
//!        304; for `Release::OriginFailed`, a stale entry answers where
//!        `may_serve_on_error` allows, else it is revalidated alone).
//!      - `MissRole::NoStore(why)`: forward untouched, store nothing
//!        (HEAD, request `no-store`, `If-Range`). A range request fills
//!        the URL's partial key alone: its 206 is kept for later ranges
//!        within it. Other client preconditions fill alone: a 200 is kept,
//!        a 304 or 412 is that client's.
//!    - `OnlyIfCached`: answer 504 (RFC 9111 §5.2.1.7).
//!    - `Bypass(why)`: forward untouched (Cache-Status `fwd=bypass`).
//!      After the response to an unsafe method, call
//!      `cache.invalidate(&head, status, &headers)`.
//! 2. Every response gets `Cache-Status: {outcome.header_value()}`; the
//!    access log gets `outcome.log_word()`; `cache.stats().record(&outcome)`
//!    counts it, and `cache.stats().served_bytes(n)` the body bytes sent from
//!    the cache (hits and followers).
//! 3. `PURGE <url>` from an allowed client: `cache.purge(url)`, 200 for
//!    `Ok(true)`, 404 for `Ok(false)`, 400 for `Err`.
//! 4. `/metrics`: the counters in `cache.stats()`, and the gauges
//!    `cache.usage()` (URLs, bytes and budget per tier),
//!    `cache.fills_in_progress()` and `cache.inflight_bytes()`.
//!
//! A hit costs one URL parse, one sharded-map lookup, one comparison of
//! times (for requests without Cache-Control), and a write of shared
//! buffers: nothing proportional to the object is allocated or copied, and
//! no lock is held while writing.
//!
//! # Memory
//!
//! Stored objects are bounded by `mem_bytes`; fills in progress hold at
//! most a quarter of it more (`inflight_bytes`), past which they spill to
//! their disk file or give up storing. Disk objects are never held whole.

#![warn(missing_docs)]

pub mod admission;
mod collapse;
pub mod conditional;
pub mod disk;
pub mod fill;
pub mod filler;
mod hit_for_miss;
mod invalidations;
pub mod key;
mod language;
mod lookup;
mod normal;
mod normalise;
pub mod object;
pub mod pages;
pub mod policy;
pub mod range;
pub mod reader;
pub mod reply;
pub mod stats;
pub mod status;
mod tier;
mod unsafe_methods;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use admission::NotStored;
pub use fill::{FillFailure, FillHead, Release};
pub use filler::Filler;
pub use key::{CacheKey, KeyError};
pub use lookup::{Bypass, Follower, Following, Hit, Lookup, Miss, MissRole, NoStore, Stale};
pub use object::StoredObject;
pub use policy::OriginFailure;
pub use reader::BodyReader;
pub use reply::Reply;
pub use stats::{Stats, TierUsage};
pub use status::{Fwd, Outcome};

use collapse::Collapser;
use disk::DiskStore;
use pages::PageFiles;
use tier::{Tier, TierKind};

/// Memory the disk tier's index may take, for a memory budget of
/// `mem_bytes`: a quarter of it more (as fills in progress may take a
/// quarter more). An entry is its object's head, about 2 KiB plus the
/// headers.
pub fn disk_index_budget(mem_bytes: u64) -> u64 {
    (mem_bytes / 4).max(1)
}

/// What the cache may hold. Every size is a hard bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Memory budget in bytes; 0 turns the whole cache off. Default: 256 MiB.
    pub mem_bytes: u64,
    /// Largest object kept in memory. Default: 16 MiB.
    pub mem_max_object: u64,
    /// Directory of the disk tier, none by default.
    pub dir: Option<PathBuf>,
    /// Disk budget in bytes. Default: 10 GiB.
    pub dir_bytes: u64,
    /// Largest object kept on disk. Default: 1 GiB.
    pub dir_max_object: u64,
    /// Longest a follower waits for a fill's head, and for each next piece
    /// of its body (set it to the upstream timeout). Default: 60 s.
    pub collapse_wait: Duration,
    /// How long a URL whose response could not be shared is fetched
    /// without collapsing (Varnish's hit-for-miss). Default: 120 s.
    pub hit_for_miss: Duration,
    /// Most bodies the memory tier keeps in memory files at once, for
    /// hits sent with `sendfile` (each holds a file descriptor; see
    /// `pages`). Default: 0, none.
    pub page_files: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mem_bytes: 256 << 20,
            mem_max_object: 16 << 20,
            dir: None,
            dir_bytes: 10 << 30,
            dir_max_object: 1 << 30,
            collapse_wait: Duration::from_secs(60),
            hit_for_miss: Duration::from_secs(120),
            page_files: 0,
        }
    }
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A configuration value that cannot work.
    #[error("cache configuration: {0}")]
    Config(&'static str),
    /// The disk tier's directory cannot be created or read.
    #[error("cache directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the disk tier's directory.
    #[error("cache directory {dir} is in use by another process{}; give each its own cache_dir", owner.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The process id its lock file names, when it names one.
        owner: Option<u32>,
    },
    /// The index loader thread could not start.
    #[error("cannot start the cache loader: {0}")]
    Loader(#[source] std::io::Error),
    /// Reading a stored body failed.
    #[error("cache read failed: {0}")]
    Io(#[from] std::io::Error),
    /// A disk object failed its checks (it has been deleted).
    #[error("broken cache file {path}: {reason}")]
    Corrupt {
        /// The file (deleted).
        path: PathBuf,
        /// Which check failed.
        reason: &'static str,
    },
    /// A fill being followed failed.
    #[error("{0}")]
    FillFailed(#[from] FillFailure),
}

/// State shared by the cache, its fillers and followers.
pub(crate) struct Shared {
    config: CacheConfig,
    /// `None` when the cache is off.
    memory: Option<Tier>,
    disk: Option<Arc<DiskStore>>,
    collapser: Collapser,
    stats: Arc<Stats>,
    /// Body bytes held in memory by fills in progress, and their bound: a
    /// quarter of the memory budget (at least one largest object).
    inflight: AtomicU64,
    inflight_limit: u64,
    /// The bound of bodies in memory files.
    pages: Arc<PageFiles>,
}

/// The cache. Clones share one cache.
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
}

impl Cache {
    /// Opens the cache: with a directory, its index is rebuilt in a
    /// background thread while the cache already serves.
    ///
    /// # Errors
    /// `Config` for impossible sizes, `Dir` or `Loader` when the disk tier
    /// cannot start.
    pub fn open(config: CacheConfig) -> Result<Cache, CacheError> {
        let stats = Arc::new(Stats::default());
        let enabled = config.mem_bytes > 0;
        if enabled && config.mem_max_object == 0 {
            return Err(CacheError::Config(
                "the memory object limit must be above 0",
            ));
        }
        let memory = enabled.then(|| {
            Tier::new(
                config.mem_bytes,
                config.mem_max_object.min(config.mem_bytes),
                Arc::clone(&stats),
                TierKind::Memory,
            )
        });
        let collapser = Collapser::new(config.hit_for_miss);
        let disk = match (&config.dir, enabled) {
            (Some(dir), true) => {
                if config.dir_bytes == 0 || config.dir_max_object == 0 {
                    return Err(CacheError::Config(
                        "the disk budget and object limit must be above 0",
                    ));
                }
                let max = config.dir_max_object.min(config.dir_bytes);
                let store = Arc::new(DiskStore::open(
                    dir,
                    config.dir_bytes,
                    max,
                    disk_index_budget(config.mem_bytes),
                    Arc::clone(&stats),
                )?);
                store.start_loader(collapser.invalidations())?;
                Some(store)
            }
            _ => None,
        };
        let mut config = config;
        // Within what the tier takes: a budget under four times the limit
        // leaves one shard, which holds at most 90% of it.
        config.mem_max_object = memory.as_ref().map_or(config.mem_max_object, |tier| {
            config.mem_max_object.min(tier.largest())
        });
        Ok(Cache {
            shared: Arc::new(Shared {
                collapser,
                inflight: AtomicU64::new(0),
                inflight_limit: (config.mem_bytes / 4).max(config.mem_max_object),
                pages: PageFiles::new(config.page_files),
                config,
                memory,
                disk,
                stats,
            }),
        })
    }

    /// Whether the cache is on (`mem_bytes > 0`).
    pub fn is_enabled(&self) -> bool {
        self.shared.memory.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Objects and bytes in memory, and on disk when there is a disk tier.
    pub fn usage(&self) -> (TierUsage, Option<TierUsage>) {
        let memory = self
            .shared
            .memory
            .as_ref()
            .map(Tier::usage)
            .unwrap_or_default();
        (memory, self.shared.disk.as_ref().map(|d| d.tier.usage()))
    }

    /// The largest response the memory tier takes (`cache_max_object`,
    /// within what its budget allows).
    pub fn memory_max_object(&self) -> u64 {
        self.shared.config.mem_max_object
    }

    /// The largest response the disk tier takes now (`cache_dir_max_object`,
    /// within what its budget allows); `None` without a disk tier.
    pub fn disk_max_object(&self) -> Option<u64> {
        self.shared.disk.as_ref().map(|disk| disk.max_object())
    }

    /// Fills in progress that followers can join (a gauge).
    pub fn fills_in_progress(&self) -> usize {
        self.shared.collapser.fills_in_progress()
    }

    /// Body bytes held in memory by fills in progress (a gauge).
    pub fn inflight_bytes(&self) -> u64 {
        self.shared
            .inflight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stored bodies held in memory files now (a gauge: each holds a file
    /// descriptor).
    pub fn memory_files(&self) -> usize {
        self.shared.pages.live()
    }

    /// Whether the disk index is complete (true without a disk tier).
    pub fn is_loaded(&self) -> bool {
        self.shared.disk.as_ref().is_none_or(|d| d.is_loaded())
    }

    /// Waits up to `timeout` for the disk index; returns whether it is complete.
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        self.shared
            .disk
            .as_ref()
            .is_none_or(|d| d.wait_loaded(timeout))
    }

    /// Removes every variant of `target` from both tiers (PURGE); returns
    /// whether anything was there.
    ///
    /// # Errors
    /// `KeyError` when `target` is not an http(s) absolute URL.
    pub fn purge(&self, target: &str) -> Result<bool, KeyError> {
        let key = CacheKey::from_target(target)?;
        let found = self.remove(&key);
        if found {
            stats::bump(&self.shared.stats.purges);
        }
        Ok(found)
    }

    /// Removes every variant of `key` from both tiers, and its stored
    /// parts; a fill in progress for it will not store. Returns whether
    /// anything was stored or being filled.
    pub(crate) fn remove(&self, key: &CacheKey) -> bool {
        let collapser = &self.shared.collapser;
        let filling = collapser.invalidate(key) | collapser.invalidate(&key.partial());
        let parts = self
            .shared
            .memory
            .as_ref()
            .and_then(|m| m.remove(key.partial().as_str()))
            .is_some();
        self.shared.collapser.clear_hit_for_miss(key);
        // Disk first: a disk object being read into memory now is either
        // seen gone by its reader, or its copy is put before the memory
        // tier is emptied (`lookup::load_from_disk`). Dropping the removed
        // disk objects deletes their files.
        let on_disk = self
            .shared
            .disk
            .as_ref()
            .and_then(|d| d.tier.remove(key.as_str()));
        let in_memory = self
            .shared
            .memory
            .as_ref()
            .and_then(|m| m.remove(key.as_str()))
            .is_some();
        in_memory || on_disk.is_some() || parts || filling
    }
}
