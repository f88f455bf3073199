//! The disk tier: one file per stored variant under `DIR/objects/xx/`,
//! written as the body streams (never held whole in memory) into
//! `DIR/tmp/` and renamed into place once complete, with its length and an
//! xxh3 checksum (see `format`). Its index is a `Tier` rebuilt at start by
//! a background loader (`loader`) while the cache already serves, as
//! nginx's cache loader does. A file that fails any check is deleted and
//! reported as a miss: a broken object is never served.
//!
//! No fsync: a killed process loses nothing the kernel already has, and a
//! power cut leaves files that fail their checksum and are dropped.
//!
//! The budget is `cache_dir_size`, or less when the file system has not
//! that much room: the tier keeps what it holds plus the free space, less
//! a reserve left to everything else on the disk (`fitted_budget`). A disk
//! that fills (the cache sized larger than it, other files growing) makes
//! the tier evict instead of failing every write; room freed is taken
//! back. nginx's `min_free` does the like.

mod format;
mod loader;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use indicatif::HumanBytes;
use xxhash_rust::xxh3::Xxh3;

pub use format::{Header, TRAILER_LEN};

use crate::cache::CacheError;
use crate::cache::object::{Body, DiskBody, DiskFile, FileStamp, StoredObject};
use crate::cache::stats::{Stats, bump};
use crate::cache::tier::{Tier, TierKind};

/// How often, at most, the budget is checked against the file system's
/// free space as fills start their files.
const FIT_EVERY: Duration = Duration::from_secs(10);

/// Space the tier leaves free on its file system, of `fs_size` bytes: a
/// twentieth of it, from 16 MiB to 1 GiB.
fn reserve(fs_size: u64) -> u64 {
    (fs_size / 20).clamp(16 << 20, 1 << 30)
}

/// The budget the tier can keep: `configured`, or less when the file
/// system cannot hold it, that is what the tier `held` plus the `free`
/// space, less the reserve.
fn fitted_budget(configured: u64, held: u64, free: u64, fs_size: u64) -> u64 {
    configured.min(held.saturating_add(free).saturating_sub(reserve(fs_size)))
}

/// The disk tier.
pub struct DiskStore {
    /// The directory's lock, held while the store is open.
    _lock: File,
    root: PathBuf,
    /// The index of stored files.
    pub tier: Tier,
    /// Largest body stored, as configured (see `max_object`).
    max_object: u64,
    stats: Arc<Stats>,
    /// Numbers object files (with the process id and the time, unique).
    seq: AtomicU64,
    /// Set on close, so that files outlive the process (see `DiskFile`).
    closing: Arc<AtomicBool>,
    /// Bytes promised to fills received apart on the strength of their
    /// file and not yet given back (`promise_room`).
    promised: Arc<AtomicU64>,
    /// Bytes the files of fills in progress hold or were promised
    /// (`writing_room`), outside the index's budget.
    writing: Arc<AtomicU64>,
    /// Set once the loader has indexed every file.
    loaded: Mutex<bool>,
    loaded_cond: Condvar,
    /// `cache_dir_size`.
    budget: u64,
    /// When the budget was last fitted to the file system.
    fit: Mutex<Fit>,
    /// Tests set this to fail writes past a byte count, as a full disk does.
    #[cfg(test)]
    pub fail_writes_after: AtomicU64,
    /// Tests set this to the free space and size the file system reports.
    #[cfg(test)]
    pub space: Mutex<Option<(u64, u64)>>,
}

/// The last fitting of the budget to the file system.
#[derive(Debug, Default)]
struct Fit {
    checked: Option<Instant>,
    /// The budget last warned about, while below `cache_dir_size`.
    warned: Option<u64>,
    /// A write found the file system full: the next fill fits the budget
    /// first, once the failed fill's file is gone.
    full: bool,
}

/// Whether files can be made in `dir`: one is made and removed. (One left
/// by a crash is skipped by the index loader, as any stray file is, and
/// taken over by the next probe.)
fn writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(".write-probe");
    File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// Takes the lock of a cache directory (`DIR/lock`, holding the owner's
