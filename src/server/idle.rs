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
//!
//! A queued job wakes a worker only while few are running. A worker runs
//! from when it is woken until it goes back on the stack, except while it
//! waits on a socket (an origin's answer, a name lookup, a client's next
//! request, a client that does not read as fast as it is written to; see
//! [`waiting`]): a worker that waits does not count, one that computes or
//! copies does, and will come for the next job as soon as it is done.
//! With the origin near, a pool of 512 then serves from a queue kept by a
//! handful of running workers, as a pool of 8 would, instead of waking a
//! thread per request (which cost a cache hit 1.5 times the CPU); with the
//! origin far, nearly every worker waits, so each job wakes one as before.
//! A job left to the running workers is counted, and when one of them
//! starts waiting on a socket before taking it, that one wakes a worker for
//! it. Should the running workers be stuck after all (a disk, a long copy),
//! the acceptor sees the queue stand still and wakes one more (`nudge`).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Thread};

use crossbeam_channel::{Receiver, TryRecvError};

/// How often a worker with nothing to do yields before it goes on the stack.
const YIELDS_BEFORE_SLEEP: usize = 1;

/// Running workers per CPU past which a queued job wakes nobody: enough to
/// keep every CPU busy while one of them is between two jobs.
const RUNNING_PER_CPU: usize = 2;

