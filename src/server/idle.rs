//! Which worker a queued job wakes: the one that went idle last, as
//! Varnish's pools do (its idle queue is a stack). That worker's stack and
//! buffers are still in the CPU's caches, and under light load only as many
//! workers take turns as the load needs, however large the pool: with a
//! blocking `recv` on the crossbeam channel every job woke the worker that
//! had waited longest, so a pool of 512 cycled through 512 cold threads (a
//! cache hit cost 2.6 times the CPU it cost with 32 workers), and each
//! worker spun and yielded a few times before it slept.
//!
//! The jobs themselves stay in the bounded crossbeam channel: a worker takes
//! one with `try_recv`, and when there is none it puts itself on the idle
//! stack and parks until the acceptor, having queued a job, wakes it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Thread};

use crossbeam_channel::{Receiver, TryRecvError};

/// How often a worker with nothing to do yields before it goes on the stack.
const YIELDS_BEFORE_SLEEP: usize = 1;

/// Idle workers, the most recently idle on top.
#[derive(Debug)]
pub struct IdleWorkers {
    stack: Mutex<Vec<Waiting>>,
    /// Entries past which stale ones are swept (a few per worker at most).
    sweep_above: usize,
    /// Set once no job will ever come: every worker is woken to see it.
    closed: AtomicBool,
    /// Workers asleep waiting for a job.
    asleep: AtomicUsize,
}

/// A worker on the idle stack. `idle` is the worker's own flag: true while
/// it waits, cleared by whoever claims it (the acceptor waking it, or the
/// worker itself when it found a job on its own). An entry whose flag is
/// clear is stale and skipped.
#[derive(Debug)]
struct Waiting {
    thread: Thread,
    idle: Arc<AtomicBool>,
}

/// One worker's side of the idle stack.
#[derive(Debug)]
pub struct Idler {
    workers: Arc<IdleWorkers>,
    idle: Arc<AtomicBool>,
}

impl IdleWorkers {
    /// An idle stack for a pool of `workers`.
    pub fn new(workers: usize) -> Arc<IdleWorkers> {
        Arc::new(IdleWorkers {
            stack: Mutex::new(Vec::with_capacity(workers)),
            sweep_above: 4 * workers.max(1),
            closed: AtomicBool::new(false),
            asleep: AtomicUsize::new(0),
        })
    }