/// process id): one process a directory, since each indexes, evicts and
/// clears `tmp/` as if it were alone. A POSIX record lock: the kernel lets
/// go of it when the process ends, however it ends, and it is the
/// process's, so a store opened again within one process (the tests) takes
/// it again.
fn lock_dir(dir: &Path) -> Result<File, CacheError> {
    use rustix::fs::{FlockOperation, fcntl_lock};
    let path = dir.join("lock");
    let dir_error = |source| CacheError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(dir_error)?;
    match fcntl_lock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {
            let mut owner = String::new();
            let _ = lock.read_to_string(&mut owner);
            return Err(CacheError::InUse {
                dir: dir.to_path_buf(),
                owner: owner.trim().parse().ok(),
            });
        }
        Err(err) => return Err(dir_error(err.into())),
    }
    lock.set_len(0).map_err(dir_error)?;
    lock.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(dir_error)?;
    Ok(lock)
}

impl DiskStore {
    /// Opens (creating) `dir`, removes temporary files an earlier process
    /// left behind, and returns the store with an empty index: call
    /// `start_loader` to fill it.
    ///
    /// # Errors
    /// `CacheError::Dir` when the directories cannot be created or read,
    /// `CacheError::InUse` when another process has the directory.
    pub fn open(
        dir: &Path,
        budget: u64,
        max_object: u64,
        index_budget: u64,
        stats: Arc<Stats>,
    ) -> Result<DiskStore, CacheError> {
        let dir_error = |source| CacheError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        for sub in ["objects", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(dir_error)?;
        }
        let lock = lock_dir(dir)?;
        // Once the directory is this process's: a directory the proxy can
        // read but not write (made by another user, say) would store
        // nothing, each fill failing on its own.
        for sub in ["objects", "tmp"] {
            let path = dir.join(sub);
            writable(&path).map_err(|source| CacheError::Dir { dir: path, source })?;
        }
        // Whatever is in tmp/ was being written when a process died.
        for entry in fs::read_dir(dir.join("tmp")).map_err(dir_error)? {
            let _ = fs::remove_file(entry.map_err(dir_error)?.path());
        }
        Ok(DiskStore {
            _lock: lock,
            root: dir.to_path_buf(),
            // The index is in memory: its entries stay within
            // `index_budget` as the files within `budget`.
            tier: Tier::with_index(
                budget,
                max_object,
                Arc::clone(&stats),
                TierKind::Disk,
                budget.div_ceil(index_budget.max(1)).max(1),
            ),
            max_object,
            seq: AtomicU64::new(0),
            closing: Arc::new(AtomicBool::new(false)),
            promised: Arc::new(AtomicU64::new(0)),
            writing: Arc::new(AtomicU64::new(0)),
            loaded: Mutex::new(false),
            loaded_cond: Condvar::new(),
            budget,
            fit: Mutex::new(Fit::default()),
            #[cfg(test)]
            fail_writes_after: AtomicU64::new(u64::MAX),
            #[cfg(test)]
            space: Mutex::new(None),
            stats,
        })
    }

    /// Whether the loader has finished indexing the directory.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for the loader; returns whether it finished.
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        let guard = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .loaded_cond
            .wait_timeout_while(guard, timeout, |loaded| !*loaded)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn set_loaded(&self) {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.loaded_cond.notify_all();
        self.fit_to_file_system(true);
    }

    /// The largest body stored: the configured limit, or less while the
    /// budget is kept lower than `cache_dir_size` (see `Tier::largest`).
    /// A fill over it is not written to disk at all.
    pub fn max_object(&self) -> u64 {
        self.max_object.min(self.tier.largest())
    }

    /// The file system's free space (for this process) and size; `None`
    /// when it does not say (a size of 0, as some FUSE file systems report).
    fn file_system_space(&self) -> Option<(u64, u64)> {
        #[cfg(test)]
        if let Some(space) = *self.space.lock().unwrap_or_else(PoisonError::into_inner) {
            return Some(space);
        }
        let fs = rustix::fs::statvfs(&self.root).ok()?;
        let size = fs.f_blocks.saturating_mul(fs.f_frsize);
        (size > 0).then(|| (fs.f_bavail.saturating_mul(fs.f_frsize), size))
    }

