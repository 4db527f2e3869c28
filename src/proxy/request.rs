//! What keygate reads of an inference request's JSON body: the model, whether it streams
//! and asked for usage, and what the token estimate needs (`tokens::estimate`).
//!
//! Why not `serde_json::Value`: building the whole tree (a map per object, a string per
//! text) cost more on the hot path than the limiter. [`RequestFields`] reads the body in
//! one pass: the few members keygate reads are kept as raw JSON (parsed only when asked
//! for) or, for `messages`, as borrowed text; everything else is skipped. It reads what
//! `Value` reads: any members, the last of repeated names, and a field of an unexpected
//! type counts as absent (the upstream judges its own fields). [`Members`] does the same
//! for any object, member by member.

use std::{borrow::Cow, fmt};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{
    de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

/// The members of an inference request keygate reads. Raw values keep `null` (a present
/// `"model": null` is not an absent model).
#[derive(Default)]
pub struct RequestFields<'a> {
    pub model: Option<&'a RawValue>,
    pub stream: Option<&'a RawValue>,
    pub stream_options: Option<&'a RawValue>,
    pub max_tokens: Option<&'a RawValue>,
    pub max_completion_tokens: Option<&'a RawValue>,
    pub messages: Option<Messages<'a>>,
    pub prompt: Option<&'a RawValue>,
    pub input: Option<&'a RawValue>,
}

impl<'a> RequestFields<'a> {
    /// The fields of `json`, if it is an object. `Err` says why not: invalid JSON, or
    /// (with `Category::Data`) valid JSON of another type.
    pub fn parse(json: &'a [u8]) -> Result<RequestFields<'a>, serde_json::Error> {
        from_json(json)
    }

    pub fn stream(&self) -> bool {
        self.stream.and_then(boolean).unwrap_or(false)
    }

    /// `stream_options.include_usage`, when it is `true`.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .and_then(Members::of)
            .and_then(|options| options.bool("include_usage"))
            .unwrap_or(false)
    }

    /// `max_completion_tokens`, else `max_tokens`, when a whole non-negative number.
    pub fn max_output_tokens(&self) -> Option<u64> {
        [self.max_completion_tokens, self.max_tokens]
            .into_iter()
            .flatten()
            .find_map(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// `messages`: a list, or something else (which estimates nothing).
pub enum Messages<'a> {
    List(Vec<Message<'a>>),
    NotAList,
}

/// What the estimate counts of a chat message; an element that is no object counts as an
/// empty message.
#[derive(Default)]
pub struct Message<'a> {
    pub content: Content<'a>,
    pub name: Option<Cow<'a, str>>,
    pub role: Option<Cow<'a, str>>,
}

/// A message's `content`: text, the `text` of each part of a list (other parts, such as
/// images, count nothing), or anything else (nothing).
#[derive(Default)]
pub enum Content<'a> {
    #[default]
    Other,
    Text(Cow<'a, str>),
    Parts(Vec<Cow<'a, str>>),
}

/// `T` from JSON bytes. UTF-8 is checked once for the whole input, so that serde_json,
/// reading from a `str`, need not check every string again; input that is not UTF-8 is
/// read from the bytes, for serde_json's own error.
pub fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(json),
    }
}

/// The value of a raw JSON boolean.
fn boolean(raw: &RawValue) -> Option<bool> {
    serde_json::from_str(raw.get()).ok()
}

/// A JSON object's members, values still raw.
pub struct Members<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Members<'a> {
    /// The members of `json`, if it is an object. `Err` says why not: invalid JSON, or
    /// (with `Category::Data`) valid JSON of another type.
    pub fn parse(json: &'a [u8]) -> Result<Members<'a>, serde_json::Error> {
        from_json(json)
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

/// Visitor methods for the JSON types a lenient reader does not want: scalars give
/// `$none`, lists and objects are skipped whole and give `$none`.
macro_rules! anything_else_is {
    ($none:expr) => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

macro_rules! skip_lists {
    ($none:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

macro_rules! skip_objects {
    ($none:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

macro_rules! skip_strings {
    ($none:expr) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

impl<'de> Deserialize<'de> for RequestFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = RequestFields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = RequestFields::default();
                while let Some(Name(name)) = map.next_key()? {
                    let raw = match &*name {
                        "model" => &mut fields.model,
                        "stream" => &mut fields.stream,
                        "stream_options" => &mut fields.stream_options,
                        "max_tokens" => &mut fields.max_tokens,
                        "max_completion_tokens" => &mut fields.max_completion_tokens,
                        "prompt" => &mut fields.prompt,
                        "input" => &mut fields.input,
                        "messages" => {
                            fields.messages = Some(map.next_value()?);
                            continue;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *raw = Some(map.next_value()?);
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

impl<'de> Deserialize<'de> for Messages<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessagesVisitor;

        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            anything_else_is!(Messages::NotAList);
            skip_strings!(Messages::NotAList);

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut messages = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(message) = seq.next_element()? {
                    messages.push(message);
                }
                Ok(Messages::List(messages))
            }

            skip_objects!(Messages::NotAList);
        }

        deserializer.deserialize_any(MessagesVisitor)
    }
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;

        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            anything_else_is!(Message::default());
            skip_strings!(Message::default());
            skip_lists!(Message::default());

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut message = Message::default();
                while let Some(Name(name)) = map.next_key()? {
                    match &*name {
                        "content" => message.content = map.next_value()?,
                        "name" => message.name = map.next_value::<Text>()?.0,
                        "role" => message.role = map.next_value::<Text>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(message)
            }
        }

        deserializer.deserialize_any(MessageVisitor)
    }
}

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;

        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            anything_else_is!(Content::Other);

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(text.to_owned())))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut texts = Vec::new();
                while let Some(Part(text)) = seq.next_element()? {
                    texts.extend(text);
                }
                Ok(Content::Parts(texts))
            }

            skip_objects!(Content::Other);
        }

        deserializer.deserialize_any(ContentVisitor)
    }
}

/// A content part's `text`, if it is an object with a string `text`.
struct Part<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Part<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;

        impl<'de> Visitor<'de> for PartVisitor {
            type Value = Part<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            anything_else_is!(Part(None));
            skip_strings!(Part(None));
            skip_lists!(Part(None));

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut text = None;
                while let Some(Name(name)) = map.next_key()? {
                    if name == "text" {
                        text = map.next_value::<Text>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Part(text))
            }
        }

        deserializer.deserialize_any(PartVisitor)
    }
}

/// A string, borrowed unless it has escapes; any other value reads as `None`.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            anything_else_is!(Text(None));
            skip_lists!(Text(None));
            skip_objects!(Text(None));

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(text))))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(text.to_owned()))))
            }
        }

        deserializer.deserialize_any(TextVisitor)
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
