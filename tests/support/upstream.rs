//! A mock OpenAI-compatible LLM upstream for keygate's integration tests.
//!
//! [`MockUpstream::start`] binds an axum server on `127.0.0.1:0` in a spawned task and
//! stops it when the value is dropped (the listener closes, in-flight streams and sleeps
//! are cut short, idle keep-alive connections are closed).
//!
//! # Endpoints (all under `base_url` = `http://127.0.0.1:PORT/v1`)
//!
//! | method | path                   | answer                                                     |
//! |--------|------------------------|------------------------------------------------------------|
//! | POST   | `/v1/chat/completions` | `chat.completion` JSON, or SSE `chat.completion.chunk`s    |
//! | POST   | `/v1/completions`      | legacy `text_completion` JSON, or SSE                      |
//! | POST   | `/v1/embeddings`       | `list` of `embedding`s (8 floats each, or base64)          |
//! | GET    | `/v1/models`           | `list` of [`MODEL_IDS`]                                    |
//! | GET    | `/v1/models/{id}`      | one `model` object (404 `model_not_found` if not listed)   |
//! | POST   | `/v1/moderations`      | a `modr-…` result, never flagged (pass-through tests)      |
//! | GET, HEAD | `/v1/files`         | exactly `{"object":"list","data":[]}` (pass-through tests) |
//! | *      | anything else          | 404 with OpenAI's `Invalid URL (METHOD /path)` error body  |
//!
//! Every request is recorded (see [`RecordedRequest`]) before it is answered, including
//! the ones that are refused or dropped.
//!
//! # Behaviour switches
//!
//! Behaviour is chosen by the `model` field of the JSON body (any POST endpoint above);
//! any other model (e.g. [`DEFAULT_MODEL`]) gets the normal behaviour. The special
//! models take an optional delay suffix `:<ms>` (e.g. `mock-slow-first-byte:250`); the
//! request header [`DELAY_HEADER`] (`x-mock-delay-ms`) overrides both the suffix and the
//! default. The model is echoed back verbatim, suffix included.
//!
//! | model                    | effect                                                            |
//! |--------------------------|-------------------------------------------------------------------|
//! | `mock-no-usage`          | no `usage` in JSON answers; streams never send usage, even if asked |
//! | `mock-error-400`         | 400 `invalid_request_error` / `bad_request` ("bad thing")         |
//! | `mock-error-429`         | 429 `rate_limit_exceeded`, `retry-after: 1`                        |
//! | `mock-error-500`         | 500 `server_error`                                                |
//! | `mock-error-503`         | 503 `server_error` (overloaded)                                   |
//! | `mock-slow-first-byte`   | sleeps the delay (default 3000 ms) before sending the headers     |
//! | `mock-stall-mid-stream`  | stream: role + 2 content chunks, sleeps the delay (default 30 s), then the rest |
//! | `mock-drop-mid-stream`   | stream: role + 2 content chunks, then the body errors (connection aborted, no terminating chunk) |
//! | `mock-slow-stream`       | stream: sleeps the delay (default 200 ms) before every event but the first |
//! | `mock-drop-connection`   | TCP connection closed without any response (see below)            |
//! | `mock-no-content`        | 204 with `content-type: text/event-stream` and no body            |
//! | `mock-not-modified`      | 304 with no body                                                  |
//! | `mock-hop-headers`       | normal answer plus `connection: keep-alive, x-mock-hop` and `x-mock-hop: secret` |
//! | `mock-giant-event`       | stream: role chunk, `"Hello"`, then one event of [`EVENT_BYTES_HEADER`] bytes (default 2 MiB), finish, `[DONE]`; never usage |
//! | `mock-rich-deltas`       | reasoning, tool-call arguments and a refusal besides content ([`RICH_TEXTS`]); never usage |
//!
//! Errors are sent as JSON even when `stream: true` was asked (as OpenAI does). The three
//! stream-only switches answer a non-stream request normally.
//!
//! `mock-drop-connection`: axum cannot refuse to answer, so the server is started with a
//! connect-info hook ([`Connected`]) that keeps a `dup()` of each accepted socket; the
//! handler calls `shutdown(Both)` on it (the client sees a FIN before any byte of a
//! response) and then returns a response that hyper fails to write, which makes hyper
//! close the connection. On non-unix targets the handler unwinds instead
//! (`resume_unwind`, no panic message), which tears the connection task down.
//!
//! # Token accounting (deterministic, see [`prompt_tokens_for`], [`completion_tokens_for`])
//!
//! * words(s) = `s.split_whitespace().count()`.
//! * chat prompt tokens = Σ over `messages` of ([`PER_MESSAGE_TOKENS`] (3) + words of the
//!   message's text content) — content is a string, or an array of parts whose `text`
//!   fields are counted; other fields (name, tool calls, images) count 0.
//! * completions prompt tokens = words of `prompt` (string), Σ words (array of strings),
//!   number of ids (array of integers), Σ ids (array of arrays of integers).
//! * embeddings prompt tokens = the same function applied to `input`;
//!   `total_tokens == prompt_tokens`.
//! * completion tokens per choice = min(limit, 7) where limit = `max_completion_tokens`,
//!   else `max_tokens`, else 7 ([`DEFAULT_COMPLETION_TOKENS`]). The reply is the first
//!   that many words of [`REPLY_WORDS`] joined by single spaces — one word is one token
//!   (`reply_text(7) == "Hello there this is a test reply"`). `finish_reason` is
//!   `"length"` when the limit is below 7, else `"stop"`.
//! * number of choices = `n` (default 1) for chat; `n` × number of prompts for legacy
//!   completions (as OpenAI). completion_tokens = per-choice tokens × choices.
//!
//! # Streams
//!
//! `stream: true` answers `text/event-stream; charset=utf-8` with a chunked body, one
//! body frame per event (`data: {json}\n\n`), each flushed on its own. Chat: per choice a
//! role chunk (`delta: {"role":"assistant","content":"","refusal":null}`), then per word
//! one chunk per choice (`delta.content` = `"Hello"`, `" there"`, …), then per choice a
//! finish chunk (`delta: {}`, `finish_reason`), then — only when the request had
//! `stream_options.include_usage == true` — a chunk with `choices: []` and `usage`, then
//! `data: [DONE]`. As OpenAI does, when usage was asked every other chunk carries
//! `"usage": null`. Legacy completions: the same without the role chunk; chunks carry
//! `choices[i].text`, the finish chunk has `text: ""`.
//!
//! [`MockUpstream::active_streams`] counts stream bodies currently alive (created when
//! the handler returns, gone when hyper drops the body); [`MockUpstream::cancelled_streams`]
//! counts bodies dropped before their last event was handed to hyper, i.e. the client
//! went away (hyper notices the peer's EOF even while the body is sleeping).
//! `mock-drop-mid-stream` and shutdown aborts are not counted as cancelled.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::IncomingStream;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Public constants
// ---------------------------------------------------------------------------------------

