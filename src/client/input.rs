//! Where URLs come from: command-line arguments, a file (`-` for stdin), or
//! a prompt reading one URL a line until end of input. Yields each URL with
//! its place (line or argument number) or an `InputError` for a bad line;
//! blank lines and `#` comments are skipped, and a URL without a scheme gets
//! `http://`, as curl and wget do. No network.

use std::fmt;
use std::io::{self, BufRead};
use std::sync::Arc;

use url::Url;

use crate::client::progress::Prompt;

/// The longest URL accepted, in bytes (the server's default `max_url_bytes`).
pub const MAX_URL_BYTES: usize = 8192;

/// Where a URL was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// 1-based position among the URL arguments.
    Arg(usize),
    /// 1-based line number in the input file or prompt.
    Line(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Arg(n) => write!(f, "argument {n}"),
            Place::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// What is wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    #[error("not a URL ({reason}): {text:?}")]
    NotUrl { text: String, reason: String },
    #[error("unsupported scheme {0:?}; use http or https")]
    UnsupportedScheme(String),
    #[error("URL over {limit} bytes ({len})")]
    TooLong { len: usize, limit: usize },
    #[error(
        "credentials in URLs are not supported; fetch that URL in a run of its own with \
         --header 'Authorization: Basic BASE64' (of user:password: a header goes with every \
         URL of a run), or, for the proxy, use --proxy-user"
    )]
    Credentials,
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// A bad line and where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {kind}")]
pub struct InputError {
    pub place: Place,
    pub kind: BadLine,
}

/// A URL from one line or argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub url: Url,
    /// The text had no scheme, and `http://` was put in front.
    pub assumed_http: bool,
}

/// A URL and where it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub place: Place,
    pub url: Url,
    pub assumed_http: bool,
}

impl Found {
    fn new(place: Place, parsed: Parsed) -> Found {
        Found {
            place,
            url: parsed.url,
            assumed_http: parsed.assumed_http,
        }
    }
}

/// One URL to fetch, or a bad line.
pub type Item = Result<Found, InputError>;

