//! Memory harness (not a timed bench): the peak resident set of the real
//! `fetchproxy serve` process while 256 clients each stream a 16 MiB body
//! through it at the same time.
//!
//! Run: `cargo bench --bench rss` (the server gets `--workers 256 --queue 256`
//! so every download streams at once). Other `serve` flags replace those:
//! `cargo bench --bench rss -- --workers 32 --queue 256`.
//!
//! The origin and the clients run in this process; the figures are read from
//! the server's `/proc/PID/status` (`VmRSS` when idle, `VmHWM` for the peak).
//! Every body is checked byte for byte. The whole run has a hard deadline,
//! after which the server is killed by its PID and the harness fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[path = "../tests/it/support/origin.rs"]
#[allow(
    dead_code,
    reason = "the harness uses only the huge reply of the test origin"
)]
mod origin;

use origin::{Origin, Reply, pattern_byte};

const CLIENTS: usize = 256;
const BODY_BYTES: u64 = 16 << 20;
const DEADLINE: Duration = Duration::from_secs(120);
const DEFAULT_SERVE_ARGS: [&str; 4] = ["--workers", "256", "--queue", "256"];

fn main() -> ExitCode {
    let started = Instant::now();
    // `cargo bench` passes `--bench`; anything else is for `fetchproxy serve`.
    let mut serve_args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    if serve_args.is_empty() {
        serve_args = DEFAULT_SERVE_ARGS.map(String::from).to_vec();
    }
    let origin = Origin::start(|_| Reply::Huge { len: BODY_BYTES });
    let mut server = match Server::start(&serve_args) {
        Ok(server) => server,
        Err(message) => {
            eprintln!("rss: {message}");
            return ExitCode::FAILURE;
        }
    };
    match measure(&server, &origin, started + DEADLINE) {
        Ok(report) => {
            server.stop();
            report.print(&serve_args);
            ExitCode::SUCCESS
        }
        Err(message) => {
            server.kill();
            eprintln!("rss: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What one run measured.
struct Report {
    idle_kib: u64,
    peak_kib: u64,
    sampled_peak_kib: u64,
    peak_threads: u64,
    after_kib: u64,
    elapsed: Duration,
}

impl Report {
    fn print(&self, serve_args: &[String]) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let total_mib = (CLIENTS as u64 * BODY_BYTES) as f64 / f64::from(1 << 20);
        println!(
            "fetchproxy serve {}: {CLIENTS} clients x {} MiB",
            serve_args.join(" "),
            BODY_BYTES >> 20
        );
        println!("  idle RSS after start   {:8.1} MiB", mib(self.idle_kib));
        println!(
            "  peak RSS (VmHWM)       {:8.1} MiB  (sampled VmRSS peak {:.1} MiB, {} threads)",
            mib(self.peak_kib),
            mib(self.sampled_peak_kib),
            self.peak_threads
        );
        println!(
            "  per client above idle  {:8.1} KiB",
            (self.peak_kib.saturating_sub(self.idle_kib)) as f64 / CLIENTS as f64
        );
        println!("  RSS after the load     {:8.1} MiB", mib(self.after_kib));
        println!(
            "  {total_mib:.0} MiB relayed in {:.1} s ({:.0} MiB/s), every byte checked",
            self.elapsed.as_secs_f64(),
            total_mib / self.elapsed.as_secs_f64()
        );
    }
}

/// Runs the clients, sampling the server's memory until they are all done.
fn measure(server: &Server, origin: &Origin, deadline: Instant) -> Result<Report, String> {
    let idle_kib = server.status("VmRSS")?;
    let (done_tx, done_rx) = mpsc::channel();
    let start = Arc::new(Barrier::new(CLIENTS));
    let pattern: Arc<Vec<u8>> = Arc::new((0..37 + (64 << 10)).map(pattern_byte).collect());
    for i in 0..CLIENTS {
        let (proxy, target, start) = (server.addr, origin.addr, start.clone());
        let (done, pattern) = (done_tx.clone(), pattern.clone());
        thread::Builder::new()
            .name(format!("client-{i}"))
            .stack_size(256 << 10)
            .spawn(move || {
                start.wait();
                let _ = done.send(download(proxy, target, &pattern));
            })
            .map_err(|err| format!("cannot spawn client {i}: {err}"))?;
    }
    drop(done_tx);
    let began = Instant::now();
    let (mut finished, mut sampled_peak_kib, mut peak_threads) = (0, 0, 0);
    while finished < CLIENTS {
        if Instant::now() > deadline {
            return Err(format!(
                "deadline of {DEADLINE:?} passed with {finished} of {CLIENTS} downloads done"
            ));
        }
        sampled_peak_kib = sampled_peak_kib.max(server.status("VmRSS")?);
        peak_threads = peak_threads.max(server.status("Threads")?);
        match done_rx.recv_timeout(Duration::from_millis(10)) {
            Ok(Ok(())) => finished += 1,
            Ok(Err(message)) => return Err(format!("a download failed: {message}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("a client thread ended without a result".into());
            }
        }
    }
    let elapsed = began.elapsed();
    Ok(Report {
        idle_kib,
        // The kernel updates VmHWM lazily; a sample may be a little higher.
        peak_kib: server.status("VmHWM")?.max(sampled_peak_kib),
        sampled_peak_kib,
        peak_threads,
        after_kib: server.status("VmRSS")?,
        elapsed,
    })
}

/// Fetches the huge body through the proxy and checks every byte of it.
fn download(proxy: SocketAddr, origin: SocketAddr, pattern: &[u8]) -> Result<(), String> {
    let mut stream = TcpStream::connect(proxy).map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|err| err.to_string())?;
    let request =
        format!("GET http://{origin}/huge HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("send: {err}"))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut filled = 0;
    let head_end = loop {
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if filled == buf.len() {
            return Err("response head over 64 KiB".into());
        }
        let n = stream
            .read(&mut buf[filled..])
            .map_err(|err| format!("read head: {err}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        filled += n;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "unexpected response: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let mut offset = 0u64;
    let check = |chunk: &[u8], offset: &mut u64| -> Result<(), String> {
        let from = (*offset % 37) as usize;
        if chunk != &pattern[from..from + chunk.len()] {
            return Err(format!("body differs from the origin's near byte {offset}"));
        }
        *offset += chunk.len() as u64;
        Ok(())
    };
    check(&buf[head_end..filled], &mut offset)?;
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|err| format!("read body at byte {offset}: {err}"))?;
        if n == 0 {
            break;
        }
        check(&buf[..n], &mut offset)?;
    }
    if offset != BODY_BYTES {
        return Err(format!("{offset} body bytes instead of {BODY_BYTES}"));
    }
    Ok(())
}

/// The `fetchproxy serve` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(serve_args: &[String]) -> Result<Server, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-dest",
                "127.0.0.0/8",
            ])
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot start fetchproxy: {err}"))?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let (tx, rx) = mpsc::channel();
        // Reads the log to the end, so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(Ok(addr));
                } else if line.contains("ERROR") || line.contains("error:") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(addr)) => {
                server.addr = addr;
                Ok(server)
            }
            Ok(Err(line)) => {
                server.kill();
                Err(format!("fetchproxy did not start: {line}"))
            }
            Err(_) => {
                server.kill();
                Err("fetchproxy did not print its listening address within 20s".into())
            }
        }
    }

    /// A number from `/proc/PID/status` (`VmRSS`, `VmHWM` in KiB, `Threads`).
    fn status(&self, key: &str) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("{path} has no {key}"))
    }

    /// SIGTERM by PID, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL (`Child::kill` signals the child's PID) and reap.
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

/// The address in the startup line `... listening on 127.0.0.1:PORT ...`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split([' ', ',']).next()?.parse().ok()
}
