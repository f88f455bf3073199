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
pub struct JobQueue<J = Job> {
    tx: Option<Sender<J>>,
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

impl<J> JobQueue<J> {
    /// The acceptor's end of the queue `tx`, whose workers wait on `idle`.
    pub fn new(tx: Sender<J>, idle: Arc<IdleWorkers>) -> JobQueue<J> {
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
    pub fn try_send(&self, job: J) -> Result<(), TrySendError<J>> {
        let Some(tx) = &self.tx else {
            return Err(TrySendError::Disconnected(job));
        };
        tx.try_send(job)?;
        self.idle.wake_for_job();
        Ok(())
    }

    /// Called by the acceptor on every turn of its loop: once no job was
    /// taken for `STALL` while some waited, the running workers are held up
    /// (a disk, long copies), and a worker is woken for each job that
    /// waited all that while. A queue that moves, however long, wakes
    /// nobody: its workers are busy, and more threads would only share the
    /// same CPUs (with 64 clients of 1 MiB hits, the acceptor woke dozens a
    /// millisecond that then ran beside the clients). Says how many were
    /// woken, and how soon it wants to be called again while jobs wait.
    pub fn nudge(&mut self, now: Instant) -> (usize, Option<Duration>) {
        let queued = self.len();
        let since = now.saturating_duration_since(self.looked.at);
        if since < STALL && self.looked.queued > 0 {
            return (0, Some(STALL - since));
        }
        let taken = self.idle.taken();
        // Running workers that took a job since the last look are busy, not
        // held up: waking more would only give the CPUs more threads to
        // share. Once none was taken, the queue stands still, and each job
        // that was already there has waited all this while (it is first in,
        // first out).
        let late = if taken == self.looked.taken {
            self.looked.queued.min(queued)
        } else {
            0
        };
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

impl<J> Drop for JobQueue<J> {
    fn drop(&mut self) {
        // The sender goes first, so that every worker woken sees the end.
        drop(self.tx.take());
        self.idle.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::idle::tests::{Task, holding, parked_pool};
    use std::sync::mpsc;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Queues a job that reports `id` when it starts, then computes (holds
    /// its worker, not waiting on a socket) until released.
    fn queue_holding(
        queue: &JobQueue<Task>,
        started: &mpsc::Sender<u32>,
        id: u32,
    ) -> mpsc::Sender<()> {
        let (task, release) = holding(started, id, false);
        queue
            .try_send(task)
            .map_err(|_| "queue full")
            .expect("queued");
        release
    }

    /// Releases every held job, closes the queue and waits for the workers.
    fn end(
        queue: JobQueue<Task>,
        releases: &[mpsc::Sender<()>],
        workers: Vec<std::thread::JoinHandle<()>>,
    ) {
        for release in releases {
            let _ = release.send(());
        }
        drop(queue);
        for worker in workers {
            worker.join().expect("worker ends");
        }
    }

    #[test]
    fn a_job_the_running_workers_leave_waiting_gets_a_worker_once_stalled() {
        // One CPU: two running workers are enough, so a third job wakes
        // nobody; if they stay busy (not waiting on a socket), the nudge
        // wakes one for it after STALL.
        let (idle, tx, workers) = parked_pool(3);
        let mut queue = JobQueue::new(tx, Arc::clone(&idle));
        let (started, starts) = mpsc::channel::<u32>();
        let mut releases = Vec::new();
        let mut hold = |id: u32| releases.push(queue_holding(&queue, &started, id));
        hold(0);
        assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
        hold(1);
        assert_eq!(starts.recv_timeout(LIMIT), Ok(1));
        hold(2);
        assert_eq!(
            starts.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the third job woke a worker while two ran"
        );
        let now = Instant::now();
        assert_eq!(queue.nudge(now), (0, Some(STALL)), "first look");
        assert_eq!(queue.nudge(now + STALL / 2).0, 0, "not stalled yet");
        assert_eq!(queue.nudge(now + STALL).0, 1, "one worker woken");
        assert_eq!(starts.recv_timeout(LIMIT), Ok(2), "the third job ran");
        end(queue, &releases, workers);
    }

    #[test]
    fn a_queue_that_moves_wakes_nobody_until_it_stands_still() {
        // One CPU, two running workers are enough. Jobs 2 and 3 wait; job 0
        // ends and its worker takes job 2: the queue moved, so job 3 wakes
        // nobody at the next look, though it waited STALL. At the look
        // after, nothing was taken since, and it gets the third worker.
        let (idle, tx, workers) = parked_pool(3);
        let mut queue = JobQueue::new(tx, Arc::clone(&idle));
        let (started, starts) = mpsc::channel::<u32>();
        let mut releases = Vec::new();
        let mut hold = |id: u32| releases.push(queue_holding(&queue, &started, id));
        hold(0);
        assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
        hold(1);
        assert_eq!(starts.recv_timeout(LIMIT), Ok(1));
        hold(2);
        hold(3);
        let now = Instant::now();
        assert_eq!(queue.nudge(now), (0, Some(STALL)), "first look");
        let _ = releases[0].send(());
        assert_eq!(
            starts.recv_timeout(LIMIT),
            Ok(2),
            "job 0's worker took job 2"
        );
        assert_eq!(queue.nudge(now + STALL).0, 0, "the queue moved");
        assert_eq!(
            starts.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "job 3 woke a worker while the queue moved"
        );
        assert_eq!(queue.nudge(now + 2 * STALL).0, 1, "the queue stood still");
        assert_eq!(starts.recv_timeout(LIMIT), Ok(3), "job 3 ran");
        end(queue, &releases, workers);
    }
}
