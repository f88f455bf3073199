//! Looking a request up: find the variant that matches it (memory first,
//! then disk, promoting small disk objects to memory), ask its policy
//! what it is good for, and on a miss, or a stale entry, decide the
//! request's role in collapsed forwarding. Also the calls that follow a
//! stale lookup: `refresh` after a 304, `head_answered` after a HEAD's
//! 200, and `fill_alone`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

use crate::cache::admission;
use crate::cache::collapse::Role;
use crate::cache::fill::{Fill, FillHead, Release};
use crate::cache::filler::Filler;
use crate::cache::key::CacheKey;
use crate::cache::normalise::unshared_fields;
use crate::cache::object::{Body, ObjectHead, StoredObject};
use crate::cache::policy::{Decision, directive};
use crate::cache::reader::BodyReader;
use crate::cache::reply;
use crate::cache::status::{Fwd, Outcome};
use crate::cache::{Cache, Shared};
use crate::http::body::BodyFraming;
use crate::http::headers;
use crate::http::request::RequestHead;

/// What the cache offers for a request.
pub enum Lookup {
    /// Answer from the cache.
    Hit(Hit),
    /// A stored response exists but must be revalidated first.
    Stale(Stale),
    /// Nothing usable is stored.
    Miss(Miss),
    /// `only-if-cached` and nothing usable: answer 504 (RFC 9111 §5.2.1.7).
    OnlyIfCached,
    /// The cache takes no part: forward untouched.
    Bypass(Bypass),
}

/// Why a request does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// The cache is off.
    Off,
    /// Not GET or HEAD (unsafe methods invalidate after their response).
    Method,
    /// The target is not an http(s) URL the cache can key, or its path or
    /// query is not written as its key would be (see `CacheKey::exact`).
    Target,
    /// A GET or HEAD with a body: it can be sent upstream only once, and
    /// an answer from the cache may need a second request (a 304 that
    /// selects nothing is followed by a full fetch).
    Body,
    /// The request names in `Connection` a field it carries: the field
    /// goes no further (RFC 9110 §7.6.1), so the origin answers a request
    /// without it, and a variant keyed on it (`Vary`) would be stored
    /// under a value the origin never saw.
    ConnectionField,
}

impl Bypass {
    /// A Cache-Status `detail` token.
    pub fn detail(self) -> &'static str {
        match self {
            Bypass::Off => "off",
            Bypass::Method => "method",
            Bypass::Target => "target",
            Bypass::Body => "body",
            Bypass::ConnectionField => "connection-field",
        }
    }
}

/// A usable stored response.
pub struct Hit {
    /// The response.
    pub object: Arc<StoredObject>,
    /// Served stale (client's `max-stale`, or `stale-while-revalidate`).
    pub stale: bool,
    /// `stale-while-revalidate`: this request should revalidate the entry
    /// after answering (only one request is told so).
    pub revalidate: bool,
}

impl Hit {
    /// The Cache-Status outcome of this hit.
    pub fn outcome(&self, now: SystemTime) -> Outcome {
        Outcome::Hit {
            ttl: self.object.head.policy.ttl_seconds(now),
            stale: self.stale,
            detail: match (self.stale, self.revalidate) {
                (true, true) => Some("stale-while-revalidate"),
                (true, false) => Some("stale"),
                _ => None,
            },
        }
    }
}

/// A stored response that needs revalidation.
pub struct Stale {
    /// The stored response.
    pub object: Arc<StoredObject>,
    /// Fresh, but the request's directives asked for the origin.
    pub by_request: bool,
    /// Headers to add to the upstream request (RFC 9111 §4.3.1).
    pub validators: Vec<(HeaderName, HeaderValue)>,
    /// Stores the response if it is not a 304.
    pub filler: Filler,
}

impl Stale {
    /// `Fwd::Request` or `Fwd::Stale`, for Cache-Status.
    pub fn fwd(&self) -> Fwd {
        if self.by_request {
            Fwd::Request
        } else {
            Fwd::Stale
        }
    }
}

