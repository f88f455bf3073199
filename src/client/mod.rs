//! `fetchproxy fetch`: input → batch → save + manifest + progress → summary.
//!
//! Three kinds of thread: `input` reads URLs and queues jobs (skipping
//! repeats and URLs already saved), `fetch-N` workers download each into a
//! temporary file (`batch`), and this main thread — the single writer —
//! names and renames each file (`naming`, `save`), appends its manifest line
//! (`manifest`) and shows progress (`progress`). A `signals` thread turns
//! Ctrl-C or SIGTERM into a clean stop that leaves no temporary files.

pub mod batch;
pub mod http;
pub mod input;
pub mod manifest;
pub mod naming;
pub mod progress;
pub mod save;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, IsTerminal};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender, never, select};

use crate::cli::FetchArgs;
use batch::{Event, Job, Outcome, Settings};
use input::{InputError, Place, ReadError};
use manifest::{Entry, Manifest};
use progress::{Mode, Progress, Tally};
use save::{Names, Scratch};

/// Exit code when the batch is stopped by SIGINT (128 + 2).
const EXIT_SIGINT: u8 = 130;
/// Exit code when the batch is stopped by SIGTERM (128 + 15).
const EXIT_SIGTERM: u8 = 143;

/// Why a batch cannot start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
    #[error("--proxy {proxy:?}: {reason}")]
    Proxy { proxy: String, reason: String },
    #[error("--out-dir {}: {source}", .dir.display())]
    OutDir { dir: PathBuf, source: io::Error },
    #[error("cannot use {}: {source}", .path.display())]
    Manifest { path: PathBuf, source: io::Error },
    #[error("--input {}: {source}", .path.display())]
    Input { path: PathBuf, source: io::Error },
    #[error("cannot start threads: {0}")]
    Spawn(io::Error),
}

/// Runs a batch; returns the exit code (0 all fetched or skipped, 1 some
/// URL or input line failed, 2 usage error, 130/143 stopped by a signal).
pub fn run(args: FetchArgs) -> u8 {
    match run_batch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fetchproxy: {err}");
            2
        }
    }
}

/// Something the input thread tells the main thread.
enum Fed {
    Queued,
    Bad(InputError),
    Repeated { url: String, first: Place },
    Skipped { url: String, file: String },
    ReadFailed(ReadError),
    End,
}

type Source = Box<dyn Iterator<Item = Result<input::Item, ReadError>> + Send>;