    /// Sets the budget to what the file system can hold (`fitted_budget`):
    /// at once when `now` or after a write found the disk full, else at
    /// most every `FIT_EVERY`. Not before the loader is done: until then
    /// the files it has not indexed hold room that the tier does not count.
    /// The files of fills in progress count as held: they are on their way
    /// into the tier. Going down evicts.
    fn fit_to_file_system(&self, now: bool) {
        let mut fit = if now {
            self.fit.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            // Another fill is at it.
            let Ok(fit) = self.fit.try_lock() else {
                return;
            };
            if !fit.full && fit.checked.is_some_and(|at| at.elapsed() < FIT_EVERY) {
                return;
            }
            fit
        };
        if !self.is_loaded() {
            return;
        }
        fit.checked = Some(Instant::now());
        fit.full = false;
        let Some((free, fs_size)) = self.file_system_space() else {
            return;
        };
        let held = self.tier.usage().bytes + self.writing.load(Ordering::Acquire);
        let budget = fitted_budget(self.budget, held, free, fs_size);
        self.tier.set_capacity(budget);
        if budget >= self.budget {
            if fit.warned.take().is_some() {
                log::info!(
                    "cache: {} has room again: the disk cache keeps up to cache_dir_size ({})",
                    self.root.display(),
                    HumanBytes(self.budget),
                );
            }
        } else if fit.warned.is_none_or(|warned| budget < warned / 10 * 9) {
            // Said when the budget first goes down, and again when it goes
            // a tenth further, not at every check.
            fit.warned = Some(budget);
            log::warn!(
                "cache: {} has {} free: the disk cache keeps at most {} (cache_dir_size is {}), \
                 leaving {} to the rest of the disk",
                self.root.display(),
                HumanBytes(free),
                HumanBytes(budget),
                HumanBytes(self.budget),
                HumanBytes(reserve(fs_size)),
            );
        }
    }

    /// Told of a write that failed: after a full file system, the next fill
    /// to start fits the budget first (by then the failed fill's own file
    /// is deleted, which the free space would otherwise leave out), so
    /// that eviction makes room for it.
    pub fn write_failed(&self, err: &io::Error) {
        if err.kind() == io::ErrorKind::StorageFull {
            self.fit.lock().unwrap_or_else(PoisonError::into_inner).full = true;
        }
    }

