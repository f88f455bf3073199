//! The buffers of one origin connection, handed to ureq: small to start
//! with, and grown only while a response head does not fit. ureq's own
//! `LazyBuffers` fill their full size with zeros at first use; with a pool
//! of a thousand connections waiting on far origins that was 80 KiB
//! resident per connection, most of it never read into.

use ureq::unversioned::transport::Buffers;

/// Input allocated at first use; enough for most response heads and for
/// body reads of a useful size.
const INPUT_FIRST_BYTES: usize = 16 * 1024;
/// Free room below which unconsumed input moves to the front before a read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// Room ureq wants for reading a request body into (`tmp_and_output`).
const MIN_TMP_BYTES: usize = 10 * 1024;

/// Input and output buffers for one connection.
#[derive(Debug)]
pub struct OriginBuffers {
    /// Input storage; `start..end` is received and not yet consumed.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// How large the input may grow (a response head must fit in it).
    input_max: usize,
    output: Vec<u8>,
    output_bytes: usize,
    /// Says how large the head being sent is (see `transport::begin_attempt`).
    head_bytes: fn() -> usize,
    /// The last consume took something (ureq's "may parse again").
    progress: bool,
}

impl OriginBuffers {
    /// Buffers that grow their input up to `input_max` bytes and have
    /// `output_bytes` for the request head and body, or more when
    /// `head_bytes()` says the head being sent needs it; nothing is
    /// allocated until used.
    pub fn new(input_max: usize, output_bytes: usize, head_bytes: fn() -> usize) -> OriginBuffers {
        OriginBuffers {
            input: Vec::new(),
            start: 0,
            end: 0,
            input_max: input_max.max(INPUT_FIRST_BYTES),
            output: Vec::new(),
            output_bytes,
            head_bytes,
            progress: false,
        }
    }

    /// Makes room at the end of the input: start over once everything was
    /// consumed, move what is left to the front when less than `compact`
    /// bytes are free, and grow (up to `limit`) while less than `grow` are:
    /// a response head longer than the buffer, not a slow reader.
    fn make_room(&mut self, compact: usize, grow: usize, limit: usize) {
        if self.input.is_empty() {
            self.input = vec![0; INPUT_FIRST_BYTES];
        }
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.input.len() - self.end < compact && self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        while self.input.len() - self.end < grow && self.input.len() < limit {
            let grown = (self.input.len() * 2).min(limit);
            self.input.resize(grown, 0);
        }
    }

    fn ensure_output(&mut self) {
        let want = self.output_bytes.max((self.head_bytes)());
        if self.output.len() < want {
            self.output.resize(want, 0);
        }
    }
}

impl Buffers for OriginBuffers {
    fn output(&mut self) -> &mut [u8] {
        self.ensure_output();
        &mut self.output
    }

    fn input(&self) -> &[u8] {
        &self.input[self.start..self.end]
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.make_room(MIN_READ_ROOM, 1, self.input_max);
        &mut self.input[self.end..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.end = (self.end + amount).min(self.input.len());
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.start = (self.start + amount).min(self.end);
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.ensure_output();
        // The scratch room must be there whatever the input limit.
        self.make_room(MIN_TMP_BYTES, MIN_TMP_BYTES, usize::MAX);
        (&mut self.input[self.end..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.start < self.end && self.progress
    }
}

#[cfg(test)]
mod tests {
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
    fn output_fits_the_head_being_sent() {
        let mut buffers = OriginBuffers::new(16 * 1024, 16 * 1024, small_head);
        assert_eq!(buffers.output().len(), 16 * 1024);
        let mut buffers = OriginBuffers::new(16 * 1024, 16 * 1024, big_head);
        assert_eq!(buffers.output().len(), 40 * 1024);
    }

    #[test]
    fn nothing_is_allocated_until_used() {
        let buffers = OriginBuffers::new(64 * 1024, 16 * 1024, small_head);
        assert_eq!(
            (buffers.input.capacity(), buffers.output.capacity()),
            (0, 0)
        );
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
        assert_eq!(buffers.input.len(), 64 * 1024, "grown by doubling, to fit");
        // At the limit, no more room appears.
        let mut full = OriginBuffers::new(16 * 1024, 1024, small_head);
        let mut got = 0;
        for _ in 0..10 {
            got += receive(&mut full, &vec![b'x'; 64 * 1024]);
        }
        assert_eq!(got, 16 * 1024);
    }

    #[test]
    fn consumed_input_is_reused_without_growing() {
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
        assert_eq!(buffers.input.len(), INPUT_FIRST_BYTES);
    }

    #[test]
    fn scratch_room_for_a_request_body_is_always_there() {
        let mut buffers = OriginBuffers::new(16 * 1024, 1024, small_head);
        receive(&mut buffers, &vec![b'x'; 16 * 1024]);
        let (tmp, output) = buffers.tmp_and_output();
        assert!(tmp.len() >= MIN_TMP_BYTES);
        assert_eq!(output.len(), 1024);
        assert_eq!(buffers.input().len(), 16 * 1024, "unconsumed input kept");
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
