//! The cache through the real binary: the disk tier across a restart, a
//! `kill -9` in the middle of a write, files broken on disk, and a
//! response over every limit streamed through with the process's memory
//! flat (its RSS read from `/proc`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use super::{LIMIT, cache_status, concurrent_gets, get};
use crate::support::origin::pattern_byte;
use crate::support::raw::read_head;
use crate::support::{
    Gate, Origin, ProxyProcess, Reply, metric, run_binary_within, scrape_metrics, wait_until,
};

/// `fetchproxy serve` on loopback with local origins allowed, and `extra`.
fn start(extra: &[&str]) -> ProxyProcess {
    let mut args = vec!["--allow-dest", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

/// The proxy with its disk cache in `dir`, once the index is read.
fn start_on(dir: &Path) -> ProxyProcess {
    start_loaded(&["--cache-dir", dir.to_str().expect("UTF-8 temp path")])
}

/// The proxy with `args` (a disk cache among them), once the index is read.
fn start_loaded(args: &[&str]) -> ProxyProcess {
    let proxy = start(args);
    let loaded = wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(&page, "fetchproxy_cache_disk_index_loaded") == Some(1.0)
    });
    assert!(loaded, "index never loaded:\n{}", proxy.log().join("\n"));
    proxy
}

/// Runs the proxy with `args` until it has stored `url` in the disk tier
/// in `dir`, then stops it.
fn store_once(args: &[&str], url: &str, dir: &Path) {
    let proxy = start(args);
    get(proxy.addr, url, &[]);
    assert!(wait_until(LIMIT, || object_files(dir).len() == 1));
    stop(proxy);
}

/// Stops the proxy with SIGTERM and checks it exited cleanly.
fn stop(mut proxy: ProxyProcess) {
    let status = proxy.terminate(LIMIT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        proxy.log().join("\n")
    );
}

/// The object files under the cache directory (regular files only).
fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir.join("objects")) else {
        return files;
    };
    for sub in subdirs.flatten() {
        if let Ok(entries) = std::fs::read_dir(sub.path()) {
            let regular = |path: &PathBuf| std::fs::metadata(path).is_ok_and(|m| m.is_file());
            files.extend(entries.flatten().map(|e| e.path()).filter(regular));
        }
    }
    files
}

/// Files being written (the tier's temporary directory).
fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, |entries| entries.count())
}

/// The pattern body of `len` bytes the scripted origin sends.
fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(pattern_byte).collect()
}

fn fresh_pattern(len: u64) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![("Cache-Control".into(), "max-age=3600".into())],
        body: pattern(len),
    }
}

#[test]
fn a_restart_finds_the_disk_cache_and_serves_it_without_the_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(300_000));
    let url = origin.url("/kept");
    let proxy = start_on(dir.path());
    let first = get(proxy.addr, &url, &[]);
    assert_eq!(first.body, pattern(300_000));
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    let written = wait_until(LIMIT, || object_files(dir.path()).len() == 1);
    assert!(written, "{:?}", object_files(dir.path()));
    stop(proxy);

    let proxy = start_on(dir.path());
    let again = get(proxy.addr, &url, &[]);
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body == pattern(300_000), "the stored body, whole");
    assert!(cache_status(&again).contains("; hit"), "{again:?}");
    assert_eq!(
        origin.requests().len(),
        1,
        "no origin request after the restart"
    );
    stop(proxy);
}

#[test]
fn a_second_process_on_the_same_cache_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("UTF-8 temp path");
    let first = start_on(dir.path());
    let second = run_binary_within(
        &["serve", "--listen", "127.0.0.1:0", "--cache-dir", path],
        LIMIT,
    );
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "{path} is in use by another process (pid {})",
            first.pid()
        )),
        "{said}"
    );
    stop(first);
    // Free again once its owner has gone.
    let again = start_on(dir.path());
    stop(again);
}

