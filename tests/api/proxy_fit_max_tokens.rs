//! `max_tokens` fitted to what a key has left (issue 14 §4): on a key with
//! `fit_max_tokens`, a request refused only by tpm/tpd or by its budget goes upstream with
//! a lower cap, named in `x-keygate-max-tokens-fitted`, and is never charged past the
//! limit; a request that fits is untouched; below `proxy.min_fitted_tokens`, with the
//! field off, and for rpm, the refusal stands. The mock answers `min(cap, 7)` completion
//! tokens, so a floor of 2 lets the tests fit caps the upstream really obeys.

use keygate::proxy::tokens::BodyKind;
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::proxy_helpers::{
    assert_openai_error, chat_body, cost, header, json_body, keygate_prompt_tokens, read_sse,
    spawn_proxy, spawn_proxy_with, stream_text, support::upstream as mock, usd, Setup, TestApp,
    PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT,
};
use crate::support::backends::{backend_tests, Backend};

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        a_tpm_limited_key_gets_its_request_fitted,
        a_budget_limited_key_gets_its_request_fitted,
        a_request_that_fits_is_untouched,
    ],
    sqlite: [
        a_streamed_request_is_fitted_and_says_so,
        max_completion_tokens_is_the_member_lowered,
        a_total_tokens_bucket_leaves_room_for_the_prompt,
        below_the_floor_the_refusal_stands,
        with_fit_off_the_refusal_stands,
        an_rpm_refusal_is_never_fitted,
        patch_sets_and_clears_fit_max_tokens,
    ],
}

const FITTED: &str = "x-keygate-max-tokens-fitted";

/// keygate in front of its mock, fitting down to 2 tokens.
async fn spawn(setup: Setup) -> TestApp {
    spawn_proxy_with(setup, |config| config.proxy.min_fitted_tokens = 2).await
}

/// The body the mock received for the `n`-th chat request.
fn upstream_body(app: &TestApp, n: usize) -> Value {
    let requests = app.mock.requests_to("/v1/chat/completions");
    requests[n].body.clone().expect("a JSON body upstream")
}

fn fitted(response: &Response) -> Option<u64> {
    header(response, FITTED).map(|v| v.parse().expect("a whole number"))
}

async fn a_tpm_limited_key_gets_its_request_fitted(setup: Setup) {
    // Arrange: 5 output tokens a minute; the request asks for 100.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"tpm": 5, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", Some(100));

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert: admitted with the cap lowered to what was left, and it says so.
    assert_eq!(fitted(&response), Some(5));
    let (status, answer) = json_body(response).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5, "{answer}");
    assert_eq!(upstream_body(&app, 0)["max_tokens"], 5);
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(
        usage.output_tokens, 5,
        "charged the real usage, within the limit"
    );
    // Nothing left now: the next request is refused as without fitting.
    let refused = app.chat(&key.secret, &body).await;
    assert_eq!(fitted(&refused), None);
    assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(
        events["total"], 1,
        "the fitted request is no refusal: {events}"
    );
    assert_eq!(events["data"][0]["limit"], "tpm");
}

/// A lifetime budget that pays for keygate's estimate of the "hi" prompt plus `output`
/// tokens of the priced model, exactly.
fn budget_for(output: i64) -> Decimal {
    let prompt = keygate_prompt_tokens(BodyKind::Chat, &chat_body(PRICED_MODEL, "hi", Some(1)));
    cost(prompt, output, PRICED_INPUT, PRICED_OUTPUT)
}

async fn a_budget_limited_key_gets_its_request_fitted(setup: Setup) {
    // Arrange: money for the prompt and 3 completion tokens; the request asks for 1000.
    let app = spawn(setup).await;
    let limit = budget_for(3);
    let key = app
        .key_with(json!({
            "budget": {"limit_usd": limit.to_string(), "period": "lifetime"},
            "fit_max_tokens": true,
        }))
        .await;
    let body = chat_body(PRICED_MODEL, "hi", Some(1000));

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(fitted(&response), Some(3));
    let (status, answer) = json_body(response).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(upstream_body(&app, 0)["max_tokens"], 3);
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.output_tokens, 3);
    assert!(usage.cost_usd <= limit, "{} > {limit}", usage.cost_usd);
    let info = app.key_info(&key.secret).await;
    assert!(usd(&info["budget"]["spent_usd"]) <= limit, "{info}");
    // What is left does not pay for the prompt: refused as without fitting.
    let refused = app.chat(&key.secret, &body).await;
    assert_eq!(fitted(&refused), None);
    assert_openai_error(refused, StatusCode::PAYMENT_REQUIRED, "budget_exceeded").await;
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
}

