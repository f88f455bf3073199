//! The buffers of one origin connection, handed to ureq: small to start
//! with, grown only while a response head does not fit (or for the scratch
//! room of a request body), and swapped for a lent 64 KiB buffer while a
//! response body streams in (see `lent`). ureq's own
//! `LazyBuffers` fill their full size with zeros at first use; with a pool
//! of a thousand connections waiting on far origins that was 80 KiB
//! resident per connection, most of it never read into.

use std::cell::Cell;

use ureq::unversioned::transport::Buffers;

use super::lent::LentBuffer;

/// Input allocated at first use: enough for most response heads, and for
/// the first piece of a body. A read that fills it means a body is
/// streaming in, and the next reads go to a lent buffer.
const INPUT_FIRST_BYTES: usize = 4 * 1024;
/// Free room below which unconsumed input moves to the front before a read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// Room ureq wants for reading a request body into (`tmp_and_output`).
const MIN_TMP_BYTES: usize = 10 * 1024;
/// Output for a request head, at least (the head's own size is known).
const MIN_HEAD_OUTPUT_BYTES: usize = 2 * 1024;

thread_local! {
    /// The input last appended to or consumed on this thread is not all
    /// taken (see [`input_waiting`]).
    static INPUT_WAITING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the origin connection this thread used last holds received
/// bytes not yet taken: after a response head, some of the body is in, and
/// reading it will not wait for the origin. Under TLS these are the
/// encrypted bytes, so the answer is a guess there.
pub fn input_waiting() -> bool {
    INPUT_WAITING.with(Cell::get)
}

/// Input and output buffers for one connection.
#[derive(Debug)]
pub struct OriginBuffers {
    /// The connection's own input storage; empty until first used.
    own: Vec<u8>,
    /// A buffer borrowed while a body streams in: the input storage while held.
    lent: Option<LentBuffer>,
    /// `start..end` of the input storage is received and not yet consumed.
    start: usize,
    end: usize,
    /// How large the own input may grow (a response head must fit in it).
    input_max: usize,
    /// The last read filled all the room it was given: more is likely
    /// waiting in the socket.
    streaming: bool,
    output: Vec<u8>,
    /// Output for sending a request body.
    output_bytes: usize,
    /// Output for anything else, at least: a request head on a plain
    /// connection, every write under TLS.
    output_min: usize,
    /// Says how large the head being sent is (see `transport::begin_attempt`).
    head_bytes: fn() -> usize,
    /// The last consume took something (ureq's "may parse again").
    progress: bool,
}

impl OriginBuffers {
    /// Buffers that grow their own input up to `input_max` bytes, and have
    /// room for the head being sent (`head_bytes()` says how much) and
    /// `output_bytes` for a request body; nothing is allocated until used.
    pub fn new(input_max: usize, output_bytes: usize, head_bytes: fn() -> usize) -> OriginBuffers {
        OriginBuffers {
            own: Vec::new(),
            lent: None,
            start: 0,
            end: 0,
            input_max: input_max.max(INPUT_FIRST_BYTES),
            streaming: false,
            output: Vec::new(),
            output_bytes,
            output_min: MIN_HEAD_OUTPUT_BYTES,
            head_bytes,
            progress: false,
        }
    }

    /// Buffers for a connection that TLS is layered on. rustls writes the
    /// handshake and the whole request through `output`, in pieces of at
    /// most its size (ureq's `TransportAdapter`), so it is full size from
    /// the start: a head-sized one would send a body 2 KiB at a time.
    pub fn under_tls(mut self) -> OriginBuffers {
        self.output_min = self.output_bytes;
        self
    }

    /// Gives a lent buffer back once everything in it was consumed: called
    /// when the connection goes idle.
    pub fn release(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            self.lent = None;
            self.streaming = false;
        }
    }

    fn storage(&self) -> &[u8] {
        self.lent.as_deref().unwrap_or(&self.own)
    }

    fn storage_mut(&mut self) -> &mut [u8] {
        storage_in(&mut self.lent, &mut self.own)
    }

    /// Makes room at the end of the input: start over once everything was
    /// consumed (in a lent buffer while a body streams in, else in the own
    /// one), move what is left to the front when less than `compact` bytes
    /// are free, and grow (up to `limit`) while less than `grow` are: a
    /// response head longer than the buffer, not a slow reader.
    fn make_room(&mut self, compact: usize, grow: usize, limit: usize) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if !self.streaming {
                self.lent = None;
            } else if self.lent.is_none() {
                self.lent = Some(LentBuffer::lend());
            }
        }
        if self.lent.is_none() && self.own.is_empty() {
            self.own = vec![0; INPUT_FIRST_BYTES];
        }
        if self.storage().len() - self.end < compact && self.start > 0 {
            let (start, end) = (self.start, self.end);
            self.storage_mut().copy_within(start..end, 0);
            (self.start, self.end) = (0, end - start);
        }
        if self.storage().len() - self.end < grow {
            self.unlend();
            while self.own.len() - self.end < grow && self.own.len() < limit {
                let grown = (self.own.len() * 2).min(limit);
                self.own.resize(grown, 0);
            }
        }
    }

    /// Moves what is left in a lent buffer to the own one (which can grow),
    /// and gives the lent one back.
    fn unlend(&mut self) {
        if let Some(lent) = self.lent.take() {
            let left = &lent[self.start..self.end];
            let want = left.len().max(INPUT_FIRST_BYTES);
            if self.own.len() < want {
                self.own.resize(want, 0);
            }
            self.own[..left.len()].copy_from_slice(left);
            (self.start, self.end) = (0, left.len());
        }
    }

    fn ensure_output(&mut self, at_least: usize) {
        let want = at_least.max((self.head_bytes)());
        if self.output.len() < want {
            self.output.resize(want, 0);
        }
    }
}

