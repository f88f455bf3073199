//! File names for fetched URLs: URL + Content-Type (+ Content-Disposition) →
//! a safe name. Pure: no file system, no collisions (those are `save.rs`'s).
//!
//! A name is the host (and port when not the default), a slug of the path, a
//! short hash of the query when there is one, and an extension from the
//! Content-Type: `http://example.com/docs/intro?page=2` with `text/html` gives
//! `example.com_docs_intro_<q>.html`, where `<q>` is the first 3 bytes of
//! SHA-256 over the query string as sent (without the `?`), in lowercase hex.
//! Names use only `[A-Za-z0-9._-]`, are at most 120 bytes, never start with
//! `.` or `-`, never contain `..`, and are never a Windows reserved device name.

use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use url::Url;

/// The longest file name produced, in bytes.
pub const MAX_NAME_BYTES: usize = 120;

/// Extension used when neither the Content-Type nor the path tells one.
const FALLBACK_EXT: &str = "bin";

/// Device names Windows reserves whatever the extension (`nul.txt` too).
const RESERVED_STEMS: &[&str] = &[
    "con", "prn", "aux", "nul", "com0", "com1", "com2", "com3", "com4", "com5", "com6", "com7",
    "com8", "com9", "lpt0", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// The file name for `url` answered with these headers.
///
/// A `Content-Disposition` filename is used when it survives sanitising;
/// otherwise the name is built from the URL. Deterministic: the same inputs
/// always give the same name.
pub fn file_name_for(url: &Url, content_type: Option<&str>, disposition: Option<&str>) -> String {
    let type_ext = content_type.and_then(extension_for_type);
    if let Some(name) = disposition.and_then(disposition_file_name) {
        let (stem, ext) = split_extension(&name);
        let ext = match (ext, type_ext) {
            (Some(ext), _) => ext.to_string(),
            (None, Some(ext)) => ext.to_string(),
            (None, None) => FALLBACK_EXT.to_string(),
        };
        return assemble(stem, &ext, url);
    }

    let mut stem = host_part(url);
    let slug = path_slug(url.path());
    let (path_stem, path_ext) = split_extension(&slug);
    // Keep the path's own extension in the stem unless it is the one the type gives.
    let ext = match (type_ext, path_ext) {
        // A two-part extension stays whole (`tar.gz`).
        (Some(ext), Some(own)) if same_extension(ext, own) && own.contains('.') => own.to_string(),
        // A name that says more than the type: `.tgz` served as gzip, a
        // compressed tar served as `application/x-tar` (with the compression
        // as its Content-Encoding, as Apache does).
        (Some(ext), Some(own)) if says_more(ext, own) => own.to_ascii_lowercase(),
        (Some(ext), Some(own)) if same_extension(ext, own) => ext.to_string(),
        (Some(ext), Some(own)) => {
            push_part(&mut stem, &format!("{path_stem}.{own}"));
            return finish_with_query(stem, ext, url);
        }
        (Some(ext), None) => ext.to_string(),
        (None, Some(own)) => own.to_string(),
        (None, None) => FALLBACK_EXT.to_string(),
    };
    push_part(&mut stem, path_stem);
    finish_with_query(stem, &ext, url)
}

/// What URLs whose names may collide have in common before their answers
/// are known: the name the URL alone gives, without its extension,
/// lowercased. `/a_b`, `/a/b`, `/a%5Fb` and `/a_b.html` share one; a long
/// path cut to the name's limit keeps its own (the cut name ends in a hash
/// of the URL). Within a batch, such URLs take their suffixes in the order
/// of the input (`Job::rank`), not in the order their downloads end.
pub fn collision_key(url: &Url) -> String {
    let name = file_name_for(url, None, None);
    split_extension(&name).0.to_ascii_lowercase()
}

/// `name` with a collision suffix `-n` before the extension, still within
/// `MAX_NAME_BYTES` (the stem is shortened to make room).
pub fn with_suffix(name: &str, n: u32) -> String {
    let (stem, ext) = match split_extension(name) {
        (stem, Some(ext)) if ext.contains('.') => (stem, Some(ext)),
        _ => match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem, Some(ext)),
            _ => (name, None),
        },
    };
    let suffix = format!("-{n}");
    let ext_len = ext.map_or(0, |e| e.len() + 1);
    let room = MAX_NAME_BYTES.saturating_sub(suffix.len() + ext_len);
    let stem = &stem[..stem.len().min(room)];
    match ext {
        Some(ext) => format!("{stem}{suffix}.{ext}"),
        None => format!("{stem}{suffix}"),
    }
}

