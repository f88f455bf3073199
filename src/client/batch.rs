//! The batch's workers: `--concurrency` named threads take jobs from a
//! bounded channel, each with its own keep-alive connection to every proxy,
//! fetch each URL (`fetch`) into a temporary file, and send one `Outcome`
//! per job back to the main thread, which names, saves and records it.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use url::Url;

use crate::client::fetch::{self, FetchError, Report, Seen, Settings, Sink};
use crate::client::http::ProxyConnection;
use crate::client::save::{Finished, Scratch, TempFile};

/// Progress is reported in pieces of at least this many bytes.
const PROGRESS_STEP: u64 = 256 * 1024;

/// One URL to fetch.
#[derive(Debug)]
pub struct Job {
    pub id: usize,
    pub url: Url,
    /// Where the URL stands, in input order, among those whose names would
    /// collide (`naming::collision_key`): the first is 1, and the `n`th
    /// takes no suffix below `-n`.
    pub rank: u32,
}

/// What the workers tell the main thread.
#[derive(Debug)]
pub enum Event {
    /// A worker began on a job.
    Started { id: usize, url: Url },
    /// Body bytes arrived (for the progress display).
    Bytes(u64),
    /// Something the user should know that is not about one URL.
    Note(String),
    /// A job is over.
    Done(Box<Outcome>),
    /// A job failed with every proxy refusing connections, after all its
    /// retries: nothing more can be fetched.
    NoProxy,
}

/// How one job ended.
#[derive(Debug)]
pub struct Outcome {
    pub id: usize,
    pub url: Url,
    /// The job's `rank`.
    pub rank: u32,
    /// The body in its temporary file, waiting for a name.
    pub result: Result<Finished, FetchError>,
    /// What the final response (if any) said, and which proxy gave it.
    pub seen: Seen,
    pub elapsed: Duration,
}

/// Bodies go to temporary files in the out-dir.
struct TempSink<'a> {
    scratch: &'a Scratch,
}

impl Sink for TempSink<'_> {
    type Out = TempFile;
    type Done = Finished;

    fn open(&mut self) -> io::Result<TempFile> {
        self.scratch.create()
    }

    fn finish(&mut self, out: TempFile) -> io::Result<Finished> {
        out.finish()
    }

    fn can_retry(&self) -> bool {
        true
    }
}

/// Starts `n` workers named `fetch-1` ... over `jobs`; they end when the
/// job channel is closed and empty.
///
/// # Errors
/// The OS error when a thread cannot be spawned.
pub fn spawn_workers(
    n: usize,
    settings: Arc<Settings>,
    scratch: Arc<Scratch>,
    jobs: &Receiver<Job>,
    events: &Sender<Event>,
) -> io::Result<Vec<JoinHandle<()>>> {
    (1..=n)
        .map(|i| {
            let (settings, scratch) = (settings.clone(), scratch.clone());
            let (jobs, events) = (jobs.clone(), events.clone());
            thread::Builder::new()
                .name(format!("fetch-{i}"))
                .spawn(move || {
                    let mut conns = settings.connections();
                    for job in jobs.iter() {
                        let _ = events.send(Event::Started {
                            id: job.id,
                            url: job.url.clone(),
                        });
                        let outcome = run_job(&mut conns, job, &settings, &scratch, &events);
                        // Given up on refusals, with every proxy refusing:
                        // a URL that failed otherwise had an answer.
                        let refused =
                            matches!(&outcome.result, Err(err) if err.is_connect_failure());
                        let no_proxy = refused && settings.fleet.all_down();
                        if events.send(Event::Done(Box::new(outcome))).is_err() {
                            break;
                        }
                        if no_proxy {
                            let _ = events.send(Event::NoProxy);
                        }
                    }
                })
        })
        .collect()
}

fn run_job(
    conns: &mut [ProxyConnection],
    job: Job,
    settings: &Settings,
    scratch: &Scratch,
    events: &Sender<Event>,
) -> Outcome {
    let start = Instant::now();
    let mut sink = TempSink { scratch };
    let mut pending = 0u64;
    let mut report = |report: Report| match report {
        Report::Bytes(n) => {
            pending += n;
            if pending >= PROGRESS_STEP {
                let _ = events.send(Event::Bytes(std::mem::take(&mut pending)));
            }
        }
        Report::ProxyDown { name, error } => {
            let others = if settings.fleet.proxies.len() > 1 {
                "; its URLs go to the other proxies"
            } else {
                ""
            };
            let _ = events.send(Event::Note(format!(
                "proxy {name} stopped taking connections ({error}){others}"
            )));
        }
    };
    let (result, seen) = fetch::fetch(conns, &job.url, settings, &mut sink, &mut report);
    if pending > 0 {
        let _ = events.send(Event::Bytes(pending));
    }
    Outcome {
        id: job.id,
        url: job.url,
        rank: job.rank,
        result,
        seen,
        elapsed: start.elapsed(),
    }
}
