//! Anthropic's Messages API (issue 14 §2): `/v1/messages` and `/v1/messages/count_tokens`
//! to `kind = "anthropic"` upstreams with their own `x-api-key` and `anthropic-version`;
//! usage read from Anthropic's fields (cache tokens at their own prices), from
//! `message_start` / `message_delta` when streaming, charged once on every path; keys,
//! limits and budgets as on the OpenAI routes, refusals in Anthropic's error shape; the
//! routes of one API never reach the other's upstreams; and the first run with
//! `ANTHROPIC_API_KEY`.

use std::{str::FromStr, time::Duration};

use futures::StreamExt;
use keygate::{
    config::{UpstreamConfig, UpstreamKind},
    proxy::tokens::BodyKind,
    Config,
};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::helpers::{spawn_serve, strip_ansi, Backend, TestDb};
use crate::proxy_helpers::{
    chat_body, header, json_body, keygate_prompt_tokens, keygate_text_tokens, price,
    spawn_proxy_with, support::upstream as mock, unique_env_var, MockUpstream, Setup, TestApp,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        a_message_is_charged_its_tokens_and_cache_tokens_at_their_prices,
        a_stream_passes_every_event_unchanged_and_is_charged_once,
        a_client_gone_mid_stream_is_charged_once_for_what_was_seen,
        refusals_are_in_anthropics_shape_with_the_rate_limit_headers,
    ],
    sqlite: [
        a_break_mid_stream_ends_with_an_error_event_and_charges_what_was_seen,
        a_spent_budget_and_bad_requests_are_refused_in_anthropics_shape,
        the_upstream_gets_its_own_credential_and_version_never_the_clients_key,
        count_tokens_is_forwarded_and_charged_no_tokens,
        each_api_reaches_only_its_own_upstreams,
        fallback_moves_a_message_to_the_next_anthropic_upstream,
    ],
}

/// A Claude-like model priced with cache prices (USD per million tokens).
const INPUT: &str = "3";
const OUTPUT: &str = "15";
const CACHE_WRITE: &str = "3.75";
const CACHE_READ: &str = "0.3";
const PROMPT: &str = "tell me a short story please";

async fn spawn(setup: Setup) -> TestApp {
    spawn_proxy_with_mock(setup, |_| {}).await
}

/// [`spawn`] with more changes to the configuration.
async fn spawn_proxy_with_mock(setup: Setup, more: impl FnOnce(&mut Config)) -> TestApp {
    // The harness starts the mock first: its address is in the config it hands over.
    spawn_proxy_with(setup, |config| {
        let mock_url = config.upstreams[0].base_url.clone();
        config.upstreams = vec![UpstreamConfig {
            kind: UpstreamKind::Anthropic,
            ..UpstreamConfig::new("claude", &mock_url, &["*"])
        }];
        let mut priced = price(mock::MODEL_CACHED, INPUT, OUTPUT);
        priced.cache_creation_input_usd_per_mtok = Some(Decimal::from_str(CACHE_WRITE).unwrap());
        priced.cache_read_input_usd_per_mtok = Some(Decimal::from_str(CACHE_READ).unwrap());
        config.models.push(priced);
        more(config);
    })
    .await
}

fn message_body(model: &str, text: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    })
}

fn stream_message_body(model: &str, text: &str) -> Value {
    let mut body = message_body(model, text, 64);
    body["stream"] = json!(true);
    body
}

/// `POST path` as Anthropic's SDK sends it: the key in `x-api-key`.
async fn post_messages(app: &TestApp, key: &str, path: &str, body: &Value) -> Response {
    app.client
        .post(app.url(path))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("POST")
}

