//! A mock OpenAI-compatible LLM upstream for keygate's integration tests.
//!
//! [`MockUpstream::start`] binds an axum server on `127.0.0.1:0` in a spawned task and
//! stops it when the value is dropped (the listener closes, in-flight streams and sleeps
//! are cut short, idle keep-alive connections are closed).
//!
//! This file holds the constants, the recorded requests and the server; `tokens.rs` the
//! token formulas, `switches.rs` routing and the behaviour switches, `answers.rs` the JSON
//! bodies and headers, `stream.rs` the SSE answers. Those parts are one mock cut by
//! concern: they share this file's imports and items (`use super::*`).
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
//! | POST   | `/v1/messages`         | Anthropic `message` JSON, or its SSE events (`anthropic.rs`) |
//! | POST   | `/v1/messages/count_tokens` | `{"input_tokens": N}` (`anthropic.rs`)                |
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
//! [`MockUpstream::fail_with`] makes every POST fail at once, whatever its model (an
//! upstream that is down, for the routing tests), until it is cleared.
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

mod answers;
mod anthropic;
mod stream;
mod switches;
mod tokens;

use answers::*;
pub use answers::{base64_encode, embedding_for};
use anthropic::*;
pub use anthropic::{
    anthropic_input_tokens, anthropic_output_tokens, anthropic_usage, CACHE_CREATION_TOKENS,
    CACHE_READ_TOKENS, MODEL_CACHED, START_OUTPUT_TOKENS,
};
use stream::*;
use switches::*;
pub use tokens::*;

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
    /// Set by [`MockUpstream::fail_with`]: every POST answered with this status (and this
    /// `retry-after`, if any).
    failing: Mutex<Option<(u16, Option<u64>)>>,
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
            failing: Mutex::new(None),
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

    /// From now on every POST is answered `status` (the body of `mock-error-<status>`;
    /// `retry_after` seconds in `retry-after`, else none), whatever its model; `None`
    /// answers normally again. Requests are still recorded.
    pub fn fail_with(&self, failure: Option<(u16, Option<u64>)>) {
        *lock(&self.shared.failing) = failure;
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