/// The words of the full reply; each word is exactly one completion token.
pub const REPLY_WORDS: [&str; 7] = ["Hello", "there", "this", "is", "a", "test", "reply"];
/// Completion tokens per choice when no lower `max_tokens` is given (= `REPLY_WORDS.len()`).
pub const DEFAULT_COMPLETION_TOKENS: u64 = REPLY_WORDS.len() as u64;
/// Fixed per-message overhead in the chat prompt-token formula.
pub const PER_MESSAGE_TOKENS: u64 = 3;
/// Length of every embedding vector.
pub const EMBEDDING_DIMS: usize = 8;
/// `created` of the model objects in `GET /v1/models`.
pub const MODELS_CREATED: u64 = 1_700_000_000;
/// A model with the normal behaviour.
pub const DEFAULT_MODEL: &str = "mock-model";
/// Ids listed by `GET /v1/models`.
pub const MODEL_IDS: [&str; 4] = [
    "mock-model",
    "gpt-4o-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
];
/// `system_fingerprint` of chat answers.
pub const SYSTEM_FINGERPRINT: &str = "fp_mock";

pub const MODEL_NO_USAGE: &str = "mock-no-usage";
pub const MODEL_ERROR_400: &str = "mock-error-400";
pub const MODEL_ERROR_429: &str = "mock-error-429";
pub const MODEL_ERROR_500: &str = "mock-error-500";
pub const MODEL_ERROR_503: &str = "mock-error-503";
pub const MODEL_SLOW_FIRST_BYTE: &str = "mock-slow-first-byte";
pub const MODEL_STALL_MID_STREAM: &str = "mock-stall-mid-stream";
pub const MODEL_DROP_MID_STREAM: &str = "mock-drop-mid-stream";
pub const MODEL_SLOW_STREAM: &str = "mock-slow-stream";
pub const MODEL_DROP_CONNECTION: &str = "mock-drop-connection";
pub const MODEL_NO_CONTENT: &str = "mock-no-content";
pub const MODEL_NOT_MODIFIED: &str = "mock-not-modified";
pub const MODEL_HOP_HEADERS: &str = "mock-hop-headers";
pub const MODEL_GIANT_EVENT: &str = "mock-giant-event";
pub const MODEL_RICH_DELTAS: &str = "mock-rich-deltas";

