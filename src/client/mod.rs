//! `fetchproxy fetch`: proxies → input → batch → save + manifest + progress
//! → summary.
//!
//! `start` checks what must hold first: the proxies parsed (`proxy`), each
//! checked to take a connection, passwords asked for. `--stdout` then
//! fetches its one URL (`stdout`). A batch has three kinds of thread: the
//! input thread (`feed`) reads URLs (`input`) and queues jobs, skipping
//! repeats and URLs already saved; `fetch-N` workers (`batch`) download
//! each URL (`fetch`, through the proxy `fleet` picks, over `http` with the
//! head `request` builds) into a temporary file; and this main thread
//! (`record`), the single writer, names and renames each file (`naming`,
//! `save`), appends its manifest line (`manifest`) and shows progress
//! (`progress`). A `signals` thread turns Ctrl-C or SIGTERM into a clean
//! stop that leaves no temporary files.

pub mod batch;
pub mod feed;
pub mod fetch;
pub mod fleet;
pub mod http;
pub mod input;
pub mod manifest;
pub mod naming;
pub mod outdir;
pub mod progress;
pub mod proxy;
pub mod record;
pub mod request;
pub mod save;
pub mod start;
pub mod stdout;

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;

use crossbeam_channel::{Receiver, never};

use crate::cli::FetchArgs;
use batch::{Event, Job};
use feed::{Fed, Feeder};
use fetch::Settings;
use manifest::{Entry, Manifest};
use progress::{Mode, Progress, Prompt, Tally};
use record::{Recorder, Stop};
use request::RequestOptions;
use save::{Names, Scratch};
pub use start::UsageError;

/// Most URLs fetched at the same time: each is a thread with a connection
/// to each proxy.
pub const MAX_CONCURRENCY: usize = 1024;

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
    if args.concurrency > MAX_CONCURRENCY {
        return Err(UsageError::TooMuchConcurrency(args.concurrency));
    }
    if let Some(path) = &args.input
        && path.as_os_str() != "-"
    {
        if path.is_dir() {
            return Err(UsageError::InputIsDirectory(path.clone()));
        }
        // Before the output directory is made: a run that cannot read its
        // input leaves nothing behind. A regular file is tried here and
        // opened again to be read; a pipe is not, as closing it would end
        // its writer's stream.
        let unreadable = |source| UsageError::Input {
            path: path.clone(),
            source,
        };
        if std::fs::metadata(path).map_err(unreadable)?.is_file() {
            std::fs::File::open(path).map_err(unreadable)?;
        }
    }
    // `fetch urls.txt` would fetch http://urls.txt: name the mix-up
    // before anything is made or asked.
    for (i, text) in args.urls.iter().enumerate() {
        if let Some(kind) = input::misplaced_input(text) {
            return Err(UsageError::InputAsUrl {
                n: i + 1,
                text: text.clone(),
                kind,
            });
        }
    }
    let to_stdout = args.writes_to_stdout();
    if to_stdout && args.urls.len() != 1 {
        return Err(UsageError::StdoutUrls(args.urls.len()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        fleet: start::connect_fleet(&args)?,
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

fn run_batch(args: FetchArgs, settings: Settings, stop: Arc<AtomicBool>) -> Result<u8, UsageError> {
    if feed::holds_nothing(&args) {
        // Said before anything is made: no out-dir, no manifest (an out-dir
        // that cannot be one is still named, for the next list).
        outdir::check(&args.out_dir)?;
        eprintln!("{}", progress::NOTHING_TO_FETCH);
        return Ok(0);
    }
    let out_dir = args.out_dir.clone();
    outdir::prepare(&out_dir)?;
    let manifest_path = out_dir.join(manifest::MANIFEST_NAME);
    let manifest_error = |source| UsageError::Manifest {
        path: manifest_path.clone(),
        source,
    };
    // Locked before the directory's files are read or cleared.
    let manifest = Manifest::open(&out_dir).map_err(|err| match err.kind() {
        io::ErrorKind::WouldBlock => UsageError::OutDirInUse(out_dir.clone()),
        _ => manifest_error(err),
    })?;
    let left = save::remove_left_temps(&out_dir);
    if left > 0 {
        log::debug!("removed {left} temporary files left by killed runs");
    }
    let loaded = manifest::load(&out_dir).map_err(manifest_error)?;
    if let (Some(first), false) = (loaded.bad_lines.first(), args.quiet) {
        let more = match loaded.bad_lines.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        eprintln!(
            "{}: line {first}{more} is no entry (edited, or torn by a run that was killed): ignored",
            manifest_path.display()
        );
    }
    let recorded: Vec<Entry> = loaded
        .entries
        .into_iter()
        .filter(|e| e.is_success() && e.file.as_deref().is_some_and(naming::is_safe_name))
        .collect();

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
        feed::count_urls(&args)
    } else {
        None
    };
    let source = feed::open_input(&args, prompt.clone())?;
    // The latest line for a URL stands: an older file of it (one changed
    // by hand, which the latest copy was saved beside) is no longer its,
    // and `--overwrite` replaces the latest.
    let last_saved: HashMap<String, Entry> =
        recorded.into_iter().map(|e| (e.url.clone(), e)).collect();
    let names = Names::new(
        last_saved
            .values()
            .filter_map(|e| Some((e.file.as_deref()?, e.url.as_str()))),
    );
    // With `--overwrite`, the file each URL's latest line names, which the
    // fresh copy replaces even under another name (its type changed, or an
    // earlier version named it otherwise).
    let replaced: HashMap<String, String> = if args.overwrite {
        last_saved
            .values()
            .filter_map(|e| Some((e.url.clone(), e.file.clone()?)))
            .collect()
    } else {
        HashMap::new()
    };

    let scratch = Arc::new(Scratch::new(&out_dir));
    // URLs given as arguments need no more workers than there are URLs.
    let concurrency = match (&args.input, args.urls.len()) {
        (None, given) if given > 0 => args.concurrency.min(given),
        _ => args.concurrency,
    };
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(concurrency * 2);
    let (event_tx, event_rx) = crossbeam_channel::bounded::<Event>(4096);
    let (fed_tx, fed_rx) = crossbeam_channel::bounded::<Fed>(1024);
    let workers = batch::spawn_workers(
        concurrency,
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

    let mut recorder = Recorder {
        out_dir,
        overwrite: args.overwrite,
        names,
        replaced,
        manifest,
        progress: Progress::new(mode, counted, prompt),
        tally: Tally::default(),
        told_407: Vec::new(),
    };
    let stopped = recorder.run(&event_rx, fed_rx, signals, &stop, &scratch);
    if stopped.is_none() {
        for worker in workers {
            let _ = worker.join();
        }
    }
    drop(recorder.manifest);
    let tally = &recorder.tally;
    let interrupted = stopped.map(|_| progress::Cut {
        downloads: recorder.progress.in_flight(),
        unkept: recorder.progress.received().saturating_sub(tally.bytes),
    });
    recorder.progress.finish(&progress::summary(
        tally,
        recorder.progress.elapsed(),
        interrupted,
    ));
    let clean = if tally.failed > 0 || tally.bad_lines > 0 {
        1
    } else {
        0
    };
    Ok(stopped.map_or(clean, Stop::exit_code))
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
