//! Unit tests of request-head parsing and framing, fed as byte slices.

use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 64 * 1024,
    max_url_bytes: 8 * 1024,
};

fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    parse_head(buf, &LIMITS)
}

fn complete(buf: &[u8]) -> (RequestHead, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { head, head_len }) => (head, head_len),
        other => panic!("expected a complete head for {buf:?}, got {other:?}"),
    }
}

fn head(buf: &[u8]) -> RequestHead {
    complete(buf).0
}

/// The BadRequest message, or a panic naming what came back instead.
fn bad_request(buf: &[u8]) -> String {
    match parse(buf) {
        Err(ProxyError::BadRequest(msg)) => msg,
        other => panic!("expected BadRequest for {buf:?}, got {other:?}"),
    }
}

fn framing(buf: &[u8]) -> Result<BodyFraming, ProxyError> {
    head(buf).body_framing()
}

fn framing_error(buf: &[u8]) -> String {
    match framing(buf) {
        Err(ProxyError::BadRequest(msg)) => msg,
        other => panic!("expected a framing error for {buf:?}, got {other:?}"),
    }
}

#[test]
fn absolute_form_request_parses_with_headers_in_order() {
    let buf = b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\n";
    let (head, len) = complete(buf);
    assert_eq!(len, buf.len());
    assert_eq!(head.method, "GET");
    assert_eq!(head.target, "http://example.com/a?b=1");
    assert_eq!(head.version, Version::Http11);
    let names: Vec<_> = head.headers.iter().map(Header::name).collect();
    assert_eq!(names, ["Host", "X-Two", "x-two"]);
    assert_eq!(head.header("HOST"), Some(&b"example.com"[..]));
    assert_eq!(head.header("x-TWO"), Some(&b"1"[..]));
    assert_eq!(
        head.header_values("X-Two").collect::<Vec<_>>(),
        [b"1", b"2"]
    );
    assert_eq!(head.header("missing"), None);
    assert_eq!(head.target_form(), TargetForm::Absolute);
}

#[test]
fn head_fed_one_byte_at_a_time_is_partial_until_complete() {
    let head_bytes = b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
    let mut stream = head_bytes.to_vec();
    stream.extend_from_slice(b"helloGET http://h/next HTTP/1.1\r\nHost: h\r\n\r\n");
    for end in 0..head_bytes.len() {
        match parse(&stream[..end]) {
            Ok(Parsed::Partial) => {}
            other => panic!("prefix of {end} bytes: {other:?}"),
        }
    }
    for end in head_bytes.len()..=stream.len() {
        let (head, len) = complete(&stream[..end]);
        assert_eq!(len, head_bytes.len(), "prefix of {end} bytes");
        assert_eq!(head.body_framing().ok(), Some(BodyFraming::Length(5)));
    }
}

#[test]
fn pipelined_request_starts_right_after_head_len() {
    let stream =
        b"GET http://a/ HTTP/1.1\r\nHost: h\r\n\r\nGET http://b/ HTTP/1.1\r\nHost: h\r\n\r\n";
    let (first, len) = complete(stream);
    assert_eq!(first.target, "http://a/");
    let (second, len2) = complete(&stream[len..]);
    assert_eq!(second.target, "http://b/");
    assert_eq!(len + len2, stream.len());
}

#[test]
fn leading_empty_lines_are_skipped_and_counted() {
    let buf = b"\r\n\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n";
    let (head, len) = complete(buf);
    assert_eq!(head.target, "http://h/");
    assert_eq!(len, buf.len());
    assert!(matches!(parse(b"\r\n\r\n"), Ok(Parsed::Partial)));
    // Four are taken; a fifth is refused, whatever follows.
    let four = b"\r\n\r\n\r\n\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(complete(four).1, four.len());
    for five in [
        &b"\r\n\r\n\r\n\r\n\r\n"[..],
        b"\r\n\r\n\r\n\r\n\r\nGET http://h/ HTTP/1.1\r\n",
    ] {
        assert!(parse(five).is_err(), "{five:?}");
    }
}

