//! One URL from request to saved body: the proxy chosen by `fleet`,
//! failover to the next in the URL's ranking when one refuses connections
//! or answers 503, redirects followed (at most 10, loops detected), retries
//! with backoff honouring `Retry-After`, all within the URL's time limit.
//! The body goes to a `Sink`: a temporary file for a batch, standard output
//! for `--stdout`. Used by the batch workers and the `--stdout` path alike.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use url::Url;

use crate::client::fleet::Fleet;
use crate::client::http::{CONNECT_TIMEOUT, Head, HttpError, ProxyConnection};
use crate::client::progress::terminal_safe;
use crate::client::proxy::describe;
use crate::client::request::{RequestOptions, request_head};

/// Redirects followed for one URL.
pub const MAX_REDIRECTS: usize = 10;
/// The longest wait a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

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
    /// The proxy wants credentials (407), or did not take those sent.
    #[error("{}", proxy_auth_text(.proxy, *.sent))]
    ProxyAuth { proxy: String, sent: bool },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("redirect loop at {0}")]
    RedirectLoop(String),
    #[error("redirect to unusable location {0:?}")]
    BadRedirect(String),
    #[error("cannot create temporary file: {0}")]
    TempFile(io::Error),
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

fn proxy_auth_text(proxy: &str, sent: bool) -> String {
    if sent {
        format!("HTTP 407: proxy {proxy} did not accept the credentials")
    } else {
        format!(
            "HTTP 407: proxy {proxy} wants credentials; pass --proxy-user USER \
             or --proxy http://USER:PASS@HOST:PORT"
        )
    }
}

impl FetchError {
    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Http(err) => err.is_retryable(),
            FetchError::Status { status, .. } => *status == 503,
            _ => false,
        }
    }

    /// The proxy took no connection (refused, unreachable).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, FetchError::Http(err) if err.is_connect_failure())
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Where a body goes.
pub trait Sink {
    type Out: Write;
    type Done;
    /// A destination for one attempt's body.
    ///
    /// # Errors
    /// The OS error creating it.
    fn open(&mut self) -> io::Result<Self::Out>;
    /// The body is complete.
    ///
    /// # Errors
    /// The OS error making it durable.
    fn finish(&mut self, out: Self::Out) -> io::Result<Self::Done>;
    /// False once bytes went where they cannot be taken back, so that the
    /// URL must not be fetched again.
    fn can_retry(&self) -> bool;
}

/// What the last response said, kept whatever happens next.
#[derive(Debug, Default)]
pub struct Seen {
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    pub request_id: Option<String>,
    /// The name of the proxy that answered.
    pub proxy: Option<String>,
    /// Requests made for the URL, retries and failovers included.
    pub attempts: u32,
}

impl Seen {
    fn record(&mut self, head: &Head, proxy: &str) {
        let header = |name| head.header(name).map(str::to_string);
        *self = Seen {
            status: Some(head.status),
            content_type: header("content-type"),
            content_disposition: header("content-disposition"),
            request_id: header("x-request-id"),
            proxy: Some(proxy.to_string()),
            attempts: self.attempts,
        };
    }
}

/// What a fetch tells its caller on the way.
pub enum Report {
    /// Body bytes arrived.
    Bytes(u64),
    /// A proxy stopped taking connections; said once until it serves again.
    ProxyDown { name: String, error: String },
}

/// What every fetch of a run shares.
pub struct Settings {
    pub fleet: Fleet,
    pub request: RequestOptions,
    pub retries: u32,
    pub timeout: Duration,
    /// Set on Ctrl-C: downloads stop at the next piece.
    pub stop: Arc<AtomicBool>,
}

impl Settings {
    /// One (not yet open) connection per proxy, for one thread.
    pub fn connections(&self) -> Vec<ProxyConnection> {
        self.fleet
            .proxies
            .iter()
            .map(|p| ProxyConnection::new(p.addrs.clone()))
            .collect()
    }
}

