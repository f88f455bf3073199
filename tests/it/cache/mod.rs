//! The HTTP cache end to end, through curl and raw sockets, against
//! origins the tests script: what is stored and served again
//! (`semantics`), stale entries (`stale`), concurrent misses and fills
//! (`collapse`), the disk tier across restarts and crashes, and memory
//! bounds (`disk`), what one client must not make another's answer
//! (`poisoning`), and how the cache reports itself: Cache-Status, the
//! access log, `/metrics`, PURGE (`reporting`).

mod collapse;
mod disk;
mod poisoning;
mod reporting;
mod semantics;
mod stale;

use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::support::{CurlReply, Origin, OriginRequest, Reply, curl};

/// Generous limit for anything that should take milliseconds.
const LIMIT: Duration = Duration::from_secs(30);

/// A 200 with `body` and these headers (Content-Length added by the origin).
fn reply_with(body: &str, headers: &[(&str, &str)]) -> Reply {
    Reply::Full {
        status: 200,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// `body` with `headers`, or, when the request was `validated`, a 304
/// with the same headers.
fn full_or_not_modified(validated: bool, headers: Vec<(String, String)>, body: &str) -> Reply {
    Reply::Full {
        status: if validated { 304 } else { 200 },
        headers,
        body: if validated {
            Vec::new()
        } else {
            body.as_bytes().to_vec()
        },
    }
}

/// An origin answering every request with `body`, fresh for an hour.
fn fresh_origin(body: &'static str) -> Origin {
    Origin::start(move |_| {
        reply_with(
            body,
            &[
                ("Content-Type", "text/plain"),
                ("Cache-Control", "max-age=3600"),
            ],
        )
    })
}

/// An origin that sends `body` with `headers` and `ETag: "v1"`, and
/// answers a revalidation of it (`If-None-Match: "v1"`) 304 with
/// `not_modified` and the same `ETag`.
fn revalidating_origin(
    body: &'static str,
    headers: &'static [(&'static str, &'static str)],
    not_modified: &'static [(&'static str, &'static str)],
) -> Origin {
    Origin::start(move |request| {
        if request.header("if-none-match") == Some("\"v1\"") {
            let mut headers = vec![("ETag".to_string(), "\"v1\"".to_string())];
            headers.extend(
                not_modified
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string())),
            );
            return Reply::Full {
                status: 304,
                headers,
                body: Vec::new(),
            };
        }
        let mut all = vec![("ETag", "\"v1\"")];
        all.extend_from_slice(headers);
        reply_with(body, &all)
    })
}

/// An origin answering every request with `body`, fresh for an hour.
fn fresh_bytes_origin(body: Vec<u8>) -> Origin {
    Origin::start(move |_| Reply::Full {
        status: 200,
        headers: vec![("Cache-Control".into(), "max-age=3600".into())],
        body: body.clone(),
    })
}

/// `curl -x proxy url` with extra arguments.
fn get(proxy: SocketAddr, url: &str, extra: &[&str]) -> CurlReply {
    curl(proxy, url, extra)
}

/// `n` clients asking for `url` through the proxy at once, each on a
/// thread of its own; join them for their replies.
fn concurrent_gets(proxy: SocketAddr, url: &str, n: usize) -> Vec<JoinHandle<CurlReply>> {
    (0..n)
        .map(|_| {
            let url = url.to_string();
            thread::spawn(move || get(proxy, &url, &[]))
        })
        .collect()
}

/// The `Cache-Status` of a reply, or a panic naming the reply.
fn cache_status(reply: &CurlReply) -> String {
    reply
        .header("cache-status")
        .unwrap_or_else(|| panic!("no Cache-Status in {reply:?}"))
        .to_string()
}

/// Requests the origin received for `path`.
fn requests_for(origin: &Origin, path: &str) -> Vec<OriginRequest> {
    origin
        .requests()
        .into_iter()
        .filter(|r| r.target == path)
        .collect()
}
