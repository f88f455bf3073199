//! Getting bodies onto disk safely: a temporary file in the out-dir (hashed
//! while written, fsynced), renamed to its final name only when complete;
//! the choice of that name among the batch's and the disk's (`-2`, `-3`);
//! removal of temporary files left by interrupted or killed runs. No network.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::client::manifest::MANIFEST_NAME;
use crate::client::naming;

/// Temporary files are `.fetchproxy-tmp-<pid>-<n>`: hidden, and named after
/// the process that owns them so the next run can tell stale ones.
pub const TEMP_PREFIX: &str = ".fetchproxy-tmp-";

/// Numbers a temporary file's name may go up to past names already taken.
const TAKEN_NAMES_MAX: u64 = 1 << 20;

/// Where temporary files are made: one per out-dir and run. Once closed (on
/// Ctrl-C) it makes no more, so a cleanup cannot race a new file.
pub struct Scratch {
    dir: PathBuf,
    pid: u32,
    next: AtomicU64,
    closed: Mutex<bool>,
}

impl Scratch {
    /// Temporary files for this process in `dir`.
    pub fn new(dir: &Path) -> Scratch {
        Scratch {
            dir: dir.to_path_buf(),
            pid: std::process::id(),
            next: AtomicU64::new(1),
            closed: Mutex::new(false),
        }
    }

