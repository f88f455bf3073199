use std::io::Write;
use std::sync::mpsc;
use std::thread;

use http::HeaderName;

use super::*;
use crate::cache::key::VaryNames;
use crate::cache::testing::{headers, request};

const URL: &str = "http://h/f";
const WAIT: Duration = Duration::from_secs(10);

fn head(vary: Option<&str>) -> Arc<FillHead> {
    let mut pairs = vec![("cache-control", "max-age=60")];
    if let Some(vary) = vary {
        pairs.push(("vary", vary));
    }
    let response = headers(&pairs);
    let req = request("GET", URL, &[("accept", "a")]);
    let uri = URL.parse().expect("uri");
    let policy = Policy::new(
        &uri,
        &req,
        StatusCode::OK,
        &response,
        std::time::SystemTime::now(),
    );
    Arc::new(FillHead {
        status: StatusCode::OK,
        variant: Variant::capture(&VaryNames::of_response(&response), &req),
        head_block: crate::cache::object::head_block(StatusCode::OK, &response, None),
        headers: response,
        policy,
        declared_len: None,
    })
}

fn read_all(reader: &mut FillReader) -> Result<Vec<u8>, CacheError> {
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[test]
fn followers_read_bytes_before_the_fill_completes() {
    let fill = Fill::new();
    let (got_first, first) = mpsc::channel();
    let follower = {
        let fill = Arc::clone(&fill);
        thread::spawn(move || {
            let (_, mut reader) = fill
                .follow(&request("GET", URL, &[]), WAIT)
                .expect("follows");
            let chunk = reader
                .next_chunk()
                .expect("first chunk")
                .expect("not the end");
            got_first.send(chunk.clone()).expect("send");
            let mut all = chunk.to_vec();
            all.extend(read_all(&mut reader).expect("rest"));
            all
        })
    };
    fill.publish_head(head(None), true, None);
    fill.append(b"hello ", 64);
    // The fill is still open: the follower has the first bytes already.
    let first = first.recv_timeout(WAIT).expect("bytes before completion");
    assert_eq!(&first[..], b"hello ");
    fill.append(b"world", 64);
    fill.complete();
    assert_eq!(follower.join().expect("follower"), b"hello world");
}

#[test]
fn a_failed_fill_cuts_readers_short() {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    fill.append(b"part", 64);
    let (_, mut reader) = fill
        .follow(&request("GET", URL, &[]), WAIT)
        .expect("follows");
    fill.fail(FillFailure::Upstream);
    assert_eq!(
        &reader.next_chunk().expect("published bytes").expect("some")[..],
        b"part"
    );
    let err = reader.next_chunk().expect_err("cut short");
    assert!(
        matches!(err, CacheError::FillFailed(FillFailure::Upstream)),
        "{err}"
    );
}

#[test]
fn followers_are_released_without_a_head() {
    let fill = Fill::new();
    fill.release(Release::NotShareable);
    assert_eq!(
        fill.follow(&request("GET", URL, &[]), WAIT).err(),
        Some(Release::NotShareable)
    );
    let fill = Fill::new();
    fill.fail(FillFailure::Upstream);
    assert_eq!(
        fill.follow(&request("GET", URL, &[]), WAIT).err(),
        Some(Release::FillerGone)
    );
    let fill = Fill::new();
    let waited = fill.follow(&request("GET", URL, &[]), Duration::from_millis(20));
    assert_eq!(waited.err(), Some(Release::TimedOut));
}

#[test]
fn a_follower_of_another_variant_is_released() {
    let fill = Fill::new();
    fill.publish_head(head(Some("accept")), true, None);
    let other = request("GET", URL, &[("accept", "b")]);
    assert_eq!(fill.follow(&other, WAIT).err(), Some(Release::VaryMismatch));
    let same = request("GET", URL, &[("accept", "a")]);
    assert!(fill.follow(&same, WAIT).is_ok());
    assert_eq!(
        head(Some("accept")).variant.fields().map(<[_]>::len),
        Some(1)
    );
    assert_eq!(
        head(Some("accept"))
            .variant
            .fields()
            .map(|f| f[0].0.clone()),
        Some(HeaderName::from_static("accept"))
    );
}

#[test]
fn a_silent_fill_stalls_its_readers() {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    let (_, mut reader) = fill
        .follow(&request("GET", URL, &[]), Duration::from_millis(30))
        .expect("follows");
    let err = reader.next_chunk().expect_err("no progress");
    assert!(
        matches!(err, CacheError::FillFailed(FillFailure::Stalled)),
        "{err}"
    );
}

#[test]
fn readers_move_to_the_file_when_the_body_spills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("body");
    let mut writer = File::create(&path).expect("create");
    let read = Arc::new(File::open(&path).expect("open"));
    writer.write_all(b"HDR").expect("header");
    let fill = Fill::new();
    fill.publish_head(head(None), true, Some((read, 3)));
    let (_, mut reader) = fill
        .follow(&request("GET", URL, &[]), WAIT)
        .expect("follows");
    writer.write_all(b"abc").expect("write");
    fill.append(b"abc", 64);
    assert_eq!(
        &reader.next_chunk().expect("chunk").expect("some")[..],
        b"abc"
    );
    // Appended but not read yet when the memory copy goes: read from the file.
    writer.write_all(b"def").expect("write");
    fill.append(b"def", 64);
    fill.spill_to_file();
    writer.write_all(b"ghi").expect("write");
    fill.advance(3);
    fill.complete();
    assert_eq!(read_all(&mut reader).expect("rest"), b"defghi");
    assert!(fill.chunks().is_empty(), "memory copy dropped");
}

