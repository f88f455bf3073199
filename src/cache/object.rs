//! Stored objects: an immutable response head (its HTTP/1.1 bytes built
//! once, at store time) and a body held in memory as shared `Bytes` or,
//! from 32 to 128 KiB, in a sealed memory file, or in a file of the disk
//! tier. A hit on chunks writes `head_block`, an `Age` line, the proxy's
//! own headers and the body chunks in vectored writes (one for all but the
//! largest); on a file, the head, then the file with `sendfile`. Nothing of
//! the object is copied per hit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::cache::CacheError;
use crate::cache::key::{CacheKey, Variant};
use crate::cache::pages::{PageFiles, Pages};
use crate::cache::policy::Policy;
use crate::cache::reader::BodyReader;
use crate::http::response;

/// Response headers never written from the stored head: the proxy writes
/// its own (`Age` computed per hit, `Content-Length` from the body).
const NOT_REPLAYED: &[&str] = &["age", "content-length", "x-request-id"];

/// Stored headers echoed in a 304 (RFC 9110 §15.4.5).
const NOT_MODIFIED_HEADERS: &[&str] = &[
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "last-modified",
    "vary",
];

/// What is known of a stored response besides its body.
#[derive(Debug)]
pub struct ObjectHead {
    /// The primary key.
    pub key: CacheKey,
    /// The secondary key.
    pub variant: Variant,
    /// The stored status.
    pub status: StatusCode,
    /// The stored headers (hop-by-hop ones removed).
    pub headers: HeaderMap,
    /// Freshness and revalidation.
    pub policy: Policy,
    /// Length of the complete body.
    pub body_len: u64,
    /// Status line and headers with `Content-Length`, without `Age` and
    /// without the blank line.
    head_block: Bytes,
}

impl ObjectHead {
    /// Builds the head, serialising it once.
    pub fn new(
        key: CacheKey,
        variant: Variant,
        status: StatusCode,
        headers: HeaderMap,
        policy: Policy,
        body_len: u64,
    ) -> ObjectHead {
        let block = head_block(status, &headers, has_body(status).then_some(body_len));
        ObjectHead::with_head_block(key, variant, status, headers, policy, body_len, block)
    }

    /// The head of a response whose `head_block` was already written for
    /// followers (with this `body_len` as its `Content-Length`).
    pub fn with_head_block(
        key: CacheKey,
        variant: Variant,
        status: StatusCode,
        headers: HeaderMap,
        policy: Policy,
        body_len: u64,
        head_block: Bytes,
    ) -> ObjectHead {
        ObjectHead {
            key,
            variant,
            status,
            headers,
            policy,
            body_len,
            head_block,
        }
    }

    /// Bytes the head takes in memory, roughly but not below the truth: the
    /// serialised head, the header map and the policy's normalised copy of
    /// it (each entry with its map overhead, about 128 bytes), the request
    /// values its `Vary` names (a cookie can be kilobytes), and the fixed
    /// parts (policy, key, variant, `Arc`s, the index entry), about 2 KiB;
    /// measured against the process's resident size for 1 KiB objects with
    /// eight headers, this errs on the high side. For small objects the head
    /// is most of the cost, so it is counted for the memory budget to bound
    /// the process, not just the bodies.
    pub fn memory_weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 128)
            .sum();
        (self.head_block.len()
            + 2 * headers
            + 2 * self.key.as_str().len()
            + self.variant.memory_bytes()
            + 2048) as u64
    }

    /// Status line and headers (with `Content-Length`), without `Age` and
    /// without the final blank line: the request path appends `age_line`,
    /// its own headers and `\r\n`.
    pub fn head_block(&self) -> &Bytes {
        &self.head_block
    }

    /// `Age: N\r\n` for now (RFC 9111 §5.1: on every response from cache).
    pub fn age_line(&self, now: SystemTime) -> String {
        format!("Age: {}\r\n", self.policy.age(now).as_secs())
    }

    /// The head of a 304 answering a client conditional from this entry.
    pub fn not_modified_head(&self, now: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        response::write_status_line(&mut out, 304, "Not Modified");
        for (name, value) in &self.headers {
            if NOT_MODIFIED_HEADERS.contains(&name.as_str()) {
                response::write_header(&mut out, name.as_str(), value.as_bytes());
            }
        }
        out.extend_from_slice(self.age_line(now).as_bytes());
        out
    }

    /// The head of a 206 for bytes `start..=end` of a representation of
    /// `total` bytes (RFC 9110 §15.3.7).
    pub fn partial_head(&self, start: u64, end: u64, total: u64, now: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_block.len() + 64);
        response::write_status_line(&mut out, 206, "Partial Content");
        for (name, value) in &self.headers {
            let name = name.as_str();
            if !NOT_REPLAYED.contains(&name) && name != "content-range" {
                response::write_header(&mut out, name, value.as_bytes());
            }
        }
        let range = format!("bytes {start}-{end}/{total}");
        response::write_header(&mut out, "Content-Range", range.as_bytes());
        let len = (end - start + 1).to_string();
        response::write_header(&mut out, "Content-Length", len.as_bytes());
        out.extend_from_slice(self.age_line(now).as_bytes());
        out
    }

    /// The head of a 416 for this entry (RFC 9110 §15.5.17).
    pub fn unsatisfiable_head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        response::write_status_line(&mut out, 416, "Range Not Satisfiable");
        let range = format!("bytes */{}", self.body_len);
        response::write_header(&mut out, "Content-Range", range.as_bytes());
        response::write_header(&mut out, "Content-Length", b"0");
        out
    }
}