/// A request that must go to the origin.
pub struct Miss {
    /// `Fwd::UriMiss` or `Fwd::VaryMiss`.
    pub kind: Fwd,
    /// What this request does about it.
    pub role: MissRole,
}

/// A miss's part in collapsed forwarding.
pub enum MissRole {
    /// Fetch and fill (followers may be reading).
    Fill(Filler),
    /// Read another request's fill.
    Follow(Follower),
    /// Fetch, and store nothing.
    NoStore(NoStore),
}

/// Why a miss stores nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStore {
    /// HEAD: there is no body to store.
    Head,
    /// The request says `no-store` (RFC 9111 §5.2.1.5).
    RequestNoStore,
    /// An `If-Range` goes upstream as sent: the answer may be a 200 to a
    /// range request, or a part, which is not the response to store. (The
    /// other preconditions fill alone: a 200 is kept, a 304 or 412 not.)
    Conditional,
}

impl NoStore {
    /// A Cache-Status `detail` token.
    pub fn detail(self) -> &'static str {
        match self {
            NoStore::Head => "head",
            NoStore::RequestNoStore => "no-store",
            NoStore::Conditional => "conditional",
        }
    }
}

/// A request waiting on another's fill.
pub struct Follower {
    shared: Arc<Shared>,
    key: CacheKey,
    fill: Arc<Fill>,
}

impl Following {
    /// How a follower of a revalidation takes the entry up again
    /// (`Cache::lookup_alone`) rather than fetch it whole: after a 304
    /// refreshed it, or when the leader gave up or took too long (then it
    /// is revalidated alone, `stale-if-error` and all), or found the origin
    /// failing (then it stands in where it may). `None`: fetch it whole.
    pub fn looks_again(&self) -> Option<Release> {
        match self {
            Following::Released {
                why:
                    why @ (Release::Refreshed
                    | Release::FillerGone
                    | Release::TimedOut
                    | Release::OriginFailed(_)),
                ..
            } => Some(*why),
            _ => None,
        }
    }
}

/// What following a fill gave.
pub enum Following {
    /// Stream this head and body.
    Stream {
        /// The response head.
        head: Arc<FillHead>,
        /// Its body as it arrives.
        reader: BodyReader,
    },
    /// Fetch on your own with `filler`.
    Released {
        /// Why.
        why: Release,
        /// Stores the response if it turns out storable.
        filler: Filler,
    },
}

impl Follower {
    /// Waits (at most the collapse wait) for the fill's head.
    pub fn follow(self, request: &RequestHead) -> Following {
        let wait = self.shared.config.collapse_wait;
        match self.fill.follow(request, wait) {
            Ok((head, reader)) => Following::Stream {
                head,
                reader: BodyReader::from_fill(reader),
            },
            Err(why) => Following::Released {
                why,
                filler: Filler::new(self.shared, self.key, Fill::new(), false),
            },
        }
    }
}

/// The client's own preconditions (RFC 9110 §13.1): a request with one
/// gets an answer of its own (a 304, a 412, a 200 to a range request).
const PRECONDITIONS: [&str; 5] = [
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
];

/// A stored variant found for a request, or which kind of miss.
enum Found {
    Object(Arc<StoredObject>),
    UriMiss,
    VaryMiss,
}

impl Cache {
    /// Looks `head` up at `now`: see the module docs for what to do with
    /// each answer.
    pub fn lookup(&self, head: &RequestHead, now: SystemTime) -> Lookup {
        self.look(head, now, true, true)
    }

    /// `lookup`, for a request whose wait on another's revalidation of
    /// the entry came to nothing: a stale entry is revalidated alone.
    pub fn lookup_alone(&self, head: &RequestHead, now: SystemTime) -> Lookup {
        self.look(head, now, true, false)
    }