#[test]
fn an_object_too_heavy_for_the_memory_tier_is_sent_from_its_file() {
    // Over the memory tier's object limit (90% of its 1 MiB budget, the
    // most one shard holds), within the disk tier's: kept on disk only, and
    // every hit is sent from the file, which this process wrote and so
    // need not read back.
    const LEN: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(LEN));
    let url = origin.url("/heavy");
    let path = dir.path().to_str().expect("UTF-8 temp path");
    let proxy = start_loaded(&["--cache-dir", path, "--cache-mem", "1MiB"]);
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    assert!(wait_until(LIMIT, || object_files(dir.path()).len() == 1));
    for _ in 0..3 {
        let hit = get(proxy.addr, &url, &[]);
        assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
        assert!(hit.body == pattern(LEN), "the stored body, whole");
    }
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_hits_total"),
        Some(3.0),
        "hits sent from the disk tier's file"
    );
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_verified_total"),
        Some(0.0),
        "never read back"
    );
    assert_eq!(origin.requests().len(), 1);
    stop(proxy);
}

#[test]
fn concurrent_first_hits_after_a_restart_read_the_file_back_once() {
    const LEN: u64 = 8 << 20;
    const CLIENTS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(LEN));
    let url = origin.url("/toolchain.tar");
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    // Over the memory tier's object limit: after the restart the object is
    // on disk only, and checked before its first use.
    let args = ["--cache-dir", dir_arg, "--cache-max-object", "64KiB"];
    store_once(&args, &url, dir.path());

    let proxy = start_loaded(&args);
    let addr = proxy.addr;
    let clients = concurrent_gets(addr, &url, CLIENTS);
    let expected = pattern(LEN);
    for client in clients {
        let reply = client.join().expect("client thread");
        assert_eq!(reply.status, 200, "{:?}", reply.headers);
        assert!(reply.body == expected, "the stored body, whole");
        assert!(cache_status(&reply).contains("; hit"), "{reply:?}");
    }
    assert_eq!(origin.requests().len(), 1, "all from the disk tier");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_verified_total"),
        Some(1.0),
        "one read-back for {CLIENTS} concurrent first hits"
    );
    stop(proxy);
}

#[test]
fn a_range_of_a_disk_object_is_sent_from_its_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(300_000));
    let url = origin.url("/ranged");
    let proxy = start_on(dir.path());
    get(proxy.addr, &url, &[]);
    assert!(wait_until(LIMIT, || object_files(dir.path()).len() == 1));
    stop(proxy);

    // After the restart the object is on disk only: the answer is sent
    // from the file, from the range's place in it.
    let proxy = start_on(dir.path());
    let part = get(proxy.addr, &url, &["-H", "Range: bytes=123457-223456"]);
    assert_eq!(part.status, 206, "{part:?}");
    assert!(
        part.body == pattern(300_000)[123_457..=223_456],
        "the range's bytes"
    );
    let whole = get(proxy.addr, &url, &[]);
    assert!(whole.body == pattern(300_000), "the whole body after it");
    assert_eq!(origin.requests().len(), 1, "both from the disk tier");
    stop(proxy);
}

#[test]
fn a_disk_object_whose_file_went_missing_is_fetched_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(300_000));
    let url = origin.url("/vanished");
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    let proxy = start(&["--cache-dir", dir_arg, "--cache-max-object", "64KiB"]);
    get(proxy.addr, &url, &[]);
    assert!(wait_until(LIMIT, || object_files(dir.path()).len() == 1));
    // Someone deletes the file behind the proxy's back. The lookup sees it
    // gone before anything is sent, and the request goes to the origin.
    std::fs::remove_file(object_files(dir.path()).remove(0)).expect("remove");
    let again = get(proxy.addr, &url, &[]);
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body == pattern(300_000), "the whole body");
    assert!(cache_status(&again).contains("fwd="), "{again:?}");
    assert_eq!(origin.requests().len(), 2);
    stop(proxy);
}

