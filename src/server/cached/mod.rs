//! The cache phase of a forwarded request, between routing and the
//! upstream. The request is looked up once (`Cache::lookup`), and then:
//!
//! - **hit**: answered from the stored response (`answer::from_store`: in
//!   full, 304 or 412 for the client's preconditions, 206 or 416 for a
//!   range), with no origin contact; for `stale-while-revalidate` the
//!   entry is then revalidated by the cache's own threads, with no client
//!   waiting (`refresh`);
//! - **stale**: revalidated (`upstream::revalidate`): a 304 updates the
//!   stored headers and the client is answered from the entry; any other
//!   response is relayed and stored; an origin that fails lets the stale
//!   entry answer when `stale-if-error` or a disconnected origin allows;
//! - **miss, filling**: fetched, relayed, and stored as it streams
//!   (`upstream::fill`); concurrent misses for the same URL follow it;
//! - **miss, following**: another request's fill is read as it arrives
//!   (`answer::follow`), or fetched alone when the fill lets it go;
//! - **miss that stores nothing** (HEAD, `no-store` requests,
//!   `If-Range`) and **bypass** (methods other than GET and HEAD,
//!   the cache off): forwarded untouched (`upstream::pass`); an unsafe
//!   method that succeeds invalidates the URL (RFC 9111 §4.4);
//! - **only-if-cached** with nothing usable: 504 (RFC 9111 §5.2.1.7).
//!
//! Every proxied response carries `Cache-Status` (RFC 9211) when the cache
//! is on, the outcome goes to the access log (`Served::cache`) and to the
//! cache's counters. `PURGE` is answered here too (`purge`). What is
//! written to the client and when is decided here; the HTTP rules of
//! caching are the cache library's (`crate::cache`).

mod answer;
mod background;
mod refresh;
mod upstream;

pub use background::BackgroundFills;
pub use refresh::Refresher;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::access;
use crate::cache::object::Body;
use crate::cache::stats;
use crate::cache::{
    Bypass, Cache, CacheConfig, CacheError, Fwd, Lookup, Miss, MissRole, Outcome, Release,
    TierUsage,
};
use crate::config::ServeConfig;
use crate::config::size::size_text;
use crate::error::ProxyError;
use crate::http::body::BodyFraming;
use crate::http::request::RequestHead;
use crate::metrics::{CacheFigures, TierFigures};
use crate::rules::Rules;
use crate::server::conn::ClientConn;
use crate::server::context::Context;
use crate::server::finish::Served;
use crate::server::target::Origin;

/// How long a URL whose response could not be shared is fetched by each
/// request on its own, without collapsing (Varnish's hit-for-miss).
const HIT_FOR_MISS: Duration = Duration::from_secs(120);

/// Most stored bodies in memory files: a 256 MiB memory tier holds at
/// most 8,192 bodies of 32 KiB.
pub const PAGE_FILES_MAX: usize = 8192;

/// How many stored bodies may be in memory files (`cache::pages`), each
/// with a file descriptor, under an open-files limit of `file_limit`: what
/// the connections leave (`listen::connection_files`), up to
/// [`PAGE_FILES_MAX`].
pub fn page_files(file_limit: u64, config: &ServeConfig) -> usize {
    let connections = crate::server::listen::connection_files(config);
    usize::try_from(file_limit.saturating_sub(connections))
        .unwrap_or(usize::MAX)
        .min(PAGE_FILES_MAX)
}

/// The cache's settings from the server's, with at most `page_files`
/// bodies in memory files.
pub fn cache_config(config: &ServeConfig, page_files: usize) -> CacheConfig {
    CacheConfig {
        mem_bytes: config.cache_mem,
        mem_max_object: config.cache_max_object,
        dir: config.cache_dir.clone(),
        dir_bytes: config.cache_dir_size,
        dir_max_object: config.cache_dir_max_object,
        // A follower waits for the fill as long as its own fetch would
        // wait for the origin.
        collapse_wait: config.upstream_timeout,
        hit_for_miss: HIT_FOR_MISS,
        page_files,
    }
}