async fn a_request_that_fits_is_untouched(setup: Setup) {
    // Arrange: room for far more than the request asks.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"tpm": 10000},
            "budget": {"limit_usd": 10, "period": "month"},
            "fit_max_tokens": true,
        }))
        .await;
    let body = chat_body(PRICED_MODEL, "hi", Some(6));

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(fitted(&response), None);
    assert_eq!(response.status(), StatusCode::OK);
    let requests = app.mock.requests_to("/v1/chat/completions");
    assert_eq!(requests[0].raw_body, serde_json::to_vec(&body).unwrap());
}

async fn a_streamed_request_is_fitted_and_says_so(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"tpd": 4, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;
    let mut body = chat_body(mock::DEFAULT_MODEL, "hi", Some(50));
    body["stream"] = json!(true);

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fitted(&response), Some(4));
    let events = read_sse(response).await;
    assert_eq!(stream_text(&events), mock::reply_text(4));
    let sent = upstream_body(&app, 0);
    assert_eq!(sent["max_tokens"], 4);
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.output_tokens, 4);
}

async fn max_completion_tokens_is_the_member_lowered(setup: Setup) {
    // Arrange: the client names its cap `max_completion_tokens`.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"tpm": 6, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;
    let mut body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    body["max_completion_tokens"] = json!(300);

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(fitted(&response), Some(6));
    assert_eq!(response.status(), StatusCode::OK);
    let sent = upstream_body(&app, 0);
    assert_eq!(sent["max_completion_tokens"], 6, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "no member added: {sent}");
}

async fn a_total_tokens_bucket_leaves_room_for_the_prompt(setup: Setup) {
    // Arrange: a total-token minute of keygate's prompt estimate plus 5.
    let app = spawn(setup).await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", Some(100));
    let prompt = keygate_prompt_tokens(BodyKind::Chat, &body);
    let key = app
        .key_with(json!({"limits": {"tpm": prompt + 5}, "fit_max_tokens": true}))
        .await;

    // Act
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(fitted(&response), Some(5));
    assert_eq!(response.status(), StatusCode::OK);
    let usage = app.settled_usage(&key.id, 1).await;
    assert!(
        usage.input_tokens + usage.output_tokens <= prompt + 5,
        "{usage:?} over {}",
        prompt + 5
    );
}

async fn below_the_floor_the_refusal_stands(setup: Setup) {
    // Arrange: the default floor (16) is above the 5 tokens left.
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"tpm": 5, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;

    // Act
    let refused = app
        .chat(
            &key.secret,
            &chat_body(mock::DEFAULT_MODEL, "hi", Some(100)),
        )
        .await;

    // Assert
    assert_eq!(fitted(&refused), None);
    assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert!(app.mock.requests_to("/v1/chat/completions").is_empty());
}

async fn with_fit_off_the_refusal_stands(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({"limits": {"tpm": 5, "token_type": "output"}}))
        .await;

    // Act
    let refused = app
        .chat(
            &key.secret,
            &chat_body(mock::DEFAULT_MODEL, "hi", Some(100)),
        )
        .await;

    // Assert
    assert_eq!(fitted(&refused), None);
    assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert!(app.mock.requests_to("/v1/chat/completions").is_empty());
}

