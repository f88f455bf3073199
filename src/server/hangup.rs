//! A client that hangs up while its worker waits for the origin's answer.
//!
//! The worker is blocked reading the upstream socket and cannot see its
//! client go; the acceptor can, since the client's socket stays registered
//! with it while a worker has the connection (`handback`). So while a
//! worker waits for the answer to a GET or HEAD without a body, the
//! upstream socket it reads is published in the connection's [`Hangup`].
//! When the acceptor sees the end of the client's input, it shuts that
//! socket down: the read returns at once and the upstream call fails. The
//! worker then looks at its client: at its end with nothing before it, the
//! request ends as `client_aborted` (nginx's 499), instead of holding the
//! worker, up to `upstream_timeout`, for an answer nobody will read. With
//! input before the end (a pipelined request, then a half-close), the
//! client is still there, and the request is sent again, unwatched (GET
//! and HEAD are safe to repeat).
//!
//! Not cut: a call whose fill other requests wait on (they need the
//! answer). Once the body of an answer flows, a write to a client that
//! left fails, and the relay stops there.

use std::cell::RefCell;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::net::RecvFlags;

use crate::cache::fill::Fill;

/// One connection's watch, shared by its registration with the acceptor
/// and the worker that has it.
#[derive(Debug, Default)]
pub struct Hangup {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// A worker watches: it is in an upstream call for this connection.
    watched: bool,
    /// The upstream socket a read blocks on, while it does.
    upstream: Option<Arc<TcpStream>>,
    /// A fill that other requests may be waiting on: while it has
    /// followers, the upstream call goes on for them.
    fill: Option<Arc<Fill>>,
    /// The client's input ended: the call is cut.
    hung_up: bool,
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
    /// upstream call, if one is watched and no other request waits on it.
    pub fn client_hung_up(&self) {
        let mut state = self.lock();
        if !state.watched
            || state.hung_up
            || state.fill.as_ref().is_some_and(|fill| fill.has_followers())
        {
            return;
        }
        state.hung_up = true;
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

/// Watches for the client on `client` hanging up during the upstream call
/// this thread is about to make, until the guard is dropped; `fill` is the
/// fill the call feeds, if any. `seen` says whether the acceptor saw input
/// arrive since the worker took the connection: then the client may have
/// left already, and that is looked at now.
///
/// # Errors
/// `Abandoned` when the client has hung up already: the request need not
/// go upstream.
pub fn watch(
    hangup: &Arc<Hangup>,
    client: &impl AsFd,
    seen: bool,
    fill: Option<&Arc<Fill>>,
) -> Result<Watching, Abandoned> {
    if seen && at_end(client) {
        return Err(Abandoned);
    }
    *hangup.lock() = State {
        watched: true,
        upstream: None,
        fill: fill.cloned(),
        hung_up: false,
    };
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
    /// Whether the acceptor cut the call: the client's input ended.
    pub fn hung_up(&self) -> bool {
        self.hangup.lock().hung_up
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
        *self.hangup.lock() = State::default();
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
    if state.hung_up {
        return Err(Abandoned);
    }
    state.upstream = Some(Arc::clone(upstream));
    drop(state);
    Ok(Some(Reading { hangup }))
}

/// The client hung up: the upstream call was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// A read published for the acceptor to cut; dropping it unpublishes it.
#[derive(Debug)]
pub struct Reading {
    hangup: Arc<Hangup>,
}

impl Reading {
    /// Unpublishes the read.
    ///
    /// # Errors
    /// `Abandoned` when the call was cut meanwhile: what the read returned
    /// is no answer.
    pub fn done(self) -> Result<(), Abandoned> {
        let mut state = self.hangup.lock();
        state.upstream = None;
        if state.hung_up {
            Err(Abandoned)
        } else {
            Ok(())
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.hangup.lock().upstream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A connected pair on loopback: (ours, theirs).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let theirs = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        (ours, theirs)
    }

    /// Whether a read would be published now (`Ok(false)`: not watched).
    fn reading_now(upstream: &Arc<TcpStream>) -> Result<bool, Abandoned> {
        reading(upstream).map(|reading| reading.is_some())
    }

    #[test]
    fn a_hang_up_cuts_the_published_read() {
        let (client, _client_end) = pair();
        let (upstream, _origin) = pair();
        let upstream = Arc::new(upstream);
        let hangup = Arc::new(Hangup::default());
        let watching = watch(&hangup, &client, false, None).expect("watched");
        let acceptor = {
            let hangup = hangup.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                hangup.client_hung_up();
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
    fn a_hang_up_outside_a_watch_cuts_nothing() {
        let (client, _client_end) = pair();
        let (upstream, _origin) = pair();
        let upstream = Arc::new(upstream);
        let hangup = Arc::new(Hangup::default());
        hangup.client_hung_up();
        let watching = watch(&hangup, &client, false, None).expect("watched");
        assert!(!watching.hung_up());
        assert_eq!(reading_now(&upstream), Ok(true));
    }

    #[test]
    fn the_end_of_input_is_told_from_input_before_it() {
        let (client, mut client_end) = pair();
        assert!(!at_end(&client), "nothing yet");
        client_end
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .expect("write");
        client_end.shutdown(Shutdown::Write).expect("shutdown");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!at_end(&client), "a pipelined request before the end");
        let (client, client_end) = pair();
        drop(client_end);
        std::thread::sleep(Duration::from_millis(50));
        assert!(at_end(&client));
    }

    #[test]
    fn a_client_gone_before_the_watch_is_seen_at_once() {
        let (client, client_end) = pair();
        let hangup = Arc::new(Hangup::default());
        drop(client_end);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(watch(&hangup, &client, true, None).err(), Some(Abandoned));
        // Without news from the acceptor, no look is taken.
        assert!(watch(&hangup, &client, false, None).is_ok());
    }

    #[test]
    fn without_a_watch_nothing_is_published() {
        let (upstream, _origin) = pair();
        assert_eq!(reading_now(&Arc::new(upstream)), Ok(false));
    }
}
