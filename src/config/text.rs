//! How each kind of setting is written as text: clap's value parsers for
//! the flags (text in, typed value out), which the config file's readers in
//! `value` use for its strings too. Messages say what was expected, in
//! words a user knows; the caller puts the flag or key and the value in
//! front. No I/O, except that `resolve_listen` looks a host name up.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use log::LevelFilter;

use super::size::parse_size;
use crate::access::PortRange;

pub(super) const MAX_NUMBER: u64 = i64::MAX as u64;

/// The log levels, quietest first, as `--log-level` and `log_level` take them.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

pub(super) const EXPECTED_DURATION: &str = "a duration such as 30s, 1m 30s or 250ms";
pub(super) const EXPECTED_RANGE: &str =
    "an address or a range such as 127.0.0.1, 10.0.0.0/8, ::1 or fc00::/7";
pub(super) const EXPECTED_PORT: &str = "a port number from 1 to 65535";
pub(super) const EXPECTED_LISTEN: &str = "PORT, IP:PORT, [IPv6]:PORT or HOST:PORT, such as 3128, 0.0.0.0:3128, [::1]:3128 or localhost:3128";
pub(super) const EXPECTED_TOKEN: &str = "a name of letters, digits, \".\", \"-\" and \"_\" (an HTTP token) of at most 255 bytes, such as proxy-1.example";

/// A whole number (any size a setting can hold; ranges are checked later,
/// where the key is known).
///
/// # Errors
/// What was expected.
pub fn parse_count(text: &str) -> Result<usize, String> {
    whole_number(text.trim())
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "expected a whole number such as 32".to_string())
}

/// A number of bytes, plain or with a unit (see `size`).
///
/// # Errors
/// What was expected.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size(text)
}

/// A humantime duration: `30s`, `1m 30s`, `250ms`.
///
/// # Errors
/// What was expected, and what humantime found wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    let text = text.trim();
    humantime::parse_duration(text).map_err(|err| {
        // Where humantime stopped: a byte offset into `text`.
        let rest = |at: usize| text.get(at..).unwrap_or_default();
        let found = match err {
            DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("{value} has no unit: write {value}s for seconds, or {value}ms")
            }
            DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            DurationError::NumberExpected(at) => format!("a number was expected at {:?}", rest(at)),
            DurationError::InvalidCharacter(at) => format!("{:?} is out of place", rest(at)),
            DurationError::NumberOverflow => "too long".to_string(),
            DurationError::Empty => "nothing given".to_string(),
        };
        format!("expected {EXPECTED_DURATION} ({found})")
    })
}

/// An address range in CIDR form, or a bare address meaning just itself
/// (/32 for IPv4, /128 for IPv6).
///
/// # Errors
/// What was expected.
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            // A name (`localhost`, `db.internal`): rules hold addresses,
            // since a name can resolve to others later.
            let name = text.contains(|c: char| c.is_ascii_alphabetic())
                && !text.contains(['/', ':'])
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            // An address with a prefix too long for it (`10.0.0.0/33`).
            let too_long = text.split_once('/').and_then(|(addr, bits)| {
                let max = match addr.parse::<IpAddr>().ok()? {
                    IpAddr::V4(_) => 32,
                    IpAddr::V6(_) => 128,
                };
                let bits: u32 = bits.parse().ok()?;
                (bits > max).then_some((bits, max))
            });
            if text.eq_ignore_ascii_case("localhost") {
                format!("expected {EXPECTED_RANGE}; for localhost give 127.0.0.1 and ::1")
            } else if let Some((bits, max)) = too_long {
                format!("expected {EXPECTED_RANGE}; the prefix length /{bits} is over {max}, the most for this address")
            } else if name {
                format!("expected {EXPECTED_RANGE}; a name is not taken, give the addresses it stands for")
            } else {
                format!("expected {EXPECTED_RANGE}")
            }
        })
}

/// One port, 1 to 65535.
///
/// # Errors
/// What was expected.
pub fn parse_port(text: &str) -> Result<u16, String> {
    whole_number(text.trim())
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&port| port > 0)
        .ok_or_else(|| format!("expected {EXPECTED_PORT}"))
}

/// A port or a range of ports: `80`, `1024-65535`.
///
/// # Errors
/// What was expected, and what was wrong.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    text.parse()
        .map_err(|err| format!("expected a port or a range such as 80 or 1024-65535 ({err})"))
}

/// A listen address as typed, checked for form only (no lookup): `3128`,
/// `127.0.0.1:3128`, `[::1]:3128` or `localhost:3128`. See [`resolve_listen`].
///
/// # Errors
/// What was expected.
pub fn parse_listen(text: &str) -> Result<String, String> {
    let text = text.trim();
    if whole_number(text).is_some_and(|port| port <= u64::from(u16::MAX))
        || text.parse::<SocketAddr>().is_ok()
    {
        return Ok(text.to_string());
    }
    let is_host_port = text.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok()
            && !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    });
    if is_host_port {
        Ok(text.to_string())
    } else {
        Err(format!("expected {EXPECTED_LISTEN}"))
    }
}

