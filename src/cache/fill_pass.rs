//! Passing a fill's body on when its store is given up halfway (a body of
//! unknown length that outgrows every limit, memory for fills used up, a
//! disk write failing): the rest goes to the readers the fill has, each
//! piece kept only until every one of them took it, the filler waiting
//! while it is more than a window ahead of the slowest, and a reader left
//! that far behind for the wait let go. Varnish streams on the same way
//! from memory it no longer keeps.

use std::collections::VecDeque;
use std::sync::{Condvar, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Fill, Phase, Slot, State};

/// A body passed on to its readers without being stored.
#[derive(Debug)]
pub(super) struct Passing {
    /// Body offset of `chunks[0]` (of the next piece, when there is none).
    pub(super) front: u64,
    /// Body offset of each piece in `chunks`, for readers to find theirs.
    pub(super) starts: VecDeque<u64>,
    /// Bytes in `chunks`.
    pub(super) held: u64,
    /// Bytes before this offset are read from the file.
    pub(super) file_end: u64,
    /// Most bytes held for readers before the filler waits for them.
    pub(super) window: u64,
    /// Longest wait for the slowest reader, past which it is let go.
    pub(super) wait: Duration,
    /// The filler waits on `Fill::room`.
    pub(super) filler_waiting: bool,
}

impl State {
    /// The position of the reader furthest behind, if any reads.
    fn slowest(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::At(pos) => Some(*pos),
                Slot::Free | Slot::Cut => None,
            })
            .min()
    }

    /// While passing on: drops the pieces every reader has taken, and the
    /// file once every reader is past it.
    pub(super) fn trim(&mut self) {
        let slowest = self.slowest().unwrap_or(self.written);
        let Some(passing) = &mut self.passing else {
            return;
        };
        while let Some(first) = self.chunks.front() {
            let len = first.len() as u64;
            if passing.front + len > slowest {
                break;
            }
            self.chunks.pop_front();
            passing.starts.pop_front();
            passing.front += len;
            passing.held -= len;
        }
        if slowest >= passing.file_end {
            // Unlinked already: its disk space goes with the last handle.
            self.file = None;
        }
    }

    /// A reader took more, or left: a filler passing the body on may have
    /// room again.
    pub(super) fn moved_on(&mut self, room: &Condvar) {
        if self.passing.is_some() {
            self.trim();
            if self.passing.as_ref().is_some_and(|p| p.filler_waiting) {
                room.notify_one();
            }
        }
    }

    /// While passing on: lets go of every reader more than the window
    /// behind the newest byte; says how many.
    fn cut_laggards(&mut self) -> usize {
        let Some(passing) = &self.passing else {
            return 0;
        };
        let keep_from = self.written.saturating_sub(passing.window);
        let mut let_go = 0;
        for slot in &mut self.slots {
            if matches!(*slot, Slot::At(pos) if pos < keep_from) {
                *slot = Slot::Cut;
                let_go += 1;
            }
        }
        self.trim();
        let_go
    }
}

impl Fill {
    /// The store is given up: from now on the body is passed on to the
    /// readers there are, keeping no more than `window` bytes they have
    /// not all taken, and waiting up to `wait` for the slowest before it
    /// is let go. Says false when no one reads (or the body so far is
    /// neither in memory nor in the file): there is nothing to pass on.
    /// New followers are not taken.
    pub fn pass_on(&self, window: u64, wait: Duration) -> bool {
        let mut state = self.lock();
        if state.readers == 0 || !matches!(state.phase, Phase::Streaming) {
            return false;
        }
        let front = if state.in_memory {
            state.cut();
            // The rest of the block's memory goes with its pieces.
            state.block = BytesMut::new();
            0
        } else if state.file.is_some() {
            state.chunks.clear();
            state.written
        } else {
            return false;
        };
        let mut starts = VecDeque::with_capacity(state.chunks.len());
        let mut held = 0;
        for chunk in &state.chunks {
            starts.push_back(front + held);
            held += chunk.len() as u64;
        }
        state.in_memory = false;
        state.passing = Some(Passing {
            front,
            starts,
            held,
            file_end: front,
            window,
            wait,
            filler_waiting: false,
        });
        state.trim();
        true
    }

    /// Passes `bytes` (already counted as written) on to the readers,
    /// then waits while more than the window is held for them; a reader
    /// still that far behind after the wait is let go. Says how many were.
    pub(super) fn pass(&self, mut state: MutexGuard<'_, State>, bytes: &[u8]) -> usize {
        let start = state.written - bytes.len() as u64;
        let readers = state.readers;
        let Some(passing) = &mut state.passing else {
            return 0;
        };
        if bytes.is_empty() {
            return 0;
        }
        if readers == 0 {
            // Nobody to keep it for (what readers left was trimmed).
            passing.front = start + bytes.len() as u64;
            return 0;
        }
        passing.starts.push_back(start);
        passing.held += bytes.len() as u64;
        let deadline = Instant::now() + passing.wait;
        state.chunks.push_back(Bytes::copy_from_slice(bytes));
        state.trim();
        state.wake(&self.cond);
        let mut waited = false;
        loop {
            let Some(passing) = &mut state.passing else {
                return 0;
            };
            if passing.held <= passing.window {
                if waited {
                    // Readers ahead restart their wait for bytes from here:
                    // the filler's own waits (its client, the origin) come
                    // after this one.
                    state.wake(&self.cond);
                }
                return 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let let_go = state.cut_laggards();
                state.wake(&self.cond);
                return let_go;
            }
            waited = true;
            passing.filler_waiting = true;
            state = self
                .room
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if let Some(passing) = &mut state.passing {
                passing.filler_waiting = false;
            }
            state.trim();
        }
    }
}

/// The body from `pos` in `chunks`, each starting at its offset in
/// `starts`: the rest of the piece that holds it.
pub(super) fn piece_at(
    chunks: &VecDeque<Bytes>,
    starts: &VecDeque<u64>,
    pos: u64,
) -> Option<Bytes> {
    let index = starts
        .partition_point(|&start| start <= pos)
        .checked_sub(1)?;
    let chunk = chunks.get(index)?;
    let skip = usize::try_from(pos - starts[index]).ok()?;
    (skip < chunk.len()).then(|| chunk.slice(skip..))
}
