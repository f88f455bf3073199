//! The filler side of a fill: the request that fetches from the origin
//! hands the response head and then each piece of body to its `Filler`,
//! which decides whether to store, tees the body into memory and/or the
//! disk file, publishes it to followers, and stores the object when the
//! body is complete. Storing never disturbs the filler's own client: a
//! disk error or a limit only abandons the store, and the rest of the
//! body is passed on to the followers reading it. Dropping a `Filler`
//! before `finish` (upstream failure, client gone, panic) fails the fill,
//! so followers are cut short and nothing is stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

use crate::cache::Shared;
use crate::cache::admission::{self, NotStored, Plan};
use crate::cache::disk::{DiskWriter, RoomPromise};
use crate::cache::fill::{Fill, FillFailure, FillHead, FillReader, Release};
use crate::cache::invalidations::Since;
use crate::cache::key::CacheKey;
use crate::cache::object::{Body, ObjectHead, StoredObject};
use crate::cache::stats::{add, bump};
use crate::http::request::RequestHead;

enum Store {
    AwaitingHead,
    Storing {
        head: Arc<FillHead>,
        memory: bool,
        /// Boxed: the checksum state is large, and most fills have no disk.
        disk: Option<Box<DiskWriter>>,
        received: u64,
    },
    NotStoring(NotStored),
    /// Given up for `why` halfway, with followers reading: the rest of the
    /// body goes on to them, not stored (`Fill::pass_on`).
    Passing {
        why: NotStored,
        declared: Option<u64>,
        received: u64,
    },
    Done,
}

/// Receives one response from the origin and stores it.
pub struct Filler {
    shared: Arc<Shared>,
    key: CacheKey,
    /// The request the response is stored for when it is not the client's
    /// own (a POST's answer kept for later GETs); otherwise the caller
    /// hands the client's request to each call that needs it, so that a
    /// miss does not copy it.
    stored_as: Option<Box<RequestHead>>,
    fill: Arc<Fill>,
    /// In the collapse table: followers may be reading.
    registered: bool,
    /// The key it is in the collapse table under, when not `key`: a
    /// revalidation of one variant (`CacheKey::of_variant`).
    joined_as: Option<CacheKey>,
    /// The lone fetch of a URL marked hit-for-miss: a response that again
    /// cannot be shared renews the mark (see `renewing_hit_for_miss`).
    renews_mark: bool,
    /// Bytes of `Shared::inflight` this fill holds in memory.
    reserved: u64,
    /// The lookup found something stored for the URL, which a response
    /// that is not kept may supersede.
    stored_before: bool,
    /// The whole body's memory was reserved up front (`own_reader`).
    reserved_whole: bool,
    /// Room on disk for the whole body, promised up front (`own_reader`).
    room: Option<RoomPromise>,
    /// When the fill started: an invalidation of its URL after it means
    /// the response may predate it, and is not stored.
    started: Since,
    store: Store,
}

/// Size of each memory block of a body whose length is not known: a body
/// of declared length goes in one block of that length, so it costs one
/// allocation and one copy, not one per piece.
const MEMORY_BLOCK: usize = 64 * 1024;

/// Most bytes of a body passed on to followers (`Fill::pass_on`) held for
/// the slowest of them before the filler waits; never more than the memory
/// tier's object limit.
const PASS_WINDOW: u64 = 1 << 20;

