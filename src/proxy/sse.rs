//! Server-sent events as OpenAI streams them: split the upstream's bytes into whole events
//! (each passed on as soon as its blank-line terminator arrives, never the whole
//! response), read each chunk's `usage` and text, and recognise the extra usage chunk
//! that keygate asked for on the client's behalf.

use std::{borrow::Cow, sync::LazyLock};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::limits::TokenUsage;

/// `usage` as OpenAI reports it (chat, completions, embeddings).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct UsageFields {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl From<UsageFields> for TokenUsage {
    fn from(usage: UsageFields) -> Self {
        TokenUsage {
            input: usage.prompt_tokens,
            output: usage.completion_tokens,
        }
    }
}

/// The `usage` of a whole JSON answer (`None` when it has none, or it is `null`).
pub fn answer_usage(json: &[u8]) -> Option<UsageFields> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Option<UsageFields>,
    }
    if let Some(usage) = trailing_usage(json) {
        return usage;
    }
    // serde reads a derived struct from an array too (by position): objects only.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    super::request::from_json::<Answer>(json).ok()?.usage
}

/// `usage` read straight from the end of a JSON object whose last member it is — where
/// OpenAI and compatible servers put it — without walking the rest of the answer.
/// `None` when it is not found there that way (the caller parses the whole answer).
///
/// Why this is sound: in JSON text a `"` inside a string is always escaped, so `"usage"`
/// right after `{` or `,` (spaces aside) and before `:` is a member name; and when its
/// value is followed by nothing but the closing `}` of the document, that `}` closes the
/// object holding it, so it is a member of the top-level object.
fn trailing_usage(json: &[u8]) -> Option<Option<UsageFields>> {
    let end = json.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if json[end] != b'}' {
        return None;
    }
    static USAGE: LazyLock<memchr::memmem::FinderRev<'static>> =
        LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));
    let name = USAGE.rfind(&json[..end])?;
    let before = json[..name]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    if !matches!(json[before], b'{' | b',') {
        return None;
    }
    let after = name + b"\"usage\"".len();
    let colon = after
        + json[after..end]
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    if json[colon] != b':' {
        return None;
    }
    let rest = std::str::from_utf8(&json[colon + 1..end]).ok()?;
    let mut value = serde_json::Deserializer::from_str(rest);
    let usage = Option::<UsageFields>::deserialize(&mut value).ok()?;
    value.end().ok()?;
    Some(usage)
}

/// Splits a byte stream into whole SSE events.
#[derive(Default)]
pub struct EventSplitter {
    buffer: BytesMut,
}

impl EventSplitter {
    /// Adds bytes; returns the events completed by them, each with its terminator.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Bytes>) {
        self.buffer.extend_from_slice(chunk);
        while let Some(end) = event_end(&self.buffer) {
            out.push(self.buffer.split_to(end).freeze());
        }
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// End (exclusive) of the first complete event: after `\n\n` or `\r\n\r\n`.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buffer.len() {
        if buffer[i] == b'\n' && buffer[i + 1] == b'\n' {
            return Some(i + 2);
        }
        if buffer[i] == b'\r'
            && buffer[i + 1] == b'\n'
            && buffer.get(i + 2) == Some(&b'\r')
            && buffer.get(i + 3) == Some(&b'\n')
        {
            return Some(i + 4);
        }
        i += 1;
    }
    None
}

/// What one event says that accounting needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventInfo {
    pub done: bool,
    pub usage: Option<UsageFields>,
    /// The chunk has `usage` and no choices: the extra chunk `include_usage` adds.
    pub usage_only: bool,
    /// Generated text in this chunk (for counting when no usage arrives).
    pub text: String,
}