/// The input storage: the lent buffer while one is held, else the own one.
fn storage_in<'a>(lent: &'a mut Option<LentBuffer>, own: &'a mut [u8]) -> &'a mut [u8] {
    match lent {
        Some(lent) => lent,
        None => own,
    }
}

impl Buffers for OriginBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.ensure_output(self.output_min);
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.storage()[self.start..self.end]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.make_room(MIN_READ_ROOM, 1, self.input_max);
        let end = self.end;
        &mut self.storage_mut()[end..]
    }

    fn input_appended(&mut self, amount: usize) {
        // The room given was all of the storage after `end`.
        let len = self.storage().len();
        self.streaming = amount > 0 && self.end + amount >= len;
        self.end = (self.end + amount).min(len);
        INPUT_WAITING.with(|waiting| waiting.set(self.start < self.end));
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.start = (self.start + amount).min(self.end);
        INPUT_WAITING.with(|waiting| waiting.set(self.start < self.end));
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.ensure_output(self.output_bytes);
        // The scratch room must be there whatever the input limit.
        self.make_room(MIN_TMP_BYTES, MIN_TMP_BYTES, usize::MAX);
        let input = storage_in(&mut self.lent, &mut self.own);
        (&mut input[self.end..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.start < self.end && self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::super::lent::LENT_BYTES;
    use super::*;

    /// Appends `bytes` the way a transport does.
    fn receive(buffers: &mut OriginBuffers, bytes: &[u8]) -> usize {
        let room = buffers.input_append_buf();
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        buffers.input_appended(n);
        n
    }

    fn small_head() -> usize {
        300
    }

    fn big_head() -> usize {
        40 * 1024
    }

    #[test]
    fn output_fits_the_head_being_sent_and_a_body_gets_more() {
        let mut buffers = OriginBuffers::new(16 * 1024, 16 * 1024, small_head);
        assert_eq!(buffers.output().len(), MIN_HEAD_OUTPUT_BYTES);
        assert_eq!(buffers.tmp_and_output().1.len(), 16 * 1024);
        let mut buffers = OriginBuffers::new(16 * 1024, 16 * 1024, big_head);
        assert_eq!(buffers.output().len(), 40 * 1024);
        let mut buffers = OriginBuffers::new(16 * 1024, 16 * 1024, small_head).under_tls();
        assert_eq!(
            buffers.output().len(),
            16 * 1024,
            "every TLS write goes through it"
        );
    }

    #[test]
    fn nothing_is_allocated_until_used() {
        let buffers = OriginBuffers::new(64 * 1024, 16 * 1024, small_head);
        assert_eq!((buffers.own.capacity(), buffers.output.capacity()), (0, 0));
        assert!(buffers.lent.is_none());
    }

    #[test]
    fn input_starts_small_and_grows_only_while_a_head_does_not_fit() {
        let mut buffers = OriginBuffers::new(64 * 1024, 1024, small_head);
        let head = vec![b'h'; 40 * 1024];
        let mut taken = 0;
        while taken < head.len() {
            // Nothing consumed: the parser waits for the whole head.
            buffers.input_consume(0);
            taken += receive(&mut buffers, &head[taken..]);
        }
        assert_eq!(buffers.input(), &head[..]);
        assert_eq!(buffers.own.len(), 64 * 1024, "grown by doubling, to fit");
        assert!(buffers.lent.is_none());
        // At the limit, no more room appears.
        let mut full = OriginBuffers::new(16 * 1024, 1024, small_head);
        let mut got = 0;
        for _ in 0..10 {
            got += receive(&mut full, &vec![b'x'; 64 * 1024]);
        }
        assert_eq!(got, 16 * 1024);
    }

    #[test]
    fn a_body_streams_through_a_lent_buffer_given_back_when_idle() {
        let mut buffers = OriginBuffers::new(64 * 1024, 1024, small_head);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let mut reads = Vec::new();
        while out.len() < body.len() {
            // All that was sent is waiting; a body reader takes it all.
            let n = receive(&mut buffers, &body[out.len()..]);
            reads.push(n);
            out.extend_from_slice(buffers.input());
            buffers.input_consume(n);
        }
        assert!(out == body);
        assert_eq!(
            reads[0], INPUT_FIRST_BYTES,
            "the first read: the own buffer"
        );
        assert!(reads[1..reads.len() - 1].iter().all(|&n| n == LENT_BYTES));
        assert_eq!(buffers.own.len(), INPUT_FIRST_BYTES, "not grown");
        buffers.release();
        assert!(
            buffers.lent.is_none(),
            "given back as the connection goes idle"
        );
        // The next response starts in the own buffer again.
        assert_eq!(receive(&mut buffers, b"HTTP/1.1 200 OK\r\n\r\n"), 19);
        assert!(buffers.lent.is_none());
    }

    #[test]
    fn a_body_read_in_small_pieces_keeps_every_byte() {
        let mut buffers = OriginBuffers::new(64 * 1024, 1024, small_head);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let mut sent = 0;
        while out.len() < body.len() {
            sent += receive(&mut buffers, &body[sent..]);
            // Consume part, as a body reader with a smaller buffer does.
            let n = buffers.input().len().min(3000);
            out.extend_from_slice(&buffers.input()[..n]);
            buffers.input_consume(n);
        }
        assert!(out == body);
        assert_eq!(buffers.own.len(), INPUT_FIRST_BYTES);
    }

    #[test]
    fn what_is_left_in_a_lent_buffer_moves_back_when_room_runs_out() {
        let mut buffers = OriginBuffers::new(16 * 1024, 1024, small_head);
        let first = vec![b'a'; INPUT_FIRST_BYTES];
        receive(&mut buffers, &first);
        buffers.input_consume(first.len());
        let rest: Vec<u8> = (0..LENT_BYTES as u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(receive(&mut buffers, &rest), LENT_BYTES);
        assert!(buffers.lent.is_some());
        buffers.input_consume(1);
        // Full and half read, and a request body needs scratch room.
        let (tmp, _) = buffers.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP_BYTES);
        assert!(buffers.lent.is_none());
        assert_eq!(buffers.input(), &rest[1..]);
        // Release keeps input that was not read.
        buffers.release();
        assert_eq!(buffers.input(), &rest[1..]);
    }

    #[test]
    fn scratch_room_for_a_request_body_is_always_there() {
        let mut buffers = OriginBuffers::new(16 * 1024, 1024, small_head);
        let got = receive(&mut buffers, &vec![b'x'; 16 * 1024]);
        assert_eq!(got, INPUT_FIRST_BYTES);
        let (tmp, output) = buffers.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP_BYTES);
        assert_eq!(output.len(), 1024);
        assert_eq!(buffers.input().len(), got, "unconsumed input kept");
    }

    #[test]
    fn input_is_usable_only_after_progress() {
        let mut buffers = OriginBuffers::new(16 * 1024, 1024, small_head);
        receive(&mut buffers, b"HTTP/1.1 200 OK\r\n");
        assert!(!buffers.can_use_input());
        buffers.input_consume(5);
        assert!(buffers.can_use_input());
        buffers.input_consume(0);
        assert!(!buffers.can_use_input());
    }
}
