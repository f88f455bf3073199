//! The batch's input thread: URLs from the arguments, an `--input` file or
//! the prompt, with repeats and URLs already saved (intact on disk) told to
//! the main thread instead of queued, and the rest queued as jobs for the
//! workers (blocking while they are busy). Also counts a file's URLs in
//! advance, for the bar.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Sender;
use rustix::fs::OFlags;

use crate::cli::FetchArgs;
use crate::client::batch::Job;
use crate::client::input::{self, InputError, Place, ReadError};
use crate::client::manifest::Entry;
use crate::client::progress::Prompt;
use crate::client::start::UsageError;
use crate::client::{naming, save};

/// Something the input thread tells the main thread.
pub enum Fed {
    Queued,
    Bad(InputError),
    Note(String),
    Repeated {
        url: String,
        place: Place,
        first: Place,
    },
    Skipped {
        url: String,
        file: String,
    },
    ReadFailed(ReadError),
    End,
}

/// Where the URLs come from, in order.
pub type Source = Box<dyn Iterator<Item = Result<input::Item, ReadError>> + Send>;

/// The URLs the arguments and an `--input` file hold, counted before the
/// start so that the bar shows the whole batch; `None` for standard input,
/// a pipe or anything else that is not a regular file, which can be read
/// only once.
pub fn count_urls(args: &FetchArgs) -> Option<u64> {
    let from_args = input::from_args(args.urls.clone())
        .filter(Result::is_ok)
        .count() as u64;
    match &args.input {
        Some(path) if path.as_os_str() == "-" => None,
        Some(path) if !fs::metadata(path).is_ok_and(|meta| meta.is_file()) => None,
        Some(path) => {
            let file = fs::File::open(path).ok()?;
            let lines = input::Lines::new(BufReader::new(file), None);
            let in_file = lines.filter(|item| matches!(item, Ok(Ok(_)))).count() as u64;
            Some(from_args + in_file)
        }
        None => Some(from_args),
    }
}

/// Whether the batch holds no line at all, URL or not: no URLs as arguments
/// and an `--input` file with none (blank lines and comments only). Known
/// only for a regular file; standard input, a pipe or a prompt may still
/// bring lines.
pub fn holds_nothing(args: &FetchArgs) -> bool {
    if !args.urls.is_empty() {
        return false;
    }
    let Some(path) = &args.input else {
        return false;
    };
    if path.as_os_str() == "-" || !fs::metadata(path).is_ok_and(|meta| meta.is_file()) {
        return false;
    }
    fs::File::open(path).is_ok_and(|file| {
        input::Lines::new(BufReader::new(file), None)
            .next()
            .is_none()
    })
}

/// The URL source: arguments, then `--input`; a prompt on stdin when neither
/// is given.
pub fn open_input(args: &FetchArgs, prompt: Option<Arc<Prompt>>) -> Result<Source, UsageError> {
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

/// The input thread: reads URLs, drops repeats and URLs already saved, and
/// queues the rest (blocking while the workers are busy).
pub struct Feeder {
    pub source: Source,
    pub last_saved: HashMap<String, Entry>,
    pub out_dir: PathBuf,
    pub overwrite: bool,
    pub jobs: Sender<Job>,
    pub fed: Sender<Fed>,
}

impl Feeder {
    /// Reads until the input ends or the main thread is gone.
    pub fn run(self) {
        let mut seen: HashMap<String, Place> = HashMap::new();
        // Per collision key, the URLs seen so far (saved ones included, so
        // that a rerun ranks as the first run did).
        let mut ranks: HashMap<String, u32> = HashMap::new();
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
                        Fed::Repeated {
                            url: key,
                            place,
                            first,
                        }
                    } else {
                        seen.insert(key.clone(), place);
                        let rank = ranks.entry(naming::collision_key(&url)).or_insert(0);
                        *rank = rank.saturating_add(1);
                        let rank = *rank;
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
                                    || self
                                        .jobs
                                        .send(Job {
                                            id: next_id,
                                            url,
                                            rank,
                                        })
                                        .is_err()
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

/// The manifest's file for this entry is still there, byte for byte: a
/// regular file, not a link or a FIFO put in its place (which reading
/// would follow, or wait on for ever).
fn is_intact(dir: &Path, entry: &Entry) -> bool {
    let (Some(file), Some(sha)) = (&entry.file, &entry.sha256) else {
        return false;
    };
    // Opened without following a link or waiting on a FIFO, then checked
    // to be a regular file: what is read is what was checked.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(dir.join(file));
    let Ok(mut opened) = opened else {
        return false;
    };
    opened.metadata().is_ok_and(|meta| meta.is_file())
        && save::sha256_of(&mut opened).is_ok_and(|got| got == *sha)
}
