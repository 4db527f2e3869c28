//! Walking JSON that `super::RequestFields::parse` has already accepted, one member or
//! element at a time, without building it: every value is taken as a `&RawValue` (a
//! slice of the body) and looked into only where keygate reads it.
//!
//! Why this shape: memory must not grow with what a body holds. A list is never
//! collected (each element is handed to the caller and dropped), and strings are never
//! unescaped by serde_json, whose scratch buffer grows to twice a string's length;
//! [`string`] unescapes into exactly the room the text needs, and only text that has
//! escapes. So reading any body costs at most about its own size again.

use std::{borrow::Cow, fmt, marker::PhantomData};

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Calls `each(name, value)` for every member of `raw`, in order; `false` when `raw` is
/// not an object. Names are raw string literals (see [`name_is`]).
pub fn members<'a>(raw: &'a RawValue, mut each: impl FnMut(&'a RawValue, &'a RawValue)) -> bool {
    if !raw.get().starts_with('{') {
        return false;
    }
    let mut json = serde_json::Deserializer::from_str(raw.get());
    json.deserialize_map(Walk::<_, (&RawValue, &RawValue)>(&mut each, PhantomData))
        .is_ok()
}

/// Calls `each(item)` for every element of `raw`, in order; `false` when `raw` is not
/// an array.
pub fn items<'a>(raw: &'a RawValue, mut each: impl FnMut(&'a RawValue)) -> bool {
    if !raw.get().starts_with('[') {
        return false;
    }
    let mut json = serde_json::Deserializer::from_str(raw.get());
    json.deserialize_seq(Walk::<_, &RawValue>(&mut each, PhantomData))
        .is_ok()
}

/// The value of member `name` of `raw`; the last one if the name repeats, as in
/// `serde_json::Value`.
pub fn member<'a>(raw: &'a RawValue, name: &str) -> Option<&'a RawValue> {
    let mut found = None;
    members(raw, |key, value| {
        if name_is(key, name) {
            found = Some(value);
        }
    });
    found
}

/// Whether the raw member name `key` (a string literal) reads `name`.
pub fn name_is(key: &RawValue, name: &str) -> bool {
    let literal = key.get();
    let Some(inner) = literal
        .strip_prefix('"')
        .and_then(|literal| literal.strip_suffix('"'))
    else {
        return false;
    };
    // An escape reads as fewer characters than it takes, so contents no longer than
    // `name` read `name` only as they stand: compared without unescaping (every name
    // walked on the hot path, several per message).
    if inner.len() <= name.len() {
        return inner == name;
    }
    // An escape is at most six bytes per character: a longer literal cannot be `name`.
    inner.len() <= name.len() * 6 && unescape(inner).is_some_and(|text| text == name)
}

/// A raw value that is a string, borrowed unless it has escapes.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    unescape(inner)
}

/// The text of a JSON string's contents (between its quotes), from input serde_json has
/// accepted and `super::scan` checked (every escape well formed, surrogates paired).
/// `None` only for input that is not such (never from a parsed body).
pub fn unescape(inner: &str) -> Option<Cow<'_, str>> {
    let Some(first) = find_backslash(inner.as_bytes()) else {
        return Some(Cow::Borrowed(inner));
    };
    // Escapes only shrink text: this is all the room the result needs.
    let mut text = String::with_capacity(inner.len());
    let mut rest = inner;
    let mut at = first;
    loop {
        text.push_str(&rest[..at]);
        let escape = rest.as_bytes().get(at + 1)?;
        rest = rest.get(at + 2..)?;
        let decoded = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(rest)?;
                rest = &rest[4..];
                if (0xD800..0xDC00).contains(&unit) {
                    let low = hex4(rest.strip_prefix("\\u")?)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    rest = &rest[6..];
                    let high = u32::from(unit - 0xD800) << 10;
                    char::from_u32(0x10000 + high + u32::from(low - 0xDC00))?
                } else {
                    char::from_u32(u32::from(unit))?
                }
            }
            _ => return None,
        };
        text.push(decoded);
        match memchr::memchr(b'\\', rest.as_bytes()) {
            Some(next) => at = next,
            None => {
                text.push_str(rest);
                return Some(Cow::Owned(text));
            }
        }
    }
}