/// Asserts Anthropic's error shape and returns the error's `type` and `message`.
async fn anthropic_error(response: Response, status: StatusCode) -> (String, String) {
    let (got, body) = json_body(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    let kind = body["error"]["type"]
        .as_str()
        .expect("error.type")
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("error.message")
        .to_owned();
    assert!(!message.is_empty(), "{body}");
    (kind, message)
}

/// The exact cost of Anthropic usage at the test's prices.
fn claude_cost(input: i64, output: i64, cache_write: i64, cache_read: i64) -> Decimal {
    let at = |tokens: i64, price: &str| Decimal::from(tokens) * Decimal::from_str(price).unwrap();
    (at(input, INPUT)
        + at(output, OUTPUT)
        + at(cache_write, CACHE_WRITE)
        + at(cache_read, CACHE_READ))
        / Decimal::from(1_000_000)
}

/// The raw events of an SSE body: (event name, data JSON).
fn raw_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in event.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    name = rest.to_owned();
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(rest).unwrap_or(Value::Null);
                }
            }
            (name, data)
        })
        .collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .filter_map(|(_, data)| data["delta"]["text"].as_str())
        .collect()
}

async fn a_message_is_charged_its_tokens_and_cache_tokens_at_their_prices(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let body = message_body(mock::MODEL_CACHED, PROMPT, 5);

    // Act
    let response = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let (status, answer) = json_body(response).await;

    // Assert: the answer is Anthropic's, as the upstream sent it …
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["content"][0]["text"], mock::reply_text(5));
    let input = mock::anthropic_input_tokens(&body) as i64;
    assert_eq!(answer["usage"]["input_tokens"], input);
    assert_eq!(input, 8, "\"be brief\" and the six words of the prompt");
    // … and charged once: the prompt with its cache tokens, each at its price.
    let (write, read) = (
        mock::CACHE_CREATION_TOKENS as i64,
        mock::CACHE_READ_TOKENS as i64,
    );
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.input_tokens, input + write + read);
    assert_eq!(usage.output_tokens, 5);
    assert_eq!(usage.cost_usd, claude_cost(input, 5, write, read));
    assert_eq!(
        usage.cost_usd,
        Decimal::from_str("0.004449").unwrap(),
        "8 × 3 + 5 × 15 + 1000 × 3.75 + 2000 × 0.3 µUSD"
    );
}

async fn a_stream_passes_every_event_unchanged_and_is_charged_once(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let body = stream_message_body(mock::MODEL_CACHED, PROMPT);

    // Act
    let response = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").is_some_and(|t| t.starts_with("text/event-stream")));
    let text = response.text().await.unwrap();

    // Assert: every event as Anthropic sends it, in order, nothing added or hidden.
    let events = raw_events(&text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 7]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected, "{text}");
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{text}");
    }
    assert_eq!(text_of(&events), mock::reply_text(7));
    assert!(
        text.contains("event: message_start\ndata: {"),
        "events are passed as the upstream wrote them: {text}"
    );
    // Charged once, from message_start (prompt and cache) and message_delta (output).
    let input = mock::anthropic_input_tokens(&body) as i64;
    let (write, read) = (
        mock::CACHE_CREATION_TOKENS as i64,
        mock::CACHE_READ_TOKENS as i64,
    );
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.input_tokens, input + write + read);
    assert_eq!(usage.output_tokens, 7);
    assert_eq!(usage.cost_usd, claude_cost(input, 7, write, read));
}

async fn a_client_gone_mid_stream_is_charged_once_for_what_was_seen(setup: Setup) {
    // Arrange: one event every 300 ms.
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let body = stream_message_body("mock-slow-stream:300", PROMPT);
    let response = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        let chunk = stream.next().await.expect("more events").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    // Act: the client goes away mid-answer.
    drop(stream);

    // Assert: the upstream call is cancelled …
    let cancelled = app
        .mock
        .wait_until(Duration::from_secs(5), |m| {
            m.cancelled_streams() == 1 && m.active_streams() == 0
        })
        .await;
    assert!(cancelled, "cancelled {}", app.mock.cancelled_streams());
    // … and charged once: the prompt as message_start reported it, the output counted.
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(
        usage.input_tokens,
        mock::anthropic_input_tokens(&body) as i64
    );
    assert!(
        (1..=6).contains(&usage.output_tokens),
        "{} output tokens",
        usage.output_tokens
    );
    assert_eq!(app.mock.completed_streams(), 0);
}

