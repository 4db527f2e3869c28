//! Several upstreams per model (issue 14 §1): candidates in tiers by priority, spread by
//! weight, fallback on a connect error, a 429 or a 5xx before any byte reached the client
//! (charged once, for the attempt that answered), never after; the breaker that skips a
//! failing upstream and lets it back after its cool-down; `Retry-After` honoured;
//! `model_mapping`; and the first run with only `OPENAI_API_KEY` set. Each upstream is its
//! own mock; the client's key must reach none of them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keygate::{config::UpstreamConfig, Config};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_serve, spawn_serve_with, strip_ansi, Backend, TestDb};
use crate::proxy_helpers::{
    chat_body, closed_port_url, eventually, json_body, keygate_text_tokens, price, read_sse,
    spawn_proxy_with, stream_body, stream_text, support::upstream as mock, Event, MockUpstream,
    Setup, TestApp, TestKey,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        a_failing_upstream_is_skipped_charged_once_and_back_after_its_cool_down,
    ],
    sqlite: [
        weights_hold_over_a_thousand_requests_and_a_worse_priority_gets_nothing,
        a_closed_port_falls_back_for_whole_and_streamed_answers,
        retry_after_on_a_429_moves_traffic_off_that_upstream_for_that_long,
        the_worse_priority_gets_everything_while_the_better_one_is_down,
        a_stream_that_breaks_mid_way_is_not_retried_and_is_charged_for_what_streamed,
        model_mapping_sends_the_upstreams_name_and_meters_the_clients,
        when_every_attempt_fails_the_last_answer_stands_and_nothing_is_charged,
    ],
}

const PROMPT: &str = "route me somewhere";

/// keygate in front of `n` mocks of its own; `configure` gets the config (with no
/// upstream yet) and the mocks' base URLs, and names the upstreams.
async fn spawn_routed(
    setup: Setup,
    n: usize,
    configure: impl FnOnce(&mut Config, &[String]),
) -> (TestApp, Vec<MockUpstream>) {
    let mut mocks = Vec::with_capacity(n);
    for _ in 0..n {
        mocks.push(MockUpstream::start().await);
    }
    let urls: Vec<String> = mocks.iter().map(|m| m.base_url.clone()).collect();
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams.clear();
        configure(config, &urls);
    })
    .await;
    (app, mocks)
}

fn upstream(name: &str, base_url: &str, priority: u32, weight: u32) -> UpstreamConfig {
    UpstreamConfig {
        priority,
        weight,
        ..UpstreamConfig::new(name, base_url, &["*"])
    }
}

fn chats(mock: &MockUpstream) -> usize {
    mock.requests_to("/v1/chat/completions").len()
}

/// The client's key appears in no header and no body any mock received.
fn assert_key_never_forwarded(mocks: &[&MockUpstream], key: &TestKey) {
    let mut seen = 0;
    for mock in mocks {
        for request in mock.requests() {
            seen += 1;
            for (name, value) in &request.headers {
                assert!(
                    !value.contains(&key.secret),
                    "the client's key reached an upstream in `{name}`"
                );
            }
            assert!(
                !String::from_utf8_lossy(&request.raw_body).contains(&key.secret),
                "the client's key reached an upstream in a body"
            );
        }
    }
    assert!(seen > 0, "no upstream received anything");
}

/// The `/readyz` answer and the breaker state of `upstream` in it.
async fn readiness(app: &TestApp, upstream: &str) -> (StatusCode, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    let (status, body) = json_body(response).await;
    let entry = body["upstreams"]
        .as_array()
        .and_then(|list| list.iter().find(|u| u["name"] == upstream))
        .cloned()
        .unwrap_or_else(|| panic!("no upstream `{upstream}` in {body}"));
    (status, entry)
}

async fn chat_is_ok(app: &TestApp, key: &TestKey, model: &str) -> Value {
    app.chat_ok(&key.secret, &chat_body(model, PROMPT, None))
        .await
}

