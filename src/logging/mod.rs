//! Logging: simplelog on standard error set up once, and where access
//! lines go: with the rest on standard error, or to a file of their own
//! (`file`) in the format chosen (`access`), reopened on request. Escaping
//! of peer-sent text is in `escape`. Decides nothing about requests but
//! whether an own page's answer gets a line (`records_own_page`).

mod access;
mod escape;
mod file;

use std::fmt;
use std::io::{self, BufWriter, Stderr};
use std::path::Path;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, SystemTime};

use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{ConfigBuilder, WriteLogger};

use access::AccessLine;
pub use access::{AccessDetails, AccessLogFormat, AccessRecord, Cut, Outcome, OwnPages, TunnelLog};
pub use escape::escape;
use file::AccessFile;

/// Log text held in memory between writes to stderr.
const BUFFER_BYTES: usize = 64 * 1024;

/// The longest an `info` or `debug` line (an access line, say) waits in the
/// buffer; warnings and errors are written out at once.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Dependency targets that log per connection; below `warn` only at `trace`.
const NOISY_TARGETS: &[&str] = &["ureq", "ureq_proto", "rustls"];

/// Where access lines go, and in which format; set once by [`init_access_log`].
struct AccessLog {
    format: AccessLogFormat,
    /// Which answers to the proxy's own pages get a line.
    own_pages: OwnPages,
    /// `None`: standard error, through the logger.
    file: Option<AccessFile>,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Sets up simplelog on stderr at `level`, buffered: lines at `warn` and
/// above are written at once, the rest within `FLUSH_INTERVAL` (a thread
/// named `log-flush` sees to that), so a busy proxy writes its access log in
/// a few large writes instead of one per request. Call [`flush`] before the
/// process exits. Calling `init` twice is harmless.
pub fn init(level: LevelFilter) {
    // The prefix is written by `Prefixed`; simplelog filters, locks and
    // writes.
    let config = ConfigBuilder::new()
        .set_max_level(LevelFilter::Off)
        .set_time_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
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

/// Writes out whatever log text is buffered, the access-log file's too.
pub fn flush() {
    log::logger().flush();
    if let Some(file) = ACCESS_LOG.get().and_then(|log| log.file.as_ref()) {
        file.flush();
    }
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
            self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .args(format_args!("{}", Prefixed(record)))
                    .build(),
            );
            if record.level() <= Level::Warn {
                self.inner.flush();
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// A log line as it is written: the time (RFC 3339, UTC, to the
/// nanosecond), the level, the thread's name, the target, the message:
/// `2026-12-05T09:40:54.192486034Z [INFO] (worker-7) access: ...`.
/// Written here rather than by simplelog, whose prefix (the level through
/// `format!`, the time through a general-purpose formatter) cost about
/// 500 instructions more, on every access line.
struct Prefixed<'a>(&'a Record<'a>);

impl fmt::Display for Prefixed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.0;
        write!(
            f,
            "{} [{}] ",
            humantime::format_rfc3339_nanos(SystemTime::now()),
            record.level().as_str()
        )?;
        if let Some(name) = thread::current().name() {
            write!(f, "({name}) ")?;
        }
        write!(f, "{}: {}", record.target(), record.args())
    }
}

/// Sends access lines to the file at `path` (appended to, created if
/// missing), or leaves them on standard error when `path` is `None`, in
/// `format`, for the answers to the proxy's own pages that `own_pages`
/// says. Lines written to a file are written whatever the log level.
/// A second call keeps the first setting.
///
/// # Errors
/// When the file cannot be opened.
pub fn init_access_log(
    path: Option<&Path>,
    format: AccessLogFormat,
    own_pages: OwnPages,
) -> io::Result<()> {
    let file = path.map(AccessFile::open).transpose()?;
    let own = match own_pages {
        OwnPages::All => "",
        OwnPages::Errors => "; health checks and scrapes answered well are left out",
    };
    // The name a user gives it (`--access-log-format`).
    let name = clap::ValueEnum::to_possible_value(&format);
    let format_name = name.as_ref().map_or("", |value| value.get_name());
    match path {
        Some(path) => log::info!("access log: {}, {format_name} format{own}", path.display()),
        None => log::info!("access log: standard error, {format_name} format{own}"),
    }
    let _ = ACCESS_LOG.set(AccessLog {
        format,
        own_pages,
        file,
    });
    Ok(())
}

/// Whether an answer to one of the proxy's own pages with `status` gets
/// an access line (`access_log_own_pages`).
pub fn records_own_page(status: u16) -> bool {
    ACCESS_LOG
        .get()
        .is_none_or(|log| log.own_pages.records(status))
}

/// Opens the access-log file by its name again (after logrotate renamed
/// it), saying so in the log; nothing to do when access lines go to
/// standard error.
pub fn reopen() {
    let Some(file) = ACCESS_LOG.get().and_then(|log| log.file.as_ref()) else {
        log::info!("no access-log file to reopen: access lines go to standard error");
        return;
    };
    match file.reopen() {
        Ok(()) => log::info!("reopened the access log {}", file.path().display()),
        Err(err) => log::error!(
            "cannot reopen the access log {}: {err}; writing on to the old file",
            file.path().display()
        ),
    }
}

/// Whether the access log shows the origin's address and the answer's
/// `Content-Type` (Squid's format does), so that they are worth finding.
pub fn shows_origin_and_type() -> bool {
    ACCESS_LOG
        .get()
        .is_some_and(|log| log.format == AccessLogFormat::Squid)
}

/// Writes the access-log line of one request (see [`access_with`]), with
/// nothing known beyond the record.
pub fn access(record: &AccessRecord<'_>) {
    access_with(record, &AccessDetails::default());
}

/// Writes the access-log line of one request in the format chosen: to the
/// access-log file, or at `info`, target `access`, with the rest of the log.
pub fn access_with(record: &AccessRecord<'_>, details: &AccessDetails<'_>) {
    let log = ACCESS_LOG.get();
    let format = log.map_or(AccessLogFormat::Fetchproxy, |log| log.format);
    let file = log.and_then(|log| log.file.as_ref());
    let line = AccessLine {
        format,
        record,
        details,
        now: SystemTime::now(),
        stamped: file.is_some(),
    };
    match file {
        Some(file) => file.write_line(line),
        None => log::info!(target: "access", "{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lines_are_prefixed_with_time_level_thread_and_target() {
        let line = thread::Builder::new()
            .name("worker-7".into())
            .spawn(|| {
                let args = format_args!("a {}", 1);
                let record = Record::builder()
                    .level(Level::Warn)
                    .target("access")
                    .args(args)
                    .build();
                Prefixed(&record).to_string()
            })
            .expect("thread")
            .join()
            .expect("no panic");
        let (time, rest) = line.split_once(' ').expect("a time first");
        assert_eq!(rest, "[WARN] (worker-7) access: a 1");
        assert_eq!(time.len(), "2026-12-05T09:40:54.192486034Z".len(), "{time}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    }

    #[test]
    fn init_twice_keeps_the_first_logger() {
        // Off first, so other tests in this binary do not write to stderr.
        init(LevelFilter::Off);
        init(LevelFilter::Debug);
        assert_eq!(log::max_level(), LevelFilter::Off);
    }
}
