//! How each kind of setting is written, for both places that read one: the
//! `parse_*` functions are clap's value parsers for the flags (text in,
//! typed value out), and the serde helpers below read the same forms from
//! the config file into `ServeConfig` fields. Messages say what was expected
//! in words a user knows ("a whole number from 1 to 4096"); the caller puts
//! the key or flag and the value in front. No I/O, except that a host name in
//! `listen` is resolved.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use log::LevelFilter;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::size::{EXPECTED_SIZE, MAX_SIZE, format_size, parse_size};
use crate::access::PortRange;
use crate::auth::{self, User};

/// The largest whole number a setting takes: TOML integers are signed 64-bit.
const MAX_NUMBER: u64 = i64::MAX as u64;

/// The log levels, quietest first, as `--log-level` and `log_level` take them.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

const EXPECTED_DURATION: &str = "a duration such as 30s, 1m 30s or 250ms";
const EXPECTED_RANGE: &str = "an address or a range such as 127.0.0.1, 10.0.0.0/8, ::1 or fc00::/7";
const EXPECTED_PORT: &str = "a port number from 1 to 65535";
const EXPECTED_LISTEN: &str = "PORT, IP:PORT, [IPv6]:PORT or HOST:PORT, such as 3128, 0.0.0.0:3128, [::1]:3128 or localhost:3128";
const EXPECTED_TOKEN: &str = "a name of letters, digits, \".\", \"-\" and \"_\" (an HTTP token) of at most 255 bytes, such as proxy-1.example";

// ---- Text forms, for clap and for strings in the file ----

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
    humantime::parse_duration(text.trim()).map_err(|err| {
        let found = match err {
            DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            DurationError::NumberExpected(_) => "a number is missing".to_string(),
            DurationError::InvalidCharacter(_) => "a character is out of place".to_string(),
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
        .map_err(|_| format!("expected {EXPECTED_RANGE}"))
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

fn expected_level() -> String {
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

/// A file path: not empty, and UTF-8 so that it can stand in the config file.
///
/// # Errors
/// What was expected.
pub fn parse_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        Err("expected a file path".to_string())
    } else {
        Ok(PathBuf::from(text))
    }
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n <= MAX_NUMBER)
}

// ---- The config file: serde helpers for `ServeConfig` fields ----
//
// Each reads any TOML value and checks it with its own message, so that no
// serde jargon ("invalid type: string, expected usize") reaches a user.
// Errors raised here carry the position of the value (or of the list
// element) that caused them, which becomes the line in the message.

/// Reads any TOML value and checks it with `check` while the deserializer
/// still runs, so that an error carries the position of the value.
fn checked<'de, D, T>(
    deserializer: D,
    check: impl FnOnce(toml::Value) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_any(CheckVisitor { check })
}

struct CheckVisitor<F> {
    check: F,
}

impl<F> CheckVisitor<F> {
    fn run<T, E: de::Error>(self, value: toml::Value) -> Result<T, E>
    where
        F: FnOnce(toml::Value) -> Result<T, String>,
    {
        (self.check)(value).map_err(E::custom)
    }
}

impl<'de, T, F> Visitor<'de> for CheckVisitor<F>
where
    F: FnOnce(toml::Value) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.run(toml::Value::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.run(toml::Value::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match i64::try_from(v) {
            Ok(v) => self.run(toml::Value::Integer(v)),
            Err(_) => Err(E::custom("expected a smaller number")),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.run(toml::Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.run(toml::Value::String(v.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        let value = toml::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        self.run(value)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let value = toml::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.run(value)
    }
}

/// A number written as a TOML integer or as a string of digits.
fn number_of(value: &toml::Value) -> Option<u64> {
    match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(text) => whole_number(text.trim()),
        _ => None,
    }
}

/// Bytes written as a TOML integer or as a size string.
fn bytes_of(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("expected {EXPECTED_SIZE}"))
        }
        toml::Value::String(text) => parse_size(text),
        _ => Err(format!("expected {EXPECTED_SIZE}")),
    }
}

fn text_of(value: &toml::Value, expected: &str) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        _ => Err(format!("expected {expected}")),
    }
}

/// Numbers and sizes from `MIN` to `MAX`, as a field attribute:
/// `#[serde(deserialize_with = "Within::<1, 4096>::number")]`.
pub struct Within<const MIN: u64, const MAX: u64>;

