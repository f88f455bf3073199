//! `Pace`: how long a client has kept its worker waiting on one request,
//! against how many bytes it moved meanwhile. A worker waits on its client
//! while it reads a request body and while it writes an answer that the
//! client does not take as fast; each wait is bounded by `idle_timeout`
//! (reads) or `upstream_timeout` (writes), but a client that moves a byte
//! just before each runs out would hold the worker for ever. So the waits
//! of one request may add up to `idle_timeout`, plus one second for every
//! `client_min_rate` bytes moved (Apache httpd's `RequestReadTimeout
//! body=...,MinRate=...` works the same way). A client on a slow link stays
//! within it; one that trickles is cut off. A read returns with the first
//! byte that comes, so it is checked after it; a write, and a cache hit's
//! `sendfile` (the socket non-blocking meanwhile), waits for room in the
//! socket no longer than what is left (`write_wait`).

use std::io;
use std::time::Duration;

use crate::config::size::size_text;

/// One request's waits on its client.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Bytes a second the client must keep up; 0 turns the check off.
    min_rate: u64,
    /// Waiting allowed before any byte moved.
    grace: Duration,
    /// Time spent waiting on the client so far.
    waited: Duration,
    /// Bytes read from or written to the client so far.
    moved: u64,
    /// The socket's send timeout, `upstream_timeout`; none before the
    /// first request, when a write blocks as the socket says.
    write_timeout: Option<Duration>,
}

impl Pace {
    /// A new request's pace: nothing waited, nothing moved. A write waits
    /// for the client up to `write_timeout` at most.
    pub fn new(min_rate: u64, grace: Duration, write_timeout: Duration) -> Pace {
        Pace {
            min_rate,
            grace,
            waited: Duration::ZERO,
            moved: 0,
            write_timeout: Some(write_timeout),
        }
    }

    /// No check (a connection before its first request).
    pub fn off() -> Pace {
        Pace {
            write_timeout: None,
            ..Pace::new(0, Duration::ZERO, Duration::ZERO)
        }
    }

    /// How long a write may wait for room in the client's socket: the
    /// send timeout, or what is left of the pace's allowance when that is
    /// less (then true). None when a write just blocks (no request yet).
    pub fn write_wait(&self) -> Option<(Duration, bool)> {
        let timeout = self.write_timeout?;
        if self.min_rate == 0 {
            return Some((timeout, false));
        }
        let left = self.allowed().saturating_sub(self.waited);
        Some((timeout.min(left), left < timeout))
    }

    /// Counts bytes moved without waiting.
    pub fn moved(&mut self, bytes: usize) {
        self.moved = self.moved.saturating_add(bytes as u64);
    }

    /// Counts a wait on the client that moved `bytes`.
    ///
    /// # Errors
    /// `TimedOut` once the waits add up to more than the client's pace
    /// allows.
    pub fn waited(&mut self, wait: Duration, bytes: usize) -> io::Result<()> {
        self.moved(bytes);
        self.waited = self.waited.saturating_add(wait);
        if self.min_rate == 0 || self.waited <= self.allowed() {
            return Ok(());
        }
        Err(self.too_slow())
    }

    /// The error for a client slower than its pace.
    pub fn too_slow(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client moved {} bytes in {} of waiting, slower than client_min_rate ({} a second)",
                self.moved,
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(self.waited.as_millis()).unwrap_or(u64::MAX)
                )),
                size_text(self.min_rate),
            ),
        )
    }

    /// The waiting allowed for what moved so far.
    fn allowed(&self) -> Duration {
        let earned_ns = u128::from(self.moved) * 1_000_000_000 / u128::from(self.min_rate.max(1));
        let earned = Duration::from_nanos(u64::try_from(earned_ns).unwrap_or(u64::MAX));
        self.grace.saturating_add(earned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn waits_within_the_grace_pass_whatever_moved() {
        let mut pace = Pace::new(1024, 15 * SEC, 60 * SEC);
        for _ in 0..14 {
            assert!(pace.waited(SEC, 0).is_ok());
        }
        assert!(pace.waited(SEC, 0).is_ok(), "15 s is the grace itself");
        let err = pace
            .waited(Duration::from_millis(1), 0)
            .expect_err("past the grace");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            err.to_string(),
            "the client moved 0 bytes in 15s 1ms of waiting, slower than client_min_rate (1KiB a second)"
        );
    }

    #[test]
    fn every_min_rate_bytes_moved_earn_a_second() {
        let mut pace = Pace::new(1000, 10 * SEC, 60 * SEC);
        // A client on a slow link: 2,000 bytes a second, waited for in full.
        for _ in 0..600 {
            assert!(pace.waited(SEC, 2000).is_ok());
        }
        // One that trickles a byte every 9 s is cut off after the grace.
        let mut pace = Pace::new(1000, 10 * SEC, 60 * SEC);
        assert!(pace.waited(9 * SEC, 1).is_ok());
        assert!(pace.waited(9 * SEC, 1).is_err());
    }

    #[test]
    fn bytes_moved_without_waiting_count_too() {
        let mut pace = Pace::new(1000, SEC, 60 * SEC);
        pace.moved(60_000);
        assert!(pace.waited(61 * SEC, 0).is_ok());
        assert!(pace.waited(SEC, 0).is_err());
    }

    #[test]
    fn zero_turns_the_check_off() {
        let mut pace = Pace::off();
        assert!(pace.waited(Duration::from_secs(1 << 40), 0).is_ok());
        let mut pace = Pace::new(0, Duration::ZERO, 60 * SEC);
        assert!(pace.waited(Duration::MAX, usize::MAX).is_ok());
        assert!(pace.waited(Duration::MAX, usize::MAX).is_ok());
        assert_eq!(pace.write_wait(), Some((60 * SEC, false)));
        assert_eq!(Pace::off().write_wait(), None);
    }

    #[test]
    fn a_write_waits_no_longer_than_the_allowance_left() {
        let mut pace = Pace::new(1000, 10 * SEC, 60 * SEC);
        assert_eq!(pace.write_wait(), Some((10 * SEC, true)));
        assert!(pace.waited(4 * SEC, 2000).is_ok());
        assert_eq!(pace.write_wait(), Some((8 * SEC, true)));
        pace.moved(1_000_000);
        assert_eq!(
            pace.write_wait(),
            Some((60 * SEC, false)),
            "the send timeout binds"
        );
    }
}
