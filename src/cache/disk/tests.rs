//! The disk tier through the cache: round trips, restarts, broken files,
//! a full disk, and followers reading the file being written.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};

use super::format;

use crate::cache::stats::read;
use crate::cache::testing::{
    expect_hit, follow, headers, lead, ok_head, read_body, request, small_cache, store,
};
use crate::cache::{Cache, CacheError, Following, Fwd, Lookup, Miss, NotStored};

const MAX_AGE: (&str, &str) = ("cache-control", "max-age=600");
/// Objects up to this size live in memory too; larger ones only on disk.
const MEM_MAX: u64 = 4096;
const LOAD_WAIT: Duration = Duration::from_secs(10);

fn open(dir: &Path) -> Cache {
    let cache = small_cache(1 << 20, MEM_MAX, Some(dir));
    assert!(cache.wait_loaded(LOAD_WAIT), "the loader finished");
    cache
}

/// A cache with a small memory tier and a disk tier of `dir_bytes`, objects
/// up to `dir_max_object` there, its index loaded.
fn open_sized(dir: &Path, dir_bytes: u64, dir_max_object: u64) -> Cache {
    let cache = Cache::open(crate::cache::CacheConfig {
        mem_bytes: 4 << 20,
        mem_max_object: 1024,
        dir: Some(dir.to_path_buf()),
        dir_bytes,
        dir_max_object,
        ..crate::cache::CacheConfig::default()
    })
    .expect("cache");
    assert!(cache.wait_loaded(LOAD_WAIT));
    cache
}

fn get(url: &str) -> crate::http::request::RequestHead {
    request("GET", url, &[])
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in fs::read_dir(dir.join("objects"))
        .expect("objects dir")
        .flatten()
    {
        files.extend(
            fs::read_dir(sub.path())
                .expect("subdir")
                .flatten()
                .map(|f| f.path()),
        );
    }
    files
}

fn tmp_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).expect("tmp dir").count()
}

fn hit_body(cache: &Cache, url: &str) -> Vec<u8> {
    let hit = expect_hit(cache, &get(url));
    let len = hit.object.head.body_len;
    read_body(&mut hit.object.reader(0, len).expect("reader")).expect("body")
}

fn is_miss(cache: &Cache, url: &str) -> bool {
    matches!(
        cache.lookup(&get(url), SystemTime::now()),
        Lookup::Miss(Miss {
            kind: Fwd::UriMiss,
            ..
        })
    )
}

#[test]
fn objects_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = body(1000);
    let large = body(50_000);
    {
        let cache = open(dir.path());
        store(&cache, &get("http://h/small"), &[MAX_AGE], &small, 3).expect("stored");
        store(&cache, &get("http://h/large"), &[MAX_AGE], &large, 5).expect("stored");
        let hit = expect_hit(&cache, &get("http://h/large"));
        assert!(
            hit.object.memory_chunks().is_none(),
            "over the memory limit: disk only"
        );
    }
    assert_eq!(object_files(dir.path()).len(), 2);
    assert_eq!(tmp_files(dir.path()), 0);
    let cache = open(dir.path());
    assert_eq!(cache.usage().1.map(|d| d.urls), Some(2));
    assert_eq!(hit_body(&cache, "http://h/small"), small);
    let promoted = expect_hit(&cache, &get("http://h/small"));
    assert!(
        promoted.object.memory_chunks().is_some(),
        "small objects are promoted to memory"
    );
    assert_eq!(hit_body(&cache, "http://h/large"), large);
    assert!(promoted.object.head.policy.is_fresh(SystemTime::now()));
}

/// Breaks the one object file in `dir` with `damage`, then reopens.
fn reopen_after(damage: impl FnOnce(&Path)) -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let cache = open(dir.path());
        store(&cache, &get("http://h/x"), &[MAX_AGE], &body(20_000), 4).expect("stored");
    }
    let files = object_files(dir.path());
    assert_eq!(files.len(), 1);
    damage(&files[0]);
    let cache = open(dir.path());
    (dir, cache)
}

