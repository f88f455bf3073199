//! Logging: simplelog set up once, the access-log line, and escaping of
//! peer-sent text. Makes no decisions about requests.

use std::fmt;
use std::io::{BufWriter, Stderr};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{ConfigBuilder, ThreadLogMode, WriteLogger};

/// Escaped text longer than this is cut, and `...` marks the cut.
const MAX_ESCAPED_BYTES: usize = 4096;

/// Log text held in memory between writes to stderr.
const BUFFER_BYTES: usize = 64 * 1024;

/// The longest an `info` or `debug` line (an access line, say) waits in the
/// buffer; warnings and errors are written out at once.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Dependency targets that log per connection; below `warn` only at `trace`.
const NOISY_TARGETS: &[&str] = &["ureq", "ureq_proto", "rustls"];

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
    /// For a CONNECT tunnel: bytes the other way, and why it ended.
    pub tunnel: Option<TunnelLog>,
}

/// What a CONNECT tunnel's access line adds: `bytes` counts what went to the
/// client, this what went from it, and the ending.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLog {
    pub bytes_up: u64,
    pub end: &'static str,
}

/// Sets up simplelog on stderr at `level`, buffered: lines at `warn` and
/// above are written at once, the rest within [`FLUSH_INTERVAL`] (a thread
/// named `log-flush` sees to that), so a busy proxy writes its access log in
/// a few large writes instead of one per request. Call [`flush`] before the
/// process exits. Calling `init` twice is harmless.
pub fn init(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_time_level(LevelFilter::Error)
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Error)
        .set_location_level(LevelFilter::Off)
        .build();
    let noisy_level = if level == LevelFilter::Trace {
        LevelFilter::Trace
    } else {
        level.min(LevelFilter::Warn)
    };
    let sink = BufWriter::with_capacity(BUFFER_BYTES, std::io::stderr());
    let logger = TargetFilter {
        inner: WriteLogger::new(level, config, sink),
        noisy_level,
    };
    // A second call finds a logger already set; keeping the first is fine.
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
        let flusher = thread::Builder::new()
            .name("log-flush".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                loop {
                    thread::sleep(FLUSH_INTERVAL);
                    flush();
                }
            });
        if let Err(err) = flusher {
            log::warn!("no log-flush thread ({err}); buffered lines wait for a warning or exit");
        }
    }
}

/// Writes out whatever log text is buffered.
pub fn flush() {
    log::logger().flush();
}

/// simplelog, with the chatty dependency targets held to `noisy_level`.
struct TargetFilter {
    inner: Box<WriteLogger<BufWriter<Stderr>>>,
    noisy_level: LevelFilter,
}

impl TargetFilter {
    fn is_noisy(target: &str) -> bool {
        NOISY_TARGETS.iter().any(|noisy| {
            target
                .strip_prefix(noisy)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
    }
}

impl Log for TargetFilter {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        if Self::is_noisy(metadata.target()) && metadata.level() > self.noisy_level {
            return false;
        }
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
            if record.level() <= Level::Warn {
                self.inner.flush();
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Writes the access-log line for one request at `info`, target `access`:
/// `client method url status bytes duration_ms request_id error` with `-` for
/// no error; a tunnel's line ends with its bytes up and its ending.
pub fn access(record: &AccessRecord<'_>) {
    log::info!(target: "access", "{}", AccessLine(record));
}

/// The text of one access-log line (see [`access`]), peer-sent fields escaped.
pub fn access_line(record: &AccessRecord<'_>) -> String {
    AccessLine(record).to_string()
}

/// An access-log line, written field by field into the log's buffer.
struct AccessLine<'r, 'a>(&'r AccessRecord<'a>);

impl fmt::Display for AccessLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.0;
        write!(
            f,
            "{} {} {} {} {} {}ms id={} error={}",
            record.client,
            EscapedOrDash(record.method.as_bytes()),
            EscapedOrDash(record.url.as_bytes()),
            record.status,
            record.bytes,
            record.duration.as_millis(),
            EscapedOrDash(record.request_id.as_bytes()),
            record.error.unwrap_or("-"),
        )?;
        match record.tunnel {
            Some(tunnel) => write!(f, " up={} end={}", tunnel.bytes_up, tunnel.end),
            None => Ok(()),
        }
    }
}

/// Peer-sent text as [`escape`] makes it, or `-` when there is none, so
/// that the fields of a line stay countable.
struct EscapedOrDash<'a>(&'a [u8]);

impl fmt::Display for EscapedOrDash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = redact_userinfo(self.0);
        match std::str::from_utf8(&text) {
            Ok("") => f.write_str("-"),
            // The usual case needs no escapes and no copy.
            Ok(plain) if plain.len() <= MAX_ESCAPED_BYTES && plain.bytes().all(is_plain) => {
                f.write_str(plain)
            }
            _ => f.write_str(&escape_redacted(&text)),
        }
    }
}

