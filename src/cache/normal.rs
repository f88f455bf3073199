//! Targets already written as the URL parser would write them: such a
//! target is its own cache key, and a lookup parses nothing. The check is
//! strict (anything unusual takes the parser's way), and a proptest holds
//! it to the parser's output. Pure: no I/O.

/// Whether `target` is already written as the URL parser would write it,
/// so that it is its own key: `http` or `https`, a host name in lowercase
/// (whose last label starts with a letter, so it is no IPv4 address in
/// disguise, and none in IDNA form) or a dotted IPv4 address, a port that
/// is not the scheme's default, a path, and an optional query, all of
/// characters the parser keeps as they are, with no dot segments, no
/// userinfo and no fragment. Most requests are: a lookup then parses
/// nothing. Anything else takes the parser's way.
pub fn is_normal(target: &str) -> bool {
    let target = target.as_bytes();
    let (rest, default_port): (&[u8], &[u8]) = if let Some(rest) = target.strip_prefix(b"http://") {
        (rest, b"80")
    } else if let Some(rest) = target.strip_prefix(b"https://") {
        (rest, b"443")
    } else {
        return false;
    };
    let Some(slash) = rest.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (authority, path_and_query) = rest.split_at(slash);
    let (host, port) = match authority.iter().position(|&b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    };
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && port[0] != b'0'
            && port != default_port
            && number(port) <= 65535
    });
    port_ok && is_normal_host(host) && is_normal_path_and_query(path_and_query)
}

/// The value of a short run of ASCII digits.
fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'))
}

/// A lowercase host name whose labels are plain, or a dotted IPv4 address.
fn is_normal_host(host: &[u8]) -> bool {
    let mut labels = 0;
    let mut octets = 0;
    let mut last_is_named = false;
    for label in host.split(|&b| b == b'.') {
        let plain = label
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if label.is_empty() || label.starts_with(b"xn--") || !plain {
            return false;
        }
        labels += 1;
        octets += usize::from(is_octet(label));
        last_is_named = label[0].is_ascii_lowercase();
    }
    last_is_named || (labels == 4 && octets == 4)
}

/// A decimal number from 0 to 255 without leading zeros.
fn is_octet(label: &[u8]) -> bool {
    (1..=3).contains(&label.len())
        && label.iter().all(u8::is_ascii_digit)
        && (label.len() == 1 || label[0] != b'0')
        && number(label) <= 255
}

/// Bytes the parser keeps as they are in a path: unreserved characters,
/// sub-delimiters but `'` (encoded in the query of http(s) URLs), `:`,
/// `@` and `/`.
const PATH_KEPT: [bool; 256] = kept_bytes(b"-._~!$&()*+,;=:@/");

/// Bytes the parser keeps as they are in a query: a path's, and `?`.
const QUERY_KEPT: [bool; 256] = kept_bytes(b"-._~!$&()*+,;=:@/?");

/// A table of the ASCII letters and digits, and `extra`.
const fn kept_bytes(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Whether a path (starting with `/`) and its optional query are kept
/// byte for byte by the parser, with no dot segment in the path: one pass,
/// as this runs for every request the cache sees.
fn is_normal_path_and_query(bytes: &[u8]) -> bool {
    let mut kept = &PATH_KEPT;
    let mut in_path = true;
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_path && (b == b'/' || b == b'?') {
            if is_dot_segment(&bytes[segment..i]) {
                return false;
            }
            segment = i + 1;
            if b == b'?' {
                in_path = false;
                kept = &QUERY_KEPT;
            }
            i += 1;
            continue;
        }
        if b == b'%' {
            // Two hex digits, but never an encoded dot (which the parser
            // reads as a dot segment).
            let Some(&[high, low]) = bytes.get(i + 1..i + 3) else {
                return false;
            };
            if !high.is_ascii_hexdigit()
                || !low.is_ascii_hexdigit()
                || (high == b'2' && low.eq_ignore_ascii_case(&b'e'))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !kept[usize::from(b)] {
            return false;
        }
        i += 1;
    }
    !in_path || !is_dot_segment(&bytes[segment..])
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_already_normal_are_their_own_key() {
        for normal in [
            "http://example.com/",
            "http://example.com:8080/a/b.tar.gz?x=1&y=%2F",
            "https://h-1.example/a;b=c/@d:e?q=/?&z=*",
            "http://127.0.0.1:18931/64k.bin",
            "http://a.b/%41%7e",
        ] {
            assert!(is_normal(normal), "{normal}");
            let parsed = url::Url::parse(normal).expect("valid");
            assert_eq!(parsed.as_str(), normal);
        }
        for other in [
            "http://example.com",
            "HTTP://example.com/",
            "http://Example.com/",
            "http://example.com:80/",
            "https://example.com:443/",
            "http://127.1/",
            "http://0x7f.0.0.1/",
            "http://a.0x1/",
            "http://a.1/",
            "http://xn--abc.example/",
            "http://user@h/",
            "http://h/a/../b",
            "http://h/a/./b",
            "http://h/%2e%2E/x",
            "http://h/a b",
            "http://h/a\\b",
            "http://h/a?b='c'",
            "http://h/a#frag",
            "http://h/%zz",
            "http://h:0080/",
            "http://h:99999/",
            "http://h..a/",
            "http://[::1]/",
        ] {
            assert!(!is_normal(other), "{other}");
        }
    }

    proptest::proptest! {
        /// Whatever the fast path takes as normal, the URL parser writes
        /// the same way.
        #[test]
        fn the_fast_path_agrees_with_the_parser(
            target in "(http|https)://[a-z0-9.:-]{1,12}/[a-zA-Z0-9%./?;=&'@~!*()+,_:-]{0,24}"
        ) {
            if is_normal(&target) {
                let parsed = url::Url::parse(&target).map(|url| url.to_string());
                proptest::prop_assert_eq!(parsed.as_deref(), Ok(target.as_str()));
            }
        }
    }
}
