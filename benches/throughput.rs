//! Throughput by worker-pool size: a loopback origin, the server started
//! in-process, and a fixed set of client threads sending requests through it.
//!
//! One criterion group per workload (body size x concurrent keep-alive
//! clients, a new-connection-per-request case, and an origin 10 ms away), one
//! `BenchmarkId` per pool size, and `Throughput::Elements(1)` per iteration
//! (one request), so criterion prints requests/s. The far-origin groups
//! (`far50ms_1k_c64`, `_c256`, `_c1024`) put the origin 50 ms away, as on
//! the internet, and take pool sizes up to the client count: throughput
//! climbs with the pool until it meets clients / 50 ms.
//!
//! Full run: `cargo bench --bench throughput` (6-8 minutes on 2 cores).
//! CI smoke run: `cargo bench --bench throughput -- --quick` (criterion's own
//! quick mode: a point stops once two samples agree within 5%, or after
//! 300 ms). One workload: `cargo bench --bench throughput -- keepalive_1k_c64`.
//! `FETCHPROXY_BENCH_QUEUE_FACTOR=4` sizes the queue as the server's default
//! does (4 x workers) instead of fitting every client, to count 503s.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

use fetchproxy::config::ServeConfig;
use fetchproxy::server::{self, Running};

#[path = "../tests/it/support/origin.rs"]
#[allow(
    dead_code,
    reason = "the bench uses only the fixed replies of the test origin"
)]
mod origin;

use origin::{Origin, Reply};

/// Worker-pool sizes measured, one `BenchmarkId` each.
const POOL_SIZES: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 512];

/// How far away the origin of the far-origin groups is.
const FAR_DELAY: Duration = Duration::from_millis(50);
/// The far-origin groups: an origin 50 ms away, as on the internet.
const FAR: [Workload; 3] = [
    keep_alive("far50ms_1k_c64", "/far-1k", 1 << 10, 64),
    keep_alive("far50ms_1k_c256", "/far-1k", 1 << 10, 256),
    keep_alive("far50ms_1k_c1024", "/far-1k", 1 << 10, 1024),
];
/// Pool sizes of the far-origin groups (those up to the client count).
const FAR_POOL_SIZES: [usize; 5] = [16, 64, 256, 512, 1024];

/// One kind of load: what is fetched, by how many clients, over which connections.
struct Workload {
    name: &'static str,
    path: &'static str,
    body_len: usize,
    clients: usize,
    keep_alive: bool,
}

const WORKLOADS: [Workload; 8] = [
    keep_alive("keepalive_1k_c16", "/1k", 1 << 10, 16),
    keep_alive("keepalive_1k_c64", "/1k", 1 << 10, 64),
    keep_alive("keepalive_1k_c256", "/1k", 1 << 10, 256),
    keep_alive("keepalive_64k_c16", "/64k", 64 << 10, 16),
    keep_alive("keepalive_64k_c64", "/64k", 64 << 10, 64),
    keep_alive("keepalive_64k_c256", "/64k", 64 << 10, 256),
    Workload {
        name: "newconn_1k_c64",
        path: "/1k",
        body_len: 1 << 10,
        clients: 64,
        keep_alive: false,
    },
    // An origin 10 ms away: workers wait on the network, as they do in use.
    keep_alive("slow10ms_1k_c64", "/slow-1k", 1 << 10, 64),
];

const fn keep_alive(
    name: &'static str,
    path: &'static str,
    body_len: usize,
    clients: usize,
) -> Workload {
    Workload {
        name,
        path,
        body_len,
        clients,
        keep_alive: true,
    }
}

fn throughput(c: &mut Criterion) {
    for workload in &WORKLOADS {
        measure(c, workload, &POOL_SIZES);
    }
    for workload in &FAR {
        let pools: Vec<usize> = FAR_POOL_SIZES
            .into_iter()
            .filter(|workers| *workers <= workload.clients)
            .collect();
        measure(c, workload, &pools);
    }
}

/// One group: the workload at each pool size.
fn measure(c: &mut Criterion, workload: &Workload, pools: &[usize]) {
    let mut group = c.benchmark_group(workload.name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement_time())
        .throughput(Throughput::Elements(1));
    for &workers in pools {
        // Started before criterion's clock: in quick mode a point's first
        // sample decides its length, and must not include the set-up.
        let rig = Rig::start(workload, workers);
        // Far away, a batch smaller than a few rounds of every client is
        // mostly the wait for one round: each sample is at least four
        // rounds, and its time is scaled back to the requests asked for.
        let least = if workload.path == "/far-1k" {
            4 * workload.clients as u64
        } else {
            0
        };
        group.bench_function(BenchmarkId::from_parameter(workers), |b| {
            b.iter_custom(|requests| {
                let sent = requests.max(least);
                let took = rig.clients.run(sent);
                took.mul_f64(requests as f64 / sent as f64)
            });
        });
        rig.stop(&format!("{}/{workers}", workload.name));
    }
    group.finish();
}

