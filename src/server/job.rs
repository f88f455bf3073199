//! `Job`: what the acceptor queues for a worker, a connection with a
//! complete (or failed) request head; and `JobQueue`, the acceptor's end of
//! the bounded crossbeam channel, which wakes the worker that went idle last
//! for each job queued (see `idle`).

use std::sync::Arc;
use std::time::Instant;

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

/// The sending end of the workers' queue. Dropping it closes the queue:
/// the workers take what is left, then end.
#[derive(Debug)]
pub struct JobQueue {
    tx: Option<Sender<Job>>,
    idle: Arc<IdleWorkers>,
}

impl JobQueue {
    /// The acceptor's end of the queue `tx`, whose workers wait on `idle`.
    pub fn new(tx: Sender<Job>, idle: Arc<IdleWorkers>) -> JobQueue {
        JobQueue { tx: Some(tx), idle }
    }

    /// Queues `job` without ever blocking, and wakes a worker for it.
    ///
    /// # Errors
    /// The job back when the queue is full or closed.
    #[allow(clippy::result_large_err)] // the job comes back by value, as crossbeam gives it
    pub fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        let Some(tx) = &self.tx else {
            return Err(TrySendError::Disconnected(job));
        };
        tx.try_send(job)?;
        self.idle.wake_one();
        Ok(())
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
