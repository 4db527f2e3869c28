//! Upstreams that accept and never answer, or answer one byte a second
//! ([`SlowUpstream`]): the client gets 504 `upstream_timeout` (or, once a stream has
//! begun, its error event) when the configured timeout that applies runs out (first byte,
//! idle, total), and the key's `max_parallel` slot and token reservation come back.

use std::time::{Duration, Instant};

use futures::stream;
use keygate::config::UpstreamConfig;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    app::{spawn_proxy_with, TestApp, TestKey},
    backends::{backend_tests, Setup},
    http::{assert_openai_error, chat_body},
    slow_upstream::{
        SlowUpstream, DRIP_BODY, DRIP_HEAD, DRIP_STREAM, SILENT, STALL_BODY, STALL_STREAM,
    },
    sse::read_sse,
};

const FIRST_BYTE: Duration = Duration::from_millis(1500);
/// Above the upstream's one byte a second, so dripping is never idle.
const IDLE: Duration = Duration::from_millis(2000);
const TOTAL: Duration = Duration::from_millis(4500);
/// How late after its timeout an answer may come on a loaded test machine.
const LATE: Duration = Duration::from_millis(1500);
/// The key's token bucket: a day's, so that it barely refills during a test.
const TPD: i64 = 1_000_000;
/// `max_tokens` of the hanging request: its reservation is at least this.
const MAX_TOKENS: u64 = 1000;

async fn spawn(setup: Setup) -> (TestApp, SlowUpstream, TestKey) {
    let slow = SlowUpstream::start().await;
    let base_url = slow.base_url.clone();
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams = vec![UpstreamConfig::new("slow", &base_url, &["*"])];
        config.proxy.first_byte_timeout_secs = FIRST_BYTE.as_secs_f64();
        config.proxy.idle_timeout_secs = IDLE.as_secs_f64();
        config.proxy.timeout_secs = TOTAL.as_secs_f64();
    })
    .await;
    let key = app
        .key_with(json!({ "max_parallel": 1, "limits": { "tpd": TPD } }))
        .await;
    (app, slow, key)
}

