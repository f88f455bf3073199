//! The hand-back protocol between workers and the acceptor, explained once.
//!
//! A client connection is registered with the acceptor's readiness loop
//! for its whole life (one `Registration`, a place `key` in the acceptor's
//! slab), so handing it to a worker and back costs no system call. The
//! acceptor takes a connection out when a whole request head is in and
//! marks its place busy; the worker serves it (and, when no other worker
//! is running, waits a moment for the next request itself, clearing the
//! `input` mark when it reads that input) and then either
//! - `give_back`s it to wait for its next request (keep-alive),
//! - `linger`s it: it was answered and must close, and the acceptor drains
//!   what the client still sends for a moment, without blocking anyone, so
//!   that closing with unread bytes does not reset the connection before
//!   the client has read the answer (lingering close, as Apache httpd does),
//! - or drops it (closed, or detached for a tunnel), which frees its place.
//!
//! Messages travel on one channel; the acceptor's waker is rung only when
//! the acceptor must act at once, and at most once per batch. The socket
//! is edge-triggered and stays registered while a worker has it: input that
//! arrives meanwhile marks the busy place (`input` flag), and the park that
//! comes back later in the same turn reads the socket at once. A connection
//! with no news waits at most one tick (100 ms) before its idle deadline
//! starts. Under keep-alive load this spares a wake-up per request.
//!
//! Generic over what is handed back, so that this protocol knows nothing
//! of what a connection holds.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Registry, Waker};

use crate::server::hangup::Hangup;

/// Something a worker tells the acceptor about a connection it had.
#[derive(Debug)]
pub enum Return<C> {
    /// Wait for the next request on this keep-alive connection.
    Park(C),
    /// Answered and closing: drain its input for a moment, then close.
    Linger(C),
    /// The connection with this key is gone (closed or detached).
    Closed(usize),
}

/// How workers reach the acceptor: a channel, and a waker rung once per
/// batch and only when the acceptor must act at once.
#[derive(Debug)]
pub struct Handback<C>(Arc<Shared<C>>);

impl<C> Clone for Handback<C> {
    fn clone(&self) -> Self {
        Handback(self.0.clone())
    }
}

#[derive(Debug)]
struct Shared<C> {
    tx: Sender<Return<C>>,
    waker: Arc<Waker>,
    /// Set by the first sender since the acceptor last looked.
    rung: AtomicBool,
}

impl<C> Handback<C> {
    /// A channel to the acceptor woken by `waker`, and its receiving end.
    pub fn new(waker: Arc<Waker>) -> (Handback<C>, Receiver<Return<C>>) {
        // Unbounded in type, bounded in fact: each connection is in it at
        // most once, and connections are capped by `max_connections`.
        let (tx, rx) = crossbeam_channel::unbounded();
        let rung = AtomicBool::new(false);
        (Handback(Arc::new(Shared { tx, waker, rung })), rx)
    }

    /// Parks `conn` with the acceptor until its next request arrives. The
    /// acceptor is woken only when input arrived while a worker had it
    /// (`input`, from the connection's registration); otherwise the next
    /// readiness event does it.
    pub fn give_back(&self, conn: C, input: Option<&AtomicBool>) {
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

    /// Hands an answered connection to the acceptor for its lingering
    /// close. Not urgent: it is taken in on the acceptor's next turn.
    pub fn linger(&self, conn: C) {
        let _ = self.0.tx.send(Return::Linger(conn));
    }

    /// Registers the place `key` of a connection whose socket is `fd`.
    pub fn register(&self, key: usize, fd: RawFd, registry: Arc<Registry>) -> Registration<C> {
        Registration {
            key,
            fd,
            tx: self.0.tx.clone(),
            registry,
            armed: true,
            signals: Arc::default(),
        }
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
    pub fn rearm(&self) {
        self.0.rung.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

/// A connection's place (`key`) in the acceptor's readiness loop. Dropping
/// it tells the acceptor the place is free; it is not woken for that
/// (nothing waits on the place), so a client that closes after every
/// request costs no wake-up.
#[derive(Debug)]
pub struct Registration<C> {
    pub key: usize,
    fd: RawFd,
    tx: Sender<Return<C>>,
    registry: Arc<Registry>,
    armed: bool,
    /// What the acceptor tells the worker that has the connection.
    signals: Arc<Signals>,
}

/// What the acceptor tells the worker that has a connection, shared by
/// the connection's `Registration` and its busy place in the acceptor's
/// loop: one reference taken as the connection goes to a worker.
#[derive(Debug, Default)]
pub struct Signals {
    /// Set by the acceptor when input arrives while a worker has the
    /// connection.
    pub input: AtomicBool,
    /// Told by the acceptor when the client's input ends while a worker
    /// waits for the origin's answer (`hangup`).
    pub hangup: Arc<Hangup>,
}

impl<C> Registration<C> {
    /// What the acceptor tells the worker that has the connection.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// Takes the socket out of the acceptor's loop for good (a tunnel,
    /// whose bytes another loop relays); the place is freed.
    pub fn detach(self) {
        let _ = self.registry.deregister(&mut SourceFd(&self.fd));
    }

    /// Forgets the place without telling the acceptor: the acceptor itself
    /// is closing the connection and frees the place directly.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl<C> Drop for Registration<C> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Return::Closed(self.key));
        }
    }
}