async fn an_rpm_refusal_is_never_fitted(setup: Setup) {
    // Arrange: one request a minute, and tokens to spare.
    let app = spawn(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"rpm": 1, "tpm": 1000, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", Some(100));

    // Act
    let first = app.chat(&key.secret, &body).await;
    let refused = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(fitted(&first), None, "100 of 1000 fits");
    assert_eq!(fitted(&refused), None);
    let error = assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("rpm"),
        "{error}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
}

async fn patch_sets_and_clears_fit_max_tokens(setup: Setup) {
    // Arrange
    let app = spawn(setup).await;
    let key = app.plain_key().await;
    let path = format!("/admin/v1/keys/{}", key.id);

    // Act + Assert: off by default, on, off again; null is refused with the field named.
    assert_eq!(app.admin_get_key(&key.id).await["fit_max_tokens"], false);
    let (status, on) = json_body(
        app.patch_json(&path, &json!({"fit_max_tokens": true}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["fit_max_tokens"], true);
    assert_eq!(app.admin_get_key(&key.id).await["fit_max_tokens"], true);
    let (status, off) = json_body(
        app.patch_json(&path, &json!({"fit_max_tokens": false}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert_eq!(app.admin_get_key(&key.id).await["fit_max_tokens"], false);
    let (status, error) = json_body(
        app.patch_json(&path, &json!({"fit_max_tokens": null}))
            .await,
    )
    .await;
    assert!(status.is_client_error(), "{status} {error}");
    assert!(error.to_string().contains("fit_max_tokens"), "{error}");
    let (status, error) = json_body(
        app.patch_json(&path, &json!({"fit_max_tokens": "yes"}))
            .await,
    )
    .await;
    assert!(status.is_client_error(), "{status} {error}");
}

// ---------------------------------------------------------------------------------------
// With the Redis limiter (127.0.0.1:6379, a key prefix of the test's own)

async fn spawn_with_redis() -> TestApp {
    let prefix = format!("keygate-test:{}:", Uuid::new_v4().simple());
    spawn_proxy_with(Setup::from(Backend::Postgres), |config| {
        config.redis.url = Some("redis://127.0.0.1:6379".to_string());
        config.redis.key_prefix = prefix;
        config.proxy.min_fitted_tokens = 2;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_tpm_and_budget_fit_and_hold() {
    // Arrange
    let app = spawn_with_redis().await;
    let tpm_key = app
        .key_with(json!({
            "limits": {"tpm": 5, "token_type": "output"},
            "fit_max_tokens": true,
        }))
        .await;
    let limit = budget_for(3);
    let budget_key = app
        .key_with(json!({
            "budget": {"limit_usd": limit.to_string(), "period": "lifetime"},
            "fit_max_tokens": true,
        }))
        .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let (_, ready) = json_body(ready).await;
    assert_eq!(ready["limiter"], "redis", "{ready}");

    // Act
    let by_tpm = app
        .chat(
            &tpm_key.secret,
            &chat_body(mock::DEFAULT_MODEL, "hi", Some(100)),
        )
        .await;
    let by_budget = app
        .chat(
            &budget_key.secret,
            &chat_body(PRICED_MODEL, "hi", Some(1000)),
        )
        .await;

    // Assert
    assert_eq!(
        (by_tpm.status(), fitted(&by_tpm)),
        (StatusCode::OK, Some(5))
    );
    assert_eq!(
        (by_budget.status(), fitted(&by_budget)),
        (StatusCode::OK, Some(3))
    );
    assert_eq!(upstream_body(&app, 0)["max_tokens"], 5);
    assert_eq!(upstream_body(&app, 1)["max_tokens"], 3);
    assert_eq!(app.settled_usage(&tpm_key.id, 1).await.output_tokens, 5);
    let spent = app.settled_usage(&budget_key.id, 1).await.cost_usd;
    assert!(spent <= limit, "{spent} > {limit}");
    let again = app
        .chat(
            &tpm_key.secret,
            &chat_body(mock::DEFAULT_MODEL, "hi", Some(100)),
        )
        .await;
    assert_openai_error(again, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded").await;
    let again = app
        .chat(
            &budget_key.secret,
            &chat_body(PRICED_MODEL, "hi", Some(1000)),
        )
        .await;
    assert_openai_error(again, StatusCode::PAYMENT_REQUIRED, "budget_exceeded").await;
}