    /// Room for one more object of `len` bytes, promised until the promise
    /// is dropped: the file system must have `len` free beyond what earlier
    /// promises hold, with room to spare (a quarter more, and 64 MiB). A
    /// fill whose memory is not reserved is received apart, on the strength
    /// of its file, only with such a promise, as a disk that fills halfway
    /// would cut its first client short. A promise counts its whole length
    /// until the fill ends, though the file takes some of the free space
    /// meanwhile: the check errs on the side of room. `None` without room.
    pub fn promise_room(&self, len: u64) -> Option<RoomPromise> {
        let fs = rustix::fs::statvfs(&self.root).ok()?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let wanted = len.saturating_add(len / 4).saturating_add(64 << 20);
        self.promised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |promised| {
                (free.saturating_sub(promised) >= wanted).then(|| promised.saturating_add(len))
            })
            .ok()?;
        Some(RoomPromise {
            promised: Arc::clone(&self.promised),
            len,
        })
    }

    /// Room for one more fill's file, of `declared` bytes when the length
    /// is known, among the files of fills in progress: the stored objects
    /// keep to the budget by eviction, and these to a quarter of it more,
    /// or to one fill at a time. A fill of unknown length is let in and
    /// counted as it grows. `None` without room.
    pub fn writing_room(&self, declared: Option<u64>) -> Option<WritingRoom> {
        if let Some(len) = declared {
            let limit = self.tier.capacity() / 4;
            self.writing
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |writing| {
                    let fits = writing == 0 || writing.saturating_add(len) <= limit;
                    fits.then(|| writing.saturating_add(len))
                })
                .ok()?;
        }
        Some(WritingRoom {
            held: RoomPromise {
                promised: Arc::clone(&self.writing),
                len: declared.unwrap_or(0),
            },
            growing: declared.is_none(),
        })
    }

    /// A new file name for an object with variant id `id`: the id first
    /// (the loader checks it), then what makes each write unique, so a
    /// newer copy never takes an older one's name.
    fn file_name(&self, id: u128) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{id:032x}-{nanos:x}-{:x}-{seq:x}", std::process::id())
    }

    /// Starts writing an object in `room`: its header goes out now, the
    /// body as it arrives.
    ///
    /// # Errors
    /// The I/O error creating or writing the temporary file.
    pub fn writer(&self, header: &Header, room: WritingRoom) -> io::Result<DiskWriter> {
        self.fit_to_file_system(false);
        let name = self.file_name(header.variant.id(&header.key));
        let tmp = self.root.join("tmp").join(&name);
        let dest = self.root.join("objects").join(&name[..2]).join(&name);
        // Readable too: followers of the fill read through a clone of it.
        let create = || {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
        };
        let file = match create() {
            // The directory was removed under the running store (a cache
            // cleared by hand): made again, rather than storing nothing
            // until a restart.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(self.root.join("tmp"))?;
                create()?
            }
            file => file?,
        };
        let read = Arc::new(file.try_clone()?);
        let mut writer = DiskWriter {
            file,
            room,
            read,
            tmp,
            dest,
            closing: Arc::clone(&self.closing),
            offset: 0,
            written: 0,
            hasher: Xxh3::new(),
            finished: false,
            #[cfg(test)]
            fail_after: self.fail_writes_after.load(Ordering::Relaxed),
        };
        let header = format::encode(header);
        let mut preamble = Vec::with_capacity(header.len() + 20);
        preamble.extend_from_slice(format::MAGIC);
        preamble.extend_from_slice(&(header.len() as u32).to_le_bytes());
        preamble.extend_from_slice(&header);
        preamble.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&header).to_le_bytes());
        writer.write_raw(&preamble)?;
        writer.offset = preamble.len() as u64;
        Ok(writer)
    }

    /// Checks a disk object before its first use in this process: reads
    /// the body back against its checksum. A broken file is deleted and
    /// dropped from the index.
    pub fn verify(&self, object: &StoredObject) -> bool {
        let Body::Disk(disk) = &object.body else {
            return true;
        };
        let file = &disk.file;
        if file.verified.load(Ordering::Acquire) {
            if file.unchanged() {
                return true;
            }
            // Written to, cut, replaced or gone since it was checked: read
            // back again before it answers.
            file.verified.store(false, Ordering::Release);
        }
        // After a restart, a CI farm's runners ask for the same toolchain at
        // once: one request reads it back, the others wait for its verdict.
        let _checking = file.checking.lock().unwrap_or_else(PoisonError::into_inner);
        if file.verified.load(Ordering::Acquire) {
            return true;
        }
        if file.broken.load(Ordering::Acquire) {
            return false;
        }
        bump(&self.stats.disk_verified);
        match read_checked(disk, object.head.body_len, None) {
            Ok(stamp) => {
                disk.file.checked(stamp);
                true
            }
            Err(_) => {
                self.drop_broken(object);
                false
            }
        }
    }

    /// Reads a disk object's whole body into memory, checked (promotion of
    /// a small object to the memory tier). A broken file is dropped.
    pub fn read_whole(&self, object: &StoredObject) -> Option<Bytes> {
        let Body::Disk(disk) = &object.body else {
            return None;
        };
        if disk.file.broken.load(Ordering::Acquire) {
            return None;
        }
        let len = usize::try_from(object.head.body_len).ok()?;
        let mut body = BytesMut::with_capacity(len);
        bump(&self.stats.disk_verified);
        match read_checked(disk, object.head.body_len, Some(&mut body)) {
            Ok(stamp) => {
                disk.file.checked(stamp);
                Some(body.freeze())
            }
            Err(_) => {
                self.drop_broken(object);
                None
            }
        }
    }

    /// Deletes a broken object's file and index entry, and counts it.
    /// If a newer object of the same variant has replaced it meanwhile
    /// (its file renamed over the same path), that one is left alone.
    pub fn drop_broken(&self, object: &StoredObject) {
        if let Body::Disk(disk) = &object.body {
            disk.file.broken.store(true, Ordering::Release);
        }
        bump(&self.stats.disk_corrupt);
        if !self.tier.remove_exact(object) {
            return;
        }
        if let Body::Disk(disk) = &object.body {
            // Deleted now, not when the last reader lets go: it is broken.
            log::warn!("cache: dropped broken object {}", disk.file.path.display());
            let _ = fs::remove_file(&disk.file.path);
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // The index is dropped next: its files stay for the next start.
        self.closing.store(true, Ordering::Release);
    }
}