/// Fetches `url` into `sink` with failover and retries; never panics on
/// peer input. `conns` holds one connection per proxy, as `connections`
/// makes them.
///
/// Each attempt goes to the first proxy in the URL's order not yet tried
/// in this round. A proxy that refuses the connection is passed over at
/// once, free of charge: the request never left, and it is not counted
/// in `Seen::attempts`. A 503 or a broken connection moves on to the next
/// proxy, which is a retry once the request reaches it. Once every proxy
/// had its turn, the next round waits (Retry-After, or backoff) as a retry.
pub fn fetch<S: Sink>(
    conns: &mut [ProxyConnection],
    url: &Url,
    settings: &Settings,
    sink: &mut S,
    report: &mut dyn FnMut(Report),
) -> (Result<S::Done, FetchError>, Seen) {
    let deadline = Instant::now() + settings.timeout;
    let fleet = &settings.fleet;
    let mut seen = Seen::default();
    let mut tried = vec![false; fleet.proxies.len()];
    let (mut retries_left, mut round) = (settings.retries, 0u32);
    // The error reported if no attempt succeeds. One that came after a
    // response head (a body cut short, a 503) says more than a later
    // attempt that got no answer at all (the proxy went away): it is kept,
    // with the status and request id it came with.
    let mut last: Option<FetchError> = None;
    let mut last_answered = false;
    let mut attempts = 0;
    // Set when an attempt failed over: the next request that reaches a
    // proxy in this round is a retry.
    let mut failed_over = false;
    let result = loop {
        let next = fleet.order_for(url).into_iter().find(|&i| !tried[i]);
        let Some(i) = next else {
            // Every proxy had its turn in this round.
            let Some(err) = last.take() else {
                break Err(HttpError::Protocol("no proxy to try".into()).into());
            };
            if retries_left == 0 {
                break Err(err);
            }
            let wait = err.retry_after().unwrap_or_else(|| backoff(round));
            if Instant::now() + wait >= deadline || !pause(wait, &settings.stop) {
                break Err(err);
            }
            retries_left -= 1;
            round += 1;
            tried.fill(false);
            failed_over = false;
            log::debug!("retry round {round} for {url} after {err}");
            last = Some(err);
            continue;
        };
        tried[i] = true;
        let attempt = Attempt {
            conn: &mut conns[i],
            proxy: i,
            deadline,
            settings,
        };
        let mut this = Seen::default();
        let sent = fleet.now();
        let outcome = attempt.run(url, sink, report, &mut this);
        if !matches!(&outcome, Err(err) if err.is_connect_failure()) {
            attempts += 1;
            if std::mem::take(&mut failed_over) {
                retries_left = retries_left.saturating_sub(1);
            }
        }
        let answered = this.status.is_some();
        if answered {
            // Any answer, a 404 as well as a 200, says the proxy is up.
            fleet.mark_up(i, sent);
        }
        if answered || !last_answered {
            seen = this;
        }
        // What to report when this attempt ends the loop.
        let settle = |err: FetchError, last: &mut Option<FetchError>| match last.take() {
            Some(earlier) if last_answered && !answered => earlier,
            _ => err,
        };
        match outcome {
            Ok(done) => break Ok(done),
            Err(err) if err.is_connect_failure() => {
                if fleet.mark_down(i) {
                    let error = match &err {
                        FetchError::Http(HttpError::Connect { source, .. }) => {
                            describe(source, CONNECT_TIMEOUT)
                        }
                        other => other.to_string(),
                    };
                    report(Report::ProxyDown {
                        name: fleet.proxies[i].name.clone(),
                        error,
                    });
                }
                if !last_answered {
                    last = Some(err);
                }
            }
            Err(err) if err.is_retryable() && sink.can_retry() => {
                if tried.iter().any(|t| !t) {
                    // Failing over to the next proxy at once is a retry
                    // too, charged once the request reaches one.
                    if retries_left == 0 {
                        break Err(settle(err, &mut last));
                    }
                    failed_over = true;
                }
                if answered || !last_answered {
                    last = Some(err);
                    last_answered = answered;
                }
            }
            Err(err) => break Err(settle(err, &mut last)),
        }
    };
    seen.attempts = attempts;
    (result, seen)
}

/// One attempt on one proxy: the request, its redirects, the body.
struct Attempt<'a> {
    conn: &'a mut ProxyConnection,
    proxy: usize,
    deadline: Instant,
    settings: &'a Settings,
}

impl Attempt<'_> {
    fn run<S: Sink>(
        self,
        url: &Url,
        sink: &mut S,
        report: &mut dyn FnMut(Report),
        seen: &mut Seen,
    ) -> Result<S::Done, FetchError> {
        let Attempt {
            conn,
            proxy,
            deadline,
            settings,
        } = self;
        let proxy = &settings.fleet.proxies[proxy];
        let stop = &*settings.stop;
        let mut current = url.clone();
        let mut visited = HashSet::from([current.to_string()]);
        let mut redirects = 0;
        loop {
            *seen = Seen::default();
            let request = request_head(&current, url, &settings.request, proxy.authorization());
            let head = conn.send(&request, deadline)?;
            seen.record(&head, &proxy.name);
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
            if head.status == 407 {
                conn.discard_body(&head, deadline, stop);
                return Err(FetchError::ProxyAuth {
                    proxy: proxy.name.clone(),
                    sent: proxy.authorization().is_some(),
                });
            }
            if !(200..300).contains(&head.status) {
                let body = conn.discard_body(&head, deadline, stop);
                return Err(status_error(&head, &body));
            }
            let mut out = sink.open().map_err(FetchError::TempFile)?;
            conn.read_body(&head, &mut out, deadline, stop, &mut |n| {
                report(Report::Bytes(n))
            })?;
            return sink.finish(out).map_err(|err| HttpError::Save(err).into());
        }
    }
}

