//! Builders shared by the cache's unit tests.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::cache::key::{CacheKey, Variant, VaryNames};
use crate::cache::object::{Body, ObjectHead, StoredObject};
use crate::cache::policy::Policy;
use crate::http::request::{Header, RequestHead, Version};

/// A request head as the acceptor would parse it.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version: Version::Http11,
        headers: headers
            .iter()
            .map(|(name, value)| Header::new(name, value.as_bytes()))
            .collect(),
    }
}

/// A header map, repeats kept.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

/// A 200 stored in memory for a plain GET of `url`, received now.
pub fn memory_object(url: &str, response: &[(&str, &str)], body: &[u8]) -> Arc<StoredObject> {
    let key = CacheKey::from_target(url).expect("test url");
    let req = request("GET", url, &[]);
    let headers = headers(response);
    let now = SystemTime::now();
    let policy = Policy::new(
        &key.uri().expect("uri"),
        &req,
        StatusCode::OK,
        &headers,
        now,
    );
    let variant = Variant::capture(&VaryNames::of_response(&headers), &req);
    let head = ObjectHead::new(
        key,
        variant,
        StatusCode::OK,
        headers,
        policy,
        body.len() as u64,
    );
    Arc::new(StoredObject::new(
        Arc::new(head),
        Body::Memory(Box::new([Bytes::copy_from_slice(body)])),
    ))
}

/// A small cache in memory only, or with `dir` as its disk tier; bodies of
/// 32 to 128 KiB in memory go to memory files, as in the server.
pub fn small_cache(
    mem_bytes: u64,
    mem_max_object: u64,
    dir: Option<&std::path::Path>,
) -> crate::cache::Cache {
    crate::cache::Cache::open(crate::cache::CacheConfig {
        mem_bytes,
        mem_max_object,
        dir: dir.map(std::path::Path::to_path_buf),
        dir_bytes: 64 << 20,
        dir_max_object: 16 << 20,
        collapse_wait: std::time::Duration::from_secs(10),
        hit_for_miss: std::time::Duration::from_secs(60),
        page_files: 64,
    })
    .expect("cache opens")
}

/// The filler of a miss for `req`, which must lead a fill.
pub fn lead(cache: &crate::cache::Cache, req: &RequestHead) -> crate::cache::Filler {
    match cache.lookup(req, SystemTime::now()) {
        crate::cache::Lookup::Miss(crate::cache::Miss {
            role: crate::cache::MissRole::Fill(filler),
            ..
        }) => filler,
        _ => panic!("expected a miss that fills for {}", req.target),
    }
}

/// The follower `req` becomes while another request fills its URL.
pub fn follow(cache: &crate::cache::Cache, req: &RequestHead) -> crate::cache::Follower {
    match cache.lookup(req, SystemTime::now()) {
        crate::cache::Lookup::Miss(crate::cache::Miss {
            role: crate::cache::MissRole::Follow(follower),
            ..
        }) => follower,
        _ => panic!("expected a miss that follows a fill for {}", req.target),
    }
}

/// Gives `filler` the head of a 200 with `response` headers, now, as the
/// request path does when the origin answers `req`.
pub fn ok_head(
    filler: &mut crate::cache::Filler,
    req: &RequestHead,
    response: &[(&str, &str)],
) -> Result<(), crate::cache::NotStored> {
    filler.response_head(req, StatusCode::OK, &headers(response), SystemTime::now())
}

/// Runs a whole fill of a 200 with `response` headers and `body` in
/// `pieces`, as the request path would on a miss, or on a refetch when
/// something is stored already.
pub fn store(
    cache: &crate::cache::Cache,
    req: &RequestHead,
    response: &[(&str, &str)],
    body: &[u8],
    pieces: usize,
) -> Result<Arc<StoredObject>, crate::cache::NotStored> {
    let mut filler = match cache.lookup(req, SystemTime::now()) {
        crate::cache::Lookup::Miss(crate::cache::Miss {
            role: crate::cache::MissRole::Fill(filler),
            ..
        }) => filler,
        _ => {
            let key = CacheKey::from_target(&req.target).expect("test url");
            cache.fill_alone(key)
        }
    };
    filler.response_head(req, StatusCode::OK, &headers(response), SystemTime::now())?;
    for piece in body.chunks(body.len().div_ceil(pieces.max(1)).max(1)) {
        filler.body(piece);
    }
    filler.finish()
}

/// Reads a whole body from a reader.
pub fn read_body(
    reader: &mut crate::cache::BodyReader,
) -> Result<Vec<u8>, crate::cache::CacheError> {
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The hit for `req`, or a panic naming what came instead.
pub fn expect_hit(cache: &crate::cache::Cache, req: &RequestHead) -> crate::cache::Hit {
    match cache.lookup(req, SystemTime::now()) {
        crate::cache::Lookup::Hit(hit) => hit,
        crate::cache::Lookup::Miss(miss) => panic!("miss ({:?}) for {}", miss.kind, req.target),
        crate::cache::Lookup::Stale(_) => panic!("stale for {}", req.target),
        crate::cache::Lookup::OnlyIfCached => panic!("only-if-cached for {}", req.target),
        crate::cache::Lookup::Bypass(why) => panic!("bypass {why:?} for {}", req.target),
    }
}