/// Time spent measuring one point. In criterion's `--quick` mode this is
/// the most a point may take, so a smoke run is kept short.
fn measurement_time() -> Duration {
    if std::env::args().any(|arg| arg == "--quick") {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    }
}

/// An origin, a server with `workers` workers, and the clients of one workload.
struct Rig {
    clients: Clients,
    running: Running,
    _origin: Origin,
}

impl Rig {
    fn start(workload: &Workload, workers: usize) -> Rig {
        // A fresh origin per point: the test origin records every request it sees.
        let origin = Origin::start(|request| match request.target.as_str() {
            "/1k" => Reply::ok("application/octet-stream", vec![b'x'; 1 << 10]),
            "/64k" => Reply::ok("application/octet-stream", vec![b'x'; 64 << 10]),
            "/slow-1k" => Reply::Slow {
                delay: Duration::from_millis(10),
                then: Box::new(Reply::ok("application/octet-stream", vec![b'x'; 1 << 10])),
            },
            "/far-1k" => Reply::Slow {
                delay: FAR_DELAY,
                then: Box::new(Reply::ok("application/octet-stream", vec![b'x'; 1 << 10])),
            },
            _ => Reply::status(404),
        });
        let running =
            server::start(bench_config(workers, workload.clients)).expect("start the proxy");
        let proxy = running.local_addrs()[0];
        let clients = Clients::spawn(workload, proxy, origin.addr);
        // Open the upstream connections before criterion starts timing (quick
        // mode has no warm-up).
        clients.run(4 * workload.clients as u64);
        clients.take_tally();
        Rig {
            clients,
            running,
            _origin: origin,
        }
    }

    /// Closes the clients, drains the server and reports failed requests
    /// and stalls.
    fn stop(self, label: &str) {
        let Rig {
            clients,
            running,
            _origin,
        } = self;
        let tally = clients.stop();
        if tally.failed > 0 {
            eprintln!(
                "{label}: {} of {} requests failed ({} with 503); first: {}",
                tally.failed,
                tally.total,
                tally.rejected,
                tally.first_failure.as_deref().unwrap_or("?")
            );
        }
        if tally.slowest > STALL {
            eprintln!(
                "{label}: slowest of {} requests took {:?}",
                tally.total, tally.slowest
            );
        }
        running.shutdown().begin_drain();
        running.wait();
    }
}

/// The server's settings for one point: only the pool size varies. The queue
/// holds every client, so a full queue (503) never stands in for throughput.
fn bench_config(workers: usize, clients: usize) -> ServeConfig {
    let queue = std::env::var("FETCHPROXY_BENCH_QUEUE_FACTOR")
        .ok()
        .and_then(|factor| factor.parse::<usize>().ok())
        .map_or((4 * workers).max(clients), |factor| factor * workers);
    ServeConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        workers: workers.try_into().expect("pool sizes are not zero"),
        queue: queue.try_into().expect("queue is at least one"),
        allow_dest: vec!["127.0.0.0/8".parse().expect("loopback cidr")],
        max_conns_per_client: 4096,
        grace: Duration::from_secs(5),
        ..ServeConfig::default()
    }
}

/// Client threads kept alive across iterations; each run shares out a number
/// of requests between them and times the whole batch.
struct Clients {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    /// Requests not yet taken by a client in this run.
    remaining: AtomicI64,
    stop: AtomicBool,
    start: Barrier,
    done: Barrier,
    total: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    slowest_micros: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

/// Counts kept by the clients since the last `take_tally`.
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    failed: u64,
    rejected: u64,
    slowest: Duration,
    first_failure: Option<String>,
}

/// A request slower than this is reported as a stall.
const STALL: Duration = Duration::from_millis(100);

impl Clients {
    fn spawn(workload: &Workload, proxy: SocketAddr, origin: SocketAddr) -> Clients {
        let shared = Arc::new(Shared {
            remaining: AtomicI64::new(0),
            stop: AtomicBool::new(false),
            start: Barrier::new(workload.clients + 1),
            done: Barrier::new(workload.clients + 1),
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            slowest_micros: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        });
        let close = if workload.keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let request = format!(
            "GET http://{origin}{} HTTP/1.1\r\nHost: {origin}\r\n{close}\r\n",
            workload.path
        )
        .into_bytes();
        let threads = (0..workload.clients)
            .map(|i| {
                let client = Client {
                    shared: shared.clone(),
                    proxy,
                    request: request.clone(),
                    body_len: workload.body_len,
                    keep_alive: workload.keep_alive,
                };
                thread::Builder::new()
                    .name(format!("client-{i}"))
                    .stack_size(256 << 10)
                    .spawn(move || client.run())
                    .expect("spawn a client thread")
            })
            .collect();
        Clients { shared, threads }
    }

