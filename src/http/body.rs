//! Body readers and writers used in both directions: chunked decoding with
//! bounded line lengths, chunked encoding, and a reader that enforces a byte
//! limit. No policy: the caller picks the limits.

use std::io::{self, BufRead, IoSlice, Read, Write};

use crate::http::field::{check_field_line, is_token_byte};

/// Longest chunk-size line, extensions included, before the CRLF.
const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Largest trailer section, all lines and the final CRLF included.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// A chunk size has at most 16 hex digits, so it always fits in a `u64`.
pub const MAX_SIZE_DIGITS: usize = 16;

/// How a message body is delimited (RFC 9112 §6.3), both ways.
///
/// `Content-Length: 0` is reported as `Empty`, so `Length(n)` always has `n > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Responses only (item 8 of RFC 9112 §6.3): the body ends when the
    /// connection closes. A request without a length has no body.
    UntilClose,
}

/// Where the decoder is in RFC 9112 §7.1's grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (bytes so far are in `line`).
    Size,
    /// Inside chunk data.
    Data { remaining: u64 },
    /// After chunk data: expecting the CR of its CRLF.
    DataCr,
    /// After chunk data and CR: expecting the LF.
    DataLf,
    /// Reading trailer lines (checked, then dropped); `budget` bytes may follow.
    Trailers { budget: usize },
    /// The last chunk and the trailer section have been consumed.
    Done,
    /// An error was returned; the framing is lost for good.
    Failed,
}

/// Decodes a chunked body from `inner`; yields the payload bytes.
///
/// Errors (`io::ErrorKind::InvalidData`) on a malformed or oversized chunk-size
/// line, a missing CRLF after chunk data, or oversized trailers; end of input
/// before the last chunk is `UnexpectedEof`. Trailers are checked with the
/// request-head field grammar, then dropped.
/// After `Ok(0)` the reader has consumed exactly the body, so `inner` is
/// positioned at the next message.
///
/// Every line in the framing must end in CRLF: a bare LF is refused rather
/// than tolerated, because parsers that disagree on line ends are how chunked
/// bodies get smuggled past a proxy. Chunk extensions are checked for stray
/// control bytes and otherwise ignored (RFC 9112 §7.1.1).
pub struct ChunkedReader<R> {
    inner: R,
    state: State,
    /// The chunk-size line read so far (at most `MAX_CHUNK_LINE_BYTES` + CRLF).
    line: Vec<u8>,
}

