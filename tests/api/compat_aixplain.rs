//! The aiXplain-compatible surface (`/sdk/api-keys…`, `/v2/models/…`) at the HTTP level:
//! the exact shapes of shared/wire/aixplain.md (bare arrays, camelCase fields, int limits,
//! lower-case `tokenType`, `assetsLimits` always an array, partial `accessKey`), route
//! precedence, GET with a JSON body, the error shape, and that keys made here are ordinary
//! keygate keys that the proxy enforces. The real SDK drives it in tests/aixplain_sdk.rs.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate::config::UpstreamConfig;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, keys_in, secret_of, spawn_app, spawn_app_with, Backend, TestApp};
use crate::support::backends::backend_tests;
// tests/support is compiled once per test binary (clippy::duplicate_mod); proxy_helpers holds it.
use crate::proxy_helpers::MockUpstream;

backend_tests! {
    both: [
        list_is_a_bare_array_of_every_key_with_partial_access_keys,
        create_answers_the_wire_shape_with_the_full_key_once,
        get_accepts_a_json_body_and_every_key_header,
        fixed_routes_win_over_id_routes,
        put_updates_with_aixplain_semantics,
        delete_revokes_and_then_404s,
        errors_use_the_aixplain_shape_and_never_500,
        bad_bodies_get_4xx_naming_the_field,
        key_cap_is_409,
        workspaces_are_isolated,
        v2_models_answers_the_path_as_id,
        openapi_lists_the_aixplain_routes,
    ],
}

// Tests that need a real upstream behind the proxy (SQLite only: the store is not what
// they are about).
mod with_upstream {
    #[tokio::test]
    async fn usage_limits_count_real_calls_and_limits_are_enforced() {
        super::usage_limits_count_real_calls_and_limits_are_enforced().await
    }
}

const KEY_FIELDS: [&str; 8] = [
    "id",
    "name",
    "budget",
    "expiresAt",
    "accessKey",
    "isAdmin",
    "globalLimits",
    "assetsLimits",
];

/// A request the way the aiXplain SDK sends it: `x-api-key`, and
/// `Content-Type: application/json` on every request.
fn aix(app: &TestApp, key: &str, method: Method, path: &str) -> RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("x-api-key", key)
        .header("content-type", "application/json")
}