impl Filler {
    /// A filler publishing into `fill`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        key: CacheKey,
        fill: Arc<Fill>,
        registered: bool,
    ) -> Filler {
        let started = shared.collapser.fill_starts();
        Filler {
            started,
            shared,
            key,
            stored_as: None,
            fill,
            registered,
            joined_as: None,
            renews_mark: false,
            reserved: 0,
            stored_before: true,
            reserved_whole: false,
            room: None,
            store: Store::AwaitingHead,
        }
    }

    /// The same filler, in the collapse table under `joined` rather than
    /// its own key.
    pub(crate) fn joined_as(mut self, joined: CacheKey) -> Filler {
        self.joined_as = Some(joined);
        self
    }

    /// The same filler, told that the lookup found nothing stored for the
    /// URL: a response that is not kept then has nothing to supersede.
    pub(crate) fn with_nothing_stored(mut self) -> Filler {
        self.stored_before = false;
        self
    }

    /// The same filler, fetching alone for a URL marked hit-for-miss: a
    /// response that again cannot be shared marks it once more, as
    /// Varnish's next fetch replaces its hit-for-miss object. A URL that
    /// stays uncacheable under steady traffic is then never collapsed
    /// again, where a mark left to lapse would make every request that
    /// came in the next fill's round trip wait for it, and then fetch on
    /// its own: twice the origin's latency for a burst, every two minutes.
    pub(crate) fn renewing_hit_for_miss(mut self) -> Filler {
        self.renews_mark = true;
        self
    }

    /// The same filler, storing the response as the answer to `request`
    /// whichever request the client sent.
    pub(crate) fn stored_as(mut self, request: RequestHead) -> Filler {
        self.stored_as = Some(Box::new(request));
        self
    }

    /// The request the response is stored for: `client`'s, unless the
    /// filler was made for another (`stored_as`).
    fn request<'a>(&'a self, client: &'a RequestHead) -> &'a RequestHead {
        self.stored_as.as_deref().unwrap_or(client)
    }

    /// The key being filled.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Whether the response is being stored: its head was taken and the
    /// store not given up.
    pub fn is_storing(&self) -> bool {
        matches!(self.store, Store::Storing { .. })
    }

    /// Whether the body is still wanted past the filler's own client: it
    /// is being stored, or passed on to followers still reading it.
    pub fn wants_body(&self) -> bool {
        match self.store {
            Store::Storing { .. } => true,
            Store::Passing { .. } => self.fill.has_followers(),
            _ => false,
        }
    }

    /// Seconds of freshness the response being stored has left at `now`
    /// (Cache-Status `ttl`); `None` when it is not being stored.
    pub fn ttl_seconds(&self, now: SystemTime) -> Option<i64> {
        match &self.store {
            Store::Storing { head, .. } => Some(head.policy.ttl_seconds(now)),
            _ => None,
        }
    }

    /// Takes the origin's response head (received at `now`) to `client`'s
    /// request and decides whether to store it; followers start reading,
    /// or are let go. A
    /// response that is not stored still supersedes what is stored for
    /// the request (a 5xx aside).
    ///
    /// # Errors
    /// Why the response is not stored; the filler then stores nothing,
    /// and its body calls do nothing.
    pub fn response_head(
        &mut self,
        client: &RequestHead,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(), NotStored> {
        match self.store {
            Store::AwaitingHead => {}
            Store::NotStoring(why) => return Err(why),
            Store::Storing { .. } | Store::Passing { .. } | Store::Done => {
                return Err(NotStored::Request);
            }
        }
        if status == StatusCode::OK && self.key.is_partial() && !self.registered {
            // A whole response to a range request (an origin that ignores
            // Range) is the URL's response, and
            // is kept as such: later requests, ranges too, are answered
            // from it. Nobody follows a range request's fill.
            self.key = self.key.whole();
        }
        let request = self.request(client);
        let decided = admission::plan(&self.shared, &self.key, request, status, headers, now);
        match decided {
            Ok(Plan { head, memory, disk }) => {
                let file = disk.as_ref().map(|w| (w.read_handle(), w.body_offset()));
                if head.policy.is_fresh(now) {
                    self.fill.publish_head(Arc::clone(&head), memory, file);
                } else {
                    // Stale at once: sharing it would be reuse without
                    // validation (RFC 9111 §4), so followers go alone.
                    self.release(Release::NotShareable, true);
                }
                self.store = Store::Storing {
                    head,
                    memory,
                    disk,
                    received: 0,
                };
                Ok(())
            }
            Err(why) => {
                self.refuse(client, status, why);
                Err(why)
            }
        }
    }

    /// Stores nothing of the response with `status` to `client`'s request,
    /// for `why`: followers
    /// go to the origin on their own. `response_head` calls it; so does
    /// the request path, for a response the proxy will not relay (a body
    /// declared over `max_body_bytes`), before anyone is given its head.
    pub fn refuse(&mut self, client: &RequestHead, status: StatusCode, why: NotStored) {
        if !matches!(self.store, Store::AwaitingHead) {
            return;
        }
        self.store = Store::NotStoring(why);
        // Whatever keeps it out of the cache, a new response supersedes the
        // stored one, except a 304 (which updates it), a 5xx (which
        // `stale-if-error` may stand in for), and an answer to a request
        // that is not a GET (a HEAD's is weighed by `Cache::head_answered`).
        let supersedes = why != NotStored::Request
            && status != StatusCode::NOT_MODIFIED
            && !status.is_server_error();
        if supersedes && self.stored_before {
            self.drop_superseded(client);
        }
        // Only a shared fill's refusal says something about the URL; one
        // caused by the request itself, or by the cache's state (a disk
        // error, no room), does not.
        let about_response = !matches!(
            why,
            NotStored::DiskError | NotStored::Request | NotStored::Busy
        ) && status != StatusCode::NOT_MODIFIED;
        self.release(Release::NotShareable, about_response);
    }

    /// The revalidation this filler stood for got a 304, and the stored
    /// response was refreshed: its followers look it up again.
    pub fn refreshed(mut self) {
        self.release(Release::Refreshed, false);
    }

    /// The revalidation this filler stood for found the origin failing
    /// (`status`: its 5xx, or `None` when it could not be reached): its
    /// followers answer from the stale entry where `stale-if-error`
    /// allows, without asking the failing origin again.
    pub fn origin_failed(mut self, status: Option<u16>) {
        self.release(Release::OriginFailed(status), false);
    }

    /// A reader of this fill for the filler's own client, so that the body
    /// can be received by another thread while the client reads at its own
    /// pace (and a slow client does not hold back the followers). Only for
    /// a shared fill whose declared length is at least `min`, and only when
    /// the fill cannot be given up halfway for want of room, which would
    /// cut the client short: the memory for the whole body is reserved now,
    /// or the fill has a disk file (which holds the whole body, kept in
    /// memory too or not) and the disk tier promises room for it, beyond
    /// what it promised other fills. `None` otherwise.
    pub fn own_reader(&mut self, client: &RequestHead, min: u64) -> Option<FillReader> {
        let Store::Storing {
            head,
            memory,
            disk,
            received: 0,
        } = &self.store
        else {
            return None;
        };
        let len = head.declared_len.filter(|&len| len >= min)?;
        let (in_memory, has_file) = (*memory, disk.is_some());
        if !self.registered || len > self.shared.config.mem_max_object && !has_file {
            return None;
        }
        let wait = self.shared.config.collapse_wait;
        let (_, reader) = self.fill.follow(self.request(client), wait).ok()?;
        if in_memory && reserve(&self.shared, &mut self.reserved, len) {
            self.reserved_whole = true;
            return Some(reader);
        }
        // Kept in memory too, the fill moves on to its file alone should
        // memory run short halfway.
        let disk = self.shared.disk.as_deref().filter(|_| has_file)?;
        self.room = Some(disk.promise_room(len)?);
        Some(reader)
    }

    /// The fill this filler writes, which followers read.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Whether followers are reading what this filler stores, or waiting
    /// for it: then a large enough body is received apart, and if the
    /// filler's own client stops taking the body, it is read on for them.
    pub fn has_followers(&self) -> bool {
        self.fill.has_followers()
    }

    /// Takes the next piece of body. Never fails: a limit or a disk error
    /// only abandons the store, and the followers reading get the rest of
    /// the body passed on (cut short only when there is no memory for it).
    pub fn body(&mut self, bytes: &[u8]) {
        if let Store::Passing { received, .. } = &mut self.store {
            *received += bytes.len() as u64;
            self.pass(bytes);
            return;
        }
        if let Some(failure) = self.tee(bytes) {
            self.abandon(failure);
            if let Store::Passing { .. } = self.store {
                self.pass(bytes);
            }
        }
    }

    /// Passes `bytes` on to the followers of a fill given up, counting
    /// those let go for lagging.
    fn pass(&self, bytes: &[u8]) {
        let let_go = self.fill.append(bytes, 0);
        if let_go > 0 {
            add(&self.shared.stats.followers_let_go, let_go as u64);
        }
    }

    /// Writes `bytes` to the disk file and publishes them; says why the
    /// store must be given up, if it must.
    fn tee(&mut self, bytes: &[u8]) -> Option<FillFailure> {
        let Store::Storing {
            head,
            memory,
            disk,
            received,
        } = &mut self.store
        else {
            return None;
        };
        if bytes.is_empty() {
            return None;
        }
        let declared = head.declared_len;
        *received += bytes.len() as u64;
        let mut busy = false;
        if *memory && !self.reserved_whole {
            busy = !reserve(&self.shared, &mut self.reserved, bytes.len() as u64);
            if busy || *received > self.shared.config.mem_max_object {
                *memory = false;
                if disk.is_some() {
                    self.fill.spill_to_file();
                }
                // What it held in memory is gone: other fills may take it.
                // (Pieces followers already took live on until they are
                // written out, and without a disk file the body so far
                // stays until the store is given up: the budget is
                // approximate for that while.)
                let held = std::mem::take(&mut self.reserved);
                self.shared.inflight.fetch_sub(held, Ordering::AcqRel);
            }
        }
        if let Some(writer) = disk {
            let over = self
                .shared
                .disk
                .as_ref()
                .is_none_or(|d| *received > d.max_object());
            let failed = !over
                && writer
                    .write(bytes)
                    .inspect_err(|err| {
                        log::warn!("cache: writing {} failed: {err}", self.key);
                        bump(&self.shared.stats.disk_write_errors);
                        if let Some(store) = &self.shared.disk {
                            store.write_failed(err);
                        }
                    })
                    .is_err();
            if over || failed {
                *disk = None;
                if !*memory {
                    return Some(if failed {
                        FillFailure::DiskWrite
                    } else {
                        FillFailure::TooLarge
                    });
                }
            }
        }
        if *memory {
            // What is left of a declared body (this piece included).
            let left = declared.map_or(MEMORY_BLOCK as u64, |len| {
                len.saturating_sub(*received - bytes.len() as u64)
            });
            let block = usize::try_from(left).unwrap_or(MEMORY_BLOCK);
            self.fill.append(bytes, block);
        } else if disk.is_some() {
            self.fill.advance(bytes.len() as u64);
        } else if busy {
            return Some(FillFailure::MemoryFull);
        } else {
            return Some(FillFailure::TooLarge);
        }
        None
    }

    /// The body is complete: stores the object in every tier that took it
    /// and ends the fill. Returns the stored object (for Cache-Status
    /// `stored`), or why nothing was stored.
    ///
    /// # Errors
    /// Why nothing was stored.
    pub fn finish(mut self) -> Result<Arc<StoredObject>, NotStored> {
        let store = std::mem::replace(&mut self.store, Store::Done);
        let Store::Storing {
            head,
            memory,
            disk,
            received,
        } = store
        else {
            return Err(match store {
                Store::NotStoring(why) => why,
                Store::Passing {
                    why,
                    declared,
                    received,
                } => {
                    if declared.is_none_or(|len| len == received) {
                        self.fill.complete();
                    } else {
                        self.fill.fail(FillFailure::Upstream);
                    }
                    why
                }
                _ => NotStored::Request,
            });
        };
        if head.declared_len.is_some_and(|len| len != received) {
            self.store = Store::NotStoring(NotStored::Incomplete);
            self.fill.fail(FillFailure::Upstream);
            return Err(NotStored::Incomplete);
        }
        if self.invalidated() {
            // The followers have the whole body; the disk file goes with
            // its writer.
            self.fill.complete();
            self.leave();
            return Err(NotStored::Invalidated);
        }
        // From here the stored object counts against its tier's budget.
        self.unreserve();
        let (key, variant, headers) =
            (self.key.clone(), head.variant.clone(), head.headers.clone());
        let object_head = Arc::new(if head.declared_len == Some(received) {
            // The head written for followers says just this.
            let block = head.head_block.clone();
            ObjectHead::with_head_block(
                key,
                variant,
                head.status,
                headers,
                head.policy.clone(),
                received,
                block,
            )
        } else {
            ObjectHead::new(
                key,
                variant,
                head.status,
                headers,
                head.policy.clone(),
                received,
            )
        });
        let in_memory = memory.then(|| self.store_in_memory(&object_head));
        let on_disk = disk.and_then(|writer| self.store_on_disk(&object_head, writer));
        self.drop_older_copies(&object_head, in_memory.is_some(), on_disk.is_some());
        self.fill.complete();
        self.leave();
        if self.invalidated() {
            // Invalidated while storing: the removal may have come first.
            for object in in_memory.iter().chain(&on_disk) {
                self.remove_stored(object);
            }
            return Err(NotStored::Invalidated);
        }
        self.shared.collapser.clear_hit_for_miss(&self.key);
        let stored = in_memory.or(on_disk).ok_or(NotStored::DiskError)?;
        bump(&self.shared.stats.stored);
        Ok(stored)
    }

    fn store_in_memory(&self, head: &Arc<ObjectHead>) -> Arc<StoredObject> {
        // One piece, unless followers read it as it came (then slices of
        // one block, which a hit writes in vectored writes anyway).
        let body = Body::in_memory(self.fill.chunks(), head.body_len, &self.shared.pages);
        let object = Arc::new(StoredObject::new(Arc::clone(head), body));
        if let Some(memory) = &self.shared.memory {
            memory.put(Arc::clone(&object));
        }
        object
    }

    fn store_on_disk(
        &self,
        head: &Arc<ObjectHead>,
        writer: Box<DiskWriter>,
    ) -> Option<Arc<StoredObject>> {
        let store = self.shared.disk.as_ref()?;
        match writer.finish() {
            Ok(body) => {
                let object = Arc::new(StoredObject::new(Arc::clone(head), Body::Disk(body)));
                store.tier.put(Arc::clone(&object));
                Some(object)
            }
            Err(err) => {
                log::warn!("cache: storing {} on disk failed: {err}", self.key);
                bump(&self.shared.stats.disk_write_errors);
                store.write_failed(&err);
                None
            }
        }
    }

    /// Whether the URL was invalidated since the fill started.
    fn invalidated(&self) -> bool {
        self.shared
            .collapser
            .invalidated_since(&self.key, self.started)
    }

    /// Takes this fill's own stored `object` out of its tier.
    fn remove_stored(&self, object: &StoredObject) {
        let tier = match &object.body {
            Body::Memory(_) | Body::Pages(_) => self.shared.memory.as_ref(),
            Body::Disk(_) => self.shared.disk.as_ref().map(|d| &d.tier),
        };
        if let Some(tier) = tier {
            // Not a newer fill's response, stored meanwhile.
            tier.remove_exact(object);
        }
    }

    /// A tier that did not take the new response must not keep serving
    /// an older one of the same variant.
    fn drop_older_copies(&self, head: &ObjectHead, in_memory: bool, on_disk: bool) {
        let same_variant = |o: &StoredObject| o.head.variant == head.variant;
        self.drop_stored(same_variant, !in_memory, !on_disk);
    }

    /// The origin answered this request with a response that is not kept:
    /// what is stored for the same variant is out of date, and must not
    /// be served in its place later (stale, or on an origin failure). A
    /// server error is no such news: the stored copy stays for
    /// `stale-if-error`.
    fn drop_superseded(&self, client: &RequestHead) {
        let request = self.request(client);
        let selected = |o: &StoredObject| o.head.variant.matches(request);
        self.drop_stored(selected, true, true);
    }

    /// Removes the first stored variant of this key that `which` picks,
    /// from the memory tier and the disk tier as asked. A removed disk
    /// object's file goes when the last reader lets go of it.
    fn drop_stored(&self, which: impl Fn(&StoredObject) -> bool, memory: bool, disk: bool) {
        let found = |variants: Option<crate::cache::tier::Variants>| {
            variants.and_then(|list| list.iter().find(|o| which(o)).cloned())
        };
        if let (true, Some(tier)) = (memory, &self.shared.memory)
            && let Some(old) = found(tier.get(self.key.as_str()))
        {
            tier.remove_exact(&old);
        }
        if let (true, Some(store)) = (disk, &self.shared.disk)
            && let Some(old) = found(store.tier.get(self.key.as_str()))
        {
            store.tier.remove_exact(&old);
        }
    }

    /// Gives up storing mid-body. Followers reading get the rest passed on
    /// when memory for a window of it can be had; else they are cut short.
    fn abandon(&mut self, failure: FillFailure) {
        let why = match failure {
            FillFailure::DiskWrite => NotStored::DiskError,
            FillFailure::TooLarge => NotStored::TooLarge,
            FillFailure::MemoryFull => NotStored::Busy,
            FillFailure::Upstream | FillFailure::Stalled | FillFailure::Lagged => {
                NotStored::Incomplete
            }
        };
        let (declared, received) = match &self.store {
            Store::Storing { head, received, .. } => {
                // Given up for the cache's sake (too large for every tier,
                // a disk error, no memory), the response still supersedes
                // what is stored for its variant: the old copy must not
                // answer in its place. One cut short by the origin does
                // not, as a 5xx does not.
                let cache_side = matches!(
                    failure,
                    FillFailure::TooLarge | FillFailure::DiskWrite | FillFailure::MemoryFull
                );
                if cache_side && self.stored_before && !head.status.is_server_error() {
                    let same_variant = |o: &StoredObject| o.head.variant == head.variant;
                    self.drop_stored(same_variant, true, true);
                }
                (head.declared_len, *received)
            }
            _ => (None, 0),
        };
        self.store = Store::NotStoring(why);
        self.unreserve();
        bump(&self.shared.stats.fills_abandoned);
        let window = PASS_WINDOW.min(self.shared.config.mem_max_object).max(1);
        // Shorter than the readers' own wait for bytes (twice this), so
        // that one stuck reader is let go before the others give up.
        let wait = self.shared.config.collapse_wait;
        if reserve(&self.shared, &mut self.reserved, window) && self.fill.pass_on(window, wait) {
            self.store = Store::Passing {
                why,
                declared,
                received,
            };
            bump(&self.shared.stats.fills_passed_on);
        } else {
            self.unreserve();
            // Whatever the fill still held in memory goes now.
            self.fill.spill_to_file();
            self.fill.fail(failure);
        }
        let shared_fill = self.registered;
        self.leave();
        if failure == FillFailure::TooLarge && shared_fill {
            self.shared.collapser.mark_hit_for_miss(&self.key);
        }
    }

    /// Lets followers go before any body; `mark` remembers the URL as
    /// hit-for-miss, if this fill speaks for the URL (the shared fill, or
    /// the lone fetch of a URL already marked).
    fn release(&mut self, why: Release, mark: bool) {
        let speaks_for_url = self.registered || self.renews_mark;
        self.fill.release(why);
        self.leave();
        if mark && speaks_for_url {
            self.shared.collapser.mark_hit_for_miss(&self.key);
        }
    }

    /// Returns this fill's share of the in-flight memory.
    fn unreserve(&mut self) {
        let reserved = std::mem::take(&mut self.reserved);
        self.shared.inflight.fetch_sub(reserved, Ordering::AcqRel);
    }

    fn leave(&mut self) {
        if self.registered {
            let joined = self.joined_as.as_ref().unwrap_or(&self.key);
            self.shared.collapser.leave(joined, &self.fill);
            self.registered = false;
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if let Store::Storing { .. } = self.store {
            bump(&self.shared.stats.fills_abandoned);
        }
        self.unreserve();
        // No effect on a fill that already ended; one still storing or
        // passing on did not get its whole body.
        self.fill.fail(FillFailure::Upstream);
        self.leave();
    }
}

/// Reserves `len` bytes of the memory that fills in progress may hold
/// (bounded, so that many large fills at once cannot push the process far
/// past its budget); false when there is not enough left.
fn reserve(shared: &Shared, reserved: &mut u64, len: u64) -> bool {
    let limit = shared.inflight_limit;
    let fits = shared
        .inflight
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(len).filter(|total| *total <= limit)
        })
        .is_ok();
    if fits {
        *reserved += len;
    }
    fits
}