    /// `lookup`; `again` allows one more look when a fill stored the
    /// response between this look and joining the fills.
    fn look(&self, head: &RequestHead, now: SystemTime, again: bool, collapse: bool) -> Lookup {
        if !self.is_enabled() {
            return Lookup::Bypass(Bypass::Off);
        }
        if head.method != "GET" && head.method != "HEAD" {
            return Lookup::Bypass(Bypass::Method);
        }
        let only_if_cached = has_directive(head, "only-if-cached");
        // A GET the cache cannot answer goes upstream, unless the client
        // wants a stored response or nothing (RFC 9111 §5.2.1.7).
        let bypass = |why| {
            if only_if_cached {
                Lookup::OnlyIfCached
            } else {
                Lookup::Bypass(why)
            }
        };
        if !matches!(
            head.body_framing(),
            Ok(BodyFraming::Empty | BodyFraming::Length(0))
        ) {
            return bypass(Bypass::Body);
        }
        let Ok(key) = CacheKey::exact(&head.target) else {
            return bypass(Bypass::Target);
        };
        if drops_named_fields(head) {
            return bypass(Bypass::ConnectionField);
        }
        let kind = match self.find(&key, head) {
            Found::Object(object) => match object.head.policy.decide(head, now) {
                Decision::Fresh => return hit(object, false, false),
                Decision::StaleAllowed => return hit(object, true, false),
                Decision::Revalidate {
                    while_revalidate: true,
                    ..
                } => {
                    let wait = self.shared.config.collapse_wait;
                    let revalidate = object.claim_revalidation(now, wait);
                    return hit(object, true, revalidate);
                }
                Decision::Revalidate { by_request, .. } => {
                    if only_if_cached {
                        return Lookup::OnlyIfCached;
                    }
                    let alone = by_request || !collapse;
                    let filler = match self.revalidation_role(head, &object, key, alone) {
                        Ok(filler) => filler,
                        Err(follower) => {
                            return Lookup::Miss(Miss {
                                kind: Fwd::Stale,
                                role: MissRole::Follow(follower),
                            });
                        }
                    };
                    return Lookup::Stale(Stale {
                        validators: object.head.policy.validators(),
                        filler,
                        object,
                        by_request,
                    });
                }
            },
            Found::UriMiss => Fwd::UriMiss,
            Found::VaryMiss => Fwd::VaryMiss,
        };
        if head.header("range").is_some()
            && let Some(part) = self.stored_part(&key, head, now)
        {
            return part;
        }
        if only_if_cached {
            return Lookup::OnlyIfCached;
        }
        match self.miss_role(head, key, again) {
            // Nothing was stored for the URL: a response that is not kept
            // has no older copy to supersede.
            Some(MissRole::Fill(filler)) if kind == Fwd::UriMiss => Lookup::Miss(Miss {
                kind,
                role: MissRole::Fill(filler.with_nothing_stored()),
            }),
            Some(role) => Lookup::Miss(Miss { kind, role }),
            None => self.look(head, now, false, collapse),
        }
    }