/// True when `name` is one this module could produce: the safe alphabet,
/// within length, not hidden, no `..`, not a reserved device name.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(is_safe_byte)
        && !name.starts_with(['.', '-'])
        && !name.ends_with('.')
        && !name.contains("..")
        && !is_reserved_stem(name)
}

/// The short query hash: first 3 bytes of SHA-256 of `query`, as hex.
pub fn query_hash(query: &str) -> String {
    short_hash(query.as_bytes())
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

fn finish_with_query(mut stem: String, ext: &str, url: &Url) -> String {
    if let Some(query) = url.query() {
        push_part(&mut stem, &query_hash(query));
    }
    assemble(&stem, ext, url)
}

/// Joins stem and extension, keeping the whole within `MAX_NAME_BYTES`: a
/// stem that must be cut gets a hash of the full URL so cut names stay apart.
fn assemble(stem: &str, ext: &str, url: &Url) -> String {
    let mut stem = sanitize(stem);
    let mut ext = sanitize(ext);
    ext.truncate(16);
    let ext = ext.trim_matches(['.', '_', '-']).to_string();
    if stem.is_empty() {
        stem = "download".to_string();
    }
    if is_reserved_stem(&stem) {
        // `con.html` → `con_.html`: Windows reserves the part before the first dot.
        let cut = stem.find('.').unwrap_or(stem.len());
        stem.insert(cut, '_');
    }
    let ext_len = if ext.is_empty() { 0 } else { ext.len() + 1 };
    if stem.len() + ext_len > MAX_NAME_BYTES {
        let keep = MAX_NAME_BYTES - ext_len - 7;
        stem.truncate(keep);
        let stem_trimmed = stem.trim_end_matches(['.', '_', '-']).len();
        stem.truncate(stem_trimmed);
        stem.push('_');
        stem.push_str(&short_hash(url.as_str().as_bytes()));
    }
    if ext.is_empty() {
        stem
    } else {
        format!("{stem}.{ext}")
    }
}

fn host_part(url: &Url) -> String {
    let host = match url.host() {
        // `[::1]` → `ipv6_--1`: colons and brackets are not in the alphabet.
        Some(url::Host::Ipv6(addr)) => format!("ipv6_{}", addr.to_string().replace(':', "-")),
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(port) => format!("{host}_{port}"),
        None => host,
    }
}

/// The decoded path, segments joined by `_`, unsafe characters replaced.
fn path_slug(path: &str) -> String {
    let decoded = percent_decode(path);
    let joined: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    sanitize(&joined.join("_"))
}

fn push_part(stem: &mut String, part: &str) {
    let part = sanitize(part);
    if part.is_empty() {
        return;
    }
    if !stem.is_empty() {
        stem.push('_');
    }
    stem.push_str(&part);
}

/// Replaces everything outside `[A-Za-z0-9._-]` with `_`, collapses runs of
/// `_` and of `.`, and trims separators from both ends (no hidden names, no
/// leading `-` that a shell would read as an option).
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let ch = if ch.is_ascii() && is_safe_byte(ch as u8) {
            ch
        } else {
            '_'
        };
        if (ch == '_' || ch == '.') && out.ends_with(ch) {
            continue;
        }
        out.push(ch);
    }
    out.trim_matches(['.', '_', '-']).to_string()
}

fn is_safe_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn is_reserved_stem(name: &str) -> bool {
    let first = name.split('.').next().unwrap_or(name);
    RESERVED_STEMS.iter().any(|r| first.eq_ignore_ascii_case(r))
}