/// Serialises a status line and `headers` (less those the proxy writes
/// itself), with `Content-Length: len` when given; no blank line.
pub fn head_block(status: StatusCode, headers: &HeaderMap, len: Option<u64>) -> Bytes {
    let mut block = Vec::with_capacity(512);
    response::write_status_line(
        &mut block,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    for (name, value) in headers {
        if !NOT_REPLAYED.contains(&name.as_str()) {
            response::write_header(&mut block, name.as_str(), value.as_bytes());
        }
    }
    if let Some(len) = len {
        response::write_header(&mut block, "Content-Length", len.to_string().as_bytes());
    }
    Bytes::from(block)
}

/// Whether responses with `status` carry a body (RFC 9110 §6.4.1).
pub fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Where a stored body lives.
#[derive(Debug)]
pub enum Body {
    /// In memory, as the chunks it was received in (usually one).
    Memory(Box<[Bytes]>),
    /// In memory, in a sealed memory file that hits send from
    /// (`cache::pages`).
    Pages(Arc<Pages>),
    /// In a file of the disk tier.
    Disk(DiskBody),
}

impl Body {
    /// A body the memory tier keeps: in a memory file when it is large
    /// enough and `places` has room, else as its `chunks`.
    pub fn in_memory(chunks: Vec<Bytes>, len: u64, places: &Arc<PageFiles>) -> Body {
        match Pages::store(&chunks, len, places) {
            Some(pages) => Body::Pages(Arc::new(pages)),
            None => Body::Memory(chunks.into_boxed_slice()),
        }
    }

    /// The same body for another object (a refreshed head): the memory's
    /// pieces or file, or the disk's file, shared, not copied.
    pub fn share(&self) -> Body {
        match self {
            Body::Memory(chunks) => Body::Memory(chunks.clone()),
            Body::Pages(pages) => Body::Pages(Arc::clone(pages)),
            Body::Disk(disk) => Body::Disk(DiskBody {
                file: Arc::clone(&disk.file),
                offset: disk.offset,
                hash: disk.hash,
            }),
        }
    }
}

/// A body in a disk-tier file.
#[derive(Debug)]
pub struct DiskBody {
    /// The file, shared by every object that uses it (a 304 refresh makes
    /// a new object on the same file).
    pub file: Arc<DiskFile>,
    /// Where the body starts in the file.
    pub offset: u64,
    /// The xxh3-64 of the body.
    pub hash: u64,
}

/// One object file of the disk tier. Its name is unique per write, and it
/// is deleted when the last object using it is dropped: once evicted,
/// replaced or purged from the index, and no reader holds it any more.
/// A cache that closes keeps its files (that is what a restart finds).
#[derive(Debug)]
pub struct DiskFile {
    /// Where it is.
    pub path: PathBuf,
    /// The whole body was read back and its checksum held, since the file
    /// was written or since this process found it, and the file has not
    /// changed since (`unchanged`).
    pub verified: AtomicBool,
    /// The file as it was when it was written or checked.
    stamp: Mutex<Option<FileStamp>>,
    /// Held by the one request reading the body back: concurrent first
    /// hits wait for its verdict instead of each reading the whole file.
    pub checking: Mutex<()>,
    /// The file was found broken and dropped: it is not checked again.
    pub broken: AtomicBool,
    /// The memory tier would not keep a copy of the body (too heavy for
    /// it): hits send the file rather than read it back every time.
    pub memory_refused: AtomicBool,
    /// Set when the disk store closes: files outlive the process then.
    closing: Arc<AtomicBool>,
    /// Set when another `DiskFile` stands for the same path (the loader
    /// met a file a fill had just indexed): that one deletes it.
    disowned: AtomicBool,
}

impl DiskFile {
    /// A file of a store whose `closing` flag is given; `checked`: as it
    /// was when this process wrote it or read it back, or `None` when it
    /// must be read back before its first use.
    pub fn new(path: PathBuf, checked: Option<FileStamp>, closing: Arc<AtomicBool>) -> DiskFile {
        DiskFile {
            path,
            verified: AtomicBool::new(checked.is_some()),
            stamp: Mutex::new(checked),
            checking: Mutex::new(()),
            broken: AtomicBool::new(false),
            memory_refused: AtomicBool::new(false),
            closing,
            disowned: AtomicBool::new(false),
        }
    }

    /// Marks the file checked, as it was when `stamp` was taken.
    pub fn checked(&self, stamp: FileStamp) {
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = Some(stamp);
        self.verified.store(true, Ordering::Release);
    }

    /// Whether the file at `path` is still the one written or checked: not
    /// written to, cut, replaced or deleted since, by another program. One
    /// `stat`, on hits sent from the file. (A disk that flips a bit under
    /// the file system changes none of what `stat` shows.)
    pub fn unchanged(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|meta| self.is_as_checked(&meta))
    }

    /// Whether `meta` (of the file at `path`, or of a handle opened on it)
    /// is the file as it was written or checked.
    pub fn is_as_checked(&self, meta: &std::fs::Metadata) -> bool {
        let then = *self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        then == Some(FileStamp::of(meta))
    }

    /// Leaves the file to the other `DiskFile` of the same path: dropping
    /// this one no longer deletes it.
    pub fn disown(&self) {
        self.disowned.store(true, Ordering::Release);
    }
}

