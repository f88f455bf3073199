//! The field-line grammar (RFC 9110 §5, RFC 9112 §5), one for request heads
//! and chunked trailers alike, and the line-ending rule: every line ends in
//! CRLF. Two parsers in a chain that disagree on either are how requests get
//! smuggled, so the proxy accepts exactly one spelling. Pure functions.

/// `tchar` (RFC 9110 §5.6.2).
pub fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

/// [`is_token_byte`] as a table: every byte of every method and header
/// name is looked up.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
};

/// `field-vchar`, SP and HT (RFC 9110 §5.5); obs-text is kept as bytes.
pub fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Whether every byte of a field value is [`is_value_byte`]. Without an
/// early exit, so that the compiler checks many bytes at a time: values
/// (cookies, user agents) are the bulk of a request head.
pub fn is_value(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |all, &b| all & is_value_byte(b))
}

/// What is wrong with one field line (without its CRLF), if anything:
/// `field-name ":" OWS field-value OWS`. `complete` says whether the line
/// ended; a line still arriving is judged only on what it holds so far.
pub fn check_field_line(line: &[u8], complete: bool) -> Option<&'static str> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obs-fold is rejected in requests (and so in trailers).
        return Some("header line starts with whitespace (obs-fold)");
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        if !line.iter().copied().all(is_token_byte) {
            return Some("invalid byte in header name");
        }
        return complete.then_some("header line without a colon");
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Some("empty header name");
    }
    // RFC 9112 §5.1: no whitespace between field name and colon.
    if matches!(name.last(), Some(b' ' | b'\t')) {
        return Some("whitespace before colon in header line");
    }
    if !name.iter().copied().all(is_token_byte) {
        return Some("invalid byte in header name");
    }
    if !is_value(value) {
        return Some("invalid byte in header value");
    }
    None
}

/// Whether `bytes` hold an LF not preceded by CR. RFC 9112 §2.2 lets a
/// recipient accept a bare LF as a line end; the proxy does not (as Apache
/// httpd's `HttpProtocolOptions Strict`), because whoever is behind it may
/// split the lines differently.
pub fn has_bare_lf(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_field_lines_pass() {
        for line in [
            &b"Host: example.com"[..],
            b"X-Empty:",
            b"a:b",
            b"X: \x80\xff",
        ] {
            assert_eq!(check_field_line(line, true), None, "{line:?}");
        }
    }

    #[test]
    fn malformed_field_lines_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (b" folded", "header line starts with whitespace (obs-fold)"),
            (
                b"\tfolded: x",
                "header line starts with whitespace (obs-fold)",
            ),
            (b"NoColon", "header line without a colon"),
            (b"GET / HTTP/1.1", "invalid byte in header name"),
            (b": value", "empty header name"),
            (b"Name : value", "whitespace before colon in header line"),
            (b"Name: a\0b", "invalid byte in header value"),
        ];
        for (line, msg) in cases {
            assert_eq!(check_field_line(line, true), Some(msg), "{line:?}");
        }
        // Still arriving: no verdict on a name without its colon yet.
        assert_eq!(check_field_line(b"NoColon", false), None);
    }

    #[test]
    fn token_bytes_are_tchar() {
        for b in 0..=u8::MAX {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_token_byte(b), tchar, "{b:#04x}");
        }
    }

    #[test]
    fn bare_lf_anywhere_is_found() {
        for head in [
            &b"GET / HTTP/1.1\n\n"[..],
            b"GET / HTTP/1.1\r\n\n",
            b"GET / HTTP/1.1\r\nX: y\nFoo: barn\n\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(has_bare_lf(head), "{head:?}");
        }
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(!has_bare_lf(b"a\rb"));
    }
}
