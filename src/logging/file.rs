//! The access-log file: lines appended through a buffer that is flushed
//! with the rest of the log, and the file reopened by name on request, so
//! that logrotate can rename it and signal (SIGHUP or SIGUSR1), and the next
//! lines go to a fresh file under the old name.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Log text held in memory between writes to the file.
const BUFFER_BYTES: usize = 64 * 1024;

/// An access log written to a file.
#[derive(Debug)]
pub struct AccessFile {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    /// Set after a failed write, so that a full disk is reported once, not
    /// once a request; cleared by the next good write.
    failing: AtomicBool,
}

impl AccessFile {
    /// Opens `path` for appending, creating it (readable by the owner and
    /// the group only: it names clients and the URLs they asked for).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> io::Result<AccessFile> {
        Ok(AccessFile {
            path: path.to_path_buf(),
            writer: Mutex::new(open_buffered(path)?),
            failing: AtomicBool::new(false),
        })
    }

    /// The file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline to the buffer.
    pub fn write_line(&self, line: impl Display) {
        // A panic while formatting cannot leave the buffer half swapped.
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let written = writeln!(writer, "{line}");
        drop(writer);
        self.note(written);
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let flushed = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
        self.note(flushed);
    }

    /// Opens the file by its name again: after a rename, a fresh file. What
    /// was buffered goes to the old file first.
    ///
    /// # Errors
    /// When the file cannot be opened; the old one stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_buffered(&self.path)?;
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let flushed = writer.flush();
        let old = std::mem::replace(&mut *writer, fresh);
        drop(writer);
        self.note(flushed);
        // Dropping the old writer closes the old file outside the lock.
        drop(old);
        Ok(())
    }

    fn note(&self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "cannot write the access log {}: {err}; lines are lost until it works again",
                        self.path.display()
                    );
                }
            }
        }
    }
}

fn open_buffered(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    Ok(BufWriter::with_capacity(BUFFER_BYTES, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn lines_reach_the_file_when_flushed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let file = AccessFile::open(&path).expect("open");
        file.write_line("one");
        file.write_line(format_args!("{} {}", "two", 2));
        file.flush();
        assert_eq!(read(&path), "one\ntwo 2\n");
    }

    #[test]
    fn reopening_after_a_rename_starts_a_fresh_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let file = AccessFile::open(&path).expect("open");
        file.write_line("before");
        std::fs::rename(&path, &rotated).expect("rotate");
        // Until the reopen, lines follow the renamed file.
        file.write_line("between");
        file.reopen().expect("reopen");
        file.write_line("after");
        file.flush();
        assert_eq!(read(&rotated), "before\nbetween\n");
        assert_eq!(read(&path), "after\n");
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_and_the_old_one_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(AccessFile::open(&dir.path().join("no/such/dir/access.log")).is_err());
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).expect("mkdir");
        let path = sub.join("access.log");
        let file = AccessFile::open(&path).expect("open");
        let moved = dir.path().join("moved");
        std::fs::rename(&sub, &moved).expect("move the directory away");
        assert!(file.reopen().is_err());
        file.write_line("kept");
        file.flush();
        assert_eq!(read(&moved.join("access.log")), "kept\n");
    }

    #[test]
    fn the_file_is_not_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        AccessFile::open(&path).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o007, 0, "{mode:o}");
    }
}