async fn a_break_mid_stream_ends_with_an_error_event_and_charges_what_was_seen(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let body = stream_message_body(mock::MODEL_DROP_MID_STREAM, PROMPT);

    // Act
    let response = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();

    // Assert: the words before the break, then Anthropic's error event.
    let events = raw_events(&text);
    assert_eq!(text_of(&events), "Hello there");
    let (name, error) = events.last().expect("events").clone();
    assert_eq!(name, "error", "{text}");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error", "{error}");
    assert!(!events.iter().any(|(name, _)| name == "message_stop"));
    // Charged once: message_start's prompt, the output counted from what was streamed.
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(
        usage.input_tokens,
        mock::anthropic_input_tokens(&body) as i64
    );
    assert_eq!(usage.output_tokens, keygate_text_tokens("Hello there"));
}

async fn refusals_are_in_anthropics_shape_with_the_rate_limit_headers(setup: Setup) {
    // Arrange: 2 requests a minute.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({"limits": {"rpm": 2, "tpm": 100000}}))
        .await;
    let body = message_body(mock::DEFAULT_MODEL, PROMPT, 10);
    let estimate = keygate_prompt_tokens(BodyKind::Messages, &body) + 10;

    // Act
    let ok = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let _ = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let refused = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let bad_key = post_messages(&app, "kg_not-a-key", "/v1/messages", &body).await;

    // Assert: the same headers as on the OpenAI routes …
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(
        header(&ok, "x-ratelimit-remaining-tokens"),
        Some((100_000 - estimate).to_string().as_str())
    );
    let retry_after: u64 = header(&refused, "retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    // … and the errors in Anthropic's shape.
    let (kind, message) = anthropic_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("rpm"), "{message}");
    let (kind, _) = anthropic_error(bad_key, StatusCode::UNAUTHORIZED).await;
    assert_eq!(kind, "authentication_error");
    assert_eq!(app.mock.requests_to("/v1/messages").len(), 2);
}

async fn a_spent_budget_and_bad_requests_are_refused_in_anthropics_shape(setup: Setup) {
    // Arrange: a budget smaller than one call; a tpm too small for a long answer.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({"budget": {"limit_usd": 0.000001, "period": "lifetime"}}))
        .await;
    let small = app.key_with(json!({"limits": {"tpm": 50}})).await;
    let body = message_body(mock::MODEL_CACHED, PROMPT, 5);
    let mut no_max_tokens = body.clone();
    no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
    let mut bad_max_tokens = body.clone();
    bad_max_tokens["max_tokens"] = json!("lots");

    // Act
    let first = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let spent = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let too_big = post_messages(
        &app,
        &small.secret,
        "/v1/messages",
        &message_body(mock::DEFAULT_MODEL, PROMPT, 1000),
    )
    .await;
    let missing = post_messages(&app, &key.secret, "/v1/messages", &no_max_tokens).await;
    let invalid = post_messages(&app, &key.secret, "/v1/messages", &bad_max_tokens).await;
    let not_json = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key.secret)
        .body("{not json")
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(first.status(), StatusCode::OK);
    let (kind, message) = anthropic_error(spent, StatusCode::PAYMENT_REQUIRED).await;
    assert_eq!(kind, "billing_error");
    assert!(message.contains("budget"), "{message}");
    let (kind, message) = anthropic_error(too_big, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("tpm"), "{message}");
    for refused in [missing, invalid] {
        let (kind, message) = anthropic_error(refused, StatusCode::BAD_REQUEST).await;
        assert_eq!(kind, "invalid_request_error");
        assert!(message.contains("max_tokens"), "{message}");
    }
    let (kind, _) = anthropic_error(not_json, StatusCode::BAD_REQUEST).await;
    assert_eq!(kind, "invalid_request_error");
    assert_eq!(app.mock.requests_to("/v1/messages").len(), 1);
}