#[test]
fn a_flipped_body_byte_is_never_served() {
    let (dir, cache) = reopen_after(|file| {
        let mut bytes = fs::read(file).expect("read");
        let at = bytes.len() - 5000;
        bytes[at] ^= 0x40;
        fs::write(file, bytes).expect("write");
    });
    // The header is sound, so it is indexed; its body fails on first use.
    assert!(is_miss(&cache, "http://h/x"), "a broken body is a miss");
    assert!(object_files(dir.path()).is_empty(), "and is deleted");
    assert_eq!(read(&cache.stats().disk_corrupt), 1);
}

/// Looks `url` up from `threads` threads at once; says how many hit.
fn concurrent_hits(cache: &Cache, url: &str, threads: usize) -> usize {
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let lookups: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    matches!(cache.lookup(&get(url), SystemTime::now()), Lookup::Hit(_))
                })
            })
            .collect();
        lookups
            .into_iter()
            .map(|lookup| lookup.join().expect("lookup thread"))
            .filter(|&hit| hit)
            .count()
    })
}

#[test]
fn concurrent_first_hits_read_a_disk_object_back_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let cache = open(dir.path());
        store(&cache, &get("http://h/big"), &[MAX_AGE], &body(4 << 20), 64).expect("stored");
    }
    let cache = open(dir.path());
    assert_eq!(concurrent_hits(&cache, "http://h/big", 8), 8);
    assert_eq!(read(&cache.stats().disk_verified), 1);
    assert_eq!(hit_body(&cache, "http://h/big"), body(4 << 20));
    assert_eq!(read(&cache.stats().disk_verified), 1, "verified once");
}

#[test]
fn concurrent_first_hits_promote_a_small_disk_object_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let cache = open(dir.path());
        store(&cache, &get("http://h/small"), &[MAX_AGE], &body(3000), 3).expect("stored");
    }
    let cache = open(dir.path());
    assert_eq!(concurrent_hits(&cache, "http://h/small", 8), 8);
    assert_eq!(read(&cache.stats().disk_verified), 1, "read back once");
    assert_eq!(hit_body(&cache, "http://h/small"), body(3000));
}

#[test]
fn concurrent_first_hits_on_a_broken_object_drop_it_once() {
    let (dir, cache) = reopen_after(|file| {
        let mut bytes = fs::read(file).expect("read");
        let at = bytes.len() - 5000;
        bytes[at] ^= 0x40;
        fs::write(file, bytes).expect("write");
    });
    assert_eq!(concurrent_hits(&cache, "http://h/x", 8), 0);
    assert!(object_files(dir.path()).is_empty(), "deleted");
    assert_eq!(read(&cache.stats().disk_corrupt), 1, "counted once");
}

#[test]
fn a_truncated_file_is_dropped_at_load() {
    for cut in [10, 5000, 19_000] {
        let (dir, cache) = reopen_after(|file| {
            let len = fs::metadata(file).expect("stat").len();
            OpenOptions::new()
                .write(true)
                .open(file)
                .expect("open")
                .set_len(len - cut)
                .expect("truncate");
        });
        assert!(is_miss(&cache, "http://h/x"), "cut by {cut}");
        assert!(object_files(dir.path()).is_empty(), "cut by {cut}: deleted");
    }
}

#[test]
fn a_damaged_header_is_dropped_at_load() {
    let (dir, cache) = reopen_after(|file| {
        let mut bytes = fs::read(file).expect("read");
        bytes[20] ^= 1;
        fs::write(file, bytes).expect("write");
    });
    assert!(is_miss(&cache, "http://h/x"));
    assert!(object_files(dir.path()).is_empty());
}

/// Rewrites the stored response in `file`'s header with `change`, as a
/// file an older version wrote would have it.
fn rewrite_response(file: &Path, change: impl FnOnce(&mut http::HeaderMap)) {
    let bytes = fs::read(file).expect("read");
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let mut header = format::decode(&bytes[12..12 + len]).expect("header");
    change(&mut header.response);
    let encoded = format::encode(&header);
    let mut out = format::MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(encoded.len()).expect("short").to_le_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&encoded).to_le_bytes());
    out.extend_from_slice(&bytes[12 + len + 8..]);
    fs::write(file, out).expect("write");
}

