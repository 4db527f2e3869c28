//! Token counting with a real BPE tokenizer (tiktoken's `cl100k_base`): the admission
//! estimate (prompt tokens + `max_tokens`), and the fallback count when an upstream
//! reports no usage or a stream ends early (DESIGN §4–5).
//!
//! One encoding serves every model: the estimate only has to be close, since the
//! upstream's own `usage` settles the real count. The tokenizer is built on first use, so
//! keys without token limits or budgets never pay for it; it is the compact counter in
//! `super::bpe` (~4 MB), not tiktoken-rs (25–45 MB), to keep the gateway's memory small.

use std::sync::OnceLock;

use serde_json::{value::RawValue, Value};

use super::{
    bpe::Cl100k,
    request::{self, Content, Messages, RequestFields},
};
use crate::limits::TokenEstimate;

/// OpenAI's chat format adds about this many tokens per message, and per reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;

fn bpe() -> Option<&'static Cl100k> {
    static BPE: OnceLock<Option<Cl100k>> = OnceLock::new();
    BPE.get_or_init(|| match Cl100k::new() {
        Ok(bpe) => Some(bpe),
        Err(err) => {
            tracing::error!(error = %err, "tokenizer unavailable; counting 1 token per 4 bytes");
            None
        }
    })
    .as_ref()
}

/// Tokens in `text`.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match bpe() {
        Some(bpe) => bpe.count(text) as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Which request shape a body has, for estimating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Chat,
    Completion,
    Embedding,
    Other,
}

/// Prompt tokens of a request body, plus `max_tokens` (or `max_completion_tokens`) as the
/// output estimate when given. A body that is not a JSON object estimates nothing.
pub fn estimate(kind: BodyKind, body: &[u8]) -> TokenEstimate {
    RequestFields::parse(body)
        .map(|fields| estimate_fields(kind, &fields))
        .unwrap_or_default()
}

/// [`estimate`] of a body already read.
pub fn estimate_fields(kind: BodyKind, body: &RequestFields<'_>) -> TokenEstimate {
    let input = match kind {
        BodyKind::Chat => chat_prompt_tokens(body.messages.as_ref()),
        BodyKind::Completion => text_or_list_tokens(body.prompt),
        BodyKind::Embedding => text_or_list_tokens(body.input),
        BodyKind::Other => 0,
    };
    let output = body.max_output_tokens().unwrap_or(0);
    TokenEstimate { input, output }
}

fn chat_prompt_tokens(messages: Option<&Messages<'_>>) -> u64 {
    let Some(Messages::List(messages)) = messages else {
        return 0;
    };
    let mut total = TOKENS_PER_REPLY;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        total += match &message.content {
            Content::Text(text) => count(text),
            // Only text parts are estimated (not images or audio).
            Content::Parts(texts) => texts.iter().map(|text| count(text)).sum(),
            Content::Other => 0,
        };
        total += message.name.as_deref().map_or(0, count);
        total += message.role.as_deref().map_or(0, count);
    }
    total
}

/// A string, a list of strings, or token-id lists (counted by length).
fn text_or_list_tokens(value: Option<&RawValue>) -> u64 {
    let Some(value) = value else {
        return 0;
    };
    if let Some(text) = request::string(value) {
        return count(&text);
    }
    request::items(value)
        .unwrap_or_default()
        .into_iter()
        .map(|item| {
            if let Some(text) = request::string(item) {
                count(&text)
            } else if let Some(ids) = request::items(item) {
                ids.len() as u64
            } else if item
                .get()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit())
            {
                1 // one token id
            } else {
                0
            }
        })
        .sum()
}

