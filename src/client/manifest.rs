//! `manifest.jsonl`: one JSON object per finished URL, appended and flushed
//! as each one finishes, and read back at the start of a run so a re-run
//! can skip what is already there. Records; decides nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

/// The manifest's file name in the out-dir.
pub const MANIFEST_NAME: &str = "manifest.jsonl";

/// One line of the manifest: what became of one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The URL as given (normalised), before redirects.
    pub url: String,
    /// The file name in the out-dir; `None` on failure.
    pub file: Option<String>,
    /// The final HTTP status; `None` when no response arrived.
    pub status: Option<u16>,
    /// Body bytes saved (0 on failure).
    pub bytes: u64,
    /// The final response's Content-Type.
    pub content_type: Option<String>,
    /// Lowercase hex SHA-256 of the saved file.
    pub sha256: Option<String>,
    /// Time for the URL, redirects and retries included.
    pub elapsed_ms: u64,
    /// The proxy's `X-Request-Id` for the final response.
    pub request_id: Option<String>,
    /// The proxy (`host:port`) that gave the final response; `None` when
    /// none answered. Absent from manifests of older versions.
    #[serde(default)]
    pub proxy: Option<String>,
    /// What went wrong; `None` on success.
    pub error: Option<String>,
}

impl Entry {
    /// True when the entry records a saved file.
    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.file.is_some() && self.sha256.is_some()
    }
}

/// What a manifest held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Its well-formed lines.
    pub entries: Vec<Entry>,
    /// The numbers of lines that are no entry: edited, damaged, or torn
    /// (the last line of a run killed while writing it).
    pub bad_lines: Vec<usize>,
}

/// Reads every well-formed line of `dir/manifest.jsonl` (none when missing).
///
/// # Errors
/// The OS error when the file exists but cannot be read.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    let file = match open_own(dir, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(err) => return Err(err),
    };
    let mut loaded = Loaded::default();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        match serde_json::from_slice::<Entry>(&line) {
            Ok(entry) => loaded.entries.push(entry),
            Err(_) if line.trim_ascii().is_empty() => {}
            Err(_) => loaded.bad_lines.push(i + 1),
        }
    }
    Ok(loaded)
}

/// Opens `dir/manifest.jsonl` with `options`, only as a regular file of
/// its own: a link planted under its name would have the run write
/// outside the out-dir, and a FIFO would hang it.
fn open_own(dir: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let path = dir.join(MANIFEST_NAME);
    let not_own =
        || io::Error::other("not a plain file (a link, a FIFO, a directory?); move it away");
    let file = options
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(&path)
        .map_err(|err| match err.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => not_own(),
            _ => err,
        })?;
    if !file.metadata()?.is_file() {
        return Err(not_own());
    }
    Ok(file)
}

/// The manifest open for appending.
pub struct Manifest {
    file: File,
}

impl Manifest {
    /// Opens (or creates) `dir/manifest.jsonl` for appending, and locks it
    /// for this run: two runs into one directory would both download every
    /// URL, each not knowing what the other saved. If a killed run left a
    /// torn last line, a newline first keeps the next entry whole.
    ///
    /// # Errors
    /// `WouldBlock` when another run holds the lock; the OS error opening
    /// or repairing the file.
    pub fn open(dir: &Path) -> io::Result<Manifest> {
        use rustix::fs::{FlockOperation, flock};
        let mut file = open_own(dir, OpenOptions::new().read(true).append(true).create(true))?;
        // A BSD lock, held by this open file until it closes (a POSIX one
        // would go whenever this process closed any other handle on the
        // file, as loading it does); the kernel drops it when the run ends,
        // however it ends.
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)?;
        let len = file.metadata()?.len();
        if len > 0 {
            file.seek(SeekFrom::Start(len - 1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Manifest { file })
    }

    /// Appends one entry as a line and flushes it to the OS.
    ///
    /// # Errors
    /// The OS error writing (disk full, for one).
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, ok: bool) -> Entry {
        Entry {
            url: url.to_string(),
            file: ok.then(|| "h.org.html".to_string()),
            status: Some(if ok { 200 } else { 404 }),
            bytes: if ok { 5 } else { 0 },
            content_type: Some("text/html".to_string()),
            sha256: ok.then(|| "ab".repeat(32)),
            elapsed_ms: 12,
            request_id: Some("r-1".to_string()),
            proxy: Some("127.0.0.1:3128".to_string()),
            error: (!ok).then(|| "HTTP 404 Not Found".to_string()),
        }
    }

    #[test]
    fn entries_round_trip_one_line_each() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut manifest = Manifest::open(dir.path()).expect("open");
        let (a, b) = (entry("http://h.org/", true), entry("http://h.org/x", false));
        manifest.append(&a).expect("append");
        manifest.append(&b).expect("append");
        assert_eq!(load(dir.path()).expect("load").entries, [a.clone(), b]);
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_NAME)).expect("read");
        assert_eq!(text.lines().count(), 2);
        let value: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("line")).expect("json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "url",
            "file",
            "status",
            "bytes",
            "content_type",
            "sha256",
            "elapsed_ms",
            "request_id",
            "proxy",
            "error",
        ] {
            assert!(keys.contains(&key), "{key} missing from {text}");
        }
        assert_eq!(keys.len(), 10);
        assert!(a.is_success());
    }

    #[test]
    fn a_torn_last_line_is_told_skipped_and_repaired() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = serde_json::to_string(&entry("http://h.org/", true)).expect("json");
        std::fs::write(
            dir.path().join(MANIFEST_NAME),
            format!("{good}\n{{\"url\":\"http://h.o"),
        )
        .expect("write");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.entries.len(), 1);
        assert_eq!(loaded.bad_lines, [2], "told the first time it is seen");
        let mut manifest = Manifest::open(dir.path()).expect("open");
        manifest
            .append(&entry("http://h.org/x", false))
            .expect("append");
        let loaded = load(dir.path()).expect("load");
        assert_eq!(loaded.entries.len(), 2);
        assert_eq!(loaded.bad_lines, [2], "and every time after");
    }

    #[test]
    fn missing_manifest_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(load(dir.path()).expect("load").entries.is_empty());
    }

    #[test]
    fn lines_of_older_versions_without_proxy_still_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = r#"{"url":"http://h.org/","file":"h.org.html","status":200,"bytes":5,"content_type":"text/html","sha256":"ab","elapsed_ms":1,"request_id":"r","error":null}"#;
        std::fs::write(dir.path().join(MANIFEST_NAME), format!("{old}\n")).expect("write");
        let entries = load(dir.path()).expect("load").entries;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].proxy, None);
        assert_eq!(entries[0].file.as_deref(), Some("h.org.html"));
    }

    #[test]
    fn a_link_or_fifo_in_the_manifest_s_place_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        let target = outside.path().join("profile");
        std::fs::write(&target, "kept").expect("write");
        let manifest = dir.path().join(MANIFEST_NAME);
        std::os::unix::fs::symlink(&target, &manifest).expect("symlink");
        for err in [
            Manifest::open(dir.path()).map(drop).expect_err("refused"),
            load(dir.path()).map(drop).expect_err("refused"),
        ] {
            assert!(err.to_string().contains("not a plain file"), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "kept");

        std::fs::remove_file(&manifest).expect("remove");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &manifest,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        // Refused at once, not waited on.
        let err = Manifest::open(dir.path()).map(drop).expect_err("refused");
        assert!(err.to_string().contains("not a plain file"), "{err}");
    }
}