/// The first `\` in `bytes`. Most strings read here are member names and short
/// texts, where a plain loop is several times cheaper than memchr's call and setup.
fn find_backslash(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    if bytes.len() <= SHORT {
        bytes.iter().position(|&b| b == b'\\')
    } else {
        memchr::memchr(b'\\', bytes)
    }
}

fn hex4(text: &str) -> Option<u16> {
    let digits = text.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

/// A visitor handing each member (or element) to a closure as it is read.
struct Walk<'f, F, T>(&'f mut F, PhantomData<T>);

impl<'de, F: FnMut(&'de RawValue, &'de RawValue)> Visitor<'de>
    for Walk<'_, F, (&'de RawValue, &'de RawValue)>
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let value = map.next_value::<&'de RawValue>()?;
            (self.0)(key, value);
        }
        Ok(())
    }
}

impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for Walk<'_, F, &'de RawValue> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            (self.0)(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).expect("valid JSON")
    }

    #[test]
    fn members_and_items_are_handed_on_in_order() {
        let mut seen = Vec::new();
        assert!(members(raw(r#"{"a":1,"b":[2],"a":3}"#), |k, v| {
            seen.push((k.get().to_owned(), v.get().to_owned()))
        }));
        assert_eq!(
            seen,
            [("\"a\"", "1"), ("\"b\"", "[2]"), ("\"a\"", "3")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let mut count = 0;
        assert!(items(raw("[1, {}, []]"), |_| count += 1));
        assert_eq!(count, 3);
        assert!(!items(raw("{}"), |_| {}));
        assert!(!members(raw("[]"), |_, _| {}));
    }

    #[test]
    fn the_last_member_of_a_name_wins_and_escaped_names_match() {
        let object = raw(r#"{"n":1,"\u006e":2,"x":3}"#);
        assert_eq!(member(object, "n").map(RawValue::get), Some("2"));
        assert!(member(object, "absent").is_none());
    }

    #[test]
    fn names_match_as_they_read_whether_escaped_or_not() {
        for (literal, reads_content) in [
            (r#""content""#, true),
            (r#""\u0063ontent""#, true),
            (r#""cont\u0065nt""#, true),
            (r#""conten""#, false),
            (r#""contents""#, false),
            (r#""Content""#, false),
            (r#""conte\nt""#, false),
            (r#""""#, false),
        ] {
            assert_eq!(name_is(raw(literal), "content"), reads_content, "{literal}");
        }
        assert!(!name_is(raw("7"), "7"));
    }

    #[test]
    fn strings_unescape_like_serde_json() {
        for json in [
            r#""plain""#,
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u4e2d\ud83d\ude00 x""#,
            r#""""#,
        ] {
            let expected: String = serde_json::from_str(json).expect("a string");
            assert_eq!(
                string(raw(json)).as_deref(),
                Some(expected.as_str()),
                "{json}"
            );
        }
        assert!(matches!(
            string(raw(r#""no escapes""#)),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(string(raw("12")), None);
    }

    proptest! {
        #[test]
        fn any_string_round_trips(text in "\\PC{0,40}|[\\u{0}-\\u{7f}\"\\\\]{0,40}") {
            let json = serde_json::to_string(&text).expect("serialises");
            let short = string(raw(&json)).map(Cow::into_owned);
            prop_assert_eq!(short.as_deref(), Some(text.as_str()));
            // Escaped the long way too (every character as \uXXXX).
            let long: String = text
                .encode_utf16()
                .map(|unit| format!("\\u{unit:04x}"))
                .collect();
            let long = format!("\"{long}\"");
            let long = string(raw(&long)).map(Cow::into_owned);
            prop_assert_eq!(long.as_deref(), Some(text.as_str()));
        }
    }
}
