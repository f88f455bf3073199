//! The two-way byte pump of a CONNECT tunnel, generic over its I/O so that
//! every way a tunnel can end is tested in memory (as http-tunnel's
//! `relay.rs` does), and `TunnelEnd`, why a tunnel ended, which the access
//! log and the metrics carry. No sockets of its own, no HTTP, no timing:
//! the relay thread in `server::tunnel` decides when to call it and when a
//! tunnel has been idle too long.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their sending half and every byte was passed on.
    Done,
    /// Reading from or writing to the client failed (a reset, say).
    ClientError,
    /// Reading from or writing to the target failed.
    UpstreamError,
    /// Neither side sent anything for `tunnel_idle_timeout`.
    Idle,
    /// The proxy stopped (second signal, or the grace period ran out).
    ShuttingDown,
    /// The relay could not take the tunnel on (registration failed).
    NotRelayed,
}

impl TunnelEnd {
    /// Every ending, in the order `/metrics` lists them.
    pub const ALL: [TunnelEnd; 6] = [
        TunnelEnd::Done,
        TunnelEnd::ClientError,
        TunnelEnd::UpstreamError,
        TunnelEnd::Idle,
        TunnelEnd::ShuttingDown,
        TunnelEnd::NotRelayed,
    ];

    /// The label in the access log and on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Done => "done",
            TunnelEnd::ClientError => "client_error",
            TunnelEnd::UpstreamError => "upstream_error",
            TunnelEnd::Idle => "idle",
            TunnelEnd::ShuttingDown => "shutting_down",
            TunnelEnd::NotRelayed => "not_relayed",
        }
    }
}

/// One side of a tunnel: a non-blocking byte stream whose sending half can
/// be closed on its own (so a half-close is passed on, RFC 9110 §9.3.6).
pub trait Side: Read + Write {
    /// Closes the sending half.
    fn close_write(&mut self) -> io::Result<()>;
}

impl Side for TcpStream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Where a pipe failed: reading its source or writing its sink.
enum Broke {
    Source,
    Sink,
}

/// One direction: bytes read from one side and not yet written to the other.
#[derive(Debug)]
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source has ended.
    eof: bool,
    /// The end was passed on (the sink's sending half closed).
    closed: bool,
    /// Bytes written to the sink.
    total: u64,
}

impl Pipe {
    /// A pipe of `size` bytes that starts out holding `first`.
    fn new(size: usize, first: &[u8]) -> Pipe {
        let mut buf = vec![0; size.max(first.len())].into_boxed_slice();
        buf[..first.len()].copy_from_slice(first);
        Pipe {
            buf,
            start: 0,
            end: first.len(),
            eof: false,
            closed: false,
            total: 0,
        }
    }

    /// Moves bytes from `source` to `sink` until one would block; says
    /// whether any moved.
    fn pump(&mut self, source: &mut impl Read, sink: &mut impl Side) -> Result<bool, Broke> {
        let mut moved = false;
        loop {
            while self.start < self.end {
                match sink.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Err(Broke::Sink),
                    Ok(n) => {
                        self.start += n;
                        self.total += n as u64;
                        moved = true;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(Broke::Sink),
                }
            }
            (self.start, self.end) = (0, 0);
            if self.eof {
                if !self.closed {
                    // The sink may already be gone; the tunnel ends on the
                    // other pipe's account then.
                    let _ = sink.close_write();
                    self.closed = true;
                }
                return Ok(moved);
            }
            match source.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end = n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Broke::Source),
            }
            moved = true;
        }
    }
}

/// The state of one tunnel's two directions.
#[derive(Debug)]
pub struct Pump {
    /// Client to target.
    up: Pipe,
    /// Target to client.
    down: Pipe,
}

/// What one call to [`Pump::step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Still open; whether any byte moved.
    Open { moved: bool },
    /// The tunnel is over.
    Ended(TunnelEnd),
}

impl Pump {
    /// A pump with `size`-byte pipes; `first` holds bytes the client sent
    /// right after its CONNECT head, which go to the target first.
    pub fn new(size: usize, first: &[u8]) -> Pump {
        Pump {
            up: Pipe::new(size, first),
            down: Pipe::new(size, &[]),
        }
    }

    /// Moves what can be moved both ways without blocking.
    pub fn step(&mut self, client: &mut impl Side, upstream: &mut impl Side) -> Step {
        let up = match self.up.pump(client, upstream) {
            Ok(moved) => moved,
            Err(Broke::Source) => return Step::Ended(TunnelEnd::ClientError),
            Err(Broke::Sink) => return Step::Ended(TunnelEnd::UpstreamError),
        };
        let down = match self.down.pump(upstream, client) {
            Ok(moved) => moved,
            Err(Broke::Source) => return Step::Ended(TunnelEnd::UpstreamError),
            Err(Broke::Sink) => return Step::Ended(TunnelEnd::ClientError),
        };
        if self.up.closed && self.down.closed {
            Step::Ended(TunnelEnd::Done)
        } else {
            Step::Open { moved: up || down }
        }
    }

    /// Bytes passed from the client to the target so far.
    pub fn bytes_up(&self) -> u64 {
        self.up.total
    }

    /// Bytes passed from the target to the client so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// What a scripted side's next read returns.
    enum Input {
        Data(&'static [u8]),
        Block,
        Eof,
        Fail,
    }