/// Bytes that stand for themselves in a log line (those
/// `std::ascii::escape_default` leaves alone).
fn is_plain(byte: u8) -> bool {
    matches!(byte, 0x20..=0x7e) && !matches!(byte, b'"' | b'\'' | b'\\')
}

/// Makes peer-sent text safe for a log line: control characters, quotes,
/// backslashes and non-ASCII bytes become escapes; userinfo in URLs becomes `***`.
pub fn escape(text: &[u8]) -> String {
    escape_redacted(&redact_userinfo(text))
}

/// [`escape`] after the userinfo is gone.
fn escape_redacted(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ESCAPED_BYTES));
    // Where to cut if the text turns out too long: after the last whole
    // escape that still leaves room for the `...`.
    let mut cut = 0;
    for &byte in text.iter() {
        // std's escapes (`\n`, `\"`, `\xc3`...), one byte at a time so a
        // cut never splits one.
        out.extend(std::ascii::escape_default(byte).map(char::from));
        if out.len() <= MAX_ESCAPED_BYTES - 3 {
            cut = out.len();
        } else if out.len() > MAX_ESCAPED_BYTES {
            out.truncate(cut);
            out.push_str("...");
            return out;
        }
    }
    out
}

/// Replaces `user:pass@` in `scheme://user:pass@host/...` with `***@`, so
/// credentials a client put in a URL never reach the log.
fn redact_userinfo(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Some(scheme_end) = text.windows(3).position(|w| w == b"://") else {
        return text.into();
    };
    let start = scheme_end + 3;
    let authority_len = text[start..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(text.len() - start);
    let authority = &text[start..start + authority_len];
    // RFC 3986 §3.2: userinfo ends at the last `@` of the authority.
    let Some(at) = authority.iter().rposition(|&b| b == b'@') else {
        return text.into();
    };
    let mut redacted = Vec::with_capacity(text.len());
    redacted.extend_from_slice(&text[..start]);
    redacted.extend_from_slice(b"***");
    redacted.extend_from_slice(&text[start + at..]);
    redacted.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_passes_through() {
        assert_eq!(
            escape(b"GET http://example.com/a?b=c"),
            "GET http://example.com/a?b=c"
        );
    }

    #[test]
    fn control_quote_backslash_and_non_ascii_are_escaped() {
        assert_eq!(escape(b"a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape(b"say \"hi\" \\ there"), "say \\\"hi\\\" \\\\ there");
        assert_eq!(escape(b"\x00\x1b[31m\x7f"), "\\x00\\x1b[31m\\x7f");
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn long_text_is_capped_with_an_ellipsis() {
        let long = vec![b'a'; 10_000];
        let out = escape(&long);
        assert!(out.len() <= MAX_ESCAPED_BYTES, "{}", out.len());
        assert!(out.ends_with("..."));

        let escapes = vec![0u8; 5_000];
        let out = escape(&escapes);
        assert!(out.len() <= MAX_ESCAPED_BYTES);
        assert!(out.ends_with("\\x00..."), "an escape was split");

        let exact = vec![b'b'; MAX_ESCAPED_BYTES];
        assert_eq!(escape(&exact), String::from_utf8(exact).expect("ascii"));
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            escape(b"http://alice:s3cret@example.com/path?q=1"),
            "http://***@example.com/path?q=1"
        );
        assert_eq!(
            escape(b"https://token@example.com"),
            "https://***@example.com"
        );
        // The last `@` of the authority ends the userinfo.
        assert_eq!(escape(b"http://a@b:c@host/"), "http://***@host/");
        // An `@` after the authority is not userinfo.
        assert_eq!(
            escape(b"http://example.com/u@x?mail=a@b"),
            "http://example.com/u@x?mail=a@b"
        );
        assert_eq!(escape(b"example.com:443"), "example.com:443");
        // Redaction comes first, so the escaped password never shows.
        assert_eq!(escape(b"http://u:p\n\"w@h/"), "http://***@h/");
    }

    #[test]
    fn access_line_has_fields_in_order() {
        let record = AccessRecord {
            client: "127.0.0.1:5555".parse().expect("test address"),
            method: "GET",
            url: "http://bob:pw@example.com/\x1b",
            status: 200,
            bytes: 1234,
            duration: Duration::from_millis(57),
            request_id: "abc123",
            error: None,
            tunnel: None,
        };
        assert_eq!(
            access_line(&record),
            "127.0.0.1:5555 GET http://***@example.com/\\x1b 200 1234 57ms id=abc123 error=-"
        );
        let denied = AccessRecord {
            status: 403,
            error: Some("destination_ip_prohibited"),
            method: "",
            ..record
        };
        assert!(
            access_line(&denied).ends_with("error=destination_ip_prohibited"),
            "{}",
            access_line(&denied)
        );
        assert!(access_line(&denied).starts_with("127.0.0.1:5555 - "));
    }

    #[test]
    fn access_fields_match_escape_on_every_path() {
        let long = "x".repeat(MAX_ESCAPED_BYTES + 1);
        let samples: [&[u8]; 8] = [
            b"http://example.com/plain",
            b"it's",
            b"",
            b"a\"quote",
            b"back\\slash",
            b"http://u:p@host/\x1b",
            "caf\u{e9}".as_bytes(),
            long.as_bytes(),
        ];
        for sample in samples {
            let expected = match escape(sample) {
                text if text.is_empty() => "-".to_string(),
                text => text,
            };
            assert_eq!(EscapedOrDash(sample).to_string(), expected, "{sample:?}");
        }
    }

    #[test]
    fn noisy_targets_match_whole_path_segments() {
        assert!(TargetFilter::is_noisy("ureq"));
        assert!(TargetFilter::is_noisy("ureq::unversioned"));
        assert!(TargetFilter::is_noisy("rustls::client"));
        assert!(!TargetFilter::is_noisy("ureqx"));
        assert!(!TargetFilter::is_noisy("fetchproxy::upstream"));
        assert!(!TargetFilter::is_noisy("access"));
    }

    #[test]
    fn a_second_init_changes_nothing() {
        // Off first, so other tests in this binary do not write to stderr.
        init(LevelFilter::Off);
        let level = log::max_level();
        assert_eq!(level, LevelFilter::Off, "no other test sets up logging");
        init(LevelFilter::Debug);
        assert_eq!(log::max_level(), level, "the first logger and level stay");
        assert!(!log::log_enabled!(target: "access", log::Level::Info));
    }

    #[test]
    fn a_tunnel_line_ends_with_its_bytes_up_and_its_ending() {
        let record = AccessRecord {
            client: "127.0.0.1:5555".parse().expect("test address"),
            method: "CONNECT",
            url: "example.com:443",
            status: 200,
            bytes: 5000,
            duration: Duration::from_millis(1500),
            request_id: "t1",
            error: None,
            tunnel: Some(TunnelLog {
                bytes_up: 700,
                end: "done",
            }),
        };
        assert_eq!(
            access_line(&record),
            "127.0.0.1:5555 CONNECT example.com:443 200 5000 1500ms id=t1 error=- up=700 end=done"
        );
    }
}
