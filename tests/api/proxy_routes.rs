//! The proxy's routes (DESIGN §5): chat, completions, embeddings, the model list,
//! pass-through of declared paths; what is and is not forwarded upstream; upstream
//! errors and timeouts.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::proxy_helpers::{
    assert_openai_error, chat_body, closed_port_url, header, json_body, spawn_proxy,
    spawn_proxy_with, support::upstream as mock, unique_env_var, Setup, PRICED_MODEL,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [],
    sqlite: [
        chat_completions_are_proxied,
        completions_and_embeddings_are_proxied,
        models_lists_only_the_models_the_key_may_use,
        declared_passthrough_paths_are_forwarded_and_others_are_404,
        the_client_key_is_never_forwarded_and_the_upstream_credential_is,
        hop_by_hop_and_identity_headers_are_not_forwarded,
        upstream_errors_pass_through_uncharged_but_count_toward_rpm,
        slow_first_byte_is_a_504,
        unreachable_upstream_is_a_502,
        dropped_upstream_connection_is_a_502,
        unknown_model_is_404_and_never_reaches_upstream,
    ],
}

async fn chat_completions_are_proxied(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, "say something nice", None);

    // Act
    let answer = app.chat_ok(&key.secret, &body).await;

    // Assert
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        mock::reply_text(7).as_str()
    );
    let expected = mock::expected_usage(&body);
    assert_eq!(answer["usage"]["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(
        answer["usage"]["completion_tokens"],
        expected.completion_tokens
    );
    let received = app.mock.requests_to("/v1/chat/completions");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body.as_ref(),
        Some(&body),
        "body forwarded as sent"
    );
}

async fn completions_and_embeddings_are_proxied(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let completion =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say this", "max_tokens": 3});
    let embedding = json!({"model": "text-embedding-3-small", "input": ["one two", "three"]});

    // Act
    let (completion_status, completion_answer) =
        json_body(app.post(&key.secret, "/v1/completions", &completion).await).await;
    let (embedding_status, embedding_answer) =
        json_body(app.post(&key.secret, "/v1/embeddings", &embedding).await).await;

    // Assert
    assert_eq!(completion_status, StatusCode::OK, "{completion_answer}");
    assert_eq!(completion_answer["object"], "text_completion");
    assert_eq!(completion_answer["choices"][0]["text"], "Hello there this");
    assert_eq!(embedding_status, StatusCode::OK, "{embedding_answer}");
    assert_eq!(embedding_answer["object"], "list");
    assert_eq!(embedding_answer["data"].as_array().unwrap().len(), 2);
    assert_eq!(embedding_answer["usage"]["prompt_tokens"], 3);
    assert_eq!(app.mock.requests_to("/v1/completions").len(), 1);
    assert_eq!(app.mock.requests_to("/v1/embeddings").len(), 1);

    // Both are accounted per model with the upstream's counts.
    let rows = app.usage_rows(&key.id).await;
    let of = |model: &str| {
        rows.iter()
            .filter(|r| r["model"] == model)
            .map(|r| {
                (
                    r["requests"].as_i64().unwrap(),
                    r["input_tokens"].as_i64().unwrap(),
                    r["output_tokens"].as_i64().unwrap(),
                )
            })
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    };
    assert_eq!(of("gpt-3.5-turbo-instruct"), (1, 2, 3), "{rows:?}");
    assert_eq!(of("text-embedding-3-small"), (1, 3, 0), "{rows:?}");
}

