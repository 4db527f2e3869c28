//! `/admin/v1/keys`: create, list, get, update, delete, rotate; workspace isolation, the
//! key cap, the audit trail and the key cache.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keygate::keys::Token;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, future_rfc3339, id_of, json_of, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_returns_the_key_and_its_secret_once,
        create_accepts_every_field_and_echoes_it,
        list_is_paginated_and_never_shows_secrets,
        get_returns_the_key_without_its_secret,
        unknown_and_deleted_ids_get_404,
        patch_changes_given_fields_and_null_clears,
        patch_can_set_every_create_field,
        delete_revokes_the_key_at_once,
        rotate_without_grace_stops_the_old_secret_at_once,
        rotate_with_grace_keeps_the_old_secret_for_the_grace_period,
        workspaces_are_isolated,
        key_cap_refuses_the_key_past_the_cap,
        admin_actions_are_audited_with_the_acting_key,
        patching_expiry_into_the_past_takes_effect_at_once,
    ],
}

const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "kind",
    "workspace_id",
    "partial_key",
    "last6",
    "status",
    "created_by",
    "created_at",
    "updated_at",
    "expires_at",
    "last_used_at",
    "budget",
    "limits",
    "model_limits",
    "allowed_models",
    "metadata",
];

fn assert_is_key_view(key: &Value) {
    for field in KEY_FIELDS {
        assert!(key.get(*field).is_some(), "`{field}` missing from {key}");
    }
    assert!(
        key.get("secret").is_none(),
        "a read shows the secret: {key}"
    );
}

/// `partial_key` and `last6` are derived from `secret`.
fn assert_partial_matches(key: &Value, secret: &str) {
    let token = Token::parse(secret).expect("the secret is a well-formed key");
    let expected_partial = format!("kg_{}…{}", token.lookup_id(), &secret[secret.len() - 4..]);
    assert_eq!(key["partial_key"], expected_partial.as_str(), "{key}");
    assert_eq!(key["last6"], &secret[secret.len() - 6..], "{key}");
}

async fn create_returns_the_key_and_its_secret_once(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let response = app
        .post_json("/admin/v1/keys", &json!({ "name": "ci bot" }))
        .await;

    // Assert
    let (status, key) = json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    for field in KEY_FIELDS {
        assert!(key.get(*field).is_some(), "`{field}` missing from {key}");
    }
    let secret = secret_of(&key);
    assert!(secret.starts_with("kg_"), "{secret}");
    assert_partial_matches(&key, &secret);
    assert_eq!(key["name"], "ci bot");
    assert_eq!(key["kind"], "inference");
    assert_eq!(key["status"], "active");
    assert_eq!(key["workspace_id"], app.workspace_id.to_string());
    assert_eq!(key["created_by"], format!("key:{}", app.admin_key_id));
    assert_eq!(key["created_at"], key["updated_at"]);
    assert!(key["expires_at"].is_null());
    assert!(key["last_used_at"].is_null());
    assert!(key["budget"].is_null());
    assert_eq!(key["model_limits"], json!([]));
    assert!(key["allowed_models"].is_null());
    assert_eq!(key["metadata"], json!({}));
    chrono::DateTime::parse_from_rfc3339(key["created_at"].as_str().unwrap())
        .expect("created_at is RFC 3339");

    // The secret is not shown again by any read.
    let (_, again) = json_of(app.get(&format!("/admin/v1/keys/{}", id_of(&key))).await).await;
    assert_is_key_view(&again);
    assert!(!again.to_string().contains(&secret));
}