    /// Who revalidates the stale `object`: concurrent plain GETs of it make
    /// one upstream request, as concurrent misses do. The first leads (its
    /// filler, registered); the others follow it (`Err`): they read its
    /// answer as it arrives, or look the entry up again (refreshed by a
    /// 304, or standing in for a failing origin).
    ///
    /// Only plain GETs (no directives, preconditions, range or
    /// credentials) of an entry that had a lifetime of its own collapse,
    /// those for one variant (`Vary`) apart from the URL's others, which
    /// its revalidation would only hold up. A request whose answer is its
    /// own, or whose directives decide what it may be given, revalidates
    /// alone; so does an entry that is stale from the start (`no-cache`,
    /// `max-age=0`), which a 304 leaves stale for the next request, and
    /// one with `Vary: *`, which no other request matches.
    fn revalidation_role(
        &self,
        head: &RequestHead,
        object: &StoredObject,
        key: CacheKey,
        alone: bool,
    ) -> Result<Filler, Follower> {
        let own_answer = ["range", "authorization", "cache-control", "pragma"];
        let variant = &object.head.variant;
        let shared_entry = variant.fields().is_some() && object.head.policy.had_lifetime();
        if alone
            || !shared_entry
            || head.method != "GET"
            || PRECONDITIONS
                .iter()
                .chain(&own_answer)
                .any(|name| head.header(name).is_some())
        {
            return Ok(self.fill_alone(key));
        }
        // Requests for one variant wait on one revalidation, apart from
        // the URL's other variants and its misses.
        let collapser = &self.shared.collapser;
        let (joined, role) = if variant.fields().is_some_and(<[_]>::is_empty) {
            (key.clone(), collapser.join(&key, || false))
        } else {
            let joined = key.of_variant(variant);
            let role = collapser.join_variant(&key, &joined);
            (joined, role)
        };
        let shared = Arc::clone(&self.shared);
        match role {
            Role::Lead(fill) => Ok(Filler::new(shared, key, fill, true).joined_as(joined)),
            Role::Follow(fill) => Err(Follower { shared, key, fill }),
            Role::Alone | Role::Stored => Ok(self.fill_alone(key)),
        }
    }

    /// What a miss does; `None` when the response was stored meanwhile
    /// (and `again` allows a second look).
    fn miss_role(&self, head: &RequestHead, key: CacheKey, again: bool) -> Option<MissRole> {
        if head.method == "HEAD" {
            return Some(MissRole::NoStore(NoStore::Head));
        }
        if has_directive(head, "no-store") {
            return Some(MissRole::NoStore(NoStore::RequestNoStore));
        }
        if head.header("if-range").is_some() {
            return Some(MissRole::NoStore(NoStore::Conditional));
        }
        if head.header("range").is_some() {
            // The 206 that comes back is kept as a part of the response,
            // for later ranges within it (a 200 as the whole response;
            // anything else not at all); nobody waits on it. So also with
            // preconditions.
            return Some(MissRole::Fill(self.fill_alone(key.partial())));
        }
        if PRECONDITIONS.iter().any(|name| head.header(name).is_some()) {
            // The client's preconditions go up as sent: a 304 or 412 is its
            // answer alone, but a 200 is the whole response, and is kept
            // (a crawler that revisits with validators fills the cache for
            // everyone). Nobody waits on it: the answer may be a 304.
            return Some(MissRole::Fill(self.fill_alone(key)));
        }
        // A response to a request with credentials is shared only if the
        // origin says so (RFC 9111 §3.5), which is known only once it
        // arrives: never make others wait on it.
        if head.header("authorization").is_some() {
            return Some(MissRole::Fill(self.fill_alone(key)));
        }
        let shared = Arc::clone(&self.shared);
        // Asked under the fills' lock: the indexes only, no disk read.
        let stored = || again && self.holds(&key, head);
        Some(match self.shared.collapser.join(&key, stored) {
            Role::Lead(fill) => MissRole::Fill(Filler::new(shared, key, fill, true)),
            Role::Follow(fill) => MissRole::Follow(Follower { shared, key, fill }),
            Role::Alone => MissRole::Fill(self.fill_alone(key).renewing_hit_for_miss()),
            Role::Stored => return None,
        })
    }

    /// A stored part of the URL's response that holds the range `head`
    /// asks for, while fresh (or stale as the request allows).
    fn stored_part(&self, key: &CacheKey, head: &RequestHead, now: SystemTime) -> Option<Lookup> {
        let variants = self.shared.memory.as_ref()?.get(key.partial().as_str())?;
        let object = variants
            .iter()
            .rev()
            .find(|o| selects(o, head) && reply::covers(o, head))?;
        match object.head.policy.decide(head, now) {
            Decision::Fresh => Some(hit(Arc::clone(object), false, false)),
            Decision::StaleAllowed => Some(hit(Arc::clone(object), true, false)),
            Decision::Revalidate { .. } => None,
        }
    }