    /// Sends `requests` requests across all clients and returns the wall time.
    fn run(&self, requests: u64) -> Duration {
        let requests = i64::try_from(requests).expect("request count fits in i64");
        self.shared.remaining.store(requests, Ordering::SeqCst);
        let started = Instant::now();
        self.shared.start.wait();
        self.shared.done.wait();
        started.elapsed()
    }

    fn take_tally(&self) -> Tally {
        let shared = &self.shared;
        Tally {
            total: shared.total.swap(0, Ordering::SeqCst),
            failed: shared.failed.swap(0, Ordering::SeqCst),
            rejected: shared.rejected.swap(0, Ordering::SeqCst),
            slowest: Duration::from_micros(shared.slowest_micros.swap(0, Ordering::SeqCst)),
            first_failure: shared.first_failure.lock().ok().and_then(|mut f| f.take()),
        }
    }

    /// Ends the client threads (closing their connections).
    fn stop(mut self) -> Tally {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.start.wait();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.take_tally()
    }
}

/// One client thread: its request, and the connection it keeps between runs.
struct Client {
    shared: Arc<Shared>,
    proxy: SocketAddr,
    request: Vec<u8>,
    body_len: usize,
    keep_alive: bool,
}

impl Client {
    fn run(self) {
        let mut conn: Option<Conn> = None;
        loop {
            self.shared.start.wait();
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            while self.shared.remaining.fetch_sub(1, Ordering::SeqCst) > 0 {
                self.shared.total.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let outcome = self.one_request(&mut conn);
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.shared
                    .slowest_micros
                    .fetch_max(micros, Ordering::Relaxed);
                if outcome.is_err() || !self.keep_alive {
                    // A failed request is counted, not retried: the connection
                    // is dropped and the next request opens a new one.
                    conn = None;
                }
                if let Err(failure) = outcome {
                    self.record(failure);
                }
            }
            self.shared.done.wait();
        }
    }

    fn one_request(&self, conn: &mut Option<Conn>) -> Result<(), Failure> {
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(Conn::open(self.proxy)?),
        };
        conn.stream.write_all(&self.request)?;
        let (status, len) = conn.read_head()?;
        conn.skip_body(len)?;
        if status == 503 {
            return Err(Failure::Rejected);
        }
        if status != 200 || len != self.body_len as u64 {
            return Err(Failure::Other(format!("status {status}, {len} body bytes")));
        }
        if !self.keep_alive {
            // Read to the end so the server closes first and keeps the TIME_WAIT.
            conn.wait_for_close()?;
        }
        Ok(())
    }

    fn record(&self, failure: Failure) {
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        let message = match failure {
            Failure::Rejected => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                "503 from the proxy".to_string()
            }
            Failure::Other(message) => message,
        };
        if let Ok(mut first) = self.shared.first_failure.lock() {
            first.get_or_insert(message);
        }
    }
}

enum Failure {
    Rejected,
    Other(String),
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Failure {
        Failure::Other(err.to_string())
    }
}

/// A client connection with a read buffer; responses are read by
/// Content-Length, which the proxy keeps when the origin sends one.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet consumed.
    filled: usize,
}

impl Conn {
    fn open(proxy: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(proxy)?;
        stream.set_nodelay(true)?;
        // Never hang the bench on a silent server.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: vec![0; 64 << 10],
            filled: 0,
        })
    }

    /// Reads a response head; returns the status and the Content-Length.
    fn read_head(&mut self) -> Result<(u16, u64), Failure> {
        loop {
            if let Some(end) = find_head_end(&self.buf[..self.filled]) {
                let parsed = parse_head(&self.buf[..end]);
                self.buf.copy_within(end..self.filled, 0);
                self.filled -= end;
                return parsed;
            }
            if self.filled == self.buf.len() {
                return Err(Failure::Other("response head over 64 KiB".into()));
            }
            let n = self.stream.read(&mut self.buf[self.filled..])?;
            if n == 0 {
                return Err(Failure::Other(
                    "connection closed before a response head".into(),
                ));
            }
            self.filled += n;
        }
    }

    fn skip_body(&mut self, len: u64) -> Result<(), Failure> {
        let buffered = (self.filled as u64).min(len);
        self.buf.copy_within(buffered as usize..self.filled, 0);
        self.filled -= buffered as usize;
        let mut left = len - buffered;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = self.stream.read(&mut self.buf[..want])?;
            if n == 0 {
                return Err(Failure::Other(format!(
                    "connection closed {left} bytes short"
                )));
            }
            left -= n as u64;
        }
        Ok(())
    }

    fn wait_for_close(&mut self) -> Result<(), Failure> {
        while self.stream.read(&mut self.buf)? > 0 {}
        Ok(())
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

fn parse_head(head: &[u8]) -> Result<(u16, u64), Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(head)
        .map_err(|err| Failure::Other(format!("bad response head: {err}")))?;
    let status = response.code.unwrap_or(0);
    let len = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Failure::Other(format!("status {status} without Content-Length")))?;
    Ok((status, len))
}

criterion_group!(benches, throughput);
criterion_main!(benches);
