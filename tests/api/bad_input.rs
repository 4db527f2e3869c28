//! Every kind of bad input gets a 4xx in the admin error shape whose `error.field` names
//! what is wrong, never a 500; bad keys get 401, inference keys 403 on the admin API.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keygate::keys::Token;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, future_rfc3339, id_of, json_of, secret_of, spawn_app, spawn_app_with, Backend,
    TestApp,
};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_rejects_bad_bodies_naming_the_field,
        patch_rejects_bad_bodies_naming_the_field,
        rotate_rejects_bad_bodies_naming_the_field,
        bad_ids_get_400_naming_the_id,
        absurd_pagination_gets_422_naming_the_parameter,
        wrong_content_type_and_oversize_bodies_get_4xx,
        missing_malformed_unknown_expired_and_revoked_keys_get_401,
        inference_keys_get_403_on_the_admin_api,
        failed_authentications_are_rate_limited_per_address,
    ],
}

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    body: String,
    status: StatusCode,
    code: &'static str,
    field: &'static str,
}

fn raw(
    what: &'static str,
    body: &str,
    status: StatusCode,
    code: &'static str,
    field: &'static str,
) -> Case {
    Case {
        what,
        body: body.to_string(),
        status,
        code,
        field,
    }
}

/// A body that is valid JSON but has one invalid field: 422 `invalid_field`.
fn field(what: &'static str, body: Value, field: &'static str) -> Case {
    Case {
        what,
        body: body.to_string(),
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        field,
    }
}

async fn check_cases(app: &TestApp, method: Method, path: &str, cases: &[Case]) {
    for case in cases {
        let response = app.send_raw(method.clone(), path, &case.body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {status} answer is not JSON ({e}): {text}", case.what));
        assert_eq!(
            status, case.status,
            "{} ({method} {path}): {body}",
            case.what
        );
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
        assert_eq!(body["error"]["field"], case.field, "{}: {body}", case.what);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.what
        );
    }
}

