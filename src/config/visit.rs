//! Serde plumbing for the config file's readers in `value`: any TOML value
//! checked by a plain function with its own message, and lists read element
//! by element. Errors are raised while toml's deserializer still runs, so
//! they carry the position of the value (or of the list element) at fault,
//! which becomes the line in the message.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// Reads any TOML value and checks it with `check` while the deserializer
/// still runs, so that an error carries the position of the value.
pub(super) fn checked<'de, D, T>(
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

/// A list whose elements `parse` reads, each through its own deserializer
/// so that a bad one is reported at its own line. A single value stands for
/// a list of one (`listen = "127.0.0.1:8080"`).
pub(super) fn list<'de, D, T>(
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