/// What tells one state of a file from another without reading it: the
/// inode, the length, and the times of the last write and change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    /// The stamp of `meta` (from `stat`, or `fstat` on an open file).
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        if !self.closing.load(Ordering::Acquire) && !self.disowned.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One stored response: shared by every reader through an `Arc`.
#[derive(Debug)]
pub struct StoredObject {
    /// Everything but the body.
    pub head: Arc<ObjectHead>,
    /// The body.
    pub body: Body,
    /// When a `stale-while-revalidate` revalidation was last claimed
    /// (seconds since the epoch, 0 for never).
    revalidating: AtomicU64,
    /// Bytes counted against the tier's budget, worked out once: the
    /// index weighs an entry again whenever it moves or evicts it, and
    /// must get the same answer, without walking the headers again.
    weight: u64,
    /// For an object on disk, the memory its entry in the index takes (its
    /// head); 0 for one in memory, whose `weight` counts it already.
    index_weight: u64,
}

impl StoredObject {
    /// Wraps a head and a body.
    pub fn new(head: Arc<ObjectHead>, body: Body) -> StoredObject {
        let (weight, index_weight) = match &body {
            Body::Memory(_) | Body::Pages(_) => (head.memory_weight() + head.body_len, 0),
            Body::Disk(disk) => (
                disk.offset + head.body_len + crate::cache::disk::TRAILER_LEN,
                head.memory_weight(),
            ),
        };
        StoredObject {
            head,
            body,
            revalidating: AtomicU64::new(0),
            weight,
            index_weight,
        }
    }

    /// Whether this object's disk file is a second `DiskFile` for the
    /// path of `other`'s (the loader's view of a file a fill stored, or
    /// the reverse); one shared `DiskFile` (a 304 refresh) is not.
    pub fn duplicates_file(&self, other: &StoredObject) -> bool {
        match (&self.body, &other.body) {
            (Body::Disk(a), Body::Disk(b)) => {
                !Arc::ptr_eq(&a.file, &b.file) && a.file.path == b.file.path
            }
            _ => false,
        }
    }

    /// Leaves this object's disk file to another object that stands for
    /// the same path (see `DiskFile::disown`).
    pub fn disown_file(&self) {
        if let Body::Disk(disk) = &self.body {
            disk.file.disown();
        }
    }

    /// The body chunks when the body is in memory as chunks: the
    /// vectored-write path.
    pub fn memory_chunks(&self) -> Option<&[Bytes]> {
        match &self.body {
            Body::Memory(chunks) => Some(chunks),
            Body::Pages(_) | Body::Disk(_) => None,
        }
    }

    /// Bytes this object counts against its tier's budget.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Memory its index entry takes, for an object on disk (else 0).
    pub fn index_weight(&self) -> u64 {
        self.index_weight
    }

    /// Claims the background revalidation of a stale entry: true for one
    /// caller, and again only once `retry_after` has passed since (the
    /// claimant may have failed).
    pub fn claim_revalidation(&self, now: SystemTime, retry_after: Duration) -> bool {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let now = secs(now).max(1);
        let claimed = self.revalidating.load(Ordering::Acquire);
        if claimed != 0 && now < claimed.saturating_add(retry_after.as_secs().max(1)) {
            return false;
        }
        self.revalidating
            .compare_exchange(claimed, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A reader of bytes `start..end` of the body (`end` exclusive).
    ///
    /// # Errors
    /// `CacheError::Io` when a disk body cannot be opened (deleted since).
    pub fn reader(self: &Arc<Self>, start: u64, end: u64) -> Result<BodyReader, CacheError> {
        BodyReader::of_object(Arc::clone(self), start, end)
    }
}
