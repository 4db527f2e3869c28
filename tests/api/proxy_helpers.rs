//! Fixtures for the inference-proxy tests: keygate in process on 127.0.0.1:0 in front of a
//! [`MockUpstream`], with short timeouts and model prices chosen per test, plus helpers to
//! call `/v1/*`, read SSE streams event by event, and read usage, rate-limit events and
//! `/v1/key` back.
//!
//! Test bodies are `async fn name(Setup)`; `proxy_tests!` runs each through both front
//! doors, some on both backends and the rest on SQLite only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    str::FromStr,
    time::{Duration, Instant},
};

use futures::StreamExt;
use keygate::{
    config::{ModelPrice, UpstreamConfig},
    proxy::tokens::{self, BodyKind},
    state::AppState,
    store::{AuditEvent, Workspace},
    App, Config,
};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::{sync::oneshot, task::JoinHandle};
use uuid::Uuid;

#[path = "../support/mod.rs"]
pub mod support;

pub use self::support::upstream::MockUpstream;
pub use crate::helpers::Backend;

/// Which front door a test's requests come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// `http.fast_path = true` (the default): the hot inference routes on keygate's own
    /// HTTP/1.1 path, everything else through hyper and the router.
    Fast,
    /// `http.fast_path = false`: every request through hyper and the router.
    Router,
}

/// What a test runs against: a store backend behind a front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub backend: Backend,
    pub door: FrontDoor,
}
use crate::helpers::{test_config, TestDb};

/// `proxy_tests! { both: [a, b], sqlite: [c] }` makes, from `async fn a(Setup)` … in the
/// invoking module, each test once per front door (`http.fast_path` on and off):
/// `fast_path::sqlite::{a, b, c}`, `fast_path::postgres::{a, b}`, and the same under
/// `router::`.
///
/// The SQLite ones run keygate on tokio's single-threaded scheduler (as keygate itself
/// does on one CPU, where upstream writes are batched: `proxy::client::batch`), the
/// Postgres ones on the multi-threaded one, so every proxy path is tested under both.
/// The doors differ in HTTP handling, not in the store, so the `sqlite` list (most
/// tests) runs on SQLite only; the `both` list (the concurrency-sensitive tests) runs
/// on every store and door.
macro_rules! proxy_tests {
    (both: [$($both:ident),* $(,)?], sqlite: [$($lite:ident),* $(,)?] $(,)?) => {
        mod fast_path {
            $crate::proxy_helpers::proxy_tests!(@door Fast, [$($both),*], [$($lite),*]);
        }
        mod router {
            $crate::proxy_helpers::proxy_tests!(@door Router, [$($both),*], [$($lite),*]);
        }
    };
    (@door $door:ident, [$($both:ident),*], [$($lite:ident),*]) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $both() {
                    super::super::$both($crate::proxy_helpers::Setup {
                        backend: $crate::proxy_helpers::Backend::Sqlite,
                        door: $crate::proxy_helpers::FrontDoor::$door,
                    })
                    .await
                }
            )*
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $lite() {
                    super::super::$lite($crate::proxy_helpers::Setup {
                        backend: $crate::proxy_helpers::Backend::Sqlite,
                        door: $crate::proxy_helpers::FrontDoor::$door,
                    })
                    .await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $both() {
                    super::super::$both($crate::proxy_helpers::Setup {
                        backend: $crate::proxy_helpers::Backend::Postgres,
                        door: $crate::proxy_helpers::FrontDoor::$door,
                    })
                    .await
                }
            )*
        }
    };
}
pub(crate) use proxy_tests;

/// Priced by default: `gpt-4o-mini` at 0.15 / 0.60 USD per million tokens (DESIGN §9).
pub const PRICED_MODEL: &str = "gpt-4o-mini";
pub const PRICED_INPUT: &str = "0.15";
pub const PRICED_OUTPUT: &str = "0.60";
/// Served by the mock like any model, but without a price.
pub const UNPRICED_MODEL: &str = "mock-model";

pub fn price(name: &str, input_usd_per_mtok: &str, output_usd_per_mtok: &str) -> ModelPrice {
    ModelPrice {
        name: name.to_string(),
        input_usd_per_mtok: Decimal::from_str(input_usd_per_mtok).unwrap(),
        output_usd_per_mtok: Decimal::from_str(output_usd_per_mtok).unwrap(),
    }
}

/// keygate in front of a mock upstream.
pub struct ProxyApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// The bootstrap admin key of the `default` workspace.
    pub admin_key: String,
    pub workspace_id: Uuid,
    pub client: reqwest::Client,
    pub state: AppState,
    pub config: Config,
    pub mock: MockUpstream,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    // Last: the database goes after everything that uses it.
    _db: TestDb,
}