#[test]
fn fields_an_older_file_kept_against_no_cache_are_dropped_at_load() {
    // A file written before the fields that `no-cache="..."` names were
    // kept out of the store: its header is rewritten here to hold one.
    let (_dir, cache) = reopen_after(|file| {
        rewrite_response(file, |response| {
            response.insert(
                "cache-control",
                HeaderValue::from_static("max-age=600, no-cache=\"Set-Cookie\""),
            );
            response.insert("set-cookie", HeaderValue::from_static("session=alice"));
        });
    });
    let hit = expect_hit(&cache, &get("http://h/x"));
    assert!(hit.object.head.headers.contains_key("cache-control"));
    assert_eq!(hit.object.head.headers.get("set-cookie"), None);
    assert_eq!(hit_body(&cache, "http://h/x"), body(20_000));
}

#[test]
fn an_older_file_that_sets_a_cookie_without_a_lifetime_is_dropped_at_load() {
    // Written before a response that sets a cookie had to have a lifetime
    // of its own: fresh only by heuristic, it would give one user's cookie
    // to all.
    let (dir, cache) = reopen_after(|file| {
        rewrite_response(file, |response| {
            response.remove("cache-control");
            response.insert(
                "last-modified",
                HeaderValue::from_static("Wed, 01 Jan 2020 00:00:00 GMT"),
            );
            response.insert("set-cookie", HeaderValue::from_static("session=alice"));
        });
    });
    assert!(is_miss(&cache, "http://h/x"));
    assert!(object_files(dir.path()).is_empty(), "deleted");
    assert_eq!(read(&cache.stats().disk_corrupt), 0, "not corrupt");
    // Nor one stale from the start (revalidated on every use, each 304
    // would carry the cookie).
    let (dir, cache) = reopen_after(|file| {
        rewrite_response(file, |response| {
            response.insert("cache-control", HeaderValue::from_static("max-age=0"));
            response.insert("etag", HeaderValue::from_static("\"v1\""));
            response.insert("set-cookie", HeaderValue::from_static("session=alice"));
        });
    });
    assert!(is_miss(&cache, "http://h/x"));
    assert!(object_files(dir.path()).is_empty(), "deleted");
}

#[test]
fn leftovers_of_an_interrupted_write_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let cache = open(dir.path());
        let mut filler = lead(&cache, &get("http://h/cut"));
        ok_head(&mut filler, &get("http://h/cut"), &[MAX_AGE]).expect("storable");
        filler.body(&body(10_000));
        assert_eq!(tmp_files(dir.path()), 1, "written as it streams");
        drop(filler); // The upstream failed.
        assert_eq!(tmp_files(dir.path()), 0);
    }
    // A process killed mid-write leaves its temporary file behind.
    fs::write(
        dir.path().join("tmp").join("0123.99.0"),
        b"FPCACHE1 partial",
    )
    .expect("leftover");
    let cache = open(dir.path());
    assert_eq!(tmp_files(dir.path()), 0);
    assert!(object_files(dir.path()).is_empty());
    assert!(is_miss(&cache, "http://h/cut"));
}

#[test]
fn a_cache_dir_removed_while_open_is_made_again_by_the_next_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    store(
        &cache,
        &get("http://h/before"),
        &[MAX_AGE],
        &body(20_000),
        4,
    )
    .expect("stored");
    fs::remove_dir_all(dir.path()).expect("remove the cache dir");
    store(&cache, &get("http://h/after"), &[MAX_AGE], &body(20_000), 4).expect("stored");
    assert_eq!(object_files(dir.path()).len(), 1);
    assert_eq!(hit_body(&cache, "http://h/after"), body(20_000));
    // The object whose file went with the directory is a miss, not an error.
    assert!(is_miss(&cache, "http://h/before"));
}