    /// The handle one worker waits with.
    pub fn idler(self: &Arc<Self>) -> Idler {
        Idler {
            workers: self.clone(),
            idle: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Wakes the worker that went idle last, if one is idle: called by the
    /// acceptor after it queued a job.
    pub fn wake_one(&self) {
        let mut stack = self.lock();
        while let Some(waiting) = stack.pop() {
            if waiting.idle.swap(false, Ordering::SeqCst) {
                drop(stack);
                waiting.thread.unpark();
                return;
            }
        }
    }

    /// No more jobs will come (the queue's sender is gone): wakes every
    /// waiting worker, so each sees it and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.lock());
        for entry in waiting {
            entry.idle.store(false, Ordering::SeqCst);
            entry.thread.unpark();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // The stack holds plain handles; a panic cannot leave it half-changed.
        self.stack.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Idler {
    /// Whether a job queued now would find a worker asleep to take it: then
    /// this worker may spend a moment on its own connection without
    /// holding anyone up.
    pub fn others_asleep(&self) -> bool {
        self.workers.asleep.load(Ordering::Relaxed) > 0
    }

    /// The next job: at once when one is queued, else after waiting on the
    /// idle stack. `None` once the queue is closed and empty.
    pub fn next_job<T>(&self, jobs: &Receiver<T>) -> Option<T> {
        loop {
            // Under load the next job is often queued while this worker
            // yields its CPU once or twice: cheaper than sleeping and being
            // woken for it.
            for _ in 0..YIELDS_BEFORE_SLEEP {
                match jobs.try_recv() {
                    Ok(job) => return Some(job),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => thread::yield_now(),
                }
            }
            if self.workers.closed.load(Ordering::SeqCst) {
                // Closed: the sender is gone, and what is left was taken above.
                return jobs.try_recv().ok();
            }
            self.idle.store(true, Ordering::SeqCst);
            {
                let mut stack = self.workers.lock();
                if stack.len() >= self.workers.sweep_above {
                    stack.retain(|entry| entry.idle.load(Ordering::SeqCst));
                }
                stack.push(Waiting {
                    thread: thread::current(),
                    idle: self.idle.clone(),
                });
            }
            // A job queued before this worker was on the stack woke no one
            // for it: look once more before sleeping.
            match jobs.try_recv() {
                Ok(job) => {
                    // Its entry stays behind, stale once the flag is clear.
                    self.idle.store(false, Ordering::SeqCst);
                    return Some(job);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            // A claim clears the flag before it unparks, so no wake-up is lost;
            // a stray unpark only makes this look again.
            self.workers.asleep.fetch_add(1, Ordering::Relaxed);
            while self.idle.load(Ordering::SeqCst) && !self.workers.closed.load(Ordering::SeqCst) {
                thread::park();
            }
            self.workers.asleep.fetch_sub(1, Ordering::Relaxed);
            self.idle.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Starts `count` workers that report which of them took each job.
    fn workers(
        count: usize,
        idle: &Arc<IdleWorkers>,
        jobs: &Receiver<u32>,
    ) -> (mpsc::Receiver<(usize, u32)>, Vec<thread::JoinHandle<()>>) {
        let (done, results) = mpsc::channel();
        let handles = (0..count)
            .map(|n| {
                let (idler, jobs, done) = (idle.idler(), jobs.clone(), done.clone());
                thread::spawn(move || {
                    while let Some(job) = idler.next_job(&jobs) {
                        let _ = done.send((n, job));
                    }
                })
            })
            .collect();
        (results, handles)
    }

    /// Waits until `count` workers are parked on the stack.
    fn wait_parked(idle: &IdleWorkers, count: usize) {
        let deadline = std::time::Instant::now() + LIMIT;
        while idle
            .lock()
            .iter()
            .filter(|w| w.idle.load(Ordering::SeqCst))
            .count()
            < count
        {
            assert!(
                std::time::Instant::now() < deadline,
                "workers never went idle"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_job_is_taken_and_closing_ends_every_worker() {
        let idle = IdleWorkers::new(4);
        let (tx, rx) = crossbeam_channel::bounded(64);
        let (results, handles) = workers(4, &idle, &rx);
        for job in 0..1000 {
            tx.send(job).expect("queue");
            idle.wake_one();
        }
        let mut seen: Vec<u32> = (0..1000)
            .map(|_| results.recv_timeout(LIMIT).expect("a job lost").1)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        drop(tx);
        idle.close();
        for handle in handles {
            handle.join().expect("worker ends");
        }
    }

    #[test]
    fn a_job_wakes_the_worker_that_went_idle_last() {
        let idle = IdleWorkers::new(3);
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (results, handles) = workers(3, &idle, &rx);
        wait_parked(&idle, 3);
        // One job at a time: each is taken by the worker that went idle
        // last, which is the one that took the job before.
        tx.send(0).expect("queue");
        idle.wake_one();
        let (first, _) = results.recv_timeout(LIMIT).expect("job 0");
        for job in 1..20 {
            wait_parked(&idle, 3);
            tx.send(job).expect("queue");
            idle.wake_one();
            let (taker, _) = results.recv_timeout(LIMIT).expect("a job lost");
            assert_eq!(taker, first, "job {job} woke a colder worker");
        }
        drop(tx);
        idle.close();
        for handle in handles {
            handle.join().expect("worker ends");
        }
    }

    #[test]
    fn a_job_queued_without_a_wake_up_is_still_taken() {
        // The acceptor queues, then wakes; a worker that looks between the
        // two finds the job itself and leaves a stale entry behind.
        let idle = IdleWorkers::new(1);
        let (tx, rx) = crossbeam_channel::bounded(8);
        tx.send(7).expect("queue");
        let idler = idle.idler();
        assert_eq!(idler.next_job(&rx), Some(7));
        idle.wake_one();
        tx.send(8).expect("queue");
        assert_eq!(idler.next_job(&rx), Some(8));
        drop(tx);
        idle.close();
        assert_eq!(idler.next_job(&rx), None);
    }
}