async fn models_lists_only_the_models_the_key_may_use(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let restricted = app
        .key_with(json!({"allowed_models": [PRICED_MODEL, mock::DEFAULT_MODEL]}))
        .await;
    let open = app.plain_key().await;

    // Act
    let (restricted_status, restricted_list) =
        json_body(app.get_as(&restricted.secret, "/v1/models").await).await;
    let (open_status, open_list) = json_body(app.get_as(&open.secret, "/v1/models").await).await;

    // Assert
    assert_eq!(restricted_status, StatusCode::OK, "{restricted_list}");
    assert_eq!(restricted_list["object"], "list");
    let mut ids = model_ids(&restricted_list);
    ids.sort();
    assert_eq!(ids, vec![PRICED_MODEL, mock::DEFAULT_MODEL]);
    assert!(restricted_list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));

    assert_eq!(open_status, StatusCode::OK, "{open_list}");
    let ids = model_ids(&open_list);
    for id in mock::MODEL_IDS {
        assert!(
            ids.contains(&id.to_string()),
            "{id} missing from {open_list}"
        );
    }
}

fn model_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

async fn declared_passthrough_paths_are_forwarded_and_others_are_404(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].passthrough = vec!["/moderations".into()];
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let (status, moderation) = json_body(
        app.post(
            &key.secret,
            "/v1/moderations",
            &json!({"input": "a kind word"}),
        )
        .await,
    )
    .await;
    let undeclared = app.get_as(&key.secret, "/v1/files").await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{moderation}");
    assert!(
        moderation["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("modr-")),
        "{moderation}"
    );
    assert_eq!(app.mock.requests_to("/v1/moderations").len(), 1);
    assert_openai_error(undeclared, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        app.mock.requests_to("/v1/files").is_empty(),
        "an undeclared path reached the upstream"
    );
}

async fn the_client_key_is_never_forwarded_and_the_upstream_credential_is(setup: Setup) {
    // Arrange
    let var = unique_env_var("KG_TEST_UPSTREAM_KEY");
    let upstream_secret = format!("sk-upstream-{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, &upstream_secret);
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].api_key_env = Some(var.clone());
    })
    .await;
    app.mock.expect_api_key(Some(&upstream_secret));
    let key = app.plain_key().await;

    // Act
    let response = app
        .chat(&key.secret, &chat_body(mock::DEFAULT_MODEL, "hi", None))
        .await;
    let status = response.status();
    let (_, models) = json_body(app.get_as(&key.secret, "/v1/models").await).await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    assert!(!model_ids(&models).is_empty(), "{models}");
    let received = app.mock.requests();
    assert!(!received.is_empty());
    for request in &received {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {upstream_secret}").as_str()),
            "{} {}",
            request.method,
            request.path
        );
        assert_eq!(request.auth_ok, Some(true));
        for (name, value) in &request.headers {
            assert!(
                !value.contains(&key.secret),
                "the client's key was forwarded in `{name}`"
            );
        }
        assert!(
            !String::from_utf8_lossy(&request.raw_body).contains(&key.secret),
            "the client's key was forwarded in the body"
        );
    }
    std::env::remove_var(&var);
}

async fn hop_by_hop_and_identity_headers_are_not_forwarded(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;

    // Act
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key.secret)
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA==")
        .header("x-api-key", &key.secret)
        .header("cookie", "session=abc")
        .header("x-client-trace", "trace-123")
        .json(&chat_body(mock::DEFAULT_MODEL, "hi", None))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    // The upstream's own request id and rate limits are not the client's.
    assert!(header(&response, "x-upstream-request-id").is_some_and(|v| v.starts_with("req_")));
    assert_ne!(
        header(&response, "x-ratelimit-limit-requests"),
        Some("9999")
    );
    let request = app.mock.last_request().unwrap();
    for name in [
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-api-key",
        "cookie",
    ] {
        assert!(
            request.header(name).is_none(),
            "`{name}` was forwarded: {:?}",
            request.headers
        );
    }
    assert_eq!(
        request.authorization, None,
        "no credential configured, none sent"
    );
    assert_eq!(request.header("x-client-trace"), Some("trace-123"));
}