#[test]
fn fills_in_progress_keep_their_files_to_a_quarter_of_the_budget() {
    // The test cache's disk budget is 64 MiB: fills of a known length may
    // start files while those in progress hold at most 16 MiB, or when
    // none does.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let ten_mib = (10u64 << 20).to_string();
    let sized = [MAX_AGE, ("content-length", ten_mib.as_str())];
    let mut first = lead(&cache, &get("http://h/first"));
    ok_head(&mut first, &get("http://h/first"), &sized).expect("one fill may always start");
    let mut second = lead(&cache, &get("http://h/second"));
    assert_eq!(
        ok_head(&mut second, &get("http://h/second"), &sized),
        Err(NotStored::Busy),
        "10 MiB more would pass a quarter of the budget"
    );
    // A lack of room says nothing about the URL: it is not marked, and
    // the next misses for it collapse as before.
    drop(second);
    let again = lead(&cache, &get("http://h/second"));
    let _follower = follow(&cache, &get("http://h/second"));
    drop(again);
    // Small enough for memory: kept there.
    let small = store(&cache, &get("http://h/small"), &[MAX_AGE], &body(1000), 1);
    assert!(small.is_ok(), "{small:?}");
    // The first fill given up, its room is back.
    drop(first);
    let mut third = lead(&cache, &get("http://h/third"));
    ok_head(&mut third, &get("http://h/third"), &sized).expect("room again");
    third.body(&body(10 << 20));
    third.finish().expect("stored");
    assert_eq!(object_files(dir.path()).len(), 2, "small and third");
    let mut fourth = lead(&cache, &get("http://h/fourth"));
    ok_head(&mut fourth, &get("http://h/fourth"), &sized).expect("a stored file is the budget's");
}

#[test]
fn a_fill_of_unknown_length_always_gets_its_file() {
    // Two fills of unknown length grow past the quarter of the budget that
    // fills in progress may hold; a third still starts its file (it cannot
    // be judged by a length it does not have) and is stored, though its
    // body is over the memory tier's limit.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let mut growing = Vec::new();
    for url in ["http://h/one", "http://h/two"] {
        let mut filler = lead(&cache, &get(url));
        ok_head(&mut filler, &get(url), &[MAX_AGE]).expect("admitted");
        filler.body(&body(15 << 20));
        growing.push(filler);
    }
    let stored = store(&cache, &get("http://h/three"), &[MAX_AGE], &body(50_000), 5);
    assert!(stored.is_ok(), "{stored:?}");
    assert_eq!(hit_body(&cache, "http://h/three"), body(50_000));
}

#[test]
fn a_body_corrupted_after_checking_is_cut_before_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    store(&cache, &get("http://h/rot"), &[MAX_AGE], &body(200_000), 8).expect("stored");
    let hit = expect_hit(&cache, &get("http://h/rot"));
    let file = &object_files(dir.path())[0];
    let mut bytes = fs::read(file).expect("read");
    bytes[1000] ^= 1;
    fs::write(file, bytes).expect("write");
    let mut reader = hit
        .object
        .reader(0, hit.object.head.body_len)
        .expect("reader");
    let mut sent = 0;
    let err = loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => sent += chunk.len() as u64,
            Ok(None) => panic!("a corrupt body was read to its end"),
            Err(err) => break err,
        }
    };
    assert!(
        sent < hit.object.head.body_len,
        "the last piece is withheld"
    );
    assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
}

#[test]
fn followers_of_a_large_fill_read_the_file_being_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let url = "http://h/stream";
    let data = body(100_000);
    let mut filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    let length = data.len().to_string();
    filler
        .response_head(
            &get(url),
            StatusCode::OK,
            &headers(&[MAX_AGE, ("content-length", &length)]),
            SystemTime::now(),
        )
        .expect("storable");
    let Following::Stream { head, mut reader } = follower.follow(&get(url)) else {
        panic!("stream expected");
    };
    assert_eq!(head.declared_len, Some(data.len() as u64));
    filler.body(&data[..30_000]);
    let first = reader.next_chunk().expect("chunk").expect("bytes");
    assert_eq!(
        &first[..],
        &data[..first.len()],
        "read from the file before the fill completes"
    );
    filler.body(&data[30_000..]);
    filler.finish().expect("stored");
    let mut all = first.to_vec();
    all.extend(read_body(&mut reader).expect("rest"));
    assert_eq!(all, data);
}

#[test]
fn a_fill_that_moves_to_its_file_gives_back_the_memory_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let url = "http://h/grows";
    let data = body(3 * MEM_MAX as usize);
    let mut filler = lead(&cache, &get(url));
    // No length declared: kept in memory until it outgrows the limit.
    ok_head(&mut filler, &get(url), &[MAX_AGE]).expect("storable");
    filler.body(&data[..3000]);
    assert_eq!(cache.inflight_bytes(), 3000, "held in memory so far");
    filler.body(&data[3000..]);
    assert_eq!(
        cache.inflight_bytes(),
        0,
        "in its file alone, it holds no memory of the fills in progress"
    );
    filler.finish().expect("stored on disk");
    assert_eq!(hit_body(&cache, url), data);
}

