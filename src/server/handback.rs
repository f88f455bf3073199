//! The way back from the workers to the acceptor: keep-alive connections
//! to park, and places freed by connections that closed. A channel and the
//! acceptor's waker, rung only when the acceptor has something to do at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::server::conn::{ClientConn, Return};

/// How workers give keep-alive connections back to the acceptor (and how a
/// dropped connection frees its place): a channel, and a waker rung once per
/// batch, and only when the acceptor must act at once. Under load many
/// connections come back between two turns of the loop; at most the first
/// of them pays for the wake-up.
#[derive(Debug, Clone)]
pub struct Handback(Arc<HandbackShared>);

#[derive(Debug)]
struct HandbackShared {
    tx: Sender<Return>,
    waker: Arc<Waker>,
    /// Set by the first sender since the acceptor last looked.
    rung: AtomicBool,
}

impl Handback {
    /// A handback channel to the acceptor woken by `waker`, and its receiving end.
    pub fn new(waker: Arc<Waker>) -> (Handback, Receiver<Return>) {
        // Unbounded in type, bounded in fact: each connection is in it at
        // most once, and connections are capped by `max_connections`.
        let (tx, rx) = crossbeam_channel::unbounded();
        let rung = AtomicBool::new(false);
        (Handback(Arc::new(HandbackShared { tx, waker, rung })), rx)
    }

    /// Parks `conn` with the acceptor until its next request arrives.
    ///
    /// The acceptor is woken only when the client already sent something
    /// while the connection was away. Otherwise there is nothing to do yet:
    /// the socket stays registered, so the next request's readiness event
    /// wakes the acceptor; that event marks the still-busy entry, and the
    /// park, taken in later in the same turn, reads the socket at once.
    /// Until then the park waits at most one tick, which is also how late
    /// its idle deadline may start. Under keep-alive load this spares one
    /// wake-up per request.
    pub fn give_back(&self, conn: ClientConn) {
        let input = conn.input_flag();
        if self.0.tx.send(Return::Park(conn)).is_err() {
            return;
        }
        // Sent, then looked at; the acceptor sets the flag, then empties
        // the channel. Either it sees this message, or this sees its flag.
        fence(Ordering::SeqCst);
        if input.is_none_or(|flag| flag.load(Ordering::SeqCst)) {
            self.ring();
        }
    }

    /// Tells the acceptor the place at `key` is free. It is not woken for
    /// that: nothing waits on the place, and the acceptor takes the message
    /// in on its next turn, at most one tick later. A client that closes
    /// after every request so costs no wake-up.
    pub fn closed(&self, key: usize) {
        let _ = self.0.tx.send(Return::Closed(key));
    }

    /// Wakes the acceptor unless a wake-up is pending since it last looked.
    fn ring(&self) {
        // The message is in the channel before the flag is looked at, and the
        // acceptor clears the flag before it empties the channel: a message
        // that finds the flag set is seen by that coming turn.
        if !self.0.rung.swap(true, Ordering::SeqCst) {
            let _ = self.0.waker.wake();
        }
    }

    /// Called by the acceptor just before it empties the channel.
    pub(super) fn rearm(&self) {
        self.0.rung.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}
