//! Soak harness (run on demand, not in CI): the real release binary under
//! minutes of mixed load with faults injected, then checks that nothing
//! leaked.
//!
//! Run: `cargo run --release --example soak -- --minutes 10`
//! (options: `--minutes M` (fractions allowed), `--clients N` (default 12),
//! `--workers N` (default 8), `--server PATH` (default: the release
//! `fetchproxy` next to this example, built first with `cargo build`)).
//!
//! It starts `fetchproxy serve` as a child (stopped by its PID), an origin
//! with several behaviours (fast, chunked, slow, too slow, reset mid-body,
//! huge, malformed) and a TCP echo port for CONNECT, all on 127.0.0.1. For
//! the duration, a bounded number of client threads send good GETs and
//! POSTs (new and keep-alive connections), CONNECT tunnels, bad requests
//! (garbage, smuggling, oversized heads) and downloads abandoned midway,
//! while one thread keeps trickling request heads that must get 408. Every
//! 10 s it samples the server's open fds (`/proc/PID/fd`), threads and RSS
//! (`/proc/PID/status`). After a quiet period it checks: fds back to the
//! baseline (pooled upstream connections allowed until they idle out),
//! threads unchanged, RSS flat (mean of the last third of the samples
//! against the middle third), `/healthz` answers, and a burst of parallel
//! requests all succeed (every worker alive). Exits 1 if any check fails or
//! any request got an unexpected answer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "../tests/it/support/origin.rs"]
#[allow(
    dead_code,
    reason = "the harness uses only some of the test origin's replies"
)]
mod origin;

use origin::{Origin, OriginRequest, Reply};

/// Server settings; short timeouts so that faults resolve quickly.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Every client socket operation is bounded by this.
const IO_LIMIT: Duration = Duration::from_secs(20);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Longest wait after the load for fds to come back to the baseline.
const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// Concurrent trickling heads kept open by the trickler thread.
const TRICKLERS: usize = 16;
const HUGE_BYTES: u64 = 8 << 20;
const FAST_BODY: &[u8] = b"fast and fine\n";