async fn the_upstream_gets_its_own_credential_and_version_never_the_clients_key(setup: Setup) {
    // Arrange: the upstream's key in an environment variable, a version of its own.
    let var = unique_env_var("KG_TEST_ANTHROPIC_KEY");
    let upstream_secret = format!("sk-ant-{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, &upstream_secret);
    let app = spawn_proxy_with_mock(setup, |config| {
        config.upstreams[0].api_key_env = Some(var.clone());
        config.upstreams[0].anthropic_version = "2024-01-01".into();
    })
    .await;
    app.mock.expect_api_key(Some(&upstream_secret));
    let key = app.plain_key().await;
    let body = message_body(mock::DEFAULT_MODEL, PROMPT, 5);

    // Act: once with the key in `x-api-key` (Anthropic's SDK), once as a Bearer token.
    let by_api_key = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let by_bearer = app.post(&key.secret, "/v1/messages", &body).await;

    // Assert
    assert_eq!(by_api_key.status(), StatusCode::OK);
    assert_eq!(by_bearer.status(), StatusCode::OK);
    let received = app.mock.requests_to("/v1/messages");
    assert_eq!(received.len(), 2);
    for request in &received {
        assert_eq!(request.auth_ok, Some(true));
        assert_eq!(request.header_all("x-api-key"), [upstream_secret.as_str()]);
        assert_eq!(request.header_all("anthropic-version"), ["2024-01-01"]);
        assert_eq!(request.authorization, None);
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&key.secret),
                "the client's key was forwarded in `{name}`"
            );
        }
    }
}

async fn count_tokens_is_forwarded_and_charged_no_tokens(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let body = json!({
        "model": mock::MODEL_CACHED,
        "messages": [{"role": "user", "content": PROMPT}],
    });

    // Act
    let response = post_messages(&app, &key.secret, "/v1/messages/count_tokens", &body).await;
    let (status, answer) = json_body(response).await;
    let unauthenticated = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"input_tokens": mock::words(PROMPT)}));
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(
        (usage.requests, usage.input_tokens, usage.output_tokens),
        (1, 0, 0)
    );
    assert_eq!(usage.cost_usd, Decimal::ZERO);
    let (kind, _) = anthropic_error(unauthenticated, StatusCode::UNAUTHORIZED).await;
    assert_eq!(kind, "authentication_error");
    assert_eq!(app.mock.requests_to("/v1/messages/count_tokens").len(), 1);
}

async fn each_api_reaches_only_its_own_upstreams(setup: Setup) {
    // Arrange: `gpt-4o-mini` on an OpenAI upstream, `claude-x` on an Anthropic one.
    let app = spawn_proxy_with_mock(setup, |config| {
        let url = config.upstreams[0].base_url.clone();
        config.upstreams = vec![
            UpstreamConfig::new("openai", &url, &["gpt-4o-mini"]),
            UpstreamConfig {
                kind: UpstreamKind::Anthropic,
                ..UpstreamConfig::new("claude", &url, &["claude-x"])
            },
        ];
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let messages_to_gpt = post_messages(
        &app,
        &key.secret,
        "/v1/messages",
        &message_body("gpt-4o-mini", PROMPT, 5),
    )
    .await;
    let chat_to_claude = app
        .chat(&key.secret, &chat_body("claude-x", PROMPT, None))
        .await;
    let unknown = post_messages(
        &app,
        &key.secret,
        "/v1/messages",
        &message_body("nobody-serves-this", PROMPT, 5),
    )
    .await;
    let claude = post_messages(
        &app,
        &key.secret,
        "/v1/messages",
        &message_body("claude-x", PROMPT, 5),
    )
    .await;

    // Assert
    let (kind, message) = anthropic_error(messages_to_gpt, StatusCode::NOT_FOUND).await;
    assert_eq!(kind, "not_found_error");
    assert!(
        message.contains("gpt-4o-mini") && message.contains("/v1/messages"),
        "{message}"
    );
    let (status, error) = json_body(chat_to_claude).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("claude-x") && message.contains("/v1/messages"),
        "{message}"
    );
    let (kind, _) = anthropic_error(unknown, StatusCode::NOT_FOUND).await;
    assert_eq!(kind, "not_found_error");
    assert_eq!(claude.status(), StatusCode::OK);
    assert_eq!(app.mock.requests_to("/v1/messages").len(), 1);
    assert!(app.mock.requests_to("/v1/chat/completions").is_empty());
}

async fn fallback_moves_a_message_to_the_next_anthropic_upstream(setup: Setup) {
    // Arrange: a failing Anthropic upstream first, the mock second.
    let down = MockUpstream::start().await;
    down.fail_with(Some((529, None)));
    let down_url = down.base_url.clone();
    let app = spawn_proxy_with_mock(setup, |config| {
        let mut first = UpstreamConfig {
            kind: UpstreamKind::Anthropic,
            ..UpstreamConfig::new("first", &down_url, &["*"])
        };
        first.priority = 0;
        config.upstreams[0].priority = 1;
        config.upstreams.insert(0, first);
    })
    .await;
    let key = app.plain_key().await;
    let body = message_body(mock::DEFAULT_MODEL, PROMPT, 5);

    // Act
    let response = post_messages(&app, &key.secret, "/v1/messages", &body).await;
    let (status, answer) = json_body(response).await;

    // Assert: answered by the second, charged once.
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(down.requests_to("/v1/messages").len(), 1);
    assert_eq!(app.mock.requests_to("/v1/messages").len(), 1);
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.output_tokens, 5);
}

