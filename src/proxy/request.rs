//! What keygate reads of an inference request's JSON body: the model, whether it streams
//! and asked for usage, and what the token estimate needs (`tokens::estimate`).
//!
//! Why not `serde_json::Value`: building the whole tree (a map per object, a string per
//! text) cost more on the hot path than the limiter, and its size grows with the body's
//! element count (a 4 MB list of zeros took 330 MB). [`RequestFields`] reads the body in
//! one pass and keeps only a few slices of it (`RawValue`); everything else is skipped,
//! and lists are walked element by element where they are read (`walk`). It accepts
//! exactly what `Value` accepts (`scan` checks what skipping does not) and reads what
//! `Value` reads: the last of repeated names, and a field of an unexpected type counts
//! as absent (the upstream judges its own fields), except `stream` and
//! `stream_options`, whose type decides how keygate meters the answer.

mod scan;
pub mod walk;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{
    de::{IgnoredAny, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::value::RawValue;

pub use self::{scan::MAX_DEPTH, walk::string};
use super::{Endpoint, InferenceError};

/// The members of an inference request keygate reads, as slices of the body. Raw values
/// keep `null` (a present `"model": null` is not an absent model).
#[derive(Default)]
pub struct RequestFields<'a> {
    pub model: Option<&'a RawValue>,
    pub stream: Option<&'a RawValue>,
    pub stream_options: Option<&'a RawValue>,
    pub max_tokens: Option<&'a RawValue>,
    pub max_completion_tokens: Option<&'a RawValue>,
    pub messages: Option<&'a RawValue>,
    /// Anthropic's `system` prompt and `tools` (counted in a Messages estimate).
    pub system: Option<&'a RawValue>,
    pub tools: Option<&'a RawValue>,
    pub prompt: Option<&'a RawValue>,
    pub input: Option<&'a RawValue>,
}

/// Why a body cannot be read.
#[derive(Debug)]
pub enum BodyError {
    NotUtf8,
    TooDeep,
    LoneSurrogate,
    NumberOutOfRange,
    /// Valid JSON of another type than an object.
    NotAnObject,
    Invalid(serde_json::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::NotUtf8 => f.write_str("request body is not valid JSON: it is not UTF-8"),
            BodyError::TooDeep => write!(
                f,
                "request body nests arrays and objects too deeply: the nesting limit is {MAX_DEPTH} levels"
            ),
            BodyError::LoneSurrogate => f.write_str(
                "request body is not valid JSON: a \\u escape is a lone UTF-16 surrogate",
            ),
            BodyError::NumberOutOfRange => f.write_str(
                "request body is not valid JSON: a number is too large for a 64-bit float",
            ),
            BodyError::NotAnObject => f.write_str("request body must be a JSON object"),
            BodyError::Invalid(err) => write!(f, "request body is not valid JSON: {err}"),
        }
    }
}

impl<'a> RequestFields<'a> {
    /// The fields of `json`, if it is a JSON object `serde_json::Value` would accept.
    pub fn parse(json: &'a [u8]) -> Result<RequestFields<'a>, BodyError> {
        let text = std::str::from_utf8(json).map_err(|_| BodyError::NotUtf8)?;
        scan::check(text).map_err(|refusal| match refusal {
            scan::Refusal::TooDeep => BodyError::TooDeep,
            scan::Refusal::LoneSurrogate => BodyError::LoneSurrogate,
            scan::Refusal::NumberOutOfRange => BodyError::NumberOutOfRange,
        })?;
        match serde_json::from_str(text) {
            Ok(fields) => Ok(fields),
            // Another type: the reader refuses it at once, so see whether it is JSON.
            Err(err) if err.classify() == serde_json::error::Category::Data => {
                match serde_json::from_str::<IgnoredAny>(text) {
                    Ok(_) => Err(BodyError::NotAnObject),
                    Err(err) => Err(BodyError::Invalid(err)),
                }
            }
            Err(err) => Err(BodyError::Invalid(err)),
        }
    }

    pub fn stream(&self) -> bool {
        self.stream.is_some_and(|raw| raw.get() == "true")
    }

    /// `stream_options.include_usage`, when it is `true`.
    pub fn wants_usage(&self) -> bool {
        self.stream_options
            .and_then(|options| walk::member(options, "include_usage"))
            .is_some_and(|raw| raw.get() == "true")
    }

    /// `max_completion_tokens`, else `max_tokens`, when a whole non-negative number.
    pub fn max_output_tokens(&self) -> Option<u64> {
        [self.max_completion_tokens, self.max_tokens]
            .into_iter()
            .flatten()
            .find_map(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// `stream` and `stream_options` must be of their type (or `null`), as OpenAI
    /// requires: keygate meters a stream differently, and a lenient upstream that
    /// streams on `"stream": 1` would otherwise stream unmetered.
    fn check_types(&self) -> Result<(), InferenceError> {
        if let Some(raw) = self
            .stream
            .filter(|raw| !matches!(raw.get(), "true" | "false" | "null"))
        {
            return Err(wrong_type("stream", "a boolean", raw));
        }
        if let Some(raw) = self
            .stream_options
            .filter(|raw| raw.get() != "null" && !raw.get().starts_with('{'))
        {
            return Err(wrong_type("stream_options", "an object", raw));
        }
        Ok(())
    }

    /// Anthropic requires `max_tokens` on `/v1/messages`: refused here, before admission,
    /// as Anthropic refuses it (the estimate needs it too).
    fn check_messages(&self) -> Result<(), InferenceError> {
        let valid = self
            .max_tokens
            .and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok())
            .is_some_and(|n| n >= 1);
        if valid {
            return Ok(());
        }
        let message = match self.max_tokens {
            None => "`max_tokens` is required: the most tokens to generate (a whole number >= 1)"
                .to_owned(),
            Some(raw) => format!(
                "`max_tokens` must be a whole number >= 1, not {}",
                truncated(raw.get())
            ),
        };
        Err(InferenceError::InvalidRequest {
            message,
            param: Some("max_tokens".into()),
        })
    }
}

/// At most 40 characters of `text`, for a message.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn wrong_type(param: &str, expected: &str, raw: &RawValue) -> InferenceError {
    let got = match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    };
    InferenceError::InvalidRequest {
        message: format!("invalid type for `{param}`: expected {expected}, but got {got}"),
        param: Some(param.into()),
    }
}