/// Request header setting the size of `mock-giant-event`'s event, in bytes.
pub const EVENT_BYTES_HEADER: &str = "x-mock-event-bytes";
pub const DEFAULT_EVENT_BYTES: usize = 2 * 1024 * 1024;
/// The header `mock-hop-headers` names in its `connection` header.
pub const HOP_HEADER: &str = "x-mock-hop";

/// What `mock-rich-deltas` generates, as (member, text), in order: a stream sends one
/// chunk per entry (tool-call arguments in the `function` of `tool_calls[0]`).
pub const RICH_TEXTS: [(&str, &str); 5] = [
    ("reasoning_content", "Let me think about the weather"),
    ("arguments", "{\"city\": "),
    ("arguments", "\"Paris\"}"),
    ("refusal", "I cannot share that"),
    ("content", "Done"),
];

/// Request header overriding the delay of the slow/stall models, in milliseconds.
pub const DELAY_HEADER: &str = "x-mock-delay-ms";
pub const DEFAULT_FIRST_BYTE_DELAY_MS: u64 = 3_000;
pub const DEFAULT_STALL_DELAY_MS: u64 = 30_000;
pub const DEFAULT_SLOW_STREAM_DELAY_MS: u64 = 200;
/// Value of `retry-after` on `mock-error-429`.
pub const RETRY_AFTER_SECS: u64 = 1;
/// Content chunks sent before a stall / drop mid-stream (after the role chunk).
pub const CHUNKS_BEFORE_STALL: usize = 2;

/// The 400 body of `mock-error-400`, verbatim.
pub const ERROR_400_BODY: &str = r#"{"error":{"message":"bad thing","type":"invalid_request_error","param":null,"code":"bad_request"}}"#;