/// The configuration before a test's changes: one upstream serving every model (`*`) at
/// the mock, `gpt-4o-mini` priced, timeouts short enough for tests to notice hangs.
pub fn proxy_config(db: &TestDb, mock: &MockUpstream) -> Config {
    let mut config = test_config(&db.url);
    config.upstreams = vec![UpstreamConfig {
        name: "mock".into(),
        base_url: mock.base_url.clone(),
        api_key_env: None,
        models: vec!["*".into()],
        passthrough: Vec::new(),
    }];
    config.models = vec![price(PRICED_MODEL, PRICED_INPUT, PRICED_OUTPUT)];
    config.proxy.connect_timeout_secs = 2.0;
    config.proxy.first_byte_timeout_secs = 10.0;
    config.proxy.idle_timeout_secs = 10.0;
    config.proxy.timeout_secs = 60.0;
    config
}

pub async fn spawn_proxy(setup: Setup) -> ProxyApp {
    spawn_proxy_with(setup, |_| {}).await
}

/// `spawn_proxy` with a chance to change the configuration first.
pub async fn spawn_proxy_with(setup: Setup, configure: impl FnOnce(&mut Config)) -> ProxyApp {
    let mock = MockUpstream::start().await;
    let db = TestDb::new(setup.backend).await;
    let mut config = proxy_config(&db, &mock);
    config.http.fast_path = setup.door == FrontDoor::Fast;
    configure(&mut config);
    let admin_key = config
        .bootstrap_admin_key
        .as_ref()
        .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string())
        .expect("tests always install a bootstrap key");

    let app = App::build(config.clone()).await.expect("the app builds");
    let address = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let workspace_id = state
        .store
        .default_workspace()
        .await
        .expect("the default workspace exists")
        .id;
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    ProxyApp {
        address,
        admin_key,
        workspace_id,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client"),
        state,
        config,
        mock,
        shutdown: Some(tx),
        server: Some(server),
        _db: db,
    }
}

impl Drop for ProxyApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A key as created: its id and full secret.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    pub secret: String,
}

