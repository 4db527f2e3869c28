//! What keygate reads of an inference request's JSON body: the model, whether it streams
//! and asked for usage, and what the token estimate needs (`tokens::estimate`).
//!
//! Why not `serde_json::Value`: building the whole tree (a map per object, a string per
//! text) cost more on the hot path than the limiter. [`Members`] reads an object's members
//! borrowed from the body and keeps each value as raw JSON until someone asks for it, so
//! only the few fields keygate reads are ever parsed. It reads what `Value` reads: any
//! members, the last of duplicate names, and a field of an unexpected type counts as
//! absent (the upstream judges its own fields).

use std::{borrow::Cow, fmt};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

/// A JSON object's members, values still raw.
pub struct Members<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Members<'a> {
    /// The members of `json`, if it is an object. `Err` says why not: invalid JSON, or
    /// (with `Category::Data`) valid JSON of another type.
    pub fn parse(json: &'a [u8]) -> Result<Members<'a>, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The members of a raw value that is an object.
    pub fn of(raw: &'a RawValue) -> Option<Members<'a>> {
        serde_json::from_str(raw.get()).ok()
    }

    /// The raw value of `name`; the last one if the name repeats (as `serde_json::Value`).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(member, _)| member == name)
            .map(|(_, value)| *value)
    }

    pub fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        self.get(name).and_then(string)
    }

    pub fn u64(&self, name: &str) -> Option<u64> {
        self.get(name)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// A raw value that is a string, borrowed unless it has escapes.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let json = raw.get();
    if !json.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(json) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(json).ok().map(Cow::Owned),
    }
}

/// The items of a raw value that is an array.
pub fn items(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// Whether a raw value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Name(name)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((name, value));
                }
                Ok(Members { members })
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A member name, borrowed from the input unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }

            fn visit_string<E>(self, name: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(name)))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

/// `body` (a JSON object without a `stream_options` member) with
/// `"stream_options":{"include_usage":true}` added as its first member. The rest of the
/// body is passed on byte for byte.
pub fn with_usage_requested(body: &[u8]) -> Option<Bytes> {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut out = BytesMut::with_capacity(body.len() + MEMBER.len() + 1);
    out.put_slice(&body[..=open]);
    out.put_slice(MEMBER);
    if !empty {
        out.put_u8(b',');
    }
    out.put_slice(rest);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn members_read_like_a_value() {
        let body = br#"{"model":"m\u0031","stream":true,"n":"x","max_tokens":-1,"model":"gpt","nested":{"a":[1,2]}}"#;
        let members = Members::parse(body).expect("an object");
        assert_eq!(
            members.str("model").as_deref(),
            Some("gpt"),
            "the last one wins"
        );
        assert_eq!(members.bool("stream"), Some(true));
        assert_eq!(members.u64("n"), None, "a string is not a number");
        assert_eq!(
            members.u64("max_tokens"),
            None,
            "nor is a negative one a u64"
        );
        let nested = members.get("nested").and_then(Members::of).expect("object");
        assert_eq!(nested.get("a").and_then(items).map(|a| a.len()), Some(2));
        assert!(members.get("absent").is_none());
    }

    #[test]
    fn escaped_names_and_strings_are_unescaped() {
        let members = Members::parse(br#"{"mo\u0064el":"a\"b"}"#).expect("an object");
        assert_eq!(members.str("model").as_deref(), Some("a\"b"));
    }

    #[test]
    fn other_json_is_refused_with_the_reason() {
        let not_object = Members::parse(b"[1, 2]").err().map(|e| e.classify());
        assert_eq!(not_object, Some(serde_json::error::Category::Data));
        let invalid = Members::parse(b"{\"a\":").err().map(|e| e.classify());
        assert_eq!(invalid, Some(serde_json::error::Category::Eof));
        let trailing = Members::parse(b"{} x").err().map(|e| e.classify());
        assert_eq!(trailing, Some(serde_json::error::Category::Syntax));
    }

    #[test]
    fn usage_is_requested_without_touching_the_rest() {
        let body = br#"  { "model": "m", "stream": true }"#;
        let out = with_usage_requested(body).expect("an object");
        let value: Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(
            value,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}})
        );
        assert!(out.ends_with(br#" "model": "m", "stream": true }"#));
        let empty = with_usage_requested(b"{ }").expect("an object");
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).ok(),
            Some(json!({"stream_options": {"include_usage": true}}))
        );
        assert!(with_usage_requested(b"[1]").is_none());
    }
}
