//! What the user sees on stderr while a batch runs: an indicatif bar when
//! stderr is a terminal (URLs done of all the input holds, bytes, rate, what
//! is in flight) with failures and notes printed above it; one line per
//! URL otherwise; nothing but errors with `--quiet`; and the one-line
//! summary at the end. The `url> ` prompt is shared with the input thread
//! so that no line lands on it. Only the main thread draws.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A redrawn bar (stderr is a terminal); only failures and notes are
    /// printed, above it.
    Bar,
    /// One line per finished URL.
    Lines,
    /// Errors and the summary only.
    Quiet,
}

/// The counts the summary reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub fetched: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Bad input lines (counted apart from `failed`, which are URLs).
    pub bad_lines: usize,
    pub bytes: u64,
}

impl Tally {
    /// URLs finished one way or another (bad lines are not URLs).
    pub fn done(&self) -> usize {
        self.fetched + self.skipped + self.failed
    }
}

/// The `url> ` prompt on stderr. The input thread shows it; lines printed
/// while it is up replace it and show it again below, so that a result
/// never lands on the prompt's line.
#[derive(Debug, Default)]
pub struct Prompt {
    /// The cursor sits after a `url> ` on the last line.
    showing: Mutex<bool>,
}

/// Erases the current line and returns to its start (ECMA-48 EL 2, CR).
const CLEAR_LINE: &str = "\r\x1b[2K";

impl Prompt {
    /// Shows `url> `.
    pub fn show(&self) {
        let mut showing = self.showing.lock().unwrap_or_else(|p| p.into_inner());
        write_stderr("url> ");
        *showing = true;
    }

    /// A read ended: with a line, Enter moved the cursor to a line of its
    /// own; at the end of input, the prompt's line is cleared.
    pub fn answered(&self, got_line: bool) {
        let mut showing = self.showing.lock().unwrap_or_else(|p| p.into_inner());
        if *showing && !got_line {
            write_stderr(CLEAR_LINE);
        }
        *showing = false;
    }

    /// Writes `line` on a line of its own, then the prompt again if it was up.
    fn print(&self, line: &str, last: bool) {
        let mut showing = self.showing.lock().unwrap_or_else(|p| p.into_inner());
        if *showing {
            if last {
                write_stderr(&format!("{CLEAR_LINE}{line}\n"));
                *showing = false;
            } else {
                write_stderr(&format!("{CLEAR_LINE}{line}\nurl> "));
            }
        } else {
            write_stderr(&format!("{line}\n"));
        }
    }
}

