//! `parse_head` on arbitrary bytes under small, input-chosen limits.
//!
//! Input layout: byte 0 picks `max_header_bytes`, byte 1 picks
//! `max_url_bytes`, the rest is what the client sent. Besides "no panic" it
//! checks that a complete head is consistent with the limits and the bytes,
//! and that feeding the same bytes in pieces never changes the verdict: every
//! prefix is `Partial`, or gives the same answer as the whole.

#![no_main]

use std::mem::discriminant;

use fetchproxy::error::ProxyError;
use fetchproxy::http::request::{BodyFraming, HeadLimits, Parsed, RequestHead, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[h, u], buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limits = HeadLimits {
        max_header_bytes: 16 + usize::from(h) * 16,
        max_url_bytes: 1 + usize::from(u) * 8,
    };
    let whole = parse_head(buf, &limits);
    if let Ok(Parsed::Complete { head, head_len }) = &whole {
        check_complete(buf, &limits, head, *head_len);
    }
    for end in 0..buf.len() {
        let part = parse_head(&buf[..end], &limits);
        match (&part, &whole) {
            (Ok(Parsed::Partial), _) => {}
            (Err(p), Err(w)) => assert_eq!(
                discriminant(p),
                discriminant(w),
                "prefix of {end} bytes gives {p:?}, the whole {w:?}"
            ),
            (
                Ok(Parsed::Complete {
                    head: a,
                    head_len: la,
                }),
                Ok(Parsed::Complete {
                    head: b,
                    head_len: lb,
                }),
            ) => {
                assert_eq!((a, la), (b, lb), "prefix of {end} bytes");
            }
            _ => panic!("prefix of {end} bytes gives {part:?}, the whole {whole:?}"),
        }
    }
});

/// What must hold of a head that parsed.
fn check_complete(buf: &[u8], limits: &HeadLimits, head: &RequestHead, head_len: usize) {
    assert!(head_len <= buf.len(), "head_len {head_len} > {}", buf.len());
    assert!(head_len <= limits.max_header_bytes);
    assert!(head.target.len() <= limits.max_url_bytes);
    assert!(buf[..head_len].ends_with(b"\n"), "head ends at a line end");
    assert!(!head.method.is_empty() && head.method.bytes().all(is_token_byte));
    assert!(!head.target.is_empty() && head.target.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    for h in &head.headers {
        assert!(
            !h.name().is_empty() && h.name().bytes().all(is_token_byte),
            "{h:?}"
        );
        assert!(
            h.value()
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "{h:?}"
        );
        assert_eq!(h.value().trim_ascii(), h.value(), "value is trimmed: {h:?}");
    }
    // The head alone, and the head followed by other bytes, parse the same.
    let alone = parse_head(&buf[..head_len], limits);
    assert!(
        matches!(&alone, Ok(Parsed::Complete { head: h, head_len: l }) if h == head && *l == head_len),
        "head alone: {alone:?}"
    );
    let mut more = buf[..head_len].to_vec();
    more.extend_from_slice(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    let followed = parse_head(&more, limits);
    assert!(
        matches!(&followed, Ok(Parsed::Complete { head: h, head_len: l }) if h == head && *l == head_len),
        "head followed by more: {followed:?}"
    );
    // What the worker asks of a head next must not panic, and obeys its docs.
    match head.body_framing() {
        Ok(BodyFraming::Length(n)) => assert!(n > 0),
        Ok(BodyFraming::Chunked) => {
            assert!(head.header("content-length").is_none());
        }
        Ok(BodyFraming::Empty) => {}
        Ok(BodyFraming::UntilClose) => panic!("a request body is never close-delimited"),
        Err(e) => assert!(matches!(e, ProxyError::BadRequest(_)), "{e:?}"),
    }
    let _ = (
        head.keep_alive(),
        head.expects_continue(),
        head.target_form(),
    );
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
