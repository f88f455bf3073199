//! The access log's record and its line formats, as pure functions of a
//! record and the time: fetchproxy's own line, Squid's native format and
//! Apache's combined format, so that existing log tools read them. Every
//! field a peer sent is escaped; a field that is not known is `-`.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::escape::EscapedOrDash;

/// One finished request, as written to the access log.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    /// As the client sent it; credentials are removed before logging.
    pub url: &'a str,
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    pub duration: Duration,
    pub request_id: &'a str,
    /// The `Proxy-Status` error type when the proxy answered with an error.
    pub error: Option<&'static str>,
    /// How the cache took part (`HIT`, `MISS`, `REVALIDATED`, `STALE`,
    /// `COLLAPSED`, `BYPASS`); `None` when it did not.
    pub cache: Option<&'static str>,
    /// For a CONNECT tunnel: bytes the other way, and why it ended.
    pub tunnel: Option<TunnelLog>,
    /// How the answer was cut short after it began, if it was.
    pub cut: Option<Cut>,
}

/// Why an answer that began did not reach the client whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client closed its connection.
    ClientLeft,
    /// The body could not be had (the origin, a fill, the stored copy);
    /// the error says which.
    Failed,
}

/// The `error` word of a fetchproxy line whose client left mid-answer.
pub const CLIENT_ABORTED: &str = "client_aborted";

impl AccessRecord<'_> {
    /// The `error` word of the fetchproxy format: the error, or that the
    /// client left before the whole answer.
    fn error_word(&self) -> &'static str {
        self.error
            .or((self.cut == Some(Cut::ClientLeft)).then_some(CLIENT_ABORTED))
            .unwrap_or("-")
    }
}

/// What a CONNECT tunnel's line adds: `bytes` counts what went to the
/// client, this what went from it, and the ending.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLog {
    pub bytes_up: u64,
    pub end: &'static str,
}

/// What the Squid and combined formats log beyond an [`AccessRecord`].
/// Each part is `None` when not known, and then logged as `-`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessDetails<'a> {
    /// How the request was served; `None`: told from the record (see
    /// [`Outcome::of`]). The cache sets its own outcomes here.
    pub outcome: Option<Outcome>,
    /// The user's name from `Proxy-Authorization`: the name only, never
    /// the password or the header.
    pub user: Option<&'a str>,
    /// The HTTP version of the request line, such as `HTTP/1.1`.
    pub version: Option<&'a str>,
    /// The upstream address the request went to.
    pub peer: Option<&'a str>,
    /// The response's `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The request's `Referer`.
    pub referer: Option<&'a str>,
    /// The request's `User-Agent`.
    pub user_agent: Option<&'a str>,
}

/// How a request was served, in the terms of Squid's result codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to the origin, or tried: `TCP_MISS`.
    Miss,
    /// Answered from the cache without the origin (fresh, or stale as
    /// allowed): `TCP_HIT`.
    Hit,
    /// Read from another request's fill in progress (collapsed
    /// forwarding): `TCP_CF_HIT`.
    CollapsedHit,
    /// A stale entry revalidated, the origin said 304: `TCP_REFRESH_UNMODIFIED`.
    RefreshUnmodified,
    /// A stale entry revalidated, the origin sent a new response:
    /// `TCP_REFRESH_MODIFIED`.
    RefreshModified,
    /// A stale entry served because its revalidation failed:
    /// `TCP_REFRESH_FAIL_OLD`.
    RefreshFailOld,
    /// The client's directives sent a fresh entry to the origin:
    /// `TCP_CLIENT_REFRESH_MISS`.
    ClientRefresh,
    /// A CONNECT tunnel, or an attempt at one: `TCP_TUNNEL`.
    Tunnel,
    /// Refused by an access rule or for want of credentials: `TCP_DENIED`.
    Denied,
    /// Answered by the proxy itself without going upstream: `NONE`.
    NotForwarded,
}

/// `Proxy-Status` error types (RFC 9209) that come from going upstream.
const UPSTREAM_ERRORS: [&str; 13] = [
    "dns_error",
    "connection_refused",
    "destination_unavailable",
    "tls_protocol_error",
    "tls_certificate_error",
    "http_protocol_error",
    "connection_terminated",
    "http_response_incomplete",
    "http_response_header_section_size",
    "http_response_transfer_coding",
    "http_response_body_size",
    "connection_timeout",
    "http_response_timeout",
];

