//! Revalidations the cache makes on its own, after a stale entry answered
//! at once under `stale-while-revalidate` (RFC 5861 §3): a couple of
//! threads take them from a bounded queue, so that no client waits on
//! them, not even the one whose hit asked for it (its connection goes on
//! to its next request). A 304 refreshes the entry, a full answer replaces
//! it, a failure leaves it as it was. When the queue is full the job is
//! dropped: the entry's claim lapses and a later hit asks again.

use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ureq::http::StatusCode;

use crate::cache::{Cache, StoredObject};
use crate::config::ServeConfig;
use crate::http::request::RequestHead;
use crate::rules::Rules;
use crate::server::forward;
use crate::server::target::Origin;

/// Threads that revalidate: revalidations are rare, and each mostly waits
/// on its origin.
const THREADS: usize = 2;

/// Revalidations waiting for a thread, at most.
const QUEUE: usize = 256;

/// Bytes read from the origin at a time while storing a full answer.
const READ_BYTES: usize = 16 * 1024;

/// One revalidation to make.
pub struct Refresh {
    /// The request to send: GET, the client's headers but its body, range
    /// and preconditions.
    pub head: RequestHead,
    pub origin: Origin,
    /// The entry to revalidate.
    pub object: Arc<StoredObject>,
    pub request_id: String,
    /// The rules of the request that asked for it.
    pub rules: Arc<Rules>,
}

/// The queue of revalidations; cloned handles share it.
#[derive(Clone)]
pub struct Refresher {
    jobs: Sender<Refresh>,
}

impl Refresher {
    /// Starts the threads. They end once every `Refresher` is dropped.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn spawn(
        cache: &Cache,
        agent: &ureq::Agent,
        config: &Arc<ServeConfig>,
    ) -> std::io::Result<Refresher> {
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE);
        for n in 1..=THREADS {
            let worker = Refreshing {
                queue: queue.clone(),
                cache: cache.clone(),
                agent: agent.clone(),
                config: Arc::clone(config),
            };
            thread::Builder::new()
                .name(format!("cache-refresh-{n}"))
                .spawn(move || worker.run())?;
        }
        Ok(Refresher { jobs })
    }

    /// Queues `job`; says whether it was taken.
    pub fn submit(&self, job: Refresh) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                log::debug!("cache: no room to revalidate {}", job.head.target);
                false
            }
        }
    }
}

/// What each revalidating thread holds.
struct Refreshing {
    queue: Receiver<Refresh>,
    cache: Cache,
    agent: ureq::Agent,
    config: Arc<ServeConfig>,
}

impl Refreshing {
    fn run(self) {
        let mut buf = vec![0u8; READ_BYTES];
        for job in self.queue.iter() {
            // A panic costs one revalidation, never the thread.
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.refresh(&job, &mut buf)));
            if outcome.is_err() {
                log::error!("cache: revalidating {} panicked", job.head.target);
            }
        }
    }

    fn refresh(&self, job: &Refresh, buf: &mut [u8]) {
        // Made before the request goes out: a PURGE meanwhile keeps the
        // new answer out of the cache (a 304 only updates what is there).
        let mut filler = self.cache.fill_alone(job.object.head.key.clone());
        let validators = job.object.head.policy.validators();
        let response = forward::fetch_detached(
            &job.head,
            &job.origin,
            &validators,
            &job.request_id,
            &job.rules,
            &self.agent,
            &self.config.via_name,
        );
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                log::debug!("cache: revalidating {} failed: {err}", job.head.target);
                return;
            }
        };
        let now = SystemTime::now();
        let (parts, body) = response.into_parts();
        let mut reader = body.into_reader();
        if parts.status == StatusCode::NOT_MODIFIED {
            // Read to its end, so the connection goes back to the pool.
            let _ = reader.read(buf);
            self.cache.refresh(&job.object, &job.head, &parts, now);
            return;
        }
        if filler
            .response_head(&job.head, parts.status, &parts.headers, now)
            .is_err()
        {
            return;
        }
        loop {
            match reader.read(buf) {
                Ok(0) => break,
                Ok(n) if filler.is_storing() => filler.body(&buf[..n]),
                // Nothing more will be stored: no reason to read on.
                Ok(_) | Err(_) => return,
            }
        }
        if let Err(why) = filler.finish() {
            log::debug!(
                "cache: revalidated {} not stored: {}",
                job.head.target,
                why.detail()
            );
        }
    }
}