/// Opens the cache the configuration asks for, and says so in the log.
///
/// # Errors
/// When the disk tier's directory cannot be used.
pub fn open(config: &ServeConfig, page_files: usize) -> Result<Cache, CacheError> {
    let cache = Cache::open(cache_config(config, page_files))?;
    let size = size_text;
    if !cache.is_enabled() {
        log::info!("cache: off (cache_mem = 0)");
    } else if let Some(dir) = &config.cache_dir {
        log::info!(
            "cache: {} in memory (objects up to {}), {} on disk in {} (objects up to {}); reading its index in the background",
            size(config.cache_mem),
            size(cache.memory_max_object()),
            size(config.cache_dir_size),
            dir.display(),
            size(
                cache
                    .disk_max_object()
                    .unwrap_or(config.cache_dir_max_object)
            ),
        );
    } else {
        log::info!(
            "cache: {} in memory (objects up to {}), no disk cache",
            size(config.cache_mem),
            size(cache.memory_max_object()),
        );
    }
    if let Some(warning) = memory_warning(config.cache_mem, usable_memory()) {
        log::warn!("{warning}");
    }
    Ok(cache)
}

/// A warning when `cache_mem` takes more than half of `usable` bytes (the
/// machine's memory, or its cgroup's limit): the cache fills up to its
/// budget, and the rest of the process and the kernel's buffers need room
/// too, or the kernel's out-of-memory killer ends the proxy.
fn memory_warning(cache_mem: u64, usable: Option<u64>) -> Option<String> {
    let usable = usable?;
    (cache_mem > usable / 2).then(|| {
        format!(
            "cache_mem {} is more than half of the {} of memory this process may use: \
             when the cache fills, the proxy may run out of memory; lower --cache-mem",
            size_text(cache_mem),
            roughly(usable)
        )
    })
}

/// `bytes` to a tenth of a GiB (or a MiB, below one GiB).
fn roughly(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// The memory this process may use: the machine's, or less where a
/// cgroup it is in sets a limit (a container, a systemd `MemoryMax=`).
/// `None` where none of them can be read.
fn usable_memory() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|text| {
        let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    let limits = cgroup_memory_files(&read("/proc/self/cgroup").unwrap_or_default())
        .into_iter()
        // "max" (no limit) does not parse; cgroup v1 says no limit with a
        // number larger than any memory.
        .filter_map(|path| read(&path)?.trim().parse::<u64>().ok());
    total.into_iter().chain(limits).min()
}

/// The files that hold the memory limits of the cgroups a process is in,
/// given its `/proc/self/cgroup`: cgroup v2's `memory.max` of its group
/// and of every group above it, and cgroup v1's `memory.limit_in_bytes`.
fn cgroup_memory_files(proc_self_cgroup: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            // v2: the group's own path, then each one above it.
            let mut dir = path.trim_end_matches('/');
            loop {
                files.push(format!("/sys/fs/cgroup{dir}/memory.max"));
                match dir.rfind('/') {
                    Some(at) => dir = &dir[..at],
                    None => break,
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let path = path.trim_end_matches('/');
            files.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    files
}

/// One forwarded request, as every step of the cache phase sees it.
pub struct Exchange<'a> {
    pub conn: &'a mut ClientConn,
    pub head: &'a RequestHead,
    pub origin: &'a Origin,
    pub request_id: &'a str,
    pub rules: &'a Arc<Rules>,
    pub ctx: &'a Context,
    /// The worker's copy buffer.
    pub buf: &'a mut [u8],
}

impl Exchange<'_> {
    fn cache(&self) -> &Cache {
        &self.ctx.cache
    }
}

/// The cache phase for `head`, routed to `origin`: answered from the
/// cache, or forwarded through it.
///
/// # Errors
/// A `ProxyError` when nothing has been sent to the client yet (the
/// upstream failed and no stale entry may stand in); failures after the
/// response head went out are reported in `Served`.
pub fn serve(
    conn: &mut ClientConn,
    head: &RequestHead,
    origin: &Origin,
    request_id: &str,
    rules: &Arc<Rules>,
    ctx: &Context,
    buf: &mut [u8],
) -> Result<Served, ProxyError> {
    let mut ex = Exchange {
        conn,
        head,
        origin,
        request_id,
        rules,
        ctx,
        buf,
    };
    let served = by_lookup(&mut ex, true, Staleness::Collapse)?;
    if let Some(outcome) = &served.cache {
        ctx.cache.stats().record(outcome);
        if served_from_cache(outcome) {
            ctx.cache.stats().served_bytes(served.bytes);
        }
    }
    Ok(served)
}

/// What `by_lookup` does with a stale entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staleness {
    /// Revalidates it, concurrent requests waiting on one revalidation.
    Collapse,
    /// Revalidates it alone: the revalidation waited on came to nothing.
    Alone,
    /// The revalidation waited on found the origin failing (as in
    /// `Release::OriginFailed`): the entry stands in where `stale-if-error`
    /// allows, else it is revalidated alone.
    OriginFailed(Option<u16>),
}

