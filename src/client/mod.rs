//! `fetchproxy fetch`: proxies → input → batch → save + manifest + progress
//! → summary.
//!
//! Before anything is fetched, the proxies are parsed (`proxy`) and each is
//! checked to take a connection: with none answering the run stops at once
//! (exit 2). `--stdout` then fetches its one URL (`stdout`). A batch has
//! three kinds of thread: `input` reads URLs and queues jobs (skipping
//! repeats and URLs already saved), `fetch-N` workers download each into a
//! temporary file (`batch`, `fetch`), choosing the proxy by the URL
//! (`fleet`), and this main thread, the single writer, names and renames
//! each file (`naming`, `save`), appends its manifest line (`manifest`) and
//! shows progress (`progress`). A `signals` thread turns Ctrl-C or SIGTERM
//! into a clean stop that leaves no temporary files.

pub mod batch;
pub mod fetch;
pub mod fleet;
pub mod http;
pub mod input;
pub mod manifest;
pub mod naming;
pub mod outdir;
pub mod progress;
pub mod proxy;
pub mod request;
pub mod save;
pub mod stdout;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, never, select};

use crate::cli::FetchArgs;
use batch::{Event, Job, Outcome};
use fetch::Settings;
use fleet::Fleet;
use input::{InputError, Place, ReadError};
use manifest::{Entry, Manifest};
use outdir::OutDirError;
use progress::{Mode, Progress, Prompt, Tally};
use proxy::{ProxyArgError, Unreachable};
use request::RequestOptions;
use save::{Names, Scratch};