async fn weights_hold_over_a_thousand_requests_and_a_worse_priority_gets_nothing(setup: Setup) {
    // Arrange: a (weight 3) and b (weight 1) at priority 0; c at priority 1.
    let (app, mocks) = spawn_routed(setup, 3, |config, urls| {
        config.upstreams = vec![
            upstream("a", &urls[0], 0, 3),
            upstream("b", &urls[1], 0, 1),
            upstream("c", &urls[2], 1, 10),
        ];
    })
    .await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, PROMPT, None);

    // Act: 1 000 requests, 8 at a time.
    let statuses: Vec<StatusCode> = futures::stream::iter(0..1000)
        .map(|_| async { app.chat(&key.secret, &body).await.status() })
        .buffer_unordered(8)
        .collect()
        .await;

    // Assert
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let (a, b, c) = (chats(&mocks[0]), chats(&mocks[1]), chats(&mocks[2]));
    assert_eq!(a + b, 1000);
    assert!(
        (700..=800).contains(&a),
        "a got {a}, b got {b} (3:1 expected)"
    );
    assert_eq!(
        c, 0,
        "the priority-1 upstream got requests while priority 0 was healthy"
    );
    let usage = app.settled_usage(&key.id, 1000).await;
    assert_eq!(usage.requests, 1000);
    assert_key_never_forwarded(&mocks.iter().collect::<Vec<_>>(), &key);
}

async fn a_failing_upstream_is_skipped_charged_once_and_back_after_its_cool_down(setup: Setup) {
    // Arrange: a answers 500 to everything; its breaker opens after 2 failures for 3 s.
    let (app, mocks) = spawn_routed(setup, 2, |config, urls| {
        config.upstreams = vec![upstream("a", &urls[0], 0, 1), upstream("b", &urls[1], 0, 1)];
        config.proxy.breaker_failures = 2;
        config.proxy.breaker_cooldown_secs = 3.0;
        config.models = vec![price(mock::DEFAULT_MODEL, "1", "2")];
    })
    .await;
    let key = app.plain_key().await;
    mocks[0].fail_with(Some((500, None)));

    // Act
    let started = Instant::now();
    for _ in 0..20 {
        chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
    }
    let took = started.elapsed();

    // Assert: every request answered by b; a tried until its breaker opened, then skipped.
    assert!(took < Duration::from_secs(3), "20 requests took {took:?}");
    assert_eq!(chats(&mocks[0]), 2, "a was tried past its breaker");
    assert_eq!(chats(&mocks[1]), 20);
    // Charged once per client request, for the attempt that answered.
    let usage = app.settled_usage(&key.id, 20).await;
    assert_eq!(usage.requests, 20);
    let expected = mock::expected_usage(&chat_body(mock::DEFAULT_MODEL, PROMPT, None));
    assert_eq!(usage.input_tokens, 20 * expected.prompt_tokens as i64);
    assert_eq!(usage.output_tokens, 20 * expected.completion_tokens as i64);
    let (status, a) = readiness(&app, "a").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "upstream health must not change readiness"
    );
    assert_eq!(a["state"], "open", "{a}");
    assert_eq!(readiness(&app, "b").await.1["state"], "closed");

    // Act: a recovers; after its cool-down it is half-open …
    mocks[0].fail_with(None);
    let half_open = eventually(Duration::from_secs(10), || async {
        readiness(&app, "a").await.1["state"] == "half_open"
    })
    .await;
    assert!(half_open, "{}", readiness(&app, "a").await.1);
    for _ in 0..10 {
        chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
    }

    // Assert: … its probe succeeded and it takes its share again.
    let a_after = chats(&mocks[0]) - 2;
    assert!(a_after >= 4, "a got {a_after} of 10 after coming back");
    let a = readiness(&app, "a").await.1;
    assert_eq!(a["state"], "closed", "{a}");
    assert_eq!(a["consecutive_failures"], 0, "{a}");
    assert_key_never_forwarded(&[&mocks[0], &mocks[1]], &key);
}