    /// A new, empty temporary file.
    ///
    /// # Errors
    /// The OS error creating it, or `Interrupted` once the scratch is closed.
    pub fn create(&self) -> io::Result<TempFile> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        // A name taken already was left by a killed run that had this pid
        // (a container's runs often do): the next number is tried.
        let (path, file) = loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{TEMP_PREFIX}{}-{n}", self.pid));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && n < TAKEN_NAMES_MAX => {}
                Err(err) => return Err(err),
            }
        };
        Ok(TempFile {
            path: Some(path),
            file,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Makes no more temporary files and removes this process's; returns how
    /// many were removed.
    pub fn close_and_clean(&self) -> usize {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        *closed = true;
        let own = format!("{TEMP_PREFIX}{}-", self.pid);
        remove_matching(&self.dir, |name| name.starts_with(&own))
    }
}

/// A body being written: removed on drop unless `finish`ed.
pub struct TempFile {
    path: Option<PathBuf>,
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl TempFile {
    /// Flushes and fsyncs the file; the result carries its hash and size.
    ///
    /// # Errors
    /// The OS error from flushing or syncing (disk full shows up here too).
    pub fn finish(mut self) -> io::Result<Finished> {
        self.file.flush()?;
        self.file.sync_all()?;
        let path = self
            .path
            .take()
            .expect("a TempFile has its path until finished");
        Ok(Finished {
            path: Some(path),
            sha256: hex(&std::mem::take(&mut self.hasher).finalize()),
            bytes: self.bytes,
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// A complete body in its temporary file, waiting for a name; removed on
/// drop unless committed.
#[derive(Debug)]
pub struct Finished {
    path: Option<PathBuf>,
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
    /// Body length.
    pub bytes: u64,
}

impl Finished {
    /// Moves the file to `dir/name` and syncs the directory so the rename
    /// survives a crash. With `replace` an existing file there is replaced;
    /// without, a file there is never touched (`AlreadyExists`, and this
    /// file stays ready for another name).
    ///
    /// # Errors
    /// The OS error; on any but `AlreadyExists` the temporary file is removed.
    pub fn commit(&mut self, dir: &Path, name: &str, replace: bool) -> io::Result<PathBuf> {
        let from = self
            .path
            .clone()
            .expect("a Finished has its path until committed");
        let to = dir.join(name);
        let moved = if replace {
            fs::rename(&from, &to)
        } else {
            // A hard link fails if the name exists, atomically; the rename
            // fallback is for file systems without links.
            match fs::hard_link(&from, &to) {
                Ok(()) => fs::remove_file(&from),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Err(err),
                Err(_) => fs::rename(&from, &to),
            }
        };
        if let Err(err) = moved {
            let _ = fs::remove_file(&from);
            self.path = None;
            return Err(err);
        }
        self.path = None;
        // Best effort: not every platform can open a directory to sync it.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(to)
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// The names in use: files the manifest records (with the URL they belong
/// to), names given in this batch, and other files found in the way.
/// Compared case-insensitively, so a batch is also safe on
/// case-insensitive file systems.
pub struct Names {
    owners: HashMap<String, String>,
    /// The files the manifest gives each URL (lowercase): a suffix below
    /// the first unowned one may be the URL's own.
    recorded: HashMap<String, Vec<String>>,
    /// Per base name (lowercase), the first suffix not known to be held:
    /// ten thousand files named alike (one `Content-Disposition` name for
    /// every download) each try one name, not all the ones before it.
    first_unowned: HashMap<String, u32>,
}

impl Names {
    /// Starts from the `(file, url)` pairs the manifest records.
    pub fn new<'a>(recorded: impl Iterator<Item = (&'a str, &'a str)>) -> Names {
        let mut owners: HashMap<String, String> = recorded
            .map(|(file, url)| (file.to_ascii_lowercase(), url.to_string()))
            .collect();
        let mut recorded: HashMap<String, Vec<String>> = HashMap::new();
        for (file, url) in &owners {
            recorded.entry(url.clone()).or_default().push(file.clone());
        }
        owners.insert(MANIFEST_NAME.to_string(), String::new());
        Names {
            owners,
            recorded,
            first_unowned: HashMap::new(),
        }
    }

    /// Whether `file` is `url`'s, as the manifest records it or as this
    /// batch named it (compared without case).
    pub fn is_owned_by(&self, file: &str, url: &str) -> bool {
        self.owners
            .get(&file.to_ascii_lowercase())
            .is_some_and(|owner| owner == url)
    }

    /// The name for `url`: `base`, else `base-2`, `base-3`, ... The first one
    /// from `base-rank` on (so that URLs whose names collide take them in
    /// the order of the input, however their downloads end) that no other
    /// URL holds and that is not on disk (`exists`); a file this URL
    /// already owns may be replaced only when `overwrite` is set.
    pub fn choose(
        &mut self,
        base: &str,
        url: &str,
        rank: u32,
        overwrite: bool,
        exists: impl Fn(&str) -> bool,
    ) -> String {
        let base_key = base.to_ascii_lowercase();
        // Suffixes below the first unowned one are all held (by URLs, or by
        // files on disk): of those, only the URL's own can be its answer.
        let unowned = self.first_unowned.get(&base_key).copied().unwrap_or(1);
        let own = self.recorded.get(url).into_iter().flatten();
        let first = own
            .filter_map(|file| suffix_of(base, file))
            .fold(unowned.max(rank), u32::min);
        for n in first.. {
            let candidate = candidate(base, n);
            let key = candidate.to_ascii_lowercase();
            let owner = self.owners.get(&key);
            if owner.is_some_and(|o| o != url) {
                continue;
            }
            if exists(&candidate) && !(overwrite && owner.is_some()) {
                if owner.is_none() {
                    // Another program's file: held, as the manifest is.
                    self.owners.insert(key, String::new());
                }
                continue;
            }
            self.owners.insert(key, url.to_string());
            self.pass_held(base, base_key);
            return candidate;
        }
        unreachable!("u32 suffixes run out only after 4 billion files with one name")
    }

    /// Moves the first unowned suffix of `base` past the names now held.
    fn pass_held(&mut self, base: &str, base_key: String) {
        let first = self.first_unowned.entry(base_key).or_insert(1);
        while self
            .owners
            .contains_key(&candidate(base, *first).to_ascii_lowercase())
        {
            *first += 1;
        }
    }
}

/// The `n`th name tried for `base`: `base`, then `base-2`, `base-3`, ...
fn candidate(base: &str, n: u32) -> String {
    if n == 1 {
        base.to_string()
    } else {
        naming::with_suffix(base, n)
    }
}

/// Which of `base`'s names `file` (lowercase) is, if it is one.
fn suffix_of(base: &str, file: &str) -> Option<u32> {
    if file == base.to_ascii_lowercase() {
        return Some(1);
    }
    // The number after the last `-` that is followed by digits, up to a
    // dot or the end: `a-12.html`, `a-12.tar.gz`, `readme-3`.
    let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    let before_extension = stem.rsplit_once('-').map(|(_, n)| n);
    let before_dots = file
        .rsplit_once('-')
        .and_then(|(_, rest)| rest.split('.').next());
    [before_extension, before_dots]
        .into_iter()
        .flatten()
        .filter_map(|digits| digits.parse::<u32>().ok())
        .find(|&n| n >= 2 && candidate(base, n).to_ascii_lowercase() == file)
}

/// Removes the temporary files that runs killed outright (`kill -9`, a
/// crash, power loss) left in `dir`, and returns how many. Only for a run
/// that holds the out-dir's lock and has made none of its own yet: no
/// other run can be writing there, so every one is left over, whatever its
/// pid (the pid of a killed run is often the next run's own, in a
/// container, and a live process of that pid may be another one's).
pub fn remove_left_temps(dir: &Path) -> usize {
    remove_matching(dir, |name| name.starts_with(TEMP_PREFIX))
}

fn remove_matching(dir: &Path, matches: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&matches))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// The lowercase hex SHA-256 of what is left to read in `file`.
///
/// # Errors
/// The OS error reading it.
pub fn sha256_of(file: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn finished_file_is_hashed_and_renamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = Scratch::new(dir.path());
        let mut temp = scratch.create().expect("create");
        temp.write_all(b"hello").expect("write");
        let done = temp.finish().expect("finish");
        assert_eq!(done.bytes, 5);
        assert_eq!(
            done.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let mut done = done;
        let path = done.commit(dir.path(), "h.txt", false).expect("commit");
        assert_eq!(fs::read(&path).expect("read"), b"hello");
        let mut file = File::open(&path).expect("open");
        assert_eq!(sha256_of(&mut file).expect("hash"), done.sha256);
        assert_eq!(temp_names(dir.path()), ["h.txt"]);
    }

    #[test]
    fn commit_never_replaces_a_file_unless_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("a.txt"), b"mine").expect("write");
        let scratch = Scratch::new(dir.path());
        let mut temp = scratch.create().expect("create");
        temp.write_all(b"new").expect("write");
        let mut done = temp.finish().expect("finish");
        let err = done.commit(dir.path(), "a.txt", false).expect_err("taken");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("a.txt")).expect("read"), b"mine");
        done.commit(dir.path(), "a.txt", true).expect("replace");
        assert_eq!(fs::read(dir.path().join("a.txt")).expect("read"), b"new");
        assert_eq!(temp_names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn dropped_temp_files_leave_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = Scratch::new(dir.path());
        let mut temp = scratch.create().expect("create");
        temp.write_all(b"partial").expect("write");
        drop(temp);
        let temp = scratch.create().expect("create");
        drop(temp.finish().expect("finish"));
        assert!(temp_names(dir.path()).is_empty());
    }

    #[test]
    fn closing_the_scratch_removes_and_refuses_temp_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = Scratch::new(dir.path());
        let temp = scratch.create().expect("create");
        assert_eq!(scratch.close_and_clean(), 1);
        assert!(temp_names(dir.path()).is_empty());
        assert!(scratch.create().is_err());
        drop(temp);
    }

    #[test]
    fn temp_files_left_by_killed_runs_are_removed_whatever_their_pid() {
        let dir = tempfile::tempdir().expect("temp dir");
        // This process's pid, as a killed run in a container had it.
        let mine = format!("{TEMP_PREFIX}{}-1", std::process::id());
        let other = format!("{TEMP_PREFIX}{}-3", 4_194_400 + 7);
        for name in [&mine, &other, &"keep.html".to_string()] {
            fs::write(dir.path().join(name), b"x").expect("write");
        }
        assert_eq!(remove_left_temps(dir.path()), 2);
        assert_eq!(temp_names(dir.path()), ["keep.html"]);
    }

    #[test]
    fn a_temp_name_left_with_this_pid_is_passed_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        for n in 1..=2 {
            let left = format!("{TEMP_PREFIX}{}-{n}", std::process::id());
            fs::write(dir.path().join(left), b"x").expect("write");
        }
        let scratch = Scratch::new(dir.path());
        let temp = scratch.create().expect("a free name");
        let name = temp
            .path
            .as_ref()
            .and_then(|p| p.file_name())
            .expect("name");
        assert_eq!(
            name.to_string_lossy(),
            format!("{TEMP_PREFIX}{}-3", std::process::id())
        );
    }

    #[test]
    fn collisions_get_numbered_suffixes() {
        let mut names = Names::new(std::iter::empty());
        let none = |_: &str| false;
        assert_eq!(names.choose("a.html", "u1", 1, false, none), "a.html");
        assert_eq!(names.choose("a.html", "u2", 1, false, none), "a-2.html");
        assert_eq!(names.choose("A.html", "u3", 1, false, none), "A-3.html");
        assert_eq!(
            names.choose("manifest.jsonl", "u4", 1, false, none),
            "manifest-2.jsonl"
        );
    }

    #[test]
    fn a_later_url_never_takes_a_suffix_below_its_rank() {
        let mut names = Names::new(std::iter::empty());
        let none = |_: &str| false;
        // The second URL of a colliding pair ends first: it still gets -2,
        // and the first URL gets the plain name when it ends.
        assert_eq!(names.choose("a.html", "second", 2, false, none), "a-2.html");
        assert_eq!(names.choose("a.html", "first", 1, false, none), "a.html");
        assert_eq!(names.choose("a.html", "third", 3, false, none), "a-3.html");
        // Past names held by others, as before.
        assert_eq!(names.choose("a.html", "fourth", 2, false, none), "a-4.html");
    }

    #[test]
    fn many_files_of_one_name_are_numbered_in_order() {
        let mut names = Names::new([("f.zip", "old"), ("f-3.zip", "older")].into_iter());
        let on_disk = |n: &str| n == "f-5.zip";
        let chosen: Vec<String> = (0..20_000)
            .map(|i| names.choose("f.zip", &format!("u{i}"), 1, false, on_disk))
            .collect();
        assert_eq!(chosen[..3], ["f-2.zip", "f-4.zip", "f-6.zip"]);
        assert_eq!(chosen[19_999], "f-20003.zip");
        // The file on disk that no URL owns stays passed over, and a URL the
        // manifest records still finds its own name below the others.
        assert_eq!(
            names.choose("F.zip", "new", 1, false, on_disk),
            "F-20004.zip"
        );
        assert_eq!(names.choose("f.zip", "older", 1, true, |_| true), "f-3.zip");
    }

    #[test]
    fn a_rerun_finds_each_urls_own_name() {
        let recorded: Vec<(String, String)> = (1..=20_000)
            .map(|n| (candidate("F.zip", n), format!("u{n}")))
            .collect();
        let mut names = Names::new(recorded.iter().map(|(f, u)| (f.as_str(), u.as_str())));
        for n in 1..=20_000 {
            let url = format!("u{n}");
            assert_eq!(
                names.choose("f.zip", &url, 1, true, |_| true),
                candidate("f.zip", n)
            );
        }
        // Without --overwrite a URL's own file is kept, and it gets a new name.
        let on_disk = |n: &str| suffix_of("f.zip", n).is_some_and(|n| n <= 20_000);
        assert_eq!(
            names.choose("f.zip", "u7", 1, false, on_disk),
            "f-20001.zip"
        );
        assert_eq!(suffix_of("a.tar.gz", "a-12.tar.gz"), Some(12));
        assert_eq!(suffix_of("a.tar.gz", "a.tar-12.gz"), None);
        assert_eq!(suffix_of("a.html", "a-12.html"), Some(12));
        assert_eq!(suffix_of("readme", "readme-3"), Some(3));
        assert_eq!(suffix_of("readme", "other-3"), None);
    }

    #[test]
    fn unknown_files_on_disk_are_never_taken() {
        let mut names = Names::new(std::iter::empty());
        let on_disk = |n: &str| n == "a.html" || n == "a-2.html";
        assert_eq!(names.choose("a.html", "u1", 1, true, on_disk), "a-3.html");
    }

    #[test]
    fn a_urls_own_file_is_replaced_only_with_overwrite() {
        let on_disk = |n: &str| n == "a.html";
        let mut names = Names::new([("a.html", "u1")].into_iter());
        assert_eq!(names.choose("a.html", "u1", 1, true, on_disk), "a.html");
        let mut names = Names::new([("a.html", "u1")].into_iter());
        assert_eq!(names.choose("a.html", "u1", 1, false, on_disk), "a-2.html");
        let mut names = Names::new([("a.html", "u1")].into_iter());
        assert_eq!(names.choose("a.html", "u2", 1, true, on_disk), "a-2.html");
        // The URL's own recorded file is gone: its name is free for it again.
        let mut names = Names::new([("a.html", "u1")].into_iter());
        assert_eq!(names.choose("a.html", "u1", 1, false, |_| false), "a.html");
    }
}
