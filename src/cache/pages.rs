//! Stored bodies in sealed memory files, for hits sent with `sendfile(2)`.
//!
//! A body of [`MIN_BYTES`] to [`MAX_BYTES`] that the memory tier keeps
//! goes into a memory file of its own (`memfd_create`), sealed against any
//! change once written. A hit then hands the file's pages to the client's
//! socket with `sendfile`: the kernel references them instead of copying
//! the body out of the process (nginx's `sendfile` on its cache files).
//! Over loopback, 64 clients, that served 10% more 32 KiB hits, 11-17% more
//! 64 KiB ones and 13% more 128 KiB ones than a copying `writev`. Below
//! that size the copy is cheaper than the extra system call; above it,
//! `sendfile` did worse, by 20% at 256 KiB and 8% at 1 MiB, as did the
//! disk tier's `sendfile` and nginx's: at 1 MiB the proxy's CPU per hit
//! went up, not down (243-255 µs against 189-231), the copy it saves
//! outweighed by sending the body 64 KiB at a time (docs/cache.md). The
//! seals make the pages safe to hand out: nothing can change them while a
//! socket still holds them, and they live on after the file is closed for
//! as long as it does.
//!
//! The pages are the cache's memory as before (same weight against
//! `cache_mem`), but they show as shared memory (`Shmem` in
//! `/proc/meminfo`, in the process's cgroup) rather than in its RSS.
//! Each such body holds a file descriptor, so their number is bounded
//! ([`PageFiles`]): past it, or on any failure, a body stays in the
//! process's heap as before.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// Smallest body kept in a memory file.
pub const MIN_BYTES: u64 = 32 * 1024;
/// Largest body kept in a memory file.
pub const MAX_BYTES: u64 = 128 * 1024;

/// How many bodies may be in memory files at once, and how many are.
#[derive(Debug)]
pub struct PageFiles {
    limit: usize,
    live: AtomicUsize,
}

impl PageFiles {
    /// A bound of `limit` files (0: none).
    pub fn new(limit: usize) -> Arc<PageFiles> {
        Arc::new(PageFiles {
            limit,
            live: AtomicUsize::new(0),
        })
    }

    /// Bodies held in memory files now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Takes a place, if one is free.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body in a sealed memory file.
#[derive(Debug)]
pub struct Pages {
    file: File,
    places: Arc<PageFiles>,
}

impl Pages {
    /// Copies `chunks` (`len` bytes in all) into a new sealed memory file,
    /// when the body's size is in the range, a place is free and the
    /// system gives one; else `None`, and the body stays where it is.
    pub fn store(chunks: &[Bytes], len: u64, places: &Arc<PageFiles>) -> Option<Pages> {
        if !(MIN_BYTES..=MAX_BYTES).contains(&len) || !places.reserve() {
            return None;
        }
        match sealed_file(chunks) {
            Ok(file) => Some(Pages {
                file,
                places: Arc::clone(places),
            }),
            Err(err) => {
                places.release();
                log::debug!("cache: a body stays in the heap: no memory file ({err})");
                None
            }
        }
    }

    /// The file, to send from or read at an offset.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.places.release();
    }
}

#[cfg(target_os = "linux")]
fn sealed_file(chunks: &[Bytes]) -> std::io::Result<File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "fetchproxy-object",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    for chunk in chunks {
        file.write_all(chunk)?;
    }
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
fn sealed_file(_chunks: &[Bytes]) -> std::io::Result<File> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "memory files are Linux's",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn body(len: usize) -> Vec<Bytes> {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let half = len / 2;
        vec![
            Bytes::copy_from_slice(&bytes[..half]),
            Bytes::copy_from_slice(&bytes[half..]),
        ]
    }

    #[test]
    fn a_large_body_is_copied_whole_and_sealed() {
        let places = PageFiles::new(4);
        let chunks = body(100_000);
        let pages = Pages::store(&chunks, 100_000, &places).expect("stored");
        assert_eq!(pages.file().metadata().expect("stat").len(), 100_000);
        let mut back = vec![0u8; 100_000];
        pages.file().read_exact_at(&mut back, 0).expect("read");
        assert_eq!(back, [&chunks[0][..], &chunks[1][..]].concat());
        // Sealed: no write, no growth, no truncation.
        assert!(pages.file().write_at(b"x", 0).is_err());
        assert!(pages.file().set_len(10).is_err());
        assert!(pages.file().set_len(200_000).is_err());
    }

    #[test]
    fn a_body_out_of_the_range_stays_in_the_heap() {
        let places = PageFiles::new(4);
        for len in [MIN_BYTES - 1, MAX_BYTES + 1] {
            assert!(Pages::store(&body(len as usize), len, &places).is_none());
        }
        assert_eq!(places.live(), 0);
        assert!(Pages::store(&body(MAX_BYTES as usize), MAX_BYTES, &places).is_some());
    }

    #[test]
    fn the_number_of_files_is_bounded_and_freed_with_the_bodies() {
        let places = PageFiles::new(2);
        let chunks = body(MIN_BYTES as usize);
        let first = Pages::store(&chunks, MIN_BYTES, &places).expect("first");
        let second = Pages::store(&chunks, MIN_BYTES, &places).expect("second");
        assert!(
            Pages::store(&chunks, MIN_BYTES, &places).is_none(),
            "past the bound"
        );
        assert_eq!(places.live(), 2);
        drop(first);
        assert_eq!(places.live(), 1);
        assert!(Pages::store(&chunks, MIN_BYTES, &places).is_some());
        drop(second);
    }

    #[test]
    fn none_when_the_bound_is_zero() {
        let places = PageFiles::new(0);
        let chunks = body(100_000);
        assert!(Pages::store(&chunks, 100_000, &places).is_none());
    }
}