#[test]
fn a_disk_object_changed_while_the_proxy_runs_is_never_served_changed() {
    // Objects over the memory tier's limit answer from their files. A file
    // written to, cut or replaced behind the proxy's back is read back
    // before it answers again: dropped, and the object fetched anew.
    const LEN: u64 = 300_000;
    let dir = tempfile::tempdir().expect("temp dir");
    // URLs of one length, so that a file of one fits where another's was;
    // the last one's body differs.
    let origin = Origin::start(|request| match request.target.as_str() {
        "/othr" => Reply::Full {
            status: 200,
            headers: vec![("Cache-Control".into(), "max-age=3600".into())],
            body: pattern(LEN).iter().map(|b| b ^ 1).collect(),
        },
        _ => fresh_pattern(LEN),
    });
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    let proxy = start(&["--cache-dir", dir_arg, "--cache-max-object", "64KiB"]);
    let stored = |path: &str| {
        let before = object_files(dir.path());
        get(proxy.addr, &origin.url(path), &[]);
        assert!(wait_until(LIMIT, || object_files(dir.path()).len() == before.len() + 1));
        let file = object_files(dir.path())
            .into_iter()
            .find(|f| !before.contains(f));
        file.expect("its new file")
    };
    let flipped = stored("/flip");
    let cut = stored("/cuts");
    let replaced = stored("/repl");
    let other = stored("/othr");
    let verified = || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(&page, "fetchproxy_cache_disk_verified_total")
    };
    let hit = get(proxy.addr, &origin.url("/flip"), &[]);
    assert!(cache_status(&hit).contains("; hit"), "{hit:?}");
    assert_eq!(
        verified(),
        Some(0.0),
        "a file just written is not read back"
    );
    // A change in the same clock tick as the write could keep the file's
    // times (on kernels before 6.13, whose times are coarse).
    thread::sleep(Duration::from_millis(50));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&flipped)
        .expect("open object");
    let at = std::fs::metadata(&flipped).expect("stat").len() - 1000;
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).expect("read");
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x55], at).expect("flip");
    drop(file);
    let len = std::fs::metadata(&cut).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .expect("open");
    file.set_len(len / 2).expect("cut");
    drop(file);
    let copy = replaced.with_extension("copy");
    std::fs::copy(&other, &copy).expect("copy the other object");
    std::fs::rename(&copy, &replaced).expect("replace");

    for path in ["/flip", "/cuts", "/repl"] {
        let reply = get(proxy.addr, &origin.url(path), &[]);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert!(reply.body == pattern(LEN), "{path}: never a changed body");
        assert!(cache_status(&reply).contains("fwd="), "{path}: {reply:?}");
    }
    assert_eq!(origin.requests().len(), 7, "each changed one fetched again");
    assert_eq!(verified(), Some(3.0), "each changed one read back once");
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_corrupt_total"),
        Some(3.0)
    );
    // Stored again, the new copies answer.
    for path in ["/flip", "/cuts", "/repl"] {
        let hit = get(proxy.addr, &origin.url(path), &[]);
        assert!(hit.body == pattern(LEN), "{path}: whole");
        assert!(cache_status(&hit).contains("; hit"), "{path}: {hit:?}");
    }
    assert_eq!(verified(), Some(3.0), "the new copies are not read back");
    stop(proxy);
}

/// Makes a FIFO at `path` (`mkfifo`, which `.ci/run`'s machine has).
fn make_fifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

#[test]
fn an_object_stored_while_the_index_loads_keeps_its_file() {
    // The loader, reading the directory at start, meets the file a fill
    // has just written and indexed: two views of one file, and the one
    // dropped must not delete it.
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|_| fresh_pattern(300_000));
    let url = origin.url("/during-load");
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    // Kept on disk only, so that every hit is sent from the file.
    let args = ["--cache-dir", dir_arg, "--cache-max-object", "64KiB"];
    // Where the URL's file goes: one run to find out.
    store_once(&args, &url, dir.path());
    let file = object_files(dir.path()).remove(0);
    let its_dir = file.parent().expect("a subdirectory").to_path_buf();
    std::fs::remove_file(&file).expect("remove the file");
    // A FIFO in every other subdirectory holds the loader up (as a large
    // directory would) until each is opened for writing.
    let mut fifos = Vec::new();
    for n in 0..256 {
        let sub = dir.path().join("objects").join(format!("{n:02x}"));
        if sub == its_dir {
            continue;
        }
        std::fs::create_dir_all(&sub).expect("subdirectory");
        make_fifo(&sub.join("fifo"));
        fifos.push(sub.join("fifo"));
    }
    let proxy = start(&args);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_index_loaded"),
        Some(0.0)
    );
    let first = get(proxy.addr, &url, &[]);
    assert!(cache_status(&first).contains("stored"), "{first:?}");
    assert!(wait_until(LIMIT, || object_files(dir.path()).len() == 1));
    // Let the loader through: a FIFO opens for writing (without blocking)
    // once the loader has it open for reading, and it then reads its end.
    let released = wait_until(LIMIT, || {
        fifos.retain(|fifo| {
            fifo.exists()
                && std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(fifo)
                    .is_err()
        });
        fifos.is_empty()
    });
    assert!(released, "{} FIFOs never opened", fifos.len());
    let loaded = wait_until(LIMIT, || {
        let (_, page) = scrape_metrics(proxy.addr);
        metric(&page, "fetchproxy_cache_disk_index_loaded") == Some(1.0)
    });
    assert!(loaded, "{}", proxy.log().join("\n"));
    let asked = origin.requests().len();
    for _ in 0..3 {
        let again = get(proxy.addr, &url, &[]);
        assert_eq!(again.status, 200, "{again:?}");
        assert!(again.body == pattern(300_000), "the stored body, whole");
        assert!(cache_status(&again).contains("; hit"), "{again:?}");
    }
    assert_eq!(origin.requests().len(), asked, "hits, from the file");
    stop(proxy);
}

