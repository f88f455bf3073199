//! Escaping of peer-sent text before it reaches a log line: control
//! characters, quotes, backslashes and non-ASCII bytes become escapes,
//! credentials in URLs become `***`, and long text is cut.

use std::borrow::Cow;
use std::fmt;

/// Escaped text longer than this is cut, and `...` marks the cut.
const MAX_ESCAPED_BYTES: usize = 4096;

/// Peer-sent text as [`escape`] makes it, or `-` when there is none, so
/// that the fields of a line stay countable.
pub(super) struct EscapedOrDash<'a>(pub(super) &'a [u8]);

impl<'a> EscapedOrDash<'a> {
    /// The text as a log line shows it: borrowed in the usual case, which
    /// needs no escapes and no copy.
    pub(super) fn text(&self) -> Cow<'a, str> {
        // Printable ASCII with no `@` has no userinfo to redact and nothing
        // to escape: one look at each byte, for every field of every line.
        let plain = self.0.len() <= MAX_ESCAPED_BYTES
            && self.0.iter().all(|&b| PLAIN_NOT_AT[usize::from(b)]);
        if plain && let Ok(text) = std::str::from_utf8(self.0) {
            return Cow::Borrowed(if text.is_empty() { "-" } else { text });
        }
        match redact_userinfo(self.0) {
            Cow::Borrowed(bytes) => match as_plain(bytes) {
                Some("") => Cow::Borrowed("-"),
                Some(plain) => Cow::Borrowed(plain),
                None => Cow::Owned(escape_redacted(bytes)),
            },
            Cow::Owned(redacted) => match as_plain(&redacted) {
                Some(plain) => Cow::Owned(plain.to_owned()),
                None => Cow::Owned(escape_redacted(&redacted)),
            },
        }
    }
}

/// `bytes` as text when every byte stands for itself and it needs no cut.
fn as_plain(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| text.len() <= MAX_ESCAPED_BYTES && text.bytes().all(is_plain))
}

impl fmt::Display for EscapedOrDash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Bytes that stand for themselves in a log line (those
/// `std::ascii::escape_default` leaves alone).
const fn is_plain(byte: u8) -> bool {
    matches!(byte, 0x20..=0x7e) && !matches!(byte, b'"' | b'\'' | b'\\')
}

/// The plain bytes but `@`, which may end a URL's userinfo.
const PLAIN_NOT_AT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_plain(b as u8) && b as u8 != b'@';
        b += 1;
    }
    table
};

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
    fn access_fields_match_escape_on_every_path() {
        let long = "x".repeat(MAX_ESCAPED_BYTES + 1);
        let longest = "y".repeat(MAX_ESCAPED_BYTES);
        let samples: [&[u8]; 11] = [
            b"http://example.com/plain",
            b"http://u:p@host/plain",
            b"mail@example.com",
            longest.as_bytes(),
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
}
