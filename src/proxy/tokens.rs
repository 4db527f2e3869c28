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
    request::{self, Members},
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
    Members::parse(body)
        .map(|members| estimate_members(kind, &members))
        .unwrap_or_default()
}

/// [`estimate`] of a body already read into its members.
pub fn estimate_members(kind: BodyKind, body: &Members<'_>) -> TokenEstimate {
    let input = match kind {
        BodyKind::Chat => chat_prompt_tokens(body),
        BodyKind::Completion => text_or_list_tokens(body.get("prompt")),
        BodyKind::Embedding => text_or_list_tokens(body.get("input")),
        BodyKind::Other => 0,
    };
    let output = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|field| body.u64(field))
        .unwrap_or(0);
    TokenEstimate { input, output }
}

fn chat_prompt_tokens(body: &Members<'_>) -> u64 {
    let Some(messages) = body.get("messages").and_then(request::items) else {
        return 0;
    };
    let mut total = TOKENS_PER_REPLY;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        let Some(message) = Members::of(message) else {
            continue;
        };
        total += message.get("content").map(content_tokens).unwrap_or(0);
        if let Some(name) = message.str("name") {
            total += count(&name);
        }
        if let Some(role) = message.str("role") {
            total += count(&role);
        }
    }
    total
}

/// `content` is a string or a list of parts (`{"type": "text", "text": …}`); non-text
/// parts (images, audio) are not estimated.
fn content_tokens(content: &RawValue) -> u64 {
    if let Some(text) = request::string(content) {
        return count(&text);
    }
    request::items(content)
        .unwrap_or_default()
        .into_iter()
        .filter_map(Members::of)
        .filter_map(|part| part.str("text"))
        .map(|text| count(&text))
        .sum()
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

    #[test]
    fn completion_tokens_of_an_answer() {
        let answer =
            json!({"choices": [{"message": {"content": "hello world"}}, {"text": "hello"}]});
        assert_eq!(completion_tokens(&answer), 3);
    }
}
