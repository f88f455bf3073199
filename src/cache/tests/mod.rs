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
