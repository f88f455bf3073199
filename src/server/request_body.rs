//! The request body on the client connection: streamed upstream
//! (`ClientBody`, which tells a client's fault from the origin's), or, for
//! requests the proxy answers itself, read and dropped (`discard`) so that
//! the next request on the connection starts where the client meant it to.

use std::io::{self, BufRead, Read, Write};

use crate::error::ProxyError;
use crate::http::body::{ChunkedReader, LimitedReader};
use crate::http::request::{BodyFraming, RequestHead};
use crate::server::conn::ClientConn;

/// Most body bytes read and dropped for a request the proxy answers itself;
/// past this the connection is closed instead.
pub const DISCARD_LIMIT: u64 = 64 * 1024;

/// Most body bytes kept to send again when an upstream call is retried.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Reads and drops the body of a request the proxy answers itself (its own
/// endpoints, `OPTIONS` with `Max-Forwards: 0`), before the answer is
/// written. True when the whole body was consumed, so the connection can
/// carry another request; false when it must close after the answer: the
/// body is over `DISCARD_LIMIT`, malformed, cut short, or announced with
/// `Expect: 100-continue` (the client may or may not send it, so where the
/// next request starts is unknown). Leaving a body unread would have it
/// parsed as the next request: a desync behind any front proxy that shares
/// its connections between clients.
pub fn discard(conn: &mut ClientConn, head: &RequestHead) -> bool {
    let framing = match head.body_framing() {
        Ok(BodyFraming::Empty) => return true,
        Ok(framing) => framing,
        Err(_) => return false,
    };
    if head.expects_continue() {
        return false;
    }
    match framing {
        // A request body is never close-delimited (`body_framing` says so).
        BodyFraming::Empty | BodyFraming::UntilClose => true,
        BodyFraming::Length(len) if len > DISCARD_LIMIT => false,
        BodyFraming::Length(len) => {
            let mut body = ExactReader {
                inner: conn,
                remaining: len,
            };
            io::copy(&mut body, &mut io::sink()).is_ok_and(|n| n == len)
        }
        BodyFraming::Chunked => {
            let mut chunked = ChunkedReader::new(&mut *conn);
            // One byte over the limit tells "at the limit" from "over it".
            let mut limited = (&mut chunked).take(DISCARD_LIMIT + 1);
            let read = io::copy(&mut limited, &mut io::sink());
            read.is_ok_and(|n| n <= DISCARD_LIMIT) && chunked.is_done()
        }
    }
}

/// The request body as read from the client, remembering whether it was
/// read to its end and why it failed if it did, so that a client fault is
/// answered as one (400/413), not blamed on the upstream. The first
/// `REPLAY_LIMIT` bytes are kept, so that a retried upstream call can send
/// them again (`rewind`).
pub struct ClientBody<'a> {
    reader: Option<Box<dyn Read + 'a>>,
    done: bool,
    failure: Option<ProxyError>,
    /// `max_body_bytes`, named in the 413 when a chunked body goes over it.
    limit: u64,
    /// Bytes of a Content-Length body not read yet: ureq stops reading at
    /// the declared length, so reaching zero is what marks the body done.
    left: Option<u64>,
    /// What was read from the client so far, while it fits `REPLAY_LIMIT`.
    kept: Vec<u8>,
    /// Everything read so far is in `kept`.
    kept_all: bool,
    /// Bytes read from the client so far.
    read: u64,
    /// Where a replay of `kept` stands, after `rewind`.
    replayed: usize,
}

impl<'a> ClientBody<'a> {
    /// The body of `head`, framed as `framing`, at most `limit` bytes.
    pub fn new(
        conn: &'a mut ClientConn,
        head: &RequestHead,
        framing: BodyFraming,
        limit: Option<u64>,
    ) -> ClientBody<'a> {
        let limit = limit.unwrap_or(u64::MAX);
        let source = Continued {
            conn,
            pending: framing != BodyFraming::Empty && head.expects_continue(),
        };
        let reader: Option<Box<dyn Read + 'a>> = match framing {
            BodyFraming::Empty | BodyFraming::UntilClose => None,
            BodyFraming::Length(len) => Some(Box::new(ExactReader {
                inner: source,
                remaining: len,
            })),
            BodyFraming::Chunked => Some(Box::new(LimitedReader::new(
                ChunkedReader::new(source),
                limit,
            ))),
        };
        ClientBody {
            done: reader.is_none(),
            reader,
            failure: None,
            limit,
            left: match framing {
                BodyFraming::Length(len) => Some(len),
                _ => None,
            },
            kept: Vec::new(),
            kept_all: true,
            read: 0,
            replayed: 0,
        }
    }
}

