//! `Job`: what the acceptor queues for a worker, a connection with a
//! complete (or failed) request head; and `JobQueue`, the acceptor's end of
//! the bounded crossbeam channel, which wakes the worker that went idle last
//! for each job queued (see `idle`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use crate::error::ProxyError;
use crate::http::request::RequestHead;
use crate::server::conn::ClientConn;
use crate::server::idle::IdleWorkers;

/// A connection with a complete (or failed) request head, for a worker.
#[derive(Debug)]
pub struct Job {
    pub conn: ClientConn,
    /// The parsed head (already consumed from `conn`), or why it failed.
    pub head: Result<RequestHead, ProxyError>,
    /// When the head was complete.
    pub queued_at: Instant,
}

/// How long a queued job may wait for the running workers before another
/// worker is woken for it (see `idle`).
const STALL: Duration = Duration::from_millis(1);

/// The sending end of the workers' queue. Dropping it closes the queue:
/// the workers take what is left, then end.
#[derive(Debug)]
pub struct JobQueue {
    tx: Option<Sender<Job>>,
    idle: Arc<IdleWorkers>,
    /// The last look at the queue (`nudge`): when, how many jobs were
    /// queued, and how many had been taken in all.
    looked: Look,
}

#[derive(Debug, Clone, Copy)]
struct Look {
    at: Instant,
    queued: usize,
    taken: usize,
}

impl JobQueue {
    /// The acceptor's end of the queue `tx`, whose workers wait on `idle`.
    pub fn new(tx: Sender<Job>, idle: Arc<IdleWorkers>) -> JobQueue {
        let looked = Look {
            at: Instant::now(),
            queued: 0,
            taken: idle.taken(),
        };
        JobQueue {
            tx: Some(tx),
            idle,
            looked,
        }
    }

    /// Queues `job` without ever blocking, and wakes a worker for it unless
    /// enough are running to take it soon.
    ///
    /// # Errors
    /// The job back when the queue is full or closed.
    #[allow(clippy::result_large_err)] // the job comes back by value, as crossbeam gives it
    pub fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        let Some(tx) = &self.tx else {
            return Err(TrySendError::Disconnected(job));
        };
        tx.try_send(job)?;
        self.idle.wake_for_job();
        Ok(())
    }

    /// Called by the acceptor on every turn of its loop: once jobs that
    /// were queued `STALL` ago are still there, the running workers are
    /// held up (slow clients, a disk), and a worker is woken for each such
    /// job. Says how many were woken, and how soon it wants to be called
    /// again while jobs wait.
    pub fn nudge(&mut self, now: Instant) -> (usize, Option<Duration>) {
        let queued = self.len();
        let since = now.saturating_duration_since(self.looked.at);
        if since < STALL && self.looked.queued > 0 {
            return (0, Some(STALL - since));
        }
        let taken = self.idle.taken();
        // The queue is first in, first out: of the jobs there at the last
        // look, those not taken since have waited all this while.
        let late = self
            .looked
            .queued
            .saturating_sub(taken.wrapping_sub(self.looked.taken))
            .min(queued);
        let woken = (0..late).take_while(|_| self.idle.wake_one()).count();
        self.looked = Look {
            at: now,
            queued,
            taken,
        };
        (woken, (queued > 0).then_some(STALL))
    }

    /// Jobs waiting for a worker.
    pub fn len(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }
}

impl Drop for JobQueue {
    fn drop(&mut self) {
        // The sender goes first, so that every worker woken sees the end.
        drop(self.tx.take());
        self.idle.close();
    }
}
