//! Request ids: the client's own `X-Request-Id` when it is well-formed,
//! else a fresh one, unique within this process and unlikely to repeat
//! across restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::http::body::{MAX_SIZE_DIGITS, lower_hex};
use crate::http::headers::is_valid_request_id;
use crate::http::request::RequestHead;

/// Hands out request ids.
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    /// Ids prefixed by this process's start time and pid.
    pub fn new() -> RequestIds {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seed = started.as_micros() as u64 ^ u64::from(std::process::id()).rotate_left(40);
        RequestIds {
            prefix: format!("{:010x}", seed & 0xff_ffff_ffff),
            next: AtomicU64::new(1),
        }
    }

    /// A fresh id.
    pub fn fresh(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Without `format!`, which cost more than the rest of this
        // function, and this runs for every request.
        let mut digits = [0u8; MAX_SIZE_DIGITS];
        let hex = lower_hex(&mut digits, n);
        let mut id = String::with_capacity(self.prefix.len() + 1 + hex.len());
        id.push_str(&self.prefix);
        id.push('-');
        id.extend(hex.iter().map(|&b| char::from(b)));
        id
    }

    /// The client's `X-Request-Id` if well-formed, else a fresh id.
    pub fn for_request(&self, head: &RequestHead) -> String {
        match head.header("x-request-id") {
            Some(value) if is_valid_request_id(value) => {
                String::from_utf8_lossy(value).into_owned()
            }
            _ => self.fresh(),
        }
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_unique() {
        let ids = RequestIds::new();
        let (a, b) = (ids.fresh(), ids.fresh());
        assert_ne!(a, b);
        assert!(is_valid_request_id(a.as_bytes()), "{a}");
    }

    #[test]
    fn fresh_ids_are_the_prefix_and_the_count_in_hex() {
        let ids = RequestIds::new();
        for n in [0, 1, 9, 10, 15, 16, 255, 256, 0xabc_def, u64::MAX] {
            ids.next.store(n, Ordering::Relaxed);
            assert_eq!(ids.fresh(), format!("{}-{n:x}", ids.prefix));
        }
    }
}
