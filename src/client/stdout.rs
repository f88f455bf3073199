//! `--stdout` (or `-O -`): the body of one URL streamed to standard output,
//! through the same proxies, redirects and retries as a batch, with no
//! file, no manifest and no progress display; only errors go to stderr.
//! Nothing is written for a non-2xx answer, and once body bytes have gone
//! out the URL is not fetched again.

use std::io::{self, BufWriter, StdoutLock, Write};

use crate::client::fetch::{self, FetchError, Report, Settings, Sink};
use crate::client::http::HttpError;
use crate::client::input;

/// Bodies go to standard output.
#[derive(Default)]
struct StdoutSink {
    started: bool,
}

impl Sink for StdoutSink {
    type Out = BufWriter<StdoutLock<'static>>;
    type Done = ();

    fn open(&mut self) -> io::Result<Self::Out> {
        self.started = true;
        Ok(BufWriter::with_capacity(64 * 1024, io::stdout().lock()))
    }

    fn finish(&mut self, mut out: Self::Out) -> io::Result<()> {
        out.flush()
    }

    fn can_retry(&self) -> bool {
        !self.started
    }
}

/// Fetches `url` (the one URL argument) to standard output; returns the
/// exit code: 0 fetched (or its reader closed the pipe early), 1 failed or
/// not a URL.
pub fn run(url: String, settings: &Settings) -> u8 {
    let found = match input::from_args(vec![url]).next() {
        Some(Ok(found)) => found,
        Some(Err(bad)) => {
            eprintln!("fetchproxy: {bad}");
            return 1;
        }
        None => {
            eprintln!("fetchproxy: argument 1: no URL");
            return 1;
        }
    };
    if found.assumed_http {
        eprintln!("{}: no scheme; assuming {}", found.place, found.url);
    }
    let mut conns = settings.connections();
    let mut sink = StdoutSink::default();
    let mut report = |report: Report| {
        if let Report::ProxyDown { name, error } = report {
            eprintln!("proxy {name} stopped taking connections ({error})");
        }
    };
    let (result, seen) = fetch::fetch(&mut conns, &found.url, settings, &mut sink, &mut report);
    match result {
        Ok(()) => 0,
        // The reader took what it wanted and left (`| head`), as with any
        // filter: not a failure of the fetch.
        Err(FetchError::Http(HttpError::Save(err))) if err.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(FetchError::Http(HttpError::Save(err))) => {
            eprintln!(
                "failed {}: cannot write to standard output: {err}",
                found.url
            );
            1
        }
        Err(err) if seen.attempts > 1 => {
            eprintln!(
                "failed {}: {err} (after {} attempts)",
                found.url, seen.attempts
            );
            1
        }
        Err(err) => {
            eprintln!("failed {}: {err}", found.url);
            1
        }
    }
}
