//! Steady load through a proxy: a few threads, each on a keep-alive
//! connection of its own, cycling through a list of URLs and recording
//! every outcome (which instance answered, from `Via`, or why it failed).
//! A failure is a request without a whole 200 carrying the body the origin
//! gives for that URL; a new connection is opened after one, as a client
//! would. Bounded: each thread stops after `MAX_REQUESTS` at most.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use url::Url;

/// Requests one thread sends at most.
const MAX_REQUESTS: usize = 20_000;
/// How long one answer may take.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// A pause between requests, so that the load stays steady without taking
/// every core from the processes it loads.
const PAUSE: Duration = Duration::from_millis(2);

/// What one request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Index into the URL list.
    pub url: usize,
    /// When the answer (or the failure) came.
    pub at: Instant,
    /// The instance that answered (the last name in `Via`), or what went wrong.
    pub result: Result<String, String>,
}

/// Load running in the background.
pub struct Load {
    urls: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    /// Starts `threads` clients of `proxy`, each cycling through `urls` from
    /// its own starting point. The origin must answer each URL with its
    /// path as the body.
    pub fn start(proxy: SocketAddr, urls: Vec<String>, threads: usize) -> Load {
        let urls = Arc::new(urls);
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|n| {
                let (urls, stop, answered) = (urls.clone(), stop.clone(), answered.clone());
                thread::Builder::new()
                    .name(format!("load-{n}"))
                    .spawn(move || client(proxy, &urls, n, &stop, &answered))
                    .expect("spawn a load thread")
            })
            .collect();
        Load {
            urls,
            stop,
            answered,
            threads,
        }
    }

    /// Requests answered so far (well or not).
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Polls until `more` requests past the present count are answered.
    pub fn wait_for_more(&self, more: usize, limit: Duration) -> bool {
        let goal = self.answered() + more;
        super::wait_until(limit, || self.answered() >= goal)
    }

    /// Stops the clients and returns every outcome, in time order.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut outcomes: Vec<Outcome> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        outcomes.sort_by_key(|o| o.at);
        Tally {
            urls: self.urls,
            outcomes,
        }
    }
}

/// Every outcome of a load.
pub struct Tally {
    pub urls: Arc<Vec<String>>,
    pub outcomes: Vec<Outcome>,
}

impl Tally {
    /// The failed requests: (URL, what went wrong, when).
    pub fn failures(&self) -> Vec<(&str, &str, Instant)> {
        self.outcomes
            .iter()
            .filter_map(|o| match &o.result {
                Err(why) => Some((self.urls[o.url].as_str(), why.as_str(), o.at)),
                Ok(_) => None,
            })
            .collect()
    }

    /// How many requests got their answer.
    pub fn successes(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_ok()).count()
    }
}

/// `GET url` through `proxy` on a connection of its own: the instance that
/// answered (from `Via`), or what went wrong.
pub fn fetch_once(proxy: SocketAddr, url: &str) -> Result<String, String> {
    let stream = TcpStream::connect(proxy).map_err(|err| format!("connect: {err}"))?;
    exchange(&mut BufReader::new(stream), url).map(|(via, _)| via)
}

/// One client: a keep-alive connection, a new one after a failure or a
/// `Connection: close`.
fn client(
    proxy: SocketAddr,
    urls: &[String],
    first: usize,
    stop: &AtomicBool,
    answered: &AtomicUsize,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    for n in 0..MAX_REQUESTS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let url = (first * 7 + n) % urls.len();
        let result = match conn.as_mut() {
            Some(reader) => exchange(reader, &urls[url]),
            None => TcpStream::connect(proxy)
                .map_err(|err| format!("connect: {err}"))
                .and_then(|stream| {
                    let reader = conn.insert(BufReader::new(stream));
                    exchange(reader, &urls[url])
                }),
        };
        let result = match result {
            Ok((via, keep)) => {
                if !keep {
                    conn = None;
                }
                Ok(via)
            }
            Err(why) => {
                conn = None;
                Err(why)
            }
        };
        outcomes.push(Outcome {
            url,
            at: Instant::now(),
            result,
        });
        answered.fetch_add(1, Ordering::SeqCst);
        thread::sleep(PAUSE);
    }
    outcomes
}

/// Sends `GET url` and reads the answer: the instance that served it and
/// whether the connection stays open.
fn exchange(reader: &mut BufReader<TcpStream>, url: &str) -> Result<(String, bool), String> {
    let parsed = Url::parse(url).map_err(|err| format!("bad test URL {url}: {err}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let request = format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let stream = reader.get_mut();
    stream
        .set_read_timeout(Some(ANSWER_LIMIT))
        .map_err(|err| format!("set timeout: {err}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("send: {err}"))?;
    let (status, headers) = read_head(reader)?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("status {status} without Content-Length"))?;
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|err| format!("status {status}, body cut: {err}"))?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    if body != parsed.path().as_bytes() {
        return Err(format!("wrong body {:?}", String::from_utf8_lossy(&body)));
    }
    let via = header("via")
        .and_then(|v| v.split_whitespace().last())
        .ok_or("no Via")?
        .to_string();
    let keep = !header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((via, keep))
}

/// Reads a response head: the status and the header lines.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, Vec<(String, String)>), String> {
    let mut line = String::new();
    let mut status = None;
    let mut headers = Vec::new();
    for _ in 0..200 {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(_) => {}
            Err(err) => return Err(format!("read: {err}")),
        }
        let text = line.trim_end();
        if text.is_empty() {
            return status
                .map(|s| (s, headers))
                .ok_or_else(|| "empty head".into());
        }
        match status {
            None => {
                status = Some(
                    text.split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("bad status line {text:?}"))?,
                );
            }
            Some(_) => {
                if let Some((name, value)) = text.split_once(':') {
                    headers.push((name.trim().to_string(), value.trim().to_string()));
                }
            }
        }
    }
    Err("head too long".into())
}
