//! Body readers and writers used in both directions: chunked decoding with
//! bounded line lengths, chunked encoding, and a reader that enforces a byte
//! limit. No policy: the caller picks the limits.

use std::io::{self, BufRead, Read, Write};

/// Decodes a chunked body from `inner`; yields the payload bytes.
///
/// Errors (`io::ErrorKind::InvalidData`) on a malformed or oversized chunk-size
/// line, a missing CRLF after chunk data, or oversized trailers; end of input
/// before the last chunk is `UnexpectedEof`. Trailers are read and dropped.
/// After `Ok(0)` the reader has consumed exactly the body, so `inner` is
/// positioned at the next message.
pub struct ChunkedReader<R> {
    inner: R,
}

impl<R: BufRead> ChunkedReader<R> {
    /// Wraps a reader positioned at the first chunk-size line.
    pub fn new(inner: R) -> Self {
        ChunkedReader { inner }
    }

    /// Gives back the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

/// Encodes everything written to it as chunks; `finish` writes the last chunk.
/// Dropping it without `finish` leaves the body visibly incomplete, on purpose.
pub struct ChunkedWriter<W: Write> {
    inner: W,
}

impl<W: Write> ChunkedWriter<W> {
    /// Wraps the writer that the chunks go to.
    pub fn new(inner: W) -> Self {
        ChunkedWriter { inner }
    }

    /// Writes the last chunk (`0\r\n\r\n`) and gives back the inner writer.
    ///
    /// # Errors
    /// Any write error of the inner writer.
    pub fn finish(self) -> io::Result<W> {
        todo!()
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        todo!()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes bytes through until more than `limit` have been read, then fails
/// with `io::ErrorKind::FileTooLarge` instead of truncating silently.
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
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = (buf, &mut self.inner, self.remaining);
        todo!()
    }
}
