//! Answers written by the cache: from a stored response (a hit, an entry
//! the origin just confirmed, a stale entry standing in for a failed
//! origin), from another request's fill as it arrives (a follower), the
//! 504 for `only-if-cached`, and PURGE's. A stored body in memory goes out
//! with its head in vectored writes of shared buffers (one, up to 576 KiB;
//! else pieces of 512 KiB), copied nowhere; a body in a memory file
//! (`cache::pages`) goes to the socket with `sendfile`, after its head; a
//! body on disk goes from the file to the socket with `sendfile`, corked.
//! A body that cannot be sent whole is cut short by closing the connection.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;

use crate::cache::object::{Body, DiskBody, has_body};
use crate::cache::reply::{self, Reply};
use crate::cache::{Following, Fwd, Outcome, StoredObject};
use crate::error::ProxyError;
use crate::http::body::ChunkedWriter;
use crate::http::request::{RequestHead, Version};
use crate::http::response::{self, Head, Persistence};
use crate::server::cached::{Exchange, upstream};
use crate::server::conn::ClientConn;
use crate::server::context::Context;
use crate::server::finish::{self, Cut, Served, Shown};
use crate::server::relay;
use crate::server::request_body;

/// A stored answer that could not begin: its file changed between the
/// lookup and the answer. Nothing was sent; the next lookup reads the file
/// back, and drops it.
#[derive(Debug)]
pub struct Unsent;

impl Unsent {
    /// The error answered in its place.
    pub fn into_error(self) -> ProxyError {
        ProxyError::Internal("the stored copy changed on disk before it could be sent".into())
    }
}

/// A hit: the request's body (if any) is read and dropped first, then the
/// stored response answers it.
///
/// # Errors
/// `Unsent`, as [`from_store`].
pub fn hit(
    ex: &mut Exchange<'_>,
    object: &Arc<StoredObject>,
    outcome: Outcome,
    now: SystemTime,
) -> Result<Served, Unsent> {
    let body_read = request_body::discard(ex.conn, ex.head);
    from_store(ex, object, outcome, now, body_read)
}

/// Answers the request from `object` at `now`: in full, or 304/412 for
/// the client's preconditions, or 206/416 for its range.
///
/// # Errors
/// `Unsent` when the object's file is gone or changed since it was
/// checked: found before anything is sent, from the handle it would be
/// sent from.
pub fn from_store(
    ex: &mut Exchange<'_>,
    object: &Arc<StoredObject>,
    outcome: Outcome,
    now: SystemTime,
    body_read: bool,
) -> Result<Served, Unsent> {
    let file = match &object.body {
        Body::Disk(disk) => Some(open_checked(disk).ok_or(Unsent)?),
        Body::Memory(_) | Body::Pages(_) => None,
    };
    let reply = reply::plan(object, ex.head, now);
    let status = reply.status(object);
    let persistence = finish::persistence(ex.head, body_read, ex.ctx.shutdown.is_draining());
    let tail = own_headers(ex.ctx, &outcome, ex.request_id, persistence, None);
    let head_only = ex.head.method == "HEAD";
    let sent = match &reply {
        Reply::Full {
            head_block,
            age_line,
        } => {
            let len = if head_only || !has_body(object.head.status) {
                0
            } else {
                object.head.body_len
            };
            let parts = [head_block.as_ref(), age_line.as_bytes(), &tail];
            write_object(ex.conn, &parts, object, file.as_ref(), 0, len)
        }
        Reply::Partial { head, start, end } => {
            let len = if head_only { 0 } else { end - start + 1 };
            write_object(ex.conn, &[head, &tail], object, file.as_ref(), *start, len)
        }
        Reply::HeadOnly { head, .. } => {
            write_object(ex.conn, &[head, &tail], object, file.as_ref(), 0, 0)
        }
    };
    Ok(Served {
        status,
        bytes: sent.unwrap_or_else(|cut| cut.sent),
        // The stored copy could not be read to its end.
        error: sent
            .is_err_and(|cut| !cut.by_client)
            .then_some("proxy_internal_error"),
        reusable: sent.is_ok() && persistence.is_kept(),
        cache: Some(outcome),
        own: false,
        cut: sent.err().map(|cut| {
            if cut.by_client {
                Cut::ClientLeft
            } else {
                Cut::Failed
            }
        }),
        shown: Shown::of(&object.head.headers, None),
    })
}

/// The file of a disk object, opened before anything is sent, if it is
/// still the file written or checked (`DiskFile::is_as_checked`): else it
/// is marked for a read-back, and `None`.
fn open_checked(disk: &DiskBody) -> Option<File> {
    let file = File::open(&disk.file.path).ok();
    let same = file
        .as_ref()
        .and_then(|file| file.metadata().ok())
        .is_some_and(|meta| disk.file.is_as_checked(&meta));
    if !same {
        log::warn!(
            "cache: {} changed since it was checked",
            disk.file.path.display()
        );
        disk.file.verified.store(false, Ordering::Release);
        return None;
    }
    file
}