/// Borrowed from the event where the JSON has no escapes, so a chunk costs no allocation.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// What one event says; its generated text, if any, goes to `text` piece by piece.
pub fn inspect_into(event: &[u8], mut text: impl FnMut(&str)) -> EventInfo {
    let data = event_data(event);
    if data.is_empty() {
        return EventInfo::default();
    }
    if data.trim_ascii() == b"[DONE]" {
        return EventInfo {
            done: true,
            ..EventInfo::default()
        };
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(&data) else {
        return EventInfo::default();
    };
    for choice in &chunk.choices {
        if let Some(content) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
            text(content);
        }
        if let Some(piece) = &choice.text {
            text(piece);
        }
    }
    EventInfo {
        done: false,
        usage_only: chunk.usage.is_some() && chunk.choices.is_empty(),
        usage: chunk.usage,
        text: String::new(),
    }
}

/// [`inspect_into`] with the text collected into `EventInfo::text`.
pub fn inspect(event: &[u8]) -> EventInfo {
    let mut text = String::new();
    let info = inspect_into(event, |piece| text.push_str(piece));
    EventInfo { text, ..info }
}

/// The event's `data` field: its `data:` lines joined by newlines (borrowed when there is
/// one line, as in every OpenAI chunk).
fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    let mut data: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut lines = 0;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        lines += 1;
        if lines == 1 {
            data = Cow::Borrowed(rest);
        } else {
            let joined = data.to_mut();
            joined.push(b'\n');
            joined.extend_from_slice(rest);
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_end_of_an_answer_or_by_a_full_parse() {
        let usage = |p, c| {
            Some(UsageFields {
                prompt_tokens: p,
                completion_tokens: c,
            })
        };
        // Where OpenAI puts it: read from the end.
        let last = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}
"#;
        assert_eq!(trailing_usage(last), Some(usage(3, 4)));
        assert_eq!(answer_usage(last), usage(3, 4));
        assert_eq!(trailing_usage(br#"{"usage": null }"#), Some(None));
        // Anywhere else, or nested, or only inside a string: the full parse decides.
        for (json, expected) in [
            (
                &br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"model":"m"}"#[..],
                usage(1, 2),
            ),
            (br#"{"choices":[],"x":{"usage":{"prompt_tokens":9}}}"#, None),
            (br#"{"text":"\"usage\":{\"prompt_tokens\":9}}"}"#, None),
            (br#"[{"usage":{"prompt_tokens":9}}]"#, None),
            (
                br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}}"#,
                None,
            ),
            (b"not json", None),
        ] {
            assert_eq!(
                trailing_usage(json),
                None,
                "{}",
                String::from_utf8_lossy(json)
            );
            assert_eq!(
                answer_usage(json),
                expected,
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn splits_events_across_arbitrary_chunk_boundaries() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut splitter = EventSplitter::default();
            let mut events = Vec::new();
            splitter.push(&stream[..cut], &mut events);
            splitter.push(&stream[cut..], &mut events);
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(inspect(&events[0]).text, "Hi");
            assert!(inspect(&events[1]).done);
            assert!(splitter.finish().is_none());
        }
    }

    #[test]
    fn crlf_events_and_leftovers() {
        let mut splitter = EventSplitter::default();
        let mut events = Vec::new();
        splitter.push(b"data: [DONE]\r\n\r\ndata: {", &mut events);
        assert_eq!(events.len(), 1);
        assert!(inspect(&events[0]).done);
        assert_eq!(splitter.finish().as_deref(), Some(&b"data: {"[..]));
    }

    #[test]
    fn recognises_the_usage_only_chunk() {
        let info = inspect(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n");
        assert!(info.usage_only);
        assert_eq!(
            info.usage,
            Some(UsageFields {
                prompt_tokens: 12,
                completion_tokens: 7
            })
        );
        let info =
            inspect(b"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert!(!info.usage_only);
        assert_eq!(info.text, "a");
        assert_eq!(inspect(b": keep-alive\n\n"), EventInfo::default());
    }

    #[test]
    fn multi_line_data_and_escaped_text() {
        let info =
            inspect(b"data: {\"choices\":\ndata: [{\"delta\":{\"content\":\"a\\\"b\\n\"}}]}\n\n");
        assert_eq!(info.text, "a\"b\n");
        assert!(!info.done && info.usage.is_none());
    }
}