#[test]
fn a_full_disk_abandons_the_store_but_not_the_response() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let store_dir = cache.shared.disk.as_ref().expect("disk tier");
    store_dir.fail_writes_after.store(20_000, Ordering::Relaxed);
    // Disk only: the follower reads the file, then the rest is passed on.
    let url = "http://h/full";
    let mut filler = lead(&cache, &get(url));
    let follower = follow(&cache, &get(url));
    filler
        .response_head(
            &get(url),
            StatusCode::OK,
            &headers(&[MAX_AGE, ("content-length", "50000")]),
            SystemTime::now(),
        )
        .expect("storable");
    let Following::Stream { mut reader, .. } = follower.follow(&get(url)) else {
        panic!("stream expected");
    };
    let follower = std::thread::spawn(move || read_body(&mut reader));
    for piece in body(50_000).chunks(10_000) {
        filler.body(piece); // The filler's own client is relayed regardless.
    }
    assert_eq!(filler.finish().err(), Some(NotStored::DiskError));
    let got = follower.join().expect("follower").expect("the whole body");
    assert_eq!(got, body(50_000));
    assert!(is_miss(&cache, url));
    assert_eq!(tmp_files(dir.path()), 0);
    // Small enough for memory: followers read memory, and memory keeps it.
    store_dir.fail_writes_after.store(100, Ordering::Relaxed);
    store(&cache, &get("http://h/fits"), &[MAX_AGE], &body(3000), 3).expect("stored in memory");
    assert_eq!(hit_body(&cache, "http://h/fits"), body(3000));
    assert!(read(&cache.stats().disk_write_errors) >= 2);
}

#[test]
fn the_disk_budget_is_kept_by_eviction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open_sized(dir.path(), 200_000, 20_000);
    for i in 0..30 {
        store(
            &cache,
            &get(&format!("http://h/d{i}")),
            &[MAX_AGE],
            &body(15_000),
            2,
        )
        .expect("stored");
        let disk = cache.usage().1.expect("disk tier");
        assert!(disk.bytes <= 200_000, "over budget after {i}");
    }
    assert!(read(&cache.stats().evictions_disk) > 0);
    let on_disk: u64 = object_files(dir.path())
        .iter()
        .map(|f| fs::metadata(f).expect("stat").len())
        .sum();
    assert!(
        on_disk <= 200_000,
        "evicted files are deleted: {on_disk} bytes left"
    );
}

#[test]
fn the_disk_index_stays_within_its_share_of_memory() {
    // 4 MiB of memory: the index may take 1 MiB, however much room the
    // disk has for files.
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open_sized(dir.path(), 64 << 20, 1 << 20);
    for i in 0..1000 {
        store(
            &cache,
            &get(&format!("http://h/small{i}")),
            &[MAX_AGE],
            &body(100),
            1,
        )
        .expect("stored");
    }
    let disk = cache.usage().1.expect("disk tier");
    assert!(disk.bytes <= disk.capacity);
    // Each entry takes over 2 KiB of memory: far fewer than 1000 stay.
    assert!(
        disk.urls > 0 && disk.urls * 2048 <= 1 << 20,
        "{} objects indexed",
        disk.urls
    );
    assert!(read(&cache.stats().evictions_disk) > 0);
    let files = object_files(dir.path()).len() as u64;
    assert!(
        files <= disk.urls,
        "{files} files for {} objects",
        disk.urls
    );
}

#[test]
fn purge_deletes_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    store(&cache, &get("http://h/gone"), &[MAX_AGE], &body(100), 1).expect("stored");
    assert_eq!(object_files(dir.path()).len(), 1);
    assert_eq!(cache.purge("http://h/gone"), Ok(true));
    assert!(object_files(dir.path()).is_empty());
    drop(cache);
    let cache = open(dir.path());
    assert!(is_miss(&cache, "http://h/gone"));
}