/// Follows another request's fill: streams its head and body as they
/// arrive, or, when the fill lets this request go (the response cannot be
/// shared, or varies on a header this request sends differently), fetches
/// on its own.
///
/// # Errors
/// As `upstream::fill`, for a follower let go.
pub fn follow(
    ex: &mut Exchange<'_>,
    kind: Fwd,
    following: Following,
) -> Result<Served, ProxyError> {
    let (fill, mut reader) = match following {
        Following::Stream { head, reader } => (head, reader),
        Following::Released { filler, .. } => return upstream::fill(ex, kind, filler, None),
    };
    let body_read = request_body::discard(ex.conn, ex.head);
    let now = SystemTime::now();
    let outcome = Outcome::Forward {
        fwd: kind,
        fwd_status: Some(fill.status.as_u16()),
        stored: true,
        collapsed: true,
        ttl: Some(fill.policy.ttl_seconds(now)),
        detail: None,
    };
    let bodiless = ex.head.method == "HEAD" || !has_body(fill.status);
    // Without a declared length: chunked to HTTP/1.1 clients, until the
    // connection closes to HTTP/1.0 ones (RFC 9112 §6.3).
    let chunked = !bodiless && fill.declared_len.is_none() && ex.head.version == Version::Http11;
    let until_close = !bodiless && fill.declared_len.is_none() && !chunked;
    let persistence = if until_close {
        Persistence::Close
    } else {
        finish::persistence(ex.head, body_read, ex.ctx.shutdown.is_draining())
    };
    let framing = chunked.then_some("Transfer-Encoding: chunked\r\n");
    let tail = own_headers(ex.ctx, &outcome, ex.request_id, persistence, framing);
    let age = fill.age_line(now);
    let mut served = Served {
        status: fill.status.as_u16(),
        bytes: 0,
        error: None,
        reusable: false,
        cache: Some(outcome),
        own: false,
        cut: None,
        shown: Shown::of(&fill.headers, None),
    };
    let mut head = [
        IoSlice::new(&fill.head_block),
        IoSlice::new(age.as_bytes()),
        IoSlice::new(&tail),
    ];
    if write_all_vectored(ex.conn, &mut head).is_err() {
        served.cut = Some(Cut::ClientLeft);
        return Ok(served);
    }
    if bodiless {
        served.reusable = persistence.is_kept();
        return Ok(served);
    }
    let streamed = if chunked {
        let mut out = ChunkedWriter::new(&mut *ex.conn);
        let streamed = stream_fill(&mut reader, &mut out, &mut served.bytes);
        streamed.and_then(|()| out.finish().map(drop).map_err(|_| None))
    } else {
        stream_fill(&mut reader, &mut *ex.conn, &mut served.bytes)
    };
    match streamed {
        Ok(()) => served.reusable = persistence.is_kept(),
        Err(Some(failure)) => {
            // The fill failed: the client sees the body cut short; where
            // it runs to the close, only a reset says so.
            log::debug!("{} {}: fill failed: {failure}", ex.conn.peer, ex.request_id);
            served.error = Some(relay::fill_failure(&failure, "the origin").proxy_status());
            served.cut = Some(Cut::Failed);
            if until_close {
                ex.conn.end_with_reset();
            }
        }
        Err(None) => served.cut = Some(Cut::ClientLeft),
    }
    Ok(served)
}

/// Copies a fill's body to `out` as it arrives; `Err(Some(_))` when the
/// fill failed, `Err(None)` when the client went away.
fn stream_fill(
    reader: &mut crate::cache::BodyReader,
    out: &mut impl Write,
    sent: &mut u64,
) -> Result<(), Option<crate::cache::CacheError>> {
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                out.write_all(&chunk).map_err(|_| None)?;
                *sent += chunk.len() as u64;
            }
            Ok(None) => return Ok(()),
            Err(err) => return Err(Some(err)),
        }
    }
}

/// The 504 for `only-if-cached` with nothing usable stored (RFC 9111
/// §5.2.1.7).
pub fn not_cached(ex: &mut Exchange<'_>) -> Served {
    let outcome = Outcome::NotForwarded {
        detail: "only-if-cached",
    };
    let body_read = request_body::discard(ex.conn, ex.head);
    let persistence = finish::persistence(ex.head, body_read, ex.ctx.shutdown.is_draining());
    let status = outcome.header_value();
    let mut head = Head::new(504);
    head.header("Content-Type", b"text/plain; charset=utf-8")
        .header("Cache-Status", status.as_bytes());
    let text = "not in the cache, and the request said only-if-cached\n";
    let served = text_answer(
        ex.conn,
        ex.head,
        (504, head),
        text,
        ex.request_id,
        persistence,
    );
    Served {
        cache: Some(outcome),
        ..served
    }
}