/// The SDK's GET: a JSON body `{}`.
async fn aix_get(app: &TestApp, key: &str, path: &str) -> (StatusCode, Value) {
    json_of(
        aix(app, key, Method::GET, path)
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn aix_send(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    json_of(
        aix(app, key, method, path)
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Asserts `{"statusCode", "message", "error": "err.<code>"}` with nothing else.
fn assert_aix_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    let object = body.as_object().expect("an error is a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "statusCode"], "{body}");
    assert_eq!(body["statusCode"], expected.as_u16(), "{body}");
    assert_eq!(body["error"], format!("err.{code}"), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Every field the SDK reads, with the types it needs (wire §4): anything else crashes it.
fn assert_key_shape(key: &Value) {
    let object = key.as_object().expect("a key is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = KEY_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{key}");
    assert!(key["id"].is_string() && key["name"].is_string(), "{key}");
    assert!(
        key["budget"].is_null() || key["budget"].is_number(),
        "{key}"
    );
    assert!(
        key["expiresAt"].is_null() || key["expiresAt"].is_string(),
        "{key}"
    );
    assert!(
        key["accessKey"].is_string() && key["isAdmin"].is_boolean(),
        "{key}"
    );
    assert_limits_shape(&key["globalLimits"], false);
    let assets = key["assetsLimits"]
        .as_array()
        .expect("assetsLimits is an array");
    for asset in assets {
        assert_limits_shape(asset, true);
    }
}

fn assert_limits_shape(limits: &Value, asset: bool) {
    for field in ["tpm", "tpd", "rpm", "rpd"] {
        assert!(limits[field].is_u64(), "`{field}` is not an int: {limits}");
    }
    let token_type = limits["tokenType"].as_str().expect("tokenType is a string");
    assert!(
        ["input", "output", "total"].contains(&token_type),
        "{limits}"
    );
    assert_eq!(
        limits.get("assetId").is_some_and(Value::is_string),
        asset,
        "{limits}"
    );
    assert_eq!(
        limits.as_object().unwrap().len(),
        if asset { 6 } else { 5 },
        "{limits}"
    );
}

fn is_partial_of(access_key: &Value, secret: &str) -> bool {
    access_key.as_str() == Some(&format!("{}…{}", &secret[..4], &secret[secret.len() - 4..]))
}

/// The captured create payload of wire §3 (with a future expiry).
fn captured_create(name: &str) -> Value {
    json!({
        "name": name,
        "budget": 5,
        "expiresAt": "2099-01-02T03:04:05.000000Z",
        "globalLimits": {"tpm": 100, "tpd": 1000, "rpm": 10, "rpd": 100, "tokenType": "input"},
        "assetsLimits": [{"tpm": 1, "tpd": 2, "rpm": 3, "rpd": 4, "tokenType": null, "assetId": "m1"}],
    })
}

async fn create(app: &TestApp, body: &Value) -> Value {
    let (status, key) = aix_send(app, &app.admin_key, Method::POST, "/sdk/api-keys", body).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key
}

async fn list_is_a_bare_array_of_every_key_with_partial_access_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret) = app.create_inference_key("same name").await;
    app.create_inference_key("same name").await;
    let made = create(&app, &captured_create("from aix")).await;

    let response = aix(&app, &app.admin_key, Method::GET, "/sdk/api-keys")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(keys_in(&text).is_empty(), "a list shows a full key: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let keys = list.as_array().expect("the list is a bare JSON array");
    assert_eq!(keys.len(), 4, "{list}");
    keys.iter().for_each(assert_key_shape);
    let admin = keys
        .iter()
        .find(|k| k["id"] == app.admin_key_id.to_string())
        .expect("the admin key is listed");
    assert_eq!(admin["isAdmin"], true);
    assert!(
        is_partial_of(&admin["accessKey"], &app.admin_key),
        "{admin}"
    );
    assert_eq!(
        keys.iter().filter(|k| k["name"] == "same name").count(),
        2,
        "names need not be unique"
    );
    assert!(keys
        .iter()
        .any(|k| k["name"] == "same name" && is_partial_of(&k["accessKey"], &secret)));
    assert!(keys
        .iter()
        .any(|k| k["id"] == made["id"] && k["isAdmin"] == false));

    // Without a body, and with `Authorization: Token` (the v1 SDK), it is the same list.
    let response = app
        .client
        .get(app.url("/sdk/api-keys"))
        .header("authorization", format!("Token {}", app.admin_key))
        .send()
        .await
        .unwrap();
    let (status, again) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, list);
}

async fn create_answers_the_wire_shape_with_the_full_key_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("fresh")).await;
    assert_key_shape(&key);
    let secret = key["accessKey"].as_str().unwrap().to_string();
    assert_eq!(
        keys_in(&secret),
        std::slice::from_ref(&secret),
        "create shows the full key"
    );
    let id = key["id"].as_str().unwrap().to_string();
    assert_eq!(
        key,
        json!({
            "id": id,
            "name": "fresh",
            "budget": 5.0,
            "expiresAt": "2099-01-02T03:04:05.000000Z",
            "accessKey": secret,
            "isAdmin": false,
            "globalLimits": {"tpm": 100, "tpd": 1000, "rpm": 10, "rpd": 100, "tokenType": "input"},
            "assetsLimits": [{"tpm": 1, "tpd": 2, "rpm": 3, "rpd": 4, "tokenType": "total", "assetId": "m1"}],
        })
    );

    // The full key works, and is never shown again.
    assert_eq!(
        app.get_as(&secret, "/v1/key").await.status(),
        StatusCode::OK
    );
    let (status, got) = aix_get(&app, &app.admin_key, &format!("/sdk/api-keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(is_partial_of(&got["accessKey"], &secret), "{got}");
    let mut expected = key.clone();
    expected["accessKey"] = got["accessKey"].clone();
    assert_eq!(got, expected);

    // An ordinary keygate key: the native API reads the same values.
    let (status, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(native["kind"], "inference");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 5.0, "period": "lifetime"})
    );
    assert_eq!(
        native["limits"],
        json!({"rpm": 10, "rpd": 100, "tpm": 100, "tpd": 1000, "token_type": "input"})
    );
    assert_eq!(
        native["model_limits"],
        json!([{"model": "m1", "rpm": 3, "rpd": 4, "tpm": 1, "tpd": 2, "token_type": "total"}])
    );
    assert_eq!(native["expires_at"], "2099-01-02T03:04:05Z");

    // A minimal create: zeros and absent limits are "no limit", answered as 0, never null.
    let minimal = create(
        &app,
        &json!({"name": "minimal", "budget": null, "globalLimits": {"tpm": 0, "tpd": 0, "rpm": 0, "rpd": 0, "tokenType": null}, "assetsLimits": []}),
    )
    .await;
    assert_key_shape(&minimal);
    assert_eq!(minimal["budget"], Value::Null);
    assert_eq!(minimal["expiresAt"], Value::Null);
    assert_eq!(
        minimal["globalLimits"],
        json!({"tpm": 0, "tpd": 0, "rpm": 0, "rpd": 0, "tokenType": "total"})
    );
    let (_, native) = json_of(
        app.get(&format!(
            "/admin/v1/keys/{}",
            minimal["id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(
        native["limits"],
        json!({"rpm": null, "rpd": null, "tpm": null, "tpd": null, "token_type": "total"})
    );
    let bare = create(&app, &json!({"name": "bare"})).await;
    assert_key_shape(&bare);
    assert_eq!(bare["assetsLimits"], json!([]));

    // Keys created natively read the same way (null limits become 0).
    let native_key = app
        .create_key(&json!({"name": "native", "limits": {"rpm": 7}, "budget": {"limit_usd": 2, "period": "month"}}))
        .await;
    let (_, seen) = aix_get(
        &app,
        &app.admin_key,
        &format!("/sdk/api-keys/{}", native_key["id"].as_str().unwrap()),
    )
    .await;
    assert_key_shape(&seen);
    assert_eq!(seen["globalLimits"]["rpm"], 7);
    assert_eq!(seen["globalLimits"]["tpd"], 0);
    assert_eq!(seen["budget"], 2.0);
    assert!(is_partial_of(&seen["accessKey"], &secret_of(&native_key)));
}

async fn get_accepts_a_json_body_and_every_key_header(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("headers")).await;
    let path = format!("/sdk/api-keys/{}", key["id"].as_str().unwrap());
    let requests = [
        aix(&app, &app.admin_key, Method::GET, &path).body("{}"),
        app.client
            .get(app.url(&path))
            .header("x-api-key", &app.admin_key),
        app.client
            .get(app.url(&path))
            .header("x-aixplain-key", &app.admin_key),
        app.client
            .get(app.url(&path))
            .header("authorization", format!("Token {}", app.admin_key)),
        app.client.get(app.url(&path)).bearer_auth(&app.admin_key),
        // `?host=` (the SDK's optional get parameter) is ignored.
        aix(&app, &app.admin_key, Method::GET, &format!("{path}?host=x")).body("{}"),
    ];
    for request in requests {
        let (status, got) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["id"], key["id"]);
        assert_key_shape(&got);
    }
}

async fn fixed_routes_win_over_id_routes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (inference_id, inference) = app.create_inference_key("plain").await;

    // `usage-limits` is the calling key's usage, never an id: an inference key may read it.
    for key in [&app.admin_key, &inference] {
        let (status, usage) = aix_get(&app, key, "/sdk/api-keys/usage-limits").await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        assert_eq!(
            usage,
            json!([{"requestCount": 0, "requestCountLimit": 0, "tokenCount": 0, "tokenCountLimit": 0}])
        );
    }
    // `{id}` routes are management: admin only.
    let (status, body) = aix_get(&app, &inference, &format!("/sdk/api-keys/{inference_id}")).await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, body) = aix_get(
        &app,
        &inference,
        &format!("/sdk/api-keys/{inference_id}/usage-limits"),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, usage) = aix_get(
        &app,
        &app.admin_key,
        &format!("/sdk/api-keys/{inference_id}/usage-limits"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert!(usage.is_array());
    // Other methods on the fixed route are 405, not an id lookup.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::DELETE,
        "/sdk/api-keys/usage-limits",
        &json!({}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn put_updates_with_aixplain_semantics(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("before")).await;
    let secret = key["accessKey"].as_str().unwrap().to_string();
    let id = key["id"].as_str().unwrap().to_string();
    let path = format!("/sdk/api-keys/{id}");

    // What the SDK sends after `set_request_per_minute(7)` + `save()`: everything, with the id;
    // no expiresAt when the object has none (so it stays), 0 for unset limits.
    let (status, updated) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({
            "id": id,
            "name": "after",
            "budget": 7.25,
            "globalLimits": {"tpm": 0, "tpd": 0, "rpm": 7, "rpd": 0, "tokenType": "OUTPUT"},
            "assetsLimits": [{"tpm": 0, "tpd": 0, "rpm": 1, "rpd": 0, "tokenType": null, "assetId": "m2"}],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_key_shape(&updated);
    assert!(
        is_partial_of(&updated["accessKey"], &secret),
        "PUT never answers the full key: {updated}"
    );
    assert_eq!(updated["name"], "after");
    assert_eq!(updated["budget"], 7.25);
    assert_eq!(updated["expiresAt"], "2099-01-02T03:04:05.000000Z");
    assert_eq!(
        updated["globalLimits"],
        json!({"tpm": 0, "tpd": 0, "rpm": 7, "rpd": 0, "tokenType": "output"})
    );
    assert_eq!(
        updated["assetsLimits"],
        json!([{"tpm": 0, "tpd": 0, "rpm": 1, "rpd": 0, "tokenType": "total", "assetId": "m2"}])
    );
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["limits"]["tpm"], Value::Null, "0 is no limit");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 7.25, "period": "lifetime"})
    );

    // A budget keeps its period; `null` clears budget and expiry.
    app.patch_json(
        &format!("/admin/v1/keys/{id}"),
        &json!({"budget": {"limit_usd": 1, "period": "day"}}),
    )
    .await;
    let (status, _) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "after", "budget": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["budget"], json!({"limit_usd": 3.0, "period": "day"}));
    assert_eq!(
        native["limits"]["rpm"], 7,
        "absent globalLimits stay as they are"
    );
    let (status, cleared) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "after", "budget": null, "expiresAt": null, "isAdmin": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["budget"], Value::Null);
    assert_eq!(cleared["expiresAt"], Value::Null);

    // The id in the body must be the path's; the kind is read-only.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"id": app.admin_key_id.to_string(), "name": "x"}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "x", "isAdmin": true}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(
        body["message"].as_str().unwrap().contains("isAdmin"),
        "{body}"
    );
    // Unknown ids: 404 in aiXplain's words.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &format!("/sdk/api-keys/{}", uuid::Uuid::new_v4()),
        &json!({"name": "x"}),
    )
    .await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

