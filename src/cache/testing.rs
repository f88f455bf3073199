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
            .map(|(name, value)| Header {
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
            })
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