async fn a_closed_port_falls_back_for_whole_and_streamed_answers(setup: Setup) {
    // Arrange: a's port is closed (connect error), b is the mock.
    let closed = closed_port_url();
    let (app, mocks) = spawn_routed(setup, 1, |config, urls| {
        config.upstreams = vec![upstream("a", &closed, 0, 1), upstream("b", &urls[0], 0, 1)];
    })
    .await;
    let key = app.plain_key().await;

    // Act + Assert
    for i in 0..10 {
        if i % 2 == 0 {
            let answer = chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
            assert_eq!(
                answer["choices"][0]["message"]["content"],
                mock::reply_text(7)
            );
        } else {
            let response = app
                .chat(&key.secret, &stream_body(mock::DEFAULT_MODEL, PROMPT, None))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let events = read_sse(response).await;
            assert_eq!(stream_text(&events), mock::reply_text(7));
        }
    }
    assert_eq!(chats(&mocks[0]), 10);
    let usage = app.settled_usage(&key.id, 10).await;
    assert_eq!(usage.requests, 10);
    let a = readiness(&app, "a").await.1;
    assert!(a["consecutive_failures"].as_u64() >= Some(1), "{a}");
    assert_key_never_forwarded(&[&mocks[0]], &key);
}

async fn retry_after_on_a_429_moves_traffic_off_that_upstream_for_that_long(setup: Setup) {
    // Arrange: a answers 429 with `Retry-After: 2`; failures alone would never open it.
    let (app, mocks) = spawn_routed(setup, 2, |config, urls| {
        config.upstreams = vec![upstream("a", &urls[0], 0, 1), upstream("b", &urls[1], 0, 1)];
        config.proxy.breaker_failures = 1000;
    })
    .await;
    let key = app.plain_key().await;
    mocks[0].fail_with(Some((429, Some(2))));

    // Act: the first request goes to a (the first of equals), gets the 429, moves to b.
    chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
    let limited_at = Instant::now();
    assert_eq!(chats(&mocks[0]), 1);
    mocks[0].fail_with(None);
    let a = readiness(&app, "a").await.1;
    assert_eq!(a["state"], "open", "{a}");
    // Requests every 100 ms until a gets one again.
    let back_after = loop {
        chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
        if chats(&mocks[0]) > 1 {
            break limited_at.elapsed();
        }
        assert!(
            limited_at.elapsed() < Duration::from_secs(10),
            "a never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Assert: about 2 s without traffic, then back.
    assert!(
        (Duration::from_millis(1700)..Duration::from_secs(4)).contains(&back_after),
        "a was back after {back_after:?}"
    );
    assert!(chats(&mocks[1]) >= 10, "b got {}", chats(&mocks[1]));
    assert_key_never_forwarded(&[&mocks[0], &mocks[1]], &key);
}

async fn the_worse_priority_gets_everything_while_the_better_one_is_down(setup: Setup) {
    // Arrange
    let (app, mocks) = spawn_routed(setup, 2, |config, urls| {
        config.upstreams = vec![
            upstream("primary", &urls[0], 0, 1),
            upstream("fallback", &urls[1], 1, 1),
        ];
        config.proxy.breaker_failures = 2;
    })
    .await;
    let key = app.plain_key().await;
    for _ in 0..10 {
        chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
    }
    assert_eq!((chats(&mocks[0]), chats(&mocks[1])), (10, 0));

    // Act: the primary goes down.
    mocks[0].fail_with(Some((503, None)));
    for _ in 0..10 {
        chat_is_ok(&app, &key, mock::DEFAULT_MODEL).await;
    }

    // Assert: the fallback answered all ten; the primary saw two more, then its breaker opened.
    assert_eq!((chats(&mocks[0]), chats(&mocks[1])), (12, 10));
    let usage = app.settled_usage(&key.id, 20).await;
    assert_eq!(usage.requests, 20);
    assert_key_never_forwarded(&[&mocks[0], &mocks[1]], &key);
}

async fn a_stream_that_breaks_mid_way_is_not_retried_and_is_charged_for_what_streamed(
    setup: Setup,
) {
    // Arrange
    let (app, mocks) = spawn_routed(setup, 2, |config, urls| {
        config.upstreams = vec![upstream("a", &urls[0], 0, 1), upstream("b", &urls[1], 1, 1)];
    })
    .await;
    let key = app.plain_key().await;
    let body = stream_body(mock::MODEL_DROP_MID_STREAM, PROMPT, None);

    // Act
    let response = app.chat(&key.secret, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = read_sse(response).await;

    // Assert: what streamed, then the error event; nothing sent to b.
    assert_eq!(stream_text(&events), "Hello there");
    let error = events
        .iter()
        .filter_map(Event::json)
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!((chats(&mocks[0]), chats(&mocks[1])), (1, 0));
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(usage.output_tokens, keygate_text_tokens("Hello there"));
}

async fn model_mapping_sends_the_upstreams_name_and_meters_the_clients(setup: Setup) {
    // Arrange: the client's `gpt-4o` is the mock's `mock-model`; only `gpt-4o` is priced.
    let (app, mocks) = spawn_routed(setup, 1, |config, urls| {
        let mut mapped = UpstreamConfig::new("azure-eu", &urls[0], &[]);
        mapped
            .model_mapping
            .insert("gpt-4o".into(), mock::DEFAULT_MODEL.into());
        config.upstreams = vec![mapped];
        config.models = vec![price("gpt-4o", "2.5", "10")];
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let answer = chat_is_ok(&app, &key, "gpt-4o").await;
    let stream = stream_body("gpt-4o", PROMPT, None);
    let events = read_sse(app.chat(&key.secret, &stream).await).await;
    let (status, unknown) = json_body(
        app.chat(&key.secret, &chat_body("gpt-4", PROMPT, None))
            .await,
    )
    .await;

    // Assert: the upstream saw its own name, the client gets the upstream's answer …
    assert_eq!(answer["model"], mock::DEFAULT_MODEL);
    let sent = mocks[0].requests_to("/v1/chat/completions");
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|r| r.model() == Some(mock::DEFAULT_MODEL)));
    // … the streamed body was changed twice (model, usage asked) and nothing else.
    let streamed = sent[1].body.clone().expect("a JSON body");
    assert!(sent[1].include_usage());
    assert_eq!(streamed["messages"], stream["messages"]);
    assert_eq!(streamed["stream"], true);
    assert_eq!(stream_text(&events), mock::reply_text(7));
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    // The model list names the client's model, served by the upstream that maps it.
    let (_, models) = json_body(app.get_as(&key.secret, "/v1/models").await).await;
    let listed = models["data"]
        .as_array()
        .and_then(|data| data.iter().find(|m| m["id"] == "gpt-4o"))
        .unwrap_or_else(|| panic!("gpt-4o not listed: {models}"));
    assert_eq!(listed["owned_by"], "azure-eu", "{listed}");
    // … and usage and price are the client's model's.
    let rows = app.usage_rows(&key.id).await;
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|row| row["model"] == "gpt-4o"), "{rows:?}");
    let usage = app.settled_usage(&key.id, 2).await;
    assert_eq!(usage.requests, 2);
    assert!(usage.cost_usd > rust_decimal::Decimal::ZERO, "{usage:?}");
    assert_key_never_forwarded(&[&mocks[0]], &key);
}

async fn when_every_attempt_fails_the_last_answer_stands_and_nothing_is_charged(setup: Setup) {
    // Arrange: three failing upstreams, at most two attempts.
    let (app, mocks) = spawn_routed(setup, 3, |config, urls| {
        config.upstreams = vec![
            upstream("a", &urls[0], 0, 1),
            upstream("b", &urls[1], 1, 1),
            upstream("c", &urls[2], 2, 1),
        ];
        config.proxy.max_attempts = 2;
    })
    .await;
    let key = app.plain_key().await;
    mocks[0].fail_with(Some((500, None)));
    mocks[1].fail_with(Some((503, None)));
    mocks[2].fail_with(Some((500, None)));

    // Act
    let (status, body) = json_body(
        app.chat(&key.secret, &chat_body(mock::DEFAULT_MODEL, PROMPT, None))
            .await,
    )
    .await;

    // Assert: b's 503 (the last attempt's), c never tried, nothing charged.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(
        (chats(&mocks[0]), chats(&mocks[1]), chats(&mocks[2])),
        (1, 1, 0)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.usage(&key.id).await.requests, 0);
}