/// Exit code when the batch is stopped by SIGINT (128 + 2).
const EXIT_SIGINT: u8 = 130;
/// Exit code when the batch is stopped by SIGTERM (128 + 15).
const EXIT_SIGTERM: u8 = 143;
/// The proxy used when `--proxy` is not given.
pub const DEFAULT_PROXY: &str = "127.0.0.1:8080";
/// How long the start-up check waits for each proxy to take a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a run cannot start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
    #[error(transparent)]
    Proxy(#[from] ProxyArgError),
    #[error("{}", no_proxy_text(.down, *.default))]
    NoProxy {
        down: Vec<Unreachable>,
        /// `--proxy` was not given.
        default: bool,
    },
    #[error("--stdout writes the body of one URL given as an argument; {0} given")]
    StdoutUrls(usize),
    #[error(transparent)]
    OutDir(#[from] OutDirError),
    #[error("cannot use {}: {source}", .path.display())]
    Manifest { path: PathBuf, source: io::Error },
    #[error("--input {}: {source}", .path.display())]
    Input { path: PathBuf, source: io::Error },
    #[error("cannot start threads: {0}")]
    Spawn(io::Error),
}

fn no_proxy_text(down: &[Unreachable], default: bool) -> String {
    match down {
        [one] if default => format!(
            "no proxy answers at {}, the default --proxy ({}): start one with \
             \"fetchproxy serve\", or pass --proxy HOST:PORT of one that runs",
            one.name, one.reason
        ),
        [one] => format!(
            "no proxy answers at {} ({}): start one with \"fetchproxy serve --listen {}\", \
             or pass --proxy HOST:PORT of one that runs",
            one.name, one.reason, one.name
        ),
        _ => format!(
            "no proxy answers: {}: start them with \"fetchproxy serve --listen HOST:PORT\", \
             or pass --proxy with ones that run",
            down.iter()
                .map(|d| format!("{} ({})", d.name, d.reason))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs `fetch`; returns the exit code (0 all fetched or skipped, 1 some
/// URL or input line failed, 2 usage error, 130/143 stopped by a signal).
pub fn run(args: FetchArgs) -> u8 {
    match run_fetch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("fetchproxy: {err}");
            2
        }
    }
}

fn run_fetch(mut args: FetchArgs) -> Result<u8, UsageError> {
    if args.concurrency == 0 {
        return Err(UsageError::NoConcurrency);
    }
    let to_stdout = args.writes_to_stdout();
    if to_stdout && args.urls.len() != 1 {
        return Err(UsageError::StdoutUrls(args.urls.len()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        fleet: connect_fleet(&args)?,
        request: RequestOptions {
            user_agent: std::mem::take(&mut args.user_agent),
            headers: std::mem::take(&mut args.header),
        },
        retries: args.retries,
        timeout: args.timeout,
        stop: stop.clone(),
    };
    if to_stdout {
        let url = args.urls.pop().unwrap_or_default();
        return Ok(stdout::run(url, &settings));
    }
    run_batch(args, settings, stop)
}

/// The proxies, checked to take connections, with their passwords.
fn connect_fleet(args: &FetchArgs) -> Result<Fleet, UsageError> {
    let default = args.proxy.is_empty();
    let entries = if default {
        vec![DEFAULT_PROXY.to_string()]
    } else {
        args.proxy.clone()
    };
    let user = args
        .proxy_user
        .as_deref()
        .map(proxy::parse_proxy_user)
        .transpose()?;
    let mut proxies = proxy::build(&entries, user.as_ref())?;
    let down = proxy::probe(&proxies, PROBE_TIMEOUT);
    if down.len() == proxies.len() {
        return Err(UsageError::NoProxy {
            down: down.into_iter().map(|(_, d)| d).collect(),
            default,
        });
    }
    // Asked only now, so that nobody types a password for a proxy that is not there.
    proxy::ask_passwords(&mut proxies, &mut proxy::ask_on_terminal)?;
    let fleet = Fleet::new(proxies);
    for (i, unreachable) in down {
        fleet.mark_down(i);
        eprintln!(
            "warning: proxy {} does not answer ({}); its URLs go to the other proxies",
            unreachable.name, unreachable.reason
        );
    }
    Ok(fleet)
}

/// Something the input thread tells the main thread.
enum Fed {
    Queued,
    Bad(InputError),
    Note(String),
    Repeated { url: String, first: Place },
    Skipped { url: String, file: String },
    ReadFailed(ReadError),
    End,
}

type Source = Box<dyn Iterator<Item = Result<input::Item, ReadError>> + Send>;

fn run_batch(args: FetchArgs, settings: Settings, stop: Arc<AtomicBool>) -> Result<u8, UsageError> {
    let out_dir = args.out_dir.clone();
    outdir::prepare(&out_dir)?;
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

    let terminal = io::stderr().is_terminal();
    // URLs are typed when none are given and stdin is a terminal; the
    // prompt is shown only where the user can see it.
    let prompting = args.input.is_none() && args.urls.is_empty() && io::stdin().is_terminal();
    let prompt = (prompting && terminal).then(|| Arc::new(Prompt::default()));
    let mode = if args.quiet {
        Mode::Quiet
    } else if terminal && !prompting {
        Mode::Bar
    } else {
        Mode::Lines
    };
    let counted = if mode == Mode::Bar {
        count_urls(&args)
    } else {
        None
    };
    let source = open_input(&args, prompt.clone())?;
    let names = Names::new(
        recorded
            .iter()
            .filter_map(|e| Some((e.file.as_deref()?, e.url.as_str()))),
    );
    let last_saved: HashMap<String, Entry> =
        recorded.into_iter().map(|e| (e.url.clone(), e)).collect();

    let scratch = Arc::new(Scratch::new(&out_dir));
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(args.concurrency * 2);
    let (event_tx, event_rx) = crossbeam_channel::bounded::<Event>(4096);
    let (fed_tx, fed_rx) = crossbeam_channel::bounded::<Fed>(1024);
    let workers = batch::spawn_workers(
        args.concurrency,
        Arc::new(settings),
        scratch.clone(),
        &job_rx,
        &event_tx,
    )
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
        progress: Progress::new(mode, counted, prompt),
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

/// The URLs the arguments and an `--input` file hold, counted before the
/// start so that the bar shows the whole batch; `None` for standard input.
fn count_urls(args: &FetchArgs) -> Option<u64> {
    let from_args = input::from_args(args.urls.clone())
        .filter(Result::is_ok)
        .count() as u64;
    match &args.input {
        Some(path) if path.as_os_str() == "-" => None,
        Some(path) => {
            let file = fs::File::open(path).ok()?;
            let lines = input::Lines::new(BufReader::new(file), None);
            let in_file = lines.filter(|item| matches!(item, Ok(Ok(_)))).count() as u64;
            Some(from_args + in_file)
        }
        None => Some(from_args),
    }
}

/// The URL source: arguments, then `--input`; a prompt on stdin when neither
/// is given.
fn open_input(args: &FetchArgs, prompt: Option<Arc<Prompt>>) -> Result<Source, UsageError> {
    let from_args = input::from_args(args.urls.clone()).map(Ok);
    match &args.input {
        Some(path) if path.as_os_str() == "-" => {
            let lines = input::Lines::new(BufReader::new(io::stdin()), None);
            Ok(Box::new(from_args.chain(lines)))
        }
        Some(path) => {
            let file = fs::File::open(path).map_err(|source| UsageError::Input {
                path: path.clone(),
                source,
            })?;
            let lines = input::Lines::new(BufReader::new(file), None);
            Ok(Box::new(from_args.chain(lines)))
        }
        None if !args.urls.is_empty() => Ok(Box::new(from_args)),
        None => {
            if prompt.is_some() {
                eprintln!("Enter URLs, one a line; end with Ctrl-D.");
            }
            let lines = input::Lines::new(BufReader::new(io::stdin()), prompt);
            Ok(Box::new(lines))
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
                Ok(Ok(found)) => {
                    let input::Found {
                        place,
                        url,
                        assumed_http,
                    } = found;
                    if assumed_http {
                        let note = format!("{place}: no scheme; assuming {url}");
                        if self.fed.send(Fed::Note(note)).is_err() {
                            return;
                        }
                    }
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
                    // A proxy gone is a warning: shown even with --quiet.
                    Ok(Event::Note(line)) => self.progress.error(None, &line, false),
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
            Fed::Note(line) => self.progress.note(&line),
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
            seen,
            elapsed,
        } = outcome;
        let mut entry = Entry {
            url: url.to_string(),
            file: None,
            status: seen.status,
            bytes: 0,
            content_type: seen.content_type.clone(),
            sha256: None,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            request_id: seen.request_id,
            proxy: seen.proxy,
            error: None,
        };
        let saved = result.map_err(|e| e.to_string()).and_then(|mut file| {
            let base = naming::file_name_for(
                &url,
                seen.content_type.as_deref(),
                seen.content_disposition.as_deref(),
            );
            let name = self.place(&base, url.as_str(), &mut file)?;
            Ok((name, file.sha256.clone(), file.bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn down(name: &str) -> Unreachable {
        Unreachable {
            name: name.to_string(),
            reason: "connection refused".to_string(),
        }
    }

    #[test]
    fn no_proxy_messages_say_what_to_do() {
        assert_eq!(
            no_proxy_text(&[down(DEFAULT_PROXY)], true),
            "no proxy answers at 127.0.0.1:8080, the default --proxy (connection refused): \
             start one with \"fetchproxy serve\", or pass --proxy HOST:PORT of one that runs"
        );
        assert_eq!(
            no_proxy_text(&[down("a:3128"), down("b:3128")], false),
            "no proxy answers: a:3128 (connection refused), b:3128 (connection refused): \
             start them with \"fetchproxy serve --listen HOST:PORT\", or pass --proxy with ones that run"
        );
    }
}
