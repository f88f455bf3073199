//! A fill: one response being received from the origin and stored, that
//! other requests read while it is written (Varnish's busy objects,
//! Traffic Server's read-while-writer). The filler publishes the head,
//! then each piece of body; followers block on a condition variable until
//! there is more, the fill completes, or it fails. A failed fill cuts every
//! follower short with an error, so the proxy closes their connections
//! before the declared length.
//!
//! Bytes live in memory while the body fits the memory tier's object
//! limit: copied into one block of the declared length (or blocks of a
//! fixed size when none was declared), from which pieces are cut as shared
//! `Bytes` for readers as they come for them. While no one reads, nothing
//! is cut, so a body that no one followed is stored as one piece: a hit
//! then writes it with one
//! slice, not one per piece that came from the origin (at 1 MiB that took
//! about 9% off a hit's CPU). Past the memory limit, or when the body never
//! could fit it, readers read the temporary file the disk tier is writing,
//! with positioned reads. The state lock is never held across I/O.
//!
//! A fill that gives up storing halfway (a body of unknown length that
//! outgrows every limit, memory for fills used up, a disk write failing)
//! passes the rest of the body on to the readers it has (`pass_on`, in
//! `fill_pass.rs`).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use crate::cache::CacheError;
use crate::cache::key::Variant;
use crate::cache::policy::Policy;
use crate::cache::reader::DISK_READ_BYTES;
use crate::http::request::RequestHead;

#[path = "fill_pass.rs"]
mod pass;
use pass::{Passing, piece_at};

/// Why a fill ended without a complete body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FillFailure {
    /// The upstream failed, or the filler went away, mid-body.
    #[error("the upstream response ended before it was complete")]
    Upstream,
    /// The body outgrew every limit, and no tier could hold what readers need.
    #[error("the response grew past the cache's object limit")]
    TooLarge,
    /// Writing the disk file failed, and readers were reading from it.
    #[error("the disk write failed")]
    DiskWrite,
    /// Fills in progress already hold all the memory they may, and the
    /// response has no disk file to go on in.
    #[error("the cache's memory for responses in progress is used up")]
    MemoryFull,
    /// No byte arrived for the follower's wait.
    #[error("no progress from the fill within the wait")]
    Stalled,
    /// The reader stayed a window behind a body passed on without being
    /// stored for longer than the wait, and was let go.
    #[error("the client fell too far behind a response the cache does not keep")]
    Lagged,
}

/// Why a follower was let go to fetch on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The response may not be stored or shared (or is stale at once).
    NotShareable,
    /// The response varies on a header whose value differs for this follower.
    VaryMismatch,
    /// The filler gave up before the response head arrived.
    FillerGone,
    /// No response head within the wait.
    TimedOut,
    /// A revalidation's 304 refreshed the stored response: look it up
    /// again.
    Refreshed,
    /// A revalidation found the origin failing: unreachable (`None`), or
    /// answering with this 5xx. The stale entry may stand in.
    OriginFailed(Option<u16>),
}

/// The response head as followers see it.
#[derive(Debug)]
pub struct FillHead {
    /// Status.
    pub status: StatusCode,
    /// Headers as stored (hop-by-hop removed, no `Content-Length`).
    pub headers: HeaderMap,
    /// The response's policy (for `Age` and `ttl`).
    pub policy: Policy,
    /// The variant this response is for.
    pub variant: Variant,
    /// `Content-Length` of the origin's response, when it sent one.
    pub declared_len: Option<u64>,
    /// Status line and headers, with `Content-Length` when declared,
    /// without `Age` and the blank line (as `ObjectHead::head_block`).
    pub head_block: Bytes,
}

impl FillHead {
    /// `Age: N\r\n` for now (RFC 9111 §5.1).
    pub fn age_line(&self, now: std::time::SystemTime) -> String {
        format!("Age: {}\r\n", self.policy.age(now).as_secs())
    }
}

