//! Real clients: curl through the proxy, and raw bytes over a TCP socket for
//! requests curl will not send (malformed, smuggling, pipelined, slow).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// What curl got.
#[derive(Debug)]
pub struct CurlReply {
    /// The final status (0 when no response was received).
    pub status: u16,
    /// Header lines of the last response, as `(lowercase name, value)`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's exit code.
    pub exit: i32,
    pub stderr: String,
}

impl CurlReply {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl -x PROXY URL EXTRA...` with a 30 s limit.
pub fn curl(proxy: SocketAddr, url: &str, extra: &[&str]) -> CurlReply {
    let dir = tempfile::tempdir().expect("temp dir");
    let (head_file, body_file) = (dir.path().join("head"), dir.path().join("body"));
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "--noproxy",
            "",
            "-x",
            &format!("http://{proxy}"),
        ])
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let head = std::fs::read_to_string(&head_file).unwrap_or_default();
    // The last block of header lines is the final response (after 100 Continue).
    let last_block = head
        .trim_end()
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    let headers = last_block
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlReply {
        status: String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers,
        body: std::fs::read(&body_file).unwrap_or_default(),
        exit: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Sends `request` on a new connection and reads until the proxy closes it
/// or `limit` passes.
pub fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect to proxy");
    let _ = stream.write_all(request);
    read_until_close(&mut stream, limit)
}

/// First value of header `name` among `(lowercase name, value)` pairs.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads from `stream` until EOF, an error, or `limit`.
pub fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Reads one response (head and Content-Length or chunked body) from `stream`.
/// Returns (status, head text, body).
pub fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<(u16, String, Vec<u8>)> {
    let response = super::raw::read_one(stream, false, limit)?;
    Some((response.status, response.head, response.body))
}

/// One `/metrics` scrape with curl, as Prometheus would (no proxy):
/// (response head, page).
pub fn scrape_metrics(proxy: SocketAddr) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "*", "-D", "-"])
        .arg(format!("http://{proxy}/metrics"))
        .output()
        .expect("run curl");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, page) = text.split_once("\r\n\r\n").expect("head and body");
    (head.to_string(), page.to_string())
}

/// The value of the sample named exactly `name` (labels included) on a
/// `/metrics` page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (n, value) = line.rsplit_once(' ')?;
            (n == name).then(|| value.parse().ok())?
        })
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}