    /// A filler nobody follows (a stale entry revalidated alone, a
    /// hit-for-miss URL, a background revalidation's full answer).
    pub fn fill_alone(&self, key: CacheKey) -> Filler {
        Filler::new(Arc::clone(&self.shared), key, Fill::new(), false)
    }

    /// Finds the most recent stored variant matching `head`.
    fn find(&self, key: &CacheKey, head: &RequestHead) -> Found {
        let mut uri_known = false;
        if let Some(variants) = self
            .shared
            .memory
            .as_ref()
            .and_then(|m| m.get(key.as_str()))
        {
            uri_known = true;
            if let Some(object) = variants.iter().rev().find(|o| selects(o, head)) {
                return Found::Object(Arc::clone(object));
            }
        }
        let Some(disk) = &self.shared.disk else {
            return if uri_known {
                Found::VaryMiss
            } else {
                Found::UriMiss
            };
        };
        let variants = disk.tier.get(key.as_str());
        let found = variants.and_then(|list| list.iter().rev().find(|o| selects(o, head)).cloned());
        if let Some(object) = found
            && let Some(object) = self.load_from_disk(object)
        {
            return Found::Object(object);
        }
        // Asked again: a broken file found above is gone from the index.
        if uri_known || disk.tier.get(key.as_str()).is_some() {
            Found::VaryMiss
        } else {
            Found::UriMiss
        }
    }

    /// Whether a tier's index has a response for `head` under `key`,
    /// without reading or checking it (that is `find`'s work).
    fn holds(&self, key: &CacheKey, head: &RequestHead) -> bool {
        let selected = |variants: Option<crate::cache::tier::Variants>| {
            variants.is_some_and(|list| list.iter().any(|o| selects(o, head)))
        };
        let memory = &self.shared.memory;
        let disk = &self.shared.disk;
        memory
            .as_ref()
            .is_some_and(|m| selected(m.get(key.as_str())))
            || disk
                .as_ref()
                .is_some_and(|d| selected(d.tier.get(key.as_str())))
    }

    /// A disk object checked for use: small ones are read into memory
    /// (and kept there), large ones, and those the memory tier would not
    /// keep, verified once then streamed from disk.
    pub(crate) fn load_from_disk(&self, object: Arc<StoredObject>) -> Option<Arc<StoredObject>> {
        let disk = self.shared.disk.as_ref()?;
        let memory = self.shared.memory.as_ref()?;
        let Body::Disk(on_disk) = &object.body else {
            return Some(object);
        };
        if object.head.body_len > self.shared.config.mem_max_object
            || on_disk.file.memory_refused.load(Ordering::Acquire)
        {
            return disk.verify(&object).then_some(object);
        }
        let in_memory = || {
            memory.get(object.head.key.as_str()).and_then(|variants| {
                variants
                    .iter()
                    .find(|o| Arc::ptr_eq(&o.head, &object.head))
                    .cloned()
            })
        };
        // Concurrent first hits: one reads the file back, the others take
        // the copy it put in memory.
        let _reading = on_disk
            .file
            .checking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(read_meanwhile) = in_memory() {
            return Some(read_meanwhile);
        }
        let body = disk.read_whole(&object)?;
        let len = object.head.body_len;
        let promoted = Arc::new(StoredObject::new(
            Arc::clone(&object.head),
            Body::in_memory(vec![body], len, &self.shared.pages),
        ));
        // Not over a newer response of the variant that a fill stored in
        // memory meanwhile.
        let kept = memory.put_if_newer(Arc::clone(&promoted));
        if !disk.tier.holds_exact(&object) {
            // Purged or replaced while the file was read: the copy must
            // not outlive it. (`Cache::remove` empties the disk tier
            // first, so either this sees the removal, or the memory
            // tier's removal comes after the copy was put.)
            memory.remove_exact(&promoted);
        } else if kept && in_memory().is_none() {
            // Too heavy for the tier's budget with its head: reading it
            // back for every hit would only be thrown away again.
            on_disk.file.memory_refused.store(true, Ordering::Release);
        }
        Some(promoted)
    }