#[derive(Debug)]
enum Phase {
    AwaitingHead,
    Streaming,
    Complete,
    Failed(FillFailure),
    Released(Release),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    head: Option<Arc<FillHead>>,
    /// The body so far, while it is kept in memory: the pieces cut for
    /// readers, then the bytes still in `block`. While passing on, the
    /// pieces not yet taken by every reader.
    chunks: VecDeque<Bytes>,
    /// The memory block being filled, past the bytes cut from it.
    block: BytesMut,
    /// Readers read `chunks`; once false, they read `file`.
    in_memory: bool,
    /// Body bytes published.
    written: u64,
    /// The temporary file and where the body starts in it.
    file: Option<(Arc<File>, u64)>,
    /// Followers waiting on the condition variable: without any, a change
    /// wakes nobody, and costs no system call.
    waiting: usize,
    /// Followers reading the body (their `FillReader`s).
    readers: usize,
    /// Where each reader is, by its slot: what passing on keeps for them.
    slots: Vec<Slot>,
    /// Set once the store was given up with readers left (`pass_on`).
    passing: Option<Passing>,
}

/// One reader's place in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Body bytes taken so far.
    At(u64),
    /// Let go for lagging behind a body passed on.
    Cut,
}

impl State {
    /// Cuts what `block` holds into a piece that readers can take.
    fn cut(&mut self) {
        if !self.block.is_empty() {
            let piece = self.block.split().freeze();
            self.chunks.push_back(piece);
        }
    }

    /// The reader in `slot` has taken the body up to `pos`.
    fn reader_at(&mut self, slot: usize, pos: u64, room: &Condvar) {
        self.slots[slot] = Slot::At(pos);
        self.moved_on(room);
    }

    /// Wakes the followers waiting for a change, if there are any.
    fn wake(&self, cond: &Condvar) {
        if self.waiting > 0 {
            cond.notify_all();
        }
    }
}

/// The shared state of one fill.
#[derive(Debug)]
pub struct Fill {
    state: Mutex<State>,
    /// Followers wait on it for more body.
    cond: Condvar,
    /// A filler passing the body on waits on it for its readers.
    room: Condvar,
}