async fn create_accepts_every_field_and_echoes_it(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let expires_at = "2099-01-02T03:04:05.123456Z";
    let body = json!({
        "name": "  full key  ",
        "kind": "admin",
        "expires_at": expires_at,
        "budget": { "limit_usd": 25.5, "period": "month" },
        "limits": { "rpm": 60, "rpd": 1000, "tpm": 0, "tpd": 100000, "token_type": "output" },
        "model_limits": [
            { "model": "gpt-4o-mini", "rpm": 10, "token_type": "input" },
            { "model": "gpt-4o", "tpd": 5000 }
        ],
        "allowed_models": ["gpt-4o-mini", "gpt-4o"],
        "metadata": { "team": "search", "tier": 2, "nested": { "a": [1, 2] } },
        "max_parallel": 4,
        "ip_allowlist": ["10.1.2.3/8", "192.168.0.1", "::1"],
        "alert_thresholds": [1.0, 0.5, 0.8]
    });

    // Act
    let created = app.create_key(&body).await;
    let (status, fetched) = json_of(
        app.get(&format!("/admin/v1/keys/{}", id_of(&created)))
            .await,
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    for key in [&created, &fetched] {
        assert_eq!(key["name"], "full key", "names are trimmed: {key}");
        assert_eq!(key["kind"], "admin");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(key["expires_at"].as_str().unwrap()).unwrap(),
            chrono::DateTime::parse_from_rfc3339(expires_at).unwrap()
        );
        assert_eq!(key["budget"]["limit_usd"].as_f64(), Some(25.5));
        assert_eq!(key["budget"]["period"], "month");
        assert_eq!(key["limits"]["rpm"], 60);
        assert_eq!(key["limits"]["rpd"], 1000);
        assert_eq!(key["limits"]["tpm"], 0, "0 is a valid limit (it blocks)");
        assert_eq!(key["limits"]["tpd"], 100000);
        assert_eq!(key["limits"]["token_type"], "output");
        assert_eq!(key["model_limits"][0]["model"], "gpt-4o-mini");
        assert_eq!(key["model_limits"][0]["rpm"], 10);
        assert_eq!(key["model_limits"][0]["token_type"], "input");
        assert_eq!(key["model_limits"][1]["model"], "gpt-4o");
        assert_eq!(key["model_limits"][1]["tpd"], 5000);
        assert_eq!(key["model_limits"][1]["token_type"], "total");
        assert_eq!(key["allowed_models"], json!(["gpt-4o-mini", "gpt-4o"]));
        assert_eq!(
            key["metadata"],
            json!({ "team": "search", "tier": 2, "nested": { "a": [1, 2] } })
        );
        assert_eq!(key["max_parallel"], 4);
        assert_eq!(
            key["ip_allowlist"],
            json!(["10.0.0.0/8", "192.168.0.1/32", "::1/128"])
        );
        assert_eq!(key["alert_thresholds"], json!([0.5, 0.8, 1.0]));
    }
    assert_is_key_view(&fetched);
    // Everything but the secret reads back exactly as created.
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(without_secret, fetched);
    // Its IP allowlist holds on the admin API too: this test calls from 127.0.0.1, which
    // the list does not include.
    assert_eq!(
        app.admin_status_of(&secret_of(&created)).await,
        StatusCode::FORBIDDEN
    );
}

async fn list_is_paginated_and_never_shows_secrets(backend: Backend) {
    // Arrange: the bootstrap admin key plus three more, oldest first.
    let app = spawn_app(backend).await;
    let mut ids = vec![app.admin_key_id.to_string()];
    let mut secrets = vec![app.admin_key.clone()];
    for name in ["one", "two", "three"] {
        let key = app.create_key(&json!({ "name": name })).await;
        ids.push(id_of(&key));
        secrets.push(secret_of(&key));
    }

    // Act
    let (s1, page1) = json_of(app.get("/admin/v1/keys?page=1&limit=2").await).await;
    let (s2, page2) = json_of(app.get("/admin/v1/keys?page=2&limit=2").await).await;
    let (s3, page3) = json_of(app.get("/admin/v1/keys?page=3&limit=2").await).await;
    let (s4, default) = json_of(app.get("/admin/v1/keys").await).await;

    // Assert
    for status in [s1, s2, s3, s4] {
        assert_eq!(status, StatusCode::OK);
    }
    let ids_of = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(id_of).collect()
    };
    assert_eq!(ids_of(&page1), ids[..2]);
    assert_eq!(ids_of(&page2), ids[2..]);
    assert!(ids_of(&page3).is_empty());
    assert_eq!(ids_of(&default), ids);
    assert_eq!((&page1["page"], &page1["limit"]), (&json!(1), &json!(2)));
    assert_eq!((&page2["page"], &page2["limit"]), (&json!(2), &json!(2)));
    assert_eq!(
        (&default["page"], &default["limit"]),
        (&json!(1), &json!(50))
    );
    for page in [&page1, &page2, &page3, &default] {
        assert_eq!(page["total"], 4, "{page}");
        for key in page["data"].as_array().unwrap() {
            assert_is_key_view(key);
        }
        for secret in &secrets {
            assert!(!page.to_string().contains(secret.as_str()));
        }
    }
    // The list's views match the keys' own.
    let (_, one) = json_of(app.get(&format!("/admin/v1/keys/{}", ids[1])).await).await;
    assert_eq!(default["data"][1], one);
}