async fn delete_revokes_and_then_404s(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("doomed")).await;
    let secret = key["accessKey"].as_str().unwrap().to_string();
    let path = format!("/sdk/api-keys/{}", key["id"].as_str().unwrap());
    // The SDK's DELETE: no body (`Content-Length: 0`), JSON content type.
    let response = aix(&app, &app.admin_key, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let (status, body) = aix_get(&app, &app.admin_key, &path).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"statusCode": 404, "message": "API key not found", "error": "err.not_found"})
        )
    );
    let response = aix(&app, &app.admin_key, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get_as(&secret, "/v1/key").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, list) = aix_get(&app, &app.admin_key, "/sdk/api-keys").await;
    assert!(!list
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == key["id"]));
}

async fn errors_use_the_aixplain_shape_and_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, inference) = app.create_inference_key("inference").await;

    // No key, a bad key: 401.
    let response = app
        .client
        .get(app.url("/sdk/api-keys"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_api_key");
    for path in [
        "/sdk/api-keys",
        "/sdk/api-keys/usage-limits",
        "/v2/models/a%2Fb",
    ] {
        let (status, body) = aix_get(&app, "kg_not_a_key", path).await;
        assert_aix_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_api_key");
    }
    // An inference key managing keys: 403.
    let (status, body) = aix_get(&app, &inference, "/sdk/api-keys").await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, body) = aix_send(
        &app,
        &inference,
        Method::POST,
        "/sdk/api-keys",
        &json!({"name": "x"}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );

    // Unknown and malformed ids: aiXplain's 404, exactly.
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_string(),
        "%FF%FE".to_string(),
        "x".repeat(300),
    ] {
        for suffix in ["", "/usage-limits"] {
            let (status, body) =
                aix_get(&app, &app.admin_key, &format!("/sdk/api-keys/{id}{suffix}")).await;
            assert_eq!(
                (status, body),
                (
                    StatusCode::NOT_FOUND,
                    json!({"statusCode": 404, "message": "API key not found", "error": "err.not_found"})
                ),
                "id {id}{suffix}"
            );
        }
    }
    // Unknown routes and methods under /sdk and /v2 answer in the same shape.
    let (status, body) = aix_get(&app, &app.admin_key, "/sdk/nothing-here").await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PATCH,
        "/sdk/api-keys",
        &json!({}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn bad_bodies_get_4xx_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let existing = create(&app, &captured_create("existing")).await;
    let put_path = format!("/sdk/api-keys/{}", existing["id"].as_str().unwrap());
    let future = "2099-01-01T00:00:00.000000Z";
    // (body, status, text the message must contain)
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("".into(), StatusCode::BAD_REQUEST, "empty"),
        ("{".into(), StatusCode::BAD_REQUEST, "JSON"),
        ("[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "array"),
        ("{}".into(), StatusCode::UNPROCESSABLE_ENTITY, "name"),
        (
            json!({"name": ""}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "x".repeat(201)}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": 5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "a", "colour": 1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            json!({"name": "a", "budget": -1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "budget": "lots"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "budget": 1e300}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": -1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": 1.5}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": 1e30}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"tpd": u64::MAX}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.tpd",
        ),
        (
            json!({"name": "a", "globalLimits": {"tokenType": "tokens"}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.tokenType",
        ),
        (
            json!({"name": "a", "globalLimits": {"rmp": 1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rmp",
        ),
        (
            json!({"name": "a", "globalLimits": [1]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits",
        ),
        (
            json!({"name": "a", "assetsLimits": {"rpm": 1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"rpm": 1}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[0].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"rpm": 1, "assetId": "  "}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[0].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"assetId": "m"}, {"assetId": "m"}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[1].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"assetId": "m", "tokenType": 3}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tokenType",
        ),
        (
            json!({"name": "a", "expiresAt": "soon"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": "2001-01-01T00:00:00.000000Z"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": 5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": "+999999-01-01T00:00:00Z"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "isAdmin": true, "expiresAt": future}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "isAdmin",
        ),
        (
            json!({"name": "a", "id": "01234567-89ab-cdef-0123-456789abcdef"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
    ];
    for (body, expected, needle) in &cases {
        let response = aix(&app, &app.admin_key, Method::POST, "/sdk/api-keys")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = json_of(response).await;
        assert!(status.is_client_error(), "POST {body}: {status} {answer}");
        let code = if *expected == StatusCode::BAD_REQUEST {
            "invalid_json"
        } else {
            "invalid_field"
        };
        assert_aix_error(status, &answer, *expected, code);
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "POST {body}: the message does not name `{needle}`: {answer}"
        );
    }
    // The same validation on update (a past expiry is allowed there: it expires the key now).
    for (body, expected, needle) in cases.iter().filter(|(body, _, _)| {
        !body.contains("2001-01-01") && body != "{}" && !body.contains("\"id\"")
    }) {
        let response = aix(&app, &app.admin_key, Method::PUT, &put_path)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = json_of(response).await;
        assert_eq!(status, *expected, "PUT {body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "PUT {body}: {answer}"
        );
    }
    // A body that is not JSON at all.
    let response = app
        .client
        .post(app.url("/sdk/api-keys"))
        .header("x-api-key", &app.admin_key)
        .header("content-type", "text/plain")
        .body("name=a")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Nothing of the refused creations was stored.
    let (_, list) = aix_get(&app, &app.admin_key, "/sdk/api-keys").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

async fn key_cap_is_409(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    create_as(&app, &admin, "first").await;
    let (status, body) = aix_send(
        &app,
        &admin,
        Method::POST,
        "/sdk/api-keys",
        &json!({"name": "second", "budget": null, "assetsLimits": []}),
    )
    .await;
    assert_aix_error(status, &body, StatusCode::CONFLICT, "key_cap_reached");
    assert!(body["message"].as_str().unwrap().contains('2'), "{body}");
}

async fn create_as(app: &TestApp, admin: &str, name: &str) -> Value {
    let (status, key) = aix_send(
        app,
        admin,
        Method::POST,
        "/sdk/api-keys",
        &json!({"name": name, "budget": null, "assetsLimits": []}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key
}

async fn workspaces_are_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, other_admin_id, other_admin) = app.create_workspace_with_admin("other", None).await;
    let mine = create(&app, &captured_create("mine")).await;
    let theirs = create_as(&app, &other_admin, "theirs").await;

    let (_, list) = aix_get(&app, &other_admin, "/sdk/api-keys").await;
    let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|k| &k["id"]).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&&theirs["id"]) && ids.contains(&&json!(other_admin_id.to_string())));
    let mine_path = format!("/sdk/api-keys/{}", mine["id"].as_str().unwrap());
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::PUT, ""),
        (Method::DELETE, ""),
        (Method::GET, "/usage-limits"),
    ] {
        let (status, body) = aix_send(
            &app,
            &other_admin,
            method.clone(),
            &format!("{mine_path}{suffix}"),
            &json!({"name": "stolen"}),
        )
        .await;
        assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, still) = aix_get(&app, &app.admin_key, &mine_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["name"], "mine");
}

async fn v2_models_answers_the_path_as_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, inference) = app.create_inference_key("inference").await;
    for key in [&app.admin_key, &inference] {
        for (path, id) in [
            (
                "/v2/models/openai%2Fgpt-4o-mini%2Fopenai",
                "openai/gpt-4o-mini/openai",
            ),
            ("/v2/models/openai/gpt-4o-mini", "openai/gpt-4o-mini"),
            ("/v2/models/plain-id", "plain-id"),
        ] {
            let (status, body) = aix_get(&app, key, path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!(body, json!({ "id": id }));
        }
    }
}

async fn openapi_lists_the_aixplain_routes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, doc) = json_of(
        app.req_anon(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (path, methods) in [
        ("/sdk/api-keys", &["get", "post"][..]),
        ("/sdk/api-keys/{id}", &["get", "put", "delete"][..]),
        ("/sdk/api-keys/{id}/usage-limits", &["get"][..]),
        ("/sdk/api-keys/usage-limits", &["get"][..]),
        ("/v2/models/{path}", &["get"][..]),
    ] {
        for method in methods {
            let operation = &doc["paths"][path][method];
            assert!(
                operation.is_object(),
                "{method} {path} missing from /openapi.json"
            );
            assert_eq!(operation["tags"], json!(["aixplain"]), "{method} {path}");
        }
    }
    assert!(doc["components"]["schemas"]["AixplainKey"].is_object());
    assert!(doc["components"]["securitySchemes"]["x_api_key"].is_object());
}

async fn usage_limits_count_real_calls_and_limits_are_enforced() {
    let mock = MockUpstream::start().await;
    let base_url = mock.base_url.clone();
    let app = spawn_app_with(Backend::Sqlite, move |config| {
        config.upstreams = vec![UpstreamConfig {
            name: "mock".into(),
            base_url,
            api_key_env: None,
            models: vec!["*".into()],
            passthrough: vec![],
        }];
    })
    .await;
    let key = create(
        &app,
        &json!({
            "name": "usage",
            "budget": null,
            "globalLimits": {"tpm": 0, "tpd": 100000, "rpm": 2, "rpd": 50, "tokenType": "input"},
            "assetsLimits": [{"tpm": 0, "tpd": 0, "rpm": 0, "rpd": 9, "tokenType": "output", "assetId": "vendor/model-a"}],
        }),
    )
    .await;
    let secret = key["accessKey"].as_str().unwrap().to_string();
    let path = format!("/sdk/api-keys/{}/usage-limits", key["id"].as_str().unwrap());
    let chat = |model: &str| {
        app.req_as(&secret, Method::POST, "/v1/chat/completions")
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello there gateway"}]}))
            .send()
    };
    let mut usages = Vec::new();
    for model in ["vendor/model-a", "other-model"] {
        let (status, answer) = json_of(chat(model).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        usages.push((model, answer["usage"].clone()));
    }
    // rpm = 2 set on this surface is enforced by the proxy.
    let (status, refused) = json_of(chat("other-model").await.unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded");

    let tokens = |field: &str, only: Option<&str>| -> u64 {
        usages
            .iter()
            .filter(|(model, _)| only.is_none_or(|o| o == *model))
            .map(|(_, usage)| usage[field].as_u64().unwrap())
            .sum()
    };
    let expected = json!([
        {"requestCount": 2, "requestCountLimit": 50, "tokenCount": tokens("prompt_tokens", None), "tokenCountLimit": 100000},
        {"requestCount": 1, "requestCountLimit": 9, "tokenCount": tokens("completion_tokens", Some("vendor/model-a")), "tokenCountLimit": 0, "assetId": "vendor/model-a"},
    ]);
    let (status, body) = aix_get(&app, &app.admin_key, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, expected);
    // The calling key's own view has the same numbers.
    let (status, own) = aix_get(&app, &secret, "/sdk/api-keys/usage-limits").await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own, expected);
}