#[test]
fn a_body_no_one_follows_is_kept_as_one_piece() {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    for piece in [&b"abc"[..], b"def", b"gh"] {
        fill.append(piece, 8);
    }
    // Past the block: a new one.
    fill.append(b"ijk", 8);
    let chunks = fill.chunks();
    let pieces: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
    assert_eq!(pieces, [&b"abcdefgh"[..], b"ijk"]);
}

#[test]
fn a_late_follower_gets_what_came_before_it_at_once() {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    fill.append(b"early ", 64);
    let (_, mut reader) = fill
        .follow(&request("GET", URL, &[]), WAIT)
        .expect("follows");
    // Nothing more is appended yet: the reader does not wait for it.
    assert_eq!(
        &reader.next_chunk().expect("chunk").expect("some")[..],
        b"early "
    );
    fill.append(b"late", 64);
    fill.complete();
    assert_eq!(read_all(&mut reader).expect("rest"), b"late");
    let chunks = fill.chunks();
    let pieces: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
    assert_eq!(pieces, [&b"early "[..], b"late"], "cut for the reader");
}

/// A fill with its head published, and `n` readers of it.
fn fill_read_by(n: usize) -> (Arc<Fill>, Vec<FillReader>) {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    let readers = (0..n)
        .map(|_| {
            fill.follow(&request("GET", URL, &[]), WAIT)
                .expect("follows")
                .1
        })
        .collect();
    (fill, readers)
}

#[test]
fn a_body_passed_on_reaches_every_reader_whole_through_a_small_window() {
    let (fill, mut readers) = fill_read_by(2);
    fill.append(b"stored ", 64);
    // One reader took the first piece from memory before the store went.
    let first = readers[0].next_chunk().expect("read").expect("a piece");
    assert_eq!(&first[..], b"stored ");
    fill.append(b"kept ", 64);
    assert!(fill.pass_on(8, WAIT), "passed on to its readers");
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut reader| thread::spawn(move || read_all(&mut reader)))
        .collect();
    // Far more than the window: the filler waits for its readers.
    let rest: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
    for piece in rest.chunks(5) {
        fill.append(piece, 64);
        let state = fill.lock();
        let held = state.passing.as_ref().expect("passing").held;
        assert!(held <= 8, "held {held} bytes past the window");
    }
    fill.complete();
    let mut whole = b"stored kept ".to_vec();
    whole.extend_from_slice(&rest);
    let got: Vec<_> = readers
        .into_iter()
        .map(|reader| reader.join().expect("reader").expect("whole"))
        .collect();
    assert_eq!(got[0], whole[b"stored ".len()..]);
    assert_eq!(got[1], whole);
    assert!(fill.lock().chunks.is_empty(), "nothing kept once all read");
}