fn run_batch(args: FetchArgs) -> Result<u8, UsageError> {
    if args.concurrency == 0 {
        return Err(UsageError::NoConcurrency);
    }
    let proxy = resolve_proxy(&args.proxy)?;
    let out_dir = args.out_dir.clone();
    fs::create_dir_all(&out_dir).map_err(|source| UsageError::OutDir {
        dir: out_dir.clone(),
        source,
    })?;
    let stale = save::remove_stale_temps(&out_dir);
    if stale > 0 {
        log::debug!("removed {stale} stale temporary files");
    }
    let manifest_path = out_dir.join(manifest::MANIFEST_NAME);
    let manifest_error = |source| UsageError::Manifest {
        path: manifest_path.clone(),
        source,
    };
    let recorded: Vec<Entry> = manifest::load(&out_dir)
        .map_err(manifest_error)?
        .into_iter()
        .filter(|e| e.is_success() && e.file.as_deref().is_some_and(naming::is_safe_name))
        .collect();
    let mut manifest = Manifest::open(&out_dir).map_err(manifest_error)?;
    let (source, prompting) = open_input(&args)?;

    let mode = if args.quiet {
        Mode::Quiet
    } else if io::stderr().is_terminal() && !prompting {
        Mode::Bar
    } else {
        Mode::Lines
    };
    let names = Names::new(
        recorded
            .iter()
            .filter_map(|e| Some((e.file.as_deref()?, e.url.as_str()))),
    );
    let last_saved: HashMap<String, Entry> =
        recorded.into_iter().map(|e| (e.url.clone(), e)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let scratch = Arc::new(Scratch::new(&out_dir));
    let settings = Arc::new(Settings {
        proxy,
        retries: args.retries,
        timeout: args.timeout,
        stop: stop.clone(),
        scratch: scratch.clone(),
    });
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(args.concurrency * 2);
    let (event_tx, event_rx) = crossbeam_channel::bounded::<Event>(4096);
    let (fed_tx, fed_rx) = crossbeam_channel::bounded::<Fed>(1024);
    let workers = batch::spawn_workers(args.concurrency, settings, &job_rx, &event_tx)
        .map_err(UsageError::Spawn)?;
    drop((job_rx, event_tx));
    let feeder = Feeder {
        source,
        last_saved,
        out_dir: out_dir.clone(),
        overwrite: args.overwrite,
        jobs: job_tx,
        fed: fed_tx,
    };
    thread::Builder::new()
        .name("input".into())
        .spawn(move || feeder.run())
        .map_err(UsageError::Spawn)?;
    let signals = watch_signals();

    let mut main = Main {
        out_dir,
        overwrite: args.overwrite,
        names,
        manifest,
        progress: Progress::new(mode),
        tally: Tally::default(),
    };
    let code = main.run(&event_rx, fed_rx, signals, &stop, &scratch);
    if code.is_none() {
        for worker in workers {
            let _ = worker.join();
        }
    }
    manifest = main.manifest;
    drop(manifest);
    let tally = &main.tally;
    let interrupted = code.is_some();
    main.progress.finish(&progress::summary(
        tally,
        main.progress.elapsed(),
        interrupted,
    ));
    Ok(code.unwrap_or(if tally.failed > 0 || tally.bad_lines > 0 {
        1
    } else {
        0
    }))
}

/// `HOST:PORT` (an `http://` prefix and a trailing `/` are tolerated).
fn resolve_proxy(text: &str) -> Result<Vec<SocketAddr>, UsageError> {
    let bare = text.strip_prefix("http://").unwrap_or(text);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    let fail = |reason: String| UsageError::Proxy {
        proxy: text.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = bare
        .to_socket_addrs()
        .map_err(|err| fail(format!("{err} (expected HOST:PORT)")))?
        .collect();
    if addrs.is_empty() {
        return Err(fail("resolves to no address".into()));
    }
    Ok(addrs)
}

/// The URL source: arguments, then `--input`; a prompt on stdin when neither
/// is given. The flag says whether a prompt is shown (so no bar is drawn).
fn open_input(args: &FetchArgs) -> Result<(Source, bool), UsageError> {
    let from_args = input::from_args(args.urls.clone()).map(Ok);
    match &args.input {
        Some(path) if path.as_os_str() == "-" => {
            let lines = input::Lines::new(BufReader::new(io::stdin()), false);
            Ok((Box::new(from_args.chain(lines)), false))
        }
        Some(path) => {
            let file = fs::File::open(path).map_err(|source| UsageError::Input {
                path: path.clone(),
                source,
            })?;
            let lines = input::Lines::new(BufReader::new(file), false);
            Ok((Box::new(from_args.chain(lines)), false))
        }
        None if !args.urls.is_empty() => Ok((Box::new(from_args), false)),
        None => {
            let prompt = io::stdin().is_terminal();
            if prompt {
                eprintln!("Enter URLs, one a line; end with Ctrl-D.");
            }
            let lines = input::Lines::new(BufReader::new(io::stdin()), prompt);
            Ok((Box::new(lines), prompt))
        }
    }
}

/// SIGINT/SIGTERM as messages; `never()` if they cannot be caught.
fn watch_signals() -> Receiver<i32> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => {
            log::warn!("cannot catch signals: {err}");
            return never();
        }
    };
    let (tx, rx) = crossbeam_channel::bounded(4);
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let _ = tx.send(signal);
            }
        });
    match spawned {
        Ok(_) => rx,
        Err(_) => never(),
    }
}

/// The input thread: reads URLs, drops repeats and URLs already saved, and
/// queues the rest (blocking while the workers are busy).
struct Feeder {
    source: Source,
    last_saved: HashMap<String, Entry>,
    out_dir: PathBuf,
    overwrite: bool,
    jobs: Sender<Job>,
    fed: Sender<Fed>,
}