#[tokio::test]
async fn with_only_anthropic_api_key_set_keygate_serves_anthropic_and_says_so() {
    // Arrange: no [[upstreams]]; ANTHROPIC_BASE_URL (as Anthropic's SDK reads it, without
    // `/v1`) points at the mock, which expects the key from ANTHROPIC_API_KEY.
    let mock = MockUpstream::start_with_api_key("sk-ant-first-run").await;
    let sdk_base_url = format!("http://{}", mock.addr);
    let db = TestDb::new(Backend::Sqlite).await;
    let admin = keygate::keys::Token::generate().expose().to_string();
    let server = spawn_serve(
        &db,
        &[
            ("KEYGATE_BOOTSTRAP_ADMIN_KEY", &admin),
            ("ANTHROPIC_API_KEY", "sk-ant-first-run"),
            ("ANTHROPIC_BASE_URL", &sdk_base_url),
        ],
    )
    .await;
    let created: Value = reqwest::Client::new()
        .post(server.url("/admin/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "first run"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["secret"].as_str().expect("a secret").to_string();

    // Act
    let response = reqwest::Client::new()
        .post(server.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&message_body("claude-sonnet-4-5", PROMPT, 5))
        .send()
        .await
        .unwrap();
    let (status, answer) = json_body(response).await;
    let chat = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("claude-sonnet-4-5", PROMPT, None))
        .send()
        .await
        .unwrap()
        .status();
    let (_, stderr) = server.stop().await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sent = mock.last_request().expect("the mock was called");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.auth_ok, Some(true), "{:?}", sent.headers);
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(chat, StatusCode::NOT_FOUND, "no OpenAI upstream");
    let stderr = strip_ansi(&stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("no [[upstreams]] configured"))
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    assert!(
        line.contains("INFO") && line.contains("ANTHROPIC_API_KEY"),
        "{line}"
    );
    assert!(line.contains(&format!("{sdk_base_url}/v1")), "{line}");
    assert!(
        !stderr.contains("sk-ant-first-run"),
        "the credential was logged"
    );
}

#[tokio::test]
async fn the_first_run_uses_anthropics_public_base_url() {
    // Arrange + Act: the key alone (nothing is sent: there is no internet here).
    let db = TestDb::new(Backend::Sqlite).await;
    let server = spawn_serve(&db, &[("ANTHROPIC_API_KEY", "sk-ant-test")]).await;
    let readiness: Value = reqwest::get(server.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, stderr) = server.stop().await;

    // Assert
    let stderr = strip_ansi(&stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("no [[upstreams]] configured"))
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    assert!(line.contains("https://api.anthropic.com/v1"), "{line}");
    assert_eq!(
        readiness["upstreams"][0]["name"], "anthropic",
        "{readiness}"
    );
}