#[test]
fn fills_in_progress_start_files_only_within_their_share_of_the_budget() {
    // Four cold 5 MiB objects at once, with a 12 MiB disk budget: fills in
    // progress may hold a quarter of it, or one file. One writes to disk;
    // the others are streamed through, whole, and say why.
    const LEN: u64 = 5 << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = Gate::new();
    let origin = Origin::start({
        let gate = gate.clone();
        move |_| Reply::fresh_paused(&pattern(LEN), 1 << 20, &gate)
    });
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    let proxy = start(&[
        "--cache-dir",
        dir_arg,
        "--cache-dir-size",
        "12MiB",
        "--cache-max-object",
        "1KiB",
    ]);
    // Each client reads its head before the gate opens: its Cache-Status
    // says where the body goes, decided while the others' files are open.
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let url = origin.url(&format!("/artifact-{i}"));
            let mut stream = TcpStream::connect(proxy.addr).expect("connect");
            let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n");
            stream.write_all(request.as_bytes()).expect("send");
            stream
        })
        .collect();
    let heads: Vec<_> = clients
        .iter_mut()
        .map(|stream| read_head(stream, LIMIT).expect("a response head"))
        .collect();
    assert_eq!(temp_files(dir.path()), 1, "one file written at a time");
    let busy = heads
        .iter()
        .filter(|head| {
            head.header("cache-status")
                .is_some_and(|s| s.contains("detail=busy"))
        })
        .count();
    assert_eq!(busy, 3, "the others say why they are not stored: {heads:?}");
    gate.open();
    for (stream, head) in clients.iter_mut().zip(&heads) {
        assert_eq!(head.status, 200, "{}", head.head);
        let mut body = vec![0u8; LEN as usize];
        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
        stream.read_exact(&mut body).expect("the whole body");
        assert!(body == pattern(LEN), "whole");
    }
    drop(clients);
    assert!(wait_until(LIMIT, || object_files(dir.path()).len() == 1));
    stop(proxy);
}

#[test]
fn a_kill_during_a_write_leaves_nothing_that_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start({
        let (gate, calls) = (gate.clone(), calls.clone());
        move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                return fresh_pattern(2_000_000);
            }
            // Half the body, then nothing until the test is over.
            Reply::fresh_paused(&pattern(2_000_000), 1_000_000, &gate)
        }
    });
    let url = origin.url("/interrupted");
    let proxy = start_on(dir.path());
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    let request = format!("GET {url} HTTP/1.1\r\nHost: h\r\n\r\n");
    client.write_all(request.as_bytes()).expect("send");
    // The first half is on its way to disk.
    let writing = wait_until(LIMIT, || temp_files(dir.path()) == 1);
    assert!(writing, "no file being written");
    proxy.signal("KILL");
    let mut proxy = proxy;
    assert!(proxy.wait_exit(LIMIT).is_some(), "kill -9 did not end it");
    drop(client);

    let proxy = start_on(dir.path());
    assert_eq!(temp_files(dir.path()), 0, "the partial file is gone");
    let after = get(proxy.addr, &url, &[]);
    assert!(
        after.body == pattern(2_000_000),
        "a whole body from the origin"
    );
    assert!(cache_status(&after).contains("fwd=uri-miss"), "{after:?}");
    assert_eq!(origin.requests().len(), 2);
    gate.open();
    stop(proxy);
}

