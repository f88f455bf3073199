//! `ChunkedReader` on arbitrary bytes, and `ChunkedWriter` → `ChunkedReader`
//! round trips.
//!
//! Input layout: byte 0 picks the inner `BufReader`'s capacity (1 to 16
//! bytes), byte 1 the size of the caller's read buffer (1 to 64 bytes), the
//! rest is the body. The body is decoded through the small buffers and through
//! one large one: both must agree, a decoded body must consume at most the
//! input and decode the same when cut right after it, and the body bytes sent
//! through the writer in pieces must come back unchanged.

#![no_main]

use std::io::{self, BufReader, Cursor, Read, Write};

use fetchproxy::http::body::{ChunkedReader, ChunkedWriter};
use libfuzzer_sys::fuzz_target;

/// The decoded payload and how many input bytes the body took, or the error kind.
type Outcome = Result<(Vec<u8>, usize), io::ErrorKind>;

fuzz_target!(|data: &[u8]| {
    let Some((&[c, r], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let capacity = 1 + usize::from(c % 16);
    let read_len = 1 + usize::from(r % 64);

    let small = decode(body, capacity, read_len);
    let large = decode(body, 1 << 16, 1 << 16);
    assert_eq!(small, large, "capacity {capacity}, reads of {read_len}");
    if let Ok((payload, consumed)) = &small {
        let consumed = *consumed;
        assert!(consumed >= 5, "the last chunk alone is 5 bytes");
        // Cut right after the body, or followed by anything: the same body.
        assert_eq!(decode(&body[..consumed], capacity, read_len), small);
        let mut followed = body[..consumed].to_vec();
        followed.extend_from_slice(b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(decode(&followed, capacity, read_len), small);
        // Cut short, it is an early end, never a body.
        for end in [consumed - 1, consumed / 2] {
            assert_eq!(
                decode(&body[..end], capacity, read_len),
                Err(io::ErrorKind::UnexpectedEof),
                "cut at {end} of {consumed}"
            );
        }
        assert!(payload.len() < consumed);
    }

    round_trip(
        body.split_inclusive(|&b| b == b'\n'),
        body,
        capacity,
        read_len,
    );
    round_trip([body], body, capacity, read_len);
});

/// Decodes `input` until the body ends or fails, checking the reader's promises.
fn decode(input: &[u8], capacity: usize, read_len: usize) -> Outcome {
    let inner = BufReader::with_capacity(capacity, Cursor::new(input));
    let mut reader = ChunkedReader::new(inner);
    let mut buf = vec![0u8; read_len];
    let mut out = Vec::new();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(n <= read_len);
                assert!(!reader.is_done());
                out.extend_from_slice(&buf[..n]);
                assert!(out.len() <= input.len());
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ),
                    "{e:?}"
                );
                assert!(!reader.is_done());
                assert!(reader.read(&mut buf).is_err(), "stays failed");
                return Err(e.kind());
            }
        }
    }
    assert!(reader.is_done());
    assert_eq!(reader.read(&mut buf).ok(), Some(0), "stays done");
    let inner = reader.into_inner();
    let position = usize::try_from(inner.get_ref().position()).expect("in memory");
    let consumed = position - inner.buffer().len();
    assert!(
        consumed <= input.len(),
        "consumed {consumed} of {}",
        input.len()
    );
    Ok((out, consumed))
}

/// Writes `pieces` through a `ChunkedWriter`, then decodes them back.
fn round_trip<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    expected: &[u8],
    capacity: usize,
    read_len: usize,
) {
    let mut writer = ChunkedWriter::new(Vec::new());
    for piece in pieces {
        writer.write_all(piece).expect("write to a Vec");
        assert_eq!(writer.write(b"").expect("empty write"), 0);
    }
    let mut encoded = writer.finish().expect("finish to a Vec");
    let len = encoded.len();
    encoded.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        decode(&encoded, capacity, read_len),
        Ok((expected.to_vec(), len)),
        "round trip of {expected:?}"
    );
}