/// Issue 15 (2): RFC 9112 §2.2 only allows a lone LF as a line end; two
/// parsers in a chain that disagree on it are a smuggling vector.
#[test]
fn bare_lf_line_endings_are_rejected_wherever_they_are() {
    for buf in [
        &b"GET http://h/ HTTP/1.1\nHost: h\n\n"[..],
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\n",
        b"GET http://h/ HTTP/1.1\r\nHost: h\n\r\n",
        b"GET http://h/ HTTP/1.1\nHost: h\r\n\r\n",
        b"\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\r\n\r\n\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        // The sweep's case: a Content-Length after bare-LF lines was honoured.
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nX: y\nFoo: barn\nContent-Length: 5\n\nhello",
    ] {
        assert_eq!(
            bad_request(buf),
            "bare LF in request head (lines must end in CRLF)",
            "{buf:?}"
        );
    }
}

/// A bare LF is judged once the head is complete, so every prefix of such
/// a head is either still partial or gets the same answer as the whole.
#[test]
fn a_bare_lf_head_gets_one_verdict_however_it_is_split() {
    let buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX: y\nFoo: barn\n\n";
    for end in 0..buf.len() {
        match parse(&buf[..end]) {
            Ok(Parsed::Partial) | Err(ProxyError::BadRequest(_)) => {}
            other => panic!("prefix of {end} bytes: {other:?}"),
        }
    }
}

/// Issue 15 (4): RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host,
/// for more than one Host, for an invalid one, and for an empty one when
/// the target names a host.
#[test]
fn host_rules_are_enforced() {
    let cases: [(&[u8], &str); 7] = [
        (
            b"GET http://h/ HTTP/1.1\r\n\r\n",
            "missing host header (required in HTTP/1.1)",
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
            "more than one host header",
        ),
        (
            b"GET http://h/ HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            "more than one host header",
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost:\r\n\r\n",
            "empty host header with a target that names a host",
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: foo/bar\r\n\r\n",
            "invalid host header",
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h:80x\r\n\r\n",
            "invalid host header",
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: [::1\r\n\r\n",
            "invalid host header",
        ),
    ];
    for (buf, msg) in cases {
        assert_eq!(bad_request(buf), msg, "{buf:?}");
    }
}

#[test]
fn valid_hosts_and_http_1_0_without_host_pass() {
    for buf in [
        &b"GET http://h/ HTTP/1.0\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        // A Host that differs from the absolute-form authority is valid: the
        // authority wins when forwarding.
        b"GET http://h/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
    ] {
        complete(buf);
    }
}

#[test]
fn http_1_0_is_accepted_and_other_versions_are_not() {
    assert_eq!(
        head(b"GET http://h/ HTTP/1.0\r\n\r\n").version,
        Version::Http10
    );
    for version in [
        "HTTP/1.10",
        "http/1.1",
        "HTTP/1",
        "HTTP/2",
        "HTTP/a.b",
        "HTTP/1.1x",
    ] {
        let buf = format!("GET http://h/ {version}\r\n\r\n");
        let msg = bad_request(buf.as_bytes());
        assert!(msg.contains("version"), "{version}: {msg}");
    }
}

/// RFC 9110 §2.5: a later minor version of HTTP/1 is served as HTTP/1.1.
#[test]
fn a_later_http_1_minor_version_is_read_as_http_1_1() {
    let stream = b"GET http://h/a HTTP/1.2\r\nHost: h\r\nX: y\r\n\r\nGET http://h/b HTTP/1.1\r\n";
    let head_len = stream.len() - b"GET http://h/b HTTP/1.1\r\n".len();
    for end in 0..head_len {
        match parse(&stream[..end]) {
            Ok(Parsed::Partial) => {}
            other => panic!("prefix of {end} bytes: {other:?}"),
        }
    }
    let (parsed, len) = complete(stream);
    assert_eq!(len, head_len);
    assert_eq!(parsed.version, Version::Http11);
    assert_eq!(parsed.target, "http://h/a");
    assert_eq!(parsed.header("x"), Some(&b"y"[..]));
    assert!(parsed.keep_alive());
    assert_eq!(
        head(b"GET http://h/ HTTP/1.9\r\nHost: h\r\n\r\n").version,
        Version::Http11
    );
}

/// A head that fills its room while its version is still arriving is too
/// large then, not left waiting for bytes that will never be looked at.
#[test]
fn a_version_cut_by_the_head_limit_is_too_large() {
    let limits = HeadLimits {
        max_header_bytes: 64,
        max_url_bytes: 64,
    };
    let target = format!("http://h/{}", "a".repeat(44));
    let buf = format!("GET {target} HTTP/2.0\r\nHost: h\r\n\r\n");
    assert_eq!(buf.find("HTTP/2").map(|at| at + 6), Some(64));
    match parse_head(buf.as_bytes(), &limits) {
        Err(ProxyError::HeadTooLarge { limit: 64 }) => {}
        other => panic!("{other:?}"),
    }
}

/// RFC 9110 §15.6.6: a well-formed request line in another major version
/// gets 505, whichever way its bytes arrive; a malformed one stays a 400.
#[test]
fn another_major_version_is_not_supported() {
    for (version, major, minor) in [("HTTP/2.0", 2, 0), ("HTTP/0.9", 0, 9), ("HTTP/3.0", 3, 0)] {
        let buf = format!("GET http://h/ {version}\r\nHost: h\r\n\r\n");
        let buf = buf.as_bytes();
        let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or_default();
        for end in 0..=line_end {
            match parse(&buf[..end]) {
                Ok(Parsed::Partial) => {}
                other => panic!("{version}, prefix of {end} bytes: {other:?}"),
            }
        }
        for end in line_end + 1..=buf.len() {
            match parse(&buf[..end]) {
                Err(ProxyError::VersionNotSupported { major: m, minor: n }) => {
                    assert_eq!((m, n), (major, minor), "{version}");
                }
                other => panic!("{version}, prefix of {end} bytes: {other:?}"),
            }
        }
    }
    let err = match parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        Err(err) => err,
        other => panic!("the HTTP/2 preface: {other:?}"),
    };
    assert_eq!(
        (err.status(), err.proxy_status()),
        (505, "http_request_error")
    );
    assert!(
        err.to_string().contains("HTTP/2.0 is not supported"),
        "{err}"
    );
    assert!(err.closes_connection());
}