/// OpenAI-style rate-limit headers the upstream puts on its successful answers (with
/// distinctive values, so a test can tell them from the gateway's own).
pub const UPSTREAM_RATELIMIT_HEADERS: [(&str, &str); 6] = [
    ("x-ratelimit-limit-requests", "9999"),
    ("x-ratelimit-remaining-requests", "9998"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-limit-tokens", "1999999"),
    ("x-ratelimit-remaining-tokens", "1999990"),
    ("x-ratelimit-reset-tokens", "1ms"),
];

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

fn content_words(content: Option<&Value>) -> u64 {
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

fn prompt_count(prompt: &Value) -> u64 {
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

// ---------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------

/// One request as received by the mock.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub query: Option<String>,
    /// All headers in arrival order, names lowercased, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body; `None` when the body is empty or not JSON.
    pub body: Option<Value>,
    pub raw_body: Vec<u8>,
    /// The `authorization` header as received.
    pub authorization: Option<String>,
    /// Whether `authorization` equals the expected value; `None` when nothing is expected
    /// (see [`MockUpstream::start_with_api_key`], [`MockUpstream::expect_api_key`]).
    pub auth_ok: Option<bool>,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn model(&self) -> Option<&str> {
        self.body.as_ref()?.get("model")?.as_str()
    }

    pub fn is_stream(&self) -> bool {
        self.body
            .as_ref()
            .and_then(|b| b.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether the request asked for `stream_options.include_usage`.
    pub fn include_usage(&self) -> bool {
        self.body.as_ref().is_some_and(include_usage)
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    expected_authorization: Mutex<Option<String>>,
    active: AtomicUsize,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    started: AtomicUsize,
    shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl MockUpstream {
    /// Starts a mock that accepts any (or no) `Authorization`.
    pub async fn start() -> MockUpstream {
        Self::start_inner(None).await
    }

    /// Starts a mock that expects `Authorization: Bearer {api_key}`, like OpenAI: any
    /// other value (or none) is recorded with `auth_ok == Some(false)` and answered 401
    /// `invalid_api_key`.
    pub async fn start_with_api_key(api_key: &str) -> MockUpstream {
        Self::start_inner(Some(format!("Bearer {api_key}"))).await
    }

    async fn start_inner(expected_authorization: Option<String>) -> MockUpstream {
        let listener = match TcpListener::bind(("127.0.0.1", 0)).await {
            Ok(l) => l,
            Err(e) => panic!("mock upstream: cannot bind 127.0.0.1:0: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("mock upstream: no local address: {e}"),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            expected_authorization: Mutex::new(expected_authorization),
            active: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            shutdown: shutdown_rx.clone(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let mut signal = shutdown_rx;
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<ConnHandle>(),
            )
            .with_graceful_shutdown(async move {
                let _ = signal.wait_for(|stop| *stop).await;
            })
            .await;
        });
        MockUpstream {
            addr,
            base_url: format!("http://{addr}/v1"),
            shared,
            shutdown,
        }
    }

    /// Sets (or clears) the expected API key for subsequent requests.
    pub fn expect_api_key(&self, api_key: Option<&str>) {
        *lock(&self.shared.expected_authorization) = api_key.map(|k| format!("Bearer {k}"));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests received on `path` (e.g. `/v1/chat/completions`).
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Requests whose `Authorization` did not match the expected one.
    pub fn auth_failures(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.auth_ok == Some(false))
            .cloned()
            .collect()
    }

    /// Stream bodies currently being written.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Stream bodies dropped before their last event (the client went away).
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Stream bodies that handed their last event to hyper (or ended by design).
    pub fn completed_streams(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Stream bodies ever started.
    pub fn started_streams(&self) -> usize {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&MockUpstream) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no stream is active; returns whether that happened within `timeout`.
    pub async fn wait_for_no_active_streams(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |m| m.active_streams() == 0).await
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Per-connection info: on unix a `dup()` of the accepted socket, used by
/// `mock-drop-connection` to shut the connection down under hyper's feet.
#[derive(Clone)]
struct ConnHandle {
    #[cfg(unix)]
    socket: Option<Arc<std::net::TcpStream>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        // No Nagle: every SSE event leaves as soon as hyper writes it.
        let _ = stream.io().set_nodelay(true);
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let socket = stream
                .io()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(|fd| Arc::new(std::net::TcpStream::from(fd)));
            ConnHandle { socket }
        }
        #[cfg(not(unix))]
        {
            let _ = stream;
            ConnHandle {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Normal,
    NoUsage,
    Error(u16),
    SlowFirstByte,
    StallMidStream,
    DropMidStream,
    SlowStream,
    DropConnection,
    NoContent,
    NotModified,
    HopHeaders,
    GiantEvent,
    RichDeltas,
}

/// Behaviour and delay for a model name (`name` or `name:<ms>`) and request headers.
fn behavior_for(model: Option<&str>, parts: &Parts) -> (Behavior, Duration) {
    let model = model.unwrap_or("");
    let (base, suffix_ms) = match model.split_once(':') {
        Some((base, ms)) if base.starts_with("mock-") => (base, ms.parse::<u64>().ok()),
        _ => (model, None),
    };
    let (behavior, default_ms) = match base {
        MODEL_NO_USAGE => (Behavior::NoUsage, 0),
        MODEL_ERROR_400 => (Behavior::Error(400), 0),
        MODEL_ERROR_429 => (Behavior::Error(429), 0),
        MODEL_ERROR_500 => (Behavior::Error(500), 0),
        MODEL_ERROR_503 => (Behavior::Error(503), 0),
        MODEL_SLOW_FIRST_BYTE => (Behavior::SlowFirstByte, DEFAULT_FIRST_BYTE_DELAY_MS),
        MODEL_STALL_MID_STREAM => (Behavior::StallMidStream, DEFAULT_STALL_DELAY_MS),
        MODEL_DROP_MID_STREAM => (Behavior::DropMidStream, 0),
        MODEL_SLOW_STREAM => (Behavior::SlowStream, DEFAULT_SLOW_STREAM_DELAY_MS),
        MODEL_DROP_CONNECTION => (Behavior::DropConnection, 0),
        MODEL_NO_CONTENT => (Behavior::NoContent, 0),
        MODEL_NOT_MODIFIED => (Behavior::NotModified, 0),
        MODEL_HOP_HEADERS => (Behavior::HopHeaders, 0),
        MODEL_GIANT_EVENT => (Behavior::GiantEvent, 0),
        MODEL_RICH_DELTAS => (Behavior::RichDeltas, 0),
        _ => (Behavior::Normal, 0),
    };
    let header_ms = parts
        .headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let ms = header_ms.or(suffix_ms).unwrap_or(default_ms);
    (behavior, Duration::from_millis(ms))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Moderations,
    ListModels,
    GetModel,
    ListFiles,
}

fn endpoint_for(method: &Method, path: &str) -> Option<Endpoint> {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Some(Endpoint::Chat),
        (&Method::POST, "/v1/completions") => Some(Endpoint::Completions),
        (&Method::POST, "/v1/embeddings") => Some(Endpoint::Embeddings),
        (&Method::POST, "/v1/moderations") => Some(Endpoint::Moderations),
        (&Method::GET, "/v1/models") => Some(Endpoint::ListModels),
        (&Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Some(Endpoint::GetModel)
        }
        (&Method::GET | &Method::HEAD, "/v1/files") => Some(Endpoint::ListFiles),
        _ => None,
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&raw).ok();
    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let expected = lock(&shared.expected_authorization).clone();
    let auth_ok = expected.map(|e| authorization.as_deref() == Some(e.as_str()));
    lock(&shared.requests).push(RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json.clone(),
        raw_body: raw.to_vec(),
        authorization: authorization.clone(),
        auth_ok,
        received_at: Instant::now(),
    });

    if auth_ok == Some(false) {
        let shown = authorization.unwrap_or_default();
        let shown = shown.strip_prefix("Bearer ").unwrap_or(&shown);
        let tail: String = shown
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return error_response(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Incorrect API key provided: ****{tail}. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
            Value::Null,
            json!("invalid_api_key"),
        );
    }

    let path = parts.uri.path().to_string();
    let Some(endpoint) = endpoint_for(&parts.method, &path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {})", parts.method, path),
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };

    match endpoint {
        Endpoint::ListModels => {
            let data: Vec<Value> = MODEL_IDS.iter().map(|id| model_object(id)).collect();
            return json_ok(&json!({"object": "list", "data": data}));
        }
        Endpoint::GetModel => {
            let id = path.trim_start_matches("/v1/models/");
            if MODEL_IDS.contains(&id) {
                return json_ok(&model_object(id));
            }
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("The model '{id}' does not exist"),
                "invalid_request_error",
                json!("model"),
                json!("model_not_found"),
            );
        }
        Endpoint::ListFiles => return json_ok(&json!({"object": "list", "data": []})),
        _ => {}
    }

    // POST endpoints with a JSON body.
    let Some(body) = json.filter(Value::is_object) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (behavior, delay) = behavior_for(model.as_deref(), &parts);

    match behavior {
        Behavior::DropConnection => return drop_connection(&parts),
        Behavior::Error(code) => return mock_error(code),
        Behavior::NoContent => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            return resp;
        }
        Behavior::NotModified => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
        Behavior::SlowFirstByte => {
            let mut stop = shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => {
                    return mock_error(503);
                }
            }
        }
        _ => {}
    }

    let model = match (endpoint, model) {
        (_, Some(m)) => m,
        (Endpoint::Moderations, None) => "omni-moderation-latest".to_string(),
        (_, None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            )
        }
    };
    let no_usage = matches!(
        behavior,
        Behavior::NoUsage | Behavior::GiantEvent | Behavior::RichDeltas
    );
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);

    let mut answer = match endpoint {
        Endpoint::Chat => {
            if !body.get("messages").is_some_and(Value::is_array) {
                return missing_param("messages");
            }
            if behavior == Behavior::RichDeltas {
                return rich_answer(&shared, &model, stream);
            }
            if behavior == Behavior::GiantEvent && stream {
                let size = parts
                    .headers
                    .get(EVENT_BYTES_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_EVENT_BYTES);
                return giant_event_stream(&shared, &model, size);
            }
            if stream {
                let events = chat_stream_events(&model, &body, no_usage);
                stream_response(&shared, events, behavior, delay)
            } else {
                json_ok(&chat_completion(&model, &body, no_usage))
            }
        }
        Endpoint::Completions => {
            if body.get("prompt").is_none() {
                return missing_param("prompt");
            }
            if stream {
                let events = completion_stream_events(&model, &body, no_usage);
                stream_response(&shared, events, behavior, delay)
            } else {
                json_ok(&text_completion(&model, &body, no_usage))
            }
        }
        Endpoint::Embeddings => match body.get("input") {
            Some(input) => json_ok(&embeddings(&model, &body, input, no_usage)),
            None => missing_param("input"),
        },
        Endpoint::Moderations => json_ok(&json!({
            "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
            "model": model,
            "results": [{
                "flagged": false,
                "categories": {"hate": false, "harassment": false, "violence": false},
                "category_scores": {"hate": 0.0, "harassment": 0.0, "violence": 0.0},
            }],
        })),
        Endpoint::ListModels | Endpoint::GetModel | Endpoint::ListFiles => {
            json_ok(&json!({"object": "list", "data": []}))
        }
    };
    if behavior == Behavior::HopHeaders {
        let headers = answer.headers_mut();
        headers.insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-mock-hop"),
        );
        headers.insert(HOP_HEADER, HeaderValue::from_static("secret"));
    }
    answer
}

