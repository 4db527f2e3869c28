//! Create (the secret once, every field echoed), list (paginated, never a secret), get,
//! 404 for unknown and deleted ids, delete (at once).

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{assert_is_key_view, assert_partial_matches, KEY_FIELDS};
use crate::helpers::{assert_error, id_of, json_of, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_returns_the_key_and_its_secret_once,
        create_accepts_every_field_and_echoes_it,
        list_is_paginated_and_never_shows_secrets,
        get_returns_the_key_without_its_secret,
        unknown_and_deleted_ids_get_404,
        delete_revokes_the_key_at_once,
    ],
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