#[test]
fn a_refreshed_disk_object_keeps_its_body_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open(dir.path());
    let url = "http://h/revalidate";
    let data = body(30_000);
    let stale_headers = [("cache-control", "max-age=0"), ("etag", "\"v1\"")];
    store(&cache, &get(url), &stale_headers, &data, 3).expect("stored");
    let Lookup::Stale(stale) = cache.lookup(&get(url), SystemTime::now()) else {
        panic!("expected stale");
    };
    let mut answer = http::Response::new(());
    *answer.status_mut() = StatusCode::NOT_MODIFIED;
    *answer.headers_mut() = headers(&[MAX_AGE, ("etag", "\"v1\"")]);
    let answer = answer.into_parts().0;
    let refreshed = cache
        .refresh(&stale.object, &get(url), &answer, SystemTime::now())
        .expect("304 applies");
    assert!(refreshed.memory_chunks().is_none(), "still on disk");
    assert_eq!(hit_body(&cache, url), data);
    // The refreshed object shares the file: once both are let go, the
    // file goes with them.
    assert_eq!(cache.purge(url), Ok(true));
    drop((refreshed, stale));
    assert!(object_files(dir.path()).is_empty());
}

#[test]
fn an_unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    fs::write(&file, b"not a directory").expect("write");
    let result = Cache::open(crate::cache::CacheConfig {
        dir: Some(file.join("cache")),
        ..crate::cache::CacheConfig::default()
    });
    let Err(err) = result else {
        panic!("a directory under a file cannot be used");
    };
    assert!(matches!(err, CacheError::Dir { .. }), "{err}");
    assert!(err.to_string().starts_with("cache directory "), "{err}");
}

/// A directory in which no file can be made (as one owned by another user
/// is to the proxy; `/proc` is so even to root) is refused by name.
#[test]
fn a_directory_that_takes_no_files_is_refused() {
    let err = super::writable(Path::new("/proc/self")).expect_err("no files in /proc/self");
    assert!(err.raw_os_error().is_some(), "the OS's refusal: {err}");
    let dir = tempfile::tempdir().expect("tempdir");
    super::writable(dir.path()).expect("a temporary directory takes files");
    assert_eq!(
        fs::read_dir(dir.path()).expect("read").count(),
        0,
        "the probe is gone"
    );
}

#[test]
fn variants_and_newer_copies_keep_exactly_their_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = "http://h/lang";
    let vary = [MAX_AGE, ("vary", "accept-language")];
    let french = request("GET", url, &[("accept-language", "fr")]);
    let german = request("GET", url, &[("accept-language", "de")]);
    let old_copy;
    {
        let cache = open(dir.path());
        store(&cache, &french, &vary, &body(9000), 1).expect("stored");
        old_copy = object_files(dir.path());
        let old_bytes = fs::read(&old_copy[0]).expect("read");
        store(&cache, &german, &vary, &body(9001), 1).expect("stored");
        assert_eq!(
            object_files(dir.path()).len(),
            2,
            "a second variant keeps the first"
        );
        store(&cache, &french, &vary, &body(9002), 1).expect("stored again");
        assert_eq!(
            object_files(dir.path()).len(),
            2,
            "a newer copy replaces the older file"
        );
        assert!(!old_copy[0].exists());
        assert_eq!(
            read(&cache.stats().evictions_disk),
            0,
            "replacing is not evicting"
        );
        // As if a crash came between writing the new file and dropping the old.
        fs::write(&old_copy[0], old_bytes).expect("restore the older file");
    }
    let cache = open(dir.path());
    let hit = expect_hit(&cache, &french);
    let got = read_body(
        &mut hit
            .object
            .reader(0, hit.object.head.body_len)
            .expect("reader"),
    )
    .expect("body");
    assert_eq!(got, body(9002), "the newer response wins");
    assert!(!old_copy[0].exists(), "the older file is deleted");
    let hit = expect_hit(&cache, &german);
    assert_eq!(hit.object.head.body_len, 9001);
    assert_eq!(object_files(dir.path()).len(), 2);
}

