//! `PATCH`: given fields change, `null` clears, every create field can be set, an expiry
//! moved into the past takes effect at once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::assert_is_key_view;
use crate::helpers::{future_rfc3339, id_of, json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        patch_changes_given_fields_and_null_clears,
        patch_can_set_every_create_field,
        patching_expiry_into_the_past_takes_effect_at_once,
    ],
}

async fn patch_changes_given_fields_and_null_clears(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let created = app
        .create_key(&json!({
            "name": "before",
            "expires_at": "2099-01-01T00:00:00Z",
            "budget": { "limit_usd": 10, "period": "day" },
            "limits": { "rpm": 5 },
            "model_limits": [{ "model": "m", "rpm": 1 }],
            "allowed_models": ["m"],
            "metadata": { "a": 1 },
            "max_parallel": 2,
            "ip_allowlist": ["127.0.0.1"],
            "alert_thresholds": [0.5]
        }))
        .await;
    let path = format!("/admin/v1/keys/{}", id_of(&created));
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Act 1: change only the name.
    let (status, renamed) = json_of(app.patch_json(&path, &json!({ "name": "after" })).await).await;

    // Assert 1: the name changed, nothing else did.
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_is_key_view(&renamed);
    assert_eq!(renamed["name"], "after");
    for field in [
        "expires_at",
        "budget",
        "limits",
        "model_limits",
        "allowed_models",
        "metadata",
        "max_parallel",
        "ip_allowlist",
        "alert_thresholds",
        "kind",
        "created_at",
        "created_by",
        "partial_key",
        "last6",
    ] {
        assert_eq!(renamed[field], created[field], "`{field}` changed");
    }
    assert!(
        renamed["updated_at"].as_str().unwrap() > created["updated_at"].as_str().unwrap(),
        "updated_at did not move: {renamed}"
    );

    // Act 2: null clears every optional field.
    let (status, cleared) = json_of(
        app.patch_json(
            &path,
            &json!({
                "expires_at": null,
                "budget": null,
                "limits": null,
                "model_limits": null,
                "allowed_models": null,
                "metadata": null,
                "max_parallel": null,
                "ip_allowlist": null,
                "alert_thresholds": null
            }),
        )
        .await,
    )
    .await;

    // Assert 2
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["name"], "after");
    assert!(cleared["expires_at"].is_null(), "{cleared}");
    assert!(cleared["budget"].is_null(), "{cleared}");
    for limit in ["rpm", "rpd", "tpm", "tpd"] {
        assert!(cleared["limits"][limit].is_null(), "{cleared}");
    }
    assert_eq!(cleared["model_limits"], json!([]));
    assert!(cleared["allowed_models"].is_null(), "{cleared}");
    assert_eq!(cleared["metadata"], json!({}));
    assert!(cleared["max_parallel"].is_null(), "{cleared}");
    assert!(cleared["ip_allowlist"].is_null(), "{cleared}");
    assert!(cleared["alert_thresholds"].is_null(), "{cleared}");

    // The change is stored, not only answered.
    let (_, fetched) = json_of(app.get(&path).await).await;
    assert_eq!(fetched, cleared);

    // An empty patch changes nothing but is accepted.
    let (status, same) = json_of(app.patch_json(&path, &json!({})).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["name"], "after");
}

async fn patch_can_set_every_create_field(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, _) = app.create_inference_key("plain").await;
    let path = format!("/admin/v1/keys/{id}");

    // Act
    let (status, key) = json_of(
        app.patch_json(
            &path,
            &json!({
                "name": "patched",
                "kind": "admin",
                "expires_at": "2098-05-06T07:08:09Z",
                "budget": { "limit_usd": "12.25", "period": "lifetime" },
                "limits": { "rpm": 1, "rpd": 2, "tpm": 3, "tpd": 4, "token_type": "input" },
                "model_limits": [{ "model": "x", "tpm": 7 }],
                "allowed_models": ["x"],
                "metadata": { "owner": "me" },
                "max_parallel": 9,
                "ip_allowlist": ["2001:db8::/32"],
                "alert_thresholds": [0.9]
            }),
        )
        .await,
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_is_key_view(&key);
    assert_eq!(key["name"], "patched");
    assert_eq!(key["kind"], "admin");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(key["expires_at"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339("2098-05-06T07:08:09Z").unwrap()
    );
    assert_eq!(key["budget"]["limit_usd"].as_f64(), Some(12.25));
    assert_eq!(key["budget"]["period"], "lifetime");
    assert_eq!(
        key["limits"],
        json!({ "rpm": 1, "rpd": 2, "tpm": 3, "tpd": 4, "token_type": "input" })
    );
    assert_eq!(key["model_limits"][0]["model"], "x");
    assert_eq!(key["model_limits"][0]["tpm"], 7);
    assert_eq!(key["allowed_models"], json!(["x"]));
    assert_eq!(key["metadata"], json!({ "owner": "me" }));
    assert_eq!(key["max_parallel"], 9);
    assert_eq!(key["ip_allowlist"], json!(["2001:db8::/32"]));
    assert_eq!(key["alert_thresholds"], json!([0.9]));
    let (_, fetched) = json_of(app.get(&path).await).await;
    assert_eq!(fetched, key);
}

async fn patching_expiry_into_the_past_takes_effect_at_once(backend: Backend) {
    // Arrange: a second admin key, used once so that it is cached as valid.
    let app = spawn_app(backend).await;
    let (id, secret) = app.create_admin_key("short-lived").await;
    assert_eq!(app.admin_status_of(&secret).await, StatusCode::OK);

    // Act
    let (status, key) = json_of(
        app.patch_json(
            &format!("/admin/v1/keys/{id}"),
            &json!({ "expires_at": "2020-01-01T00:00:00Z" }),
        )
        .await,
    )
    .await;

    // Assert: well within the cache TTL, the key is already refused.
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["status"], "expired");
    let (status, body) = json_of(app.get_as(&secret, "/admin/v1/keys").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Moving the expiry back into the future revives it.
    let response = app
        .patch_json(
            &format!("/admin/v1/keys/{id}"),
            &json!({ "expires_at": future_rfc3339(3600) }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.admin_status_of(&secret).await, StatusCode::OK);
}
