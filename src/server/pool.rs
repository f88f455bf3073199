//! The worker pool: N named threads on one crossbeam `Receiver`, waiting
//! between jobs on the idle stack (`idle`), and the join against the grace
//! deadline. Knows nothing of HTTP.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::server::context::Context;
use crate::server::idle::IdleWorkers;
use crate::server::in_flight::InFlight;
use crate::server::job::Job;
use crate::server::worker;

/// How long a join waits at least: ample for idle workers to wake up and
/// end. A request that ends within it counts as finished; one still running
/// after it is cut short as before.
const WIND_DOWN: Duration = Duration::from_millis(200);

/// The running workers.
pub struct Pool {
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Spawns `count` workers named `worker-1`.. that serve `jobs` until the
    /// sender is dropped and the queue is empty.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn spawn(
        count: usize,
        jobs: &Receiver<Job>,
        idle: &Arc<IdleWorkers>,
        ctx: &Arc<Context>,
    ) -> io::Result<Pool> {
        let mut handles = Vec::with_capacity(count);
        for n in 1..=count {
            let (jobs, idler, ctx) = (jobs.clone(), idle.idler(), ctx.clone());
            let handle = thread::Builder::new()
                // Bodies go through a heap buffer; the stack stays small.
                .stack_size(256 * 1024)
                .name(format!("worker-{n}"))
                .spawn(move || {
                    crate::server::sched::batch_this_thread();
                    crate::upstream::Agents::enter(n - 1);
                    InFlight::enter(n - 1);
                    worker::run(jobs, idler, ctx)
                })?;
            handles.push(handle);
        }
        Ok(Pool { handles })
    }

    /// Waits for every worker to finish, until `deadline` or until
    /// `give_up()` says to stop waiting. True when all finished.
    ///
    /// Workers end once the queue's sender is gone, which may be at the
    /// deadline itself (the acceptor keeps idle connections open to the end
    /// of the grace period): idle workers get `WIND_DOWN` past it to see that.
    pub fn join(self, deadline: Instant, give_up: impl Fn() -> bool) -> bool {
        let deadline = deadline.max(Instant::now() + WIND_DOWN);
        while Instant::now() < deadline && !give_up() {
            if self.handles.iter().all(JoinHandle::is_finished) {
                for handle in self.handles {
                    let _ = handle.join();
                }
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.handles.iter().all(JoinHandle::is_finished)
    }
}
