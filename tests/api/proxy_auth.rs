//! The inference auth hot path (DESIGN §3, §4, §8): revoked and expired keys, admin keys,
//! allowed models, malformed keys, failed attempts per address, `last_used_at`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::proxy_helpers::{
    assert_openai_error, chat_body, eventually, header, spawn_proxy, spawn_proxy_with,
    support::upstream as mock, Setup, PRICED_MODEL,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [],
    sqlite: [
        a_deleted_key_is_refused_at_once,
        an_expired_key_is_refused,
        admin_keys_cannot_call_inference,
        models_outside_allowed_models_are_403,
        malformed_keys_and_bad_checksums_are_401,
        repeated_bad_keys_from_one_address_get_429,
        last_used_at_is_set_after_a_call,
        concurrent_first_uses_of_a_key_verify_it_once,
    ],
}

async fn concurrent_first_uses_of_a_key_verify_it_once(setup: Setup) {
    // Arrange: a key this instance has never verified (creating it hashes, not verifies).
    const CALLERS: usize = 32;
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    let before = app.state.keys.verifications();

    // Act: 32 connections open with it at once.
    let calls = (0..CALLERS).map(|_| app.chat(&key.secret, &body));
    let responses = futures::future::join_all(calls).await;

    // Assert: all admitted, and argon2 ran once, not once per caller.
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.state.keys.verifications() - before, 1);
}

async fn a_deleted_key_is_refused_at_once(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    app.chat_ok(&key.secret, &body).await;

    // Act
    let deleted = app
        .admin_delete(&format!("/admin/v1/keys/{}", key.id))
        .await;
    let response = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_openai_error(response, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
}

async fn an_expired_key_is_refused(setup: Setup) {
    // Arrange: a key expiring in 3 s, used (and cached) while it is valid.
    let app = spawn_proxy(setup).await;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let key = app
        .key_with(json!({
            "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }))
        .await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    app.chat_ok(&key.secret, &body).await;

    // Act
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = app.chat(&key.secret, &body).await;

    // Assert
    let error = assert_openai_error(response, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert!(
        error["message"].as_str().unwrap().contains("expired"),
        "{error}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
}

async fn admin_keys_cannot_call_inference(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;

    // Act
    let response = app
        .chat(&app.admin_key, &chat_body(mock::DEFAULT_MODEL, "hi", None))
        .await;

    // Assert
    assert_openai_error(
        response,
        StatusCode::FORBIDDEN,
        "admin_key_not_for_inference",
    )
    .await;
    assert_eq!(app.mock.request_count(), 0);
}

async fn models_outside_allowed_models_are_403(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({"allowed_models": [mock::DEFAULT_MODEL]}))
        .await;

    // Act
    let refused = app
        .chat(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let allowed = app
        .chat(&key.secret, &chat_body(mock::DEFAULT_MODEL, "hi", None))
        .await;

    // Assert
    let error = assert_openai_error(refused, StatusCode::FORBIDDEN, "model_not_allowed").await;
    assert_eq!(error["param"], "model", "{error}");
    assert_eq!(allowed.status(), StatusCode::OK);
    let received = app.mock.requests_to("/v1/chat/completions");
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].model(), Some(mock::DEFAULT_MODEL));
}

async fn malformed_keys_and_bad_checksums_are_401(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let last = key.secret.chars().last().unwrap();
    let typo = format!(
        "{}{}",
        &key.secret[..key.secret.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);

    // Act / Assert
    for presented in [
        "not-a-key",
        "kg_short",
        "sk-proj-0123456789abcdef",
        typo.as_str(),
    ] {
        let response = app.chat(presented, &body).await;
        assert_openai_error(response, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    }
    let anonymous = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_openai_error(anonymous, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    assert_eq!(app.mock.request_count(), 0);
    // The real key still works.
    app.chat_ok(&key.secret, &body).await;
}

async fn repeated_bad_keys_from_one_address_get_429(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.keys.failed_auth_per_minute = 3;
    })
    .await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    app.chat_ok(&key.secret, &body).await;
    let unknown = keygate::keys::Token::generate().expose().to_string();

    // Act
    let mut statuses = Vec::new();
    let mut blocked = None;
    for _ in 0..5 {
        let response = app.chat(&unknown, &body).await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && blocked.is_none() {
            blocked = Some(response);
        }
    }

    // Assert
    assert_eq!(
        statuses,
        vec![
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ]
    );
    let blocked = blocked.unwrap();
    let retry_after: u64 = header(&blocked, "retry-after")
        .expect("Retry-After on too_many_auth_attempts")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_openai_error(
        blocked,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_auth_attempts",
    )
    .await;
    // A key already verified from this address keeps working.
    app.chat_ok(&key.secret, &body).await;
}

async fn last_used_at_is_set_after_a_call(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let before = app.admin_get_key(&key.id).await;
    assert!(before["last_used_at"].is_null(), "{before}");

    // Act
    app.chat_ok(&key.secret, &chat_body(mock::DEFAULT_MODEL, "hi", None))
        .await;

    // Assert: the writer flushes at least every second.
    let set = eventually(Duration::from_secs(5), || async {
        !app.admin_get_key(&key.id).await["last_used_at"].is_null()
    })
    .await;
    assert!(set, "{}", app.admin_get_key(&key.id).await);
    let used: chrono::DateTime<chrono::Utc> = app.admin_get_key(&key.id).await["last_used_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((chrono::Utc::now() - used).num_seconds() < 60, "{used}");
}