/// PURGE's answer: 200 when something was removed, 404 when not.
pub fn purged(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    found: bool,
    ctx: &Context,
) -> Served {
    let body_read = request_body::discard(conn, head);
    let persistence = finish::persistence(head, body_read, ctx.shutdown.is_draining());
    let (status, text) = if found {
        (200, "purged\n")
    } else if ctx.cache.is_enabled() {
        (404, "not in the cache\n")
    } else {
        (404, "not in the cache: caching is off (cache_mem = 0)\n")
    };
    let mut out = Head::new(status);
    out.header("Content-Type", b"text/plain; charset=utf-8")
        .header("Cache-Control", b"no-store");
    text_answer(conn, head, (status, out), text, request_id, persistence)
}

/// A short text answer of the proxy's own.
fn text_answer(
    conn: &mut ClientConn,
    head: &RequestHead,
    (status, mut out): (u16, Head),
    text: &str,
    request_id: &str,
    persistence: Persistence,
) -> Served {
    out.header("Content-Length", text.len().to_string().as_bytes());
    let mut bytes = out.finish(request_id, persistence);
    let head_only = head.method == "HEAD";
    if !head_only {
        bytes.extend_from_slice(text.as_bytes());
    }
    let sent = conn.write_all(&bytes).is_ok();
    Served {
        status,
        bytes: if sent && !head_only {
            text.len() as u64
        } else {
            0
        },
        error: None,
        reusable: sent && persistence.is_kept(),
        cache: None,
        own: true,
        cut: None,
        shown: None,
    }
}

/// The headers the proxy adds to an answer from the cache, and the end of
/// the head: `Via`, `Cache-Status`, the framing when given, `X-Request-Id`,
/// `Connection`, and the blank line.
fn own_headers(
    ctx: &Context,
    outcome: &Outcome,
    request_id: &str,
    persistence: Persistence,
    framing: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"Via: 1.1 ");
    out.extend_from_slice(ctx.config.via_name.as_bytes());
    out.extend_from_slice(b"\r\n");
    response::write_header(&mut out, "Cache-Status", outcome.header_value().as_bytes());
    if let Some(framing) = framing {
        out.extend_from_slice(framing.as_bytes());
    }
    response::end_head(&mut out, request_id, persistence);
    out
}

/// An answer from the store cut short: the body bytes sent, and whether
/// the client went away (else the stored body could not be read).
#[derive(Clone, Copy)]
struct Shortfall {
    sent: u64,
    by_client: bool,
}

impl Shortfall {
    fn by_client(sent: u64) -> Shortfall {
        Shortfall {
            sent,
            by_client: true,
        }
    }

    fn unreadable(sent: u64) -> Shortfall {
        Shortfall {
            sent,
            by_client: false,
        }
    }
}

/// Writes `head` (its parts in order) and bytes `start..start + len` of
/// `object`'s body, from `file` for a body on disk. Returns the body bytes
/// sent, or how the answer was cut short (the connection must then close).
fn write_object(
    conn: &mut ClientConn,
    head: &[&[u8]],
    object: &Arc<StoredObject>,
    file: Option<&File>,
    start: u64,
    len: u64,
) -> Result<u64, Shortfall> {
    let head_len: usize = head.iter().map(|part| part.len()).sum();
    match &object.body {
        Body::Memory(chunks) => {
            let body = slices(chunks, start, len);
            let mut all = Vec::with_capacity(head.len() + body.len());
            all.extend(head.iter().map(|part| IoSlice::new(part)));
            all.extend(body.iter().map(|part| IoSlice::new(part)));
            let written = write_all_vectored(conn, &mut all);
            match written {
                Ok(()) => Ok(len),
                Err(n) => Err(Shortfall::by_client(
                    (n.saturating_sub(head_len) as u64).min(len),
                )),
            }
        }
        Body::Pages(pages) => write_from_pages(conn, head, pages.file(), start, len),
        Body::Disk(disk) => {
            // Corked, as nginx's `tcp_nopush` does around `sendfile`: the
            // head and the file's pages leave in full segments, and the
            // last, short one when it is uncorked. Uncorked, a `sendfile`
            // cut into odd-sized segments had its tail probed for loss
            // (TLP) and sent again after most answers over loopback.
            let Some(file) = file else {
                return Err(Shortfall::unreadable(0));
            };
            conn.cork(true);
            let written = write_from_disk(conn, head, disk, file, start, len);
            conn.cork(false);
            written
        }
    }
}