impl<R: BufRead> ChunkedReader<R> {
    /// Wraps a reader positioned at the first chunk-size line.
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            state: State::Size,
            line: Vec::new(),
        }
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Whether the whole body, last chunk and trailers included, has been read:
    /// only then does `inner` start at the next message.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Runs the state machine until it yields payload bytes or the body ends.
    fn step(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Failed => return Err(invalid("chunked body already failed")),
                State::Size => {
                    self.fill_line()?;
                    let size = parse_size_line(&self.line)?;
                    self.line.clear();
                    self.state = if size == 0 {
                        State::Trailers {
                            budget: MAX_TRAILER_BYTES,
                        }
                    } else {
                        State::Data { remaining: size }
                    };
                }
                State::Data { remaining } => {
                    let avail = fill(&mut self.inner)?;
                    let cap = usize::try_from(remaining).unwrap_or(usize::MAX);
                    let n = avail.len().min(buf.len()).min(cap);
                    buf[..n].copy_from_slice(&avail[..n]);
                    self.inner.consume(n);
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                    return Ok(n);
                }
                State::DataCr => {
                    self.expect_byte(b'\r')?;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    self.expect_byte(b'\n')?;
                    self.state = State::Size;
                }
                State::Trailers { budget } => self.step_trailers(budget)?,
            }
        }
    }

    /// Reads the chunk-size line into `self.line`, up to and including its LF,
    /// consuming nothing past it.
    fn fill_line(&mut self) -> io::Result<()> {
        self.read_line(MAX_CHUNK_LINE_BYTES + 2, || {
            invalid(format!("chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes"))
        })
    }

    /// Appends one line to `self.line`, up to and including its LF and
    /// nothing past it; more than `limit` bytes in all is `too_long()`.
    fn read_line(&mut self, limit: usize, too_long: impl Fn() -> io::Error) -> io::Result<()> {
        loop {
            let avail = fill(&mut self.inner)?;
            let (take, found) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if self.line.len() + take > limit {
                return Err(too_long());
            }
            self.line.extend_from_slice(&avail[..take]);
            self.inner.consume(take);
            if found {
                return Ok(());
            }
        }
    }

    /// Consumes one byte that must be `want` (the CRLF after chunk data).
    fn expect_byte(&mut self, want: u8) -> io::Result<()> {
        let got = fill(&mut self.inner)?[0];
        if got != want {
            return Err(invalid("chunk data not followed by CRLF"));
        }
        self.inner.consume(1);
        Ok(())
    }

    /// Reads one trailer line (RFC 9112 §7.1.2) and checks it with the same
    /// field grammar as a request head, then drops it; the empty line ends
    /// the body. A trailer is never forwarded, but one that a head would
    /// refuse (no colon, NUL, obs-fold, bare LF) still fails the body: a
    /// lax trailer parser is where a request line can hide.
    fn step_trailers(&mut self, budget: usize) -> io::Result<()> {
        self.read_line(budget, || {
            invalid(format!("chunked trailers over {MAX_TRAILER_BYTES} bytes"))
        })?;
        let used = self.line.len();
        let Some(content) = self.line.strip_suffix(b"\r\n") else {
            return Err(invalid("trailer line not ended by CRLF"));
        };
        if content.is_empty() {
            self.state = State::Done;
        } else {
            if content.contains(&b'\r') {
                return Err(invalid("stray CR in trailer line"));
            }
            if let Some(msg) = check_field_line(content, true) {
                return Err(invalid(format!("bad trailer: {msg}")));
            }
            self.state = State::Trailers {
                budget: budget - used,
            };
        }
        self.line.clear();
        Ok(())
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let result = self.step(buf);
        if let Err(e) = &result {
            // Retryable errors leave the state machine where it was; anything
            // else means we no longer know where the body ends.
            if !matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                self.state = State::Failed;
            }
        }
        result
    }
}

/// The inner reader's buffered bytes; end of input here is always early.
fn fill<R: BufRead>(inner: &mut R) -> io::Result<&[u8]> {
    let avail = inner.fill_buf()?;
    if avail.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "chunked body ended before the last chunk",
        ));
    }
    Ok(avail)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses `chunk-size [ chunk-ext ] CRLF` (RFC 9112 §7.1), LF included.
fn parse_size_line(line: &[u8]) -> io::Result<u64> {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(invalid("chunk-size line not ended by CRLF"));
    };
    let (size, ext) = match line.iter().position(|&b| b == b';') {
        // RFC 9112 §7.1.1: BWS is allowed before the `;`.
        Some(i) => (line[..i].trim_ascii_end(), Some(&line[i + 1..])),
        None => (line, None),
    };
    if size.is_empty() {
        return Err(invalid("empty chunk size"));
    }
    if size.len() > MAX_SIZE_DIGITS {
        return Err(invalid("chunk size over 16 hex digits"));
    }
    let mut value = 0u64;
    for &b in size {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(invalid("invalid chunk size")),
        };
        // 16 hex digits fit in a u64, so this never overflows.
        value = (value << 4) | u64::from(digit);
    }
    // Extensions are ignored, but must follow their grammar: a stray quote
    // or control byte in one is a framing trick, not an extension.
    if ext.is_some_and(|ext| !is_chunk_ext(ext)) {
        return Err(invalid("malformed chunk extension"));
    }
    Ok(value)
}

/// Whether `ext` (what follows the first `;`) is `chunk-ext` (RFC 9112
/// §7.1.1): `name [= value]` pairs separated by `;`, a value a token or a
/// quoted-string, with optional whitespace around the separators.
fn is_chunk_ext(ext: &[u8]) -> bool {
    let skip_ws = |i: &mut usize| {
        while matches!(ext.get(*i), Some(b' ' | b'\t')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while ext.get(*i).is_some_and(|&b| is_token_byte(b)) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    loop {
        skip_ws(&mut i);
        if !token(&mut i) {
            return false;
        }
        skip_ws(&mut i);
        if ext.get(i) == Some(&b'=') {
            i += 1;
            skip_ws(&mut i);
            let value = if ext.get(i) == Some(&b'"') {
                quoted_string_end(ext, i).map(|end| i = end).is_some()
            } else {
                token(&mut i)
            };
            if !value {
                return false;
            }
            skip_ws(&mut i);
        }
        match ext.get(i) {
            None => return true,
            Some(b';') => i += 1,
            Some(_) => return false,
        }
    }
}

/// Where the quoted-string (RFC 9110 §5.6.4) that opens at `start` ends
/// (one past its closing quote), if it is well formed.
fn quoted_string_end(text: &[u8], start: usize) -> Option<usize> {
    let is_text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    let mut i = start + 1;
    loop {
        match *text.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                if !is_text(*text.get(i + 1)?) {
                    return None;
                }
                i += 2;
            }
            b if is_text(b) => i += 1,
            _ => return None,
        }
    }
}