    /// Takes a forwarded HEAD's 200 for the stored GET response `object`
    /// (RFC 9111 §4.3.5): when a validator it sends, or its
    /// `Content-Length`, differs from the stored one, the stored response
    /// is out of date and is dropped from both tiers. Says whether it was.
    pub fn head_answered(&self, object: &StoredObject, answer: &http::HeaderMap) -> bool {
        if !outdated_by_head(&object.head.headers, object.head.body_len, answer) {
            return false;
        }
        // This very response, in either tier (they share its head), not a
        // newer one of its variant stored meanwhile.
        for tier in self.tiers() {
            tier.remove_with_head(&object.head);
        }
        true
    }

    /// Applies a revalidation's 304 (RFC 9111 §4.3.4): the stored headers
    /// updated by the 304's, the policy refreshed, the body kept. Returns
    /// the updated object to answer from; `None` when the 304 does not
    /// select this entry (then fetch again without validators).
    ///
    /// A disk object's updated head is kept in the index only: after a
    /// restart the file's older head is read back. That head is stale by
    /// then when a stale entry was revalidated (it is revalidated once
    /// more); an entry still fresh that a client's `no-cache` had
    /// revalidated, and whose 304 shortened its lifetime, is served on its
    /// first terms until they run out.
    pub fn refresh(
        &self,
        object: &Arc<StoredObject>,
        head: &RequestHead,
        answer: &http::response::Parts,
        now: SystemTime,
    ) -> Option<Arc<StoredObject>> {
        let old = &object.head;
        let (headers, policy) = old
            .policy
            .refresh(head, old.status, &old.headers, answer, now)?;
        let new_head = Arc::new(ObjectHead::new(
            old.key.clone(),
            old.variant.clone(),
            old.status,
            headers,
            policy,
            old.body_len,
        ));
        let refreshed = Arc::new(StoredObject::new(new_head, object.body.share()));
        // A request that says `no-store` has its answer kept by no one
        // (RFC 9111 §5.2.1.5): the stored entry stays as it was.
        if has_directive(head, "no-store") {
            return Some(refreshed);
        }
        // The updated response answers this request; it is kept for others
        // only if it may still be stored (a 304 that says `private` or
        // `no-store`, or answers a request with credentials, makes it the
        // requester's, RFC 9111 §3, §3.5) and still varies as it did (the
        // variant was keyed on the old `Vary`). Else the entry goes.
        let shareable = refreshed.head.policy.is_storable()
            && old.headers.get_all(http::header::VARY).iter().eq(refreshed
                .head
                .headers
                .get_all(http::header::VARY)
                .iter());
        if !shareable {
            for tier in self.tiers() {
                tier.remove_with_head(&object.head);
            }
            return Some(refreshed);
        }
        let tier = match &refreshed.body {
            Body::Memory(_) | Body::Pages(_) => self.shared.memory.as_ref(),
            Body::Disk(_) => self.shared.disk.as_ref().map(|d| &d.tier),
        };
        // A PURGE or a newer response may have come while the origin was
        // asked: the refreshed entry then answers this request only.
        if let Some(tier) = tier {
            tier.replace_exact(object, kept_for_others(&refreshed, &answer.headers, now));
        }
        Some(refreshed)
    }

    /// The tiers there are: memory, then disk.
    fn tiers(&self) -> impl Iterator<Item = &crate::cache::tier::Tier> {
        self.shared
            .memory
            .as_ref()
            .into_iter()
            .chain(self.shared.disk.as_ref().map(|d| &d.tier))
    }

    /// The configured collapse wait.
    pub fn collapse_wait(&self) -> Duration {
        self.shared.config.collapse_wait
    }
}

fn hit(object: Arc<StoredObject>, stale: bool, revalidate: bool) -> Lookup {
    Lookup::Hit(Hit {
        object,
        stale,
        revalidate,
    })
}