thread_local! {
    /// The pool of the worker running on this thread, for [`waiting`].
    static POOL: OnceCell<Arc<IdleWorkers>> = const { OnceCell::new() };
}

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
    /// Workers off the stack and not waiting on a socket: those that will
    /// come for the next job soon.
    running: AtomicUsize,
    /// Past this many running, a queued job is left to one of them.
    enough_running: usize,
    /// Jobs taken so far: whether the queue moves.
    taken: AtomicUsize,
    /// Jobs queued that woke nobody, since enough workers ran: the next
    /// worker to wait on a socket wakes one for such a job.
    unwoken: AtomicUsize,
    /// Such jobs a worker was then woken for (`stop_running`): the next
    /// job taken is that one, not another unwoken one.
    handed: AtomicUsize,
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
    /// An idle stack for a pool of `workers`, which all start running (and
    /// go on the stack at once), on a machine of `cpus`.
    pub fn new(workers: usize, cpus: usize) -> Arc<IdleWorkers> {
        Arc::new(IdleWorkers {
            stack: Mutex::new(Vec::with_capacity(workers)),
            sweep_above: 4 * workers.max(1),
            closed: AtomicBool::new(false),
            asleep: AtomicUsize::new(0),
            running: AtomicUsize::new(workers),
            enough_running: RUNNING_PER_CPU * cpus.max(1),
            taken: AtomicUsize::new(0),
            unwoken: AtomicUsize::new(0),
            handed: AtomicUsize::new(0),
        })
    }

    /// The handle one worker waits with.
    pub fn idler(self: &Arc<Self>) -> Idler {
        Idler {
            workers: self.clone(),
            idle: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called by the acceptor after it queued a job: wakes the worker that
    /// went idle last, unless enough are running to take the job soon.
    pub fn wake_for_job(&self) {
        // Queued, then counted; a worker going idle uncounts itself, then
        // looks at the queue: either it finds the job, or this sees it gone.
        fence(Ordering::SeqCst);
        if self.running.load(Ordering::SeqCst) < self.enough_running {
            self.wake_one();
        } else {
            self.unwoken.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Claims one job that woke nobody, if there is one.
    fn claim_unwoken(&self) -> bool {
        take_one(&self.unwoken)
    }

    /// Counts a job taken against those that woke nobody: it is the one a
    /// worker was woken for, if any, else one of theirs (the queue is first
    /// in, first out; the counts only say how many wait unserved).
    fn count_taken(&self) {
        if !take_one(&self.handed) {
            take_one(&self.unwoken);
        }
    }

    /// A worker stops counting as running (it waits on a socket). If that
    /// leaves too few running for a job that woke nobody, it wakes a worker
    /// for the job now, rather than the job waiting until one of the
    /// running workers is done or the acceptor's `nudge`.
    fn stop_running(&self) {
        let running = self
            .running
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        if running < self.enough_running && self.claim_unwoken() {
            self.handed.fetch_add(1, Ordering::SeqCst);
            self.wake_one();
        }
    }

    /// Wakes the worker that went idle last, if one is idle; says whether
    /// one was.
    pub fn wake_one(&self) -> bool {
        let mut stack = self.lock();
        while let Some(waiting) = stack.pop() {
            if waiting.idle.swap(false, Ordering::SeqCst) {
                drop(stack);
                self.running.fetch_add(1, Ordering::SeqCst);
                waiting.thread.unpark();
                return true;
            }
        }
        false
    }

    /// How many jobs workers have taken so far.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// No more jobs will come (the queue's sender is gone): wakes every
    /// waiting worker, so each sees it and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.lock());
        for entry in waiting {
            if entry.idle.swap(false, Ordering::SeqCst) {
                self.running.fetch_add(1, Ordering::SeqCst);
            }
            entry.thread.unpark();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // The stack holds plain handles; a panic cannot leave it half-changed.
        self.stack.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Idler {
    /// Makes this thread the worker that [`waiting`] counts for.
    pub fn enter(&self) {
        POOL.with(|pool| {
            let _ = pool.set(self.workers.clone());
        });
    }

    /// Whether this worker is the only one running and a job queued now
    /// would find a worker asleep to take it: then it may spend a moment on
    /// its own connection without holding anyone up.
    pub fn alone(&self) -> bool {
        self.workers.running.load(Ordering::Relaxed) <= 1
            && self.workers.asleep.load(Ordering::Relaxed) > 0
    }

    /// The next job: at once when one is queued, else after waiting on the
    /// idle stack. `None` once the queue is closed and empty.
    ///
    /// Inlined into the worker's loop: called apart, its frame under the
    /// loop's made an idle worker's stack touch a third page (4 KiB more
    /// per worker, 4 MiB for a pool of 1,024, idle).
    #[inline(always)]
    pub fn next_job<T>(&self, jobs: &Receiver<T>) -> Option<T> {
        loop {
            // Under load the next job is often queued while this worker
            // yields its CPU once or twice: cheaper than sleeping and being
            // woken for it.
            for _ in 0..YIELDS_BEFORE_SLEEP {
                match jobs.try_recv() {
                    Ok(job) => return Some(self.took(job)),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => thread::yield_now(),
                }
            }
            if self.workers.closed.load(Ordering::SeqCst) {
                // Closed: the sender is gone, and what is left was taken above.
                return jobs.try_recv().ok();
            }
            self.idle.store(true, Ordering::SeqCst);
            self.workers.running.fetch_sub(1, Ordering::SeqCst);
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
            // A job queued before this worker was on the stack, or while it
            // still counted as running, woke no one for it: look once more
            // before sleeping.
            fence(Ordering::SeqCst);
            match jobs.try_recv() {
                Ok(job) => {
                    // Its entry stays behind, stale once the flag is clear.
                    // Unless the acceptor claimed it meanwhile (and counted
                    // it running), it claims itself.
                    if self.idle.swap(false, Ordering::SeqCst) {
                        self.workers.running.fetch_add(1, Ordering::SeqCst);
                    }
                    return Some(self.took(job));
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
            if self.idle.swap(false, Ordering::SeqCst) {
                // Closing woke it rather than a claim.
                self.workers.running.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn took<T>(&self, job: T) -> T {
        self.workers.taken.fetch_add(1, Ordering::Relaxed);
        self.workers.count_taken();
        job
    }
}

/// Takes one off `count` unless it is zero; says whether it did.
fn take_one(count: &AtomicUsize) -> bool {
    count.load(Ordering::Relaxed) > 0
        && count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
}

/// Marks the worker on this thread as waiting on a socket, until dropped:
/// it does not count as running meanwhile, so a job queued now wakes
/// another worker. A no-op on other threads.
#[must_use = "the worker counts as waiting only while this lives"]
pub fn waiting() -> SocketWait {
    let counted = POOL.with(|pool| pool.get().map(|pool| pool.stop_running()).is_some());
    SocketWait {
        counted,
        _this_thread: std::marker::PhantomData,
    }
}

/// A worker's wait on a socket; see [`waiting`].
#[derive(Debug)]
pub struct SocketWait {
    counted: bool,
    /// It must end on the thread it began on.
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for SocketWait {
    fn drop(&mut self) {
        if self.counted {
            POOL.with(|pool| {
                if let Some(pool) = pool.get() {
                    pool.running.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Workers parked on the stack now.
    fn parked(idle: &IdleWorkers) -> usize {
        idle.lock()
            .iter()
            .filter(|w| w.idle.load(Ordering::SeqCst))
            .count()
    }

    /// Waits until `count` workers are parked on the stack.
    pub(crate) fn wait_parked(idle: &IdleWorkers, count: usize) {
        let deadline = std::time::Instant::now() + LIMIT;
        while parked(idle) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "workers never went idle"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_job_is_taken_and_closing_ends_every_worker() {
        let idle = IdleWorkers::new(4, 1);
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
        close(tx, &idle, handles);
    }

    #[test]
    fn a_job_wakes_the_worker_that_went_idle_last() {
        let idle = IdleWorkers::new(3, 1);
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
        close(tx, &idle, handles);
    }

    #[test]
    fn a_job_queued_without_a_wake_up_is_still_taken() {
        // The acceptor queues, then wakes; a worker that looks between the
        // two finds the job itself and leaves a stale entry behind.
        let idle = IdleWorkers::new(1, 1);
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

    /// Closes the queue and waits for every worker to end.
    fn close<T>(
        tx: crossbeam_channel::Sender<T>,
        idle: &IdleWorkers,
        handles: Vec<thread::JoinHandle<()>>,
    ) {
        drop(tx);
        idle.close();
        for handle in handles {
            handle.join().expect("worker ends");
        }
    }

    pub(crate) type Task = Box<dyn FnOnce() + Send>;

    /// Starts `count` workers that run each job (a closure), marking this
    /// thread as a pool worker as the server's workers do.
    pub(crate) fn task_workers(
        count: usize,
        idle: &Arc<IdleWorkers>,
        jobs: &Receiver<Task>,
    ) -> Vec<thread::JoinHandle<()>> {
        (0..count)
            .map(|_| {
                let (idler, jobs) = (idle.idler(), jobs.clone());
                thread::spawn(move || {
                    idler.enter();
                    while let Some(task) = idler.next_job(&jobs) {
                        task();
                    }
                })
            })
            .collect()
    }

    /// `count` task workers of a pool on one CPU, all parked: the pool,
    /// the sending end of their queue, and the workers.
    pub(crate) fn parked_pool(
        count: usize,
    ) -> (
        Arc<IdleWorkers>,
        crossbeam_channel::Sender<Task>,
        Vec<thread::JoinHandle<()>>,
    ) {
        let idle = IdleWorkers::new(count, 1);
        let (tx, rx) = crossbeam_channel::bounded::<Task>(8);
        let handles = task_workers(count, &idle, &rx);
        wait_parked(&idle, count);
        (idle, tx, handles)
    }

    /// A job that reports it started, then holds its worker until released,
    /// waiting on a socket (`waiting`) or not.
    pub(crate) fn holding(
        started: &mpsc::Sender<u32>,
        id: u32,
        on_socket: bool,
    ) -> (Task, mpsc::Sender<()>) {
        let (release, released) = mpsc::channel::<()>();
        let started = started.clone();
        let task: Task = Box::new(move || {
            let _wait = on_socket.then(waiting);
            let _ = started.send(id);
            let _ = released.recv_timeout(LIMIT);
        });
        (task, release)
    }

    /// A job that reports it started, computes until the first sender says
    /// to wait on a socket, then waits there until the second releases it.
    fn computing_then_waiting(
        started: &mpsc::Sender<u32>,
        id: u32,
    ) -> (Task, mpsc::Sender<()>, mpsc::Sender<()>) {
        let (to_socket, go_wait) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let started = started.clone();
        let task: Task = Box::new(move || {
            let _ = started.send(id);
            let _ = go_wait.recv_timeout(LIMIT);
            let _wait = waiting();
            let _ = released.recv_timeout(LIMIT);
        });
        (task, to_socket, release)
    }

    /// Queues a `holding` job, wakes for it as the acceptor does, and
    /// waits until a worker started it; returns what releases it.
    fn start_holding(
        idle: &IdleWorkers,
        tx: &crossbeam_channel::Sender<Task>,
        (started, starts): (&mpsc::Sender<u32>, &mpsc::Receiver<u32>),
        id: u32,
        on_socket: bool,
    ) -> mpsc::Sender<()> {
        let (task, release) = holding(started, id, on_socket);
        tx.send(task).expect("queue");
        idle.wake_for_job();
        assert_eq!(starts.recv_timeout(LIMIT), Ok(id), "job {id} got no worker");
        release
    }

    #[test]
    fn a_job_is_left_to_the_running_workers_once_enough_run() {
        // One CPU: two running workers are enough.
        let (idle, tx, handles) = parked_pool(4);
        let (started, starts) = mpsc::channel();
        let releases: Vec<_> = (0..2)
            .map(|id| start_holding(&idle, &tx, (&started, &starts), id, false))
            .collect();
        // Two run: the third job wakes nobody, and waits for one of them.
        let (task, third) = holding(&started, 2, false);
        tx.send(task).expect("queue");
        idle.wake_for_job();
        assert_eq!(
            starts.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "a third worker was woken"
        );
        assert_eq!(parked(&idle), 2);
        let _ = releases[0].send(());
        assert_eq!(
            starts.recv_timeout(LIMIT),
            Ok(2),
            "the running worker left the job"
        );
        for release in releases.iter().chain([&third]) {
            let _ = release.send(());
        }
        close(tx, &idle, handles);
    }

    #[test]
    fn a_job_left_to_the_running_workers_gets_one_when_a_runner_starts_waiting() {
        // One CPU: two running workers are enough.
        let (idle, tx, handles) = parked_pool(4);
        let (started, starts) = mpsc::channel();
        // Job 0 computes until told to wait on a socket; job 1 computes.
        let (first, to_socket, release_first) = computing_then_waiting(&started, 0);
        tx.send(first).expect("queue");
        idle.wake_for_job();
        assert_eq!(starts.recv_timeout(LIMIT), Ok(0));
        let second = start_holding(&idle, &tx, (&started, &starts), 1, false);
        let (task, third) = holding(&started, 2, false);
        tx.send(task).expect("queue");
        idle.wake_for_job();
        assert_eq!(
            starts.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "a third worker was woken while two ran"
        );
        let _ = to_socket.send(());
        // Well before the holds above time out and free a worker.
        assert_eq!(
            starts.recv_timeout(LIMIT / 2),
            Ok(2),
            "the job waited though only one worker ran"
        );
        for release in [&release_first, &second, &third] {
            let _ = release.send(());
        }
        close(tx, &idle, handles);
    }

    #[test]
    fn each_job_left_to_the_runners_gets_a_worker_as_they_start_waiting() {
        // One CPU: two running workers are enough. A and B compute; C and D
        // are left to them. A waits on a socket and wakes a worker, which
        // takes C and waits on a socket too, leaving B alone running: D
        // must get a worker then, though it woke nobody when queued. (Each
        // job left behind is counted once: the worker woken for C, taking
        // it, must not count off D as well.)
        let (idle, tx, handles) = parked_pool(6);
        let (started, starts) = mpsc::channel();
        let mut to_socket = Vec::new();
        let mut releases = Vec::new();
        for id in 0..2u32 {
            let (task, go, release) = computing_then_waiting(&started, id);
            tx.send(task).expect("queue");
            idle.wake_for_job();
            assert_eq!(starts.recv_timeout(LIMIT), Ok(id));
            to_socket.push(go);
            releases.push(release);
        }
        for id in 2..4u32 {
            let (task, release) = holding(&started, id, true);
            tx.send(task).expect("queue");
            idle.wake_for_job();
            releases.push(release);
        }
        assert_eq!(
            starts.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "a job woke a worker while two ran"
        );
        let _ = to_socket[0].send(());
        // Well before the holds above time out and free a worker. C's wait
        // may wake D's worker before C reports: either order.
        let mut got = [
            starts.recv_timeout(LIMIT / 2),
            starts.recv_timeout(LIMIT / 2),
        ];
        got.sort_by_key(|started| started.as_ref().ok().copied());
        assert_eq!(got, [Ok(2), Ok(3)], "C or D was stranded");
        let _ = to_socket[1].send(());
        for release in &releases {
            let _ = release.send(());
        }
        close(tx, &idle, handles);
    }

    #[test]
    fn a_worker_waiting_on_a_socket_does_not_count_as_running() {
        let (idle, tx, handles) = parked_pool(4);
        let (started, starts) = mpsc::channel();
        // However many wait on sockets, a queued job still wakes a worker.
        let releases: Vec<_> = (0..4)
            .map(|id| start_holding(&idle, &tx, (&started, &starts), id, true))
            .collect();
        assert_eq!(idle.running.load(Ordering::SeqCst), 0);
        for release in &releases {
            let _ = release.send(());
        }
        close(tx, &idle, handles);
        assert_eq!(
            idle.running.load(Ordering::SeqCst),
            4,
            "every worker ended running"
        );
    }
}