impl Feeder {
    fn run(self) {
        let mut seen: HashMap<String, Place> = HashMap::new();
        let mut next_id = 0;
        for item in self.source {
            let message = match item {
                Err(err) => Fed::ReadFailed(err),
                Ok(Err(bad)) => Fed::Bad(bad),
                Ok(Ok((place, url))) => {
                    let key = url.to_string();
                    if let Some(&first) = seen.get(&key) {
                        Fed::Repeated { url: key, first }
                    } else {
                        seen.insert(key.clone(), place);
                        match self.last_saved.get(&key) {
                            Some(entry) if !self.overwrite && is_intact(&self.out_dir, entry) => {
                                Fed::Skipped {
                                    url: key,
                                    file: entry.file.clone().unwrap_or_default(),
                                }
                            }
                            _ => {
                                next_id += 1;
                                if self.fed.send(Fed::Queued).is_err()
                                    || self.jobs.send(Job { id: next_id, url }).is_err()
                                {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                }
            };
            if self.fed.send(message).is_err() {
                return;
            }
        }
        let _ = self.fed.send(Fed::End);
    }
}

/// The manifest's file for this entry is still there, byte for byte.
fn is_intact(dir: &Path, entry: &Entry) -> bool {
    let (Some(file), Some(sha)) = (&entry.file, &entry.sha256) else {
        return false;
    };
    save::sha256_file(&dir.join(file)).is_ok_and(|got| got == *sha)
}

/// The main thread's state: the only writer of files' final names, the
/// manifest and the display.
struct Main {
    out_dir: PathBuf,
    overwrite: bool,
    names: Names,
    manifest: Manifest,
    progress: Progress,
    tally: Tally,
}

impl Main {
    /// Handles messages until every queued URL is done; `Some(code)` when a
    /// signal stopped the batch.
    fn run(
        &mut self,
        events: &Receiver<Event>,
        mut fed: Receiver<Fed>,
        signals: Receiver<i32>,
        stop: &AtomicBool,
        scratch: &Scratch,
    ) -> Option<u8> {
        let (mut queued, mut done, mut input_open) = (0usize, 0usize, true);
        while input_open || done < queued {
            select! {
                recv(events) -> event => match event {
                    Ok(Event::Started { id, url }) => self.progress.started(id, url.as_str()),
                    Ok(Event::Bytes(n)) => self.progress.bytes(n),
                    Ok(Event::Done(outcome)) => {
                        done += 1;
                        self.finish(*outcome);
                    }
                    // Every worker is gone (they only end when input has ended).
                    Err(_) => break,
                },
                recv(fed) -> message => match message {
                    Ok(Fed::Queued) => {
                        queued += 1;
                        self.progress.add_total(1);
                    }
                    Ok(Fed::End) | Err(_) => {
                        input_open = false;
                        fed = never();
                    }
                    Ok(other) => self.input_message(other),
                },
                recv(signals) -> signal => {
                    // Stop downloads, then remove their temporary files
                    // before any new one can be made.
                    stop.store(true, Ordering::SeqCst);
                    let removed = scratch.close_and_clean();
                    log::debug!("removed {removed} temporary files");
                    return Some(match signal {
                        Ok(signal_hook::consts::SIGTERM) => EXIT_SIGTERM,
                        _ => EXIT_SIGINT,
                    });
                },
            }
        }
        None
    }

    fn input_message(&mut self, message: Fed) {
        match message {
            Fed::Bad(err) => {
                self.tally.bad_lines += 1;
                self.progress.error(None, &format!("skipped {err}"), false);
            }
            Fed::ReadFailed(err) => {
                self.tally.bad_lines += 1;
                self.progress.error(None, &err.to_string(), false);
            }
            Fed::Repeated { url, first } => {
                self.tally.skipped += 1;
                self.progress.add_total(1);
                self.progress
                    .finished(None, &format!("skipped {url} (repeats {first})"));
            }
            Fed::Skipped { url, file } => {
                self.tally.skipped += 1;
                self.progress.add_total(1);
                self.progress
                    .finished(None, &format!("skipped {url} (already saved as {file})"));
            }
            Fed::Queued | Fed::End => {}
        }
    }

    /// Names, renames and records one finished job.
    fn finish(&mut self, outcome: Outcome) {
        let Outcome {
            id,
            url,
            result,
            status,
            content_type,
            request_id,
            elapsed,
        } = outcome;
        let mut entry = Entry {
            url: url.to_string(),
            file: None,
            status,
            bytes: 0,
            content_type: content_type.clone(),
            sha256: None,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            request_id,
            error: None,
        };
        let saved = result.map_err(|e| e.to_string()).and_then(|mut download| {
            let base = naming::file_name_for(
                &url,
                content_type.as_deref(),
                download.content_disposition.as_deref(),
            );
            let name = self.place(&base, url.as_str(), &mut download.file)?;
            Ok((name, download.file.sha256.clone(), download.file.bytes))
        });
        match saved {
            Ok((name, sha256, bytes)) => {
                entry.file = Some(name.clone());
                entry.sha256 = Some(sha256);
                entry.bytes = bytes;
                if let Err(err) = self.manifest.append(&entry) {
                    self.tally.failed += 1;
                    let line =
                        format!("failed {url}: saved as {name} but manifest not written: {err}");
                    self.progress.error(Some(id), &line, true);
                    return;
                }
                self.tally.fetched += 1;
                self.tally.bytes += bytes;
                let line = format!(
                    "fetched {url} -> {name} ({}, {:.1}s)",
                    indicatif::HumanBytes(bytes),
                    elapsed.as_secs_f64()
                );
                self.progress.finished(Some(id), &line);
            }
            Err(error) => {
                self.tally.failed += 1;
                let line = format!("failed {url}: {error}");
                entry.error = Some(error);
                if let Err(err) = self.manifest.append(&entry) {
                    self.progress
                        .error(None, &format!("cannot write manifest: {err}"), false);
                }
                self.progress.error(Some(id), &line, true);
            }
        }
    }

    /// Picks a free name for `url` and renames the file to it; a name taken
    /// meanwhile by another program is passed over.
    fn place(
        &mut self,
        base: &str,
        url: &str,
        file: &mut save::Finished,
    ) -> Result<String, String> {
        let dir = &self.out_dir;
        // Bounded: each round either succeeds or sees the name on disk next time.
        for _ in 0..1000 {
            let name = self.names.choose(base, url, self.overwrite, |n| {
                dir.join(n).symlink_metadata().is_ok()
            });
            match file.commit(dir, &name, self.overwrite) {
                Ok(_) => return Ok(name),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(format!("cannot save as {name}: {err}")),
            }
        }
        Err(format!("cannot save: no free name like {base}"))
    }
}
