//! The disk index rebuilt at start, in a background thread (nginx's cache
//! loader, Squid's rock rebuild): each object file's header and trailer
//! are read and checked, the object indexed; broken files are deleted.
//! Bodies are checked later, on first use (`DiskStore::verify`), so a
//! large directory is indexed at the speed of reading its headers.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Weak};

use super::DiskStore;
use super::format::{self, Broken, TRAILER_LEN};
use crate::cache::CacheError;
use crate::cache::admission::{remove_unshared, sets_cookie, sets_cookie_for_one};
use crate::cache::invalidations::{Invalidations, Since};
use crate::cache::object::{Body, DiskBody, DiskFile, ObjectHead, StoredObject};
use crate::cache::policy::Policy;
use crate::cache::stats::bump;

/// Why a sound file is not indexed: an older version kept a response that
/// sets a cookie without a lifetime of its own, which would now give one
/// client's cookie to every other.
const SETS_COOKIE: Broken = "sets a cookie without a lifetime of its own";

impl DiskStore {
    /// Starts the loader thread. It holds the store weakly: dropping the
    /// cache stops it at the next file.
    ///
    /// # Errors
    /// `CacheError::Loader` when the thread cannot be spawned.
    ///
    /// A PURGE or an unsafe method's success while it runs finds nothing
    /// yet indexed of a file not read yet: `invalidations` tells the loader
    /// which URLs were invalidated since it started, and their files are
    /// dropped as they are read, not indexed.
    pub fn start_loader(
        self: &Arc<Self>,
        invalidations: Arc<Invalidations>,
    ) -> Result<(), CacheError> {
        let store = Arc::downgrade(self);
        let objects = self.root.join("objects");
        let started = invalidations.now();
        std::thread::Builder::new()
            .name("cache-loader".to_string())
            .spawn(move || load_all(&store, &objects, &invalidations, started))
            .map(|_| ())
            .map_err(CacheError::Loader)
    }

    /// Reads one object file's header and trailer.
    fn load_file(&self, path: &Path) -> Result<StoredObject, Broken> {
        let mut file = File::open(path).map_err(|_| "cannot open")?;
        let file_len = file.metadata().map_err(|_| "cannot stat")?.len();
        let mut preamble = [0u8; 12];
        file.read_exact(&mut preamble).map_err(|_| "no preamble")?;
        if &preamble[..8] != format::MAGIC {
            return Err("bad magic");
        }
        let header_len = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
        if header_len > format::MAX_HEADER_BYTES {
            return Err("header too long");
        }
        let mut header = vec![0u8; header_len as usize + 8];
        file.read_exact(&mut header)
            .map_err(|_| "header cut short")?;
        let (header, hash) = header.split_at(header_len as usize);
        if xxhash_rust::xxh3::xxh3_64(header).to_le_bytes() != hash {
            return Err("header checksum");
        }
        let header = format::decode(header)?;
        let offset = 12 + u64::from(header_len) + 8;
        let body_len = file_len
            .checked_sub(offset + TRAILER_LEN)
            .ok_or("file cut short")?;
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, offset + body_len)
            .map_err(|_| "no trailer")?;
        let (len, rest) = trailer.split_at(8);
        let (body_hash, magic) = rest.split_at(8);
        if len != body_len.to_le_bytes() || magic != format::END_MAGIC {
            return Err("bad trailer");
        }
        // A file's name starts with its variant id: a file copied or
        // renamed under another object's name is not trusted.
        let id = format!("{:032x}-", header.variant.id(&header.key));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.starts_with(&id) {
            return Err("file name does not match its key");
        }
        let uri = header.key.uri().map_err(|_| "bad url")?;
        // Files written before fields named by `no-cache="..."` were kept
        // out of the store have them still.
        let mut response = header.response;
        remove_unshared(&mut response);
        // Nor was a response that sets a cookie kept to the lifetime its
        // origin gave it: such a file would hand one user's cookie to all.
        if sets_cookie_for_one(&response) {
            return Err(SETS_COOKIE);
        }
        let policy = Policy::from_parts(
            &uri,
            header.request,
            header.status,
            &response,
            header.response_time,
        );
        if sets_cookie(&response) && !policy.had_lifetime() {
            return Err(SETS_COOKIE);
        }
        let head = ObjectHead::new(
            header.key,
            header.variant,
            header.status,
            response,
            policy,
            body_len,
        );
        let file = DiskFile::new(path.to_path_buf(), None, Arc::clone(&self.closing));
        let body = DiskBody {
            file: Arc::new(file),
            offset,
            hash: u64::from_le_bytes(body_hash.try_into().map_err(|_| "bad trailer")?),
        };
        Ok(StoredObject::new(Arc::new(head), Body::Disk(body)))
    }
}

/// Indexes every file under `objects/`, then marks the store loaded.
fn load_all(
    store: &Weak<DiskStore>,
    objects: &Path,
    invalidations: &Invalidations,
    started: Since,
) {
    let Ok(dirs) = fs::read_dir(objects) else {
        if let Some(store) = store.upgrade() {
            store.set_loaded();
        }
        return;
    };
    let mut count = 0u64;
    let mut cookies = 0u64;
    for dir in dirs.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Some(store) = store.upgrade() else {
                return;
            };
            let path = file.path();
            match store.load_file(&path) {
                Ok(object) => {
                    // Two files of one variant (a crash between writing the
                    // new and dropping the old): the newer response wins,
                    // and dropping the other deletes its file.
                    let object = Arc::new(object);
                    if store.tier.put_if_newer(Arc::clone(&object)) {
                        count += 1;
                    }
                    // Checked after it is indexed: an invalidation either
                    // found it in the index, or is seen here.
                    if invalidations.since(object.head.key.fingerprint(), started) {
                        store.tier.remove_exact(&object);
                    }
                }
                Err(SETS_COOKIE) => {
                    // Sound, but kept by an older rule: no corruption.
                    log::debug!("cache: deleting {}: {SETS_COOKIE}", path.display());
                    cookies += 1;
                    let _ = fs::remove_file(&path);
                }
                Err(reason) => {
                    log::warn!("cache: deleting {}: {reason}", path.display());
                    bump(&store.stats.disk_corrupt);
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    if cookies > 0 {
        log::info!(
            "cache: deleted {cookies} objects that set a cookie without a lifetime of their own (kept by an older version)"
        );
    }
    if let Some(store) = store.upgrade() {
        log::info!("cache: indexed {count} objects in {}", objects.display());
        store.set_loaded();
    }
}
