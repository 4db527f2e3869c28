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
/// object holding it, so it is a member of the top-level object. That holds for JSON
/// only: an answer that is not JSON can fool it (`{"a":"\","usage":null}`, where the
/// `,` is inside a string), and its usage is then taken as it reads. Such an answer is
/// the upstream's fault and is passed on as it is; checking every answer is JSON would
/// cost the full walk this function exists to avoid.
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

/// Default for `proxy.max_event_bytes`: the largest SSE event passed on. OpenAI's chunks
/// are well under a kilobyte; a larger event is a broken or hostile upstream.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// An event grew past the cap before its end arrived (or arrived whole but larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

/// Splits a byte stream into whole SSE events. Each byte is looked at once, however the
/// stream is cut into reads, and at most `max` bytes of an unfinished event are kept.
pub struct EventSplitter {
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for an event's end (less the few bytes an end
    /// could start with, which are searched again with the next read).
    scanned: usize,
    max: usize,
    /// Bytes searched so far, for the test that each is searched about once.
    #[cfg(test)]
    searched: usize,
}

impl Default for EventSplitter {
    fn default() -> Self {
        EventSplitter::new(MAX_EVENT_BYTES)
    }
}

impl EventSplitter {
    /// A splitter refusing events longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        EventSplitter {
            buffer: BytesMut::new(),
            scanned: 0,
            max,
            #[cfg(test)]
            searched: 0,
        }
    }

    /// Adds bytes; appends the events they complete to `out`, each with its terminator.
    /// `Err` once an event is larger than the cap (nothing more should be pushed).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Bytes>) -> Result<(), EventTooLarge> {
        self.buffer.extend_from_slice(chunk);
        loop {
            // An end found before the last three bytes is final; one that may still
            // grow into a `\r\n\r\n` is looked for again with the next bytes.
            let from = self.scanned.saturating_sub(3);
            let end = event_end(&self.buffer, from);
            #[cfg(test)]
            {
                self.searched += end.unwrap_or(self.buffer.len()) - from;
            }
            match end {
                Some(end) if end > self.max => return Err(EventTooLarge),
                Some(end) => {
                    out.push(self.buffer.split_to(end).freeze());
                    self.scanned = 0;
                }
                None if self.buffer.len() > self.max => return Err(EventTooLarge),
                None => {
                    self.scanned = self.buffer.len();
                    return Ok(());
                }
            }
        }
    }

    /// The cap on one event, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// End (exclusive) of the first complete event: after `\n\n` or `\r\n\r\n`, whichever
