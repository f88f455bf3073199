//! `Proxy`: the server started in-process on 127.0.0.1:0, and `ProxyProcess`:
//! the real binary, for CLI, signal and exit-code tests. Both stop on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fetchproxy::config::ServeConfig;
use fetchproxy::server::{self, Running};

/// The settings tests start from: loopback, a few workers, local origins allowed.
pub fn test_config() -> ServeConfig {
    ServeConfig {
        listen: vec!["127.0.0.1:0".parse().expect("loopback address")],
        workers: 4.try_into().expect("non-zero"),
        queue: 16.try_into().expect("non-zero"),
        allow_dest: vec![
            "127.0.0.0/8".parse().expect("cidr"),
            "::1/128".parse().expect("cidr"),
        ],
        ..ServeConfig::default()
    }
}

/// A server running inside the test process.
pub struct Proxy {
    pub addr: SocketAddr,
    running: Option<Running>,
}

impl Proxy {
    /// Starts with `test_config()`.
    pub fn start() -> Proxy {
        Proxy::with(|_| {})
    }

    /// Starts with `test_config()` changed by `adjust`.
    pub fn with(adjust: impl FnOnce(&mut ServeConfig)) -> Proxy {
        let mut config = test_config();
        adjust(&mut config);
        let running = server::start(config).expect("start proxy");
        Proxy {
            addr: running.local_addrs()[0],
            running: Some(running),
        }
    }

    /// `http://127.0.0.1:PORT`, for curl's `-x`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begins a graceful shutdown and waits for it.
    pub fn stop(mut self) -> server::Stopped {
        let running = self.running.take().expect("running until stopped");
        running.shutdown().begin_drain();
        running.wait()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().begin_drain();
            running.shutdown().stop_now();
            let _ = running.wait();
        }
    }
}

/// The real `fetchproxy` binary, started with `serve` and the given arguments.
pub struct ProxyProcess {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts `fetchproxy serve --listen 127.0.0.1:0 ARGS...` and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str]) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fetchproxy");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "fetchproxy did not start: {:?}",
                    log.lock().map(|l| l.clone())
                );
            }
        };
        ProxyProcess { addr, child, log }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by PID (`TERM`, `INT`, `KILL`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_for_exit(&mut self.child, limit)
    }

    /// The stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Polls the log until a line contains `needle`, up to `limit`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls a child process for its exit status, up to `limit`.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs the binary to completion (for usage and config errors).
pub fn run_binary(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run fetchproxy")
}

/// The address in a startup line `... listening on 127.0.0.1:PORT ...`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split([' ', ',']).next()?.parse().ok()
}