impl Fill {
    /// A fill waiting for its response head.
    pub fn new() -> Arc<Fill> {
        Arc::new(Fill {
            state: Mutex::new(State {
                phase: Phase::AwaitingHead,
                head: None,
                chunks: VecDeque::new(),
                block: BytesMut::new(),
                in_memory: true,
                written: 0,
                file: None,
                waiting: 0,
                readers: 0,
                slots: Vec::new(),
                passing: None,
            }),
            cond: Condvar::new(),
            room: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking filler must not take the followers down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether followers are reading the body or waiting for it.
    pub fn has_followers(&self) -> bool {
        let state = self.lock();
        state.readers > 0 || state.waiting > 0
    }

    /// Publishes the head: followers start reading. `file` is where the
    /// body goes when it is not kept in memory.
    pub fn publish_head(
        &self,
        head: Arc<FillHead>,
        in_memory: bool,
        file: Option<(Arc<File>, u64)>,
    ) {
        let mut state = self.lock();
        state.head = Some(head);
        state.in_memory = in_memory;
        state.file = file;
        state.phase = Phase::Streaming;
        state.wake(&self.cond);
    }

    /// Publishes body bytes that are only in the file.
    pub fn advance(&self, len: u64) {
        let mut state = self.lock();
        state.written += len;
        state.wake(&self.cond);
    }

    /// Publishes body bytes (already written to the file, if any), and
    /// keeps a copy in memory while the body is kept there: in the current
    /// block while it has room, else in a new one of `block` bytes (or of
    /// `bytes`' length, if more). While the body is passed on, says how
    /// many readers were let go for lagging (`pass_on`).
    pub fn append(&self, bytes: &[u8], block: usize) -> usize {
        let mut state = self.lock();
        state.written += bytes.len() as u64;
        if state.passing.is_some() {
            return self.pass(state, bytes);
        }
        if state.in_memory {
            if state.block.capacity() - state.block.len() < bytes.len() {
                state.cut();
                state.block = BytesMut::with_capacity(block.max(bytes.len()));
            }
            state.block.extend_from_slice(bytes);
        }
        state.wake(&self.cond);
        0
    }

    /// From now on readers read the file: the memory copy is dropped.
    pub fn spill_to_file(&self) {
        let mut state = self.lock();
        state.in_memory = false;
        state.chunks = VecDeque::new();
        state.block = BytesMut::new();
    }

    /// The body kept in memory, in pieces (to store it when complete).
    pub fn chunks(&self) -> Vec<Bytes> {
        let mut state = self.lock();
        state.cut();
        state.chunks.iter().cloned().collect()
    }

    /// Ends the fill: followers read what is there and see the end.
    pub fn complete(&self) {
        self.end(Phase::Complete);
    }

    /// Ends the fill as failed: every follower gets `failure`.
    pub fn fail(&self, failure: FillFailure) {
        self.end(Phase::Failed(failure));
    }

    /// Lets followers go before the head: they fetch on their own.
    pub fn release(&self, why: Release) {
        self.end(Phase::Released(why));
    }

    fn end(&self, phase: Phase) {
        let mut state = self.lock();
        if matches!(state.phase, Phase::AwaitingHead | Phase::Streaming) {
            // Before a head, there is nothing for followers to read.
            state.phase = match (&state.phase, phase) {
                (Phase::AwaitingHead, Phase::Failed(_)) => Phase::Released(Release::FillerGone),
                (_, phase) => phase,
            };
            state.wake(&self.cond);
        }
    }

    /// Waits up to `wait` for the head, then decides for a follower with
    /// request `head`.
    pub fn follow(
        self: &Arc<Self>,
        request: &RequestHead,
        wait: Duration,
    ) -> Result<(Arc<FillHead>, FillReader), Release> {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            match &state.phase {
                Phase::AwaitingHead => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Release::TimedOut);
                    }
                    state.waiting += 1;
                    state = self
                        .cond
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    state.waiting -= 1;
                }
                Phase::Released(why) => return Err(*why),
                Phase::Failed(_) => return Err(Release::FillerGone),
                Phase::Streaming | Phase::Complete => break,
            }
        }
        if state.passing.is_some() {
            // The start of the body is gone.
            return Err(Release::NotShareable);
        }
        let head = state.head.clone().ok_or(Release::FillerGone)?;
        if !head.variant.matches(request) {
            return Err(Release::VaryMismatch);
        }
        // Counted before the lock is let go: from waiting for the head to
        // reading, a follower is never uncounted (`has_followers`).
        state.readers += 1;
        let slot = match state.slots.iter().position(|s| *s == Slot::Free) {
            Some(free) => free,
            None => {
                state.slots.push(Slot::Free);
                state.slots.len() - 1
            }
        };
        state.slots[slot] = Slot::At(0);
        drop(state);
        let reader = FillReader {
            fill: Arc::clone(self),
            slot,
            pos: 0,
            index: 0,
            unread: Bytes::new(),
            // Between two pieces the filler may wait on the origin and then
            // on its own client, each for up to `wait`: a fill is stalled
            // only past both. (Its client failing, the filler reads on for
            // its followers: `Filler::has_followers`.)
            stall: wait.saturating_mul(2),
        };
        Ok((head, reader))
    }
}

/// Reads a fill's body as it is written.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    /// Its place in `State::slots`.
    slot: usize,
    /// Body bytes returned so far.
    pos: u64,
    /// Next chunk, while reading from memory.
    index: usize,
    /// What `Read` took from the last chunk and has not returned yet.
    unread: Bytes,
    /// Longest wait for the next bytes.
    stall: Duration,
}

