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
    request::{walk, RequestFields},
};
use crate::limits::TokenEstimate;

/// OpenAI's chat format adds about this many tokens per message, and per reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;

/// Text up to this long is counted exactly as tiktoken counts it. In longer text, a
/// pre-tokenizer piece longer than this (one "word" of over a kilobyte: nothing a person
/// writes) is counted in slices of this size, a token or so off per slice: the
/// byte-pair merge of one piece takes about 56 bytes of memory per byte, so a 4 MB word
/// would take 220 MB, where a slice takes 57 KB.
const LONGEST_PIECE: usize = 1024;

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
    let Some(bpe) = bpe() else {
        return (text.len() as u64).div_ceil(4);
    };
    if text.len() <= LONGEST_PIECE {
        return bpe.count(text) as u64;
    }
    bpe.pieces(text)
        .map(|piece| {
            if piece.len() <= LONGEST_PIECE {
                bpe.count(piece) as u64
            } else {
                slices(piece, LONGEST_PIECE)
                    .map(|slice| bpe.count(slice) as u64)
                    .sum()
            }
        })
        .sum()
}

/// `text` in consecutive slices of at most `size` bytes (at least one character each),
/// cut at character boundaries.
fn slices(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (slice, tail) = rest.split_at(end);
        rest = tail;
        Some(slice)
    })
}

/// Which request shape a body has, for estimating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Chat,
    Completion,
    Embedding,
    /// Anthropic's Messages API.
    Messages,
    Other,
}

/// Prompt tokens of a request body, plus `max_tokens` (or `max_completion_tokens`) as the
/// output estimate when given. A body that is not a JSON object estimates nothing.
pub fn estimate(kind: BodyKind, body: &[u8]) -> TokenEstimate {
    RequestFields::parse(body)
        .map(|fields| estimate_fields(kind, &fields))
        .unwrap_or_default()
}

/// [`estimate`] of a body already read. Lists are walked element by element, so the
/// memory it takes does not grow with their length.
pub fn estimate_fields(kind: BodyKind, body: &RequestFields<'_>) -> TokenEstimate {
    let input = match kind {
        BodyKind::Chat => chat_prompt_tokens(body.messages),
        BodyKind::Completion => text_or_list_tokens(body.prompt),
        BodyKind::Embedding => text_or_list_tokens(body.input),
        BodyKind::Messages => super::anthropic::prompt_tokens(body),
        BodyKind::Other => 0,
    };
    let output = body.max_output_tokens().unwrap_or(0);
    TokenEstimate { input, output }
}

/// Per message: its overhead, its text `content` (a string, or the `text` of each part
/// of a list; other parts, such as images, count nothing), its `name` and `role`.
fn chat_prompt_tokens(messages: Option<&RawValue>) -> u64 {
    let Some(messages) = messages else {
        return 0;
    };
    let mut total = TOKENS_PER_REPLY;
    let is_list = walk::items(messages, |message| {
        total += TOKENS_PER_MESSAGE;
        // The last of each name counts, as in `serde_json::Value`.
        let (mut content, mut name, mut role) = (None, None, None);
        walk::members(message, |member, value| {
            if walk::name_is(member, "content") {
                content = Some(value);
            } else if walk::name_is(member, "name") {
                name = Some(value);
            } else if walk::name_is(member, "role") {
                role = Some(value);
            }
        });
        total += content.map_or(0, content_tokens);
        total += [name, role]
            .into_iter()
            .flatten()
            .filter_map(walk::string)
            .map(|text| count(&text))
            .sum::<u64>();
    });
    if is_list {
        total
    } else {
        0
    }
}

fn content_tokens(content: &RawValue) -> u64 {
    if let Some(text) = walk::string(content) {
        return count(&text);
    }
    let mut total = 0;
    walk::items(content, |part| {
        if let Some(text) = walk::member(part, "text").and_then(walk::string) {
            total += count(&text);
        }
    });
    total
}

/// A string, a list of strings, or token-id lists (counted by length).
fn text_or_list_tokens(value: Option<&RawValue>) -> u64 {
    let Some(value) = value else {
        return 0;
    };
    if let Some(text) = walk::string(value) {
        return count(&text);
    }
    let mut total = 0;
    walk::items(value, |item| {
        total += if let Some(text) = walk::string(item) {
            count(&text)
        } else if item.get().starts_with('[') {
            let mut ids = 0;
            walk::items(item, |_| ids += 1);
            ids
        } else if item
            .get()
            .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        {
            1 // one token id
        } else {
            0
        };
    });
    total
}

/// Output tokens of a complete (non-streamed) answer, when the upstream gave no usage:
/// everything generated, not only `content` (reasoning, refusals, tool-call arguments).
pub fn completion_tokens(answer: &Value) -> u64 {
    let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let mut total = 0;
    for choice in choices {
        total += choice.get("text").and_then(Value::as_str).map_or(0, count);
        if let Some(message) = choice.get("message") {
            generated_text(message, |text| total += count(text));
        }
    }
    total
}