/// What of a refreshed entry is kept for other clients at `now`: all of it
/// but the fields its `no-cache="..."` or `private="..."` name, and a
/// cookie the 304 (`answer`) set: those were sent to this client only. The
/// entry keeps no cookie then (the one it had was replaced by this
/// client's), nor when the 304 took away what let it share one: a lifetime
/// of its own, fresh (admission's rule for a response that sets a cookie).
fn kept_for_others(
    refreshed: &Arc<StoredObject>,
    answer: &http::HeaderMap,
    now: SystemTime,
) -> Arc<StoredObject> {
    let head = &refreshed.head;
    let mut unshared = unshared_fields(&head.headers);
    let drops_cookie = admission::sets_cookie(&head.headers)
        && (admission::sets_cookie(answer)
            || admission::sets_cookie_for_one(&head.headers)
            || !head.policy.is_fresh(now));
    if drops_cookie {
        unshared.extend(["set-cookie".to_string(), "set-cookie2".to_string()]);
    }
    if unshared.is_empty() {
        return Arc::clone(refreshed);
    }
    let mut headers = head.headers.clone();
    for field in &unshared {
        headers.remove(field.as_str());
    }
    let kept = ObjectHead::new(
        head.key.clone(),
        head.variant.clone(),
        head.status,
        headers,
        head.policy.clone(),
        head.body_len,
    );
    Arc::new(StoredObject::new(Arc::new(kept), refreshed.body.share()))
}

/// Whether `head` selects the stored variant `object` (RFC 9111 §4.1).
fn selects(object: &StoredObject, head: &RequestHead) -> bool {
    object.head.variant.selects(head, &object.head.headers)
}

fn has_directive(head: &RequestHead, name: &str) -> bool {
    directive(head.header_values("cache-control"), name).is_some()
}

/// Whether `head` names in `Connection` a field it also carries, beyond the
/// hop-by-hop ones (which never take part in a key). Most requests have no
/// `Connection` header, or only `keep-alive` or `close` in it.
pub(crate) fn drops_named_fields(head: &RequestHead) -> bool {
    let hop = headers::HopByHop::from_connection(head.header_values("connection"));
    hop.has_listed() && head.headers.iter().any(|field| hop.lists(field.name()))
}

/// Whether a HEAD's 200 `answer` shows the stored GET response (its
/// `stored` headers, a body of `len` bytes) out of date: an `ETag` or a
/// `Last-Modified` it sends that the stored one does not match, or a
/// `Content-Length` other than the stored body's.
fn outdated_by_head(stored: &http::HeaderMap, len: u64, answer: &http::HeaderMap) -> bool {
    let differs = |name: http::header::HeaderName| {
        answer.get(&name).is_some_and(|value| {
            stored.get(&name).map(|v| v.as_bytes().trim_ascii())
                != Some(value.as_bytes().trim_ascii())
        })
    };
    let length = answer
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    differs(http::header::ETAG)
        || differs(http::header::LAST_MODIFIED)
        || length.is_some_and(|length| length != len)
}

#[cfg(test)]
mod head_tests {
    use super::outdated_by_head;
    use crate::cache::testing::headers;

    #[test]
    fn a_head_answer_outdates_on_any_validator_or_length_it_sends_that_differs() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let same = headers(&[("etag", "\"v1\""), ("content-length", "10")]);
        assert!(!outdated_by_head(&stored, 10, &same));
        assert!(!outdated_by_head(&stored, 10, &headers(&[])));
        assert!(outdated_by_head(
            &stored,
            10,
            &headers(&[("etag", "\"v2\"")])
        ));
        assert!(outdated_by_head(&stored, 11, &same));
        let later = headers(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]);
        assert!(outdated_by_head(&stored, 10, &later));
        assert!(outdated_by_head(
            &headers(&[]),
            10,
            &headers(&[("etag", "\"v1\"")])
        ));
    }
}
