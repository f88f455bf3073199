//! Proxy header rules (RFC 9110 §7.6): hop-by-hop removal including names
//! listed in `Connection`, `Via` and loop detection, `Max-Forwards`,
//! request ids, and the `Date` a response without one gets. Pure functions
//! over names and values.

/// The fixed hop-by-hop set, lowercase.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names of the headers that must not be forwarded for one message: the
/// fixed hop-by-hop set plus every name listed in its `Connection` headers
/// (RFC 9110 §7.6.1 says every one, so none is left out however long the
/// list; the head's size bounds it).
#[derive(Debug, Default)]
pub struct HopByHop {
    /// The listed names beyond the fixed set, lowercase, sorted, once each:
    /// a lookup per header line stays logarithmic in a long list.
    listed: Vec<String>,
}

impl HopByHop {
    /// Collects the names listed in the message's `Connection` header values.
    pub fn from_connection<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut listed: Vec<String> = connection_options(values)
            .filter(|option| !is_hop_by_hop(option))
            .map(str::to_ascii_lowercase)
            .collect();
        listed.sort_unstable();
        listed.dedup();
        HopByHop { listed }
    }

    /// Whether `name` must be dropped when forwarding (case-insensitive).
    pub fn contains(&self, name: &str) -> bool {
        is_hop_by_hop(name) || self.lists(name)
    }

    /// Whether `Connection` named any name beyond the fixed set.
    pub fn has_listed(&self) -> bool {
        !self.listed.is_empty()
    }

    /// Whether `Connection` named `name` (case-insensitive), beyond the
    /// fixed set.
    pub fn lists(&self, name: &str) -> bool {
        self.listed
            .binary_search_by(|listed| {
                let lower = name.bytes().map(|b| b.to_ascii_lowercase());
                listed.bytes().cmp(lower)
            })
            .is_ok()
    }
}

/// The options of a message's `Connection` header values, as sent (RFC
/// 9110 §7.6.1: `Connection = #connection-option`, a token list).
pub fn connection_options<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = &'a str> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .filter_map(|t| std::str::from_utf8(t).ok())
}

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1), plus `Proxy-Connection`,
/// `Proxy-Authorization` and `Proxy-Authenticate`, which are meant for this hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Fields that decide how a message is framed or routed.
const FRAMING_FIELDS: [&str; 7] = [
    "transfer-encoding",
    "content-length",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
];

/// Whether `name` is a framing or routing field spelled with `_` for `-`
/// (`transfer_encoding`, `Content_Length`): CGI, WSGI, PHP and many
/// frameworks map both to one variable, so forwarding it next to the real
/// field lets a client smuggle framing past this proxy. Never forwarded.
pub fn is_framing_look_alike(name: &str) -> bool {
    name.contains('_')
        && FRAMING_FIELDS.iter().any(|field| {
            field.len() == name.len()
                && field
                    .bytes()
                    .zip(name.bytes())
                    .all(|(f, n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
        })
}

/// Whether any `Via` value names `pseudonym` as a received-by entry: the
/// request has already passed through this proxy.
pub fn is_loop<'a>(via_values: impl Iterator<Item = &'a [u8]>, pseudonym: &str) -> bool {
    if pseudonym.is_empty() {
        return false;
    }
    // RFC 9110 §7.6.3: Via = #( received-protocol RWS received-by [ RWS comment ] ).
    via_values.flat_map(via_entries).any(|entry| {
        entry
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .nth(1)
            .is_some_and(|by| by.eq_ignore_ascii_case(pseudonym.as_bytes()))
    })
}

/// Splits one `Via` value at the commas that separate entries, leaving
/// commas inside a comment (RFC 9110 §5.6.5, nested, with quoted-pairs) alone.
fn via_entries(value: &[u8]) -> Vec<&[u8]> {
    let mut entries = Vec::new();
    let (mut depth, mut escaped, mut start) = (0usize, false, 0);
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if depth > 0 => escaped = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                entries.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&value[start..]);
    entries
}

/// The `Max-Forwards` value, when present and valid (RFC 9110 §7.6.2).
///
/// Only the first value counts; values too large for a `u32` saturate.
pub fn max_forwards<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<u32> {
    let value = values.next()?.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    }))
}