#[test]
fn room_is_promised_out_of_the_free_space_with_a_margin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = super::DiskStore::open(
        dir.path(),
        1 << 30,
        1 << 30,
        64 << 20,
        std::sync::Arc::new(crate::cache::stats::Stats::default()),
    )
    .expect("store");
    let fs = rustix::fs::statvfs(dir.path()).expect("statvfs");
    let free = fs.f_bavail * fs.f_frsize;
    assert!(
        free > 128 << 20,
        "this test needs more than 128 MiB free in {}, which has {free} bytes",
        dir.path().display()
    );
    assert!(store.promise_room(4096).is_some(), "a small object fits");
    assert!(
        store.promise_room(u64::MAX / 2).is_none(),
        "more than any disk holds"
    );
    // Two objects that each fit, but not both: each takes three fifths of
    // what is free past the margin (and a quarter more is asked).
    let len = free.saturating_sub(64 << 20) / 5 * 3;
    let first = store.promise_room(len).expect("room for one");
    assert!(
        store.promise_room(len).is_none(),
        "the first promise holds its room"
    );
    drop(first);
    assert!(store.promise_room(len).is_some(), "room given back");
    fs::remove_dir_all(dir.path()).expect("remove the store");
    assert!(
        store.promise_room(4096).is_none(),
        "a store gone has no room"
    );
}

#[test]
fn a_disk_object_purged_while_it_is_read_back_is_not_kept_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let cache = open(dir.path());
        store(&cache, &get("http://h/small"), &[MAX_AGE], &body(3000), 3).expect("stored");
    }
    let cache = open(dir.path());
    let disk = cache.shared.disk.as_ref().expect("disk tier");
    let found = disk.tier.get("http://h/small").expect("indexed")[0].clone();
    // The PURGE comes after the lookup found the object on disk, before
    // the copy read from its file is put in memory.
    assert!(cache.purge("http://h/small").expect("url"));
    let promoted = cache.load_from_disk(found).expect("read back");
    let len = promoted.head.body_len;
    let answered = read_body(&mut promoted.reader(0, len).expect("reader")).expect("body");
    assert_eq!(answered, body(3000), "this request is answered");
    let memory = cache.shared.memory.as_ref().expect("memory tier");
    assert!(
        memory.get("http://h/small").is_none(),
        "the copy outlived the PURGE"
    );
    assert!(is_miss(&cache, "http://h/small"));
}

#[test]
fn a_purge_while_the_index_is_rebuilt_drops_files_not_read_yet() {
    // A PURGE that comes before the loader has read a URL's file finds
    // nothing indexed: the loader must drop that file, not index it.
    const URLS: usize = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = |n: usize| format!("http://h/purged/{n}");
    // Memory enough for the index of all of them.
    {
        let cache = small_cache(64 << 20, MEM_MAX, Some(dir.path()));
        assert!(cache.wait_loaded(LOAD_WAIT), "the loader finished");
        for n in 0..URLS {
            store(&cache, &get(&url(n)), &[MAX_AGE], &body(100), 3).expect("stored");
        }
    }
    assert_eq!(object_files(dir.path()).len(), URLS);
    let cache = small_cache(64 << 20, MEM_MAX, Some(dir.path()));
    for n in 0..URLS {
        cache.purge(&url(n)).expect("url");
    }
    assert!(cache.wait_loaded(LOAD_WAIT), "the loader finished");
    let served: Vec<usize> = (0..URLS).filter(|&n| !is_miss(&cache, &url(n))).collect();
    assert!(
        served.is_empty(),
        "{} of {URLS} purged URLs served, the first {:?}",
        served.len(),
        served.first()
    );
    assert_eq!(cache.usage().1.map(|d| d.urls), Some(0));
    assert!(
        object_files(dir.path()).is_empty(),
        "their files are deleted"
    );
}

#[test]
fn the_budget_is_what_the_file_system_can_hold_less_a_reserve() {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    // Room enough: the configured budget.
    assert_eq!(
        super::fitted_budget(10 * GIB, 2 * GIB, 50 * GIB, 100 * GIB),
        10 * GIB
    );
    // A twentieth of the file system is left free, at most 1 GiB...
    assert_eq!(
        super::fitted_budget(10 * GIB, 2 * GIB, 3 * GIB, 100 * GIB),
        4 * GIB
    );
    assert_eq!(
        super::fitted_budget(10 * GIB, GIB, 2 * GIB, 20 * GIB),
        2 * GIB
    );
    // ...and at least 16 MiB.
    assert_eq!(super::fitted_budget(GIB, 0, 100 * MIB, 100 * MIB), 84 * MIB);
    // A full disk: less than the tier holds.
    assert_eq!(super::fitted_budget(10 * GIB, 2 * GIB, 0, 100 * GIB), GIB);
    assert_eq!(super::fitted_budget(10 * GIB, 0, 0, 100 * GIB), 0);
}