fn write_stderr(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// The terminal, reported two columns narrower than it is. indicatif pads
/// the bar to the last column, which leaves the cursor waiting to wrap: the
/// `^C` that the terminal echoes on Ctrl-C would then start a new line under
/// the bar, where clearing the bar misses it. (Lines above the bar are
/// therefore printed with their own newline, in `above`, not through
/// indicatif's `println`, which relies on that wrap.)
#[derive(Debug)]
struct Narrow(console::Term);

impl TermLike for Narrow {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(2).max(20)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The progress display.
pub struct Progress {
    mode: Mode,
    layout: Layout,
    /// The terminal's width for the bar, and when it was asked.
    width: (usize, Instant),
    bar: Option<ProgressBar>,
    prompt: Option<Arc<Prompt>>,
    started: Instant,
    in_flight: BTreeMap<usize, String>,
    bytes: u64,
    /// URLs the input holds, when counted before the start.
    counted: Option<u64>,
    /// URLs met so far.
    known: u64,
}

impl Progress {
    /// A display in `mode`; `counted` is the number of URLs when known in
    /// advance, `prompt` the prompt when URLs are typed.
    pub fn new(mode: Mode, counted: Option<u64>, prompt: Option<Arc<Prompt>>) -> Progress {
        let width = terminal_width();
        let layout = Layout::for_width(u16::try_from(width).unwrap_or(u16::MAX));
        let bar = (mode == Mode::Bar).then(|| {
            let target = ProgressDrawTarget::term_like_with_hz(
                Box::new(Narrow(console::Term::stderr())),
                20,
            );
            let bar = ProgressBar::with_draw_target(Some(counted.unwrap_or(0)), target);
            let style = ProgressStyle::with_template(layout.template())
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            mode,
            layout,
            width: (width, Instant::now()),
            bar,
            prompt,
            started: Instant::now(),
            in_flight: BTreeMap::new(),
            bytes: 0,
            counted,
            known: 0,
        }
    }

    /// One more URL is known (input is read while fetching).
    pub fn add_total(&mut self, n: u64) {
        self.known += n;
        if let Some(bar) = &self.bar {
            // A file counted in advance may have grown since.
            bar.set_length(self.known.max(self.counted.unwrap_or(0)));
        }
    }

    /// A worker began on `url`.
    pub fn started(&mut self, id: usize, url: &str) {
        self.in_flight.insert(id, url.to_string());
        self.redraw();
    }

    /// Body bytes arrived.
    pub fn bytes(&mut self, n: u64) {
        self.bytes += n;
        self.redraw();
    }

    /// A URL was fetched or skipped; `line` says how (one line per URL
    /// without a bar; the bar only counts it).
    pub fn finished(&mut self, id: Option<usize>, line: &str) {
        if let Some(id) = id {
            self.in_flight.remove(&id);
        }
        match (&self.bar, self.mode) {
            (Some(bar), _) => {
                // Counted first: the frame the message draws shows it done.
                bar.inc(1);
                self.redraw();
            }
            (None, Mode::Lines) => self.say(line),
            _ => {}
        }
    }

    /// Something worth knowing that is no failure (an assumed scheme, a
    /// proxy gone): above the bar or as a line, not with `--quiet`.
    pub fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => above(bar, line),
            None if self.mode == Mode::Lines => self.say(line),
            None => {}
        }
    }

    /// A URL that failed (or a bad line): shown in every mode.
    pub fn error(&mut self, id: Option<usize>, line: &str, counts_as_url: bool) {
        if let Some(id) = id {
            self.in_flight.remove(&id);
        }
        // A handle on the same bar (indicatif's are shared), so that the
        // redraw may update the width it keeps.
        match self.bar.clone() {
            Some(bar) => {
                if counts_as_url {
                    bar.inc(1);
                }
                self.redraw();
                above(&bar, line);
            }
            None => self.say(line),
        }
    }

    /// Removes the bar (or the prompt) and prints the summary line.
    pub fn finish(&mut self, summary: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        match &self.prompt {
            Some(prompt) => prompt.print(summary, true),
            None => write_stderr(&format!("{summary}\n")),
        }
    }

    /// Time since the batch began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn say(&self, line: &str) {
        let line = terminal_safe(line);
        match &self.prompt {
            Some(prompt) => prompt.print(&line, false),
            None => write_stderr(&format!("{line}\n")),
        }
    }

    /// Downloads started and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Body bytes received so far, kept or not.
    pub fn received(&self) -> u64 {
        self.bytes
    }

    fn redraw(&mut self) {
        let Some(bar) = &self.bar else { return };
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.bytes as f64 / secs) as u64;
        let stats = format!(
            "{} {}/s, {} in flight",
            HumanBytes(self.bytes),
            HumanBytes(rate),
            self.in_flight.len()
        );
        let counts = format!("{}/{}", bar.position(), bar.length().unwrap_or(0));
        // Asked of the terminal twice a second at most: this runs for
        // every piece of every body.
        if self.width.1.elapsed() >= WIDTH_EVERY {
            self.width = (terminal_width(), Instant::now());
        }
        let room = self
            .width
            .0
            .saturating_sub(self.layout.before_message(counts.len()) + stats.len() + 1);
        let message = match self.in_flight.values().next_back() {
            Some(url) if room >= MIN_URL_SHOWN => format!("{stats} {}", fit(url, room)),
            _ => stats,
        };
        bar.set_message(message);
    }
}

/// Fewest columns worth showing a URL in.
const MIN_URL_SHOWN: usize = 12;