async fn upstream_errors_pass_through_uncharged_but_count_toward_rpm(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({"limits": {"rpm": 3, "tpm": 1000}}))
        .await;

    // Act
    let bad = app
        .chat(
            &key.secret,
            &chat_body(mock::MODEL_ERROR_400, "hi", Some(50)),
        )
        .await;
    let bad_status = bad.status();
    let bad_body = bad.text().await.unwrap();
    let (server_status, server_body) = json_body(
        app.chat(
            &key.secret,
            &chat_body(mock::MODEL_ERROR_500, "hi", Some(50)),
        )
        .await,
    )
    .await;
    let (busy_status, busy_body) = json_body(
        app.chat(
            &key.secret,
            &chat_body(mock::MODEL_ERROR_503, "hi", Some(50)),
        )
        .await,
    )
    .await;
    let fourth = app
        .chat(&key.secret, &chat_body(mock::DEFAULT_MODEL, "hi", Some(50)))
        .await;

    // Assert: status and body as the upstream sent them.
    assert_eq!(bad_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&bad_body).unwrap(),
        serde_json::from_str::<Value>(mock::ERROR_400_BODY).unwrap()
    );
    assert_eq!(server_status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        server_body["error"]["type"], "server_error",
        "{server_body}"
    );
    assert_eq!(busy_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy_body["error"]["type"], "server_error", "{busy_body}");
    // They counted toward rpm …
    let error =
        assert_openai_error(fourth, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded").await;
    assert!(
        error["message"].as_str().unwrap().contains("rpm"),
        "{error}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 3);
    // … but nothing was charged: no usage, and the token estimates were refunded.
    assert!(app.usage_rows(&key.id).await.is_empty());
    let refunded = crate::proxy_helpers::eventually(Duration::from_secs(5), || async {
        app.remaining(&key.secret, "tpm", None).await == 1000
    })
    .await;
    assert!(refunded, "{}", app.key_info(&key.secret).await);
    assert_eq!(app.remaining(&key.secret, "rpm", None).await, 0);
}

async fn slow_first_byte_is_a_504(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.proxy.first_byte_timeout_secs = 0.5;
    })
    .await;
    let key = app.key_with(json!({"limits": {"tpm": 1000}})).await;
    let started = Instant::now();

    // Act
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key.secret)
        .header(mock::DELAY_HEADER, "5000")
        .json(&chat_body(mock::MODEL_SLOW_FIRST_BYTE, "hi", Some(10)))
        .send()
        .await
        .unwrap();

    // Assert
    let elapsed = started.elapsed();
    assert_openai_error(response, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout").await;
    assert!(
        elapsed < Duration::from_secs(4),
        "keygate waited for the slow upstream: {elapsed:?}"
    );
    assert!(
        app.usage_rows(&key.id).await.is_empty(),
        "a timeout is not charged"
    );
}

async fn unreachable_upstream_is_a_502(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].base_url = closed_port_url();
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let response = app
        .chat(&key.secret, &chat_body(mock::DEFAULT_MODEL, "hi", None))
        .await;

    // Assert
    let error = assert_openai_error(response, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert!(
        !error["message"].as_str().unwrap().contains("127.0.0.1"),
        "the upstream's address leaked: {error}"
    );
    assert!(app.usage_rows(&key.id).await.is_empty());
}

async fn dropped_upstream_connection_is_a_502(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;

    // Act
    let response = app
        .chat(
            &key.secret,
            &chat_body(mock::MODEL_DROP_CONNECTION, "hi", None),
        )
        .await;

    // Assert
    assert_openai_error(response, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
    assert!(app.usage_rows(&key.id).await.is_empty());
}

async fn unknown_model_is_404_and_never_reaches_upstream(setup: Setup) {
    // Arrange: an upstream serving named models only.
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].models = vec![mock::DEFAULT_MODEL.into()];
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let response = app
        .chat(&key.secret, &chat_body("no-such-model", "hi", None))
        .await;

    // Assert
    assert_openai_error(response, StatusCode::NOT_FOUND, "model_not_found").await;
    assert_eq!(app.mock.request_count(), 0);
}
