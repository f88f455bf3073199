//! The fetching: `--concurrency` named threads take jobs from a bounded
//! channel, each over its own keep-alive connection to the proxy; redirects
//! are followed (at most 10, loops detected), connection failures and 503s
//! retried with backoff honouring `Retry-After`, all within the URL's time
//! limit. Each job ends in one `Outcome` sent back to the main thread, which
//! names, saves and records it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use url::Url;

use crate::client::http::{Head, HttpError, ProxyConnection};
use crate::client::save::{Finished, Scratch};

/// Redirects followed for one URL.
pub const MAX_REDIRECTS: usize = 10;
/// The longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Progress is reported in pieces of at least this many bytes.
const PROGRESS_STEP: u64 = 256 * 1024;

/// One URL to fetch.
#[derive(Debug)]
pub struct Job {
    pub id: usize,
    pub url: Url,
}

/// What the workers tell the main thread.
#[derive(Debug)]
pub enum Event {
    /// A worker began on a job.
    Started { id: usize, url: Url },
    /// Body bytes arrived (for the progress display).
    Bytes(u64),
    /// A job is over.
    Done(Box<Outcome>),
}

/// Why one URL was not fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The final response was not 2xx.
    #[error("HTTP {status}{}{}", reason_text(.reason), detail_text(.detail))]
    Status {
        status: u16,
        reason: String,
        /// What the proxy said about its own errors (Proxy-Status and body).
        detail: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("redirect loop at {0}")]
    RedirectLoop(String),
    #[error("redirect to unusable location {0:?}")]
    BadRedirect(String),
    #[error("cannot create temporary file: {0}")]
    TempFile(std::io::Error),
}

fn reason_text(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    }
}