/// Calls `each` with every generated text of a chat message (or a streamed delta, which
/// has the same members).
fn generated_text(message: &Value, mut each: impl FnMut(&str)) {
    for member in ["content", "reasoning_content", "refusal"] {
        if let Some(text) = message.get(member).and_then(Value::as_str) {
            each(text);
        }
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    let functions = calls
        .into_iter()
        .flatten()
        .filter_map(|call| call.get("function"))
        .chain(message.get("function_call"));
    for function in functions {
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            each(arguments);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
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
            // The Messages estimate has its own tests (anthropic.rs).
            BodyKind::Messages | BodyKind::Other => 0,
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

    #[test]
    fn every_generated_text_of_an_answer_counts() {
        let answer = json!({"choices": [{"message": {
            "content": null,
            "reasoning_content": "hello world",
            "refusal": "hello",
            "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "hello world"}},
                {"type": "function", "function": {"name": "g"}},
            ],
            "function_call": {"name": "h", "arguments": "hello"},
        }}]});
        assert_eq!(completion_tokens(&answer), 2 + 1 + 2 + 1);
    }

    #[test]
    fn long_text_is_counted_exactly_and_a_giant_word_in_slices() {
        let tiktoken = tiktoken_rs::cl100k_base_singleton();
        let long = "It's a test: 1234567 items, 3.5% off!\n\n  Thanks —\tBob 🙂 ".repeat(200);
        assert!(long.len() > LONGEST_PIECE);
        assert_eq!(count(&long), tiktoken.encode_ordinary(&long).len() as u64);
        // One "word" of 20 KB: counted in slices, close to tiktoken's count.
        let word = "é".repeat(10_000);
        let exact = tiktoken.encode_ordinary(&word).len() as u64;
        assert!(
            count(&word).abs_diff(exact) <= 20,
            "{} vs {exact}",
            count(&word)
        );
        // The exactness test's longest word is not sliced.
        assert!("supercalifragilistic".repeat(50).len() <= LONGEST_PIECE);
        let slices: Vec<&str> = slices("aé", 1).collect();
        assert_eq!(slices, ["a", "é"]);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z ]{0,12}", "\\PC{0,8}", Just("hello world".to_string())]
    }

    /// A chat body of messages with content as text, parts or anything else.
    fn chat() -> impl Strategy<Value = Value> {
        let content = prop_oneof![
            text().prop_map(Value::from),
            proptest::collection::vec(
                prop_oneof![
                    text().prop_map(|t| json!({"type": "text", "text": t})),
                    Just(json!({"type": "image_url", "image_url": {"url": "x"}})),
                    text().prop_map(Value::from),
                    Just(json!({"text": 7})),
                ],
                0..4
            )
            .prop_map(Value::from),
            Just(Value::Null),
            Just(json!({"text": "objects are not parts"})),
        ];
        let message = prop_oneof![
            4 => (content, text(), proptest::option::of(text())).prop_map(|(content, role, name)| {
                let mut message = json!({"role": role, "content": content});
                if let Some(name) = name {
                    message["name"] = json!(name);
                }
                message
            }),
            1 => Just(json!(5)),
            1 => Just(json!([1, 2])),
        ];
        let list = prop_oneof![
            text().prop_map(Value::from),
            proptest::collection::vec(
                prop_oneof![
                    text().prop_map(Value::from),
                    proptest::collection::vec(0u32..100, 0..4).prop_map(Value::from),
                    (-5i64..5).prop_map(Value::from),
                    Just(json!({"x": 1})),
                ],
                0..4
            )
            .prop_map(Value::from),
        ];
        (
            proptest::collection::vec(message, 0..5),
            list.clone(),
            list,
            proptest::option::of(0u64..100),
        )
            .prop_map(|(messages, prompt, input, max_tokens)| {
                let mut body =
                    json!({"model": "m", "messages": messages, "prompt": prompt, "input": input});
                if let Some(max_tokens) = max_tokens {
                    body["max_tokens"] = json!(max_tokens);
                }
                body
            })
    }

    /// `default` cases, or `PROPTEST_CASES` when set (the reference, tiktoken-rs, is slow
    /// in debug builds).
    fn cases(default: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok());
        ProptestConfig::with_cases(cases.unwrap_or(default))
    }

    proptest! {
        #![proptest_config(cases(24))]

        /// Text longer than a slice is counted piece by piece: exactly as tiktoken counts
        /// it while no piece is longer than a slice.
        #[test]
        fn long_text_counts_as_tiktoken(words in proptest::collection::vec("\\PC{0,12}|[ \n\t]{1,3}|[0-9]{1,5}|'s", 200..400)) {
            let text = words.concat();
            let tiktoken = tiktoken_rs::cl100k_base_singleton();
            prop_assert_eq!(count(&text), tiktoken.encode_ordinary(&text).len() as u64);
        }

    }

    proptest! {
        /// The streaming reader's estimate is the one a `Value` gives, for every shape.
        #[test]
        fn estimates_agree_with_a_value(body in chat()) {
            let text = body.to_string();
            for kind in [BodyKind::Chat, BodyKind::Completion, BodyKind::Embedding, BodyKind::Other] {
                prop_assert_eq!(estimate(kind, text.as_bytes()), reference_estimate(kind, &body));
            }
        }
    }
}