impl Outcome {
    /// The outcome a record shows when nobody said: a 403 or 407 from the
    /// proxy is a denial, an error from upstream or no error at all means
    /// the request went upstream, any other error of the proxy's means it
    /// did not.
    pub fn of(record: &AccessRecord<'_>) -> Outcome {
        let went_upstream = record
            .error
            .is_none_or(|error| UPSTREAM_ERRORS.contains(&error));
        match (record.error, record.status) {
            (Some(_), 403 | 407) => Outcome::Denied,
            _ if !went_upstream => Outcome::NotForwarded,
            _ if record.method == "CONNECT" => Outcome::Tunnel,
            _ => Outcome::Miss,
        }
    }

    /// Squid's result code.
    pub fn squid_code(self) -> &'static str {
        match self {
            Outcome::Miss => "TCP_MISS",
            Outcome::Hit => "TCP_HIT",
            Outcome::CollapsedHit => "TCP_CF_HIT",
            Outcome::RefreshUnmodified => "TCP_REFRESH_UNMODIFIED",
            Outcome::RefreshModified => "TCP_REFRESH_MODIFIED",
            Outcome::RefreshFailOld => "TCP_REFRESH_FAIL_OLD",
            Outcome::ClientRefresh => "TCP_CLIENT_REFRESH_MISS",
            Outcome::Tunnel => "TCP_TUNNEL",
            Outcome::Denied => "TCP_DENIED",
            Outcome::NotForwarded => "NONE",
        }
    }

    /// Squid's hierarchy code: whether an origin was contacted directly.
    fn hierarchy(self) -> &'static str {
        match self {
            Outcome::Miss
            | Outcome::Tunnel
            | Outcome::RefreshUnmodified
            | Outcome::RefreshModified
            | Outcome::RefreshFailOld
            | Outcome::ClientRefresh => "HIER_DIRECT",
            Outcome::Hit | Outcome::CollapsedHit | Outcome::Denied | Outcome::NotForwarded => {
                "HIER_NONE"
            }
        }
    }
}

/// The format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// client method URL status bytes duration request-id error cache
    #[default]
    Fetchproxy,
    /// Squid's native access.log
    Squid,
    /// Apache's combined log format
    Combined,
}

impl TryFrom<String> for AccessLogFormat {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fetchproxy" => Ok(AccessLogFormat::Fetchproxy),
            "squid" => Ok(AccessLogFormat::Squid),
            "combined" => Ok(AccessLogFormat::Combined),
            _ => Err("expected fetchproxy, squid or combined".to_string()),
        }
    }
}

/// Which answers to the proxy's own pages (`/healthz`, `/metrics`) the
/// access log records: a load balancer's health checks and a monitor's
/// scrapes are a line every few seconds each, which can drown the requests
/// that matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OwnPages {
    /// Every one, as every other request.
    #[default]
    All,
    /// Only those answered with an error (4xx, 5xx): a refused scrape stays
    /// in the log.
    Errors,
}

impl OwnPages {
    /// Whether an own page answered with `status` gets its line.
    pub fn records(self, status: u16) -> bool {
        self == OwnPages::All || status >= 400
    }
}

impl TryFrom<String> for OwnPages {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(OwnPages::All),
            "errors" => Ok(OwnPages::Errors),
            _ => Err("expected all or errors".to_string()),
        }
    }
}

/// One access-log line in a format, written straight into the log's buffer.
pub struct AccessLine<'r, 'a> {
    pub format: AccessLogFormat,
    pub record: &'r AccessRecord<'a>,
    pub details: &'r AccessDetails<'a>,
    /// When the request finished.
    pub now: SystemTime,
    /// Whether the fetchproxy format starts with the time (in a file of its
    /// own; on standard error the logger stamps every line).
    pub stamped: bool,
}

impl fmt::Display for AccessLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            AccessLogFormat::Fetchproxy => {
                if self.stamped {
                    write!(f, "{} ", humantime::format_rfc3339_millis(self.now))?;
                }
                fetchproxy_line(f, self.record)
            }
            AccessLogFormat::Squid => squid_line(f, self.record, self.details, self.now),
            AccessLogFormat::Combined => combined_line(f, self.record, self.details, self.now),
        }
    }
}

/// `client method url status bytes duration_ms request_id error cache`, `-`
/// for no error and for a request the cache took no part in; a tunnel's
/// line ends with its bytes up and its ending.
fn fetchproxy_line(f: &mut fmt::Formatter<'_>, record: &AccessRecord<'_>) -> fmt::Result {
    let mut line = String::with_capacity(128 + record.url.len());
    push_fetchproxy_line(&mut line, record);
    f.write_str(&line)
}