impl<const MIN: u64, const MAX: u64> Within<MIN, MAX> {
    /// A whole number from `MIN` to `MAX`.
    pub fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<usize>,
    {
        checked(deserializer, |value| {
            number_of(&value)
                .filter(|n| (MIN..=MAX).contains(n))
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| T::try_from(n).ok())
                .ok_or_else(|| format!("expected a whole number from {MIN} to {MAX}"))
        })
    }

    /// A number of bytes or a size (`64KiB`) from `MIN` to `MAX`.
    pub fn bytes<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        checked(deserializer, |value| {
            let bytes = bytes_of(&value)?;
            if !(MIN..=MAX).contains(&bytes) {
                let range = if MAX >= MAX_SIZE {
                    format!("of at least {}", size_text(MIN))
                } else {
                    format!("from {} to {}", size_text(MIN), size_text(MAX))
                };
                return Err(format!(
                    "expected a size {range} (a number of bytes, or with a unit such as KiB or MiB)"
                ));
            }
            T::try_from(bytes).map_err(|_| "too large for this machine".to_string())
        })
    }

    /// [`Within::bytes`] for a limit that may be left unset.
    pub fn some_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        Self::bytes(deserializer).map(Some)
    }
}

/// `64KiB`, `16 bytes`, `1 byte`: a size in a message.
fn size_text(bytes: u64) -> String {
    match format_size(bytes) {
        plain if plain.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{plain} byte{}", if bytes == 1 { "" } else { "s" })
        }
        with_unit => with_unit,
    }
}

/// Durations as humantime strings (`"30s"`); zero allowed.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        checked(deserializer, |value| {
            parse_duration(&text_of(&value, EXPECTED_DURATION)?)
        })
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }
}

/// Durations that must be more than zero: the timeouts.
pub mod timeout {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        checked(deserializer, |value| {
            match parse_duration(&text_of(&value, EXPECTED_DURATION)?)? {
                zero if zero.is_zero() => Err(
                    "expected a duration of more than zero, such as 30s, 1m 30s or 250ms"
                        .to_string(),
                ),
                value => Ok(value),
            }
        })
    }

    pub use super::duration::serialize;
}

/// An optional duration flag, written like [`duration`].
pub fn serialize_some_duration<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => duration::serialize(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// Log levels, written in lower case.
pub mod level {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<LevelFilter, D::Error> {
        checked(deserializer, |value| match value {
            toml::Value::String(text) => parse_level(&text),
            _ => Err(expected_level()),
        })
    }

    pub fn serialize<S: Serializer>(value: &LevelFilter, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.as_str().to_ascii_lowercase())
    }
}

/// An optional level flag, written like [`level`].
pub fn serialize_some_level<S: Serializer>(
    value: &Option<LevelFilter>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => level::serialize(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// A value named by a word (`access_log_format = "squid"`); `T` says
/// which words it knows.
pub fn named<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<String, Error = String>,
{
    checked(deserializer, |value| match value {
        toml::Value::String(text) => T::try_from(text),
        other => T::try_from(other.to_string()),
    })
}

/// A file path, for a setting that may be left unset.
pub fn path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    checked(deserializer, |value| match value {
        toml::Value::String(text) => parse_path(&text).map(Some),
        _ => Err("expected a file path in quotes".to_string()),
    })
}

/// The `Via` name: an HTTP token.
pub fn token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    checked(deserializer, |value| {
        parse_token(&text_of(&value, EXPECTED_TOKEN)?)
    })
}

/// `listen`: at least one entry, each resolved; duplicates dropped.
pub fn listen<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let lists = list(
        deserializer,
        1,
        "address to listen on",
        |value| match value {
            toml::Value::Integer(port) => resolve_listen(&port.to_string()),
            other => resolve_listen(&text_of(other, EXPECTED_LISTEN)?),
        },
    )?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in lists.into_iter().flatten() {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

/// Address ranges (bare addresses allowed); the list may be empty.
pub fn ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    list(deserializer, 0, "address range", range_of)
}

/// Address ranges, at least one.
pub fn some_ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    list(deserializer, 1, "address range", range_of)
}

fn range_of(value: &toml::Value) -> Result<IpNet, String> {
    parse_range(&text_of(value, EXPECTED_RANGE)?)
}

/// Ports; the list may be empty.
pub fn ports<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u16>, D::Error> {
    list(deserializer, 0, "port", |value| {
        parse_port(&text_of(value, EXPECTED_PORT)?)
    })
}

/// Port ranges (`80`, `"1024-65535"`), at least one; written as strings.
pub mod port_ranges {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<PortRange>, D::Error> {
        list(deserializer, 1, "port", |value| {
            parse_port_range(&text_of(
                value,
                "a port or a range such as 80 or 1024-65535",
            )?)
        })
    }

