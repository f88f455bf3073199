//! How a usable stored response answers one request: in full, 304 or 412
//! for the client's preconditions (RFC 9110 §13.2.2), 206 or 416 for a
//! range (RFC 9110 §14). Pure: says what to write, writes nothing.

use std::time::SystemTime;

use bytes::Bytes;

use crate::cache::conditional::{self, Precondition};
use crate::cache::object::StoredObject;
use crate::cache::range::{self, RangeAnswer};
use crate::http::request::RequestHead;
use crate::http::response;

/// What to send for a request answered from a stored object. Every head
/// is a status line and headers without the final blank line: the request
/// path appends its own headers (`Via`, `X-Request-Id`, `Cache-Status`,
/// `Connection`) and `\r\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The whole response: `head_block` then `age_line`, then the body
    /// (none for HEAD). `head_block` is shared, not copied.
    Full {
        /// The stored head (`ObjectHead::head_block`).
        head_block: Bytes,
        /// `Age: N\r\n`.
        age_line: String,
    },
    /// Bytes `start..=end` of the stored body after `head` (a 206;
    /// for a stored part, offsets into the part).
    Partial {
        /// Status line and headers, `Content-Range` and `Age` included.
        head: Vec<u8>,
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A head with no body: 304, 412 or 416.
    HeadOnly {
        /// The status.
        status: u16,
        /// Status line and headers.
        head: Vec<u8>,
    },
}

impl Reply {
    /// The status sent.
    pub fn status(&self, object: &StoredObject) -> u16 {
        match self {
            Reply::Full { .. } => object.head.status.as_u16(),
            Reply::Partial { .. } => 206,
            Reply::HeadOnly { status, .. } => *status,
        }
    }
}

/// Whether `object` can answer `request`: a complete response can; a
/// stored part (a 206) only a single range that lies wholly within it
/// (RFC 9111 §3.4).
pub fn covers(object: &StoredObject, request: &RequestHead) -> bool {
    let Some((first, last, total)) = stored_part(object) else {
        return object.head.status != http::StatusCode::PARTIAL_CONTENT;
    };
    matches!(
        range::select(request, 200, &object.head.headers, total),
        RangeAnswer::Partial { start, end } if start >= first && end <= last
    )
}

/// The range a stored part holds: (first, last, total).
fn stored_part(object: &StoredObject) -> Option<(u64, u64, u64)> {
    if object.head.status != http::StatusCode::PARTIAL_CONTENT {
        return None;
    }
    range::content_range(&object.head.headers)
}

/// Plans the answer to `request` from `object`, at `now` (for a stored
/// part, only when `covers` holds).
pub fn plan(object: &StoredObject, request: &RequestHead, now: SystemTime) -> Reply {
    let head = &object.head;
    // Preconditions are for a 2xx answer; one that would be another status
    // (a stored 404) ignores them (RFC 9110 §13.2.1).
    let precondition = if head.status.is_success() {
        conditional::evaluate(request, &head.headers)
    } else {
        Precondition::Proceed
    };
    match precondition {
        Precondition::NotModified => {
            return Reply::HeadOnly {
                status: 304,
                head: head.not_modified_head(now),
            };
        }
        Precondition::Failed => {
            let mut out = Vec::with_capacity(64);
            response::write_status_line(&mut out, 412, "Precondition Failed");
            response::write_header(&mut out, "Content-Length", b"0");
            return Reply::HeadOnly {
                status: 412,
                head: out,
            };
        }
        Precondition::Proceed => {}
    }
    if let Some((first, _, total)) = stored_part(object) {
        // `covers` said the range lies within the part.
        if let RangeAnswer::Partial { start, end } =
            range::select(request, 200, &head.headers, total)
        {
            return Reply::Partial {
                head: head.partial_head(start, end, total, now),
                start: start - first,
                end: end - first,
            };
        }
    }
    match range::select(request, head.status.as_u16(), &head.headers, head.body_len) {
        RangeAnswer::Full => Reply::Full {
            head_block: head.head_block().clone(),
            age_line: head.age_line(now),
        },
        RangeAnswer::Partial { start, end } => Reply::Partial {
            head: head.partial_head(start, end, head.body_len, now),
            start,
            end,
        },
        RangeAnswer::Unsatisfiable => Reply::HeadOnly {
            status: 416,
            head: head.unsatisfiable_head(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{memory_object, request};

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn plain_requests_get_the_shared_head() {
        let object = memory_object(
            "http://h/",
            &[("etag", "\"v\""), ("cache-control", "max-age=60")],
            b"hello",
        );
        let now = object.head.policy.response_time();
        let Reply::Full {
            head_block,
            age_line,
        } = plan(&object, &request("GET", "http://h/", &[]), now)
        else {
            panic!("full reply expected");
        };
        assert_eq!(
            head_block.as_ptr(),
            object.head.head_block().as_ptr(),
            "not copied"
        );
        let head = text(&head_block);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-length: 5\r\n") || head.contains("Content-Length: 5\r\n"),
            "{head}"
        );
        assert_eq!(age_line, "Age: 0\r\n");
    }

    #[test]
    fn conditionals_get_304_with_validators_only() {
        let object = memory_object(
            "http://h/",
            &[
                ("etag", "\"v\""),
                ("cache-control", "max-age=60"),
                ("content-type", "text/plain"),
            ],
            b"hello",
        );
        let now = object.head.policy.response_time();
        let reply = plan(
            &object,
            &request("GET", "http://h/", &[("if-none-match", "\"v\"")]),
            now,
        );
        let Reply::HeadOnly { status: 304, head } = reply else {
            panic!("304 expected, got {reply:?}");
        };
        let head = text(&head);
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(
            head.contains("etag: \"v\"\r\n") && head.contains("cache-control: max-age=60\r\n"),
            "{head}"
        );
        assert!(!head.contains("content-type"), "{head}");
        let reply = plan(
            &object,
            &request("GET", "http://h/", &[("if-match", "\"other\"")]),
            now,
        );
        assert_eq!(reply.status(&object), 412);
    }

    #[test]
    fn ranges_get_206_or_416() {
        let object = memory_object(
            "http://h/",
            &[("cache-control", "max-age=60")],
            b"0123456789",
        );
        let now = object.head.policy.response_time();
        let reply = plan(
            &object,
            &request("GET", "http://h/", &[("range", "bytes=2-4")]),
            now,
        );
        let Reply::Partial {
            head,
            start: 2,
            end: 4,
        } = reply
        else {
            panic!("206 expected, got {reply:?}");
        };
        let head = text(&head);
        assert!(
            head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Content-Range: bytes 2-4/10\r\n")
                && head.contains("Content-Length: 3\r\n"),
            "{head}"
        );
        let reply = plan(
            &object,
            &request("GET", "http://h/", &[("range", "bytes=10-")]),
            now,
        );
        let Reply::HeadOnly { status: 416, head } = reply else {
            panic!("416 expected, got {reply:?}");
        };
        assert!(text(&head).contains("Content-Range: bytes */10\r\n"));
        let reply = plan(
            &object,
            &request("GET", "http://h/", &[("range", "bytes=0-1,4-5")]),
            now,
        );
        assert!(
            matches!(reply, Reply::Full { .. }),
            "several ranges: whole response"
        );
    }
}