// ---------------------------------------------------------------------------------------
// The first run (the real binary)

/// The admin key the binary installs, and a fresh inference key made with it.
async fn inference_key(base: &str, admin: &str) -> String {
    let created: Value = reqwest::Client::new()
        .post(format!("{base}/admin/v1/keys"))
        .bearer_auth(admin)
        .json(&json!({"name": "first run"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["secret"].as_str().expect("a secret").to_string()
}

#[tokio::test]
async fn with_only_openai_api_key_set_keygate_serves_openai_and_says_so() {
    // Arrange: no [[upstreams]]; OPENAI_BASE_URL points the OpenAI upstream at the mock,
    // which expects the key from OPENAI_API_KEY.
    let mock = MockUpstream::start_with_api_key("sk-test-first-run").await;
    let db = TestDb::new(Backend::Sqlite).await;
    let admin = keygate::keys::Token::generate().expose().to_string();
    let server = spawn_serve(
        &db,
        &[
            ("KEYGATE_BOOTSTRAP_ADMIN_KEY", &admin),
            ("OPENAI_API_KEY", "sk-test-first-run"),
            ("OPENAI_BASE_URL", &mock.base_url),
        ],
    )
    .await;
    let key = inference_key(&server.address, &admin).await;

    // Act
    let response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("gpt-4o-mini", PROMPT, None))
        .send()
        .await
        .unwrap();
    let (status, answer) = json_body(response).await;
    let (_, stderr) = server.stop().await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sent = mock.last_request().expect("the mock was called");
    assert_eq!(sent.auth_ok, Some(true), "{:?}", sent.authorization);
    let stderr = strip_ansi(&stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("no [[upstreams]] configured"))
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    assert!(
        line.contains("INFO") && line.contains("OPENAI_API_KEY"),
        "{line}"
    );
    assert!(
        !stderr.contains("sk-test-first-run"),
        "the credential was logged"
    );
}

#[tokio::test]
async fn the_first_run_uses_openais_public_base_url() {
    // Arrange + Act: the key alone (nothing is sent: there is no internet here).
    let db = TestDb::new(Backend::Sqlite).await;
    let server = spawn_serve(&db, &[("OPENAI_API_KEY", "sk-test")]).await;
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
    assert!(line.contains("https://api.openai.com/v1"), "{line}");
    assert_eq!(readiness["upstreams"][0]["name"], "openai", "{readiness}");
}

#[tokio::test]
async fn with_no_upstream_and_no_provider_key_keygate_warns_naming_the_config_key() {
    // Arrange + Act: `keygate()` removes a developer's own OPENAI_API_KEY.
    let db = TestDb::new(Backend::Sqlite).await;
    let server = spawn_serve_with(&db, "", &[]).await;
    let (_, stderr) = server.stop().await;

    // Assert
    let stderr = strip_ansi(&stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("nothing can be proxied"))
        .unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(
        line.contains("WARN") && line.contains("[[upstreams]]"),
        "{line}"
    );
    assert!(line.contains("OPENAI_API_KEY"), "{line}");
}
