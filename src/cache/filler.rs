//! The filler side of a fill: the request that fetches from the origin
//! hands the response head and then each piece of body to its `Filler`,
//! which decides whether to store, tees the body into memory and/or the
//! disk file, publishes it to followers, and stores the object when the
//! body is complete. Storing never disturbs the filler's own client: a
//! disk error or a limit only abandons the store. Dropping a `Filler`
//! before `finish` (upstream failure, client gone, panic) fails the fill,
//! so followers are cut short and nothing is stored.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use crate::cache::Shared;
use crate::cache::disk::{DiskWriter, Header};
use crate::cache::fill::{Fill, FillFailure, FillHead, Release};
use crate::cache::key::{CacheKey, Variant, VaryNames};
use crate::cache::object::{self, Body, ObjectHead, StoredObject};
use crate::cache::policy::Policy;
use crate::cache::stats::bump;
use crate::cache::tier::remove_files;
use crate::http::headers::{HopByHop, is_hop_by_hop};
use crate::http::request::RequestHead;

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// RFC 9111 §3 forbids it (method, status, no-store, private,
    /// Authorization, or nothing that makes it cacheable).
    Policy,
    /// `Vary: *`.
    VaryStar,
    /// A partial response (206 or `Content-Range`).
    Partial,
    /// Longer than every object limit that applies.
    TooLarge,
    /// The disk write failed and no other tier could take it.
    DiskError,
    /// The body ended short of its `Content-Length`.
    Incomplete,
}

impl NotStored {
    /// A Cache-Status `detail` token.
    pub fn detail(self) -> &'static str {
        match self {
            NotStored::Policy => "not-storable",
            NotStored::VaryStar => "vary-star",
            NotStored::Partial => "partial",
            NotStored::TooLarge => "too-large",
            NotStored::DiskError => "disk-error",
            NotStored::Incomplete => "incomplete",
        }
    }
}

/// Where a storable response goes.
struct Plan {
    head: Arc<FillHead>,
    /// Kept in memory (readers read the chunks).
    memory: bool,
    /// Written to disk.
    disk: Option<Box<DiskWriter>>,
}

enum Store {
    AwaitingHead,
    Storing {
        head: Arc<FillHead>,
        memory: bool,
        /// Boxed: the checksum state is large, and most fills have no disk.
        disk: Option<Box<DiskWriter>>,
        received: u64,
    },
    NotStoring,
    Done,
}

/// Receives one response from the origin and stores it.
pub struct Filler {
    shared: Arc<Shared>,
    key: CacheKey,
    request: RequestHead,
    fill: Arc<Fill>,
    /// In the collapse table: followers may be reading.
    registered: bool,
    store: Store,
}