/// starts first. Only ends whose last `\n` is at or after `from` are looked for.
fn event_end(buffer: &[u8], from: usize) -> Option<usize> {
    let start = from.min(buffer.len());
    for newline in memchr::memchr_iter(b'\n', &buffer[start..]) {
        let at = start + newline;
        match buffer.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r')
                if at > 0 && buffer[at - 1] == b'\r' && buffer.get(at + 2) == Some(&b'\n') =>
            {
                return Some(at + 3)
            }
            _ => {}
        }
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

/// A delta's generated text: all of it counts when no usage arrives.
#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

impl Delta<'_> {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let calls = self.tool_calls.iter().flatten();
        let arguments = calls
            .filter_map(|call| call.function.as_ref())
            .chain(&self.function_call)
            .filter_map(|function| function.arguments.as_deref());
        [&self.content, &self.reasoning_content, &self.refusal]
            .into_iter()
            .filter_map(|text| text.as_deref())
            .chain(arguments)
    }
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
        for piece in choice.delta.iter().flat_map(Delta::texts) {
            text(piece);
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
pub(super) fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
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
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// The splitter as it was before it kept its place: rescans from the first byte.
    fn naive_split(stream: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut rest = stream;
        let mut events = Vec::new();
        'events: loop {
            for i in 0..rest.len().saturating_sub(1) {
                let end = if rest[i..].starts_with(b"\n\n") {
                    i + 2
                } else if rest[i..].starts_with(b"\r\n\r\n") {
                    i + 4
                } else {
                    continue;
                };
                events.push(rest[..end].to_vec());
                rest = &rest[end..];
                continue 'events;
            }
            return (events, rest.to_vec());
        }
    }

    fn split(
        stream: &[u8],
        cuts: &[usize],
        max: usize,
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>), EventTooLarge> {
        let mut splitter = EventSplitter::new(max);
        let mut events = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            let cut = cut.clamp(at, stream.len());
            splitter.push(&stream[at..cut], &mut events)?;
            at = cut;
        }
        let rest = splitter
            .finish()
            .map(|rest| rest.to_vec())
            .unwrap_or_default();
        Ok((
            events.into_iter().map(|event| event.to_vec()).collect(),
            rest,
        ))
    }

    proptest! {
        /// However the stream is cut into reads, the events are the naive splitter's.
        #[test]
        fn splits_as_the_naive_splitter(
            stream in proptest::collection::vec(prop::sample::select(b"\r\nda:x ".to_vec()), 0..200),
            mut cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            cuts.sort_unstable();
            prop_assert_eq!(split(&stream, &cuts, 1 << 20).ok(), Some(naive_split(&stream)));
        }

        /// Past the cap the splitter refuses, and only then.
        #[test]
        fn refuses_exactly_the_events_over_the_cap(
            stream in proptest::collection::vec(prop::sample::select(b"\r\nab".to_vec()), 0..120),
            max in 1usize..40,
            mut cuts in proptest::collection::vec(0usize..120, 0..6),
        ) {
            cuts.sort_unstable();
            let (events, rest) = naive_split(&stream);
            let too_large = events.iter().any(|event| event.len() > max) || rest.len() > max;
            prop_assert_eq!(split(&stream, &cuts, max).is_err(), too_large);
        }

        /// `usage` read from the end agrees with a full parse whenever it answers.
        #[test]
        fn trailing_usage_agrees_with_a_full_parse(
            head in "\\{(\"[a-z]{1,3}\":(1|\"[a-z \\\\\"]{0,4}\"|\\{\\}),){0,3}",
            usage in "(null|\\{\"prompt_tokens\":[0-9]{1,3}(,\"completion_tokens\":[0-9]{1,3})?\\})",
            tail in "(\\}|\\} |,\"x\":1\\}|\\}\\}|)",
            quoted in any::<bool>(),
        ) {
            let name = if quoted { "\"usage\"" } else { "\"usage\\\"\"" };
            let json = format!("{head}{name}:{usage}{tail}");
            // On JSON (what the argument covers), both agree with the full parse.
            let Ok(value) = serde_json::from_str::<Value>(&json) else {
                return Ok(());
            };
            let full = value.get("usage").and_then(|usage| {
                serde_json::from_value::<Option<UsageFields>>(usage.clone()).ok().flatten()
            });
            if let Some(fast) = trailing_usage(json.as_bytes()) {
                prop_assert_eq!(fast, full);
            }
            if value.is_object() {
                prop_assert_eq!(answer_usage(json.as_bytes()), full);
            }
        }
    }

    /// Found by `trailing_usage_agrees_with_a_full_parse`: on text that is not JSON the
    /// end can look like a member it is not (documented on `trailing_usage`).
    #[test]
    fn an_answer_that_is_not_json_is_read_as_it_reads() {
        let broken = br#"{"a":"\","usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        assert!(serde_json::from_slice::<Value>(broken).is_err());
        assert_eq!(
            answer_usage(broken),
            Some(UsageFields {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn each_byte_is_searched_about_once() {
        // One 8 MiB event in 8 KiB reads: linear, not quadratic.
        let mut splitter = EventSplitter::new(16 << 20);
        let mut events = Vec::new();
        let read = [b'x'; 8192];
        for _ in 0..1024 {
            splitter.push(&read, &mut events).expect("under the cap");
        }
        splitter.push(b"\n\n", &mut events).expect("under the cap");
        assert_eq!(events.len(), 1);
        assert!(
            splitter.searched <= (8 << 20) + 1025 * 3 + 2,
            "{}",
            splitter.searched
        );
    }

    #[test]
    fn an_event_over_the_cap_is_refused_before_it_is_all_buffered() {
        let mut splitter = EventSplitter::new(1024);
        let mut events = Vec::new();
        assert_eq!(splitter.push(b"data: ok\n\n", &mut events), Ok(()));
        assert_eq!(splitter.push(&[b'x'; 1000], &mut events), Ok(()));
        assert_eq!(splitter.push(&[b'x'; 100], &mut events), Err(EventTooLarge));
        assert_eq!(events.len(), 1);
        // An event arriving whole, but too large, is refused too.
        let mut splitter = EventSplitter::new(1024);
        let mut big = vec![b'x'; 2000];
        big.extend_from_slice(b"\n\n");
        assert_eq!(splitter.push(&big, &mut events), Err(EventTooLarge));
    }

    #[test]
    fn reasoning_refusals_and_tool_arguments_are_generated_text() {
        let info = inspect(br#"data: {"choices":[{"delta":{"reasoning_content":"a","refusal":"b","tool_calls":[{"index":0,"function":{"arguments":"c"}},{"index":1}],"function_call":{"arguments":"d"},"content":"e"}}]}

"#);
        assert_eq!(info.text, "eabcd");
    }

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
            splitter
                .push(&stream[..cut], &mut events)
                .expect("small events");
            splitter
                .push(&stream[cut..], &mut events)
                .expect("small events");
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
        splitter
            .push(b"data: [DONE]\r\n\r\ndata: {", &mut events)
            .expect("small events");
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