/// Output tokens of a complete (non-streamed) answer, when the upstream gave no usage.
pub fn completion_tokens(answer: &Value) -> u64 {
    let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    choices
        .iter()
        .map(|choice| {
            let text = choice
                .get("message")
                .and_then(|m| m.get("content"))
                .and_then(Value::as_str)
                .or_else(|| choice.get("text").and_then(Value::as_str))
                .unwrap_or_default();
            count(text)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_with_a_real_tokenizer() {
        // cl100k_base: "hello world" is two tokens, " hello" one.
        assert_eq!(count("hello world"), 2);
        assert_eq!(count(""), 0);
        assert!(count(&"lorem ipsum ".repeat(100)) >= 200);
    }

    #[test]
    fn counts_exactly_as_tiktoken() {
        let tiktoken = tiktoken_rs::cl100k_base_singleton();
        for text in [
            "hello world",
            "It's a test: 1234567 items, 3.5% off!\n\n  Thanks —\tBob 🙂",
            "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
            "中文 日本語 한국어 кириллица हिन्दी   \r\n",
            &"supercalifragilistic".repeat(50),
        ] {
            assert_eq!(
                count(text),
                tiktoken.encode_ordinary(text).len() as u64,
                "{text:?}"
            );
        }
    }

    #[test]
    fn chat_estimate_counts_messages_and_max_tokens() {
        let body = json!({"model": "m", "max_tokens": 50, "messages": [
            {"role": "user", "content": "hello world"},
            {"role": "system", "content": [{"type": "text", "text": "hello"}]},
        ]});
        let estimate = estimate(BodyKind::Chat, body.to_string().as_bytes());
        // reply 3 + 2 messages × 3 + "hello world" 2 + "hello" 1 + roles "user" 1, "system" 1
        assert_eq!(estimate.input, 3 + 6 + 2 + 1 + 2);
        assert_eq!(estimate.output, 50);
    }

    #[test]
    fn embedding_inputs_of_every_shape() {
        assert_eq!(
            estimate(BodyKind::Embedding, br#"{"input": "hello world"}"#).input,
            2
        );
        assert_eq!(
            estimate(BodyKind::Embedding, br#"{"input": ["hello", "world"]}"#).input,
            2
        );
        assert_eq!(
            // The last of repeated members counts, as in `serde_json::Value`.
            estimate(
                BodyKind::Embedding,
                br#"{"input": [[1, 2, 3]], "input": [[1, 2, 3], 7]}"#
            )
            .input,
            4
        );
    }

    /// The estimate as it was computed from a `serde_json::Value`, kept as the oracle the
    /// one-pass reader must agree with.
    fn reference_estimate(kind: BodyKind, body: &Value) -> TokenEstimate {
        fn content(content: &Value) -> u64 {
            match content {
                Value::String(text) => count(text),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(count)
                    .sum(),
                _ => 0,
            }
        }
        fn list(value: Option<&Value>) -> u64 {
            match value {
                Some(Value::String(text)) => count(text),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => count(text),
                        Value::Array(ids) => ids.len() as u64,
                        Value::Number(_) => 1,
                        _ => 0,
                    })
                    .sum(),
                _ => 0,
            }
        }
        let input = match kind {
            BodyKind::Chat => match body.get("messages").and_then(Value::as_array) {
                None => 0,
                Some(messages) => {
                    TOKENS_PER_REPLY
                        + messages
                            .iter()
                            .map(|m| {
                                TOKENS_PER_MESSAGE
                                    + m.get("content").map(content).unwrap_or(0)
                                    + m.get("name").and_then(Value::as_str).map_or(0, count)
                                    + m.get("role").and_then(Value::as_str).map_or(0, count)
                            })
                            .sum::<u64>()
                }
            },
            BodyKind::Completion => list(body.get("prompt")),
            BodyKind::Embedding => list(body.get("input")),
            BodyKind::Other => 0,
        };
        let output = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|field| body.get(*field).and_then(Value::as_u64))
            .unwrap_or(0);
        TokenEstimate { input, output }
    }

    #[test]
    fn the_one_pass_reader_agrees_with_a_value_on_awkward_bodies() {
        let bodies = [
            r#"{"messages":[{"role":"user","content":"hello world"}],"max_tokens":5}"#,
            r#"{"messages":[{"role":"user","content":"first"}],"messages":[{"role":"user","content":"second one wins"}]}"#,
            r#"{"messages":"not a list","max_tokens":-3,"max_completion_tokens":2.5}"#,
            r#"{"messages":{"role":"user"},"max_completion_tokens":7,"max_tokens":9}"#,
            r#"{"messages":[1,"x",null,[1,2],{"content":5,"name":3,"role":true}]}"#,
            r#"{"messages":[{"content":[{"type":"text","text":"a b"},{"type":"image_url","image_url":{"url":"x"}},"loose",{"text":7},{"text":"c","text":"d e f"}]}]}"#,
            r#"{"messages":[{"content":"esc\"aped \u00e9\n","name":"n\u0061me","role":"sys\ttem","content":"last content"}]}"#,
            r#"{"messages":[{"content":{"text":"objects are not parts"}}],"max_tokens":null}"#,
            r#"{"messages":[]}"#,
            r#"{"prompt":["a b",[1,2,3],7,-1,2.5,null,{"x":1}],"input":"ignored for chat"}"#,
            r#"{"prompt":"hello","prompt":"hello world again"}"#,
            r#"{"input":[[1,2],[3]],"input":"x"}"#,
            r#"{"model":"m","nested":{"messages":[{"content":"not counted"}]},"messages":[{"content":"counted"}]}"#,
        ];
        for body in bodies {
            let value: Value = serde_json::from_str(body).expect("valid JSON");
            for kind in [
                BodyKind::Chat,
                BodyKind::Completion,
                BodyKind::Embedding,
                BodyKind::Other,
            ] {
                assert_eq!(
                    estimate(kind, body.as_bytes()),
                    reference_estimate(kind, &value),
                    "{kind:?} {body}"
                );
            }
        }
        assert_eq!(estimate(BodyKind::Chat, b"[1,2]"), TokenEstimate::default());
        assert_eq!(
            estimate(BodyKind::Chat, b"{\"messages\":"),
            TokenEstimate::default()
        );
    }

    #[test]
    fn completion_tokens_of_an_answer() {
        let answer =
            json!({"choices": [{"message": {"content": "hello world"}}, {"text": "hello"}]});
        assert_eq!(completion_tokens(&answer), 3);
    }
}