/// Compressions that follow `.tar` in a compressed archive's name
/// (`a.tar.gz`): the two make one extension.
const TAR_COMPRESSIONS: &[&str] = &["gz", "xz", "bz2", "zst", "lz", "lz4", "lzma", "z"];

/// Splits a trailing extension of 1–8 alphanumeric characters off `name`;
/// a compressed tar archive's is two (`a.tar.gz` gives `a` and `tar.gz`).
fn split_extension(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && (1..=8).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            let compressed_tar = TAR_COMPRESSIONS.iter().any(|c| c.eq_ignore_ascii_case(ext))
                && stem.len() > 4
                && stem
                    .get(stem.len() - 4..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(".tar"));
            if compressed_tar {
                let cut = stem.len() - 4;
                (&name[..cut], Some(&name[cut + 1..]))
            } else {
                (stem, Some(ext))
            }
        }
        _ => (name, None),
    }
}

/// Whether the path's own extension `own` is the one the type gives
/// (`wanted`), or another spelling of it; a compressed tar archive's is the
/// type's when its compression is (`tar.gz` for `application/gzip`).
fn same_extension(wanted: &str, own: &str) -> bool {
    let own = own.to_ascii_lowercase();
    let last = own.rsplit('.').next().unwrap_or(&own);
    last == wanted
        || matches!(
            (wanted, last),
            ("html", "htm") | ("jpg", "jpeg") | ("txt", "text") | ("js", "mjs")
        )
}

/// Whether the path's own extension `own` names what the type's (`wanted`)
/// does, and more: `tgz` for `gz`, `tar.gz` or `tgz` for `tar`.
fn says_more(wanted: &str, own: &str) -> bool {
    let own = own.to_ascii_lowercase();
    match wanted {
        "gz" => own == "tgz",
        "tar" => own.starts_with("tar.") || own == "tgz",
        _ => false,
    }
}

/// The extension for a Content-Type (`text/html; charset=utf-8` → `html`);
/// `None` for types that say nothing about the content.
pub fn extension_for_type(content_type: &str) -> Option<&'static str> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    Some(match essence.as_str() {
        "text/html" => "html",
        "application/xhtml+xml" => "xhtml",
        "text/plain" => "txt",
        "text/css" => "css",
        "text/csv" => "csv",
        "text/markdown" => "md",
        "text/javascript" | "application/javascript" | "application/x-javascript" => "js",
        "application/json" | "text/json" => "json",
        "application/ld+json" => "jsonld",
        "application/xml" | "text/xml" => "xml",
        "application/rss+xml" => "rss",
        "application/atom+xml" => "atom",
        "application/pdf" => "pdf",
        "application/zip" => "zip",
        "application/gzip" | "application/x-gzip" => "gz",
        "application/x-tar" => "tar",
        "application/wasm" => "wasm",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        "image/x-icon" | "image/vnd.microsoft.icon" => "ico",
        "image/avif" => "avif",
        "audio/mpeg" => "mp3",
        "audio/ogg" => "ogg",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "font/woff" => "woff",
        "font/woff2" => "woff2",
        _ => return None,
    })
}

/// The file name a `Content-Disposition` header offers, sanitised; `None`
/// when there is none or nothing safe is left of it. `filename*` (RFC 6266
/// §4.3, RFC 8187 encoding) wins over `filename`.
fn disposition_file_name(header: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in split_params(header).into_iter().skip(1) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "filename" => plain = Some(unquote(value)),
            "filename*" => {
                // charset'language'percent-encoded
                let encoded = value.splitn(3, '\'').nth(2).unwrap_or("");
                extended = Some(percent_decode(encoded));
            }
            _ => {}
        }
    }
    let raw = extended.or(plain)?;
    // Only the last path component: `../../etc/passwd` → `passwd`.
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let name = sanitize(base);
    let (stem, _) = split_extension(&name);
    if stem.is_empty() || stem.bytes().all(|b| !b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(name)
}