/// A budget cut to the file system's free room keeps large objects side by
/// side while they fit it: the disk tier is one pool, not shares of it.
#[test]
fn a_budget_cut_by_free_room_still_holds_what_fits_it() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open_sized(dir.path(), 64 * MIB, 4 * MIB);
    let store_dir = cache.shared.disk.as_ref().expect("disk tier");
    // 32 MiB free of 320 MiB, of which 16 MiB are left to the rest.
    *store_dir.space.lock().expect("space") = Some((32 * MIB, 320 * MIB));
    store_dir.fit_to_file_system(true);
    assert_eq!(cache.usage().1.expect("disk tier").capacity, 16 * MIB);
    for i in 0..4 {
        let url = format!("http://h/artifact{i}");
        let size = usize::try_from(3 * MIB).expect("size");
        store(&cache, &get(&url), &[MAX_AGE], &body(size), 2).expect("stored");
    }
    let disk = cache.usage().1.expect("disk tier");
    assert_eq!(disk.urls, 4, "12 MiB of objects in a 16 MiB budget");
    assert_eq!(read(&cache.stats().evictions_disk), 0);
}

#[test]
fn a_full_file_system_makes_the_disk_tier_evict_and_room_is_taken_back() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = open_sized(dir.path(), 4 * MIB, 1 << 20);
    let store_dir = cache.shared.disk.as_ref().expect("disk tier");
    for i in 0..10 {
        let url = format!("http://h/full{i}");
        store(&cache, &get(&url), &[MAX_AGE], &body(15_000), 2).expect("stored");
    }
    let held = store_dir.tier.usage().bytes;
    assert!(held >= 150_000, "ten objects held: {held}");
    assert_eq!(object_files(dir.path()).len(), 10);
    // The file system fills up (reserve 16 MiB of 320 MiB): a write fails,
    // and the next fill to start finds the tier keeping 60 KB less than it
    // held, and makes its room by eviction.
    *store_dir.space.lock().expect("space") = Some((16 * MIB - 60_000, 320 * MIB));
    store_dir.fail_writes_after.store(1000, Ordering::Relaxed);
    let failed = store(&cache, &get("http://h/more"), &[MAX_AGE], &body(15_000), 2);
    assert_eq!(failed.err(), Some(NotStored::DiskError));
    store_dir
        .fail_writes_after
        .store(u64::MAX, Ordering::Relaxed);
    store(&cache, &get("http://h/next"), &[MAX_AGE], &body(15_000), 2).expect("stored");
    let disk = cache.usage().1.expect("disk tier");
    assert_eq!(disk.capacity, held - 60_000);
    assert!(disk.bytes <= held - 60_000, "evicted down to the budget");
    assert!(read(&cache.stats().evictions_disk) >= 4);
    assert!(
        object_files(dir.path()).len() <= 7,
        "the evicted objects' files are deleted"
    );
    // What no longer fits the budget is not written at all.
    assert!(store_dir.max_object() < 100_000);
    let large = store(
        &cache,
        &get("http://h/large"),
        &[MAX_AGE],
        &body(100_000),
        2,
    );
    assert_eq!(large.err(), Some(NotStored::TooLarge));
    // Room again (other files deleted): the whole budget is back.
    *store_dir.space.lock().expect("space") = Some((200 * MIB, 320 * MIB));
    store_dir.fit_to_file_system(true);
    assert_eq!(cache.usage().1.expect("disk tier").capacity, 4 * MIB);
    assert_eq!(store_dir.max_object(), 1 << 20);
    store(&cache, &get("http://h/more"), &[MAX_AGE], &body(15_000), 2).expect("stored again");
    assert_eq!(hit_body(&cache, "http://h/more"), body(15_000));
}
