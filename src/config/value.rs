//! How the config file's values are read into `ServeConfig` fields (the
//! `deserialize_with` and `with` helpers named on each field), and written
//! back for `changed_keys` and the help's defaults. Each reads any TOML
//! value and checks it with its own message (the text forms are `text`'s),
//! so that no serde jargon ("invalid type: string, expected usize") reaches
//! a user.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use log::LevelFilter;
use serde::Serialize;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeSeq, Serializer};

use super::size::{EXPECTED_SIZE, MAX_SIZE, format_size, parse_size, size_text};
use super::text::{
    EXPECTED_DURATION, EXPECTED_LISTEN, EXPECTED_PORT, EXPECTED_RANGE, EXPECTED_TOKEN,
    expected_level, parse_duration, parse_level, parse_path, parse_port, parse_port_range,
    parse_range, parse_token, resolve_listen, whole_number,
};
use super::visit::{checked, list};
use crate::access::PortRange;
use crate::auth::{self, User};

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

/// A size written as `parse_size` reads it (`"64KiB"`), for the help and
/// for `changed_keys`.
pub fn serialize_size<S, T>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Copy + TryInto<u64>,
{
    match (*value).try_into() {
        Ok(bytes) => serializer.serialize_str(&format_size(bytes)),
        Err(_) => Err(serde::ser::Error::custom("a size over 16 EiB")),
    }
}

/// [`serialize_size`] for a limit that may be unset.
pub fn serialize_some_size<S: Serializer>(
    value: &Option<u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(bytes) => serialize_size(bytes, serializer),
        None => serializer.serialize_none(),
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
        _ => Err("expected a path in quotes".to_string()),
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
            // Every key after a table's header belongs to that table.
            if crate::config::keys::keys().contains(&unknown.as_str()) {
                return Err(format!(
                    "{unknown} is set inside a [[users]] table, where it means nothing: \
                     move it above the first [[users]] line"
                ));
            }
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
            .map_err(|reason| format!("user {:?}: password_hash: {reason}", entry.name))?;
        Ok(User {
            name: entry.name,
            password_hash,
        })
    }
}