/// How often the terminal's width is asked again, for a resize.
const WIDTH_EVERY: Duration = Duration::from_millis(500);

/// The columns the bar may take (see `Narrow`).
fn terminal_width() -> usize {
    usize::from(Narrow(console::Term::stderr()).width())
}

/// The bar's layout, chosen by the terminal's width at the start: on a
/// narrow one (80 columns), a shorter bar and no clock, so that the URL
/// being fetched still shows beside the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Wide,
    Narrow,
}

impl Layout {
    /// Bar width (the terminal's, less two: see `Narrow`) from which the
    /// wide layout is used: a terminal of 110 columns.
    const WIDE_FROM: u16 = 108;

    fn for_width(width: u16) -> Layout {
        if width >= Self::WIDE_FROM {
            Layout::Wide
        } else {
            Layout::Narrow
        }
    }

    fn template(self) -> &'static str {
        match self {
            Layout::Wide => "{spinner} [{elapsed_precise}] {bar:25} {pos}/{len} URLs {wide_msg}",
            Layout::Narrow => "{spinner} {bar:10} {pos}/{len} URLs {wide_msg}",
        }
    }

    /// Columns the template takes before its message, with `counts`
    /// columns of `{pos}/{len}`.
    fn before_message(self, counts: usize) -> usize {
        match self {
            // Spinner, space, [hh:mm:ss], space, bar, space, counts, " URLs ".
            Layout::Wide => 1 + 1 + 10 + 1 + 25 + 1 + counts + 6,
            // Spinner, space, bar, space, counts, " URLs ".
            Layout::Narrow => 1 + 1 + 10 + 1 + counts + 6,
        }
    }
}

/// `url` in at most `max` characters, without its scheme: whole, or its
/// start and its end around `...`, the end given twice the room (the host
/// begins it; the file name, what tells one download from the next, ends
/// it).
fn fit(url: &str, max: usize) -> String {
    let text = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let len = text.chars().count();
    if len <= max {
        return text.to_string();
    }
    if max <= 3 {
        return text.chars().take(max).collect();
    }
    let kept = max - 3;
    let head = kept / 3;
    let tail = kept - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(len - tail).collect();
    format!("{start}...{end}")
}

/// Prints `line` above the bar: the bar is cleared, the line written, and
/// the bar drawn again below it.
fn above(bar: &ProgressBar, line: &str) {
    let line = terminal_safe(line);
    bar.suspend(|| write_stderr(&format!("{line}\n")));
}

/// `text` with its control characters escaped (`\u{1b}`): what an origin
/// sent (an error page's first line, a reason phrase) must not set the
/// terminal's title, colours or screen when it is shown.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// What a stop cut short: the downloads it stopped, and the body bytes
/// received in all that were not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub downloads: usize,
    pub unkept: u64,
}

/// The summary of a batch that held no URL.
pub const NOTHING_TO_FETCH: &str = "no URLs to fetch: the input held none";