async fn get_returns_the_key_without_its_secret(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let created = app
        .create_key(&json!({ "name": "reader", "metadata": { "k": "v" } }))
        .await;
    let secret = secret_of(&created);

    // Act
    let (status, key) = json_of(
        app.get(&format!("/admin/v1/keys/{}", id_of(&created)))
            .await,
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    assert_is_key_view(&key);
    assert_partial_matches(&key, &secret);
    assert_eq!(key["id"], created["id"]);
    assert_eq!(key["metadata"], json!({ "k": "v" }));
    assert!(!key.to_string().contains(&secret));
}

async fn unknown_and_deleted_ids_get_404(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let (deleted, _) = app.create_inference_key("soon gone").await;
    assert_eq!(
        app.delete(&format!("/admin/v1/keys/{deleted}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    for id in [&unknown, &deleted] {
        let path = format!("/admin/v1/keys/{id}");
        // Act + Assert
        assert_error(
            app.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_error(
            app.patch_json(&path, &json!({ "name": "x" })).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_error(
            app.delete(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
        assert_error(
            app.rotate(id, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
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

async fn delete_revokes_the_key_at_once(backend: Backend) {
    // Arrange: an admin key, used once so that it sits in the key cache.
    let app = spawn_app(backend).await;
    let (id, secret) = app.create_admin_key("to delete").await;
    assert_eq!(app.admin_status_of(&secret).await, StatusCode::OK);

    // Act
    let response = app.delete(&format!("/admin/v1/keys/{id}")).await;

    // Assert
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    let (_, refused) = json_of(app.get_as(&secret, "/admin/v1/keys").await).await;
    assert_eq!(refused["error"]["code"], "invalid_api_key", "{refused}");
    assert_eq!(app.admin_status_of(&secret).await, StatusCode::UNAUTHORIZED);
    let (_, list) = json_of(app.get("/admin/v1/keys").await).await;
    assert!(!list.to_string().contains(&id), "a deleted key is listed");
    assert_eq!(list["total"], 1);
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

async fn workspaces_are_isolated(backend: Backend) {
    // Arrange: a key in the default workspace; another workspace with its own admin.
    let app = spawn_app(backend).await;
    let (mine, _) = app.create_inference_key("default's key").await;
    let (other_ws, other_admin_id, other_admin) =
        app.create_workspace_with_admin("other", None).await;
    let path = format!("/admin/v1/keys/{mine}");

    // Act + Assert: the other admin sees only its own workspace.
    let (status, list) = json_of(app.get_as(&other_admin, "/admin/v1/keys").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["id"], other_admin_id.to_string());
    assert_eq!(list["data"][0]["workspace_id"], other_ws.to_string());
    assert!(!list.to_string().contains(&mine));

    let other = |method: Method, path: &str| app.req_as(&other_admin, method, path);
    for response in [
        other(Method::GET, &path).send().await.unwrap(),
        other(Method::PATCH, &path)
            .json(&json!({ "name": "hijacked" }))
            .send()
            .await
            .unwrap(),
        other(Method::POST, &format!("{path}/rotate"))
            .send()
            .await
            .unwrap(),
        other(Method::DELETE, &path).send().await.unwrap(),
    ] {
        assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    }

    // Keys it creates land in its workspace, invisible to the default one.
    let (status, created) = json_of(
        other(Method::POST, "/admin/v1/keys")
            .json(&json!({ "name": "theirs" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["workspace_id"], other_ws.to_string());
    assert_eq!(created["created_by"], format!("key:{other_admin_id}"));
    assert_error(
        app.get(&format!("/admin/v1/keys/{}", id_of(&created)))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;

    // The default workspace's key is untouched.
    let (status, key) = json_of(app.get(&path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["name"], "default's key");
    assert_eq!(key["status"], "active");
    let (_, list) = json_of(app.get("/admin/v1/keys").await).await;
    assert_eq!(list["total"], 2, "{list}");
}

async fn key_cap_refuses_the_key_past_the_cap(backend: Backend) {
    // Arrange: a workspace capped at 2 live keys; its admin key is the first.
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    let create = |name: &str| {
        app.req_as(&admin, Method::POST, "/admin/v1/keys")
            .json(&json!({ "name": name }))
            .send()
    };

    // Act
    let second = create("second").await.unwrap();
    let third = create("third").await.unwrap();

    // Assert
    let (status, second) = json_of(second).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let error = assert_error(third, StatusCode::CONFLICT, "key_cap_reached", None).await;
    assert!(
        error["message"].as_str().unwrap().contains('2'),
        "the message names the cap: {error}"
    );

    // Revoked keys do not count: deleting one makes room again.
    let deleted = app
        .req_as(
            &admin,
            Method::DELETE,
            &format!("/admin/v1/keys/{}", id_of(&second)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(create("again").await.unwrap().status(), StatusCode::CREATED);
}

async fn admin_actions_are_audited_with_the_acting_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, secret) = app.create_inference_key("audited").await;
    let path = format!("/admin/v1/keys/{id}");

    // Act
    assert_eq!(
        app.patch_json(&path, &json!({ "name": "audited 2" }))
            .await
            .status(),
        StatusCode::OK
    );
    let (_, rotated) = json_of(app.rotate(&id, Some(&json!({ "grace_seconds": 60 }))).await).await;
    assert_eq!(app.delete(&path).await.status(), StatusCode::NO_CONTENT);

    // Assert
    let events = app.audit_events(app.workspace_id).await;
    let target = format!("key:{id}");
    let actions: Vec<&str> = events
        .iter()
        .rev()
        .filter(|e| e.target == target)
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        ["key.create", "key.update", "key.rotate", "key.revoke"],
        "{events:?}"
    );
    for event in events.iter().filter(|e| e.target == target) {
        assert_eq!(
            event.actor,
            format!("key:{}", app.admin_key_id),
            "{event:?}"
        );
        assert_eq!(event.workspace_id, app.workspace_id);
        assert_eq!(event.source.as_deref(), Some("127.0.0.1"), "{event:?}");
        let details = event.details.to_string();
        assert!(!details.contains(&secret) && !details.contains(&secret_of(&rotated)));
    }
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