/// The body's fields, or `None` for an empty body. Inference bodies must be JSON objects;
/// a pass-through body may be any JSON.
pub fn read_fields(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Option<RequestFields<'_>>, InferenceError> {
    let passthrough = endpoint == Endpoint::Other;
    if body.is_empty() {
        return if passthrough {
            Ok(None)
        } else {
            Err(invalid(BodyError::NotAnObject))
        };
    }
    match RequestFields::parse(body) {
        Ok(fields) => {
            fields.check_types()?;
            if endpoint == Endpoint::Messages {
                fields.check_messages()?;
            }
            Ok(Some(fields))
        }
        Err(BodyError::NotAnObject) if passthrough => Ok(None),
        Err(err) => Err(invalid(err)),
    }
}

fn invalid(err: BodyError) -> InferenceError {
    InferenceError::InvalidRequest {
        message: err.to_string(),
        param: None,
    }
}

/// The streamed request's body with `stream_options.include_usage` set; `stream_options`
/// is the body's own (from its `RequestFields`). The body is passed on byte for byte
/// but for that: without `stream_options`, the member is added first; otherwise that
/// value alone is rewritten, as `{<its other members>,"include_usage":true}`.
pub fn usage_requested(
    body: &Bytes,
    stream_options: Option<&RawValue>,
) -> Result<Bytes, InferenceError> {
    rewrite(body, Some(stream_options), None)
}

/// `body` changed for one upstream, byte for byte but for what is asked: `usage`
/// (`Some(the body's stream_options)`) sets `stream_options.include_usage` as
/// [`usage_requested`] says; `model` (`(the body's model value, the new name)`) replaces
/// the `model` member's value with the new name (`model_mapping`).
pub fn rewrite(
    body: &Bytes,
    usage: Option<Option<&RawValue>>,
    model: Option<(&RawValue, &str)>,
) -> Result<Bytes, InferenceError> {
    let mut edits: Vec<Edit> = Vec::with_capacity(2);
    if let Some(stream_options) = usage {
        let edit = match stream_options {
            None => usage_added(body),
            Some(options) => options_rewritten(body, options),
        };
        edits.push(edit.ok_or_else(|| InferenceError::InvalidRequest {
            message: "cannot add `stream_options.include_usage` to this body".into(),
            param: Some("stream_options".into()),
        })?);
    }
    if let Some((raw, name)) = model {
        let at = slice_range(body, raw).ok_or_else(|| InferenceError::InvalidRequest {
            message: "cannot rewrite `model` in this body".into(),
            param: Some("model".into()),
        })?;
        let name = serde_json::to_vec(name).unwrap_or_default();
        edits.push(Edit {
            at,
            with: With::Bytes(name),
        });
    }
    apply(body, &mut edits).ok_or_else(|| InferenceError::InvalidRequest {
        message: "cannot add `stream_options.include_usage` to this body".into(),
        param: Some("stream_options".into()),
    })
}

const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

