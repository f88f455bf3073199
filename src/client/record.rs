//! The batch's main thread: the single writer of final file names, the
//! manifest and the display. It hears the workers' events and the input
//! thread's messages, names and renames each finished download, appends its
//! manifest line, keeps the tally for the summary, and stops the batch
//! cleanly on Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, never, select};

use crate::client::batch::{Event, Outcome};
use crate::client::feed::Fed;
use crate::client::fetch::FetchError;
use crate::client::manifest::{Entry, Manifest};
use crate::client::naming;
use crate::client::progress::{Progress, Tally};
use crate::client::save::{self, Names, Scratch};

/// Exit code when the batch is stopped by SIGINT (128 + 2).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code when the batch is stopped by SIGTERM (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// Why a batch stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT or SIGTERM; the exit code they give.
    Signal(u8),
    /// No proxy takes connections any more, through a URL's every retry.
    NoProxy,
}

impl Stop {
    /// The process's exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Signal(code) => code,
            Stop::NoProxy => 1,
        }
    }
}
/// The main thread's state: the only writer of files' final names, the
/// manifest and the display.
pub struct Recorder {
    pub out_dir: PathBuf,
    pub overwrite: bool,
    pub names: Names,
    /// With `--overwrite`, the file each URL's latest manifest line names:
    /// replaced by the fresh copy, whatever its name.
    pub replaced: HashMap<String, String>,
    pub manifest: Manifest,
    pub progress: Progress,
    pub tally: Tally,
    /// Proxies whose 407 was told in full: for later URLs, one short line
    /// (a batch of a thousand URLs through a proxy that wants credentials
    /// would otherwise repeat the same advice a thousand times).
    pub told_407: Vec<(String, bool)>,
}

impl Recorder {
    /// Handles messages until every queued URL is done; `Some` when a signal
    /// or the loss of every proxy stopped the batch.
    pub fn run(
        &mut self,
        events: &Receiver<Event>,
        mut fed: Receiver<Fed>,
        signals: Receiver<i32>,
        stop: &AtomicBool,
        scratch: &Scratch,
    ) -> Option<Stop> {
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
                    Ok(Event::NoProxy) => {
                        // As a signal does: the downloads still trying
                        // stop, and the URLs not fetched stay out of the
                        // manifest, for the next run.
                        stop.store(true, Ordering::SeqCst);
                        let removed = scratch.close_and_clean();
                        log::debug!("removed {removed} temporary files");
                        self.progress.error(
                            None,
                            "stopped: no proxy takes connections any more; run again once one does, for the rest",
                            false,
                        );
                        return Some(Stop::NoProxy);
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
                    return Some(Stop::Signal(match signal {
                        Ok(signal_hook::consts::SIGTERM) => EXIT_SIGTERM,
                        _ => EXIT_SIGINT,
                    }));
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
            Fed::Repeated { url, place, first } => {
                self.tally.skipped += 1;
                self.progress.add_total(1);
                self.progress
                    .finished(None, &format!("skipped {place}: {url} (repeats {first})"));
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
            rank,
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
        let attempts = seen.attempts;
        let shown_error = match &result {
            Err(FetchError::ProxyAuth { proxy, sent }) => {
                let key = (proxy.clone(), *sent);
                if self.told_407.contains(&key) {
                    Some(format!("HTTP 407 from proxy {proxy} (as above)"))
                } else {
                    self.told_407.push(key);
                    None
                }
            }
            _ => None,
        };
        let saved = result.map_err(|e| e.to_string()).and_then(|mut file| {
            let base = naming::file_name_for(
                &url,
                seen.content_type.as_deref(),
                seen.content_disposition.as_deref(),
            );
            let name = self.place(&base, url.as_str(), rank, &mut file)?;
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
                self.retire_replaced(url.as_str(), &name);
                let line = format!(
                    "fetched {url} -> {name} ({}, {:.1}s)",
                    indicatif::HumanBytes(bytes),
                    elapsed.as_secs_f64()
                );
                self.progress.finished(Some(id), &line);
            }
            Err(error) => {
                self.tally.failed += 1;
                let tries = if attempts > 1 {
                    format!(" (after {attempts} attempts)")
                } else {
                    String::new()
                };
                let line = format!(
                    "failed {url}: {}{tries}",
                    shown_error.as_ref().unwrap_or(&error)
                );
                entry.error = Some(format!("{error}{tries}"));
                if let Err(err) = self.manifest.append(&entry) {
                    self.progress
                        .error(None, &format!("cannot write manifest: {err}"), false);
                }
                self.progress.error(Some(id), &line, true);
            }
        }
    }

    /// Removes the file that `url`'s latest manifest line named, now that
    /// `--overwrite` saved a fresh copy of it as `name`: only a regular file
    /// (never a link or what one points at) that no other URL's line names.
    fn retire_replaced(&mut self, url: &str, name: &str) {
        let Some(old) = self.replaced.remove(url) else {
            return;
        };
        // Compared without case: on a file system that ignores it, `A.html`
        // is the file just saved as `a.html`.
        if old.eq_ignore_ascii_case(name) || !self.names.is_owned_by(&old, url) {
            return;
        }
        let path = self.out_dir.join(&old);
        if !path.symlink_metadata().is_ok_and(|meta| meta.is_file()) {
            return;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => self
                .progress
                .note(&format!("{url}: {name} replaces {old}, its file before")),
            Err(err) => self.progress.error(
                None,
                &format!("{url}: saved as {name}, but its file before, {old}, stays: {err}"),
                false,
            ),
        }
    }

    /// Picks a free name for `url`, `rank`th among the URLs whose names
    /// would collide, and renames the file to it; a name taken meanwhile by
    /// another program is passed over.
    fn place(
        &mut self,
        base: &str,
        url: &str,
        rank: u32,
        file: &mut save::Finished,
    ) -> Result<String, String> {
        let dir = &self.out_dir;
        // Bounded: each round either succeeds or sees the name on disk next time.
        for _ in 0..1000 {
            let name = self.names.choose(base, url, rank, self.overwrite, |n| {
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