/// A chat chunk with one choice whose delta is `delta`.
fn delta_chunk(model: &str, delta: Value) -> Bytes {
    sse_event(&json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
    }))
}

fn events_response(shared: &Arc<Shared>, events: Vec<Bytes>) -> Response {
    let cut = events.len();
    stream_response(
        shared,
        StreamEvents { events, cut },
        Behavior::Normal,
        Duration::ZERO,
    )
}

fn giant_event_stream(shared: &Arc<Shared>, model: &str, size: usize) -> Response {
    let padding = "x".repeat(size);
    let events = vec![
        delta_chunk(model, json!({"role": "assistant", "content": ""})),
        delta_chunk(model, json!({"content": "Hello"})),
        delta_chunk(model, json!({"content": padding})),
        delta_chunk(model, json!({})),
        done_event(),
    ];
    events_response(shared, events)
}

/// `mock-rich-deltas`: [`RICH_TEXTS`] as a stream or as one message, without usage.
fn rich_answer(shared: &Arc<Shared>, model: &str, stream: bool) -> Response {
    if stream {
        let mut events = vec![delta_chunk(model, json!({"role": "assistant"}))];
        for (member, text) in RICH_TEXTS {
            let delta = match member {
                "arguments" => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
                }
                _ => json!({ member: text }),
            };
            events.push(delta_chunk(model, delta));
        }
        events.push(done_event());
        return events_response(shared, events);
    }
    let arguments: String = RICH_TEXTS
        .iter()
        .filter(|(member, _)| *member == "arguments")
        .map(|(_, text)| *text)
        .collect();
    let text = |name: &str| {
        RICH_TEXTS
            .iter()
            .find(|(member, _)| *member == name)
            .map(|(_, t)| *t)
    };
    json_ok(&json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": text("content"),
            "reasoning_content": text("reasoning_content"),
            "refusal": text("refusal"),
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": arguments}}],
        }}],
    }))
}