/// [`fetchproxy_line`] into `out`, piece by piece: every request writes
/// one, and the formatting machinery cost more than the rest of a cache
/// hit's line.
fn push_fetchproxy_line(out: &mut String, record: &AccessRecord<'_>) {
    push_addr(out, record.client);
    out.push(' ');
    out.push_str(&EscapedOrDash(record.method.as_bytes()).text());
    out.push(' ');
    out.push_str(&EscapedOrDash(record.url.as_bytes()).text());
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(record.status));
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(record.bytes));
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(record.duration.as_millis()));
    out.push_str("ms id=");
    out.push_str(&EscapedOrDash(record.request_id.as_bytes()).text());
    out.push_str(" error=");
    out.push_str(record.error_word());
    out.push_str(" cache=");
    out.push_str(record.cache.unwrap_or("-"));
    if let Some(tunnel) = record.tunnel {
        out.push_str(" up=");
        out.push_str(itoa::Buffer::new().format(tunnel.bytes_up));
        out.push_str(" end=");
        out.push_str(tunnel.end);
    }
}

/// `addr` as `Display` writes it; an IPv4 one without the machinery.
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
            out.push(':');
            out.push_str(itoa::Buffer::new().format(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = fmt::Write::write_fmt(out, format_args!("{addr}"));
        }
    }
}

/// Squid's native format (`logformat squid`):
/// `time.millis elapsed client code/status bytes method URL user hierarchy/peer type`.
/// The bytes are the body's (Squid counts the head too).
fn squid_line(
    f: &mut fmt::Formatter<'_>,
    record: &AccessRecord<'_>,
    details: &AccessDetails<'_>,
    now: SystemTime,
) -> fmt::Result {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let outcome = details.outcome.unwrap_or_else(|| Outcome::of(record));
    write!(
        f,
        "{}.{:03} {:>6} {} {}{}/{:03} {} {} {} {} {}/{} {}",
        since_epoch.as_secs(),
        since_epoch.subsec_millis(),
        record.duration.as_millis(),
        record.client.ip(),
        outcome.squid_code(),
        if record.cut.is_some() { "_ABORTED" } else { "" },
        record.status,
        record.bytes,
        SquidField(Some(record.method)),
        SquidField(Some(record.url)),
        SquidField(details.user),
        outcome.hierarchy(),
        SquidField(details.peer),
        SquidField(details.content_type),
    )
}

/// Apache's combined format: `client - user [time] "request line" status
/// bytes "referer" "user-agent"`, the time when the request arrived.
fn combined_line(
    f: &mut fmt::Formatter<'_>,
    record: &AccessRecord<'_>,
    details: &AccessDetails<'_>,
    now: SystemTime,
) -> fmt::Result {
    let arrived = now.checked_sub(record.duration).unwrap_or(now);
    write!(
        f,
        "{} - {} [{}] ",
        record.client.ip(),
        SquidField(details.user),
        ApacheTime(arrived)
    )?;
    if record.method.is_empty() || record.method == "-" {
        // No request line was read.
        f.write_str("\"-\"")?;
    } else {
        write!(
            f,
            "\"{} {} {}\"",
            EscapedOrDash(record.method.as_bytes()),
            EscapedOrDash(record.url.as_bytes()),
            EscapedOrDash(details.version.unwrap_or("HTTP/1.1").as_bytes()),
        )?;
    }
    write!(f, " {} ", record.status)?;
    // Apache's %b: `-` for no body bytes.
    match record.bytes {
        0 => f.write_str("-")?,
        bytes => write!(f, "{bytes}")?,
    }
    write!(
        f,
        " \"{}\" \"{}\"",
        EscapedOrDash(details.referer.unwrap_or("").as_bytes()),
        EscapedOrDash(details.user_agent.unwrap_or("").as_bytes()),
    )
}

/// A peer-sent field of a space-separated line: escaped, `-` when absent
/// or empty, and spaces as `%20` so that the fields stay countable.
struct SquidField<'a>(Option<&'a str>);

impl fmt::Display for SquidField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = EscapedOrDash(self.0.unwrap_or("").as_bytes()).to_string();
        if text.contains(' ') {
            f.write_str(&text.replace(' ', "%20"))
        } else {
            f.write_str(&text)
        }
    }
}

/// Apache's `%t` time in UTC: `10/Oct/2000:13:55:36 +0000`.
struct ApacheTime(SystemTime);

