//! The cache as the request path uses it: `lookup` covers lookups,
//! revalidation, eviction, purge and invalidation; `fills` covers fills and
//! collapsed forwarding. Disk cases are in `disk/tests.rs`.

mod fills;
mod lookup;

use std::time::SystemTime;

use crate::cache::testing::request;
use crate::cache::{Cache, Fwd, Lookup};
use crate::http::request::RequestHead;

const MAX_AGE: (&str, &str) = ("cache-control", "max-age=60");

fn get(url: &str) -> RequestHead {
    request("GET", url, &[])
}

fn miss_kind(cache: &Cache, req: &RequestHead) -> Fwd {
    match cache.lookup(req, SystemTime::now()) {
        Lookup::Miss(miss) => miss.kind,
        _ => panic!("expected a miss for {}", req.target),
    }
}

/// Workers share one cache, and each keeps what a lookup gave it for the
/// life of one request.
#[test]
fn the_cache_is_shared_across_worker_threads() {
    fn shared<T: Send + Sync>() {}
    fn owned<T: Send>() {}
    shared::<Cache>();
    shared::<crate::cache::StoredObject>();
    owned::<Lookup>();
    owned::<crate::cache::Filler>();
    owned::<crate::cache::Follower>();
    owned::<crate::cache::BodyReader>();
}

/// The memory tier's object limit is what it can hold: a budget under four
/// times `cache_max_object` leaves one shard, which takes 90% of it.
#[test]
fn the_memory_limit_is_what_the_tier_holds() {
    use crate::cache::CacheConfig;
    let open = |mem_bytes, mem_max_object| {
        Cache::open(CacheConfig {
            mem_bytes,
            mem_max_object,
            ..CacheConfig::default()
        })
        .expect("cache")
    };
    assert_eq!(open(256 << 20, 16 << 20).memory_max_object(), 16 << 20);
    assert_eq!(
        open(1 << 20, 16 << 20).memory_max_object(),
        (1 << 20) * 9 / 10
    );
    assert_eq!(
        open(16 << 20, 16 << 20).memory_max_object(),
        (16 << 20) * 9 / 10
    );
    assert_eq!(open(16 << 20, 1 << 20).memory_max_object(), 1 << 20);
}