/// Cases shared by create and patch (each is invalid whether or not `name` is present).
fn common_field_cases() -> Vec<Case> {
    let big_metadata: serde_json::Map<String, Value> = (0..200)
        .map(|i| (format!("k{i}"), json!("x".repeat(100))))
        .collect();
    vec![
        // malformed JSON
        raw(
            "truncated JSON",
            r#"{"name": "a""#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        raw(
            "not JSON at all",
            "name=a",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        raw(
            "empty body",
            "",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        raw(
            "trailing garbage",
            r#"{"name": "a"} x"#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        raw(
            "single quotes",
            "{'name': 'a'}",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        // not an object
        field("an array", json!([1, 2]), "body"),
        field("an array holding a name", json!(["array name"]), "body"),
        field("a string", json!("name"), "body"),
        field("null", Value::Null, "body"),
        // wrong types
        field("numeric name", json!({ "name": 5 }), "name"),
        raw(
            "repeated field",
            r#"{"name": "a", "limits": {}, "limits": {}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "limits",
        ),
        field("boolean name", json!({ "name": true }), "name"),
        field("numeric kind", json!({ "name": "a", "kind": 1 }), "kind"),
        field(
            "limits not an object",
            json!({ "name": "a", "limits": "fast" }),
            "limits",
        ),
        field(
            "string rpm",
            json!({ "name": "a", "limits": { "rpm": "ten" } }),
            "limits.rpm",
        ),
        field(
            "fractional rpm",
            json!({ "name": "a", "limits": { "rpm": 1.5 } }),
            "limits.rpm",
        ),
        field(
            "metadata array",
            json!({ "name": "a", "metadata": [1] }),
            "metadata",
        ),
        field(
            "metadata string",
            json!({ "name": "a", "metadata": "x" }),
            "metadata",
        ),
        field(
            "allowed_models string",
            json!({ "name": "a", "allowed_models": "gpt" }),
            "allowed_models",
        ),
        field(
            "allowed_models of numbers",
            json!({ "name": "a", "allowed_models": [1] }),
            "allowed_models[0]",
        ),
        field(
            "model_limits object",
            json!({ "name": "a", "model_limits": {} }),
            "model_limits",
        ),
        field(
            "numeric expires_at",
            json!({ "name": "a", "expires_at": 1_700_000_000 }),
            "expires_at",
        ),
        field(
            "boolean limit_usd",
            json!({ "name": "a", "budget": { "limit_usd": true, "period": "day" } }),
            "budget.limit_usd",
        ),
        field(
            "string max_parallel",
            json!({ "name": "a", "max_parallel": "4" }),
            "max_parallel",
        ),
        field(
            "ip_allowlist string",
            json!({ "name": "a", "ip_allowlist": "1.2.3.4" }),
            "ip_allowlist",
        ),
        field(
            "alert threshold string",
            json!({ "name": "a", "alert_thresholds": ["x"] }),
            "alert_thresholds[0]",
        ),
        // unknown fields
        field(
            "unknown top-level field",
            json!({ "name": "a", "colour": "red" }),
            "colour",
        ),
        field(
            "client-chosen secret",
            json!({ "name": "a", "secret": "kg_x" }),
            "secret",
        ),
        field(
            "client-chosen workspace",
            json!({ "name": "a", "workspace_id": "00000000-0000-0000-0000-000000000001" }),
            "workspace_id",
        ),
        field(
            "unknown limits field",
            json!({ "name": "a", "limits": { "rmp": 1 } }),
            "limits.rmp",
        ),
        field(
            "unknown budget field",
            json!({ "name": "a", "budget": { "limit_usd": 1, "period": "day", "currency": "EUR" } }),
            "budget.currency",
        ),
        field(
            "unknown model_limits field",
            json!({ "name": "a", "model_limits": [{ "model": "m", "rpmm": 1 }] }),
            "model_limits[0].rpmm",
        ),
        // names
        field("empty name", json!({ "name": "" }), "name"),
        field("blank name", json!({ "name": "   " }), "name"),
        field("10 kB name", json!({ "name": "n".repeat(10_240) }), "name"),
        field("201-char name", json!({ "name": "n".repeat(201) }), "name"),
        field(
            "control character in name",
            json!({ "name": "a\u{0}b" }),
            "name",
        ),
        // objects sent as arrays (serde would read them by position)
        field(
            "limits as an array",
            json!({ "name": "a", "limits": [1, 2] }),
            "limits",
        ),
        field(
            "budget as an array",
            json!({ "name": "a", "budget": [5, "day"] }),
            "budget",
        ),
        field(
            "a model limit as an array",
            json!({ "name": "a", "model_limits": [{ "model": "m", "rpm": 1 }, ["m2", 1]] }),
            "model_limits[1]",
        ),
        // negative and absurd numbers
        field(
            "negative rpm",
            json!({ "name": "a", "limits": { "rpm": -1 } }),
            "limits.rpm",
        ),
        field(
            "negative tpd",
            json!({ "name": "a", "limits": { "tpd": -100 } }),
            "limits.tpd",
        ),
        field(
            "negative model rpm",
            json!({ "name": "a", "model_limits": [{ "model": "m", "rpm": -1 }] }),
            "model_limits[0].rpm",
        ),
        field(
            "negative max_parallel",
            json!({ "name": "a", "max_parallel": -1 }),
            "max_parallel",
        ),
        field(
            "negative budget",
            json!({ "name": "a", "budget": { "limit_usd": -5, "period": "day" } }),
            "budget.limit_usd",
        ),
        field(
            "negative alert threshold",
            json!({ "name": "a", "alert_thresholds": [-0.5] }),
            "alert_thresholds[0]",
        ),
        field(
            "rpm past u64",
            json!({ "name": "a", "limits": { "rpm": 1e30 } }),
            "limits.rpm",
        ),
        raw(
            "rpm 2^64",
            r#"{"name": "a", "limits": {"rpm": 18446744073709551616}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "limits.rpm",
        ),
        field(
            "rpm above the maximum",
            json!({ "name": "a", "limits": { "rpm": 1_000_000_000_000_000_001_u64 } }),
            "limits.rpm",
        ),
        field(
            "model tpm above the maximum",
            json!({ "name": "a", "model_limits": [{ "model": "m", "tpm": u64::MAX }] }),
            "model_limits[0].tpm",
        ),
        field(
            "max_parallel past u32",
            json!({ "name": "a", "max_parallel": 4_294_967_296_u64 }),
            "max_parallel",
        ),
        field(
            "max_parallel above the maximum",
            json!({ "name": "a", "max_parallel": 2_000_000 }),
            "max_parallel",
        ),
        field(
            "absurd budget",
            json!({ "name": "a", "budget": { "limit_usd": 1e20, "period": "day" } }),
            "budget.limit_usd",
        ),
        field(
            "non-numeric budget text",
            json!({ "name": "a", "budget": { "limit_usd": "lots", "period": "day" } }),
            "budget.limit_usd",
        ),
        field(
            "alert threshold too big",
            json!({ "name": "a", "alert_thresholds": [1000] }),
            "alert_thresholds[0]",
        ),
        // unknown enum values
        field(
            "unknown kind",
            json!({ "name": "a", "kind": "superuser" }),
            "kind",
        ),
        field(
            "kind in capitals",
            json!({ "name": "a", "kind": "Admin" }),
            "kind",
        ),
        field(
            "unknown budget period",
            json!({ "name": "a", "budget": { "limit_usd": 1, "period": "weekly" } }),
            "budget.period",
        ),
        field(
            "unknown token_type",
            json!({ "name": "a", "limits": { "token_type": "both" } }),
            "limits.token_type",
        ),
        // bad timestamps
        field(
            "word timestamp",
            json!({ "name": "a", "expires_at": "tomorrow" }),
            "expires_at",
        ),
        field(
            "month 13",
            json!({ "name": "a", "expires_at": "2030-13-01T00:00:00Z" }),
            "expires_at",
        ),
        field(
            "date without time",
            json!({ "name": "a", "expires_at": "2030-01-01" }),
            "expires_at",
        ),
        field(
            "empty timestamp",
            json!({ "name": "a", "expires_at": "" }),
            "expires_at",
        ),
        // other validation
        field(
            "missing budget period",
            json!({ "name": "a", "budget": { "limit_usd": 1 } }),
            "budget.period",
        ),
        field(
            "missing model name",
            json!({ "name": "a", "model_limits": [{ "rpm": 1 }] }),
            "model_limits[0].model",
        ),
        field(
            "duplicate model limits",
            json!({ "name": "a", "model_limits": [{ "model": "m" }, { "model": "m" }] }),
            "model_limits[1].model",
        ),
        field(
            "empty allowed model",
            json!({ "name": "a", "allowed_models": ["ok", ""] }),
            "allowed_models[1]",
        ),
        field(
            "bad IP",
            json!({ "name": "a", "ip_allowlist": ["10.0.0.1", "banana"] }),
            "ip_allowlist[1]",
        ),
        field(
            "oversize metadata",
            json!({ "name": "a", "metadata": big_metadata }),
            "metadata",
        ),
    ]
}

async fn create_rejects_bad_bodies_naming_the_field(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let mut cases = common_field_cases();
    cases.extend([
        field("no name", json!({}), "name"),
        field("null name", json!({ "name": null }), "name"),
        field(
            "expiry in the past",
            json!({ "name": "a", "expires_at": "2001-01-01T00:00:00Z" }),
            "expires_at",
        ),
    ]);

    // Act + Assert
    check_cases(&app, Method::POST, "/admin/v1/keys", &cases).await;

    // Nothing was created by any of them.
    let (_, list) = json_of(app.get("/admin/v1/keys").await).await;
    assert_eq!(list["total"], 1, "{list}");
}

async fn patch_rejects_bad_bodies_naming_the_field(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let created = app
        .create_key(&json!({ "name": "target", "limits": { "rpm": 7 } }))
        .await;
    let path = format!("/admin/v1/keys/{}", id_of(&created));

    let mut cases = common_field_cases();
    cases.extend([
        field(
            "null name (a name cannot be cleared)",
            json!({ "name": null }),
            "name",
        ),
        field(
            "null kind (a kind cannot be cleared)",
            json!({ "kind": null }),
            "kind",
        ),
    ]);

    // Act + Assert
    check_cases(&app, Method::PATCH, &path, &cases).await;

    // The key is unchanged.
    let (_, key) = json_of(app.get(&path).await).await;
    assert_eq!(key["name"], "target");
    assert_eq!(key["limits"]["rpm"], 7);
    assert_eq!(key["updated_at"], created["updated_at"]);
}

async fn rotate_rejects_bad_bodies_naming_the_field(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let created = app
        .create_key(&json!({ "name": "rotate me", "kind": "admin" }))
        .await;
    let path = format!("/admin/v1/keys/{}/rotate", id_of(&created));
    let cases = [
        raw(
            "truncated JSON",
            "{",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        field("an empty array", json!([]), "body"),
        field("an array holding a grace", json!([60]), "body"),
        field(
            "negative grace",
            json!({ "grace_seconds": -1 }),
            "grace_seconds",
        ),
        field(
            "string grace",
            json!({ "grace_seconds": "abc" }),
            "grace_seconds",
        ),
        field(
            "fractional grace",
            json!({ "grace_seconds": 1.5 }),
            "grace_seconds",
        ),
        field(
            "grace over a week",
            json!({ "grace_seconds": 1_000_000_000 }),
            "grace_seconds",
        ),
        field(
            "grace past u64",
            json!({ "grace_seconds": 1e30 }),
            "grace_seconds",
        ),
        field("unknown field", json!({ "grace": 5 }), "grace"),
    ];

    // Act + Assert
    check_cases(&app, Method::POST, &path, &cases).await;

    // None of them rotated the key: its secret still works.
    assert_eq!(
        app.admin_status_of(&secret_of(&created)).await,
        StatusCode::OK
    );
    let (_, key) = json_of(app.get(&path.replace("/rotate", "")).await).await;
    assert_eq!(key["partial_key"], created["partial_key"]);
}

async fn bad_ids_get_400_naming_the_id(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let long = "x".repeat(1000);
    let bad_ids = [
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
        "00000000-0000-0000-0000-0000000000001",
        "%00",
        "%E2%82%AC",
        long.as_str(),
    ];

    for id in bad_ids {
        let path = format!("/admin/v1/keys/{id}");
        // Act
        let responses = [
            app.get(&path).await,
            app.patch_json(&path, &json!({ "name": "x" })).await,
            app.delete(&path).await,
            app.rotate(id, None).await,
        ];
        // Assert
        for response in responses {
            let error =
                assert_error(response, StatusCode::BAD_REQUEST, "invalid_id", Some("id")).await;
            assert!(
                error["message"].as_str().unwrap().len() < 300,
                "the message quotes a bounded part of the id: {error}"
            );
        }
    }
}

async fn absurd_pagination_gets_422_naming_the_parameter(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let cases = [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=99999999999", "page"),
        ("page=1000001", "page"),
        ("page=", "page"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-5", "limit"),
        ("limit=1e3", "limit"),
        ("limit=18446744073709551616", "limit"),
        ("limit=ten", "limit"),
        ("page=1&limit=100000", "limit"),
        ("per_page=10", "per_page"),
        ("offset=5", "offset"),
        ("page=1&page=2", "page"),
    ];

    for (query, field) in cases {
        // Act
        let response = app.get(&format!("/admin/v1/keys?{query}")).await;
        // Assert
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "?{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "?{query}: {body}");
        assert_eq!(body["error"]["field"], field, "?{query}: {body}");
    }

    // The largest accepted values are fine.
    let (status, body) = json_of(app.get("/admin/v1/keys?page=1000000&limit=500").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["total"], 1);
}

async fn wrong_content_type_and_oversize_bodies_get_4xx(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act + Assert: a form post is not JSON.
    let response = app
        .req(Method::POST, "/admin/v1/keys")
        .header("content-type", "text/plain")
        .body(r#"{"name": "a"}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;

    // A body past http.max_body_bytes (4 MiB) is refused with a JSON error.
    let huge = format!(r#"{{"name": "{}"}}"#, "n".repeat(5 * 1024 * 1024));
    let response = app.send_raw(Method::POST, "/admin/v1/keys", &huge).await;
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        Some("body"),
    )
    .await;

    // Unknown routes and methods answer in the same JSON shape.
    assert_error(
        app.get("/admin/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let response = app.req(Method::PUT, "/admin/v1/keys").send().await.unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
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
