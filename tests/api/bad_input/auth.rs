//! Bad keys: missing, malformed, unknown, expired and revoked keys get 401, inference keys
//! 403 on the admin API, and failed authentications are limited per address.

use std::time::Duration;

use keygate::keys::Token;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{
    assert_error, future_rfc3339, json_of, secret_of, spawn_app, spawn_app_with, Backend,
};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        missing_malformed_unknown_expired_and_revoked_keys_get_401,
        inference_keys_get_403_on_the_admin_api,
        failed_authentications_are_rate_limited_per_address,
    ],
}

async fn missing_malformed_unknown_expired_and_revoked_keys_get_401(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let valid = app.admin_key.clone();
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'a' { 'b' } else { 'a' });
    let unknown = Token::generate().expose().to_string();
    let (revoked_id, revoked) = app.create_admin_key("revoked").await;
    assert_eq!(app.admin_status_of(&revoked).await, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/admin/v1/keys/{revoked_id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    // A key that expires 4 s from now, used (and cached) while still valid.
    let expiry_set_at = std::time::Instant::now();
    let expiring = app
        .create_key(
            &json!({ "name": "expiring", "kind": "admin", "expires_at": future_rfc3339(4) }),
        )
        .await;
    let expiring = secret_of(&expiring);
    assert_eq!(app.admin_status_of(&expiring).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(4200).saturating_sub(expiry_set_at.elapsed())).await;

    let refused = |header: Option<String>| {
        let mut request = app.req_anon(Method::GET, "/admin/v1/keys");
        if let Some(value) = header {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no API key"),
        ("empty bearer", Some("Bearer ".into()), "not a keygate key"),
        (
            "malformed",
            Some("Bearer not-a-key".into()),
            "not a keygate key",
        ),
        (
            "wrong scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            "not a keygate key",
        ),
        (
            "truncated",
            Some(format!("Bearer {}", &valid[..valid.len() - 1])),
            "not a keygate key",
        ),
        (
            "bad checksum",
            Some(format!("Bearer {bad_checksum}")),
            "checksum",
        ),
        ("unknown", Some(format!("Bearer {unknown}")), "unknown"),
        ("revoked", Some(format!("Bearer {revoked}")), "revoked"),
        ("expired", Some(format!("Bearer {expiring}")), "expired"),
    ];

    for (what, header, says) in cases {
        // Act
        let response = refused(header).await.unwrap();
        // Assert
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..]),
            "{what}"
        );
        let error = assert_error(response, StatusCode::UNAUTHORIZED, "invalid_api_key", None).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {error}");
        for secret in [&valid, &unknown, &revoked, &expiring, &bad_checksum] {
            assert!(
                !message.contains(secret.as_str()),
                "{what} echoes a key: {error}"
            );
        }
    }

    // The valid key still works after all that.
    assert_eq!(app.admin_status_of(&valid).await, StatusCode::OK);
}

async fn inference_keys_get_403_on_the_admin_api(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, inference) = app.create_inference_key("app key").await;
    let requests = [
        (Method::GET, "/admin/v1/keys".to_string(), None),
        (
            Method::POST,
            "/admin/v1/keys".to_string(),
            Some(json!({ "name": "x" })),
        ),
        (Method::GET, format!("/admin/v1/keys/{id}"), None),
        (
            Method::PATCH,
            format!("/admin/v1/keys/{id}"),
            Some(json!({ "name": "x" })),
        ),
        (Method::POST, format!("/admin/v1/keys/{id}/rotate"), None),
        (Method::DELETE, format!("/admin/v1/keys/{id}"), None),
    ];

    for (method, path, body) in requests {
        // Act
        let mut request = app.req_as(&inference, method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        // Assert
        let error = assert_error(
            response,
            StatusCode::FORBIDDEN,
            "inference_key_not_for_admin",
            None,
        )
        .await;
        assert!(!error.to_string().contains(&inference), "{method} {path}");
    }

    // Nothing happened to the key.
    let (status, key) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["name"], "app key");
}

async fn failed_authentications_are_rate_limited_per_address(backend: Backend) {
    // Arrange: 3 failed authentications per minute per address. Successes don't count:
    // the admin key is verified once and then served from the cache.
    let app = spawn_app_with(backend, |config| config.keys.failed_auth_per_minute = 3).await;
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );

    // Act
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let unknown = Token::generate().expose().to_string();
        statuses.push(app.admin_status_of(&unknown).await);
    }
    let unknown = Token::generate().expose().to_string();
    let limited = app.get_as(&unknown, "/admin/v1/keys").await;

    // Assert
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 3].to_vec());
    assert!(limited.headers().get("retry-after").is_some());
    assert_error(
        limited,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_auth_attempts",
        None,
    )
    .await;
    // A cached valid key is not slowed down.
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
}
