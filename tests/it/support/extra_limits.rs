//! Helpers for the limits, access, shutdown and config tests: raw exchanges
//! that report whether the proxy closed the connection, a parser for the
//! responses in a byte stream, a gated origin that answers only when a test
//! lets it, a tripwire listener that counts every connection made to it, and
//! the binary started or run with exactly the arguments given.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::origin::{Origin, Reply};

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// Whether the proxy closed the connection (EOF or reset) within the limit.
    pub closed: bool,
}

impl Exchange {
    /// The responses in `bytes`, in order.
    pub fn responses(&self) -> Vec<Response> {
        parse_responses(&self.bytes)
    }

    /// The received bytes as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// First value of header `name` in a response head, case-insensitive.
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends `request` on a new connection (from a separate thread, so a proxy
/// that answers before reading everything cannot deadlock the test), then
/// reads until the proxy closes or `limit` passes.
pub fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Exchange {
    let stream = TcpStream::connect(addr).expect("connect to proxy");
    exchange_on(stream, request, limit)
}

/// `exchange` on a connection already open.
pub fn exchange_on(mut stream: TcpStream, request: &[u8], limit: Duration) -> Exchange {
    let mut writer = stream.try_clone().expect("clone client socket");
    let request = request.to_vec();
    let sender = thread::spawn(move || {
        let _ = writer.set_write_timeout(Some(Duration::from_secs(30)));
        // The proxy may close before reading it all: errors are expected.
        let _ = writer.write_all(&request);
    });
    let result = read_to_close(&mut stream, limit);
    drop(stream);
    let _ = sender.join();
    result
}

/// Reads until EOF, a reset, or `limit`; says which.
pub fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Exchange {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Exchange {
                bytes,
                closed: false,
            };
        };
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // A reset also means the proxy closed the connection.
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
        }
    }
}

/// Splits a byte stream into responses (Content-Length or chunked bodies;
/// a response without either runs to the end). Stops at anything unparseable.
pub fn parse_responses(mut data: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(end) = find(data, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&data[..end + 4]).into_owned();
        let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        let mut rest = &data[end + 4..];
        let informational = (100..200).contains(&status);
        let body = if informational {
            Vec::new()
        } else if let Some(len) =
            header_in(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
        {
            let len = len.min(rest.len());
            let body = rest[..len].to_vec();
            rest = &rest[len..];
            body
        } else if header_in(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            while let Some(line_end) = find(rest, b"\r\n") {
                let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
                    break;
                };
                rest = &rest[line_end + 2..];
                let take = size.min(rest.len());
                body.extend_from_slice(&rest[..take]);
                rest = &rest[(take + 2).min(rest.len())..];
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let body = rest.to_vec();
            rest = &[];
            body
        };
        out.push(Response { status, head, body });
        data = rest;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens when told to, or when dropped; a gated origin's replies wait for it.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<AtomicBool>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            open: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Lets every waiting and later reply through.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Waits until open, at most `limit`.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.open.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// An origin whose every reply is `ok(text/plain, body)`, sent only once
/// `gate` opens (or after 60 s, so no thread can hang for ever). The request
/// is recorded before the wait, so `requests()` shows it has arrived.
pub fn gated_origin(gate: &Gate, body: &'static [u8]) -> Origin {
    let gate = gate.clone();
    Origin::start(move |_| {
        gate.wait(Duration::from_secs(60));
        Reply::ok("text/plain", body)
    })
}

/// A listener that counts the connections made to it and answers each with
/// a small 200, so a test that should have been denied sees it plainly.
pub struct Tripwire {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Tripwire {
    /// Binds `addr` (port 0 for any).
    pub fn bind(addr: &str) -> std::io::Result<Tripwire> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (hits.clone(), stop.clone());
        thread::Builder::new()
            .name("tripwire".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntripwire",
                        );
                    });
                }
            })?;
        Ok(Tripwire { addr, hits, stop })
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
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

/// The binary running `serve` with exactly the arguments given (no
/// `--listen` added), its stderr collected; killed by PID on drop.
pub struct Served {
    pub addr: SocketAddr,
    /// The startup line that named the address.
    pub startup: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `fetchproxy serve ARGS...` and waits up to 20 s for its "listening on" line.
    pub fn start(args: &[&str]) -> Result<Served, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fetchproxy"))
            .arg("serve")
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
                if line.contains("listening on ") {
                    let _ = tx.send(line.clone());
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let startup = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "fetchproxy serve {args:?} did not start: {:?}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                ));
            }
        };
        let addr = startup
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([' ', ',']).next())
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| format!("no address in {startup:?}"))?;
        Ok(Served {
            addr,
            startup,
            child,
            log,
        })
    }

    /// Sends `-TERM` by PID and waits up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        super::proxy::wait_for_exit(&mut self.child, limit)
    }

    /// The stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
