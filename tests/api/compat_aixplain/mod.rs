//! The aiXplain-compatible surface (`/sdk/api-keys…`, `/v2/models/…`) at the HTTP level:
//! the exact shapes of shared/wire/aixplain.md (bare arrays, camelCase fields, int limits,
//! lower-case `tokenType`, `assetsLimits` always an array, partial `accessKey`), route
//! precedence, GET with a JSON body, the error shape, and that keys made here are ordinary
//! keygate keys that the proxy enforces. The real SDK drives it in tests/aixplain_sdk.rs.
//! One file per part of the surface; this one holds the requests and shape checks they
//! share.

mod errors;
mod keys;
mod routes;
mod update;
mod usage;
mod workspaces;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, TestApp};

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