fn hanging_body(model: &str, stream: bool) -> Value {
    let mut body = chat_body(model, "hello there", Some(MAX_TOKENS));
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// While the hanging request is at the upstream: how many tokens its key has reserved,
/// and what a second request of the key (`max_parallel` = 1) gets.
async fn while_hanging(app: &TestApp, slow: &SlowUpstream, key: &TestKey) -> (i64, StatusCode) {
    slow.wait_for_requests(1).await;
    let reserved = TPD - app.remaining(&key.secret, "tpd", None).await;
    let second = app
        .chat(&key.secret, &chat_body("normal", "hi", None))
        .await;
    (reserved, second.status())
}

fn assert_on_time(elapsed: Duration, timeout: Duration, what: &str) {
    assert!(
        elapsed + Duration::from_millis(50) >= timeout && elapsed <= timeout + LATE,
        "{what}: the answer came after {elapsed:?}, the timeout is {timeout:?}"
    );
}

/// After the failed request: the slot is free (a request is admitted) and the key's
/// tokens are back but for `charged`.
async fn assert_given_back(app: &TestApp, key: &TestKey, charged: i64) {
    let remaining = app.remaining(&key.secret, "tpd", None).await;
    // A day's bucket refills about 12 tokens a second.
    assert!(
        (TPD - charged..=TPD - charged + 100).contains(&remaining),
        "remaining {remaining}, expected {} (the reservation is not back)",
        TPD - charged
    );
    app.chat_ok(&key.secret, &chat_body("normal", "hi", Some(5)))
        .await;
}

/// A non-streamed request to `model` gets 504 `upstream_timeout` after `timeout`; sent
/// with a chunked body when `chunked` (the router's front door instead of the fast path).
async fn answer_times_out(setup: Setup, model: &str, timeout: Duration, chunked: bool) {
    let (app, slow, key) = spawn(setup).await;
    let body = hanging_body(model, false);
    let started = Instant::now();
    let hanging = async {
        let request = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .header("content-type", "application/json");
        let request = if chunked {
            let bytes = body.to_string().into_bytes();
            request.body(reqwest::Body::wrap_stream(stream::once(async move {
                Ok::<_, std::io::Error>(bytes)
            })))
        } else {
            request.json(&body)
        };
        let response: Response = request.send().await.unwrap();
        (response, started.elapsed())
    };
    let ((response, elapsed), (reserved, second)) =
        tokio::join!(hanging, while_hanging(&app, &slow, &key));

    assert_openai_error(response, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout").await;
    assert_on_time(elapsed, timeout, model);
    assert!(reserved >= MAX_TOKENS as i64, "reserved only {reserved}");
    assert_eq!(second, StatusCode::TOO_MANY_REQUESTS, "the slot was held");
    // An upstream failure is not charged: the whole reservation comes back.
    assert_given_back(&app, &key, 0).await;
}

/// A streamed request to `model` ends with an `upstream_timeout` error event after
/// `timeout`, charged for its prompt and what was streamed.
async fn stream_times_out(setup: Setup, model: &str, timeout: Duration) {
    let (app, slow, key) = spawn(setup).await;
    let body = hanging_body(model, true);
    let started = Instant::now();
    let hanging = async {
        let response = app.chat(&key.secret, &body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let events = read_sse(response).await;
        (events, started.elapsed())
    };
    let ((events, elapsed), (reserved, second)) =
        tokio::join!(hanging, while_hanging(&app, &slow, &key));

    let last = events.last().and_then(|e| e.json()).unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{events:?}");
    assert_on_time(elapsed, timeout, model);
    assert!(reserved >= MAX_TOKENS as i64, "reserved only {reserved}");
    assert_eq!(second, StatusCode::TOO_MANY_REQUESTS, "the slot was held");
    let usage = app.usage(&key.id).await;
    assert_eq!(usage.requests, 1);
    assert_given_back(&app, &key, usage.input_tokens + usage.output_tokens).await;
}

async fn an_upstream_that_never_answers_times_out_at_the_first_byte(setup: Setup) {
    answer_times_out(setup, SILENT, FIRST_BYTE, false).await;
}

async fn an_upstream_that_never_answers_times_out_on_the_router_path_too(setup: Setup) {
    answer_times_out(setup, SILENT, FIRST_BYTE, true).await;
}

async fn a_head_dripped_a_byte_a_second_times_out_at_the_first_byte(setup: Setup) {
    answer_times_out(setup, DRIP_HEAD, FIRST_BYTE, false).await;
}

async fn a_body_that_stops_times_out_when_idle(setup: Setup) {
    answer_times_out(setup, STALL_BODY, IDLE, false).await;
}

async fn a_body_dripped_a_byte_a_second_times_out_at_the_total(setup: Setup) {
    answer_times_out(setup, DRIP_BODY, TOTAL, false).await;
}

async fn a_stream_that_stops_ends_with_a_timeout_event_when_idle(setup: Setup) {
    stream_times_out(setup, STALL_STREAM, IDLE).await;
}

async fn a_stream_dripped_a_byte_a_second_ends_with_a_timeout_event_at_the_total(setup: Setup) {
    stream_times_out(setup, DRIP_STREAM, TOTAL).await;
}

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        an_upstream_that_never_answers_times_out_at_the_first_byte,
        an_upstream_that_never_answers_times_out_on_the_router_path_too,
        a_head_dripped_a_byte_a_second_times_out_at_the_first_byte,
        a_body_that_stops_times_out_when_idle,
        a_body_dripped_a_byte_a_second_times_out_at_the_total,
        a_stream_that_stops_ends_with_a_timeout_event_when_idle,
        a_stream_dripped_a_byte_a_second_ends_with_a_timeout_event_at_the_total,
    ],
    sqlite: [],
}