impl fmt::Display for ApacheTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // RFC 3339 in UTC is fixed-width: `2000-10-10T13:55:36Z`.
        let rfc3339 = humantime::format_rfc3339_seconds(self.0).to_string();
        let part = |range: std::ops::Range<usize>| rfc3339.get(range).unwrap_or("");
        let month = part(5..7)
            .parse::<usize>()
            .ok()
            .and_then(|month| MONTHS.get(month.checked_sub(1)?));
        match month {
            Some(month) => write!(
                f,
                "{}/{month}/{}:{} +0000",
                part(8..10),
                part(0..4),
                part(11..19)
            ),
            None => f.write_str(&rfc3339),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2000-10-10T13:55:36.5Z
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(971_186_136_500)
    }

    fn record<'a>() -> AccessRecord<'a> {
        AccessRecord {
            client: "127.0.0.1:5555".parse().expect("test address"),
            method: "GET",
            url: "http://bob:pw@example.com/\x1b",
            status: 200,
            bytes: 1234,
            duration: Duration::from_millis(57),
            request_id: "abc123",
            error: None,
            cache: None,
            tunnel: None,
            cut: None,
        }
    }

    fn line(
        format: AccessLogFormat,
        record: &AccessRecord<'_>,
        details: &AccessDetails<'_>,
    ) -> String {
        AccessLine {
            format,
            record,
            details,
            now: at(),
            stamped: true,
        }
        .to_string()
    }

    #[test]
    fn fetchproxy_line_has_fields_in_order() {
        let record = record();
        let details = AccessDetails::default();
        assert_eq!(
            line(AccessLogFormat::Fetchproxy, &record, &details),
            "2000-10-10T13:55:36.500Z 127.0.0.1:5555 GET http://***@example.com/\\x1b 200 1234 57ms id=abc123 error=- cache=-"
        );
        let hit = AccessRecord {
            cache: Some("HIT"),
            ..record
        };
        assert!(line(AccessLogFormat::Fetchproxy, &hit, &details).ends_with(" error=- cache=HIT"));
        let denied = AccessRecord {
            status: 403,
            error: Some("destination_ip_prohibited"),
            method: "",
            ..record
        };
        let unstamped = AccessLine {
            format: AccessLogFormat::Fetchproxy,
            record: &denied,
            details: &details,
            now: at(),
            stamped: false,
        }
        .to_string();
        assert!(unstamped.starts_with("127.0.0.1:5555 - "), "{unstamped}");
        assert!(
            unstamped.ends_with("error=destination_ip_prohibited cache=-"),
            "{unstamped}"
        );
    }

    /// The fetchproxy line as `write!` writes it, to hold the line written
    /// piece by piece to it.
    fn by_the_machinery(record: &AccessRecord<'_>) -> String {
        let mut out = format!(
            "{} {} {} {} {} {}ms id={} error={} cache={}",
            record.client,
            EscapedOrDash(record.method.as_bytes()),
            EscapedOrDash(record.url.as_bytes()),
            record.status,
            record.bytes,
            record.duration.as_millis(),
            EscapedOrDash(record.request_id.as_bytes()),
            record.error_word(),
            record.cache.unwrap_or("-"),
        );
        if let Some(tunnel) = record.tunnel {
            out.push_str(&format!(" up={} end={}", tunnel.bytes_up, tunnel.end));
        }
        out
    }

    #[test]
    fn the_fetchproxy_line_is_the_one_the_formatting_machinery_writes() {
        let clients = [
            "127.0.0.1:5555",
            "10.200.3.0:1",
            "[::1]:8080",
            "[fe80::1%2]:65535",
        ];
        let long_url = format!("http://h/{}", "\"".repeat(5000));
        let urls = [
            "http://example.com/a?b=c",
            "",
            "http://u:p@h/x y",
            "\u{e9}",
            &long_url,
        ];
        for (i, client) in clients.iter().enumerate() {
            for url in urls {
                let record = AccessRecord {
                    client: client.parse().expect("test address"),
                    method: if i % 2 == 0 { "GET" } else { "M\"X" },
                    url,
                    status: [200, 403, 0, 599][i],
                    bytes: [0, 1, u64::MAX, 65536][i],
                    duration: Duration::from_micros([0, 999, 1_000_001, 86_400_000_000][i]),
                    request_id: if i == 1 { "" } else { "abc-1" },
                    error: (i == 2).then_some("http_request_error"),
                    cache: (i == 3).then_some("HIT"),
                    tunnel: (i == 1).then_some(TunnelLog {
                        bytes_up: 7,
                        end: "done",
                    }),
                    cut: (i == 0).then_some(Cut::ClientLeft),
                };
                let mut line = String::new();
                push_fetchproxy_line(&mut line, &record);
                assert_eq!(line, by_the_machinery(&record), "{record:?}");
            }
        }
    }

    #[test]
    fn a_tunnel_line_ends_with_its_bytes_up_and_its_ending() {
        let record = AccessRecord {
            method: "CONNECT",
            url: "example.com:443",
            bytes: 5000,
            duration: Duration::from_millis(1500),
            tunnel: Some(TunnelLog {
                bytes_up: 700,
                end: "done",
            }),
            ..record()
        };
        let text = line(
            AccessLogFormat::Fetchproxy,
            &record,
            &AccessDetails::default(),
        );
        assert!(
            text.ends_with("127.0.0.1:5555 CONNECT example.com:443 200 5000 1500ms id=abc123 error=- cache=- up=700 end=done"),
            "{text}"
        );
    }

    #[test]
    fn squid_line_is_squids_native_format() {
        let record = record();
        let details = AccessDetails {
            user: Some("alice"),
            peer: Some("93.184.216.34"),
            content_type: Some("text/html; charset=utf-8"),
            ..AccessDetails::default()
        };
        assert_eq!(
            line(AccessLogFormat::Squid, &record, &details),
            "971186136.500     57 127.0.0.1 TCP_MISS/200 1234 GET http://***@example.com/\\x1b alice HIER_DIRECT/93.184.216.34 text/html;%20charset=utf-8"
        );
        let unknown = line(AccessLogFormat::Squid, &record, &AccessDetails::default());
        assert!(unknown.ends_with(" - HIER_DIRECT/- -"), "{unknown}");
        // Ten space-separated fields whatever a peer sent.
        let odd = AccessDetails {
            user: Some("a b\"c"),
            content_type: Some(""),
            ..AccessDetails::default()
        };
        let text = line(AccessLogFormat::Squid, &record, &odd);
        assert_eq!(text.split_whitespace().count(), 10, "{text}");
        assert!(text.contains(" a%20b\\\"c "), "{text}");
    }

    #[test]
    fn squid_codes_name_what_the_cache_did() {
        let record = record();
        for (outcome, code, hierarchy) in [
            (Outcome::Hit, "TCP_HIT/200", "HIER_NONE/-"),
            (Outcome::CollapsedHit, "TCP_CF_HIT/200", "HIER_NONE/-"),
            (
                Outcome::RefreshUnmodified,
                "TCP_REFRESH_UNMODIFIED/200",
                "HIER_DIRECT/-",
            ),
            (
                Outcome::RefreshModified,
                "TCP_REFRESH_MODIFIED/200",
                "HIER_DIRECT/-",
            ),
            (
                Outcome::RefreshFailOld,
                "TCP_REFRESH_FAIL_OLD/200",
                "HIER_DIRECT/-",
            ),
            (
                Outcome::ClientRefresh,
                "TCP_CLIENT_REFRESH_MISS/200",
                "HIER_DIRECT/-",
            ),
        ] {
            let details = AccessDetails {
                outcome: Some(outcome),
                ..AccessDetails::default()
            };
            let text = line(AccessLogFormat::Squid, &record, &details);
            let fields: Vec<&str> = text.split_whitespace().collect();
            assert_eq!((fields[3], fields[8]), (code, hierarchy), "{text}");
        }
    }

    #[test]
    fn an_answer_cut_short_says_so() {
        let left = AccessRecord {
            bytes: 100,
            cut: Some(Cut::ClientLeft),
            ..record()
        };
        let fetchproxy = line(
            AccessLogFormat::Fetchproxy,
            &left,
            &AccessDetails::default(),
        );
        assert!(
            fetchproxy.ends_with(" error=client_aborted cache=-"),
            "{fetchproxy}"
        );
        let hit = AccessDetails {
            outcome: Some(Outcome::Hit),
            ..AccessDetails::default()
        };
        let squid = line(AccessLogFormat::Squid, &left, &hit);
        assert!(squid.contains(" TCP_HIT_ABORTED/200 100 "), "{squid}");
        // The origin failing mid-body, whatever the status it had sent:
        // Squid marks it the same way.
        for status in [200, 404, 502] {
            let upstream = AccessRecord {
                status,
                error: Some("http_protocol_error"),
                cut: Some(Cut::Failed),
                ..record()
            };
            let squid = line(AccessLogFormat::Squid, &upstream, &AccessDetails::default());
            assert!(
                squid.contains(&format!(" TCP_MISS_ABORTED/{status} ")),
                "{squid}"
            );
            let fetchproxy = line(
                AccessLogFormat::Fetchproxy,
                &upstream,
                &AccessDetails::default(),
            );
            assert!(
                fetchproxy.contains(" error=http_protocol_error "),
                "{fetchproxy}"
            );
        }
        // An error answer of the proxy's own is whole.
        let refused = AccessRecord {
            status: 502,
            error: Some("connection_refused"),
            ..record()
        };
        let squid = line(AccessLogFormat::Squid, &refused, &AccessDetails::default());
        assert!(squid.contains(" TCP_MISS/502 "), "{squid}");
    }

    #[test]
    fn squid_codes_follow_how_the_request_ended() {
        let base = record();
        let code = |method: &str, status: u16, error: Option<&'static str>| {
            let record = AccessRecord {
                method,
                status,
                error,
                ..record()
            };
            let text = line(AccessLogFormat::Squid, &record, &AccessDetails::default());
            text.split(' ')
                .filter(|f| !f.is_empty())
                .nth(3)
                .map(str::to_string)
        };
        assert_eq!(code("GET", 200, None).as_deref(), Some("TCP_MISS/200"));
        assert_eq!(
            code("GET", 404, None).as_deref(),
            Some("TCP_MISS/404"),
            "an origin's answer"
        );
        assert_eq!(
            code("GET", 403, None).as_deref(),
            Some("TCP_MISS/403"),
            "an origin's 403"
        );
        assert_eq!(
            code("CONNECT", 200, None).as_deref(),
            Some("TCP_TUNNEL/200")
        );
        assert_eq!(
            code("GET", 403, Some("destination_ip_prohibited")).as_deref(),
            Some("TCP_DENIED/403")
        );
        assert_eq!(
            code("GET", 407, Some("http_request_denied")).as_deref(),
            Some("TCP_DENIED/407")
        );
        assert_eq!(
            code("GET", 502, Some("dns_error")).as_deref(),
            Some("TCP_MISS/502")
        );
        assert_eq!(
            code("CONNECT", 502, Some("connection_refused")).as_deref(),
            Some("TCP_TUNNEL/502")
        );
        assert_eq!(
            code("-", 400, Some("http_request_error")).as_deref(),
            Some("NONE/400")
        );
        assert_eq!(
            code("GET", 503, Some("proxy_internal_error")).as_deref(),
            Some("NONE/503")
        );
        let denied = line(
            AccessLogFormat::Squid,
            &AccessRecord {
                status: 403,
                error: Some("http_request_denied"),
                ..base
            },
            &AccessDetails::default(),
        );
        assert!(denied.contains(" HIER_NONE/- "), "{denied}");
        // A cache outcome, once there is one, is given, not inferred.
        let given = AccessDetails {
            outcome: Some(Outcome::Denied),
            ..AccessDetails::default()
        };
        assert!(line(AccessLogFormat::Squid, &record(), &given).contains(" TCP_DENIED/200 "));
    }

    #[test]
    fn combined_line_is_apaches_combined_format() {
        let record = record();
        let details = AccessDetails {
            user: Some("alice"),
            version: Some("HTTP/1.0"),
            referer: Some("http://example.com/"),
            user_agent: Some("curl/8.5.0 \"quoted\""),
            ..AccessDetails::default()
        };
        // Logged with the time the request arrived: 57 ms before it ended.
        assert_eq!(
            line(AccessLogFormat::Combined, &record, &details),
            "127.0.0.1 - alice [10/Oct/2000:13:55:36 +0000] \"GET http://***@example.com/\\x1b HTTP/1.0\" 200 1234 \"http://example.com/\" \"curl/8.5.0 \\\"quoted\\\"\""
        );
        let bare = AccessRecord {
            method: "-",
            url: "-",
            status: 408,
            bytes: 0,
            error: Some("http_request_error"),
            ..record
        };
        assert_eq!(
            line(AccessLogFormat::Combined, &bare, &AccessDetails::default()),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"-\" 408 - \"-\" \"-\""
        );
    }

    #[test]
    fn format_names_are_read_in_any_case() {
        assert_eq!(
            AccessLogFormat::try_from("Squid".to_string()),
            Ok(AccessLogFormat::Squid)
        );
        assert_eq!(
            AccessLogFormat::try_from("apache".to_string()),
            Err("expected fetchproxy, squid or combined".to_string())
        );
    }
}
