//! Rotation with and without a grace period for the old secret.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{assert_is_key_view, assert_partial_matches};
use crate::helpers::{id_of, json_of, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        rotate_without_grace_stops_the_old_secret_at_once,
        rotate_with_grace_keeps_the_old_secret_for_the_grace_period,
    ],
}

async fn rotate_without_grace_stops_the_old_secret_at_once(backend: Backend) {
    // Arrange: an admin key in the cache.
    let app = spawn_app(backend).await;
    let created = app
        .create_key(&json!({ "name": "rotating", "kind": "admin" }))
        .await;
    let (id, old) = (id_of(&created), secret_of(&created));
    assert_eq!(app.admin_status_of(&old).await, StatusCode::OK);

    // Act
    let (status, rotated) = json_of(app.rotate(&id, None).await).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = secret_of(&rotated);
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["name"], "rotating");
    assert_partial_matches(&rotated, &new);
    assert_ne!(rotated["partial_key"], created["partial_key"]);
    assert_eq!(app.admin_status_of(&old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.admin_status_of(&new).await, StatusCode::OK);
    let (_, fetched) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_is_key_view(&fetched);
    assert_partial_matches(&fetched, &new);

    // An empty JSON object is "no grace" too.
    let (status, again) = json_of(app.rotate(&id, Some(&json!({}))).await).await;
    assert_eq!(status, StatusCode::OK);
    let newest = secret_of(&again);
    assert_eq!(app.admin_status_of(&new).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.admin_status_of(&newest).await, StatusCode::OK);
}

async fn rotate_with_grace_keeps_the_old_secret_for_the_grace_period(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, old) = app.create_admin_key("graceful").await;
    assert_eq!(app.admin_status_of(&old).await, StatusCode::OK);

    // Act
    let (status, rotated) =
        json_of(app.rotate(&id, Some(&json!({ "grace_seconds": 3 }))).await).await;
    let rotated_at = std::time::Instant::now();

    // Assert: during the grace period both secrets work.
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = secret_of(&rotated);
    assert_partial_matches(&rotated, &new);
    assert_eq!(app.admin_status_of(&old).await, StatusCode::OK);
    assert_eq!(app.admin_status_of(&new).await, StatusCode::OK);
    assert!(
        rotated_at.elapsed() < Duration::from_secs(3),
        "test too slow"
    );

    // After it, only the new one does.
    tokio::time::sleep(Duration::from_millis(3300).saturating_sub(rotated_at.elapsed())).await;
    let (status, body) = json_of(app.get_as(&old, "/admin/v1/keys").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(app.admin_status_of(&new).await, StatusCode::OK);
}
