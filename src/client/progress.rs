//! What the user sees on stderr while a batch runs: an indicatif bar when
//! stderr is a terminal (URLs done/total, bytes, rate, what is in flight),
//! plain lines otherwise, nothing but errors with `--quiet`; and the
//! one-line summary at the end. Only the main thread calls it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A redrawn bar (stderr is a terminal).
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

/// The progress display.
pub struct Progress {
    mode: Mode,
    bar: Option<ProgressBar>,
    started: Instant,
    in_flight: BTreeMap<usize, String>,
    bytes: u64,
}

impl Progress {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:25} {pos}/{len} URLs {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            mode,
            bar,
            started: Instant::now(),
            in_flight: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// One more URL is known (input is read while fetching).
    pub fn add_total(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(n);
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

    /// A URL finished; `line` says how (shown in `Lines` mode, or above the bar).
    pub fn finished(&mut self, id: Option<usize>, line: &str) {
        if let Some(id) = id {
            self.in_flight.remove(&id);
        }
        match (&self.bar, self.mode) {
            (Some(bar), _) => {
                self.redraw();
                bar.println(line);
                bar.inc(1);
            }
            (None, Mode::Lines) => eprintln!("{line}"),
            _ => {}
        }
    }

    /// A URL that failed (or a bad line): shown in every mode.
    pub fn error(&mut self, id: Option<usize>, line: &str, counts_as_url: bool) {
        if let Some(id) = id {
            self.in_flight.remove(&id);
        }
        match &self.bar {
            Some(bar) => {
                self.redraw();
                bar.println(line);
                if counts_as_url {
                    bar.inc(1);
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar and prints the summary line.
    pub fn finish(&mut self, summary: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{summary}");
    }

    /// Time since the batch began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn redraw(&self) {
        let Some(bar) = &self.bar else { return };
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.bytes as f64 / secs) as u64;
        let current = self
            .in_flight
            .values()
            .next_back()
            .map(|u| shorten(u, 60))
            .unwrap_or_default();
        bar.set_message(format!(
            "{} {}/s, {} in flight {current}",
            HumanBytes(self.bytes),
            HumanBytes(rate),
            self.in_flight.len()
        ));
    }
}

/// The one-line summary: `fetched 12, skipped 3, failed 1, 4.20 MiB in 1.3s`.
pub fn summary(tally: &Tally, elapsed: Duration, interrupted: bool) -> String {
    let mut line = format!(
        "fetched {}, skipped {}, failed {}",
        tally.fetched, tally.skipped, tally.failed
    );
    if tally.bad_lines > 0 {
        let s = if tally.bad_lines == 1 { "" } else { "s" };
        line.push_str(&format!(" (and {} bad input line{s})", tally.bad_lines));
    }
    line.push_str(&format!(
        ", {} in {:.1}s",
        HumanBytes(tally.bytes),
        elapsed.as_secs_f64()
    ));
    if interrupted {
        line.push_str(", interrupted");
    }
    line
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            summary(&tally, Duration::from_millis(1330), false),
            "fetched 12, skipped 3, failed 1 (and 2 bad input lines), 4.20 MiB in 1.3s"
        );
        assert_eq!(tally.done(), 16);
    }
}