#[test]
fn broken_files_on_disk_are_dropped_and_fetched_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = Origin::start(|request| {
        let len = if request.target == "/flipped" {
            100_000
        } else {
            20_000_000
        };
        fresh_pattern(len)
    });
    let proxy = start_on(dir.path());
    for path in ["/flipped", "/truncated"] {
        get(proxy.addr, &origin.url(path), &[]);
    }
    let written = wait_until(LIMIT, || object_files(dir.path()).len() == 2);
    assert!(written, "{:?}", object_files(dir.path()));
    stop(proxy);
    let mut files = object_files(dir.path());
    files.sort_by_key(|path| std::fs::metadata(path).map_or(0, |m| m.len()));
    // One byte of the small body flipped; the large file cut short.
    let mut small = std::fs::read(&files[0]).expect("read object");
    let at = small.len() - 100;
    small[at] ^= 0x55;
    std::fs::write(&files[0], small).expect("flip a byte");
    let large = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .expect("open object");
    let len = large.metadata().expect("stat").len();
    large.set_len(len - 10).expect("truncate");

    let proxy = start_on(dir.path());
    let flipped = get(proxy.addr, &origin.url("/flipped"), &[]);
    assert!(flipped.body == pattern(100_000), "never the flipped byte");
    let truncated = get(proxy.addr, &origin.url("/truncated"), &[]);
    assert!(truncated.body == pattern(20_000_000), "never a short body");
    for reply in [&flipped, &truncated] {
        assert!(cache_status(reply).contains("fwd="), "{:?}", reply.headers);
    }
    assert_eq!(origin.requests().len(), 4);
    let (_, page) = scrape_metrics(proxy.addr);
    assert_eq!(
        metric(&page, "fetchproxy_cache_disk_corrupt_total"),
        Some(2.0)
    );
    stop(proxy);
}

/// Peak `VmRSS` of `pid` in KiB while `work` runs, sampled every 10 ms.
fn peak_rss_during(pid: u32, work: impl FnOnce()) -> u64 {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = thread::spawn({
        let (done, peak) = (done.clone(), peak.clone());
        move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
    work();
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    peak.load(Ordering::SeqCst)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_start_line_names_the_largest_object_the_disk_tier_takes() {
    // The disk tier keeps at most 90% of its budget in one object.
    let origin = Origin::start(|request| {
        let len = if request.target == "/under" {
            18 << 20
        } else {
            19 << 20
        };
        fresh_pattern(len)
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_str().expect("UTF-8 temp path");
    let proxy = start_loaded(&[
        "--cache-dir",
        dir_arg,
        "--cache-dir-size",
        "21MiB",
        "--cache-max-object",
        "1MiB",
    ]);
    let line = proxy
        .wait_for_log("on disk in", LIMIT)
        .expect("the cache's start line");
    assert!(
        line.contains("21MiB on disk") && line.contains("(objects up to about 18.9MiB)"),
        "{line}"
    );
    let over = get(proxy.addr, &origin.url("/over"), &[]);
    assert!(
        cache_status(&over).contains("detail=too-large"),
        "{:?}",
        over.headers
    );
    let under = get(proxy.addr, &origin.url("/under"), &[]);
    assert!(
        cache_status(&under).contains("stored"),
        "{:?}",
        under.headers
    );
    stop(proxy);
}

#[test]
fn a_response_over_every_limit_streams_through_with_memory_flat() {
    const LEN: u64 = 192 << 20;
    let origin = Origin::start(|request| Reply::HugeCacheable {
        len: LEN,
        chunked: request.target == "/chunked",
    });
    let proxy = start(&["--cache-mem", "16MiB", "--cache-max-object", "1MiB"]);
    let before = rss_kib(proxy.pid()).expect("the proxy's RSS");
    for path in ["/sized", "/chunked"] {
        let url = origin.url(path);
        let mut reply = None;
        let peak = peak_rss_during(proxy.pid(), || reply = Some(get(proxy.addr, &url, &[])));
        let reply = reply.expect("a reply");
        assert_eq!(reply.body.len() as u64, LEN, "{path}");
        assert!(
            reply
                .body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64)),
            "{path}: the body streamed through intact"
        );
        assert!(
            cache_status(&reply).contains("detail=too-large") || path == "/chunked",
            "{path}: {:?}",
            reply.headers
        );
        // Generous: the budget and the footprint, far below the 192 MiB body.
        assert!(
            peak < before + 64 * 1024,
            "{path}: RSS went from {before} KiB to {peak} KiB"
        );
    }
    assert_eq!(origin.requests().len(), 2);
}