/// Splits header parameters on `;` outside quoted strings.
fn split_params(header: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for ch in header.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(ch);
        }
    }
    parts
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut escaped = false;
            for ch in inner.chars() {
                if ch == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(ch);
            }
            out
        }
        None => value.to_string(),
    }
}

/// Decodes `%XX` escapes; invalid UTF-8 becomes U+FFFD (then `_` when sanitised).
fn percent_decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn name(url: &str, ct: Option<&str>) -> String {
        file_name_for(&Url::parse(url).expect("test URL"), ct, None)
    }

    #[test]
    fn design_example_has_host_slug_query_hash_and_extension() {
        let got = name("http://example.com/docs/intro?page=2", Some("text/html"));
        assert_eq!(
            got,
            format!("example.com_docs_intro_{}.html", query_hash("page=2"))
        );
        assert_eq!(query_hash("page=2").len(), 6);
    }

    #[test]
    fn root_path_is_the_host_alone() {
        assert_eq!(
            name("http://example.com/", Some("text/html")),
            "example.com.html"
        );
        assert_eq!(
            name("https://example.com", Some("text/html; charset=utf-8")),
            "example.com.html"
        );
    }

    #[test]
    fn port_is_part_of_the_name_unless_default() {
        assert_eq!(
            name("http://example.com:8080/a", Some("text/plain")),
            "example.com_8080_a.txt"
        );
        assert_eq!(
            name("http://example.com:80/a", Some("text/plain")),
            "example.com_a.txt"
        );
    }

    #[test]
    fn extension_comes_from_type_then_path_then_fallback() {
        assert_eq!(
            name("http://h.org/report.pdf", Some("application/pdf")),
            "h.org_report.pdf"
        );
        assert_eq!(
            name("http://h.org/index.htm", Some("text/html")),
            "h.org_index.html"
        );
        assert_eq!(
            name("http://h.org/page.php", Some("text/html")),
            "h.org_page.php.html"
        );
        assert_eq!(
            name("http://h.org/a.tar.gz", Some("application/octet-stream")),
            "h.org_a.tar.gz"
        );
        assert_eq!(name("http://h.org/data", None), "h.org_data.bin");
    }

    #[test]
    fn unicode_and_escapes_become_underscores() {
        assert_eq!(
            name("http://h.org/caf%C3%A9/na%20me", Some("text/plain")),
            "h.org_caf_na_me.txt"
        );
        assert_eq!(
            name("http://bücher.example/x", Some("text/plain")),
            "xn--bcher-kva.example_x.txt"
        );
    }

    #[test]
    fn an_escape_at_the_end_of_the_path_is_decoded() {
        assert_eq!(
            name("http://h.org/file%41", Some("text/plain")),
            "h.org_fileA.txt"
        );
        assert_eq!(
            name("http://h.org/bad%4", Some("text/plain")),
            "h.org_bad_4.txt"
        );
    }

    #[test]
    fn ipv6_host_is_readable() {
        assert_eq!(
            name("http://[::1]:8080/", Some("text/html")),
            "ipv6_--1_8080.html"
        );
    }

    #[test]
    fn reserved_device_names_are_changed() {
        assert_eq!(name("http://con/", Some("text/html")), "con_.html");
        let cd = Some("attachment; filename=\"nul.txt\"");
        let url = Url::parse("http://h.org/x").expect("url");
        assert_eq!(file_name_for(&url, None, cd), "nul_.txt");
    }

    #[test]
    fn content_disposition_is_preferred_and_sanitised() {
        let url = Url::parse("http://h.org/download?id=7").expect("url");
        let cases = [
            (
                "attachment; filename=\"report 2024.pdf\"",
                "report_2024.pdf",
            ),
            ("attachment; filename=../../etc/passwd", "passwd.txt"),
            ("attachment; filename=\".bashrc\"", "bashrc.txt"),
            (
                "attachment; filename=\"a.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
                "r_sum.txt",
            ),
            ("inline; filename=\"..\"", "h.org_download_"),
        ];
        for (header, want) in cases {
            let got = file_name_for(&url, Some("text/plain"), Some(header));
            if want.ends_with('_') {
                assert!(got.starts_with(want), "{header}: {got}");
            } else {
                assert_eq!(got, want, "{header}");
            }
        }
    }

    #[test]
    fn long_paths_are_cut_with_a_hash() {
        let long = format!("http://h.org/{}", "a".repeat(500));
        let other = format!("http://h.org/{}b", "a".repeat(500));
        let (a, b) = (
            name(&long, Some("text/html")),
            name(&other, Some("text/html")),
        );
        assert!(a.len() <= MAX_NAME_BYTES && a.ends_with(".html"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn a_compressed_tar_archive_keeps_its_two_part_extension() {
        for (url, ct, want) in [
            (
                "http://h/pkg/b.tar.gz?version=2",
                None,
                "h_pkg_b_8f0ba7.tar.gz",
            ),
            (
                "http://h/pkg/b.tar.gz",
                Some("application/gzip"),
                "h_pkg_b.tar.gz",
            ),
            (
                "http://h/pkg/b.tar.gz",
                Some("application/octet-stream"),
                "h_pkg_b.tar.gz",
            ),
            (
                "http://h/pkg/b.tar.xz?v=1",
                Some("application/x-xz"),
                "h_pkg_b_a798de.tar.xz",
            ),
            ("http://h/pkg/b.tar.zst", None, "h_pkg_b.tar.zst"),
            // Not an archive's compression: `.tar` stays in the stem.
            ("http://h/pkg/b.tar.json", None, "h_pkg_b.tar.json"),
            ("http://h/pkg/b.gz?x=1", None, "h_pkg_b_1f206b.gz"),
            // The name says more than the type.
            (
                "http://h/pkg/b.tar.gz?v=1",
                Some("application/x-tar"),
                "h_pkg_b_a798de.tar.gz",
            ),
            (
                "http://h/pkg/b.tgz",
                Some("application/x-gzip"),
                "h_pkg_b.tgz",
            ),
            (
                "http://h/pkg/b.tgz",
                Some("application/x-tar"),
                "h_pkg_b.tgz",
            ),
            (
                "http://h/pkg/b.TGZ?v=1",
                Some("application/gzip"),
                "h_pkg_b_a798de.tgz",
            ),
            // A type that says otherwise still wins.
            ("http://h/pkg/b.tgz", Some("text/html"), "h_pkg_b.tgz.html"),
        ] {
            assert_eq!(name(url, ct), want, "{url}");
        }
    }

    #[test]
    fn urls_that_would_share_a_name_share_a_collision_key() {
        let key = |u: &str| collision_key(&Url::parse(u).expect("url"));
        assert_eq!(key("http://h/a_b"), key("http://h/a/b"));
        assert_eq!(key("http://h/a_b"), key("http://H/A%5Fb"));
        assert_eq!(key("http://h/pkg/a.tar.gz"), key("http://h/pkg/%61.tar.gz"));
        assert_eq!(key("http://h/a"), key("http://h/a.html"));
        assert_ne!(key("http://h/a?x=1"), key("http://h/a?x=2"));
        assert_ne!(key("http://h/a"), key("http://g/a"));
        // Cut to the limit, two long paths alike keep apart.
        let long = "x".repeat(200);
        assert_ne!(
            key(&format!("http://h/{long}/1")),
            key(&format!("http://h/{long}/2"))
        );
    }

    #[test]
    fn suffix_goes_before_the_extension_within_the_limit() {
        assert_eq!(with_suffix("example.com.html", 2), "example.com-2.html");
        assert_eq!(with_suffix("h_pkg_a.tar.gz", 2), "h_pkg_a-2.tar.gz");
        assert_eq!(with_suffix("h_pkg_a.TAR.XZ", 3), "h_pkg_a-3.TAR.XZ");
        assert_eq!(with_suffix("h_a.tar", 2), "h_a-2.tar");
        assert_eq!(with_suffix("noext", 3), "noext-3");
        let long = format!("{}.html", "a".repeat(115));
        let got = with_suffix(&long, 12);
        assert!(
            got.len() <= MAX_NAME_BYTES && got.ends_with("-12.html"),
            "{got}"
        );
    }

    fn arbitrary_url() -> impl Strategy<Value = Url> {
        let host = prop_oneof![
            "[a-z]{1,12}(\\.[a-z]{2,5})?",
            Just("con".to_string()),
            Just("bücher.example".to_string()),
            Just("127.0.0.1".to_string()),
            Just("[::1]".to_string()),
        ];
        let segment = prop_oneof![
            any::<String>(),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("nul.txt".to_string()),
            Just(".hidden".to_string()),
            "[a-zA-Z0-9._~-]{0,300}",
        ];
        let path = proptest::collection::vec(segment, 0..5);
        let query = proptest::option::of(any::<String>());
        let port = proptest::option::of(1u16..);
        (host, port, path, query).prop_filter_map("parseable", |(host, port, path, query)| {
            let mut text = format!("http://{host}");
            if let Some(port) = port {
                text.push_str(&format!(":{port}"));
            }
            text.push('/');
            text.push_str(&path.join("/"));
            let mut url = Url::parse(&text).ok()?;
            url.set_query(query.as_deref());
            Some(url)
        })
    }

    fn arbitrary_type() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            Just("text/html".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            Just("image/png".to_string()),
            any::<String>(),
        ])
    }

    fn arbitrary_disposition() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            any::<String>().prop_map(|s| format!("attachment; filename=\"{s}\"")),
            any::<String>().prop_map(|s| format!("attachment; filename*=UTF-8''{s}")),
            Just("attachment; filename=\"CON\"".to_string()),
            Just("attachment; filename=\"../..\"".to_string()),
        ])
    }

    proptest! {
        #[test]
        fn every_name_is_safe_and_within_length(
            url in arbitrary_url(), ct in arbitrary_type(), cd in arbitrary_disposition()
        ) {
            let got = file_name_for(&url, ct.as_deref(), cd.as_deref());
            prop_assert!(is_safe_name(&got), "{url} -> {got:?}");
            for n in [2, 3, 99, 12345] {
                let suffixed = with_suffix(&got, n);
                prop_assert!(is_safe_name(&suffixed), "{got} -{n} -> {suffixed:?}");
            }
        }

        #[test]
        fn naming_is_deterministic(url in arbitrary_url(), ct in arbitrary_type()) {
            prop_assert_eq!(
                file_name_for(&url, ct.as_deref(), None),
                file_name_for(&url.clone(), ct.as_deref(), None)
            );
        }

        #[test]
        fn distinct_query_strings_give_distinct_names_mostly(a in any::<String>(), b in any::<String>()) {
            let mut ua = Url::parse("http://h.org/p").expect("url");
            let mut ub = ua.clone();
            ua.set_query(Some(&a));
            ub.set_query(Some(&b));
            if ua != ub && query_hash(ua.query().unwrap_or("")) != query_hash(ub.query().unwrap_or("")) {
                prop_assert_ne!(file_name_for(&ua, None, None), file_name_for(&ub, None, None));
            }
        }

        #[test]
        fn names_in_a_batch_are_distinct(urls in proptest::collection::vec(arbitrary_url(), 1..40)) {
            // Naming plus the batch's reservations (save::Names) is injective.
            let mut names = crate::client::save::Names::new(std::iter::empty());
            let mut seen = HashSet::new();
            let mut given = HashSet::new();
            for url in urls {
                if !seen.insert(url.to_string()) {
                    continue; // the batch skips repeated URLs
                }
                let base = file_name_for(&url, Some("text/html"), None);
                let chosen = names.choose(&base, url.as_str(), 1, false, |_| false);
                prop_assert!(is_safe_name(&chosen));
                prop_assert!(given.insert(chosen.to_ascii_lowercase()), "{chosen} given twice");
            }
        }
    }
}