/// The one-line summary: `fetched 12, skipped 3, failed 1, 4.20 MiB in 1.3s`;
/// `interrupted` says what a stop cut short.
pub fn summary(tally: &Tally, elapsed: Duration, interrupted: Option<Cut>) -> String {
    if tally.done() == 0 && tally.bad_lines == 0 && interrupted.is_none() {
        // A batch run from cron with an empty URL list should say so.
        return NOTHING_TO_FETCH.to_string();
    }
    let mut line = format!(
        "fetched {}, skipped {}, failed {}",
        tally.fetched, tally.skipped, tally.failed
    );
    if tally.bad_lines > 0 {
        let s = if tally.bad_lines == 1 { "" } else { "s" };
        line.push_str(&format!(" (and {} bad input{s})", tally.bad_lines));
    }
    line.push_str(&format!(
        ", {} in {:.1}s",
        HumanBytes(tally.bytes),
        elapsed.as_secs_f64()
    ));
    let Some(Cut { downloads, unkept }) = interrupted else {
        return line;
    };
    // The bytes saved above are those of files kept: what the stopped
    // downloads had received is said apart.
    let unkept = match unkept {
        0 => String::new(),
        n => format!(" ({} received, not kept)", HumanBytes(n)),
    };
    match downloads {
        0 => line.push_str(&format!(", interrupted{unkept}")),
        1 => line.push_str(&format!(
            ", interrupted: 1 download stopped{unkept}; run again for the rest"
        )),
        n => line.push_str(&format!(
            ", interrupted: {n} downloads stopped{unkept}; run again for the rest"
        )),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_url_keeps_its_start_and_its_end() {
        let url = "https://downloads.example.com/toolchains/gcc-14.2.0-x86_64-linux.tar.xz";
        assert_eq!(
            fit(url, 100),
            "downloads.example.com/toolchains/gcc-14.2.0-x86_64-linux.tar.xz"
        );
        let fitted = fit(url, 40);
        assert_eq!(fitted.chars().count(), 40);
        assert_eq!(fitted, "downloads.ex...4.2.0-x86_64-linux.tar.xz");
        assert_eq!(fit(url, 15), "down...x.tar.xz");
        assert_eq!(fit("http://ü.example/äöü", 10), "ü....e/äöü");
        assert_eq!(fit(url, 2), "do");
    }

    #[test]
    fn at_80_columns_the_url_in_flight_shows() {
        // What `redraw` leaves for the URL: the terminal (less Narrow's
        // two columns), the counts, and the byte counts.
        let width = 80 - 2;
        let layout = Layout::for_width(width);
        assert_eq!(layout, Layout::Narrow);
        let stats = format!(
            "{} {}/s, {} in flight",
            HumanBytes(123_456_789),
            HumanBytes(2_345_678),
            16
        );
        let room = usize::from(width) - layout.before_message("123/4567".len()) - stats.len() - 1;
        assert!(room >= MIN_URL_SHOWN, "{room} columns for the URL");
        assert_eq!(Layout::for_width(160), Layout::Wide);
        assert_eq!(Layout::for_width(110 - 2), Layout::Wide);
    }

    #[test]
    fn a_batch_without_urls_says_so() {
        let line = summary(&Tally::default(), Duration::from_millis(3), None);
        assert_eq!(line, "no URLs to fetch: the input held none");
    }

    #[test]
    fn summary_names_every_count() {
        let tally = Tally {
            fetched: 12,
            skipped: 3,
            failed: 1,
            bad_lines: 2,
            bytes: 4 * 1024 * 1024 + 200 * 1024,
        };
        assert_eq!(
            summary(&tally, Duration::from_millis(1330), None),
            "fetched 12, skipped 3, failed 1 (and 2 bad inputs), 4.20 MiB in 1.3s"
        );
        assert_eq!(
            summary(
                &tally,
                Duration::from_millis(1330),
                Some(Cut {
                    downloads: 2,
                    unkept: 0
                })
            ),
            "fetched 12, skipped 3, failed 1 (and 2 bad inputs), 4.20 MiB in 1.3s, \
             interrupted: 2 downloads stopped; run again for the rest"
        );
        assert_eq!(
            summary(
                &tally,
                Duration::from_millis(1330),
                Some(Cut {
                    downloads: 3,
                    unkept: 600 * 1024 * 1024
                })
            ),
            "fetched 12, skipped 3, failed 1 (and 2 bad inputs), 4.20 MiB in 1.3s, \
             interrupted: 3 downloads stopped (600.00 MiB received, not kept); run again for the rest"
        );
        assert_eq!(tally.done(), 16);
    }

    #[test]
    fn control_characters_reach_the_terminal_escaped() {
        let hostile = "HTTP 404 (x: \u{1b}]0;TITLE\u{7}\u{1b}[31mRED \u{9b}2J)";
        let shown = terminal_safe(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(
            shown,
            "HTTP 404 (x: \\u{1b}]0;TITLE\\u{7}\\u{1b}[31mRED \\u{9b}2J)"
        );
        assert!(matches!(terminal_safe("plain ünïcode"), Cow::Borrowed(_)));
    }
}