/// Writes `head`, then bytes `start..start + len` of the body in `disk`'s
/// `file`, straight from the file; as [`write_object`].
fn write_from_disk(
    conn: &mut ClientConn,
    head: &[&[u8]],
    disk: &DiskBody,
    file: &File,
    start: u64,
    len: u64,
) -> Result<u64, Shortfall> {
    let mut parts: Vec<IoSlice<'_>> = head.iter().map(|part| IoSlice::new(part)).collect();
    if write_all_vectored(conn, &mut parts).is_err() {
        return Err(Shortfall::by_client(0));
    }
    if len == 0 {
        return Ok(0);
    }
    // A file cut short is checked again by the next lookup, which drops
    // it: it does not answer again.
    let suspect = || disk.file.verified.store(false, Ordering::Release);
    match conn.send_file(file, disk.offset + start, len) {
        (sent, Ok(())) if sent == len => Ok(len),
        (sent, Ok(())) => {
            log::warn!("cache: {} is cut short", disk.file.path.display());
            suspect();
            Err(Shortfall::unreadable(sent))
        }
        (sent, Err(_)) => Err(Shortfall::by_client(sent)),
    }
}

/// Writes `head`, then bytes `start..start + len` of the body in the
/// memory file `file`, with `sendfile`; as [`write_object`]. The head goes
/// with `MSG_MORE`, so that it leaves in the body's first segment (corking
/// would cost two more system calls; uncorked, alone, it would be a
/// segment of its own).
fn write_from_pages(
    conn: &mut ClientConn,
    head: &[&[u8]],
    file: &File,
    start: u64,
    len: u64,
) -> Result<u64, Shortfall> {
    let mut parts: Vec<IoSlice<'_>> = head.iter().map(|part| IoSlice::new(part)).collect();
    if write_all(conn, &mut parts, len > 0).is_err() {
        return Err(Shortfall::by_client(0));
    }
    if len == 0 {
        return Ok(0);
    }
    match conn.send_file(file, start, len) {
        (sent, Ok(())) if sent == len => Ok(len),
        // Sealed at its length: cannot happen, but must not pass for whole.
        (sent, Ok(())) => Err(Shortfall::unreadable(sent)),
        (sent, Err(_)) => Err(Shortfall::by_client(sent)),
    }
}

/// The parts of `chunks` that hold bytes `start..start + len`, shared.
fn slices(chunks: &[Bytes], start: u64, len: u64) -> Vec<Bytes> {
    let end = start + len;
    let mut out = Vec::with_capacity(chunks.len());
    let mut at = 0u64;
    for chunk in chunks {
        let chunk_end = at + chunk.len() as u64;
        if chunk_end > start && at < end {
            let from = start.saturating_sub(at) as usize;
            let to = (end.min(chunk_end) - at) as usize;
            out.push(chunk.slice(from..to));
        }
        at = chunk_end;
    }
    out
}

/// Most bytes one write of a stored answer carries. A write holds the
/// socket's lock throughout, and the kernel works through what arrived
/// meanwhile (the client's acknowledgements) only every 16 new segments,
/// about 1 MiB over loopback: a 1 MiB hit in one write left them waiting,
/// and more of its segments were sent again. In pieces of 512 KiB, 1 MiB
/// hits retransmitted less and the slowest runs went (docs/cache.md).
const WRITE_PIECE: usize = 512 * 1024;

/// Writes every slice, however the socket cuts the writes, in pieces of at
/// most [`WRITE_PIECE`] bytes (a last piece under an eighth of that goes
/// with the one before). `Err` holds the bytes written before a write
/// failed.
fn write_all_vectored(conn: &mut ClientConn, slices: &mut [IoSlice<'_>]) -> Result<(), usize> {
    write_all(conn, slices, false)
}

/// [`write_all_vectored`], with `MSG_MORE` on each write when
/// `more_follows`: what the caller sends next (a `sendfile`) may share the
/// last segment.
fn write_all(
    conn: &mut ClientConn,
    mut slices: &mut [IoSlice<'_>],
    more_follows: bool,
) -> Result<(), usize> {
    let write = |conn: &mut ClientConn, slices: &[IoSlice<'_>]| {
        if more_follows {
            conn.write_vectored_more(slices)
        } else {
            conn.write_vectored(slices)
        }
    };
    let mut written = 0;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let left: usize = slices.iter().map(|slice| slice.len()).sum();
        let result = if left < WRITE_PIECE + WRITE_PIECE / 8 {
            write(conn, slices)
        } else {
            let mut piece = Vec::with_capacity(slices.len());
            let mut room = WRITE_PIECE;
            for slice in slices.iter() {
                let take = slice.len().min(room);
                piece.push(IoSlice::new(&slice[..take]));
                room -= take;
                if room == 0 {
                    break;
                }
            }
            write(conn, &piece)
        };
        match result {
            Ok(0) => return Err(written),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(written),
        }
    }
    Ok(())
}