/// Answers by what the cache holds for the request. A hit whose file
/// changed before it could be sent, when `may_look_again`, looks once
/// more: the file is then read back and dropped, and the request fetched.
/// Not for a request with a body, which the hit has read away.
fn by_lookup(
    ex: &mut Exchange<'_>,
    may_look_again: bool,
    staleness: Staleness,
) -> Result<Served, ProxyError> {
    let now = SystemTime::now();
    let lookup = if staleness == Staleness::Collapse {
        ex.ctx.cache.lookup(ex.head, now)
    } else {
        ex.ctx.cache.lookup_alone(ex.head, now)
    };
    match lookup {
        Lookup::Hit(hit) => {
            let outcome = hit.outcome(now);
            match answer::hit(ex, &hit.object, outcome, now) {
                Ok(served) => {
                    // A HEAD or a 304 sends nothing from the file.
                    if matches!(hit.object.body, Body::Disk(_)) && served.bytes > 0 {
                        stats::bump(&ex.ctx.cache.stats().disk_hits);
                    }
                    if hit.revalidate {
                        upstream::refresh_later(ex, &hit.object);
                    }
                    Ok(served)
                }
                Err(unsent) => {
                    let bodiless = matches!(
                        ex.head.body_framing(),
                        Ok(BodyFraming::Empty | BodyFraming::Length(0))
                    );
                    if may_look_again && bodiless {
                        by_lookup(ex, false, staleness)
                    } else {
                        Err(unsent.into_error())
                    }
                }
            }
        }
        Lookup::Stale(stale) => match staleness {
            Staleness::OriginFailed(status) => upstream::stand_in(ex, stale, status),
            _ => upstream::revalidate(ex, stale),
        },
        Lookup::Miss(Miss { kind, role }) => match role {
            MissRole::Fill(filler) => upstream::fill(ex, kind, filler, None),
            MissRole::Follow(follower) => {
                let following = follower.follow(ex.head);
                if kind == Fwd::Stale
                    && let Some(why) = following.looks_again()
                {
                    // The entry as it now stands: fresh when a 304
                    // refreshed it, else standing in for a failing origin
                    // or revalidated alone.
                    let again = match why {
                        Release::OriginFailed(status) => Staleness::OriginFailed(status),
                        _ => Staleness::Alone,
                    };
                    return by_lookup(ex, may_look_again, again);
                }
                answer::follow(ex, kind, following)
            }
            MissRole::NoStore(why) => upstream::pass(ex, Some((kind, why.detail()))),
        },
        Lookup::OnlyIfCached => Ok(answer::not_cached(ex)),
        Lookup::Bypass(Bypass::Off) => upstream::pass(ex, None),
        Lookup::Bypass(why) => upstream::pass(ex, Some((Fwd::Bypass, why.detail()))),
    }
}

/// Whether the body sent came from the cache (a stored object or a fill
/// being written), not straight from the origin.
fn served_from_cache(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Hit { .. } | Outcome::StaleOnError { .. } => true,
        Outcome::Forward {
            collapsed,
            fwd_status,
            ..
        } => *collapsed || *fwd_status == Some(304),
        Outcome::NotForwarded { .. } => false,
    }
}

/// `PURGE <url>` (Squid's and Varnish's habit): every variant of the URL
/// leaves both tiers. 200 when something was there, 404 when not.
///
/// # Errors
/// `PurgeDenied` for a client outside `purge_clients`; `BadRequest` for a
/// URL the cache cannot key.
pub fn purge(
    conn: &mut ClientConn,
    head: &RequestHead,
    request_id: &str,
    rules: &Rules,
    ctx: &Context,
) -> Result<Served, ProxyError> {
    let ip = conn.peer.ip().to_canonical();
    if !access::allows_client(ip, &rules.purge_clients) {
        return Err(ProxyError::PurgeDenied { addr: ip });
    }
    let found = ctx
        .cache
        .purge(&head.target)
        .map_err(|err| ProxyError::BadRequest(err.to_string()))?;
    if found {
        log::info!("{} {request_id}: purged {}", conn.peer, head.target);
    }
    Ok(answer::purged(conn, head, request_id, found, ctx))
}

