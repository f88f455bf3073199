//! What a person sees when `fetchproxy fetch` runs in a terminal: the real
//! binary on a pseudo-terminal that is its controlling terminal (through
//! util-linux's `setsid --ctty`), its output rendered by a terminal
//! emulator (vt100) and read back as the screen. Ctrl-C and Ctrl-D are
//! typed, as a person would.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

use fetchproxy::auth::{User, hash_password, parse_password_hash};

use crate::client::{manifest, write_input};
use crate::support::{Gate, Origin, Proxy, Reply, gated_origin, wait_until};

const ROWS: u16 = 30;
const COLS: u16 = 100;
const LIMIT: Duration = Duration::from_secs(30);

/// `fetchproxy ARGS...` on a terminal of its own; killed by PID on drop.
struct Terminal {
    child: Child,
    master: File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn start(args: &[&str]) -> Terminal {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open a pseudo-terminal");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let size = Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        tcsetwinsize(&master, size).expect("set the terminal size");
        let path = name.to_str().expect("a UTF-8 device path").to_string();
        let open_side = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                // The test process must not take it as its own terminal.
                .custom_flags(OFlags::NOCTTY.bits() as i32)
                .open(&path)
                .expect("open the terminal side")
        };
        let child = Command::new("setsid")
            .args(["--ctty", "--wait", env!("CARGO_BIN_EXE_fetchproxy")])
            .args(args)
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .stdin(Stdio::from(open_side()))
            .stdout(Stdio::from(open_side()))
            .stderr(Stdio::from(open_side()))
            .spawn()
            .expect("spawn setsid (util-linux) with fetchproxy");
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (
            master.try_clone().expect("clone the master"),
            output.clone(),
        );
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last process on the terminal side exits.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut all) = sink.lock() {
                    all.extend_from_slice(&buf[..n]);
                }
            }
        });
        Terminal {
            child,
            master,
            output,
        }
    }

    /// Everything written to the terminal so far.
    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().map(|o| o.clone()).unwrap_or_default())
            .into_owned()
    }

    /// The screen as a person sees it now: one string per row, trailing
    /// blanks dropped.
    fn screen(&self) -> Vec<String> {
        let bytes = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        let rows = ROWS.try_into().expect("non-zero");
        let cols = COLS.try_into().expect("non-zero");
        let mut parser = vt100::Parser::new(rows, cols, 0);
        parser.process(&bytes);
        parser
            .screen()
            .rows(0, COLS)
            .map(|row| row.trim_end().to_string())
            .collect()
    }

    /// Waits until some row satisfies `check`.
    fn wait_for_row(&self, what: &str, check: impl Fn(&str) -> bool) {
        let shown = wait_until(LIMIT, || self.screen().iter().any(|r| check(r)));
        assert!(shown, "no row shows {what}:\n{}", self.screen().join("\n"));
    }

    /// Types `text` as keystrokes.
    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
        self.master.flush().expect("flush");
    }

    /// The exit code, waiting up to `LIMIT`.
    fn exit_code(&mut self) -> Option<i32> {
        let mut code = None;
        wait_until(LIMIT, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        code
    }

    /// Waits for the final screen: the output stops once the process exits.
    fn final_screen(&mut self) -> (Option<i32>, Vec<String>) {
        let code = self.exit_code();
        let mut last = String::new();
        wait_until(Duration::from_secs(5), || {
            let now = self.raw();
            let same = now == last;
            last = now;
            same
        });
        (code, self.screen())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `fetchproxy fetch` through `proxy` into `out_dir` on a terminal, with
/// `more` arguments after those.
fn fetch_on_terminal(proxy: &Proxy, out_dir: &std::path::Path, more: &[&str]) -> Terminal {
    let proxy = proxy.addr.to_string();
    let out_dir = out_dir.to_str().expect("utf-8");
    let mut args = vec!["fetch", "--proxy", &proxy, "--out-dir", out_dir];
    args.extend_from_slice(more);
    Terminal::start(&args)
}

fn bar_rows(screen: &[String]) -> Vec<&String> {
    screen.iter().filter(|r| r.contains(" URLs ")).collect()
}

#[test]
fn the_bar_counts_the_file_first_and_only_failures_print_above_it() {
    let gate = Gate::new();
    let slow = gated_origin(&gate, b"slow");
    let site = Origin::start(|req| match req.target.as_str() {
        "/missing" => Reply::status(404),
        path => Reply::ok("text/plain", path.to_string()),
    });
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut urls: Vec<String> = (0..4).map(|i| site.url(&format!("/{i}"))).collect();
    // A note (the scheme assumed) and a failure, both printed above the bar.
    let bare = format!("{}/bare", site.addr);
    urls.push(bare.clone());
    urls.push(site.url("/missing"));
    urls.push(slow.url("/last"));
    let input = write_input(dir.path(), &urls);
    let out = dir.path().join("out");
    let mut term = fetch_on_terminal(&proxy, &out, &["--input", input.to_str().expect("utf-8")]);
    // Everything but the gated URL is done; the bar waits for it.
    term.wait_for_row("the bar at 6 of 7", |r| r.contains(" 6/7 URLs "));
    let screen = term.screen();
    // Whole rows: nothing of the bar is left beside them.
    for row in [
        format!("line 5: no scheme; assuming http://{bare}"),
        format!("failed {}: HTTP 404 Not Found", site.url("/missing")),
    ] {
        assert!(
            screen.contains(&row),
            "no row {row:?}:\n{}",
            screen.join("\n")
        );
    }
    assert!(
        !screen.iter().any(|r| r.starts_with("fetched ")),
        "per-URL lines on a terminal:\n{}",
        screen.join("\n")
    );
    assert_eq!(bar_rows(&screen).len(), 1, "{}", screen.join("\n"));
    // The total was known from the first frame on.
    let raw = term.raw();
    let frames: Vec<&str> = raw.split(" URLs ").collect();
    assert!(frames.len() > 1, "{raw:?}");
    for frame in &frames[..frames.len() - 1] {
        assert!(
            frame.ends_with("/7"),
            "a frame with another total: {frame:?}"
        );
    }

    gate.open();
    let (code, screen) = term.final_screen();
    assert_eq!(code, Some(1), "{}", screen.join("\n"));
    assert!(
        bar_rows(&screen).is_empty(),
        "the bar stayed:\n{}",
        screen.join("\n")
    );
    assert!(
        screen
            .iter()
            .any(|r| r.starts_with("fetched 6, skipped 0, failed 1, ")),
        "{}",
        screen.join("\n")
    );
    assert_eq!(manifest(&out).len(), 7);
}

#[test]
fn urls_from_a_pipe_are_all_fetched_on_a_terminal_too() {
    // A pipe can be read once: the bar must not use it up to count.
    let site = Origin::start(|req| Reply::ok("text/plain", req.target.clone()));
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("urls.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let lines = format!("{}\n{}\n", site.url("/one"), site.url("/two"));
    let writer = {
        let fifo = fifo.clone();
        // Opening the write side waits for the reader, then the lines go.
        thread::spawn(move || {
            let mut pipe = OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            pipe.write_all(lines.as_bytes()).expect("write fifo");
        })
    };
    let out = dir.path().join("out");
    let mut term = fetch_on_terminal(&proxy, &out, &["--input", fifo.to_str().expect("utf-8")]);
    let (code, screen) = term.final_screen();
    writer.join().expect("writer");
    assert_eq!(code, Some(0), "{}", screen.join("\n"));
    assert!(
        screen
            .iter()
            .any(|r| r.starts_with("fetched 2, skipped 0, failed 0")),
        "{}",
        screen.join("\n")
    );
    assert_eq!(manifest(&out).len(), 2);
}

#[test]
fn ctrl_c_clears_the_bar() {
    let gate = Gate::new();
    // A long URL, so that the bar runs to the edge of the terminal.
    let slow = gated_origin(&gate, b"slow");
    let long = slow.url(&format!("/{}", "a-long-path-segment/".repeat(6)));
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut term = fetch_on_terminal(&proxy, dir.path(), &[&long]);
    term.wait_for_row("the bar", |r| {
        r.contains(" 0/1 URLs ") && r.contains("1 in flight")
    });
    term.type_text("\x03");
    let (code, screen) = term.final_screen();
    gate.open();
    assert_eq!(code, Some(130), "{}", screen.join("\n"));
    assert!(
        bar_rows(&screen).is_empty(),
        "the bar stayed:\n{}",
        screen.join("\n")
    );
    assert!(
        screen
            .iter()
            .any(|r| r.starts_with("fetched 0, skipped 0, failed 0, ")
                && r.contains(", interrupted: 1 download stopped")
                && r.ends_with("; run again for the rest")),
        "{}",
        screen.join("\n")
    );
}

#[test]
fn in_prompt_mode_results_never_share_a_line_with_the_prompt() {
    let gate = Gate::new();
    let slow = gated_origin(&gate, b"typed");
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut term = fetch_on_terminal(&proxy, dir.path(), &[]);
    term.wait_for_row("the prompt", |r| r == "url>");
    term.type_text(&format!("{}\r", slow.url("/one")));
    // The next prompt is up before the answer arrives.
    let prompts = |screen: &[String]| screen.iter().filter(|r| r.starts_with("url>")).count();
    assert!(
        wait_until(LIMIT, || prompts(&term.screen()) == 2),
        "{}",
        term.screen().join("\n")
    );
    gate.open();
    term.wait_for_row("the result", |r| r.starts_with("fetched "));
    let screen = term.screen();
    let result = screen
        .iter()
        .position(|r| r.starts_with("fetched "))
        .expect("result row");
    assert!(!screen[result].contains("url>"), "{}", screen.join("\n"));
    assert_eq!(
        screen[result + 1],
        "url>",
        "the prompt again:\n{}",
        screen.join("\n")
    );

    term.type_text("\x04");
    let (code, screen) = term.final_screen();
    assert_eq!(code, Some(0), "{}", screen.join("\n"));
    let summary = screen
        .iter()
        .find(|r| r.contains("fetched 1, skipped 0, failed 0"))
        .unwrap_or_else(|| panic!("no summary:\n{}", screen.join("\n")));
    assert!(summary.starts_with("fetched 1"), "{}", screen.join("\n"));
    assert!(
        screen.iter().all(|r| !r.starts_with("url>") || r.len() > 5),
        "an empty prompt was left behind:\n{}",
        screen.join("\n")
    );
}

#[test]
fn a_left_out_proxy_password_is_asked_for_without_echo() {
    const PASSWORD: &str = "typed-not-shown";
    let hash = hash_password(PASSWORD).expect("hash");
    let user = User {
        name: "alice".into(),
        password_hash: parse_password_hash(&hash).expect("parse"),
    };
    let proxy = Proxy::with(|config| config.users = vec![user]);
    let origin = Origin::fixed("text/plain", b"members only");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut term = fetch_on_terminal(
        &proxy,
        dir.path(),
        &["--proxy-user", "alice", &origin.url("/")],
    );
    term.wait_for_row("the password prompt", |r| {
        r == "Enter proxy password for user 'alice':"
    });
    term.type_text(&format!("{PASSWORD}\r"));
    let (code, screen) = term.final_screen();
    assert_eq!(code, Some(0), "{}", screen.join("\n"));
    assert!(!term.raw().contains(PASSWORD), "the password was echoed");
    assert_eq!(manifest(dir.path())[0]["status"], 200);
}

#[test]
fn hash_password_on_a_terminal_does_not_echo_the_password() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    const PASSWORD: &str = "kept-off-the-screen";
    let mut term = Terminal::start(&["hash-password"]);
    term.wait_for_row("the password prompt", |r| r == "password (not shown):");
    term.type_text(&format!("{PASSWORD}\r"));
    let (code, screen) = term.final_screen();
    assert_eq!(code, Some(0), "{}", screen.join("\n"));
    assert!(!term.raw().contains(PASSWORD), "the password was echoed");
    let line = screen
        .iter()
        .find(|r| r.starts_with("$argon2id$"))
        .unwrap_or_else(|| panic!("no hash:\n{}", screen.join("\n")));
    let hash = PasswordHash::new(line.trim()).expect("a PHC string");
    assert!(
        Argon2::default()
            .verify_password(PASSWORD.as_bytes(), &hash)
            .is_ok()
    );
}
