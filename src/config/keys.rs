//! The config file's keys, read from `ServeConfig` itself (serde's own
//! list of its fields), and the known key nearest to a misspelt one.

use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::ServeConfig;

/// Every key of the config file, in the order of `ServeConfig`'s fields.
pub fn keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut fields: &'static [&'static str] = &[];
        // Fails on purpose once the field names are caught.
        let _ = ServeConfig::deserialize(FieldNames(&mut fields));
        fields
    })
}

/// The known key nearest to `unknown`, if one is near enough to be what
/// was meant: at most one edit in three characters, counting a swap of two
/// neighbours as one (`workrs`, `allow_dset`, `allow-dest`).
pub fn nearest(unknown: &str) -> Option<&'static str> {
    let allowed = (unknown.chars().count() / 3).max(1);
    keys()
        .iter()
        .map(|key| (strsim::damerau_levenshtein(unknown, key), *key))
        .filter(|&(distance, _)| distance <= allowed)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, key)| key)
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_fields_in_order() {
        let keys = keys();
        assert_eq!(keys.first(), Some(&"listen"));
        assert_eq!(keys.last(), Some(&"users"));
        for key in [
            "workers",
            "allow_dest",
            "dest_ports",
            "via_name",
            "access_log",
        ] {
            assert!(keys.contains(&key), "{key}");
        }
    }

    #[test]
    fn typos_find_the_key_that_was_meant() {
        assert_eq!(nearest("workrs"), Some("workers"));
        assert_eq!(nearest("allow_dset"), Some("allow_dest"));
        assert_eq!(nearest("allow-dest"), Some("allow_dest"));
        assert_eq!(nearest("allow_client"), Some("allow_clients"));
        assert_eq!(nearest("connect_port"), Some("connect_ports"));
        assert_eq!(nearest("qeue"), Some("queue"));
        assert_eq!(nearest("colour"), None);
        assert_eq!(nearest("x"), None);
    }
}