/// Parses one line: `Ok(None)` for blank lines and comments. The fragment is
/// dropped (it is never sent), so `page#a` and `page#b` are one URL.
pub fn parse_line(text: &str) -> Result<Option<Parsed>, BadLine> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let too_long = |len| BadLine::TooLong {
        len,
        limit: MAX_URL_BYTES,
    };
    if text.len() > MAX_URL_BYTES {
        return Err(too_long(text.len()));
    }
    // The URL parser would quietly encode a space and drop a tab, and so
    // fetch another URL than the line says (`page<TAB>label`).
    if let Some(c) = text.chars().find(|&c| c.is_whitespace() || c.is_control()) {
        return Err(BadLine::NotUrl {
            text: shorten(text),
            reason: if c.is_whitespace() {
                "a URL has no spaces or tabs; write a space as %20".to_string()
            } else {
                "a URL has no control characters".to_string()
            },
        });
    }
    let (mut url, assumed_http) = parse_with_scheme(text)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BadLine::UnsupportedScheme(url.scheme().to_string()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(BadLine::NotUrl {
            text: shorten(text),
            reason: "no host".to_string(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        // RFC 9110 §4.2.4: senders must not put userinfo in http(s) URIs.
        return Err(BadLine::Credentials);
    }
    url.set_fragment(None);
    // Percent-encoding can make the URL sent longer than the line typed.
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(too_long(url.as_str().len()));
    }
    Ok(Some(Parsed { url, assumed_http }))
}

/// Parses `text` as a URL; without `://`, and unless it starts with a
/// scheme of its own (`mailto:x`), as `http://` + text, the way curl and
/// wget take `example.com/page` or `localhost:8000/x`.
fn parse_with_scheme(text: &str) -> Result<(Url, bool), BadLine> {
    let not_url = |err: url::ParseError| BadLine::NotUrl {
        text: shorten(text),
        reason: err.to_string(),
    };
    if text.contains("://") {
        return Url::parse(text).map(|u| (u, false)).map_err(not_url);
    }
    match Url::parse(text) {
        // `host:port/...` also parses, with the host as a scheme; a real
        // scheme is not followed by a digit.
        Ok(url) if !text[url.scheme().len() + 1..].starts_with(|c: char| c.is_ascii_digit()) => {
            Ok((url, false))
        }
        _ => {
            // No scheme: `example.com/page`, `127.0.0.1:8000/x`, ...
            Url::parse(&format!("http://{text}"))
                .map(|u| (u, true))
                .map_err(not_url)
        }
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// A file of URLs given where a URL goes: `fetch urls.txt` would fetch
/// `http://urls.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misplaced {
    /// A path (`/` but not `//`, `./`, `../` or `~/` first), which no
    /// host name is.
    Path,
    /// A file that reads as URLs: a file of URLs.
    UrlList,
}

/// How many bytes of a file are looked at for its first URL line.
const SNIFFED_BYTES: u64 = 16 * 1024;

/// Whether the URL argument `text` is rather a file of URLs: a path, or a
/// regular file that reads as URLs (see `lists_urls`). A page saved under
/// its host's name (`example.com`, as wget saves it), or an empty file a
/// shell has just made for a redirect, is not taken for one; nor is
/// `//host/path`, which is a URL without its scheme.
pub fn misplaced_input(text: &str) -> Option<Misplaced> {
    let text = text.trim();
    if text.contains("://") || text.starts_with("//") {
        return None;
    }
    if ["/", "./", "../", "~/"]
        .iter()
        .any(|start| text.starts_with(start))
    {
        return Some(Misplaced::Path);
    }
    lists_urls(std::path::Path::new(text)).then_some(Misplaced::UrlList)
}

/// Whether `path` is a regular file that reads as URLs: its first line
/// that is not blank or a comment is a URL with a scheme, or its first two
/// such lines are both URLs. A file holding one word (`ok`, an address, a
/// version) is not a list. A pipe or device is never opened, as opening
/// one can wait for a writer.
fn lists_urls(path: &std::path::Path) -> bool {
    if !std::fs::metadata(path).is_ok_and(|meta| meta.is_file()) {
        return false;
    }
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let lines = Lines::new(
        io::BufReader::new(io::Read::take(file, SNIFFED_BYTES)),
        None,
    );
    let mut first_two = lines.map_while(Result::ok).take(2);
    match first_two.next() {
        Some(Ok(first)) if !first.assumed_http => true,
        Some(Ok(_)) => matches!(first_two.next(), Some(Ok(_))),
        _ => false,
    }
}

/// `text` as one word to a POSIX shell: as it is when it has nothing the
/// shell would read, else in single quotes.
pub fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._/:@%+=,-".contains(c);
    // A word starting with `=` is expanded by zsh.
    if !text.is_empty() && !text.starts_with('=') && text.chars().all(plain) {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// URLs from command-line arguments.
pub fn from_args(args: Vec<String>) -> impl Iterator<Item = Item> {
    args.into_iter().enumerate().filter_map(|(i, text)| {
        let place = Place::Arg(i + 1);
        match parse_line(&text) {
            Ok(Some(parsed)) => Some(Ok(Found::new(place, parsed))),
            Ok(None) => None,
            Err(kind) => Some(Err(InputError { place, kind })),
        }
    })
}

/// URLs from a reader, one a line, read as they are needed (so a prompt's
/// URLs are fetched while the user types). With a `prompt`, `url> ` is
/// shown on stderr before each line. A read error ends the input and is the
/// last item.
pub struct Lines<R> {
    reader: R,
    prompt: Option<Arc<Prompt>>,
    line: usize,
    done: bool,
}

impl<R: BufRead> Lines<R> {
    /// Reads from `reader`, showing `prompt` if given.
    pub fn new(reader: R, prompt: Option<Arc<Prompt>>) -> Self {
        Lines {
            reader,
            prompt,
            line: 0,
            done: false,
        }
    }
}

/// What a failed read of the input turns into.
#[derive(Debug, thiserror::Error)]
#[error("cannot read input after line {line}: {source}")]
pub struct ReadError {
    pub line: usize,
    pub source: io::Error,
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Item, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some(prompt) = &self.prompt {
                prompt.show();
            }
            let read = read_line_bounded(&mut self.reader, MAX_URL_BYTES + 2);
            if let Some(prompt) = &self.prompt {
                // Enter moved the cursor to a line of its own; at the end
                // of input the prompt's line is cleared.
                prompt.answered(matches!(read, Ok(Some(_))));
            }
            let raw = match read {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(ReadError {
                        line: self.line,
                        source,
                    }));
                }
            };
            self.line += 1;
            let place = Place::Line(self.line);
            let parsed = match raw {
                Raw::Text(bytes) if bytes.contains(&0) => {
                    // A binary file given by mistake: its fragments would
                    // read as host names, each looked up and fetched.
                    self.done = true;
                    return Some(Err(ReadError {
                        line: self.line - 1,
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("line {} has a NUL byte: not a text file of URLs", self.line),
                        ),
                    }));
                }
                Raw::Text(mut bytes) => {
                    if self.line == 1 && bytes.starts_with(BOM) {
                        // Windows editors and PowerShell start a file with one.
                        bytes.drain(..BOM.len());
                    }
                    match String::from_utf8(bytes) {
                        Ok(text) => parse_line(&text),
                        Err(_) => Err(BadLine::NotUtf8),
                    }
                }
                Raw::TooLong(len) => Err(BadLine::TooLong {
                    len,
                    limit: MAX_URL_BYTES,
                }),
            };
            match parsed {
                Ok(Some(parsed)) => return Some(Ok(Ok(Found::new(place, parsed)))),
                Ok(None) => continue,
                Err(kind) => return Some(Ok(Err(InputError { place, kind }))),
            }
        }
        None
    }
}

