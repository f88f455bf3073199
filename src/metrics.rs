//! The server's counters for `GET /metrics` and their rendering in the
//! Prometheus text exposition format (version 0.0.4). Counting takes no lock
//! and allocates nothing: a finished request costs four or five relaxed
//! atomic adds, a forwarded one two more for the upstream histogram, and a
//! job two for the busy-worker gauge.
//! Gauges that other parts already keep (open connections, queue length) are
//! read when the page is rendered. No logging here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::PROXY_STATUS_TYPES;
use crate::pump::TunnelEnd;

/// The `Content-Type` of the rendered page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of both latency histograms' buckets.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Status codes are counted one by one over this range; others (there
/// should be none) are counted at its nearer end.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
const STATUS_SLOTS: usize = (STATUS_MAX - STATUS_MIN + 1) as usize;

/// One finished request, as far as the counters care.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// How long it took; `None` leaves it out of the duration histogram
    /// (a CONNECT tunnel, whose duration is the tunnel's life).
    pub duration: Option<Duration>,
    /// The `Proxy-Status` error type, when the request ended in an error.
    pub error: Option<&'a str>,
    /// The client closed its connection before the whole answer.
    pub client_left: bool,
}

/// Values read from elsewhere at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub connections_open: usize,
    pub workers: usize,
    pub workers_busy: u64,
    pub queue_length: usize,
    pub queue_capacity: usize,
    pub tunnels_open: usize,
    pub draining: bool,
    /// The cache's counters and gauges (all zero when it is off).
    pub cache: CacheFigures,
}

/// The cache's figures, read from its counters and stores at render time.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheFigures {
    /// Answered from the cache (stale answers included).
    pub hits: u64,
    /// Of those, answered from the disk tier.
    pub disk_hits: u64,
    /// Went to the origin for want of a usable entry.
    pub misses: u64,
    /// Revalidations answered 304.
    pub revalidated_not_modified: u64,
    /// Revalidations answered with a new response.
    pub revalidated_modified: u64,
    /// Read from another request's fill.
    pub collapsed: u64,
    /// Stale answers: allowed by the client or the response, or standing
    /// in for a failed origin.
    pub stale_served: u64,
    /// Requests the cache took no part in (other methods, cache off).
    pub bypassed: u64,
    /// Body bytes sent from the cache.
    pub bytes_served: u64,
    /// Responses stored.
    pub stored: u64,
    pub evictions_memory: u64,
    pub evictions_disk: u64,
    /// PURGE requests that removed something.
    pub purges: u64,
    /// URLs invalidated by unsafe methods.
    pub invalidations: u64,
    /// Fills given up mid-body.
    pub fills_abandoned: u64,
    /// Fills given up that passed the rest of the body on to followers.
    pub fills_passed_on: u64,
    /// Followers let go for lagging behind a body passed on.
    pub followers_let_go: u64,
    pub disk_write_errors: u64,
    /// Disk objects found broken and dropped.
    pub disk_corrupt: u64,
    /// Disk objects read back against their checksum before first use.
    pub disk_verified: u64,
    /// URLs, bytes and budget of the memory tier.
    pub memory: TierFigures,
    /// The same for the disk tier, when there is one.
    pub disk: Option<TierFigures>,
    /// Fills in progress that other requests can follow.
    pub fills_in_progress: usize,
    /// Of those, the ones received by a thread of their own.
    pub fills_received_apart: usize,
    /// Body bytes held in memory by fills in progress.
    pub fill_memory_bytes: u64,
    /// Stored bodies in memory files, each holding a file descriptor.
    pub memory_files: usize,
    /// The disk tier's index has been read (true without a disk tier).
    pub disk_loaded: bool,
}

/// One cache tier's occupancy.
#[derive(Debug, Clone, Copy, Default)]
pub struct TierFigures {
    pub urls: u64,
    pub bytes: u64,
    pub capacity: u64,
}

