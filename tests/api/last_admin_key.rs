//! The `default` workspace keeps an active admin key: revoking, demoting or expiring its
//! last one is refused with 409 `last_admin_key` on every surface (native admin API,
//! Venice, aiXplain, CLI), and the key keeps working. With a second admin key, each of
//! these goes through.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, run_cli, spawn_app, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        the_last_admin_key_cannot_revoke_demote_or_expire_itself,
        compat_surfaces_refuse_to_remove_the_last_admin_key,
        the_cli_refuses_to_revoke_the_last_admin_key,
        an_admin_key_can_go_while_another_stays,
    ],
}

const PAST: &str = "2020-01-01T00:00:00Z";

async fn the_last_admin_key_cannot_revoke_demote_or_expire_itself(backend: Backend) {
    // Arrange: the bootstrap key is the workspace's only admin key.
    let app = spawn_app(backend).await;
    let own = format!("/admin/v1/keys/{}", app.admin_key_id);

    // Act and assert
    assert_error(
        app.delete(&own).await,
        StatusCode::CONFLICT,
        "last_admin_key",
        None,
    )
    .await;
    assert_error(
        app.patch_json(&own, &json!({ "kind": "inference" })).await,
        StatusCode::CONFLICT,
        "last_admin_key",
        None,
    )
    .await;
    assert_error(
        app.patch_json(&own, &json!({ "expires_at": PAST })).await,
        StatusCode::CONFLICT,
        "last_admin_key",
        None,
    )
    .await;

    // Nothing changed: the key is an active admin key and still manages keys.
    let (status, key) = json_of(app.get(&own).await).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["kind"], "admin", "{key}");
    assert_eq!(key["status"], "active", "{key}");
    assert!(key["expires_at"].is_null(), "{key}");
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
    // Harmless changes to it still work.
    let (status, renamed) = json_of(app.patch_json(&own, &json!({ "name": "root" })).await).await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
}

async fn compat_surfaces_refuse_to_remove_the_last_admin_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let id = app.admin_key_id.to_string();

    // Act and assert: Venice delete and expiry.
    let (status, body) = send(
        &app,
        Method::DELETE,
        &format!("/api/v1/api_keys?id={id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "LAST_ADMIN_KEY", "{body}");
    let (status, body) = send(
        &app,
        Method::PATCH,
        "/api/v1/api_keys",
        Some(json!({ "id": id, "expiresAt": PAST })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "LAST_ADMIN_KEY", "{body}");

    // aiXplain delete and expiry.
    let path = format!("/sdk/api-keys/{id}");
    let (status, body) = send(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "err.last_admin_key", "{body}");
    let (status, body) = send(&app, Method::PUT, &path, Some(json!({ "expiresAt": PAST }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "err.last_admin_key", "{body}");

    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.req(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.unwrap()).await
}

async fn the_cli_refuses_to_revoke_the_last_admin_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let id = app.admin_key_id.to_string();

    // Act
    let output = run_cli(&app.db, &["keys", "revoke", &id]).await;

    // Assert
    assert!(!output.success, "{}", output.stderr);
    assert!(
        output.stderr.contains("last active admin key"),
        "{}",
        output.stderr
    );
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
}

async fn an_admin_key_can_go_while_another_stays(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (second_id, second) = app.create_admin_key("second").await;
    let (third_id, _) = app.create_admin_key("third").await;

    // Act: the bootstrap key demotes itself, then the second expires the third.
    let own = format!("/admin/v1/keys/{}", app.admin_key_id);
    let (demoted, body) =
        json_of(app.patch_json(&own, &json!({ "kind": "inference" })).await).await;
    let expired = app
        .req_as(
            &second,
            Method::PATCH,
            &format!("/admin/v1/keys/{third_id}"),
        )
        .json(&json!({ "expires_at": PAST }))
        .send()
        .await
        .unwrap();
    let expired = expired.status();
    // Now the second is the last: it cannot go.
    let last = app
        .req_as(
            &second,
            Method::DELETE,
            &format!("/admin/v1/keys/{second_id}"),
        )
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(demoted, StatusCode::OK, "{body}");
    assert_eq!(expired, StatusCode::OK);
    assert_error(last, StatusCode::CONFLICT, "last_admin_key", None).await;
    assert_eq!(app.admin_status_of(&second).await, StatusCode::OK);
}