/// The UTF-8 byte order mark, dropped from the start of an input file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

enum Raw {
    Text(Vec<u8>),
    /// The line was longer than the limit; its length.
    TooLong(usize),
}

/// Reads one line (without the newline) keeping at most `limit` bytes in
/// memory; a longer line is read through and reported by length. `None` at
/// end of input.
fn read_line_bounded(reader: &mut impl BufRead, limit: usize) -> io::Result<Option<Raw>> {
    let mut kept = Vec::new();
    let mut len = 0usize;
    let mut seen_any = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buf.is_empty() {
            if !seen_any {
                return Ok(None);
            }
            break;
        }
        seen_any = true;
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if len + take <= limit {
            kept.extend_from_slice(&buf[..take]);
        }
        len += take;
        reader.consume(take + usize::from(end));
        if end {
            break;
        }
    }
    Ok(Some(if len > limit {
        Raw::TooLong(len)
    } else {
        Raw::Text(kept)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &[u8]) -> Vec<Item> {
        Lines::new(text, None)
            .map(|r| r.expect("in-memory reads do not fail"))
            .collect()
    }

    #[test]
    fn a_file_of_urls_given_as_a_url_is_told_apart_from_a_host() {
        use std::path::Path;
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.to_str().expect("utf-8").to_string()
        };
        let list = write("urls.txt", "# mine\n\nexample.com/a\nhttps://b.example/\n");
        let with_schemes = write("one.txt", "https://b.example/\n");
        let page = write("example.com", "<!DOCTYPE html>\n<p>saved page</p>\n");
        let empty = write("redirected", "");
        let word = write("ifconfig.me", "203.0.113.7\n");
        assert_eq!(misplaced_input(&list), Some(Misplaced::Path));
        assert_eq!(misplaced_input("/dev/stdin"), Some(Misplaced::Path));
        assert_eq!(misplaced_input("./urls.txt"), Some(Misplaced::Path));
        assert_eq!(misplaced_input("~/urls.txt"), Some(Misplaced::Path));
        assert_eq!(misplaced_input("http://example.com/"), None);
        assert_eq!(misplaced_input("example.com/page"), None, "no such file");
        assert_eq!(misplaced_input("localhost:8000/x"), None);
        assert_eq!(
            misplaced_input("//example.com/x"),
            None,
            "a URL less its scheme"
        );
        assert!(lists_urls(Path::new(&list)), "two URL lines");
        assert!(
            lists_urls(Path::new(&with_schemes)),
            "a URL with its scheme"
        );
        assert!(!lists_urls(Path::new(&page)), "a saved page");
        assert!(!lists_urls(Path::new(&empty)), "an empty file");
        assert!(!lists_urls(Path::new(&word)), "one word");
        assert!(!lists_urls(dir.path()), "a directory");
        // A pipe is never opened: that would wait for a writer.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(lists_urls(&fifo)));
        let read = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(read, Ok(false), "a pipe is no list, and is not opened");
    }

    #[test]
    fn shell_words_are_quoted_only_when_the_shell_would_read_them() {
        assert_eq!(shell_word("urls.txt"), "urls.txt");
        assert_eq!(shell_word("/tmp/a-b_c/urls.txt"), "/tmp/a-b_c/urls.txt");
        assert_eq!(shell_word("my urls.txt"), "'my urls.txt'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("$HOME/x"), "'$HOME/x'");
        assert_eq!(shell_word("=x"), "'=x'");
    }

    #[test]
    fn blank_lines_and_comments_are_skipped_and_lines_numbered() {
        let items = read_all(b"# list\n\nhttp://a.example/\n   \n  https://b.example/x?q=1  \r\n");
        let got: Vec<(Place, String)> = items
            .into_iter()
            .map(|i| i.expect("good line"))
            .map(|f| (f.place, f.url.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (Place::Line(3), "http://a.example/".to_string()),
                (Place::Line(5), "https://b.example/x?q=1".to_string()),
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_number() {
        let long = format!("http://a.example/{}\n", "x".repeat(MAX_URL_BYTES));
        let mut text = b"ftp://a.example/f\nnot a url\n".to_vec();
        text.extend_from_slice(long.as_bytes());
        text.extend_from_slice(b"\xff\xfe\nhttp://user:pw@a.example/\nhttp://ok.example/");
        let items = read_all(&text);
        let errs: Vec<String> = items
            .iter()
            .filter_map(|i| i.as_ref().err())
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(
            errs[0].starts_with("line 1: unsupported scheme \"ftp\""),
            "{errs:?}"
        );
        assert_eq!(
            errs[1],
            "line 2: not a URL (a URL has no spaces or tabs; write a space as %20): \"not a url\"",
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("line 3: URL over 8192 bytes"),
            "{errs:?}"
        );
        assert_eq!(errs[3], "line 4: not valid UTF-8");
        assert!(
            errs[4].starts_with("line 5: credentials in URLs are not supported; "),
            "{}",
            errs[4]
        );
        assert!(
            errs[4].contains("--header 'Authorization: Basic"),
            "{}",
            errs[4]
        );
        assert!(matches!(
            items.last(),
            Some(Ok(Found {
                place: Place::Line(6),
                ..
            }))
        ));
    }

    #[test]
    fn spaces_tabs_and_control_characters_are_not_quietly_encoded_or_dropped() {
        let items = read_all(b"http://h/x y\nhttp://h/page\tlabel\nhttp://h/a\x07b\nhttp://h/ok\n");
        let errs: Vec<String> = items
            .iter()
            .filter_map(|i| i.as_ref().err())
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("line 1: not a URL (a URL has no spaces or tabs"));
        assert!(errs[1].starts_with("line 2: not a URL (a URL has no spaces or tabs"));
        assert!(errs[2].starts_with("line 3: not a URL (a URL has no control characters)"));
        assert!(matches!(items.last(), Some(Ok(found)) if found.url.as_str() == "http://h/ok"));
    }

    #[test]
    fn a_binary_file_stops_the_input_at_its_first_nul_byte() {
        let mut lines = Lines::new(&b"http://h/a\nELF\0\x01junk\nhttp://h/b\n"[..], None);
        assert!(matches!(lines.next(), Some(Ok(Ok(_)))));
        let err = match lines.next() {
            Some(Err(err)) => err.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err,
            "cannot read input after line 1: line 2 has a NUL byte: not a text file of URLs"
        );
        assert!(lines.next().is_none());
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_accepted() {
        let prefix = "http://a.example/";
        let url = format!("{prefix}{}", "x".repeat(MAX_URL_BYTES - prefix.len()));
        assert!(parse_line(&url).expect("fits").is_some());
        let over = format!("{url}x");
        assert!(matches!(parse_line(&over), Err(BadLine::TooLong { .. })));
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_dropped() {
        let items = read_all(b"\xEF\xBB\xBFhttp://a.test/1\r\nhttp://a.test/2\r\n");
        let urls: Vec<String> = items
            .into_iter()
            .map(|item| item.expect("a URL").url.to_string())
            .collect();
        assert_eq!(urls, ["http://a.test/1", "http://a.test/2"]);
    }

    #[test]
    fn fragments_are_dropped() {
        let parsed = parse_line("http://a.example/p#sec")
            .expect("ok")
            .expect("url");
        assert_eq!(parsed.url.as_str(), "http://a.example/p");
        assert!(!parsed.assumed_http);
    }

    #[test]
    fn arguments_are_numbered_by_position() {
        let items: Vec<Item> =
            from_args(vec!["http://a.example/".into(), "mailto:x@y".into()]).collect();
        assert!(matches!(
            items[0],
            Ok(Found {
                place: Place::Arg(1),
                ..
            })
        ));
        let err = items[1].as_ref().expect_err("bad");
        assert_eq!(err.place, Place::Arg(2));
        assert!(
            err.to_string()
                .starts_with("argument 2: unsupported scheme")
        );
    }

    #[test]
    fn a_url_without_a_scheme_gets_http_as_with_curl() {
        for (text, want) in [
            ("example.com", "http://example.com/"),
            ("example.com/docs?page=2", "http://example.com/docs?page=2"),
            ("localhost:8000/x", "http://localhost:8000/x"),
            ("127.0.0.1:8080", "http://127.0.0.1:8080/"),
            ("[::1]:81/a", "http://[::1]:81/a"),
        ] {
            let parsed = parse_line(text).expect(text).expect(text);
            assert_eq!(
                (parsed.url.as_str(), parsed.assumed_http),
                (want, true),
                "{text}"
            );
        }
        let given = parse_line("https://example.com").expect("ok").expect("url");
        assert!(!given.assumed_http);
        // A scheme of its own is kept, and refused as before.
        assert_eq!(
            parse_line("mailto:x@y.example"),
            Err(BadLine::UnsupportedScheme("mailto".into()))
        );
        assert!(matches!(
            parse_line("not a url"),
            Err(BadLine::NotUrl { .. })
        ));
    }
}
