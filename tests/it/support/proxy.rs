//! `Proxy`: the server started in-process on 127.0.0.1:0, and `ProxyProcess`:
//! the real binary, for CLI, signal and exit-code tests. Both stop on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The real `fetchproxy` binary running `serve`, its stderr collected;
/// killed by PID on drop.
pub struct ProxyProcess {
    pub addr: SocketAddr,
    /// The startup line that named the address.
    pub startup: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts `fetchproxy serve --listen 127.0.0.1:0 ARGS...` and waits for
    /// its "listening on" line; panics if it does not come.
    pub fn start(args: &[&str]) -> ProxyProcess {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        ProxyProcess::spawn(&all).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Starts `fetchproxy serve ARGS...` with exactly the arguments given and
    /// waits up to 20 s for its "listening on" line.
    pub fn spawn(args: &[&str]) -> Result<ProxyProcess, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fetchproxy"));
        command.arg("serve").args(args);
        ProxyProcess::spawn_command(command, args)
    }

    /// [`ProxyProcess::start`] with the open-files limit, soft and hard,
    /// lowered to `limit` (by `sh`'s `ulimit -n`, then `exec`).
    pub fn start_with_file_limit(limit: u64, args: &[&str]) -> ProxyProcess {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {limit} && exec \"$0\" serve \"$@\""),
            ])
            .arg(env!("CARGO_BIN_EXE_fetchproxy"))
            .args(&all);
        ProxyProcess::spawn_command(command, &all).unwrap_or_else(|err| panic!("{err}"))
    }

    fn spawn_command(mut command: Command, args: &[&str]) -> Result<ProxyProcess, String> {
        let mut child = command
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
                    let _ = tx.send((addr, line.clone()));
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let Ok((addr, startup)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "fetchproxy serve {args:?} did not start: {:?}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            ));
        };
        Ok(ProxyProcess {
            addr,
            startup,
            child,
            log,
        })
    }

    /// Sends `-TERM` by PID (the process may be gone already) and waits up
    /// to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(limit)
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

/// Runs the binary with `args`, killing it if it has not exited within `limit`.
pub fn run_binary_within(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fetchproxy");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if !flag.load(Ordering::SeqCst) {
            // Our own child, by its PID.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let output = child.wait_with_output().expect("wait for fetchproxy");
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    output
}

/// The address in a startup line `... listening on 127.0.0.1:PORT ...`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split([' ', ',']).next()?.parse().ok()
}
