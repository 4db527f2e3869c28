//! What keygate reads of Anthropic's Messages API: the prompt estimate of a request
//! (`system`, `messages`, `tools`), the `usage` of a whole answer, and the usage and text
//! of each streamed event (`message_start` carries the prompt's, the last
//! `message_delta` the output's). The OpenAI counterparts are `tokens` and `sse`.
//!
//! Anthropic reports `input_tokens` without the prompt-cache tokens, which come apart as
//! `cache_creation_input_tokens` and `cache_read_input_tokens`: limits count all three as
//! input, prices apply each its own rate (docs/decisions.md).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{value::RawValue, Value};

use super::{
    request::{walk, RequestFields},
    tokens::count,
};

/// Tokens an image or a document block is estimated at without decoding it: Anthropic's
/// own ceiling for an image (about 1.15 megapixels / 750).
pub const IMAGE_TOKENS: u64 = 1600;
/// Per message and per reply, as in the chat estimate.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;

/// The prompt's tokens: `system` (a string or text blocks), each message's role and
/// content blocks, and the `tools` definitions (their JSON text). Lists are walked element
/// by element, as the chat estimate does: nothing grows with the body before admission.
pub fn prompt_tokens(body: &RequestFields<'_>) -> u64 {
    let mut total = body.system.map_or(0, content_tokens);
    total += body.tools.map_or(0, |tools| count(tools.get()));
    if let Some(messages) = body.messages {
        let mut in_messages = TOKENS_PER_REPLY;
        let is_list = walk::items(messages, |message| {
            in_messages += TOKENS_PER_MESSAGE;
            let (mut content, mut role) = (None, None);
            walk::members(message, |member, value| {
                if walk::name_is(member, "content") {
                    content = Some(value);
                } else if walk::name_is(member, "role") {
                    role = Some(value);
                }
            });
            in_messages += content.map_or(0, content_tokens);
            in_messages += role.and_then(walk::string).map_or(0, |role| count(&role));
        });
        if is_list {
            total += in_messages;
        }
    }
    total
}

/// A string, or a list of content blocks.
fn content_tokens(content: &RawValue) -> u64 {
    if let Some(text) = walk::string(content) {
        return count(&text);
    }
    let mut total = 0;
    walk::items(content, |block| total += block_tokens(block, true));
    total
}

/// One content block: `text` and `thinking` by their text, `tool_use` by its name and
/// input's JSON, `tool_result` by its content (one level of blocks), images and documents
/// at [`IMAGE_TOKENS`].
fn block_tokens(block: &RawValue, nested: bool) -> u64 {
    let (mut kind, mut text, mut input, mut name, mut content) = (None, None, None, None, None);
    walk::members(block, |member, value| {
        if walk::name_is(member, "type") {
            kind = Some(value);
        } else if walk::name_is(member, "text") || walk::name_is(member, "thinking") {
            text = Some(value);
        } else if walk::name_is(member, "input") {
            input = Some(value);
        } else if walk::name_is(member, "name") {
            name = Some(value);
        } else if walk::name_is(member, "content") {
            content = Some(value);
        }
    });
    let kind = kind.and_then(walk::string);
    match kind.as_deref() {
        Some("image" | "document") => IMAGE_TOKENS,
        Some("tool_result") if nested => content.map_or(0, |content| {
            if let Some(text) = walk::string(content) {
                return count(&text);
            }
            let mut total = 0;
            walk::items(content, |inner| total += block_tokens(inner, false));
            total
        }),
        _ => {
            let text = text.and_then(walk::string).map_or(0, |text| count(&text));
            let name = name.and_then(walk::string).map_or(0, |name| count(&name));
            text + name + input.map_or(0, |input| count(input.get()))
        }
    }
}

/// `usage` as Anthropic reports it. A field absent (or `null`) is `None`: a
/// `message_delta` may report only `output_tokens`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

/// A whole answer's `usage` and, when it has none, its generated text's token count.
pub fn answer_usage(json: &[u8]) -> (Option<Usage>, u64) {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        content: Option<Value>,
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return (None, 0);
    }
    let Ok(answer) = super::request::from_json::<Answer>(json) else {
        return (None, 0);
    };
    if answer.usage.is_some() {
        return (answer.usage, 0);
    }
    let mut generated = 0;
    if let Some(Value::Array(blocks)) = &answer.content {
        for block in blocks {
            for member in ["text", "thinking"] {
                generated += block.get(member).and_then(Value::as_str).map_or(0, count);
            }
            if let Some(input) = block.get("input") {
                generated += count(&input.to_string());
            }
        }
    }
    (None, generated)
}

/// What one streamed event says that accounting needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventUsage {
    /// `message_start`'s `message.usage`: the prompt's tokens.
    pub start: Option<Usage>,
    /// `message_delta`'s `usage`: the output so far (the last one is the total).
    pub delta: Option<Usage>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// A `content_block_delta`'s generated text (all of it counts when no usage arrives).
#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
}

/// What one SSE event (`event: …` and `data: {…}` lines) says; its generated text goes
/// to `text`. Events keygate does not meter (`ping`, `content_block_start`, …) say nothing.
pub fn inspect_event(event: &[u8], mut text: impl FnMut(&str)) -> EventUsage {
    let data = super::sse::event_data(event);
    let Ok(event) = serde_json::from_slice::<Event>(&data) else {
        return EventUsage::default();
    };
    match event.kind.as_ref() {
        "message_start" => EventUsage {
            start: event.message.and_then(|message| message.usage),
            delta: None,
        },
        "message_delta" => EventUsage {
            start: None,
            delta: event.usage,
        },
        "content_block_delta" => {
            if let Some(delta) = &event.delta {
                for piece in [&delta.text, &delta.partial_json, &delta.thinking]
                    .into_iter()
                    .flatten()
                {
                    text(piece);
                }
            }
            EventUsage::default()
        }
        _ => EventUsage::default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proxy::tokens::{estimate, BodyKind};

    #[test]
    fn the_prompt_counts_system_messages_blocks_and_tools() {
        let body = json!({"model": "claude", "max_tokens": 64,
        "system": [{"type": "text", "text": "hello world"}],
        "tools": [{"name": "w"}],
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "hello"}]},
            ]},
        ]});
        let estimate = estimate(BodyKind::Messages, body.to_string().as_bytes());
        let tools = count(&json!([{"name": "w"}]).to_string());
        // system 2 + tools + reply 3 + 2 × (3 + "user" 1) + "hello" 1 + image + "hello" 1
        assert_eq!(estimate.input, 2 + tools + 3 + 8 + 1 + IMAGE_TOKENS + 1);
        assert_eq!(estimate.output, 64);
    }

    #[test]
    fn stream_events_give_their_usage_and_text() {
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":null,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n";
        let info = inspect_event(start, |_| {});
        assert_eq!(
            info.start,
            Some(Usage {
                input_tokens: Some(10),
                output_tokens: Some(1),
                cache_creation_input_tokens: None,
                cache_read_input_tokens: Some(4),
            })
        );
        let mut text = String::new();
        let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(
            inspect_event(delta, |t| text.push_str(t)),
            EventUsage::default()
        );
        assert_eq!(text, "Hi");
        let end = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n";
        assert_eq!(
            inspect_event(end, |_| {})
                .delta
                .and_then(|u| u.output_tokens),
            Some(7)
        );
    }
}