/// Reads a body back and checks its length and checksum, copying it into
/// `into` when given. Returns the file's stamp from before the read: a
/// change during it shows at the next look.
fn read_checked(
    disk: &DiskBody,
    body_len: u64,
    mut into: Option<&mut BytesMut>,
) -> io::Result<FileStamp> {
    let broken = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let file = File::open(&disk.file.path)?;
    let meta = file.metadata()?;
    if meta.len() != disk.offset + body_len + TRAILER_LEN {
        return Err(broken("file length"));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, disk.offset + body_len)?;
    if trailer[..8] != body_len.to_le_bytes()
        || trailer[8..16] != disk.hash.to_le_bytes()
        || &trailer[16..] != format::END_MAGIC
    {
        return Err(broken("trailer"));
    }
    let mut hasher = Xxh3::new();
    let mut reader = io::BufReader::with_capacity(64 * 1024, &file);
    io::Seek::seek(&mut reader, io::SeekFrom::Start(disk.offset))?;
    let mut left = body_len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        if let Some(into) = into.as_deref_mut() {
            into.extend_from_slice(&buf[..want]);
        }
        left -= want as u64;
    }
    if hasher.digest() != disk.hash {
        return Err(broken("body checksum"));
    }
    Ok(FileStamp::of(&meta))
}

/// An object file being written. Dropped unfinished, it deletes its
/// temporary file: nothing half-written is ever renamed into place.
pub struct DiskWriter {
    file: File,
    /// Its share of the room of fills in progress, given back when done.
    room: WritingRoom,
    /// A second handle on the same file, for readers following the fill
    /// (positioned reads, so they never disturb the writer).
    read: Arc<File>,
    tmp: PathBuf,
    dest: PathBuf,
    /// Where the body starts.
    offset: u64,
    /// Body bytes written.
    written: u64,
    hasher: Xxh3,
    finished: bool,
    closing: Arc<AtomicBool>,
    #[cfg(test)]
    fail_after: u64,
}

impl DiskWriter {
    /// The handle readers of the fill read through.
    pub fn read_handle(&self) -> Arc<File> {
        Arc::clone(&self.read)
    }

    /// Where the body starts in the file.
    pub fn body_offset(&self) -> u64 {
        self.offset
    }

    /// Appends body bytes.
    ///
    /// # Errors
    /// The write error (a full disk is `StorageFull`).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_raw(bytes)?;
        self.room.grow(bytes.len() as u64);
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if self.written + bytes.len() as u64 > self.fail_after {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        self.file.write_all(bytes)
    }

    /// Writes the trailer and renames the file into place.
    ///
    /// # Errors
    /// The write or rename error; the temporary file is then deleted.
    pub fn finish(mut self) -> io::Result<DiskBody> {
        let hash = self.hasher.digest();
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&self.written.to_le_bytes());
        trailer.extend_from_slice(&hash.to_le_bytes());
        trailer.extend_from_slice(format::END_MAGIC);
        self.write_raw(&trailer)?;
        // Named in the error: a directory the proxy may not write says
        // which one.
        let named =
            |err: io::Error| io::Error::new(err.kind(), format!("{}: {err}", self.dest.display()));
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent).map_err(named)?;
        }
        fs::rename(&self.tmp, &self.dest).map_err(named)?;
        self.finished = true;
        // Taken after the rename, which changes the file's ctime; without
        // it, the first hit reads the file back.
        let stamp = self.file.metadata().ok().map(|meta| FileStamp::of(&meta));
        let file = DiskFile::new(self.dest.clone(), stamp, Arc::clone(&self.closing));
        Ok(DiskBody {
            file: Arc::new(file),
            offset: self.offset,
            hash,
        })
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// One fill's share of the room of fills in progress
/// (`DiskStore::writing_room`), given back when dropped.
#[derive(Debug)]
pub struct WritingRoom {
    held: RoomPromise,
    /// The length was not known: the file is counted as it grows.
    growing: bool,
}

impl WritingRoom {
    fn grow(&mut self, bytes: u64) {
        if self.growing {
            self.held.promised.fetch_add(bytes, Ordering::AcqRel);
            self.held.len += bytes;
        }
    }
}

/// Bytes promised to one fill out of a shared count, given back when
/// dropped: disk space (`DiskStore::promise_room`), or a share of the room
/// of fills in progress (`WritingRoom`).
#[derive(Debug)]
pub struct RoomPromise {
    promised: Arc<AtomicU64>,
    len: u64,
}

impl Drop for RoomPromise {
    fn drop(&mut self) {
        self.promised.fetch_sub(self.len, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