fn drop_connection(parts: &Parts) -> Response {
    #[cfg(unix)]
    {
        let socket = parts
            .extensions
            .get::<ConnectInfo<ConnHandle>>()
            .and_then(|ConnectInfo(h)| h.socket.clone());
        if let Some(socket) = socket {
            // FIN to the client now; hyper then fails to write the response below and
            // closes its side.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    }
    let _ = parts;
    // No socket handle: unwind (without the panic hook) so the connection task dies.
    std::panic::resume_unwind(Box::new("mock-drop-connection"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"})
}

fn include_usage(body: &Value) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn chat_usage_json(body: &Value) -> Value {
    let u = expected_usage(body);
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn plain_usage_json(body: &Value) -> Value {
    let u = expected_usage(body);
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    })
}

fn chat_completion(model: &str, body: &Value, no_usage: bool) -> Value {
    let content = reply_for(body);
    let finish = finish_reason_for(body);
    let choices: Vec<Value> = (0..choices_for(body))
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish,
            })
        })
        .collect();
    let mut v = json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if !no_usage {
        v["usage"] = chat_usage_json(body);
    }
    v
}

fn text_completion(model: &str, body: &Value, no_usage: bool) -> Value {
    let text = reply_for(body);
    let finish = finish_reason_for(body);
    let choices: Vec<Value> = (0..choices_for(body))
        .map(|i| json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish}))
        .collect();
    let mut v = json!({
        "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "text_completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
    });
    if !no_usage {
        v["usage"] = plain_usage_json(body);
    }
    v
}