/// The cache's counters and gauges for `/metrics`.
pub fn figures(cache: &Cache, background: &BackgroundFills) -> CacheFigures {
    let stats = cache.stats();
    let read = stats::read;
    let tier = |usage: TierUsage| TierFigures {
        urls: usage.urls,
        bytes: usage.bytes,
        capacity: usage.capacity,
    };
    let (memory, disk) = cache.usage();
    CacheFigures {
        hits: read(&stats.hits),
        disk_hits: read(&stats.disk_hits),
        misses: read(&stats.misses),
        revalidated_not_modified: read(&stats.revalidated_not_modified),
        revalidated_modified: read(&stats.revalidated_modified),
        collapsed: read(&stats.collapsed),
        stale_served: read(&stats.stale_served),
        bypassed: read(&stats.bypassed),
        bytes_served: read(&stats.bytes_served),
        stored: read(&stats.stored),
        evictions_memory: read(&stats.evictions_memory),
        evictions_disk: read(&stats.evictions_disk),
        purges: read(&stats.purges),
        invalidations: read(&stats.invalidations),
        fills_abandoned: read(&stats.fills_abandoned),
        fills_passed_on: read(&stats.fills_passed_on),
        followers_let_go: read(&stats.followers_let_go),
        disk_write_errors: read(&stats.disk_write_errors),
        disk_corrupt: read(&stats.disk_corrupt),
        disk_verified: read(&stats.disk_verified),
        memory: tier(memory),
        disk: disk.map(tier),
        fills_in_progress: cache.fills_in_progress(),
        fills_received_apart: background.running(),
        fill_memory_bytes: cache.inflight_bytes(),
        memory_files: cache.memory_files(),
        disk_loaded: cache.is_loaded(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_files_get_what_the_connections_leave() {
        // 10,000 clients, 512 workers (three upstream each), 1,000 tunnels,
        // 256 spare: 12,792 descriptors; a disk tier, 512 more.
        let mut config = ServeConfig::default();
        let needed = 12_792;
        assert_eq!(crate::server::listen::connection_files(&config), needed);
        assert_eq!(page_files(needed, &config), 0);
        assert_eq!(
            page_files(needed - 1, &config),
            0,
            "short of the connections"
        );
        assert_eq!(page_files(needed + 100, &config), 100);
        assert_eq!(page_files(1 << 20, &config), PAGE_FILES_MAX);
        assert_eq!(page_files(0, &config), 0);
        config.cache_dir = Some("/var/cache/fetchproxy".into());
        assert_eq!(page_files(needed + 100, &config), 0, "a file per worker");
        assert_eq!(page_files(needed + 612, &config), 100);
    }

    #[test]
    fn a_cache_over_half_the_memory_is_warned_of() {
        const MIB: u64 = 1 << 20;
        assert_eq!(memory_warning(256 * MIB, Some(512 * MIB)), None);
        assert_eq!(memory_warning(256 * MIB, None), None);
        let warning = memory_warning(1 << 40, Some(23 << 30)).expect("1 TiB of 23 GiB");
        assert!(
            warning.starts_with("cache_mem 1TiB is more than half of the 23.0 GiB"),
            "{warning}"
        );
        assert!(warning.contains("--cache-mem"), "{warning}");
        assert!(memory_warning(300 * MIB, Some(512 * MIB)).is_some());
        // This machine's memory, or its container's, is readable here.
        assert!(usable_memory().is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn the_memory_limits_are_read_up_the_cgroup_tree() {
        assert_eq!(
            cgroup_memory_files("0::/system.slice/fetchproxy.service\n"),
            [
                "/sys/fs/cgroup/system.slice/fetchproxy.service/memory.max",
                "/sys/fs/cgroup/system.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
        );
        assert_eq!(cgroup_memory_files("0::/\n"), ["/sys/fs/cgroup/memory.max"]);
        assert_eq!(
            cgroup_memory_files("4:cpu,cpuacct:/docker/ab\n7:memory:/docker/ab\n"),
            ["/sys/fs/cgroup/memory/docker/ab/memory.limit_in_bytes"]
        );
    }
}