/// Encodes everything written to it as chunks; `finish` writes the last chunk.
/// Dropping it without `finish` leaves the body visibly incomplete, on purpose.
///
/// Each non-empty `write` becomes exactly one chunk. After an inner write
/// error the chunk framing is broken, so every later call fails too.
pub struct ChunkedWriter<W: Write> {
    inner: W,
    broken: bool,
}

impl<W: Write> ChunkedWriter<W> {
    /// Wraps the writer that the chunks go to.
    pub fn new(inner: W) -> Self {
        ChunkedWriter {
            inner,
            broken: false,
        }
    }

    /// Writes the last chunk (`0\r\n\r\n`) and gives back the inner writer.
    ///
    /// # Errors
    /// Any write error of the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn check(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "chunked body broken by an earlier write error",
            ));
        }
        Ok(())
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        // An empty chunk would be the last chunk: write nothing instead.
        if buf.is_empty() {
            return Ok(0);
        }
        let mut header = [0u8; MAX_SIZE_DIGITS + 2];
        let header = chunk_header(&mut header, buf.len() as u64);
        let mut parts = [
            IoSlice::new(header),
            IoSlice::new(buf),
            IoSlice::new(b"\r\n"),
        ];
        if let Err(e) = write_all_vectored(&mut self.inner, &mut parts) {
            self.broken = true;
            return Err(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Formats `{len:x}\r\n` into `out` without allocating.
fn chunk_header(out: &mut [u8; MAX_SIZE_DIGITS + 2], len: u64) -> &[u8] {
    let mut hex = [0u8; MAX_SIZE_DIGITS];
    let digits = lower_hex(&mut hex, len).len();
    out[..digits].copy_from_slice(&hex[..digits]);
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

/// The digits of `n` in lowercase hex, as chunk sizes are written, in
/// `out`: no allocation, no formatting machinery.
pub fn lower_hex(out: &mut [u8; MAX_SIZE_DIGITS], n: u64) -> &[u8] {
    let digits = (((64 - n.leading_zeros()) as usize).div_ceil(4)).max(1);
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    &out[..digits]
}

/// `write_all` over several slices: one syscall per chunk when the writer
/// supports vectored writes, several otherwise.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Passes bytes through until more than `limit` have been read, then fails
/// with `io::ErrorKind::FileTooLarge` instead of truncating silently.
///
/// Once `limit` bytes are through, it reads one more byte to tell "exactly
/// `limit`" (end of input: fine) from "more" (the error).
pub struct LimitedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> LimitedReader<R> {
    /// Wraps `inner`, allowing at most `limit` bytes through.
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader {
            inner,
            remaining: limit,
        }
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "body over the size limit",
                )),
            };
        }
        let cap = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let max = buf.len().min(cap);
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor};

    use super::*;

    /// A reader that hands out one byte per call, so `BufReader::with_capacity(1, ..)`
    /// splits the input at every byte boundary.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// Deterministic xorshift, enough for varied sizes and contents.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn decode(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkedReader::new(Cursor::new(input)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn decode_bytewise(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let inner = BufReader::with_capacity(1, OneByte(input));
        ChunkedReader::new(inner).read_to_end(&mut out)?;
        Ok(out)
    }

    fn error_kind(input: &[u8]) -> io::ErrorKind {
        match decode(input) {
            Err(e) => e.kind(),
            Ok(body) => panic!("expected an error for {input:?}, got {body:?}"),
        }
    }

    fn encode(pieces: &[&[u8]]) -> Vec<u8> {
        let mut w = ChunkedWriter::new(Vec::new());
        for p in pieces {
            w.write_all(p).expect("write to a Vec");
        }
        w.finish().expect("finish to a Vec")
    }

    #[test]
    fn simple_body_decodes() {
        let body = decode(b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n").expect("valid body");
        assert_eq!(body, b"hello, world");
    }

    #[test]
    fn hex_sizes_in_either_case_and_with_leading_zeros_decode() {
        let mut input = b"A\r\n0123456789\r\n000b\r\n0123456789a\r\n".to_vec();
        input.extend_from_slice(b"0000000000000001\r\nz\r\n00\r\n\r\n");
        assert_eq!(
            decode(&input).expect("valid body"),
            b"01234567890123456789az"
        );
    }

    #[test]
    fn body_split_at_every_byte_decodes_the_same() {
        let input = b"3;name=value\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
        let expected = b"abc0123456789abcdef".to_vec();
        assert_eq!(decode(input).expect("valid body"), expected);
        assert_eq!(decode_bytewise(input).expect("valid body"), expected);
        for split in 0..input.len() {
            let chained = Cursor::new(&input[..split]).chain(Cursor::new(&input[split..]));
            let mut out = Vec::new();
            ChunkedReader::new(BufReader::with_capacity(3, chained))
                .read_to_end(&mut out)
                .expect("valid body");
            assert_eq!(out, expected, "split at {split}");
        }
    }

    #[test]
    fn writer_then_reader_round_trips_random_sizes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let pieces: Vec<Vec<u8>> = (0..rng.below(8))
                .map(|_| {
                    let len = rng.below(5000) as usize;
                    (0..len).map(|_| rng.next() as u8).collect()
                })
                .collect();
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let encoded = encode(&refs);
            assert_eq!(decode(&encoded).expect("own encoding"), pieces.concat());
        }
    }

    #[test]
    fn round_trip_survives_one_byte_reads() {
        let pieces: [&[u8]; 4] = [b"a", &[0u8; 300], b"", b"\r\n0\r\n\r\n"];
        let encoded = encode(&pieces);
        assert_eq!(
            decode_bytewise(&encoded).expect("own encoding"),
            pieces.concat()
        );
    }

    #[test]
    fn writer_emits_exact_chunks_and_skips_empty_writes() {
        let mut w = ChunkedWriter::new(Vec::new());
        assert_eq!(w.write(b"").expect("empty write"), 0);
        assert_eq!(w.write(b"hello").expect("write"), 5);
        assert_eq!(w.write(&[b'x'; 26]).expect("write"), 26);
        let out = w.finish().expect("finish");
        let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        assert_eq!(encode(&[]), b"0\r\n\r\n");
    }

    #[test]
    fn chunk_header_formats_lowercase_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_header(&mut buf, 0), b"0\r\n");
        assert_eq!(chunk_header(&mut buf, 1), b"1\r\n");
        assert_eq!(chunk_header(&mut buf, 255), b"ff\r\n");
        assert_eq!(chunk_header(&mut buf, 4096), b"1000\r\n");
        assert_eq!(chunk_header(&mut buf, u64::MAX), b"ffffffffffffffff\r\n");
    }

    /// Accepts at most `room` bytes per call, so writes arrive in pieces.
    struct Trickle {
        out: Vec<u8>,
        room: usize,
        fail_after: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.out.len() >= self.fail_after {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_completes_chunks_over_short_writes() {
        let t = Trickle {
            out: Vec::new(),
            room: 2,
            fail_after: usize::MAX,
        };
        let mut w = ChunkedWriter::new(t);
        w.write_all(b"hello world").expect("write");
        let t = w.finish().expect("finish");
        assert_eq!(t.out, b"b\r\nhello world\r\n0\r\n\r\n");
    }

    #[test]
    fn writer_refuses_to_continue_after_an_error() {
        let t = Trickle {
            out: Vec::new(),
            room: 4,
            fail_after: 6,
        };
        let mut w = ChunkedWriter::new(t);
        assert!(w.write(b"hello").is_err());
        assert!(w.write(b"again").is_err());
        assert!(w.finish().is_err());
    }

    #[test]
    fn extensions_are_ignored() {
        for input in [
            &b"5;ext\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=b;c=\"d e\"\r\nhello\r\n0;last\r\n\r\n",
            b"5 ; a = b\r\nhello\r\n0\r\n\r\n",
            b"5\t;a\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(decode(input).expect("valid body"), b"hello", "{input:?}");
        }
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        for input in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],
            b";ext\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"g\r\n",
            b"5z\r\nhello\r\n0\r\n\r\n",
            b"00000000000000005\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\0\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(error_kind(input), io::ErrorKind::InvalidData, "{input:?}");
        }
    }

    #[test]
    fn bare_lf_is_rejected_everywhere_in_the_framing() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: y\n\r\n",
        ] {
            assert_eq!(error_kind(input), io::ErrorKind::InvalidData, "{input:?}");
        }
    }

    #[test]
    fn data_longer_than_its_size_is_rejected() {
        assert_eq!(
            error_kind(b"3\r\nhello\r\n0\r\n\r\n"),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            error_kind(b"5\r\nhello\rX0\r\n\r\n"),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn size_line_may_reach_the_limit_but_not_exceed_it() {
        let mut ok = b"5;".to_vec();
        ok.resize(MAX_CHUNK_LINE_BYTES, b'x');
        ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode(&ok).expect("line at the limit"), b"hello");
        let mut long = b"5;".to_vec();
        long.resize(MAX_CHUNK_LINE_BYTES + 1, b'x');
        long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(error_kind(&long), io::ErrorKind::InvalidData);
        // A line that never ends is refused without reading it all.
        let endless = vec![b'0'; 1 << 20];
        assert_eq!(error_kind(&endless), io::ErrorKind::InvalidData);
    }

    #[test]
    fn trailers_are_read_and_dropped() {
        let input = b"2\r\nok\r\n0\r\nExpires: never\r\nX-Checksum: abc\r\n\r\n";
        assert_eq!(decode(input).expect("valid body"), b"ok");
        assert_eq!(decode_bytewise(input).expect("valid body"), b"ok");
    }

    #[test]
    fn chunk_extensions_follow_their_grammar() {
        for ext in [
            &b"a"[..],
            b"a=b",
            b" a = b ; c",
            b"a=\"quoted; \\\" value\"",
            b"name=\"\"",
        ] {
            let mut input = b"2;".to_vec();
            input.extend_from_slice(ext);
            input.extend_from_slice(b"\r\nok\r\n0\r\n\r\n");
            assert_eq!(decode(&input).expect("valid extension"), b"ok", "{ext:?}");
        }
        for ext in [
            &b""[..],
            b"a=\"unterminated",
            b"a=b c",
            b"=b",
            b"a;;b",
            b"a=\"bad \x01 byte\"",
            b"a=",
            b"a\x0bb",
        ] {
            let mut input = b"2;".to_vec();
            input.extend_from_slice(ext);
            input.extend_from_slice(b"\r\nok\r\n0\r\n\r\n");
            assert_eq!(error_kind(&input), io::ErrorKind::InvalidData, "{ext:?}");
        }
    }

    /// Issue 15 (5): trailers follow the same field grammar as a head.
    #[test]
    fn trailers_a_head_would_refuse_are_refused() {
        for trailer in [
            &b"GET http://h/smuggled HTTP/1.1"[..],
            b"NoColon",
            b"X: a\0b",
            b" folded",
            b"\tfolded: x",
            b"X : y",
            b": empty name",
            b"X: a\rb",
        ] {
            let mut input = b"2\r\nok\r\n0\r\n".to_vec();
            input.extend_from_slice(trailer);
            input.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                error_kind(&input),
                io::ErrorKind::InvalidData,
                "{trailer:?}"
            );
            let mut bytewise = ChunkedReader::new(BufReader::with_capacity(1, Cursor::new(input)));
            let mut out = Vec::new();
            let err = bytewise.read_to_end(&mut out).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{trailer:?}");
        }
    }

    #[test]
    fn oversized_trailers_are_rejected() {
        let mut input = b"0\r\n".to_vec();
        for _ in 0..1000 {
            input.extend_from_slice(b"X-Padding: ");
            input.extend_from_slice(&[b'p'; 100]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(error_kind(&input), io::ErrorKind::InvalidData);
        let mut one_line = b"0\r\nX: ".to_vec();
        one_line.resize(MAX_TRAILER_BYTES + 10, b'p');
        assert_eq!(error_kind(&one_line), io::ErrorKind::InvalidData);
    }

    #[test]
    fn end_of_input_mid_body_is_unexpected_eof() {
        let full = b"5\r\nhello\r\n0\r\nX: y\r\n\r\n";
        for end in 0..full.len() {
            let mut out = Vec::new();
            let err = ChunkedReader::new(Cursor::new(&full[..end]))
                .read_to_end(&mut out)
                .expect_err("truncated body");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {end}");
        }
    }

    #[test]
    fn pipelined_bytes_stay_in_the_inner_reader() {
        let next = b"GET http://h/ HTTP/1.1\r\n\r\n";
        let mut input = b"5\r\nhello\r\n0\r\nX: y\r\n\r\n".to_vec();
        input.extend_from_slice(next);
        for capacity in [1, 2, 7, 4096] {
            let inner = BufReader::with_capacity(capacity, Cursor::new(input.clone()));
            let mut reader = ChunkedReader::new(inner);
            let mut out = Vec::new();
            reader.read_to_end(&mut out).expect("valid body");
            assert_eq!(out, b"hello");
            assert!(reader.is_done());
            let mut buf = [0u8; 16];
            assert_eq!(reader.read(&mut buf).expect("done"), 0);
            let mut rest = Vec::new();
            reader.into_inner().read_to_end(&mut rest).expect("rest");
            assert_eq!(rest, next, "capacity {capacity}");
        }
    }

    #[test]
    fn reader_stays_failed_after_an_error() {
        let mut reader = ChunkedReader::new(Cursor::new(&b"z\r\n5\r\nhello\r\n0\r\n\r\n"[..]));
        let mut buf = [0u8; 16];
        assert!(reader.read(&mut buf).is_err());
        assert!(reader.read(&mut buf).is_err());
        assert!(!reader.is_done());
    }

    #[test]
    fn small_reads_return_data_in_pieces() {
        let mut reader = ChunkedReader::new(Cursor::new(&b"a\r\n0123456789\r\n0\r\n\r\n"[..]));
        let mut buf = [0u8; 3];
        let mut out = Vec::new();
        loop {
            let n = reader.read(&mut buf).expect("valid body");
            if n == 0 {
                break;
            }
            assert!(n <= 3);
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"0123456789");
        assert_eq!(reader.read(&mut []).expect("empty read"), 0);
    }

    #[test]
    fn limited_reader_allows_exactly_the_limit() {
        let mut out = Vec::new();
        LimitedReader::new(Cursor::new(vec![7u8; 100]), 100)
            .read_to_end(&mut out)
            .expect("body at the limit");
        assert_eq!(out.len(), 100);
        out.clear();
        LimitedReader::new(Cursor::new(vec![7u8; 10]), 100)
            .read_to_end(&mut out)
            .expect("short body");
        assert_eq!(out.len(), 10);
        LimitedReader::new(Cursor::new(Vec::new()), 0)
            .read_to_end(&mut out)
            .expect("empty body with zero limit");
    }

    #[test]
    fn limited_reader_fails_instead_of_truncating() {
        for (len, limit) in [(101, 100), (1, 0), (10_000, 4096)] {
            let mut out = Vec::new();
            let err = LimitedReader::new(Cursor::new(vec![0u8; len]), limit)
                .read_to_end(&mut out)
                .expect_err("body over the limit");
            assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
            assert!(out.len() as u64 <= limit);
        }
        let err = LimitedReader::new(OneByte(&[1; 6]), 5)
            .read_to_end(&mut Vec::new())
            .expect_err("one byte too many");
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn limited_chunked_body_is_checked_after_decoding() {
        let encoded = encode(&[&[1u8; 50], &[2u8; 50]]);
        let chunked = ChunkedReader::new(Cursor::new(encoded.clone()));
        let mut out = Vec::new();
        LimitedReader::new(chunked, 100)
            .read_to_end(&mut out)
            .expect("body at the limit");
        assert_eq!(out.len(), 100);
        let chunked = ChunkedReader::new(Cursor::new(encoded));
        let err = LimitedReader::new(chunked, 99)
            .read_to_end(&mut Vec::new())
            .expect_err("over the limit");
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&input);
            let _ = decode_bytewise(&input);
        }

        #[test]
        fn arbitrary_pieces_round_trip(pieces in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..6)) {
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let encoded = encode(&refs);
            proptest::prop_assert_eq!(decode_bytewise(&encoded).expect("own encoding"), pieces.concat());
        }
    }
}
