//! Text that would hide or break something is refused, naming the field: control characters
//! (NUL and friends) in model names, bidi overrides and zero-width characters in key names,
//! and JSON bodies that are not UTF-8, carry lone surrogates or numbers out of range, each
//! told as what it is.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, json_of, spawn_app, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        control_characters_in_model_names_are_refused,
        invisible_characters_in_key_names_are_refused,
        json_errors_name_the_real_problem,
    ],
}

async fn control_characters_in_model_names_are_refused(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, _) = app.create_inference_key("app").await;
    let bad_models = ["gpt-4o\u{0}", "\u{7}gpt", "gpt\u{1b}[2J", "gpt\u{7f}"];

    for model in bad_models {
        // Act and assert: native create and update, both lists.
        let create = app
            .post_json(
                "/admin/v1/keys",
                &json!({ "name": "m", "allowed_models": ["ok", model] }),
            )
            .await;
        assert_error(
            create,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("allowed_models[1]"),
        )
        .await;
        let update = app
            .patch_json(
                &format!("/admin/v1/keys/{id}"),
                &json!({ "model_limits": [{ "model": model, "rpm": 1 }] }),
            )
            .await;
        assert_error(
            update,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("model_limits[0].model"),
        )
        .await;
        // aiXplain names the model `assetId`.
        let (status, body) = send(
            &app,
            Method::POST,
            "/sdk/api-keys",
            json!({ "name": "m", "assetsLimits": [{ "assetId": model, "rpm": 1 }] }),
        )
        .await;
        assert!(status.is_client_error(), "{model:?}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("assetsLimits[0].assetId")),
            "{model:?}: {body}"
        );
    }

    // aiXplain's model lookup.
    for path in [
        "/v2/models/%00",
        "/v2/models/openai%2Fgpt%07",
        "/v2/models/a%1Bb",
    ] {
        let response = app
            .req(Method::GET, path)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("path") && m.contains("control characters")),
            "{path}: {body}"
        );
    }

    // Nothing was stored.
    let (_, key) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(key["model_limits"], json!([]), "{key}");
}

async fn send(app: &TestApp, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    json_of(app.req(method, path).json(&body).send().await.unwrap()).await
}

async fn invisible_characters_in_key_names_are_refused(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, _) = app.create_inference_key("app").await;
    let names = [
        "invoice\u{202e}fdp.exe", // right-to-left override
        "\u{202a}left",           // left-to-right embedding
        "a\u{2066}b\u{2069}",     // isolates
        "ad\u{200b}min",          // zero-width space
        "a\u{200d}b",             // zero-width joiner
        "\u{feff}bom",            // zero-width no-break space
        "word\u{2060}joiner",     // word joiner
    ];

    for name in names {
        // Act and assert: native create and rename, Venice create, aiXplain create.
        let create = app
            .post_json("/admin/v1/keys", &json!({ "name": name }))
            .await;
        let error = assert_error(
            create,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("name"),
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().contains("invisible"),
            "{name:?}: {error}"
        );
        let rename = app
            .patch_json(&format!("/admin/v1/keys/{id}"), &json!({ "name": name }))
            .await;
        assert_error(
            rename,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("name"),
        )
        .await;
        let (status, body) = send(
            &app,
            Method::POST,
            "/api/v1/api_keys",
            json!({ "apiKeyType": "INFERENCE", "description": name }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert_eq!(body["issues"][0]["path"], json!(["description"]), "{body}");
        let (status, body) =
            send(&app, Method::POST, "/sdk/api-keys", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
    }

    // Visible non-ASCII names are fine.
    app.create_key(&json!({ "name": "Zürich · 東京 · مرحبا" }))
        .await;
}

async fn json_errors_name_the_real_problem(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // (what, raw body, status, field, words the message must contain)
    let cases: [(&str, &[u8], StatusCode, &str, &str); 6] = [
        (
            "invalid UTF-8 in a string",
            b"{\"name\": \"caf\xe9\"}",
            StatusCode::BAD_REQUEST,
            "body",
            "not valid UTF-8",
        ),
        (
            "invalid UTF-8 outside strings",
            b"{\"name\": \"a\"}\xff",
            StatusCode::BAD_REQUEST,
            "body",
            "not valid UTF-8",
        ),
        (
            "a lone leading surrogate",
            br#"{"name": "\ud800"}"#,
            StatusCode::BAD_REQUEST,
            "name",
            "lone surrogate",
        ),
        (
            "a lone trailing surrogate",
            br#"{"name": "a\udc00b"}"#,
            StatusCode::BAD_REQUEST,
            "name",
            "lone surrogate",
        ),
        (
            "an integer out of range",
            br#"{"name": "a", "limits": {"rpm": 1e400}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "limits.rpm",
            "number out of range",
        ),
        (
            "a float out of range",
            br#"{"name": "a", "alert_thresholds": [0.5, 1e400]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "alert_thresholds[1]",
            "number out of range",
        ),
    ];
    for (what, body, status, field, words) in cases {
        // Act
        let response = app
            .req(Method::POST, "/admin/v1/keys")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();

        // Assert
        let (got, answer) = json_of(response).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{what}: {answer}");
        assert!(!message.contains("wrong type"), "{what}: {answer}");
    }

    // A wrong type for an enum is still told as such.
    let response = app
        .post_json("/admin/v1/keys", &json!({ "name": "a", "kind": 1 }))
        .await;
    let error = assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("kind"),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("wrong type"),
        "{error}"
    );

    // The compatibility surfaces read JSON the same way.
    let response = app
        .req(Method::POST, "/api/v1/api_keys")
        .header("content-type", "application/json")
        .body(br#"{"apiKeyType": "INFERENCE", "description": "\ud800"}"#.to_vec())
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("lone surrogate"), "{body}");
}