/// `at` as an HTTP date (RFC 9110 §5.6.7), for the `Date` a response
/// without one gets on arrival (§6.6.1).
pub fn http_date(at: std::time::SystemTime) -> http::HeaderValue {
    // Always ASCII letters, digits, spaces, commas and colons.
    http::HeaderValue::from_str(&httpdate::fmt_http_date(at))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// Whether a client-sent `X-Request-Id` is safe to reuse: 1 to 128 bytes of
/// `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(v: &'a [&'a str]) -> impl Iterator<Item = &'a [u8]> {
        v.iter().map(|s| s.as_bytes())
    }

    #[test]
    fn framing_look_alikes_are_recognised() {
        for name in [
            "transfer_encoding",
            "Content_Length",
            "content_length",
            "HOST",
            "connection",
            "_pgrade",
            "Trailer",
        ] {
            let expected = name.contains('_') && name != "_pgrade";
            assert_eq!(is_framing_look_alike(name), expected, "{name}");
        }
        for name in [
            "x_forwarded_for",
            "content-length",
            "content_type",
            "te_",
            "t_e",
        ] {
            assert!(!is_framing_look_alike(name), "{name}");
        }
    }

    #[test]
    fn fixed_hop_by_hop_headers_match_in_any_case() {
        for name in [
            "Connection",
            "KEEP-ALIVE",
            "proxy-connection",
            "Proxy-Authenticate",
            "Proxy-Authorization",
            "TE",
            "Trailer",
            "transfer-encoding",
            "Upgrade",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "Host",
            "Content-Length",
            "Trailers",
            "X-Connection",
            "",
            "tee",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn connection_listed_names_are_dropped_too() {
        let hop = HopByHop::from_connection(values(&["keep-alive, X-Secret ,, ", " x-other"]));
        assert!(hop.contains("x-secret"));
        assert!(hop.contains("X-OTHER"));
        assert!(hop.contains("Keep-Alive"));
        assert!(hop.contains("TE"));
        assert!(!hop.contains("Host"));
        assert!(!hop.contains(""));
    }

    #[test]
    fn default_hop_by_hop_is_the_fixed_set() {
        let hop = HopByHop::default();
        assert!(hop.contains("upgrade"));
        assert!(!hop.contains("x-secret"));
    }

    #[test]
    fn every_connection_option_is_honoured_however_many() {
        let many: String = (0..1000).map(|i| format!("X-{i}, ")).collect();
        let hop = HopByHop::from_connection(values(&[&many, "x-0, Keep-Alive"]));
        for i in [0, 63, 64, 999] {
            assert!(hop.contains(&format!("x-{i}")), "x-{i}");
            assert!(hop.contains(&format!("X-{i}")), "X-{i}");
        }
        assert!(!hop.contains("x-1000"));
        assert!(!hop.contains("x-"));
        assert!(hop.contains("keep-alive"));
        assert!(
            !hop.lists("keep-alive"),
            "the fixed set is not listed again"
        );
    }

    #[test]
    fn garbage_in_connection_is_harmless() {
        let hop = HopByHop::from_connection([&b"\xff\xfe, ok"[..]].into_iter());
        assert!(hop.contains("ok"));
        assert!(!hop.contains("host"));
    }

    #[test]
    fn via_with_our_pseudonym_is_a_loop() {
        let us = "fetchproxy";
        assert!(is_loop(values(&["1.1 fetchproxy"]), us));
        assert!(is_loop(values(&["1.1 FetchProxy (fetchproxy/0.1)"]), us));
        assert!(is_loop(values(&["1.0 a, HTTP/1.1 fetchproxy"]), us));
        assert!(is_loop(values(&["1.0 a", "1.1  fetchproxy  "]), us));
        assert!(is_loop(values(&["1.1\tfetchproxy"]), us));
    }

    #[test]
    fn via_without_our_pseudonym_is_not_a_loop() {
        let us = "fetchproxy";
        for via in [
            "",
            "1.1 squid",
            "fetchproxy",
            "fetchproxy 1.1",
            "1.1 fetchproxy:8080",
            "1.1 fetchproxy.example",
            "1.1 other (via fetchproxy)",
            "1.1 other (a, 1.1 fetchproxy)",
            "1.1 other (a \\) , 1.1 fetchproxy)",
            ",,, ,",
        ] {
            assert!(!is_loop(values(&[via]), us), "{via}");
        }
        assert!(!is_loop(std::iter::empty(), us));
        assert!(!is_loop(values(&["1.1 x"]), ""));
    }

    #[test]
    fn via_garbage_never_panics() {
        for via in [
            &b"((((("[..],
            b")))),1.1 fetchproxy",
            b"\\",
            b"\xff\xfe 1.1",
            b"(\\",
        ] {
            let _ = is_loop([via].into_iter(), "fetchproxy");
        }
        // An unbalanced `)` does not hide the entries that follow.
        assert!(is_loop(
            [&b") , 1.1 fetchproxy"[..]].into_iter(),
            "fetchproxy"
        ));
    }

    #[test]
    fn max_forwards_parses_the_first_value() {
        assert_eq!(max_forwards(values(&["0"])), Some(0));
        assert_eq!(max_forwards(values(&[" 10 "])), Some(10));
        assert_eq!(max_forwards(values(&["007"])), Some(7));
        assert_eq!(max_forwards(values(&["3", "5"])), Some(3));
        assert_eq!(max_forwards(values(&["4294967295"])), Some(u32::MAX));
        assert_eq!(
            max_forwards(values(&["99999999999999999999999"])),
            Some(u32::MAX)
        );
    }

    #[test]
    fn invalid_max_forwards_is_ignored() {
        for v in ["", " ", "-1", "+1", "1.5", "0x10", "1 2", "ten", "1,2"] {
            assert_eq!(max_forwards(values(&[v])), None, "{v:?}");
        }
        assert_eq!(max_forwards(std::iter::empty()), None);
        assert_eq!(max_forwards(values(&["x", "5"])), None);
    }

    #[test]
    fn request_ids_are_checked() {
        for id in ["a", "req-1", "A.b_c:d-E", &"x".repeat(128)] {
            assert!(is_valid_request_id(id.as_bytes()), "{id}");
        }
        for id in [
            &b""[..],
            &[b'x'; 129],
            b"a b",
            b"a\r\nX: y",
            b"a/b",
            b"\xc3\xa9",
            b"a\0",
        ] {
            assert!(!is_valid_request_id(id), "{id:?}");
        }
    }
}