/// The counters of one running server.
#[derive(Debug)]
pub struct Metrics {
    started: SystemTime,
    connections_accepted: AtomicU64,
    by_status: Box<[AtomicU64]>,
    by_error: [AtomicU64; PROXY_STATUS_TYPES.len()],
    body_bytes: AtomicU64,
    client_aborts: AtomicU64,
    durations: Histogram,
    upstream_connects: AtomicU64,
    upstream_retries: AtomicU64,
    upstream_waits: Histogram,
    workers_busy: AtomicU64,
    worker_panics: AtomicU64,
    late_wakeups: AtomicU64,
    tunnels_ended: [AtomicU64; TunnelEnd::ALL.len()],
    /// Tunnel bytes from the client to the target.
    tunnel_bytes_up: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            connections_accepted: AtomicU64::new(0),
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            by_error: std::array::from_fn(|_| AtomicU64::new(0)),
            body_bytes: AtomicU64::new(0),
            client_aborts: AtomicU64::new(0),
            durations: Histogram::new(),
            upstream_connects: AtomicU64::new(0),
            upstream_retries: AtomicU64::new(0),
            upstream_waits: Histogram::new(),
            workers_busy: AtomicU64::new(0),
            worker_panics: AtomicU64::new(0),
            late_wakeups: AtomicU64::new(0),
            tunnels_ended: std::array::from_fn(|_| AtomicU64::new(0)),
            tunnel_bytes_up: AtomicU64::new(0),
        }
    }

    /// Counts a client connection taken into the loop.
    pub fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request (or one closed tunnel).
    pub fn request(&self, finished: &Finished<'_>) {
        let status = finished.status.clamp(STATUS_MIN, STATUS_MAX);
        self.by_status[usize::from(status - STATUS_MIN)].fetch_add(1, Ordering::Relaxed);
        if finished.bytes > 0 {
            self.body_bytes.fetch_add(finished.bytes, Ordering::Relaxed);
        }
        if finished.client_left {
            self.client_aborts.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(error) = finished.error {
            // Every type the proxy answers with is listed; see error.rs.
            if let Some(index) = PROXY_STATUS_TYPES.iter().position(|t| *t == error) {
                self.by_error[index].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(duration) = finished.duration {
            self.durations.observe(duration);
        }
    }

    /// Counts a closed tunnel by why it ended, with its bytes from the
    /// client (those to the client count as response body bytes).
    pub fn tunnel_ended(&self, end: TunnelEnd, bytes_up: u64) {
        if let Some(index) = TunnelEnd::ALL.iter().position(|e| *e == end) {
            self.tunnels_ended[index].fetch_add(1, Ordering::Relaxed);
        }
        if bytes_up > 0 {
            self.tunnel_bytes_up.fetch_add(bytes_up, Ordering::Relaxed);
        }
    }

    /// Counts a new connection to an origin (a pooled one reused is not).
    pub fn upstream_connected(&self) {
        self.upstream_connects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts workers woken for jobs that waited in the queue over a
    /// millisecond while the running workers were held up.
    pub fn workers_woken_late(&self, count: usize) {
        self.late_wakeups.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Counts an upstream call made again because the origin closed a
    /// reused connection before answering.
    pub fn upstream_retried(&self) {
        self.upstream_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long an upstream call took until the response head: name
    /// lookup, taking or opening a connection, sending the request and its body.
    pub fn upstream_answered(&self, wait: Duration) {
        self.upstream_waits.observe(wait);
    }

    /// Marks a worker busy until the returned guard is dropped.
    pub fn worker_busy(&self) -> BusyWorker<'_> {
        self.workers_busy.fetch_add(1, Ordering::Relaxed);
        BusyWorker(&self.workers_busy)
    }

    /// How many workers are serving a connection now.
    pub fn workers_busy(&self) -> u64 {
        self.workers_busy.load(Ordering::Relaxed)
    }

    /// Counts a panic a worker caught and survived.
    pub fn worker_panicked(&self) {
        self.worker_panics.fetch_add(1, Ordering::Relaxed);
    }

    /// How many panics workers have caught so far.
    pub fn worker_panics(&self) -> u64 {
        self.worker_panics.load(Ordering::Relaxed)
    }

    /// The page for `GET /metrics`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut page = Page(String::with_capacity(4096));
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        page.family(
            "fetchproxy_build_info",
            "gauge",
            "The running version; always 1.",
        );
        page.sample(
            "fetchproxy_build_info",
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            1,
        );
        page.single(
            "fetchproxy_start_time_seconds",
            "gauge",
            "When the server started, in seconds since the Unix epoch.",
            started,
        );
        page.single(
            "fetchproxy_draining",
            "gauge",
            "1 while the server drains for shutdown, else 0.",
            u8::from(gauges.draining),
        );
        page.single(
            "fetchproxy_connections_accepted_total",
            "counter",
            "Client connections taken in; those refused at once (client range, limits) count only as requests.",
            load(&self.connections_accepted),
        );
        page.single(
            "fetchproxy_connections_open",
            "gauge",
            "Client connections open now, idle keep-alive ones included.",
            gauges.connections_open,
        );
        page.single(
            "fetchproxy_workers",
            "gauge",
            "Worker threads in the pool.",
            gauges.workers,
        );
        page.single(
            "fetchproxy_workers_busy",
            "gauge",
            "Workers serving a connection now.",
            gauges.workers_busy,
        );
        page.single(
            "fetchproxy_queue_length",
            "gauge",
            "Connections with a complete request head waiting for a worker.",
            gauges.queue_length,
        );
        page.single(
            "fetchproxy_queue_capacity",
            "gauge",
            "Places in the queue; when it is full, new requests get 503.",
            gauges.queue_capacity,
        );
        page.single(
            "fetchproxy_tunnels_open",
            "gauge",
            "CONNECT tunnels open now.",
            gauges.tunnels_open,
        );
        page.family(
            "fetchproxy_tunnels_closed_total",
            "counter",
            "CONNECT tunnels closed, by why they ended.",
        );
        for (end, count) in TunnelEnd::ALL.iter().zip(&self.tunnels_ended) {
            page.sample(
                "fetchproxy_tunnels_closed_total",
                &format!("end=\"{}\"", end.as_str()),
                load(count),
            );
        }
        page.single(
            "fetchproxy_tunnel_bytes_up_total",
            "counter",
            "Bytes tunnels passed from clients to their targets.",
            load(&self.tunnel_bytes_up),
        );
        page.family(
            "fetchproxy_requests_total",
            "counter",
            "Requests answered, by status code; a CONNECT tunnel counts when it closes.",
        );
        for (offset, count) in self.by_status.iter().enumerate() {
            let count = load(count);
            if count > 0 {
                let code = usize::from(STATUS_MIN) + offset;
                page.sample(
                    "fetchproxy_requests_total",
                    &format!("code=\"{code}\""),
                    count,
                );
            }
        }
        page.family(
            "fetchproxy_errors_total",
            "counter",
            "Requests that ended in an error, by Proxy-Status error type (RFC 9209): answered by the proxy, or cut short when the upstream failed mid-body.",
        );
        for (error, count) in PROXY_STATUS_TYPES.iter().zip(&self.by_error) {
            page.sample(
                "fetchproxy_errors_total",
                &format!("error=\"{error}\""),
                load(count),
            );
        }
        page.single(
            "fetchproxy_response_body_bytes_total",
            "counter",
            "Body bytes sent to clients (for tunnels, bytes from the target).",
            load(&self.body_bytes),
        );
        page.single(
            "fetchproxy_client_aborts_total",
            "counter",
            "Answers the client closed its connection on before their end (access log: client_aborted).",
            load(&self.client_aborts),
        );
        self.durations.render(
            &mut page,
            "fetchproxy_request_duration_seconds",
            "Time to answer a request, as in the access log; tunnels excluded.",
        );
        page.single(
            "fetchproxy_upstream_connections_opened_total",
            "counter",
            "TCP connections opened to origins for forwarded requests (before any TLS handshake; tunnels not counted).",
            load(&self.upstream_connects),
        );
        page.single(
            "fetchproxy_worker_late_wakeups_total",
            "counter",
            "Workers woken for a job still queued after 1 ms in which no job was taken: the running workers were held up (a disk, long copies); rising steadily, the pool is too small for the load.",
            load(&self.late_wakeups),
        );
        page.single(
            "fetchproxy_upstream_retries_total",
            "counter",
            "Upstream calls made again because the origin closed a reused connection before answering.",
            load(&self.upstream_retries),
        );
        self.upstream_waits.render(
            &mut page,
            "fetchproxy_upstream_response_seconds",
            "Upstream call of a forwarded request until the response head: lookup, connection (new or pooled, TLS included), request and body sent; failures left out.",
        );
        page.single(
            "fetchproxy_worker_panics_total",
            "counter",
            "Panics caught in workers; each cost one connection, never the process.",
            load(&self.worker_panics),
        );
        render_cache(&mut page, &gauges.cache);
        page.0
    }
}

/// The cache's part of the page.
fn render_cache(page: &mut Page, cache: &CacheFigures) {
    for (name, help, value) in [
        (
            "fetchproxy_cache_hits_total",
            "Responses answered from the cache without the origin (stale ones included).",
            cache.hits,
        ),
        (
            "fetchproxy_cache_disk_hits_total",
            "Of the hits, those whose body was sent from a file of the disk tier; the rest came from memory (a disk object read back into memory on a hit counts as memory's) or sent no body (HEAD, 304).",
            cache.disk_hits,
        ),
        (
            "fetchproxy_cache_misses_total",
            "Requests that went to the origin for want of a usable stored response.",
            cache.misses,
        ),
    ] {
        page.single(name, "counter", help, value);
    }
    page.family(
        "fetchproxy_cache_revalidations_total",
        "counter",
        "Stale or client-refreshed entries revalidated with the origin, by its answer.",
    );
    page.sample(
        "fetchproxy_cache_revalidations_total",
        "result=\"not_modified\"",
        cache.revalidated_not_modified,
    );
    page.sample(
        "fetchproxy_cache_revalidations_total",
        "result=\"modified\"",
        cache.revalidated_modified,
    );
    for (name, help, value) in [
        (
            "fetchproxy_cache_collapsed_total",
            "Requests that read another request's response as it arrived (collapsed forwarding).",
            cache.collapsed,
        ),
        (
            "fetchproxy_cache_stale_served_total",
            "Stale responses served: allowed by max-stale or stale-while-revalidate, or standing in for a failed origin.",
            cache.stale_served,
        ),
        (
            "fetchproxy_cache_bypassed_total",
            "Forwarded requests the cache took no part in (methods other than GET and HEAD).",
            cache.bypassed,
        ),
        (
            "fetchproxy_cache_served_bytes_total",
            "Body bytes sent to clients from the cache (hits and collapsed requests).",
            cache.bytes_served,
        ),
        (
            "fetchproxy_cache_stored_total",
            "Responses stored.",
            cache.stored,
        ),
    ] {
        page.single(name, "counter", help, value);
    }
    page.family(
        "fetchproxy_cache_evictions_total",
        "counter",
        "Objects evicted to keep a tier within its budget.",
    );
    page.sample(
        "fetchproxy_cache_evictions_total",
        "tier=\"memory\"",
        cache.evictions_memory,
    );
    page.sample(
        "fetchproxy_cache_evictions_total",
        "tier=\"disk\"",
        cache.evictions_disk,
    );
    for (name, help, value) in [
        (
            "fetchproxy_cache_purges_total",
            "PURGE requests that removed a URL.",
            cache.purges,
        ),
        (
            "fetchproxy_cache_invalidations_total",
            "URLs removed because an unsafe method succeeded on them (RFC 9111 section 4.4).",
            cache.invalidations,
        ),
        (
            "fetchproxy_cache_fills_abandoned_total",
            "Responses whose storing was given up mid-body (upstream failed, over a limit, disk error).",
            cache.fills_abandoned,
        ),
        (
            "fetchproxy_cache_fills_passed_on_total",
            "Fills given up that passed the rest of the body on to their followers instead of cutting them short.",
            cache.fills_passed_on,
        ),
        (
            "fetchproxy_cache_followers_let_go_total",
            "Followers let go for staying a window behind a body passed on.",
            cache.followers_let_go,
        ),
        (
            "fetchproxy_cache_disk_write_errors_total",
            "Disk writes that failed (full disk, I/O error); the object was not stored on disk.",
            cache.disk_write_errors,
        ),
        (
            "fetchproxy_cache_disk_corrupt_total",
            "Disk objects found broken (length, checksum, format) and deleted instead of served.",
            cache.disk_corrupt,
        ),
        (
            "fetchproxy_cache_disk_verified_total",
            "Disk objects read back against their checksum before their first use after a start.",
            cache.disk_verified,
        ),
    ] {
        page.single(name, "counter", help, value);
    }
    // Without a disk tier its figures are zeros.
    let (memory, disk) = (cache.memory, cache.disk.unwrap_or_default());
    for (name, help, in_memory, on_disk) in [
        (
            "fetchproxy_cache_urls",
            "URLs stored, by tier (each with one or more variants).",
            memory.urls,
            disk.urls,
        ),
        (
            "fetchproxy_cache_bytes",
            "Bytes counted against each tier's budget.",
            memory.bytes,
            disk.bytes,
        ),
        (
            "fetchproxy_cache_capacity_bytes",
            "Each tier's budget (cache_mem; cache_dir_size, or less while the disk lacks room); 0 when the tier is off.",
            memory.capacity,
            disk.capacity,
        ),
    ] {
        page.family(name, "gauge", help);
        page.sample(name, "tier=\"memory\"", in_memory);
        page.sample(name, "tier=\"disk\"", on_disk);
    }
    page.single(
        "fetchproxy_cache_fills_in_progress",
        "gauge",
        "Responses being fetched and stored that other requests can follow.",
        cache.fills_in_progress,
    );
    page.single(
        "fetchproxy_cache_fills_received_apart",
        "gauge",
        "Large shared fills being received by a thread of their own, so that a slow first client holds back no follower.",
        cache.fills_received_apart,
    );
    page.single(
        "fetchproxy_cache_fill_memory_bytes",
        "gauge",
        "Body bytes held in memory by fills in progress (at most a quarter of cache_mem).",
        cache.fill_memory_bytes,
    );
    page.single(
        "fetchproxy_cache_memory_files",
        "gauge",
        "Stored bodies of 32 to 128 KiB kept in memory files, for hits sent with sendfile; each holds a file descriptor.",
        cache.memory_files,
    );
    page.single(
        "fetchproxy_cache_disk_index_loaded",
        "gauge",
        "1 once the disk cache's index has been read at start (always 1 without a disk cache).",
        u8::from(cache.disk_loaded),
    );
}

/// A latency histogram over [`DURATION_BUCKETS`].
#[derive(Debug)]
struct Histogram {
    /// Not cumulative: each observation lands in one bucket; the last is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The `_bucket` lines (cumulative), `_sum` and `_count`.
    fn render(&self, page: &mut Page, name: &str, help: &str) {
        page.family(name, "histogram", help);
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            cumulative += load(count);
            let bound = DURATION_BUCKETS
                .get(index)
                .map_or_else(|| "+Inf".to_string(), ToString::to_string);
            page.sample(&bucket_name, &format!("le=\"{bound}\""), cumulative);
        }
        let sum = Duration::from_micros(load(&self.sum_micros)).as_secs_f64();
        page.sample(&format!("{name}_sum"), "", sum);
        page.sample(&format!("{name}_count"), "", cumulative);
    }
}

/// A worker marked busy; dropping it marks the worker idle again.
#[derive(Debug)]
pub struct BusyWorker<'a>(&'a AtomicU64);

impl Drop for BusyWorker<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The exposition text being written.
struct Page(String);

impl Page {
    /// The `# HELP` and `# TYPE` lines of a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line; `labels` without braces, empty for none.
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `page` as (name with labels, value).
    fn samples(page: &str) -> Vec<(String, f64)> {
        page.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').expect("name value");
                (name.to_string(), value.parse().expect("numeric value"))
            })
            .collect()
    }

    fn value(page: &str, name: &str) -> f64 {
        samples(page)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in\n{page}"))
            .1
    }

    /// The cumulative count of histogram `name` at bound `le`.
    fn bucket(page: &str, name: &str, le: &str) -> f64 {
        value(page, &format!("{name}_bucket{{le=\"{le}\"}}"))
    }

    fn ok(status: u16, bytes: u64, millis: u64) -> Finished<'static> {
        Finished {
            status,
            bytes,
            duration: Some(Duration::from_millis(millis)),
            error: None,
            client_left: false,
        }
    }

    #[test]
    fn requests_are_counted_by_status_error_bytes_and_duration() {
        let metrics = Metrics::new();
        metrics.request(&ok(200, 1000, 3));
        metrics.request(&ok(200, 24, 20));
        metrics.request(&Finished {
            error: Some("dns_error"),
            ..ok(502, 0, 1)
        });
        metrics.request(&Finished {
            duration: None,
            ..ok(200, 5, 0)
        });
        metrics.connection_accepted();
        let page = metrics.render(&Gauges {
            workers: 4,
            queue_capacity: 64,
            ..Gauges::default()
        });
        assert_eq!(value(&page, "fetchproxy_requests_total{code=\"200\"}"), 3.0);
        assert_eq!(value(&page, "fetchproxy_requests_total{code=\"502\"}"), 1.0);
        assert_eq!(
            value(&page, "fetchproxy_errors_total{error=\"dns_error\"}"),
            1.0
        );
        assert_eq!(
            value(
                &page,
                "fetchproxy_errors_total{error=\"connection_refused\"}"
            ),
            0.0,
            "every error type is shown, counted or not"
        );
        assert_eq!(value(&page, "fetchproxy_response_body_bytes_total"), 1029.0);
        assert_eq!(value(&page, "fetchproxy_connections_accepted_total"), 1.0);
        assert_eq!(value(&page, "fetchproxy_workers"), 4.0);
        assert_eq!(value(&page, "fetchproxy_queue_capacity"), 64.0);
        let histogram = "fetchproxy_request_duration_seconds";
        assert_eq!(value(&page, &format!("{histogram}_count")), 3.0);
        assert_eq!(bucket(&page, histogram, "0.001"), 1.0);
        assert_eq!(bucket(&page, histogram, "0.005"), 2.0);
        assert_eq!(bucket(&page, histogram, "0.025"), 3.0);
        assert_eq!(bucket(&page, histogram, "+Inf"), 3.0);
        assert!((value(&page, &format!("{histogram}_sum")) - 0.024).abs() < 1e-9);
    }

    #[test]
    fn answers_the_client_left_are_counted() {
        let metrics = Metrics::new();
        for client_left in [true, false, true] {
            metrics.request(&Finished {
                client_left,
                ..ok(200, 10, 1)
            });
        }
        let page = metrics.render(&Gauges::default());
        assert_eq!(value(&page, "fetchproxy_client_aborts_total"), 2.0);
    }

    #[test]
    fn upstream_connections_and_waits_are_counted_apart() {
        let metrics = Metrics::new();
        metrics.upstream_connected();
        metrics.upstream_answered(Duration::from_millis(30));
        metrics.upstream_answered(Duration::from_micros(400));
        metrics.request(&ok(200, 1, 31));
        let page = metrics.render(&Gauges::default());
        assert_eq!(
            value(&page, "fetchproxy_upstream_connections_opened_total"),
            1.0
        );
        let upstream = "fetchproxy_upstream_response_seconds";
        assert_eq!(value(&page, &format!("{upstream}_count")), 2.0);
        assert_eq!(bucket(&page, upstream, "0.001"), 1.0);
        assert_eq!(bucket(&page, upstream, "0.05"), 2.0);
        assert_eq!(
            value(&page, "fetchproxy_request_duration_seconds_count"),
            1.0
        );
    }

    #[test]
    fn the_page_follows_the_text_format() {
        let metrics = Metrics::new();
        metrics.request(&ok(404, 0, 70_000));
        let page = metrics.render(&Gauges::default());
        assert!(page.ends_with('\n'));
        let mut declared = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    !declared.contains(&name.to_string()),
                    "{name} declared twice"
                );
                declared.push(name.to_string());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().expect("a metric name");
                assert!(
                    declared.iter().any(|family| name == family
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family))),
                    "{line} comes before its # TYPE"
                );
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                let counter = declared.last().is_some_and(|f| f.ends_with("_total"));
                assert!(
                    !counter || name.ends_with("_total"),
                    "{line}: counters end in _total"
                );
            }
        }
        // A request slower than the largest bound lands only in +Inf.
        let last_bound = "fetchproxy_request_duration_seconds_bucket{le=\"60\"}";
        assert_eq!(value(&page, last_bound), 0.0);
        assert_eq!(
            value(
                &page,
                "fetchproxy_request_duration_seconds_bucket{le=\"+Inf\"}"
            ),
            1.0
        );
        let build = format!(
            "fetchproxy_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&page, &build), 1.0);
    }

    #[test]
    fn cache_figures_are_shown_by_tier_and_outcome() {
        let metrics = Metrics::new();
        let gauges = Gauges {
            cache: CacheFigures {
                hits: 5,
                disk_hits: 3,
                revalidated_not_modified: 2,
                evictions_disk: 1,
                memory: TierFigures {
                    urls: 3,
                    bytes: 3000,
                    capacity: 1 << 20,
                },
                disk_loaded: true,
                ..CacheFigures::default()
            },
            ..Gauges::default()
        };
        let page = metrics.render(&gauges);
        assert_eq!(value(&page, "fetchproxy_cache_hits_total"), 5.0);
        assert_eq!(value(&page, "fetchproxy_cache_disk_hits_total"), 3.0);
        assert_eq!(
            value(
                &page,
                "fetchproxy_cache_revalidations_total{result=\"not_modified\"}"
            ),
            2.0
        );
        assert_eq!(
            value(&page, "fetchproxy_cache_evictions_total{tier=\"disk\"}"),
            1.0
        );
        assert_eq!(value(&page, "fetchproxy_cache_urls{tier=\"memory\"}"), 3.0);
        assert_eq!(
            value(&page, "fetchproxy_cache_capacity_bytes{tier=\"disk\"}"),
            0.0,
            "no disk tier"
        );
        assert_eq!(value(&page, "fetchproxy_cache_disk_index_loaded"), 1.0);
    }

    #[test]
    fn busy_workers_are_counted_while_the_guard_lives() {
        let metrics = Metrics::new();
        let first = metrics.worker_busy();
        {
            let _second = metrics.worker_busy();
            assert_eq!(metrics.workers_busy(), 2);
        }
        assert_eq!(metrics.workers_busy(), 1);
        drop(first);
        assert_eq!(metrics.workers_busy(), 0);
    }

    #[test]
    fn odd_status_codes_stay_in_range() {
        let metrics = Metrics::new();
        metrics.request(&ok(42, 0, 0));
        metrics.request(&ok(1000, 0, 0));
        let page = metrics.render(&Gauges::default());
        assert_eq!(value(&page, "fetchproxy_requests_total{code=\"100\"}"), 1.0);
        assert_eq!(value(&page, "fetchproxy_requests_total{code=\"599\"}"), 1.0);
    }
}