fn embedding_inputs(input: &Value) -> Vec<Value> {
    match input {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![input.clone()]
        }
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    }
}

/// The deterministic embedding of one input (string or token-id array).
pub fn embedding_for(input: &Value) -> [f32; EMBEDDING_DIMS] {
    // FNV-1a over the input's JSON text.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [0f32; EMBEDDING_DIMS];
    for (j, x) in out.iter_mut().enumerate() {
        let byte = (h >> ((j % 8) * 8)) & 0xff;
        *x = (byte as f32 - 127.5) / 128.0;
    }
    out
}

fn embeddings(model: &str, body: &Value, input: &Value, no_usage: bool) -> Value {
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = embedding_inputs(input)
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let vector = embedding_for(item);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut v = json!({"object": "list", "data": data, "model": model});
    if !no_usage {
        let p = text_input_tokens(input);
        v["usage"] = json!({"prompt_tokens": p, "total_tokens": p});
    }
    v
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SSE events of a stream, and the index right after role + 2 content rounds.
struct StreamEvents {
    events: Vec<Bytes>,
    cut: usize,
}

fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn done_event() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

fn chat_stream_events(model: &str, body: &Value, no_usage: bool) -> StreamEvents {
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_secs();
    let with_usage = include_usage(body) && !no_usage;
    let n = choices_for(body);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        sse_event(&c)
    };
    let mut events = Vec::new();
    for i in 0..n {
        events.push(chunk(json!([{
            "index": i,
            "delta": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null,
            "finish_reason": null,
        }])));
    }
    let words = completion_words_per_choice(body) as usize;
    let mut cut = None;
    for (w, word) in REPLY_WORDS[..words].iter().enumerate() {
        let piece = if w == 0 {
            (*word).to_string()
        } else {
            format!(" {word}")
        };
        for i in 0..n {
            events.push(chunk(json!([{
                "index": i,
                "delta": {"content": piece},
                "logprobs": null,
                "finish_reason": null,
            }])));
        }
        if w + 1 == CHUNKS_BEFORE_STALL {
            cut = Some(events.len());
        }
    }
    let cut = cut.unwrap_or(events.len());
    let finish = finish_reason_for(body);
    for i in 0..n {
        events.push(chunk(json!([{
            "index": i,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish,
        }])));
    }
    if with_usage {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
        });
        c["usage"] = chat_usage_json(body);
        events.push(sse_event(&c));
    }
    events.push(done_event());
    StreamEvents { events, cut }
}

fn completion_stream_events(model: &str, body: &Value, no_usage: bool) -> StreamEvents {
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now_secs();
    let with_usage = include_usage(body) && !no_usage;
    let n = choices_for(body);
    let chunk = |i: u64, text: &str, finish: Option<&str>| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": text, "index": i, "logprobs": null, "finish_reason": finish}],
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        sse_event(&c)
    };
    let mut events = Vec::new();
    let words = completion_words_per_choice(body) as usize;
    let mut cut = None;
    for (w, word) in REPLY_WORDS[..words].iter().enumerate() {
        let piece = if w == 0 {
            (*word).to_string()
        } else {
            format!(" {word}")
        };
        for i in 0..n {
            events.push(chunk(i, &piece, None));
        }
        if w + 1 == CHUNKS_BEFORE_STALL {
            cut = Some(events.len());
        }
    }
    let cut = cut.unwrap_or(events.len());
    let finish = finish_reason_for(body);
    for i in 0..n {
        events.push(chunk(i, "", Some(finish)));
    }
    if with_usage {
        events.push(sse_event(&json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": plain_usage_json(body),
        })));
    }
    events.push(done_event());
    StreamEvents { events, cut }
}