    pub fn serialize<S: Serializer>(value: &[PortRange], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for range in value {
            seq.serialize_element(&range.to_string())?;
        }
        seq.end()
    }
}

/// A `[[users]]` table as written (and as a user is shown to `changed_keys`).
#[derive(Serialize)]
struct FileUser {
    name: String,
    password_hash: String,
}

/// `[[users]]`: names unique and usable in Basic credentials, hashes
/// argon2id PHC strings. A message never repeats a hash.
pub mod users {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<User>, D::Error> {
        let users = list(deserializer, 0, "user", user_of)?;
        for (i, user) in users.iter().enumerate() {
            if users[..i].iter().any(|earlier| earlier.name == user.name) {
                return Err(de::Error::custom(format!(
                    "user {:?} is listed twice",
                    user.name
                )));
            }
        }
        Ok(users)
    }

    /// Names and hashes as PHC strings, so that a changed user or password
    /// counts as a changed setting.
    pub fn serialize<S: Serializer>(value: &[User], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for user in value {
            seq.serialize_element(&FileUser {
                name: user.name.clone(),
                password_hash: user.password_hash.to_string(),
            })?;
        }
        seq.end()
    }

    fn user_of(value: &toml::Value) -> Result<User, String> {
        const EXPECTED: &str = "expected a [[users]] table with name and password_hash";
        let toml::Value::Table(table) = value else {
            return Err(EXPECTED.to_string());
        };
        if let Some(unknown) = table
            .keys()
            .find(|key| *key != "name" && *key != "password_hash")
        {
            return Err(format!("unknown key {unknown:?} in [[users]]; {EXPECTED}"));
        }
        let field = |key: &str| match table.get(key) {
            Some(toml::Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(format!("{key} in [[users]] is not a string in quotes")),
            None => Err(format!("{key} is missing from [[users]]; {EXPECTED}")),
        };
        let entry = FileUser {
            name: field("name")?,
            password_hash: field("password_hash")?,
        };
        // RFC 7617 §2: the user-id cannot contain a colon.
        if entry.name.is_empty()
            || entry.name.contains(':')
            || entry.name.chars().any(char::is_control)
        {
            return Err(format!(
                "user name {:?}: expected a name that is not empty and has no colon or control character",
                entry.name
            ));
        }
        let password_hash = auth::parse_password_hash(&entry.password_hash)
            .map_err(|reason| format!("user {:?}: password_hash is {reason}", entry.name))?;
        Ok(User {
            name: entry.name,
            password_hash,
        })
    }
}

/// A list whose elements `parse` reads, each through its own deserializer
/// so that a bad one is reported at its own line. A single value stands for
/// a list of one (`listen = "127.0.0.1:8080"`).
fn list<'de, D, T>(
    deserializer: D,
    at_least: usize,
    what: &'static str,
    parse: fn(&toml::Value) -> Result<T, String>,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let items = deserializer.deserialize_any(ListVisitor { parse })?;
    if items.len() < at_least {
        let count = match at_least {
            1 => "one".to_string(),
            n => n.to_string(),
        };
        return Err(de::Error::custom(format!(
            "expected at least {count} {what}{}",
            if at_least == 1 { "" } else { "s" }
        )));
    }
    Ok(items)
}

/// Most elements a list setting may have (bounded, like everything else).
const MAX_LIST: usize = 10_000;

struct ListVisitor<T> {
    parse: fn(&toml::Value) -> Result<T, String>,
}

impl<T> ListVisitor<T> {
    fn one<E: de::Error>(&self, value: toml::Value) -> Result<Vec<T>, E> {
        (self.parse)(&value)
            .map(|item| vec![item])
            .map_err(E::custom)
    }
}

impl<'de, T> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list in brackets, such as [\"a\", \"b\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(Element { parse: self.parse })? {
            if items.len() == MAX_LIST {
                return Err(de::Error::custom(format!(
                    "expected at most {MAX_LIST} entries"
                )));
            }
            items.push(item);
        }
        Ok(items)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<T>, E> {
        self.one(toml::Value::String(text.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
        self.one(toml::Value::Boolean(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
        self.one(toml::Value::Float(v))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Vec<T>, E> {
        self.one(toml::Value::Integer(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Vec<T>, E> {
        match i64::try_from(n) {
            Ok(n) => self.one(toml::Value::Integer(n)),
            Err(_) => Err(E::custom("expected a smaller number")),
        }
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
        let value = toml::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.one(value)
    }
}

struct Element<T> {
    parse: fn(&toml::Value) -> Result<T, String>,
}

impl<'de, T> DeserializeSeed<'de> for Element<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        checked(deserializer, |value| (self.parse)(&value))
    }
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