/// The target of a redirect we follow (RFC 9110 §15.4), if `head` is one.
fn redirect_location(head: &Head) -> Option<&str> {
    match head.status {
        301 | 302 | 303 | 307 | 308 => head.header("location").filter(|l| !l.is_empty()),
        _ => None,
    }
}

/// Most characters of the proxy's own message kept in an error.
const DETAIL_CHARS: usize = 600;

/// Said of a refusal that came without `Via`.
const NOT_A_PROXY: &str = "no Via header in the reply: if --proxy names a web server rather than \
                           a forward proxy, that server answered for itself";

fn status_error(head: &Head, body: &[u8]) -> FetchError {
    // Errors the proxy made itself carry Proxy-Status and a one-line text body.
    let detail = head.header("proxy-status").map(|ps| {
        let token = ps
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("error="))
            .unwrap_or(ps);
        let text = String::from_utf8_lossy(body);
        let first = text.lines().next().unwrap_or("");
        // Whole, unless far longer than any the proxy writes.
        let mut line: String = first.chars().take(DETAIL_CHARS).collect();
        if line.len() < first.len() {
            line.push_str("...");
        }
        let said = if line.is_empty() {
            token.to_string()
        } else {
            format!("{token}: {line}")
        };
        terminal_safe(&said).into_owned()
    });
    // A redirect is followed by its Location (`redirect_location`): one
    // without is the origin's mistake, and worth saying so.
    let detail = detail.or_else(|| {
        matches!(head.status, 301 | 302 | 303 | 307 | 308)
            .then(|| "a redirect with no Location to follow".to_string())
    });
    // A proxy says `Via` on what it passes on (RFC 9110 §7.6.3); a web
    // server given as `--proxy` answers a request for another host itself,
    // most often with one of these.
    // Proxies that add no `Via` but cache say so otherwise: those are left
    // out.
    let passed_on = ["via", "age", "cache-status", "x-cache"]
        .iter()
        .any(|name| head.header(name).is_some());
    let detail = detail.or_else(|| {
        (matches!(head.status, 400 | 404 | 405 | 421 | 501) && !passed_on)
            .then(|| NOT_A_PROXY.to_string())
    });
    FetchError::Status {
        status: head.status,
        reason: terminal_safe(&head.reason).into_owned(),
        detail,
        retry_after: head
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, as a
/// wait from `now`, capped; a date in the past means no wait.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let date = httpdate::parse_http_date(value).ok()?;
            date.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// 0.5 s, 1 s, 2 s, ... up to 16 s, plus up to 250 ms of jitter so many
/// workers do not retry in step.
fn backoff(round: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.pow(round.min(5));
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
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete RFC 850 form is understood too (RFC 9110 §5.6.7).
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past"
        );
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
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

    #[test]
    fn the_proxys_message_is_kept_whole() {
        let head = Head::bodiless(
            502,
            &[("Proxy-Status", "fetchproxy; error=tls_protocol_error")],
        );
        let message = format!("the origin's certificate was refused: {}", "x".repeat(300));
        let FetchError::Status { detail, .. } = status_error(&head, message.as_bytes()) else {
            panic!("not a status error");
        };
        assert_eq!(detail, Some(format!("tls_protocol_error: {message}")));
        let endless = "y".repeat(10_000);
        let FetchError::Status { detail, .. } = status_error(&head, endless.as_bytes()) else {
            panic!("not a status error");
        };
        let detail = detail.unwrap_or_default();
        assert!(detail.len() < 700 && detail.ends_with("..."), "{detail}");
    }

    #[test]
    fn proxy_auth_errors_say_what_to_do() {
        let missing = FetchError::ProxyAuth {
            proxy: "127.0.0.1:3128".into(),
            sent: false,
        };
        assert!(missing.to_string().contains("--proxy-user"), "{missing}");
        let refused = FetchError::ProxyAuth {
            proxy: "127.0.0.1:3128".into(),
            sent: true,
        };
        assert_eq!(
            refused.to_string(),
            "HTTP 407: proxy 127.0.0.1:3128 did not accept the credentials"
        );
        assert!(!refused.is_retryable());
    }
}