struct Options {
    minutes: f64,
    clients: usize,
    workers: usize,
    server: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        minutes: 10.0,
        clients: 12,
        workers: 8,
        server: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => {
                options.minutes = value()?.parse().map_err(|e| format!("--minutes: {e}"))?;
            }
            "--clients" => {
                options.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?;
            }
            "--workers" => {
                options.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
            }
            "--server" => options.server = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if !(options.minutes > 0.0 && options.minutes <= 24.0 * 60.0) {
        return Err("--minutes must be above 0 and at most a day".into());
    }
    if options.clients == 0 || options.clients > 256 || options.workers == 0 {
        return Err("--clients must be 1..=256 and --workers at least 1".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("soak: {message}");
            return ExitCode::from(2);
        }
    };
    match soak(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("soak: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Counts of outcomes by name; unexpected ones keep a few examples.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<&'static str, String>) {
        match result {
            Ok(name) => *self.outcomes.entry(name.to_string()).or_default() += 1,
            Err(what) => {
                let key = what.split(':').next().unwrap_or("?").to_string();
                *self.unexpected.entry(key).or_default() += 1;
                if self.examples.len() < 20 {
                    self.examples.push(what);
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in other.unexpected {
            *self.unexpected.entry(k).or_default() += v;
        }
        self.examples.extend(other.examples);
        self.examples.truncate(20);
    }
}

/// One reading of the server's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    fds: usize,
    threads: u64,
    rss_kib: u64,
}

fn soak(options: &Options) -> Result<bool, String> {
    let binary = server_binary(options)?;
    let origin = Origin::start(route);
    let echo = EchoServer::start()?;
    let mut server = Server::start(&binary, options, echo.addr.port())?;
    let proxy = server.addr;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "soak: fetchproxy {} (commit {commit}) pid {} on {proxy}, {} workers, {} clients, {} min",
        binary.display(),
        server.pid(),
        options.workers,
        options.clients,
        options.minutes
    );

    // Baseline before any traffic.
    thread::sleep(Duration::from_millis(500));
    let baseline = server.sample(Duration::ZERO)?;
    println!("{:>8} {:>6} {:>8} {:>10}", "t", "fds", "threads", "rss KiB");
    print_sample(&baseline);

    let started = Instant::now();
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let end = started + duration;
    let origin_addr = origin.addr;
    let echo_port = echo.addr.port();
    let clients: Vec<_> = (0..options.clients)
        .map(|n| {
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("client-{n}"))
                .spawn(move || client_loop(n, proxy, origin_addr, echo_port, end, &stop))
                .map_err(|e| format!("spawn client: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let trickler = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("trickler".into())
            .spawn(move || trickle_loop(proxy, origin_addr, end, &stop))
            .map_err(|e| format!("spawn trickler: {e}"))?
    };

    let mut samples = vec![baseline];
    let mut next_sample = started + SAMPLE_EVERY;
    while Instant::now() < end {
        thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
        if Instant::now() >= next_sample {
            match server.sample(started.elapsed()) {
                Ok(sample) => {
                    print_sample(&sample);
                    samples.push(sample);
                }
                Err(message) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(format!("server gone during the soak: {message}"));
                }
            }
            next_sample += SAMPLE_EVERY;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    for client in clients {
        tally.merge(client.join().map_err(|_| "a client thread panicked")?);
    }
    tally.merge(
        trickler
            .join()
            .map_err(|_| "the trickler thread panicked")?,
    );
    let load_time = started.elapsed();

    // Quiet: wait for parked connections and pooled upstream connections to
    // idle out, then for the fd count to settle.
    let quiet_started = Instant::now();
    thread::sleep(IDLE_TIMEOUT + Duration::from_secs(2));
    let pooled_allowance = options.workers;
    let mut after = server.sample(started.elapsed())?;
    while after.fds > baseline.fds && quiet_started.elapsed() < QUIET_LIMIT {
        thread::sleep(Duration::from_secs(1));
        after = server.sample(started.elapsed())?;
    }
    let quiet_took = quiet_started.elapsed();
    print_sample(&after);
    let open_fds = server.describe_fds();

    // Every worker alive: /healthz, then a burst of parallel requests.
    let healthz = get_once(
        proxy,
        "GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    );
    let burst = options.workers * 4;
    let burst_ok = thread::scope(|scope| {
        let handles: Vec<_> = (0..burst)
            .map(|n| {
                scope.spawn(move || {
                    let request = format!(
                        "GET http://{origin_addr}/fast?burst={n} HTTP/1.1\r\nHost: {origin_addr}\r\nConnection: close\r\n\r\n"
                    );
                    matches!(get_once(proxy, &request), Ok(r) if r.status == 200 && r.body == FAST_BODY)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|ok| *ok)
            .count()
    });
    let final_sample = server.sample(started.elapsed())?;

    // RSS flat: the last third of the load samples against the middle third.
    let load: Vec<&Sample> = samples.iter().skip(1).collect();
    let third = load.len() / 3;
    let mean =
        |s: &[&Sample]| s.iter().map(|s| s.rss_kib as f64).sum::<f64>() / s.len().max(1) as f64;
    let (middle, last) = if third > 0 {
        (mean(&load[third..2 * third]), mean(&load[2 * third..]))
    } else {
        (0.0, 0.0)
    };
    let rss_slack = (middle * 0.10).max(4096.0);
    let rss_peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let fds_peak = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let threads_peak = samples.iter().map(|s| s.threads).max().unwrap_or(0);

    let log = server.log_text();
    let panics = log.lines().filter(|l| l.contains("panicked")).count();
    let errors = log.lines().filter(|l| l.contains("[ERROR]")).count();
    server.stop();
    let exit = server.exit_code();

    let checks = [
        (
            format!(
                "fds back to baseline ({} -> {}, allowance {pooled_allowance} pooled upstream; settled after {:.1?})",
                baseline.fds, after.fds, quiet_took
            ),
            after.fds <= baseline.fds + pooled_allowance,
        ),
        (
            format!(
                "threads unchanged ({} -> {})",
                baseline.threads, after.threads
            ),
            after.threads == baseline.threads,
        ),
        (
            format!(
                "RSS flat (mean of middle third {:.0} KiB, last third {:.0} KiB, slack {:.0} KiB)",
                middle, last, rss_slack
            ),
            third > 0 && last <= middle + rss_slack,
        ),
        (
            format!(
                "/healthz answers 200 ({:?})",
                healthz.as_ref().map(|r| r.status)
            ),
            matches!(&healthz, Ok(r) if r.status == 200),
        ),
        (
            format!("burst of {burst} parallel requests all 200 ({burst_ok} ok)"),
            burst_ok == burst,
        ),
        (
            format!(
                "no unexpected answers ({})",
                tally.unexpected.values().sum::<u64>()
            ),
            tally.unexpected.is_empty(),
        ),
        (
            format!("no panics in the server log ({panics})"),
            panics == 0,
        ),
        (
            format!("exit code 0 after SIGTERM ({exit:?})"),
            exit == Some(0),
        ),
    ];

    println!();
    println!("| | start | end of load (peak) | after quiet |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| open fds | {} | {} ({}) | {} |",
        baseline.fds,
        samples.last().map_or(0, |s| s.fds),
        fds_peak,
        final_sample.fds.min(after.fds)
    );
    println!(
        "| threads | {} | {} ({}) | {} |",
        baseline.threads,
        samples.last().map_or(0, |s| s.threads),
        threads_peak,
        after.threads
    );
    println!(
        "| RSS MiB | {:.1} | {:.1} ({:.1}) | {:.1} |",
        mib(baseline.rss_kib),
        mib(samples.last().map_or(0, |s| s.rss_kib)),
        mib(rss_peak),
        mib(after.rss_kib)
    );
    println!();
    let total: u64 = tally.outcomes.values().sum::<u64>() + tally.unexpected.values().sum::<u64>();
    println!(
        "{total} exchanges in {:.1?} ({:.0}/s); server log: {errors} ERROR lines",
        load_time,
        total as f64 / load_time.as_secs_f64()
    );
    println!("| outcome | count |");
    println!("| --- | ---: |");
    for (name, count) in &tally.outcomes {
        println!("| {name} | {count} |");
    }
    for (name, count) in &tally.unexpected {
        println!("| UNEXPECTED {name} | {count} |");
    }
    for example in &tally.examples {
        println!("  unexpected: {example}");
    }
    println!("open fds after quiet: {open_fds}");
    println!();
    let mut all = true;
    for (what, ok) in &checks {
        println!("{} {what}", if *ok { "ok  " } else { "FAIL" });
        all &= *ok;
    }
    println!("soak: {}", if all { "passed" } else { "FAILED" });
    drop(echo);
    Ok(all)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_sample(s: &Sample) {
    println!(
        "{:>7.0}s {:>6} {:>8} {:>10}",
        s.at.as_secs_f64(),
        s.fds,
        s.threads,
        s.rss_kib
    );
}

/// The binary to run: `--server`, or the release build next to this
/// example (built first when run through cargo).
fn server_binary(options: &Options) -> Result<PathBuf, String> {
    if let Some(path) = &options.server {
        return Ok(path.clone());
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "fetchproxy"])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() {
            return Err("cargo build --release --bin fetchproxy failed".into());
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    // target/release/examples/soak -> target/release/fetchproxy
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("fetchproxy"))
        .ok_or("no target directory")?;
    if !path.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` or pass --server PATH",
            path.display()
        ));
    }
    Ok(path)
}

/// The origin's behaviours, by path.
fn route(request: &OriginRequest) -> Reply {
    let path = request.target.split('?').next().unwrap_or("");
    match path {
        "/fast" => Reply::ok("text/plain", FAST_BODY),
        "/post" => Reply::ok(
            "text/plain",
            format!("got {} bytes\n", request.body.len()).into_bytes(),
        ),
        "/chunked" => Reply::Chunked {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: vec![b'c'; 64 * 1024],
            piece: 1000,
        },
        "/slow" => Reply::Slow {
            delay: Duration::from_millis(800),
            then: Box::new(Reply::ok("text/plain", FAST_BODY)),
        },
        "/too-slow" => Reply::Slow {
            delay: UPSTREAM_TIMEOUT + Duration::from_secs(1),
            then: Box::new(Reply::ok("text/plain", FAST_BODY)),
        },
        "/reset" => Reply::ResetMidBody {
            declared: 1 << 20,
            sent: 100 * 1024,
        },
        "/huge" => Reply::Huge { len: HUGE_BYTES },
        "/malformed" => Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nxx".to_vec()),
        _ => Reply::status(404),
    }
}

/// A TCP echo server for CONNECT tunnels; a thread per connection.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    fn start() -> Result<EchoServer, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("echo bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(IO_LIMIT));
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(EchoServer { addr, stop })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// The server child process, its stderr in a log file.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(binary: &PathBuf, options: &Options, echo_port: u16) -> Result<Server, String> {
        let workers = options.workers.to_string();
        let queue = (options.workers * 8).to_string();
        let ports = echo_port.to_string();
        let idle = format!("{}s", IDLE_TIMEOUT.as_secs());
        let header = format!("{}s", HEADER_TIMEOUT.as_secs());
        let upstream = format!("{}s", UPSTREAM_TIMEOUT.as_secs());
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-dest",
                "127.0.0.0/8",
            ])
            .args(["--workers", &workers, "--queue", &queue])
            .args(["--connect-port", &ports])
            .args(["--idle-timeout", &idle, "--header-timeout", &header])
            .args(["--upstream-timeout", &upstream])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().ok_or("stderr was not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        // Reads the log to the end (so the server never blocks on a full
        // pipe), keeping every line that is not an access-log line.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                if !line.contains(" access: ")
                    && let Ok(mut kept) = kept.lock()
                    && kept.len() < 4 << 20
                {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(_) => {
                server.kill();
                Err(format!("fetchproxy did not start: {}", server.log_text()))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn sample(&self, at: Duration) -> Result<Sample, String> {
        let pid = self.child.id();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
                .ok_or(format!("/proc/{pid}/status has no {key}"))
        };
        Ok(Sample {
            at,
            fds,
            threads: field("Threads")?,
            rss_kib: field("VmRSS")?,
        })
    }

    /// What the server's open fds are: counts by kind, and TCP sockets by
    /// state and peer (from `/proc/PID/net/tcp`).
    fn describe_fds(&self) -> String {
        let pid = self.child.id();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return "unreadable".into();
        };
        for entry in entries.flatten() {
            let target = std::fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let kind = match target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                Some(inode) => tcp
                    .lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .find(|f| f.get(9) == Some(&inode))
                    .map_or("socket (not TCPv4)".to_string(), |f| {
                        let state = match f[3] {
                            "01" => "ESTABLISHED",
                            "06" => "TIME_WAIT",
                            "08" => "CLOSE_WAIT",
                            "0A" => "LISTEN",
                            other => other,
                        };
                        let port = |a: &str| {
                            a.rsplit(':')
                                .next()
                                .and_then(|p| u16::from_str_radix(p, 16).ok())
                                .unwrap_or(0)
                        };
                        format!("tcp {state} local :{} peer :{}", port(f[1]), port(f[2]))
                    }),
                None if target.starts_with("anon_inode:") => target,
                None if target.starts_with("pipe:") => "pipe".into(),
                None => target,
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
            .iter()
            .map(|(k, n)| format!("{n} x {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// SIGTERM by PID; SIGKILL if it has not exited within 40 s.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split([' ', ',']).next()?.parse().ok()
}

/// A response read off a socket; bodies are counted, and kept up to 64 KiB.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
    body_len: u64,
    /// The body ended as its framing said (false: cut short).
    complete: bool,
}

/// Reads one response; `head_only` for HEAD and CONNECT answers.
fn read_response(reader: &mut BufReader<TcpStream>, bodiless: bool) -> Result<Response, String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading head: {e}"))?;
        if n == 0 {
            return Err(format!("closed before a complete head: {head:?}"));
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
        if head.len() > 64 * 1024 {
            return Err("head too long".into());
        }
    }
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line: {head:?}"))?;
    let lower = head.to_ascii_lowercase();
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
        body_len: 0,
        complete: true,
    };
    if bodiless || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    let mut buf = [0u8; 16 * 1024];
    let keep = |response: &mut Response, bytes: &[u8]| {
        response.body_len += bytes.len() as u64;
        if response.body.len() < 64 * 1024 {
            response.body.extend_from_slice(bytes);
        }
    };
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            match reader.read(&mut buf[..want]) {
                Ok(0) | Err(_) => {
                    response.complete = false;
                    break;
                }
                Ok(n) => {
                    keep(&mut response, &buf[..n]);
                    left -= n as u64;
                }
            }
        }
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_or(true, |n| n == 0) {
                response.complete = false;
                break;
            }
            let Ok(size) = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            else {
                response.complete = false;
                break;
            };
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer).is_ok_and(|n| n > 2) {
                    trailer.clear();
                }
                break;
            }
            let mut left = size + 2;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                match reader.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => {
                        response.complete = false;
                        left = 0;
                    }
                    Ok(n) => {
                        let data = n.min(left.saturating_sub(2) as usize);
                        keep(&mut response, &buf[..data]);
                        left -= n as u64;
                    }
                }
            }
            if !response.complete {
                break;
            }
        }
    } else {
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => keep(&mut response, &buf[..n]),
            }
        }
    }
    Ok(response)
}

fn connect(proxy: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let stream =
        TcpStream::connect_timeout(&proxy, IO_LIMIT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(IO_LIMIT)))
        .map_err(|e| format!("timeouts: {e}"))?;
    Ok(BufReader::new(stream))
}

fn send(reader: &mut BufReader<TcpStream>, bytes: &[u8]) -> Result<(), String> {
    reader
        .get_mut()
        .write_all(bytes)
        .map_err(|e| format!("send: {e}"))
}

/// One request on a new connection, one response.
fn get_once(proxy: SocketAddr, request: &str) -> Result<Response, String> {
    let mut conn = connect(proxy)?;
    send(&mut conn, request.as_bytes())?;
    read_response(&mut conn, false)
}

/// Whether the proxy closes `conn` (EOF or reset) within `IO_LIMIT`.
fn closes(conn: &mut BufReader<TcpStream>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// A small deterministic generator (xorshift) so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A client thread: picks a scenario at a time until `end`.
fn client_loop(
    n: usize,
    proxy: SocketAddr,
    origin: SocketAddr,
    echo_port: u16,
    end: Instant,
    stop: &AtomicBool,
) -> Tally {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut tally = Tally::default();
    let mut seq = 0u64;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        seq += 1;
        let url = |path: &str| format!("http://{origin}{path}?c={n}&s={seq}");
        let result = match rng.below(100) {
            0..=24 => get_fast(proxy, &url("/fast"), origin),
            25..=39 => keep_alive(proxy, origin, &url("/fast"), &url("/chunked")),
            40..=47 => post(proxy, origin, &url("/post"), rng.below(2) == 0),
            48..=52 => expect_status(proxy, &url("/chunked"), origin, 200, "GET chunked 200", Some(64 * 1024)),
            53..=56 => expect_status(proxy, &url("/slow"), origin, 200, "GET slow origin 200", None),
            57..=58 => expect_status(proxy, &url("/too-slow"), origin, 504, "GET too-slow origin 504", None),
            59..=62 => reset_mid_body(proxy, &url("/reset"), origin),
            63..=65 => expect_status(proxy, &url("/huge"), origin, 200, "GET huge 8 MiB 200", Some(HUGE_BYTES)),
            66..=68 => expect_status(proxy, &url("/malformed"), origin, 502, "GET malformed origin 502", None),
            69..=78 => tunnel(proxy, echo_port),
            79..=82 => bad(proxy, b"HELLO THERE\r\n\r\n".to_vec(), 400, "bad: garbage 400"),
            83..=86 => bad(
                proxy,
                format!(
                    "POST {} HTTP/1.1\r\nHost: {origin}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
                    url("/post")
                )
                .into_bytes(),
                400,
                "bad: smuggling CL+TE 400",
            ),
            87..=89 => bad(proxy, oversized_head(&url("/fast"), origin), 431, "bad: oversized head 431"),
            _ => abandon_download(proxy, &url("/huge"), origin),
        };
        tally.record(result);
    }
    tally
}

fn get_fast(proxy: SocketAddr, url: &str, origin: SocketAddr) -> Result<&'static str, String> {
    let r = get_once(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"),
    )
    .map_err(|e| format!("GET fast: {e}"))?;
    if r.status == 200 && r.body == FAST_BODY {
        Ok("GET new connection 200")
    } else {
        Err(format!(
            "GET fast: status {} body {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ))
    }
}

fn keep_alive(
    proxy: SocketAddr,
    origin: SocketAddr,
    fast: &str,
    chunked: &str,
) -> Result<&'static str, String> {
    let mut conn = connect(proxy).map_err(|e| format!("keep-alive: {e}"))?;
    for i in 0..6 {
        let (url, len) = if i % 3 == 2 {
            (chunked, 64 * 1024)
        } else {
            (fast, FAST_BODY.len() as u64)
        };
        send(
            &mut conn,
            format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("keep-alive: request {i}: {e}"))?;
        let r =
            read_response(&mut conn, false).map_err(|e| format!("keep-alive: request {i}: {e}"))?;
        if r.status != 200 || r.body_len != len || !r.complete {
            return Err(format!(
                "keep-alive: request {i}: status {} {} bytes",
                r.status, r.body_len
            ));
        }
    }
    Ok("GET keep-alive x6 200")
}

fn post(
    proxy: SocketAddr,
    origin: SocketAddr,
    url: &str,
    chunked: bool,
) -> Result<&'static str, String> {
    let body = vec![b'p'; 48 * 1024];
    let mut conn = connect(proxy).map_err(|e| format!("POST: {e}"))?;
    let mut request = format!("POST {url} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n");
    if chunked {
        request.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut bytes = request.into_bytes();
        for part in body.chunks(5000) {
            bytes.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            bytes.extend_from_slice(part);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        send(&mut conn, &bytes).map_err(|e| format!("POST chunked: {e}"))?;
    } else {
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        send(&mut conn, &bytes).map_err(|e| format!("POST: {e}"))?;
    }
    let r = read_response(&mut conn, false).map_err(|e| format!("POST: {e}"))?;
    let want = format!("got {} bytes\n", body.len());
    match (r.status, r.body == want.as_bytes(), chunked) {
        (200, true, true) => Ok("POST chunked 200"),
        (200, true, false) => Ok("POST length 200"),
        _ => Err(format!(
            "POST: status {} body {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )),
    }
}

fn expect_status(
    proxy: SocketAddr,
    url: &str,
    origin: SocketAddr,
    status: u16,
    name: &'static str,
    len: Option<u64>,
) -> Result<&'static str, String> {
    let r = get_once(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"),
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let len_ok = len.is_none_or(|len| r.body_len == len && r.complete);
    if r.status == status && len_ok {
        Ok(name)
    } else {
        Err(format!(
            "{name}: got {} with {} bytes (complete {}): {:?}",
            r.status,
            r.body_len,
            r.complete,
            r.head.lines().next()
        ))
    }
}

/// The origin resets mid-body: the client must see the body cut short.
fn reset_mid_body(
    proxy: SocketAddr,
    url: &str,
    origin: SocketAddr,
) -> Result<&'static str, String> {
    let r = get_once(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"),
    )
    .map_err(|e| format!("reset mid-body: {e}"))?;
    match (r.status, r.complete) {
        (200, false) => Ok("GET origin reset mid-body: cut short"),
        (502, _) => Ok("GET origin reset mid-body: 502"),
        _ => Err(format!(
            "reset mid-body: {} with {} bytes looked complete: {}",
            r.status, r.body_len, r.complete
        )),
    }
}

fn tunnel(proxy: SocketAddr, echo_port: u16) -> Result<&'static str, String> {
    let mut conn = connect(proxy).map_err(|e| format!("CONNECT: {e}"))?;
    send(
        &mut conn,
        format!("CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: 127.0.0.1:{echo_port}\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| format!("CONNECT: {e}"))?;
    let r = read_response(&mut conn, true).map_err(|e| format!("CONNECT: {e}"))?;
    if r.status != 200 {
        return Err(format!("CONNECT: status {}", r.status));
    }
    let message: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..4 {
        send(&mut conn, &message).map_err(|e| format!("CONNECT: {e}"))?;
        let mut echoed = vec![0u8; message.len()];
        conn.read_exact(&mut echoed)
            .map_err(|e| format!("CONNECT: echo: {e}"))?;
        if echoed != message {
            return Err("CONNECT: echo differs".into());
        }
    }
    let _ = conn.get_ref().shutdown(Shutdown::Write);
    if closes(&mut conn) {
        Ok("CONNECT tunnel echoed, closed")
    } else {
        Err("CONNECT: tunnel not closed after half-close".into())
    }
}

fn oversized_head(url: &str, origin: SocketAddr) -> Vec<u8> {
    let mut head = format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\n");
    for i in 0..20 {
        head.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(4000)));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A bad request gets `status` and the connection is closed.
fn bad(
    proxy: SocketAddr,
    request: Vec<u8>,
    status: u16,
    name: &'static str,
) -> Result<&'static str, String> {
    let mut conn = connect(proxy).map_err(|e| format!("{name}: {e}"))?;
    // The proxy may answer before reading it all.
    let _ = conn.get_mut().write_all(&request);
    let r = read_response(&mut conn, false).map_err(|e| format!("{name}: {e}"))?;
    if r.status != status {
        return Err(format!("{name}: got {}", r.status));
    }
    if closes(&mut conn) {
        Ok(name)
    } else {
        Err(format!("{name}: connection left open"))
    }
}

/// Reads the start of a huge download, then leaves.
fn abandon_download(
    proxy: SocketAddr,
    url: &str,
    origin: SocketAddr,
) -> Result<&'static str, String> {
    let mut conn = connect(proxy).map_err(|e| format!("abandon: {e}"))?;
    send(
        &mut conn,
        format!("GET {url} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("abandon: {e}"))?;
    let mut buf = vec![0u8; 100 * 1024];
    conn.read_exact(&mut buf)
        .map_err(|e| format!("abandon: {e}"))?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "abandon: {:?}",
            String::from_utf8_lossy(&buf[..40])
        ));
    }
    // Dropping the socket with unread data resets it: the client is gone.
    Ok("GET huge, client left mid-body")
}

/// Keeps `TRICKLERS` connections sending a head a byte every 200 ms; each
/// must get 408 after the header timeout and be closed; then a new one.
fn trickle_loop(proxy: SocketAddr, origin: SocketAddr, end: Instant, stop: &AtomicBool) -> Tally {
    struct Slow {
        stream: TcpStream,
        sent: usize,
        got: Vec<u8>,
        opened: Instant,
    }
    let head = format!(
        "GET http://{origin}/fast?trickled HTTP/1.1\r\nHost: {origin}\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(200)
    )
    .into_bytes();
    let open = || -> Result<Slow, String> {
        let stream = TcpStream::connect_timeout(&proxy, IO_LIMIT)
            .map_err(|e| format!("trickle: connect: {e}"))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("trickle: {e}"))?;
        Ok(Slow {
            stream,
            sent: 0,
            got: Vec::new(),
            opened: Instant::now(),
        })
    };
    let mut tally = Tally::default();
    let mut conns: Vec<Slow> = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        while conns.len() < TRICKLERS {
            match open() {
                Ok(conn) => conns.push(conn),
                Err(e) => {
                    tally.record(Err(e));
                    break;
                }
            }
        }
        let mut i = 0;
        while i < conns.len() {
            let conn = &mut conns[i];
            let mut ended = None;
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        ended = Some(true);
                        break;
                    }
                    Ok(n) => conn.got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        ended = Some(false);
                        break;
                    }
                }
            }
            if conn.got.is_empty() && ended.is_none() && conn.sent < head.len() {
                match conn.stream.write(&head[conn.sent..=conn.sent]) {
                    Ok(n) => conn.sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => ended = Some(false),
                }
            }
            let overdue = conn.opened.elapsed() > HEADER_TIMEOUT + IO_LIMIT;
            if ended.is_some() || overdue {
                let conn = conns.swap_remove(i);
                let is_408 = conn.got.starts_with(b"HTTP/1.1 408 ");
                let waited = conn.opened.elapsed();
                tally.record(match (is_408, ended) {
                    (true, Some(true)) if waited >= HEADER_TIMEOUT => {
                        Ok("trickled head: 408, closed")
                    }
                    // The acceptor closes without lingering: a byte that
                    // crosses the 408 turns the FIN into a reset.
                    (true, Some(false)) if waited >= HEADER_TIMEOUT => {
                        Ok("trickled head: 408, then reset")
                    }
                    _ => Err(format!(
                        "trickled head: after {waited:?} and {} bytes: ended {ended:?}, got {:?}",
                        conn.sent,
                        String::from_utf8_lossy(&conn.got)
                    )),
                });
            } else {
                i += 1;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    tally
}