enum Step {
    Data(Bytes),
    /// Let hyper flush what it has (one write per event).
    Yield,
    Pause(Duration),
    Fail,
}

fn stream_response(
    shared: &Arc<Shared>,
    stream: StreamEvents,
    behavior: Behavior,
    delay: Duration,
) -> Response {
    let StreamEvents { events, cut } = stream;
    let mut steps = VecDeque::new();
    match behavior {
        Behavior::StallMidStream | Behavior::DropMidStream => {
            let mut rest = events;
            let tail = rest.split_off(cut.min(rest.len()));
            for e in rest {
                steps.push_back(Step::Data(e));
                steps.push_back(Step::Yield);
            }
            if behavior == Behavior::DropMidStream {
                steps.push_back(Step::Fail);
            } else {
                steps.push_back(Step::Pause(delay));
                for e in tail {
                    steps.push_back(Step::Data(e));
                    steps.push_back(Step::Yield);
                }
            }
        }
        Behavior::SlowStream => {
            for (k, e) in events.into_iter().enumerate() {
                if k > 0 {
                    steps.push_back(Step::Pause(delay));
                }
                steps.push_back(Step::Data(e));
            }
        }
        _ => {
            for e in events {
                steps.push_back(Step::Data(e));
                steps.push_back(Step::Yield);
            }
        }
    }
    // Trailing yields are pointless and would delay "finished".
    while matches!(steps.back(), Some(Step::Yield)) {
        steps.pop_back();
    }

    shared.active.fetch_add(1, Ordering::SeqCst);
    shared.started.fetch_add(1, Ordering::SeqCst);
    let state = StreamState {
        steps,
        guard: StreamGuard {
            shared: shared.clone(),
            finished: false,
        },
        shutdown: shared.shutdown.clone(),
    };
    let body_stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            let step = match st.steps.pop_front() {
                Some(step) => step,
                None => {
                    st.guard.finish();
                    return None;
                }
            };
            match step {
                Step::Data(bytes) => {
                    if st.steps.is_empty() {
                        st.guard.finish();
                    }
                    return Some((Ok::<Bytes, io::Error>(bytes), st));
                }
                Step::Yield => tokio::task::yield_now().await,
                Step::Pause(d) => {
                    let mut stop = st.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.wait_for(|s| *s) => {
                            st.guard.finish();
                            st.steps.clear();
                            return Some((Err(io::Error::other("mock upstream shut down")), st));
                        }
                    }
                }
                Step::Fail => {
                    st.guard.finish();
                    st.steps.clear();
                    return Some((
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "mock-drop-mid-stream: aborting the connection",
                        )),
                        st,
                    ));
                }
            }
        }
    });

    let mut resp = Response::new(Body::from_stream(body_stream));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_common_headers(&mut resp, true);
    resp
}

struct StreamState {
    steps: VecDeque<Step>,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
}

struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.finished {
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn add_common_headers(resp: &mut Response, success: bool) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple())) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    h.insert(
        HeaderName::from_static("openai-version"),
        HeaderValue::from_static("2020-10-01"),
    );
    h.insert(
        HeaderName::from_static("openai-processing-ms"),
        HeaderValue::from_static("1"),
    );
    if success {
        for (name, value) in UPSTREAM_RATELIMIT_HEADERS {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_common_headers(&mut resp, status.is_success());
    resp
}

fn json_ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Value,
    code: Value,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn missing_param(name: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{name}'."),
        "invalid_request_error",
        json!(name),
        json!("missing_required_parameter"),
    )
}

fn mock_error(code: u16) -> Response {
    match code {
        400 => {
            let mut resp = Response::new(Body::from(ERROR_400_BODY));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            add_common_headers(&mut resp, false);
            resp
        }
        429 => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests on the mock upstream. Please try again in 1s.",
                "requests",
                Value::Null,
                json!("rate_limit_exceeded"),
            );
            let h = resp.headers_mut();
            h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            h.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from_static("0"),
            );
            resp
        }
        503 => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        _ => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            Value::Null,
            Value::Null,
        ),
    }
}