    /// A non-blocking side in memory: reads follow a script, writes take at
    /// most `room` bytes per call (then block), or fail.
    struct Fake {
        script: VecDeque<Input>,
        written: Vec<u8>,
        room: usize,
        fail_writes: bool,
        write_closed: bool,
    }

    impl Fake {
        fn new(script: Vec<Input>) -> Fake {
            Fake {
                script: script.into(),
                written: Vec::new(),
                room: usize::MAX,
                fail_writes: false,
                write_closed: false,
            }
        }
    }

    impl Read for Fake {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match self.script.pop_front() {
                Some(Input::Data(bytes)) => {
                    out[..bytes.len()].copy_from_slice(bytes);
                    Ok(bytes.len())
                }
                Some(Input::Eof) => {
                    self.script.push_front(Input::Eof);
                    Ok(0)
                }
                Some(Input::Fail) => Err(io::ErrorKind::ConnectionReset.into()),
                Some(Input::Block) | None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.fail_writes {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = data.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&data[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Side for Fake {
        fn close_write(&mut self) -> io::Result<()> {
            self.write_closed = true;
            Ok(())
        }
    }

    /// Steps until the tunnel ends or nothing moves any more.
    fn run(pump: &mut Pump, client: &mut Fake, upstream: &mut Fake) -> Step {
        for _ in 0..100 {
            match pump.step(client, upstream) {
                Step::Open { moved: true } => {}
                other => return other,
            }
        }
        panic!("the pump never settled")
    }

    #[test]
    fn both_sides_closing_ends_the_tunnel_done_with_every_byte_passed_on() {
        let mut client = Fake::new(vec![Input::Data(b"ping"), Input::Eof]);
        let mut upstream = Fake::new(vec![Input::Data(b"pong!"), Input::Eof]);
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Ended(TunnelEnd::Done)
        );
        assert_eq!(upstream.written, b"ping");
        assert_eq!(client.written, b"pong!");
        assert!(client.write_closed && upstream.write_closed);
        assert_eq!((pump.bytes_up(), pump.bytes_down()), (4, 5));
    }

    #[test]
    fn a_half_close_is_passed_on_and_the_other_way_stays_open() {
        let mut client = Fake::new(vec![Input::Data(b"request"), Input::Eof]);
        let mut upstream = Fake::new(vec![Input::Block]);
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Open { moved: false }
        );
        assert!(upstream.write_closed, "the client's end was passed on");
        assert!(!client.write_closed);
        upstream.script = vec![Input::Data(b"answer"), Input::Eof].into();
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Ended(TunnelEnd::Done)
        );
        assert_eq!(client.written, b"answer");
    }

    #[test]
    fn bytes_sent_with_the_connect_head_go_first() {
        let mut client = Fake::new(vec![Input::Data(b" and more"), Input::Eof]);
        let mut upstream = Fake::new(vec![Input::Eof]);
        let mut pump = Pump::new(4, b"early bytes");
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Ended(TunnelEnd::Done)
        );
        assert_eq!(upstream.written, b"early bytes and more");
        assert_eq!(pump.bytes_up(), 20);
    }

    #[test]
    fn a_blocked_sink_keeps_its_bytes_until_there_is_room() {
        let mut client = Fake::new(vec![Input::Data(b"0123456789"), Input::Eof]);
        let mut upstream = Fake::new(vec![Input::Block]);
        upstream.room = 3;
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Open { moved: false }
        );
        assert_eq!(upstream.written, b"012");
        assert!(!upstream.write_closed, "not before every byte is out");
        upstream.room = usize::MAX;
        upstream.script = vec![Input::Eof].into();
        assert_eq!(
            run(&mut pump, &mut client, &mut upstream),
            Step::Ended(TunnelEnd::Done)
        );
        assert_eq!(upstream.written, b"0123456789");
    }

    #[test]
    fn a_client_that_fails_ends_the_tunnel_with_client_error() {
        let mut upstream = Fake::new(vec![Input::Block]);
        let mut reads = Fake::new(vec![Input::Data(b"x"), Input::Fail]);
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut reads, &mut upstream),
            Step::Ended(TunnelEnd::ClientError)
        );
        let mut writes = Fake::new(vec![Input::Block]);
        writes.fail_writes = true;
        let mut upstream = Fake::new(vec![Input::Data(b"reply")]);
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut writes, &mut upstream),
            Step::Ended(TunnelEnd::ClientError)
        );
    }

    #[test]
    fn a_target_that_fails_ends_the_tunnel_with_upstream_error() {
        let mut client = Fake::new(vec![Input::Block]);
        let mut reads = Fake::new(vec![Input::Fail]);
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut client, &mut reads),
            Step::Ended(TunnelEnd::UpstreamError)
        );
        let mut client = Fake::new(vec![Input::Data(b"upload")]);
        let mut writes = Fake::new(vec![Input::Block]);
        writes.fail_writes = true;
        let mut pump = Pump::new(16, &[]);
        assert_eq!(
            run(&mut pump, &mut client, &mut writes),
            Step::Ended(TunnelEnd::UpstreamError)
        );
    }

    #[test]
    fn every_ending_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            TunnelEnd::ALL.iter().map(|end| end.as_str()).collect();
        assert_eq!(labels.len(), TunnelEnd::ALL.len());
    }
}
