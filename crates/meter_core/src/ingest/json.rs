//! Borrowing JSON readers for the hot path: one pass over an event, no tree, no per-field allocation.
//!
//! Values are kept as raw JSON text (`&RawValue`) and only decoded when a meter needs them; strings are
//! borrowed from the request body unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object read as `(key, raw value)` pairs in document order. `None` when the value is not an object.
pub struct RawObject<'a>(pub Option<Vec<(Cow<'a, str>, &'a RawValue)>>);

impl<'de: 'a, 'a> de::Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawObjectVisitor)
    }
}

struct RawObjectVisitor;

impl<'de> Visitor<'de> for RawObjectVisitor {
    type Value = RawObject<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(k)) = map.next_key::<Key>()? {
            pairs.push((k, map.next_value::<&RawValue>()?));
        }
        Ok(RawObject(Some(pairs)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawObject(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RawObject(None))
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// What a raw JSON value is, judged by its first byte (serde_json already validated it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    Bool,
    Null,
    Object,
    Array,
}

pub fn kind(raw: &str) -> Kind {
    match raw.as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// Decodes a raw JSON string, borrowing when it has no escapes. `None` if `raw` is not a string.
pub fn string(raw: &str) -> Option<Cow<'_, str>> {
    if kind(raw) != Kind::String {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// A short excerpt of what was received (at most 40 bytes, cut on a character boundary), for error messages.
pub fn clip(raw: &str) -> String {
    let mut end = raw.len().min(40);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    if end < raw.len() {
        format!("{}...", &raw[..end])
    } else {
        raw.to_owned()
    }
}

/// Reads an object's top-level pairs; `None` when `raw` is not an object.
pub fn object(raw: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    serde_json::from_str::<RawObject>(raw).ok().and_then(|o| o.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_without_decoding_values() {
        let pairs = object(r#"{"a": 1.50, "b\u0041": {"c": [1,2]}, "d": "x\"y"}"#).unwrap();
        let got: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(got, vec![("a", "1.50"), ("bA", r#"{"c": [1,2]}"#), ("d", r#""x\"y""#)]);
        assert!(matches!(pairs[0].0, Cow::Borrowed(_)));
        assert!(matches!(pairs[1].0, Cow::Owned(_)));
    }

    #[test]
    fn non_objects_are_none() {
        for raw in ["[1]", "1", "\"s\"", "null", "true"] {
            assert!(object(raw).is_none(), "{raw}");
        }
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        assert!(matches!(string(r#""plain""#), Some(Cow::Borrowed("plain"))));
        assert_eq!(string(r#""a\nb""#).unwrap(), "a\nb");
        assert_eq!(string("12"), None);
    }
}
