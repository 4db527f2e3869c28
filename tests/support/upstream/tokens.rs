//! The mock's deterministic token formulas (see the table in `mod.rs`), public so that
//! tests can compute what keygate must record.

use super::*;

// ---------------------------------------------------------------------------------------
// Token formulas
// ---------------------------------------------------------------------------------------

/// Number of whitespace-separated words.
pub fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Prompt tokens the mock reports for a request body, whatever the endpoint:
/// chat (`messages`): Σ (3 + words of the message's text content);
/// legacy completions (`prompt`) and embeddings (`input`): see [`text_input_tokens`].
pub fn prompt_tokens_for(body: &Value) -> u64 {
    if let Some(messages) = body.get("messages") {
        chat_prompt_tokens(messages)
    } else if let Some(prompt) = body.get("prompt") {
        text_input_tokens(prompt)
    } else if let Some(input) = body.get("input") {
        text_input_tokens(input)
    } else {
        0
    }
}

/// Σ over messages of (`PER_MESSAGE_TOKENS` + words of the text content).
pub fn chat_prompt_tokens(messages: &Value) -> u64 {
    messages
        .as_array()
        .map(|msgs| {
            msgs.iter()
                .map(|m| PER_MESSAGE_TOKENS + content_words(m.get("content")))
                .sum()
        })
        .unwrap_or(0)
}

pub(super) fn content_words(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => words(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => words(s),
                _ => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(words)
                    .unwrap_or(0),
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of a legacy `prompt` or embeddings `input`: a string → its words; an array of
/// strings → Σ words; an array of integers (token ids) → its length; an array of arrays
/// of integers → Σ lengths.
pub fn text_input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => words(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => words(s),
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Completion tokens (= reply words) per choice: min(limit, 7), limit =
/// `max_completion_tokens` else `max_tokens` else 7.
pub fn completion_words_per_choice(body: &Value) -> u64 {
    let limit = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_COMPLETION_TOKENS);
    limit.min(DEFAULT_COMPLETION_TOKENS)
}

/// Number of choices: `n` (default 1) for chat, `n` × prompts for legacy completions.
pub fn choices_for(body: &Value) -> u64 {
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    match body.get("prompt") {
        Some(prompt) if body.get("messages").is_none() => n * prompt_count(prompt),
        _ => n,
    }
}

pub(super) fn prompt_count(prompt: &Value) -> u64 {
    match prompt {
        Value::Array(items) if items.iter().all(Value::is_number) => 1,
        Value::Array(items) => items.len() as u64,
        _ => 1,
    }
}

/// Total completion tokens reported: per-choice words × choices (0 for embeddings).
pub fn completion_tokens_for(body: &Value) -> u64 {
    if body.get("messages").is_none() && body.get("prompt").is_none() {
        return 0;
    }
    completion_words_per_choice(body) * choices_for(body)
}

/// `finish_reason` the mock reports: `"length"` when the limit cut the reply, else `"stop"`.
pub fn finish_reason_for(body: &Value) -> &'static str {
    if completion_words_per_choice(body) < DEFAULT_COMPLETION_TOKENS {
        "length"
    } else {
        "stop"
    }
}

/// The first `n` words of [`REPLY_WORDS`], joined by single spaces.
pub fn reply_text(n: usize) -> String {
    REPLY_WORDS[..n.min(REPLY_WORDS.len())].join(" ")
}

/// The reply (per choice) for a request body.
pub fn reply_for(body: &Value) -> String {
    reply_text(completion_words_per_choice(body) as usize)
}

/// Expected usage numbers for a request, as the mock reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

pub fn expected_usage(body: &Value) -> ExpectedUsage {
    let prompt_tokens = prompt_tokens_for(body);
    let completion_tokens = completion_tokens_for(body);
    ExpectedUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

/// A minimal chat request body: one user message `content`, optional stream.
pub fn chat_request(model: &str, content: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    });
    if stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

/// The `data:` payloads of an SSE text, in order (`"[DONE]"` included verbatim).
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