/// The body as a byte stream, for a relay that reads the fill instead of
/// the origin; a failed fill is an error, so the relay cuts its client
/// short.
impl std::io::Read for FillReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.unread.is_empty() {
            match self.next_chunk() {
                Ok(Some(chunk)) => self.unread = chunk,
                Ok(None) => return Ok(0),
                Err(CacheError::Io(err)) => return Err(err),
                Err(err) => return Err(std::io::Error::other(err)),
            }
        }
        let n = out.len().min(self.unread.len());
        out[..n].copy_from_slice(&self.unread.split_to(n));
        Ok(n)
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        let mut state = self.fill.lock();
        state.readers -= 1;
        state.slots[self.slot] = Slot::Free;
        state.moved_on(&self.fill.room);
    }
}

impl FillReader {
    /// The next piece of body, `None` once the fill completed and all of
    /// it was read.
    ///
    /// # Errors
    /// `FillFailed` when the fill failed or no bytes came within the wait;
    /// `Io` when the file cannot be read.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        let mut state = self.fill.lock();
        loop {
            if state.slots[self.slot] == Slot::Cut {
                return Err(FillFailure::Lagged.into());
            }
            let from_file = if let Some(passing) = &state.passing {
                if self.pos >= passing.front {
                    if let Some(piece) = piece_at(&state.chunks, &passing.starts, self.pos) {
                        self.pos += piece.len() as u64;
                        state.reader_at(self.slot, self.pos, &self.fill.room);
                        return Ok(Some(piece));
                    }
                    false
                } else {
                    self.pos < passing.file_end
                }
            } else if state.in_memory {
                if self.index == state.chunks.len() {
                    // Bytes appended before this reader came.
                    state.cut();
                }
                if let Some(chunk) = state.chunks.get(self.index).cloned() {
                    self.index += 1;
                    self.pos += chunk.len() as u64;
                    state.reader_at(self.slot, self.pos, &self.fill.room);
                    return Ok(Some(chunk));
                }
                false
            } else {
                self.pos < state.written
            };
            if from_file {
                let end = state.passing.as_ref().map_or(state.written, |p| p.file_end);
                let Some((file, offset)) = state.file.clone() else {
                    return Err(FillFailure::TooLarge.into());
                };
                let want = (end - self.pos).min(DISK_READ_BYTES as u64) as usize;
                drop(state);
                let mut buf = BytesMut::zeroed(want);
                file.read_exact_at(&mut buf, offset + self.pos)?;
                let mut state = self.fill.lock();
                if state.slots[self.slot] == Slot::Cut {
                    return Err(FillFailure::Lagged.into());
                }
                self.pos += want as u64;
                state.reader_at(self.slot, self.pos, &self.fill.room);
                return Ok(Some(buf.freeze()));
            }
            match state.phase {
                Phase::Complete => return Ok(None),
                Phase::Failed(failure) => return Err(failure.into()),
                _ => {}
            }
            state.waiting += 1;
            let (next, timeout) = self
                .fill
                .cond
                .wait_timeout(state, self.stall)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.waiting -= 1;
            if timeout.timed_out() && !self.has_more(&state) {
                return Err(FillFailure::Stalled.into());
            }
        }
    }

    fn has_more(&self, state: &State) -> bool {
        let more = if let Some(passing) = &state.passing {
            // A filler waiting for slower readers is progress too: a reader
            // that is ahead must not give up on it meanwhile.
            self.pos < state.written
                || state.slots[self.slot] == Slot::Cut
                || passing.filler_waiting
        } else if state.in_memory {
            self.index < state.chunks.len() || !state.block.is_empty()
        } else {
            self.pos < state.written
        };
        more || !matches!(state.phase, Phase::Streaming)
    }
}

#[cfg(test)]
#[path = "fill_tests.rs"]
mod tests;