impl ProxyApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Stops the server as SIGTERM would (graceful shutdown, final usage flush) and waits
    /// until `App::run` has returned.
    pub async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("the app stops within 30 s")
                .expect("the server task did not panic")
                .expect("the server ended cleanly");
        }
    }

    // -----------------------------------------------------------------------------------
    // keys

    /// Creates a key through the admin API; `body` is merged into `{"name": …}`.
    pub async fn create_key(&self, body: Value) -> TestKey {
        let mut full = json!({ "name": "proxy test key" });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), body.as_object()) {
            for (k, v) in extra {
                full.insert(k.clone(), v.clone());
            }
        }
        let response = self
            .client
            .post(self.url("/admin/v1/keys"))
            .bearer_auth(&self.admin_key)
            .json(&full)
            .send()
            .await
            .expect("POST /admin/v1/keys");
        let (status, key) = json_body(response).await;
        assert_eq!(status, StatusCode::CREATED, "create {full}: {key}");
        TestKey {
            id: key["id"].as_str().unwrap().to_string(),
            secret: key["secret"].as_str().unwrap().to_string(),
        }
    }

    /// An inference key without limits.
    pub async fn plain_key(&self) -> TestKey {
        self.create_key(json!({})).await
    }

    /// `GET /admin/v1/keys/{id}`.
    pub async fn admin_get_key(&self, id: &str) -> Value {
        let (status, key) = self.admin_get(&format!("/admin/v1/keys/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        key
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .expect("admin GET");
        json_body(response).await
    }

    pub async fn admin_delete(&self, path: &str) -> StatusCode {
        self.client
            .delete(self.url(path))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .expect("admin DELETE")
            .status()
    }

    /// Sets the default workspace's credit balance straight in the store.
    pub async fn set_workspace_credits(&self, credits_usd: Option<&str>) {
        let store = &self.state.store;
        let mut workspace: Workspace = store.get_workspace(self.workspace_id).await.unwrap();
        workspace.credits_usd = credits_usd.map(|c| Decimal::from_str(c).unwrap());
        workspace.updated_at = keygate::clock::now();
        let audit = AuditEvent {
            id: Uuid::now_v7(),
            workspace_id: workspace.id,
            actor: "test".into(),
            action: "workspace.update".into(),
            target: format!("workspace:{}", workspace.id),
            at: keygate::clock::now(),
            source: None,
            details: json!({}),
        };
        store.update_workspace(&workspace, &audit).await.unwrap();
    }

    // -----------------------------------------------------------------------------------
    // inference

    /// `POST path` with `key` and a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST /v1/chat/completions`.
    pub async fn chat(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/v1/chat/completions", body).await
    }

    /// A non-streamed chat call that must succeed; returns the answer.
    pub async fn chat_ok(&self, key: &str, body: &Value) -> Value {
        let (status, answer) = json_body(self.chat(key, body).await).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    pub async fn get(&self, key: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
    }

    /// `GET /v1/key` with the key itself.
    pub async fn key_info(&self, key: &str) -> Value {
        let (status, info) = json_body(self.get(key, "/v1/key").await).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    /// `remaining` of one limit in `/v1/key` (`rpm`, `tpm`, …; `model` for model limits).
    pub async fn remaining(&self, key: &str, limit: &str, model: Option<&str>) -> i64 {
        let info = self.key_info(key).await;
        limit_view(&info, limit, model)["remaining"]
            .as_i64()
            .unwrap_or_else(|| panic!("no {limit} remaining in {info}"))
    }

    // -----------------------------------------------------------------------------------
    // accounting

    /// Usage rows of a key for the last hour, per minute (the usage API flushes first).
    pub async fn usage_rows(&self, key_id: &str) -> Vec<Value> {
        let from = (chrono::Utc::now() - chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (status, body) = self
            .admin_get(&format!(
                "/admin/v1/keys/{key_id}/usage?granularity=minute&from={from}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// The key's usage summed over all rows.
    pub async fn usage(&self, key_id: &str) -> UsageSum {
        let mut sum = UsageSum::default();
        for row in self.usage_rows(key_id).await {
            sum.requests += row["requests"].as_i64().unwrap();
            sum.input_tokens += row["input_tokens"].as_i64().unwrap();
            sum.output_tokens += row["output_tokens"].as_i64().unwrap();
            sum.cost_usd += usd(&row["cost_usd"]);
        }
        sum
    }

    /// Polls the usage API until `requests` requests are recorded (or 10 s pass), then
    /// waits a little longer and reads again, so that a second settlement would show.
    pub async fn settled_usage(&self, key_id: &str, requests: i64) -> UsageSum {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sum = self.usage(key_id).await;
            if sum.requests >= requests || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        self.usage(key_id).await
    }

    /// `GET /admin/v1/rate-limit-events` with a query string (without `?`).
    pub async fn rate_limit_events(&self, query: &str) -> Value {
        let (status, body) = self
            .admin_get(&format!("/admin/v1/rate-limit-events?{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

/// Sum of usage rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSum {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
}

/// A USD amount from a JSON number, exactly as written.
pub fn usd(value: &Value) -> Decimal {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("not a USD amount: {other}"),
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .unwrap_or_else(|_| panic!("not a USD amount: {text}"))
}

/// Exact cost of `input` and `output` tokens at per-million prices.
pub fn cost(input: i64, output: i64, input_per_mtok: &str, output_per_mtok: &str) -> Decimal {
    (Decimal::from(input) * Decimal::from_str(input_per_mtok).unwrap()
        + Decimal::from(output) * Decimal::from_str(output_per_mtok).unwrap())
        / Decimal::from(1_000_000)
}

/// One entry of `/v1/key`'s `limits`.
pub fn limit_view<'a>(info: &'a Value, limit: &str, model: Option<&str>) -> &'a Value {
    info["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == limit && l["model"].as_str() == model)
        .unwrap_or_else(|| panic!("no {limit} ({model:?}) in {info}"))
}

/// keygate's own prompt-token count of a request body (what it records when the
/// upstream reports no usage), from the same tokenizer.
pub fn keygate_prompt_tokens(kind: BodyKind, body: &Value) -> i64 {
    tokens::estimate(kind, body.to_string().as_bytes()).input as i64
}

/// keygate's count of generated text.
pub fn keygate_text_tokens(text: &str) -> i64 {
    tokens::count(text) as i64
}

/// Status and JSON body; panics (showing the body) if it is not JSON.
pub async fn json_body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

/// Asserts an OpenAI-shaped error (`{"error": {"message", "type", "code", "param"}}`) and
/// returns the `error` object.
pub async fn assert_openai_error(response: Response, status: StatusCode, code: &str) -> Value {
    let (got, body) = json_body(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    assert!(error["type"].is_string(), "error without a type: {body}");
    assert!(error.get("param").is_some(), "error without param: {body}");
    error.clone()
}

/// A header as text.
pub fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `1s`, `6m0s`, `1h2m3.5s`, `250ms`, `0s`: Go's duration format as OpenAI sends it.
pub fn is_go_duration(text: &str) -> bool {
    if let Some(ms) = text.strip_suffix("ms") {
        return !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
    }
    let Some(mut rest) = text.strip_suffix('s') else {
        return false;
    };
    for unit in ['h', 'm'] {
        if let Some((number, tail)) = rest.split_once(unit) {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            rest = tail;
        }
    }
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, "0"));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// Seconds in a Go duration string.
pub fn go_duration_secs(text: &str) -> f64 {
    assert!(is_go_duration(text), "not a Go duration: {text:?}");
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let mut rest = text.strip_suffix('s').unwrap();
    let mut secs = 0.0;
    for (unit, factor) in [('h', 3600.0), ('m', 60.0)] {
        if let Some((number, tail)) = rest.split_once(unit) {
            secs += number.parse::<f64>().unwrap() * factor;
            rest = tail;
        }
    }
    secs + rest.parse::<f64>().unwrap()
}

// ---------------------------------------------------------------------------------------
// SSE

/// One SSE event as the client received it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The `data:` payload (`[DONE]` verbatim).
    pub data: String,
    /// When it arrived, from the start of the read.
    pub at: Duration,
}

impl Event {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// Text of a chat or completion chunk.
    pub fn text(&self) -> String {
        let Some(chunk) = self.json() else {
            return String::new();
        };
        chunk["choices"]
            .as_array()
            .map(|choices| {
                choices
                    .iter()
                    .filter_map(|c| {
                        c["delta"]["content"]
                            .as_str()
                            .or_else(|| c["text"].as_str())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads an SSE body event by event as it arrives.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    started: Instant,
    pub ended: bool,
}

impl SseReader {
    pub fn new(response: Response) -> SseReader {
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            started: Instant::now(),
            ended: false,
        }
    }

    /// The next event; `None` at the end of the body (or on a broken body). Panics after 20 s.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end).collect();
                let text = String::from_utf8_lossy(&raw);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(Event {
                    data: data.join("\n"),
                    at: self.started.elapsed(),
                });
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.stream.next()).await {
                Err(_) => panic!("no SSE bytes for 20 s"),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// All remaining events.
    pub async fn rest(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Reads a whole SSE answer.
pub async fn read_sse(response: Response) -> Vec<Event> {
    SseReader::new(response).rest().await
}

/// The generated text of a stream's events.
pub fn stream_text(events: &[Event]) -> String {
    events.iter().map(Event::text).collect()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chat body with `max_tokens`.
pub fn chat_body(model: &str, content: &str, max_tokens: Option<u64>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// A streamed chat body.
pub fn stream_body(model: &str, content: &str, include_usage: Option<bool>) -> Value {
    let mut body = chat_body(model, content, None);
    body["stream"] = json!(true);
    if let Some(include_usage) = include_usage {
        body["stream_options"] = json!({ "include_usage": include_usage });
    }
    body
}

// ---------------------------------------------------------------------------------------
// raw HTTP

/// An answer as it came over the wire: every head (1xx ones too), and every byte after
/// the last head until the server closed the connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub heads: Vec<String>,
    pub rest: Vec<u8>,
}

impl RawAnswer {
    /// The final head's status code.
    pub fn status(&self) -> u16 {
        self.heads
            .last()
            .and_then(|head| head.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// The body after the final head, with chunked framing undone.
    pub fn body(&self) -> Vec<u8> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if !chunked {
            return self.rest.clone();
        }
        let mut body = Vec::new();
        let mut rest = &self.rest[..];
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .unwrap_or(0);
            rest = &rest[line_end + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body
    }

    /// The body as JSON; panics (showing it) if it is not.
    pub fn json(&self) -> Value {
        let body = self.body();
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.status(),
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// A header of the final head (name in any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.heads.last()?.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` (a whole HTTP/1.1 request, which should say `Connection: close`) to
/// `app` as bytes and reads everything until the server closes the connection: what a
/// crafted client sees, with nothing normalised on the way.
pub async fn raw_exchange(app: &ProxyApp, request: &[u8]) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the server closed the connection within 30 s")
        .unwrap();
    let mut heads = Vec::new();
    let mut rest = &bytes[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let informational = head.starts_with("HTTP/1.1 1");
        heads.push(head);
        rest = &rest[end + 4..];
        if !informational {
            break;
        }
    }
    RawAnswer {
        heads,
        rest: rest.to_vec(),
    }
}

/// A request head and body as bytes: `Connection: close`, the key as a bearer token,
/// and `Content-Length` unless `extra` sets `Transfer-Encoding` (the body is then sent
/// as one chunk, which hands the request to hyper and the router).
pub fn raw_request(
    method: &str,
    target: &str,
    key: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let chunked = extra
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !chunked && !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if chunked {
        if !body.is_empty() {
            bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            bytes.extend_from_slice(body);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// The two ways into keygate: the fast path (a `Content-Length` body) and hyper with the
/// router (a chunked one).
pub const DOORS: [&[(&str, &str)]; 2] = [&[], &[("Transfer-Encoding", "chunked")]];

/// A unique environment variable name for one test's upstream credential.
pub fn unique_env_var(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple()).to_ascii_uppercase()
}

/// An address nothing listens on (bound, then released).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}