/// The addresses to listen on for one `listen` entry: a bare port means
/// 127.0.0.1 (a proxy open to the network is a choice to make, not a
/// default), `HOST:PORT` every address the name resolves to.
///
/// # Errors
/// What was expected, or why the name did not resolve.
pub fn resolve_listen(text: &str) -> Result<Vec<SocketAddr>, String> {
    let text = parse_listen(text)?;
    if let Some(port) = whole_number(&text).and_then(|n| u16::try_from(n).ok()) {
        return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let resolved = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve the host name ({err})"))?;
    for addr in resolved {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err("the host name resolves to no address".to_string());
    }
    Ok(addrs)
}

/// A log level: off, error, warn, info, debug or trace, in any case.
///
/// # Errors
/// The valid levels.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    let text = text.trim();
    if LOG_LEVELS
        .iter()
        .any(|level| level.eq_ignore_ascii_case(text))
    {
        text.parse().map_err(|_| expected_level())
    } else {
        Err(expected_level())
    }
}

pub(super) fn expected_level() -> String {
    let (last, rest) = LOG_LEVELS.split_last().expect("six levels");
    format!("expected {} or {last}", rest.join(", "))
}

/// An HTTP token (RFC 9110 §5.6.2), what a `Via` pseudonym may be.
///
/// # Errors
/// What was expected.
pub fn parse_token(text: &str) -> Result<String, String> {
    if is_token(text) {
        Ok(text.to_string())
    } else {
        Err(format!("expected {EXPECTED_TOKEN}"))
    }
}

/// Whether `text` is an RFC 9110 §5.6.2 token of at most 255 bytes.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A path (of a file or a directory): not empty, and UTF-8 so that it can
/// stand in the config file.
///
/// # Errors
/// What was expected.
pub fn parse_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        Err("expected a path, not an empty string".to_string())
    } else {
        Ok(PathBuf::from(text))
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`.
pub(super) fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n <= MAX_NUMBER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_digits_only() {
        assert_eq!(parse_count("32"), Ok(32));
        assert_eq!(parse_count(" 7 "), Ok(7));
        for bad in ["", "-1", "+3", "3.5", "many", "99999999999999999999"] {
            let err = parse_count(bad).expect_err(bad);
            assert_eq!(err, "expected a whole number such as 32");
        }
    }

    #[test]
    fn a_bare_address_is_a_range_of_one() {
        assert_eq!(
            parse_range("127.0.0.1"),
            Ok("127.0.0.1/32".parse().expect("cidr"))
        );
        assert_eq!(parse_range("::1"), Ok("::1/128".parse().expect("cidr")));
        assert_eq!(
            parse_range("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().expect("cidr"))
        );
        for bad in ["10.0.0.0/33", "localhost", "", "10.0.0.1/", "1.2.3"] {
            let err = parse_range(bad).expect_err(bad);
            assert!(err.contains("127.0.0.1, 10.0.0.0/8"), "{bad}: {err}");
        }
        for (bad, says) in [
            ("10.0.0.0/33", "/33 is over 32"),
            ("fd00::/129", "/129 is over 128"),
        ] {
            let err = parse_range(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(
            !parse_range("10.0.0.0/x")
                .expect_err("x")
                .contains("prefix length")
        );
    }

    #[test]
    fn ports_and_port_ranges() {
        assert_eq!(parse_port("443"), Ok(443));
        for bad in ["0", "65536", "x", "", "+1"] {
            assert_eq!(
                parse_port(bad),
                Err(format!("expected {EXPECTED_PORT}")),
                "{bad}"
            );
        }
        assert_eq!(
            parse_port_range("1024-65535"),
            Ok(PortRange {
                first: 1024,
                last: 65535
            })
        );
        let err = parse_port_range("200-100").expect_err("reversed");
        assert!(
            err.contains("1024-65535") && err.contains("reversed"),
            "{err}"
        );
    }

    #[test]
    fn listen_takes_a_port_an_address_or_a_host() {
        assert_eq!(
            resolve_listen("3128"),
            Ok(vec!["127.0.0.1:3128".parse().expect("addr")])
        );
        assert_eq!(
            resolve_listen("0.0.0.0:80"),
            Ok(vec!["0.0.0.0:80".parse().expect("addr")])
        );
        assert_eq!(
            resolve_listen("[::1]:80"),
            Ok(vec!["[::1]:80".parse().expect("addr")])
        );
        let local = resolve_listen("localhost:3128").expect("localhost resolves");
        assert!(
            local.contains(&"127.0.0.1:3128".parse().expect("addr")),
            "{local:?}"
        );
        assert!(
            local
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() == 3128)
        );
        for bad in [
            "",
            "127.0.0.1",
            "localhost",
            "host:port",
            "a b:80",
            "70000",
            ":80",
        ] {
            let err = parse_listen(bad).expect_err(bad);
            assert!(err.contains("localhost:3128"), "{bad}: {err}");
        }
        // `.invalid` never resolves (RFC 6761 §6.4).
        let err = resolve_listen("nowhere.invalid:80").expect_err("no such host");
        assert!(err.contains("cannot resolve"), "{err}");
    }

    #[test]
    fn levels_list_the_valid_ones() {
        assert_eq!(parse_level("OFF"), Ok(LevelFilter::Off));
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        let err = parse_level("loud").expect_err("not a level");
        assert_eq!(err, "expected off, error, warn, info, debug or trace");
    }

    #[test]
    fn tokens_and_paths() {
        assert!(parse_token("proxy-1.example").is_ok());
        assert!(parse_token("two words").is_err());
        assert!(parse_token(&"a".repeat(256)).is_err());
        assert!(parse_path("").is_err());
        assert_eq!(
            parse_path("/var/log/x.log"),
            Ok(PathBuf::from("/var/log/x.log"))
        );
    }

    #[test]
    fn durations_say_what_they_look_like() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        let err = parse_duration("30 parsecs").expect_err("bad");
        assert!(err.starts_with("expected a duration such as 30s"), "{err}");
    }
}