#[test]
fn target_with_nul_control_space_or_non_ascii_is_rejected() {
    for target in [
        &b"http://h/\0"[..],
        b"http://h/\x01",
        b"http://h/\x7f",
        b"http://h/\xc3\xa9",
        b"http://h/\xff\xfe",
    ] {
        let mut buf = b"GET ".to_vec();
        buf.extend_from_slice(target);
        buf.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
        let msg = bad_request(&buf);
        assert_eq!(msg, "invalid byte in request target", "{target:?}");
    }
    assert_eq!(
        bad_request(b"GET http://h/a b HTTP/1.1\r\nHost: h\r\n\r\n"),
        "malformed request line"
    );
}

#[test]
fn target_error_is_found_before_the_line_ends() {
    assert_eq!(
        bad_request(b"GET http://h/\0"),
        "invalid byte in request target"
    );
}

#[test]
fn malformed_request_lines_are_rejected() {
    for buf in [
        &b"GET  http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET http://h/\r\n\r\n",
        b" GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"G(T http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://h/ HTTP/1.1 extra\r\n\r\n",
    ] {
        bad_request(buf);
    }
}

#[test]
fn invalid_utf8_in_a_header_value_is_kept_as_bytes() {
    let head = head(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-Bin: a\xff\xfeb\r\n\r\n");
    assert_eq!(head.header("x-bin"), Some(&b"a\xff\xfeb"[..]));
}

#[test]
fn header_values_lose_surrounding_whitespace_only() {
    let head = head(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-A: \t a  b \t\r\nX-Empty:\r\n\r\n");
    assert_eq!(head.header("x-a"), Some(&b"a  b"[..]));
    assert_eq!(head.header("x-empty"), Some(&b""[..]));
}

#[test]
fn nul_and_control_bytes_in_header_values_are_rejected() {
    for value in [&b"a\0b"[..], b"\0", b"a\x01b", b"a\x7fb", b"a\rb"] {
        let mut buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-V: ".to_vec();
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            bad_request(&buf),
            "invalid byte in header value",
            "{value:?}"
        );
    }
}

#[test]
fn obs_fold_is_rejected() {
    let msg = bad_request(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-A: a\r\n  folded\r\n\r\n");
    assert!(msg.contains("obs-fold"), "{msg}");
    let msg = bad_request(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tfolded\r\n\r\n");
    assert!(msg.contains("obs-fold"), "{msg}");
    // Whitespace before the first header line is the same smuggling trick.
    let msg = bad_request(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n Host: h\r\n\r\n");
    assert!(msg.contains("obs-fold"), "{msg}");
}

#[test]
fn whitespace_before_colon_is_rejected() {
    for buf in [
        &b"GET http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\n"[..],
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n",
    ] {
        assert_eq!(bad_request(buf), "whitespace before colon in header line");
    }
}

#[test]
fn header_line_without_a_colon_is_rejected() {
    assert_eq!(
        bad_request(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nHost h\r\n\r\n"),
        "invalid byte in header name"
    );
    assert_eq!(
        bad_request(b"GET http://h/ HTTP/1.1\r\nHost: h\r\nHost\r\n\r\n"),
        "header line without a colon"
    );
}

#[test]
fn invalid_header_names_are_rejected() {
    for name in [&b"X(A)"[..], b"X\0A", b"X\xc3\xa9", b"X/A", b""] {
        let mut buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n".to_vec();
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": v\r\n\r\n");
        let msg = bad_request(&buf);
        assert!(msg.contains("header name"), "{name:?}: {msg}");
    }
}

#[test]
fn header_names_keep_their_case() {
    let head = head(b"GET http://h/ HTTP/1.1\r\nhOsT: h\r\nX-MiXeD-CaSe: v\r\n\r\n");
    assert_eq!(head.headers[0].name(), "hOsT");
    assert_eq!(head.headers[1].name(), "X-MiXeD-CaSe");
}

#[test]
fn ten_thousand_headers_are_too_many() {
    let mut buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..10_000 {
        buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    let huge = HeadLimits {
        max_header_bytes: 10 * 1024 * 1024,
        max_url_bytes: 8192,
    };
    assert!(matches!(
        parse_head(&buf, &huge),
        Err(ProxyError::TooManyHeaderLines { limit: 128 })
    ));
    assert!(matches!(
        parse(&buf),
        Err(ProxyError::TooManyHeaderLines { limit: 128 })
    ));
}

#[test]
fn partial_head_that_fills_the_limit_is_too_large() {
    let limits = HeadLimits {
        max_header_bytes: 100,
        max_url_bytes: 50,
    };
    let mut buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-Long: ".to_vec();
    buf.resize(99, b'a');
    assert!(matches!(parse_head(&buf, &limits), Ok(Parsed::Partial)));
    buf.push(b'a');
    assert!(matches!(
        parse_head(&buf, &limits),
        Err(ProxyError::HeadTooLarge { limit: 100 })
    ));
}

#[test]
fn complete_head_over_the_limit_is_too_large_and_at_the_limit_is_fine() {
    let buf = b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-A: 0123456789\r\n\r\n";
    let exact = HeadLimits {
        max_header_bytes: buf.len(),
        max_url_bytes: 100,
    };
    // A head of exactly the limit arrives together with body bytes.
    let mut with_body = buf.to_vec();
    with_body.extend_from_slice(b"body");
    assert!(matches!(
        parse_head(&with_body, &exact),
        Ok(Parsed::Complete { head_len, .. }) if head_len == buf.len()
    ));
    let smaller = HeadLimits {
        max_header_bytes: buf.len() - 1,
        ..exact
    };
    assert!(matches!(
        parse_head(buf, &smaller),
        Err(ProxyError::HeadTooLarge { .. })
    ));
}

#[test]
fn overlong_target_is_refused_before_the_head_completes() {
    let limits = HeadLimits {
        max_header_bytes: 1 << 20,
        max_url_bytes: 100,
    };
    let mut buf = b"GET http://h/".to_vec();
    buf.resize(100 + 64 + 1, b'a');
    assert!(matches!(
        parse_head(&buf, &limits),
        Err(ProxyError::UrlTooLong { limit: 100 })
    ));
    // Fed a byte at a time: Partial while short, then 414, never 431.
    let mut stream = b"GET http://h/".to_vec();
    stream.resize(10_000, b'a');
    let mut refused = false;
    for end in 0..stream.len() {
        match parse_head(&stream[..end], &limits) {
            Ok(Parsed::Partial) => assert!(!refused),
            Err(ProxyError::UrlTooLong { .. }) => refused = true,
            other => panic!("prefix of {end} bytes: {other:?}"),
        }
    }
    assert!(refused);
}

/// Found by the `parse_head` fuzz target: a malformed request line was a
/// 400 while short and a 414 once past the URL limit's slack.
#[test]
fn malformed_long_request_line_is_a_bad_request_however_it_arrives() {
    let limits = HeadLimits {
        max_header_bytes: 1 << 20,
        max_url_bytes: 1,
    };
    let mut buf = vec![0u8; 50];
    buf.extend_from_slice(b"\xff//h/\0 HTTP/1.1\0\x0e1\r\nX-A: a\r\n\r\n\xaf\r\n");
    for end in 1..=buf.len() {
        assert!(
            matches!(
                parse_head(&buf[..end], &limits),
                Err(ProxyError::BadRequest(_))
            ),
            "prefix of {end} bytes"
        );
    }
}

/// Found by the `parse_head` fuzz target: a target over the limit was a
/// 414 once its line was through but a 400 when a bad header had arrived
/// too.
#[test]
fn long_target_is_too_long_whatever_follows_it() {
    let limits = HeadLimits {
        max_header_bytes: 32,
        max_url_bytes: 1,
    };
    let buf = b"T t: t";
    for end in 4..=buf.len() {
        assert!(
            matches!(
                parse_head(&buf[..end], &limits),
                Err(ProxyError::UrlTooLong { limit: 1 })
            ),
            "prefix of {end} bytes"
        );
    }
    let limits = HeadLimits {
        max_header_bytes: 48,
        max_url_bytes: 17,
    };
    let buf =
        b"GET http://exam~le.test/a?b=c HTTP/1.1\r\nHost: example.test\r\nUser-Agen\xc8: t\r\n\r\n";
    assert!(matches!(
        parse_head(buf, &limits),
        Err(ProxyError::UrlTooLong { limit: 17 })
    ));
}

/// Found by the `parse_head` fuzz target: a space before the method was
/// a 400 alone but a 414 once a target over the limit followed it.
#[test]
fn line_starting_with_a_space_is_a_bad_request_however_long() {
    let limits = HeadLimits {
        max_header_bytes: 16,
        max_url_bytes: 1,
    };
    let buf = b" /`";
    for end in 1..=buf.len() {
        assert!(
            matches!(
                parse_head(&buf[..end], &limits),
                Err(ProxyError::BadRequest(_))
            ),
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn target_just_over_the_limit_is_refused_once_the_line_is_complete() {
    let limits = HeadLimits {
        max_header_bytes: 1 << 20,
        max_url_bytes: 100,
    };
    let ok = format!(
        "GET http://h/{} HTTP/1.1\r\nHost: h\r\n",
        "a".repeat(100 - 9)
    );
    assert!(matches!(
        parse_head(ok.as_bytes(), &limits),
        Ok(Parsed::Partial)
    ));
    assert!(matches!(
        parse_head(format!("{ok}\r\n").as_bytes(), &limits),
        Ok(Parsed::Complete { .. })
    ));
    let long = format!(
        "GET http://h/{} HTTP/1.1\r\nHost: h\r\n",
        "a".repeat(101 - 9)
    );
    assert!(matches!(
        parse_head(long.as_bytes(), &limits),
        Err(ProxyError::UrlTooLong { .. })
    ));
    assert!(matches!(
        parse_head(format!("{long}\r\n").as_bytes(), &limits),
        Err(ProxyError::UrlTooLong { .. })
    ));
}

#[test]
fn no_length_or_encoding_means_no_body() {
    assert_eq!(
        framing(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n").ok(),
        Some(BodyFraming::Empty)
    );
}

#[test]
fn content_length_is_parsed_and_zero_means_empty() {
    let cases: [(&[u8], BodyFraming); 6] = [
        (b"Content-Length: 42", BodyFraming::Length(42)),
        (b"Content-Length: 0", BodyFraming::Empty),
        (b"content-length:  7 ", BodyFraming::Length(7)),
        (b"Content-Length: 42, 42", BodyFraming::Length(42)),
        (
            b"Content-Length: 5\r\nContent-Length: 5",
            BodyFraming::Length(5),
        ),
        (
            b"Content-Length: 18446744073709551615",
            BodyFraming::Length(u64::MAX),
        ),
    ];
    for (line, expected) in cases {
        let mut buf = b"POST http://h/ HTTP/1.1\r\nHost: h\r\n".to_vec();
        buf.extend_from_slice(line);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(framing(&buf).ok(), Some(expected), "{line:?}");
    }
}

#[test]
fn smuggling_forms_of_content_length_are_rejected() {
    for line in [
        &b"Content-Length: 5\r\nContent-Length: 6"[..],
        b"Content-Length: 5, 6",
        b"Content-Length: +5",
        b"Content-Length: -5",
        b"Content-Length: 5 5",
        b"Content-Length: 0x10",
        b"Content-Length: 1e3",
        b"Content-Length:",
        b"Content-Length: 5,",
        b"Content-Length: 18446744073709551616",
        b"Content-Length: 99999999999999999999999",
    ] {
        let mut buf = b"POST http://h/ HTTP/1.1\r\nHost: h\r\n".to_vec();
        buf.extend_from_slice(line);
        buf.extend_from_slice(b"\r\n\r\n");
        framing_error(&buf);
    }
}

#[test]
fn chunked_is_accepted_in_any_case() {
    for value in [
        "chunked",
        "Chunked",
        "CHUNKED",
        " chunked ",
        "chunked,",
        ", chunked",
    ] {
        let buf =
            format!("POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(
            framing(buf.as_bytes()).ok(),
            Some(BodyFraming::Chunked),
            "{value}"
        );
    }
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    let msg = framing_error(
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(
        msg.contains("content-length and transfer-encoding"),
        "{msg}"
    );
    framing_error(
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    );
    framing_error(
        b"POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
    );
}

#[test]
fn codings_other_than_a_single_chunked_are_rejected() {
    for lines in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked-false",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: identity",
        "Transfer-Encoding:",
        "Transfer-Encoding: ,",
    ] {
        let buf = format!("POST http://h/ HTTP/1.1\r\nHost: h\r\n{lines}\r\n\r\n");
        framing_error(buf.as_bytes());
    }
}

#[test]
fn transfer_encoding_in_http_1_0_is_rejected() {
    let msg = framing_error(b"POST http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(msg.contains("http/1.0"), "{msg}");
}

#[test]
fn keep_alive_follows_version_and_connection_tokens() {
    let cases: [(&[u8], bool); 8] = [
        (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", true),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n",
            false,
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n",
            true,
        ),
        (b"GET http://h/ HTTP/1.0\r\n\r\n", false),
        (
            b"GET http://h/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            true,
        ),
        (
            b"GET http://h/ HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ];
    for (buf, expected) in cases {
        assert_eq!(
            head(buf).keep_alive(),
            expected,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn expect_100_continue_is_recognised_in_http_1_1_only() {
    assert!(
        head(b"PUT http://h/ HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n\r\n")
            .expects_continue()
    );
    assert!(!head(b"PUT http://h/ HTTP/1.1\r\nHost: h\r\n\r\n").expects_continue());
    assert!(
        !head(b"PUT http://h/ HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n").expects_continue()
    );
    assert!(!head(b"PUT http://h/ HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
}

#[test]
fn target_forms_are_told_apart() {
    let cases: [(&[u8], TargetForm); 5] = [
        (
            b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
            TargetForm::Origin,
        ),
        (
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            TargetForm::Absolute,
        ),
        (
            b"GET https://h:8443/x HTTP/1.1\r\nHost: h\r\n\r\n",
            TargetForm::Absolute,
        ),
        (
            b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            TargetForm::Authority,
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            TargetForm::Asterisk,
        ),
    ];
    for (buf, form) in cases {
        assert_eq!(head(buf).target_form(), form);
    }
}

#[test]
fn garbage_never_panics() {
    let samples: [&[u8]; 8] = [
        b"",
        b"\r",
        b"\r\r\n",
        b"\n\n\n",
        b"\xff\xff\xff\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\n:\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r",
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\nA: b\r\r\n\r\n",
    ];
    for buf in samples {
        for end in 0..=buf.len() {
            let _ = parse(&buf[..end]);
        }
    }
}

#[test]
fn more_header_lines_than_are_parsed_are_named_as_such() {
    let mut text = String::from("GET http://h/ HTTP/1.1\r\nHost: h\r\n");
    for n in 0..200 {
        text.push_str(&format!("X-{n}: v\r\n"));
    }
    text.push_str("\r\n");
    let err = parse(text.as_bytes()).expect_err("too many lines");
    assert!(
        matches!(err, ProxyError::TooManyHeaderLines { limit: 128 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "request head with more than 128 header lines"
    );
    assert_eq!(
        (err.status(), err.proxy_status()),
        (431, "http_request_error")
    );
}