impl ClientBody<'_> {
    /// Whether the body was read to its end: only then can the connection
    /// carry another request.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Why reading the body failed, if it did: the client's fault (400, 413).
    pub fn take_failure(&mut self) -> Option<ProxyError> {
        self.failure.take()
    }

    /// Starts the body over for a retried upstream call: what was read is
    /// sent again from memory, then the rest from the client. False when
    /// more was read than was kept, or reading failed.
    pub fn rewind(&mut self) -> bool {
        if !self.kept_all || self.failure.is_some() {
            return false;
        }
        self.replayed = 0;
        true
    }

    /// Reads from the client, keeping what fits for a replay.
    fn read_client(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        match reader.read(out) {
            Ok(0) => {
                self.done = true;
                Ok(0)
            }
            Ok(n) => {
                if let Some(left) = self.left.as_mut() {
                    // ExactReader never yields more than is left.
                    *left = left.saturating_sub(n as u64);
                    self.done = *left == 0;
                }
                self.read += n as u64;
                if self.kept_all && self.kept.len() + n <= REPLAY_LIMIT {
                    self.kept.extend_from_slice(&out[..n]);
                } else {
                    self.kept_all = false;
                    self.kept = Vec::new();
                }
                self.replayed = self.kept.len();
                Ok(n)
            }
            Err(err) => {
                let failure = match err.kind() {
                    io::ErrorKind::InvalidData => {
                        ProxyError::BadRequest(format!("bad request body: {err}"))
                    }
                    io::ErrorKind::FileTooLarge => ProxyError::BodyTooLarge { limit: self.limit },
                    io::ErrorKind::TimedOut => ProxyError::BodyTimeout(err.to_string()),
                    // The socket's read timeout, `idle_timeout`.
                    io::ErrorKind::WouldBlock => {
                        ProxyError::BodyTimeout("the client sent nothing for idle_timeout".into())
                    }
                    // The client reset its connection in the middle of
                    // its body: it went away, and nobody is left to answer.
                    // (An end of input may be a half-close from a client
                    // still reading: that one is answered 400.)
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        ProxyError::ClientGone(format!(
                            "the client reset its connection in the middle of its request body: {err}"
                        ))
                    }
                    _ => ProxyError::BadRequest(format!("request body not received: {err}")),
                };
                self.failure = Some(failure);
                Err(err)
            }
        }
    }
}

impl Read for ClientBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.replayed < self.kept.len() {
            let from = &self.kept[self.replayed..];
            let n = from.len().min(out.len());
            out[..n].copy_from_slice(&from[..n]);
            self.replayed += n;
            return Ok(n);
        }
        self.read_client(out)
    }
}

/// The client's connection as the source of its body. A client that sent
/// `Expect: 100-continue` is told to go on (RFC 9110 §10.1.1) when the body
/// is first asked for: once the origin was reached and the request head
/// sent to it. An origin that cannot be reached is answered before the
/// client sends a byte of its body, as the origin itself would.
struct Continued<'a> {
    conn: &'a mut ClientConn,
    pending: bool,
}

impl Continued<'_> {
    /// Sends `100 Continue` if the client waits for it and it was not sent.
    fn go_on(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.pending) {
            self.conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        Ok(())
    }
}

impl Read for Continued<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.go_on()?;
        self.conn.read(out)
    }
}

impl BufRead for Continued<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.go_on()?;
        self.conn.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.conn.consume(amount);
    }
}

/// A body of exactly `remaining` bytes: the client closing before the
/// declared length is an error, so that a cut-short body is never sent on
/// as if it were complete (and the origin is not left waiting for the rest).
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "client closed with {} body bytes still to come",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
