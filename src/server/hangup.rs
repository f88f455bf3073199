//! A client that hangs up while its worker waits for the origin's answer.
//!
//! The worker is blocked reading the upstream socket and cannot see its
//! client go; the acceptor can, since the client's socket stays registered
//! with it while a worker has the connection (`handback`). So while a
//! worker waits for the answer to a GET or HEAD without a body, the
//! upstream socket it reads is published in the connection's [`Hangup`],
//! and the acceptor tells it when the client's input ends.
//!
//! A client that ends its input (a FIN) may have given up (curl
//! `--max-time`, a crawler's timeout), or may only be done sending and still
//! read the answer (`nc -N`, a script that half-closes after its request).
//! The two look the same on the wire, so the time tells them apart (nginx
//! and Squid take every half-close for a client gone): an end that comes
//! within [`GRACE`] of the request is a half-close, and the request is
//! served; a later one, while the origin has not answered, is a client that
//! gave up. Then the acceptor
//! shuts the upstream socket down, the read returns at once, and the worker
//! looks at its client: at its end with nothing before it, the request ends
//! as `client_aborted` (nginx's 499), instead of holding the worker, up to
//! `upstream_timeout`, for an answer nobody will read. With input before
//! the end (another request), the client is still there, and the request
//! is sent again, unwatched (GET and HEAD are safe to repeat). A request
//! pipelined behind another is never watched.
//!
//! Not cut: a call whose fill other requests wait on (they need the
//! answer). Once the body of an answer flows, a write to a client that
//! left fails, and the relay stops there.

use std::cell::RefCell;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::net::RecvFlags;

use crate::cache::fill::Fill;

/// How long after its request a client may end its input and still be
/// taken to wait for the answer (a half-close), rather than to have left.
pub const GRACE: Duration = Duration::from_millis(500);

/// One connection's watch, shared by its registration with the acceptor
/// and the worker that has it.
#[derive(Debug, Default)]
pub struct Hangup {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the client's input ended, as the acceptor saw it; kept for the
    /// connection's life (nothing can follow an end).
    ended: Option<Instant>,
    /// The request a worker watches: when its head came in.
    watched: Option<Instant>,
    /// The upstream socket a read blocks on, while it does.
    upstream: Option<Arc<TcpStream>>,
    /// A fill that other requests may be waiting on: while it has
    /// followers, the upstream call goes on for them.
    fill: Option<Arc<Fill>>,
    /// The call was cut: the client ended its input past the grace.
    cut: bool,
}

impl State {
    /// Whether the client's end of input, if any, came past the grace of
    /// the request watched.
    fn gave_up(&self) -> bool {
        match (self.ended, self.watched) {
            (Some(ended), Some(head)) => ended.saturating_duration_since(head) >= GRACE,
            _ => false,
        }
    }
}

thread_local! {
    /// The watch of the upstream call this worker makes, if it is watched.
    static CURRENT: RefCell<Option<Arc<Hangup>>> = const { RefCell::new(None) };
}