impl Filler {
    /// A filler for `request`, publishing into `fill`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        key: CacheKey,
        request: &RequestHead,
        fill: Arc<Fill>,
        registered: bool,
    ) -> Filler {
        Filler {
            shared,
            key,
            request: request.clone(),
            fill,
            registered,
            store: Store::AwaitingHead,
        }
    }

    /// The key being filled.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Takes the origin's response head (received at `now`) and decides
    /// whether to store it; followers start reading, or are let go.
    ///
    /// # Errors
    /// Why the response is not stored; the filler then stores nothing,
    /// and its body calls do nothing.
    pub fn response_head(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(), NotStored> {
        if !matches!(self.store, Store::AwaitingHead) {
            return Err(NotStored::Policy);
        }
        match self.decide(status, headers, now) {
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
                self.store = Store::NotStoring;
                self.release(Release::NotShareable, why != NotStored::DiskError);
                Err(why)
            }
        }
    }

    fn decide(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Plan, NotStored> {
        let config = &self.shared.config;
        let declared = content_length(headers);
        let stored = stored_headers(headers);
        let uri = self.key.uri().map_err(|_| NotStored::Policy)?;
        let policy = Policy::new(&uri, &self.request, status, &stored, now);
        if self.request.method != "GET" || !policy.is_storable() {
            return Err(NotStored::Policy);
        }
        if status == StatusCode::PARTIAL_CONTENT
            || headers.contains_key(http::header::CONTENT_RANGE)
        {
            return Err(NotStored::Partial);
        }
        let names = VaryNames::of_response(&stored);
        if names == VaryNames::Star {
            return Err(NotStored::VaryStar);
        }
        let declared = if object::has_body(status) {
            declared
        } else {
            Some(0)
        };
        let fits = |limit: u64| declared.is_none_or(|len| len <= limit);
        let memory = self.shared.memory.is_some() && fits(config.mem_max_object);
        let disk_fits = self
            .shared
            .disk
            .as_ref()
            .is_some_and(|d| fits(d.max_object));
        if !memory && !disk_fits {
            return Err(NotStored::TooLarge);
        }
        let variant = Variant::capture(&names, &self.request);
        let mut disk = None;
        if let (true, Some(store)) = (disk_fits, &self.shared.disk) {
            let header = Header {
                key: self.key.clone(),
                variant: variant.clone(),
                response_time: now,
                status,
                request: policy.request_headers().clone(),
                response: stored.clone(),
            };
            match store.writer(&header) {
                Ok(writer) => disk = Some(Box::new(writer)),
                Err(err) => {
                    log::warn!("cache: cannot write {}: {err}", self.key);
                    bump(&self.shared.stats.disk_write_errors);
                    if !memory {
                        return Err(NotStored::DiskError);
                    }
                }
            }
        }
        let head_block = object::head_block(
            status,
            &stored,
            declared.filter(|_| object::has_body(status)),
        );
        let head = FillHead {
            status,
            headers: stored,
            policy,
            variant,
            declared_len: declared,
            head_block,
        };
        Ok(Plan {
            head: Arc::new(head),
            memory,
            disk,
        })
    }

    /// Takes the next piece of body. Never fails: a limit or a disk error
    /// only abandons the store (and cuts followers short if they were
    /// reading what can no longer be kept).
    pub fn body(&mut self, bytes: &[u8]) {
        if let Some(failure) = self.tee(bytes) {
            self.abandon(failure);
        }
    }

    /// Writes `bytes` to the disk file and publishes them; says why the
    /// store must be given up, if it must.
    fn tee(&mut self, bytes: &[u8]) -> Option<FillFailure> {
        let Store::Storing {
            memory,
            disk,
            received,
            ..
        } = &mut self.store
        else {
            return None;
        };
        if bytes.is_empty() {
            return None;
        }
        *received += bytes.len() as u64;
        if *memory && *received > self.shared.config.mem_max_object {
            *memory = false;
            self.fill.spill_to_file();
        }
        if let Some(writer) = disk {
            let over = self
                .shared
                .disk
                .as_ref()
                .is_none_or(|d| *received > d.max_object);
            let failed = !over
                && writer
                    .write(bytes)
                    .inspect_err(|err| log::warn!("cache: writing {} failed: {err}", self.key))
                    .is_err();
            if failed {
                bump(&self.shared.stats.disk_write_errors);
            }
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
            self.fill.publish(Bytes::copy_from_slice(bytes));
        } else if disk.is_some() {
            self.fill.advance(bytes.len() as u64);
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
            self.store = Store::NotStoring;
            return Err(NotStored::Policy);
        };
        if head.declared_len.is_some_and(|len| len != received) {
            self.store = Store::NotStoring;
            self.fill.fail(FillFailure::Upstream);
            return Err(NotStored::Incomplete);
        }
        let object_head = Arc::new(ObjectHead::new(
            self.key.clone(),
            head.variant.clone(),
            head.status,
            head.headers.clone(),
            head.policy.clone(),
            received,
        ));
        let in_memory = memory.then(|| self.store_in_memory(&object_head));
        let on_disk = disk.and_then(|writer| self.store_on_disk(&object_head, writer));
        self.drop_older_copies(&object_head, in_memory.is_some(), on_disk.is_some());
        self.fill.complete();
        self.leave();
        self.shared.collapser.clear_hit_for_miss(&self.key);
        let stored = in_memory.or(on_disk).ok_or(NotStored::DiskError)?;
        bump(&self.shared.stats.stored);
        Ok(stored)
    }

    fn store_in_memory(&self, head: &Arc<ObjectHead>) -> Arc<StoredObject> {
        let chunks = self.fill.chunks();
        // One contiguous buffer: a hit is then head + body in one writev.
        let body: Box<[Bytes]> = if chunks.len() > 1 {
            let mut joined = BytesMut::with_capacity(head.body_len as usize);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            Box::new([joined.freeze()])
        } else {
            chunks.into_boxed_slice()
        };
        let object = Arc::new(StoredObject::new(Arc::clone(head), Body::Memory(body)));
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
                None
            }
        }
    }

    /// A tier that did not take the new response must not keep serving
    /// an older one of the same variant.
    fn drop_older_copies(&self, head: &ObjectHead, in_memory: bool, on_disk: bool) {
        let older = |variants: Option<crate::cache::tier::Variants>| {
            variants.and_then(|list| {
                list.iter()
                    .find(|o| o.head.variant == head.variant)
                    .cloned()
            })
        };
        if let (false, Some(memory)) = (in_memory, &self.shared.memory)
            && let Some(old) = older(memory.get(self.key.as_str()))
        {
            memory.remove_variant(&old);
        }
        if let (false, Some(disk)) = (on_disk, &self.shared.disk)
            && let Some(old) = older(disk.tier.get(self.key.as_str()))
        {
            disk.tier.remove_variant(&old);
            remove_files(&[old]);
        }
    }

    /// Gives up storing mid-body.
    fn abandon(&mut self, failure: FillFailure) {
        self.store = Store::NotStoring;
        bump(&self.shared.stats.fills_abandoned);
        self.fill.fail(failure);
        self.leave();
        if failure == FillFailure::TooLarge {
            self.shared.collapser.mark_hit_for_miss(&self.key);
        }
    }

    /// Lets followers go before any body; `mark` remembers the URL as
    /// hit-for-miss.
    fn release(&mut self, why: Release, mark: bool) {
        self.fill.release(why);
        self.leave();
        if mark {
            self.shared.collapser.mark_hit_for_miss(&self.key);
        }
    }

    fn leave(&mut self) {
        if self.registered {
            self.shared.collapser.leave(&self.key, &self.fill);
            self.registered = false;
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if let Store::Storing { .. } = self.store {
            bump(&self.shared.stats.fills_abandoned);
        }
        // No effect on a fill that already ended.
        self.fill.fail(FillFailure::Upstream);
        self.leave();
    }
}

/// A single valid `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value.to_str().ok()?.trim().parse().ok()
}

/// The response headers worth storing: hop-by-hop ones (and those its
/// `Connection` lists) and the framing go (RFC 9111 §3.1).
fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let hop = HopByHop::from_connection(
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let mut stored = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_str = name.as_str();
        if is_hop_by_hop(name_str) || hop.contains(name_str) || name_str == "content-length" {
            continue;
        }
        stored.append(name.clone(), value.clone());
    }
    stored
}