/// A change to a body: the bytes at `at` replaced (an insertion when `at` is empty).
struct Edit<'a> {
    at: std::ops::Range<usize>,
    with: With<'a>,
}

enum With<'a> {
    Bytes(Vec<u8>),
    /// The object `stream_options` (or `null`) less any `include_usage`, plus
    /// `"include_usage":true`: written straight into the new body, so that a large
    /// `stream_options` is not copied twice (tests/alloc_bound.rs).
    UsageOptions(&'a RawValue),
}

/// `body` with `edits` (which do not overlap) made; `None` when a `stream_options` to
/// rewrite is not an object.
fn apply(body: &[u8], edits: &mut [Edit<'_>]) -> Option<Bytes> {
    edits.sort_by_key(|edit| edit.at.start);
    // The new body's size (at most, for `stream_options`: its `include_usage` goes).
    let size = edits.iter().fold(body.len(), |size, edit| {
        let added = match &edit.with {
            With::Bytes(bytes) => bytes.len(),
            With::UsageOptions(_) => edit.at.len() + INCLUDE_USAGE.len() + 2,
        };
        size - edit.at.len() + added
    });
    let mut out = BytesMut::with_capacity(size);
    let mut from = 0;
    for edit in edits.iter() {
        out.put_slice(&body[from..edit.at.start]);
        match &edit.with {
            With::Bytes(bytes) => out.put_slice(bytes),
            With::UsageOptions(options) => {
                out.put_u8(b'{');
                if options.get() != "null" {
                    let is_object = walk::members(options, |name, value| {
                        if !walk::name_is(name, "include_usage") {
                            out.put_slice(name.get().as_bytes());
                            out.put_u8(b':');
                            out.put_slice(value.get().as_bytes());
                            out.put_u8(b',');
                        }
                    });
                    if !is_object {
                        return None;
                    }
                }
                out.put_slice(INCLUDE_USAGE);
                out.put_u8(b'}');
            }
        }
        from = edit.at.end;
    }
    out.put_slice(&body[from..]);
    Some(out.freeze())
}

/// Where `raw` (a slice of `body`) lies in it.
pub(super) fn slice_range(body: &[u8], raw: &RawValue) -> Option<std::ops::Range<usize>> {
    let raw = raw.get().as_bytes();
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.len();
    (body.get(start..end)? == raw).then_some(start..end)
}

/// `body` (a JSON object without a `stream_options` member) with
/// `"stream_options":{"include_usage":true}` added as its first member.
pub fn with_usage_requested(body: &[u8]) -> Option<Bytes> {
    let edit = usage_added(body)?;
    apply(body, &mut [edit])
}

/// `"stream_options":{"include_usage":true}` added as the first member of `body` (a JSON
/// object without a `stream_options` member).
fn usage_added(body: &[u8]) -> Option<Edit<'static>> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let empty = body[open + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut with = Vec::with_capacity(INCLUDE_USAGE.len() + 20);
    with.extend_from_slice(br#""stream_options":{"#);
    with.extend_from_slice(INCLUDE_USAGE);
    with.push(b'}');
    if !empty {
        with.push(b',');
    }
    Some(Edit {
        at: open + 1..open + 1,
        with: With::Bytes(with),
    })
}

/// `options` (a slice of `body`: an object or `null`) replaced by the same members less
/// any `include_usage`, plus `"include_usage":true`.
fn options_rewritten<'a>(body: &[u8], options: &'a RawValue) -> Option<Edit<'a>> {
    Some(Edit {
        at: slice_range(body, options)?,
        with: With::UsageOptions(options),
    })
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

/// A member name escaped as much as JSON allows is six bytes a character: longer
/// literals are none of the names below (the longest, `max_completion_tokens`, has 21).
const LONGEST_NAME_LITERAL: usize = 21 * 6 + 2;

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
                // Names are taken raw: serde_json would unescape each into its scratch
                // buffer, which grows to twice the longest name.
                while let Some(name) = map.next_key::<&'de RawValue>()? {
                    let name = (name.get().len() <= LONGEST_NAME_LITERAL)
                        .then(|| walk::string(name))
                        .flatten();
                    let raw = match name.as_deref() {
                        Some("model") => &mut fields.model,
                        Some("stream") => &mut fields.stream,
                        Some("stream_options") => &mut fields.stream_options,
                        Some("max_tokens") => &mut fields.max_tokens,
                        Some("max_completion_tokens") => &mut fields.max_completion_tokens,
                        Some("messages") => &mut fields.messages,
                        Some("system") => &mut fields.system,
                        Some("tools") => &mut fields.tools,
                        Some("prompt") => &mut fields.prompt,
                        Some("input") => &mut fields.input,
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

#[cfg(test)]
mod tests;