impl Hangup {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values: a panic cannot leave them half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the acceptor when the client's socket reported the end of
    /// its input (or an error) while a worker has the connection: cuts the
    /// upstream call if one is watched, the end came past the grace, and
    /// no other request waits on the call. The end is remembered, for a
    /// watch that begins later.
    pub fn client_input_ended(&self) {
        let mut state = self.lock();
        if state.ended.is_none() {
            state.ended = Some(Instant::now());
        }
        if state.cut
            || !state.gave_up()
            || state.fill.as_ref().is_some_and(|fill| fill.has_followers())
        {
            return;
        }
        state.cut = true;
        if let Some(upstream) = &state.upstream {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// Whether `socket`'s input has ended (or failed) with nothing unread
/// before the end: one look, without waiting.
pub fn at_end(socket: &impl AsFd) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(socket, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => true,
        Ok(_) => false,
        Err(errno) => errno != rustix::io::Errno::AGAIN && errno != rustix::io::Errno::INTR,
    }
}

/// Watches for the client on `client`, whose request came in at `head_at`,
/// hanging up during the upstream call this thread is about to make, until
/// the guard is dropped; `fill` is the fill the call feeds, if any.
///
/// # Errors
/// `Abandoned` when the client gave up already (its input ended past the
/// grace, with nothing before the end): the request need not go upstream.
pub fn watch(
    hangup: &Arc<Hangup>,
    client: &impl AsFd,
    head_at: Instant,
    fill: Option<&Arc<Fill>>,
) -> Result<Watching, Abandoned> {
    let mut state = hangup.lock();
    state.watched = Some(head_at);
    // Looked at under the lock that the acceptor's news takes: an end
    // told before is seen here, one told after finds the watch.
    if state.gave_up() && at_end(client) {
        state.watched = None;
        return Err(Abandoned);
    }
    state.upstream = None;
    state.fill = fill.cloned();
    state.cut = false;
    drop(state);
    CURRENT.with(|current| *current.borrow_mut() = Some(hangup.clone()));
    Ok(Watching {
        hangup: hangup.clone(),
    })
}

/// The watch of one upstream call; dropping it ends the watch.
#[derive(Debug)]
pub struct Watching {
    hangup: Arc<Hangup>,
}

impl Watching {
    /// Whether the acceptor cut the call: the client gave up.
    pub fn hung_up(&self) -> bool {
        self.hangup.lock().cut
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
        let mut state = self.hangup.lock();
        state.watched = None;
        state.upstream = None;
        state.fill = None;
        state.cut = false;
    }
}

/// Publishes `upstream` while this thread blocks reading it, if the call
/// under way is watched.
///
/// # Errors
/// `Abandoned` when the call was cut already: the read is not made.
pub fn reading(upstream: &Arc<TcpStream>) -> Result<Option<Reading>, Abandoned> {
    let Some(hangup) = CURRENT.with(|current| current.borrow().clone()) else {
        return Ok(None);
    };
    let mut state = hangup.lock();
    if state.cut {
        return Err(Abandoned);
    }
    state.upstream = Some(Arc::clone(upstream));
    drop(state);
    Ok(Some(Reading {
        hangup: Some(hangup),
    }))
}

/// The client hung up: the upstream call was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// A read published for the acceptor to cut; dropping it unpublishes it.
#[derive(Debug)]
pub struct Reading {
    /// Taken by `done`, which unpublishes the read itself.
    hangup: Option<Arc<Hangup>>,
}

impl Reading {
    /// Unpublishes the read.
    ///
    /// # Errors
    /// `Abandoned` when the call was cut meanwhile: what the read returned
    /// is no answer.
    pub fn done(mut self) -> Result<(), Abandoned> {
        let Some(hangup) = self.hangup.take() else {
            return Ok(());
        };
        let mut state = hangup.lock();
        state.upstream = None;
        if state.cut { Err(Abandoned) } else { Ok(()) }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(hangup) = &self.hangup {
            hangup.lock().upstream = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A connected pair on loopback: (ours, theirs).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let theirs = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        (ours, theirs)
    }

    /// A request head that came in long enough ago for an end of input
    /// now to be a client that gave up.
    fn long_ago() -> Instant {
        Instant::now()
            .checked_sub(GRACE * 2)
            .expect("a clock past its start")
    }

    /// Whether a read would be published now (`Ok(false)`: not watched).
    fn reading_now(upstream: &Arc<TcpStream>) -> Result<bool, Abandoned> {
        reading(upstream).map(|reading| reading.is_some())
    }

    #[test]
    fn an_end_past_the_grace_cuts_the_published_read() {
        let (client, _client_end) = pair();
        let (upstream, _origin) = pair();
        let upstream = Arc::new(upstream);
        let hangup = Arc::new(Hangup::default());
        let watching = watch(&hangup, &client, long_ago(), None).expect("watched");
        let acceptor = {
            let hangup = hangup.clone();
            std::thread::spawn(move || {
                // Once the read is published, as the acceptor would find it.
                while hangup.lock().upstream.is_none() {
                    std::thread::yield_now();
                }
                hangup.client_input_ended();
            })
        };
        let reading = reading(&upstream).expect("not cut").expect("watched");
        let mut buf = [0u8; 16];
        // The origin never answers: only the acceptor's cut ends this read.
        let read = (&*upstream).read(&mut buf).expect("read");
        assert_eq!(read, 0);
        assert_eq!(reading.done(), Err(Abandoned));
        assert!(watching.hung_up());
        acceptor.join().expect("acceptor");
        // The next read of the call is not made.
        assert_eq!(reading_now(&upstream), Err(Abandoned));
        drop(watching);
        assert_eq!(reading_now(&upstream), Ok(false), "the watch ended");
    }

    #[test]
    fn an_end_within_the_grace_is_a_half_close() {
        let (client, _client_end) = pair();
        let (upstream, _origin) = pair();
        let upstream = Arc::new(upstream);
        let hangup = Arc::new(Hangup::default());
        let watching = watch(&hangup, &client, Instant::now(), None).expect("watched");
        let reading = reading(&upstream).expect("not cut").expect("watched");
        hangup.client_input_ended();
        assert!(!watching.hung_up());
        assert_eq!(reading.done(), Ok(()));
    }

    #[test]
    fn an_end_told_before_the_watch_is_seen_by_it() {
        let (client, client_end) = pair();
        let hangup = Arc::new(Hangup::default());
        drop(client_end);
        std::thread::sleep(Duration::from_millis(50));
        hangup.client_input_ended();
        assert_eq!(
            watch(&hangup, &client, long_ago(), None).err(),
            Some(Abandoned)
        );
        // A request that came in after the end: a half-close before it.
        assert!(watch(&hangup, &client, Instant::now(), None).is_ok());
    }

    #[test]
    fn an_end_with_input_before_it_is_not_a_client_gone() {
        let (client, mut client_end) = pair();
        client_end
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("write");
        client_end.shutdown(Shutdown::Write).expect("shutdown");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!at_end(&client), "a pipelined request before the end");
        let hangup = Arc::new(Hangup::default());
        hangup.client_input_ended();
        assert!(watch(&hangup, &client, long_ago(), None).is_ok());
        let (client, client_end) = pair();
        assert!(!at_end(&client), "nothing yet");
        drop(client_end);
        std::thread::sleep(Duration::from_millis(50));
        assert!(at_end(&client));
    }

    #[test]
    fn without_a_watch_nothing_is_published() {
        let (upstream, _origin) = pair();
        assert_eq!(reading_now(&Arc::new(upstream)), Ok(false));
    }
}
