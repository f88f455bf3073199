//! Cache counters for `/metrics`: plain atomics, no locks. The request
//! path counts outcomes through `Cache::record`; the stores count their
//! own evictions, purges and dropped objects. Object and byte gauges per
//! tier are read from the stores themselves (`Cache::tier_usage`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::status::{Fwd, Outcome};

/// Monotonic counters of the cache.
#[derive(Debug, Default)]
pub struct Stats {
    /// Responses served from the cache without the origin.
    pub hits: AtomicU64,
    /// Of those, the ones whose body was sent from a file of the disk tier
    /// (not a copy read back into memory; not a HEAD or a 304).
    pub disk_hits: AtomicU64,
    /// Requests that went to the origin for want of a usable entry.
    pub misses: AtomicU64,
    /// Revalidations the origin answered with 304.
    pub revalidated_not_modified: AtomicU64,
    /// Revalidations the origin answered with a new response.
    pub revalidated_modified: AtomicU64,
    /// Requests served by following another request's fill.
    pub collapsed: AtomicU64,
    /// Stale responses served (max-stale, stale-while-revalidate, stale-if-error).
    pub stale_served: AtomicU64,
    /// Requests that did not use the cache.
    pub bypassed: AtomicU64,
    /// Body bytes written to clients from the cache (hits and followers).
    pub bytes_served: AtomicU64,
    /// Objects stored by fills (both tiers count one store once).
    pub stored: AtomicU64,
    /// Objects evicted from memory to keep its byte budget.
    pub evictions_memory: AtomicU64,
    /// Objects evicted from disk to keep its byte budget.
    pub evictions_disk: AtomicU64,
    /// PURGE requests that removed something.
    pub purges: AtomicU64,
    /// URLs invalidated by unsafe methods.
    pub invalidations: AtomicU64,
    /// Fills given up (upstream failed, over a limit, disk error).
    pub fills_abandoned: AtomicU64,
    /// Fills that gave up storing and passed the rest of the body on to
    /// their followers.
    pub fills_passed_on: AtomicU64,
    /// Followers let go for staying a window behind a body passed on.
    pub followers_let_go: AtomicU64,
    /// Disk writes that failed (full disk, I/O error): the object was not stored.
    pub disk_write_errors: AtomicU64,
    /// Disk objects found broken (checksum, length, format) and deleted.
    pub disk_corrupt: AtomicU64,
    /// Disk objects read back against their checksum before their first
    /// use since the process found them.
    pub disk_verified: AtomicU64,
}

/// Objects and bytes held by one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierUsage {
    /// URLs held (each with one or more variants).
    pub urls: u64,
    /// Bytes counted against the tier's budget.
    pub bytes: u64,
    /// The tier's budget.
    pub capacity: u64,
}

impl Stats {
    /// Counts one response by its outcome.
    pub fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Hit { stale, .. } => {
                if *stale {
                    bump(&self.stale_served);
                }
                &self.hits
            }
            Outcome::Forward {
                fwd: Fwd::Bypass, ..
            } => &self.bypassed,
            Outcome::Forward {
                collapsed: true, ..
            } => &self.collapsed,
            Outcome::Forward {
                fwd: Fwd::Stale | Fwd::Request,
                fwd_status: Some(304),
                ..
            } => &self.revalidated_not_modified,
            Outcome::Forward {
                fwd: Fwd::Stale | Fwd::Request,
                fwd_status: Some(_),
                ..
            } => &self.revalidated_modified,
            Outcome::Forward { .. } | Outcome::NotForwarded { .. } => &self.misses,
            Outcome::StaleOnError { .. } => &self.stale_served,
        };
        bump(counter);
    }

    /// Adds body bytes sent to a client from the cache.
    pub fn served_bytes(&self, bytes: u64) {
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_land_in_their_counters() {
        let stats = Stats::default();
        stats.record(&Outcome::Hit {
            ttl: 1,
            stale: false,
            detail: None,
        });
        stats.record(&Outcome::Hit {
            ttl: -1,
            stale: true,
            detail: None,
        });
        let forward = |fwd, fwd_status, collapsed| Outcome::Forward {
            fwd,
            fwd_status,
            stored: false,
            collapsed,
            ttl: None,
            detail: None,
        };
        stats.record(&forward(Fwd::UriMiss, Some(200), false));
        stats.record(&forward(Fwd::UriMiss, Some(200), true));
        stats.record(&forward(Fwd::Stale, Some(304), false));
        stats.record(&forward(Fwd::Stale, Some(200), false));
        stats.record(&forward(Fwd::Bypass, None, false));
        stats.served_bytes(10);
        assert_eq!(read(&stats.hits), 2);
        assert_eq!(read(&stats.stale_served), 1);
        assert_eq!(read(&stats.misses), 1);
        assert_eq!(read(&stats.collapsed), 1);
        assert_eq!(read(&stats.revalidated_not_modified), 1);
        assert_eq!(read(&stats.revalidated_modified), 1);
        assert_eq!(read(&stats.bypassed), 1);
        assert_eq!(read(&stats.bytes_served), 10);
    }
}