/// A fill with its head published and two readers that give up after
/// `stall` without a new byte.
fn two_readers(stall: Duration) -> (Arc<Fill>, FillReader, FillReader) {
    let fill = Fill::new();
    fill.publish_head(head(None), true, None);
    let follow = || {
        fill.follow(&request("GET", URL, &[]), stall / 2)
            .expect("follows")
            .1
    };
    let (first, second) = (follow(), follow());
    (fill, first, second)
}

#[test]
fn a_reader_left_behind_a_body_passed_on_is_let_go_and_the_others_read_on() {
    // Readers give up after 1 s without a byte; the filler waits 3 s for
    // the slowest: the one that keeps up must not give up on a filler
    // that is waiting for the other.
    let (fill, mut reader, mut stuck) = two_readers(Duration::from_secs(1));
    assert!(fill.pass_on(4, Duration::from_secs(3)));
    let fast = thread::spawn(move || read_all(&mut reader));
    let let_go: usize = [&b"abcd"[..], b"efgh", b"ijkl"]
        .iter()
        .map(|piece| fill.append(piece, 64))
        .sum();
    fill.complete();
    assert_eq!(let_go, 1, "the stuck reader, once");
    assert_eq!(
        fast.join().expect("reader").expect("whole"),
        b"abcdefghijkl"
    );
    let err = stuck.next_chunk().expect_err("let go");
    assert!(
        matches!(err, CacheError::FillFailed(FillFailure::Lagged)),
        "{err}"
    );
}

#[test]
fn a_reader_ahead_waits_afresh_once_the_filler_stops_waiting_for_a_slower_one() {
    // Readers give up after 1 s. The filler waits for the slow reader for
    // 0.7 s, then takes another 0.7 s for the next piece (as it may, on
    // its origin): 1.4 s after the fast reader's last byte, but only
    // 0.7 s after the filler went on.
    let (fill, mut fast, mut slow) = two_readers(Duration::from_secs(1));
    assert!(fill.pass_on(4, Duration::from_secs(10)));
    fill.append(b"abcd", 64);
    let fast = thread::spawn(move || read_all(&mut fast));
    let slow = thread::spawn(move || {
        thread::sleep(Duration::from_millis(700));
        read_all(&mut slow)
    });
    fill.append(b"efgh", 64); // Waits for the slow reader.
    thread::sleep(Duration::from_millis(700));
    fill.append(b"ijkl", 64);
    fill.complete();
    for reader in [fast, slow] {
        assert_eq!(
            reader.join().expect("reader").expect("whole"),
            b"abcdefghijkl"
        );
    }
}

#[test]
fn a_fill_passed_on_takes_no_new_followers_and_needs_a_reader() {
    let (fill, _) = fill_read_by(0);
    assert!(!fill.pass_on(64, WAIT), "no one to pass it on to");
    let (fill, _readers) = fill_read_by(1);
    assert!(fill.pass_on(64, WAIT));
    assert_eq!(
        fill.follow(&request("GET", URL, &[]), WAIT).err(),
        Some(Release::NotShareable)
    );
}

#[test]
fn a_spilled_body_passed_on_is_read_from_the_file_then_from_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("body");
    let mut writer = File::create(&path).expect("create");
    let read = Arc::new(File::open(&path).expect("open"));
    let fill = Fill::new();
    fill.publish_head(head(None), false, Some((read, 0)));
    let (_, mut reader) = fill
        .follow(&request("GET", URL, &[]), WAIT)
        .expect("follows");
    writer.write_all(b"on disk ").expect("write");
    fill.advance(8);
    // The disk gave up: the rest is passed on, never written.
    assert!(fill.pass_on(1024, WAIT));
    fill.append(b"in memory", 64);
    fill.complete();
    assert_eq!(read_all(&mut reader).expect("whole"), b"on disk in memory");
}