fn detail_text(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

impl FetchError {
    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Http(err) => err.is_retryable(),
            FetchError::Status { status, .. } => *status == 503,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A body saved in its temporary file, with what the response said about it.
#[derive(Debug)]
pub struct Download {
    pub file: Finished,
    pub content_disposition: Option<String>,
}

/// How one job ended.
#[derive(Debug)]
pub struct Outcome {
    pub id: usize,
    pub url: Url,
    pub result: Result<Download, FetchError>,
    /// The final response's status, when one arrived.
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub request_id: Option<String>,
    pub elapsed: Duration,
}

/// What every worker needs.
pub struct Settings {
    pub proxy: Vec<SocketAddr>,
    pub retries: u32,
    pub timeout: Duration,
    /// Set on Ctrl-C: downloads stop at the next piece.
    pub stop: Arc<AtomicBool>,
    pub scratch: Arc<Scratch>,
}

/// Starts `n` workers named `fetch-1` ... over `jobs`; they end when the
/// job channel is closed and empty.
///
/// # Errors
/// The OS error when a thread cannot be spawned.
pub fn spawn_workers(
    n: usize,
    settings: Arc<Settings>,
    jobs: &Receiver<Job>,
    events: &Sender<Event>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (1..=n)
        .map(|i| {
            let (settings, jobs, events) = (settings.clone(), jobs.clone(), events.clone());
            thread::Builder::new()
                .name(format!("fetch-{i}"))
                .spawn(move || {
                    let mut conn = ProxyConnection::new(settings.proxy.clone());
                    for job in jobs.iter() {
                        let _ = events.send(Event::Started {
                            id: job.id,
                            url: job.url.clone(),
                        });
                        let outcome = fetch(&mut conn, job, &settings, &events);
                        if events.send(Event::Done(Box::new(outcome))).is_err() {
                            break;
                        }
                    }
                })
        })
        .collect()
}

/// What the last response said, kept for the manifest whatever happens next.
#[derive(Default)]
struct Seen {
    status: Option<u16>,
    content_type: Option<String>,
    request_id: Option<String>,
}

impl Seen {
    fn record(&mut self, head: &Head) {
        self.status = Some(head.status);
        self.content_type = head.header("content-type").map(str::to_string);
        self.request_id = head.header("x-request-id").map(str::to_string);
    }
}

/// Fetches one job with retries; never panics on peer input.
fn fetch(
    conn: &mut ProxyConnection,
    job: Job,
    settings: &Settings,
    events: &Sender<Event>,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + settings.timeout;
    let mut seen = Seen::default();
    let mut attempt = 0u32;
    let result = loop {
        let result = fetch_once(conn, &job.url, deadline, settings, events, &mut seen);
        match result {
            Err(err) if err.is_retryable() && attempt < settings.retries => {
                let wait = err.retry_after().unwrap_or_else(|| backoff(attempt));
                if Instant::now() + wait >= deadline || !pause(wait, &settings.stop) {
                    break Err(err);
                }
                attempt += 1;
                log::debug!("retry {attempt} for {} after {err}", job.url);
            }
            other => break other,
        }
    };
    Outcome {
        id: job.id,
        url: job.url,
        result,
        status: seen.status,
        content_type: seen.content_type,
        request_id: seen.request_id,
        elapsed: start.elapsed(),
    }
}

/// One attempt: the request, its redirects, and the body into a temporary file.
fn fetch_once(
    conn: &mut ProxyConnection,
    url: &Url,
    deadline: Instant,
    settings: &Settings,
    events: &Sender<Event>,
    seen: &mut Seen,
) -> Result<Download, FetchError> {
    let stop = &*settings.stop;
    let mut current = url.clone();
    let mut visited = HashSet::from([current.to_string()]);
    let mut redirects = 0;
    loop {
        *seen = Seen::default();
        let head = conn.send(&current, deadline)?;
        seen.record(&head);
        if let Some(location) = redirect_location(&head) {
            conn.discard_body(&head, deadline, stop);
            if redirects == MAX_REDIRECTS {
                return Err(FetchError::TooManyRedirects);
            }
            redirects += 1;
            let mut next = current
                .join(location)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| FetchError::BadRedirect(location.to_string()))?;
            next.set_fragment(None);
            if !visited.insert(next.to_string()) {
                return Err(FetchError::RedirectLoop(next.to_string()));
            }
            current = next;
            continue;
        }
        if !(200..300).contains(&head.status) {
            let body = conn.discard_body(&head, deadline, stop);
            return Err(status_error(&head, &body));
        }
        let mut temp = settings.scratch.create().map_err(FetchError::TempFile)?;
        let mut pending = 0u64;
        let mut report = |n: u64| {
            pending += n;
            if pending >= PROGRESS_STEP {
                let _ = events.send(Event::Bytes(std::mem::take(&mut pending)));
            }
        };
        let read = conn.read_body(&head, &mut temp, deadline, stop, &mut report);
        if pending > 0 {
            let _ = events.send(Event::Bytes(pending));
        }
        read?;
        let file = temp.finish().map_err(HttpError::Save)?;
        return Ok(Download {
            file,
            content_disposition: head.header("content-disposition").map(str::to_string),
        });
    }
}

/// The target of a redirect we follow (RFC 9110 §15.4), if `head` is one.
fn redirect_location(head: &Head) -> Option<&str> {
    match head.status {
        301 | 302 | 303 | 307 | 308 => head.header("location").filter(|l| !l.is_empty()),
        _ => None,
    }
}

fn status_error(head: &Head, body: &[u8]) -> FetchError {
    // Errors the proxy made itself carry Proxy-Status and a one-line text body.
    let detail = head.header("proxy-status").map(|ps| {
        let token = ps
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("error="))
            .unwrap_or(ps);
        let text = String::from_utf8_lossy(body);
        let line: String = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        if line.is_empty() {
            token.to_string()
        } else {
            format!("{token}: {line}")
        }
    });
    FetchError::Status {
        status: head.status,
        reason: head.reason.clone(),
        detail,
        retry_after: head.header("retry-after").and_then(parse_retry_after),
    }
}

/// `Retry-After` in delta-seconds (RFC 9110 §10.2.3), capped. An HTTP-date
/// is not understood and leaves the choice to the backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// 0.5 s, 1 s, 2 s, ... up to 16 s, plus up to 250 ms of jitter so many
/// workers do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.pow(attempt.min(5));
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % 250)
        .unwrap_or(0);
    base + Duration::from_millis(jitter)
}

/// Waits `wait` unless `stop` is set first; false when stopped.
fn pause(wait: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        thread::sleep(left.min(Duration::from_millis(100)));
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_is_capped() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(0) < Duration::from_secs(1));
        assert!(backoff(2) >= Duration::from_secs(2));
        assert!(backoff(50) <= Duration::from_millis(16_250));
    }

    #[test]
    fn status_errors_say_what_the_proxy_said() {
        let err = FetchError::Status {
            status: 502,
            reason: "Bad Gateway".into(),
            detail: Some("dns_error: cannot resolve nohost.invalid".into()),
            retry_after: None,
        };
        assert_eq!(
            err.to_string(),
            "HTTP 502 Bad Gateway (dns_error: cannot resolve nohost.invalid)"
        );
        assert!(!err.is_retryable());
    }
}
