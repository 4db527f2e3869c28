//! Bad JSON bodies for create, update and rotate: each case refused naming the field.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{check_cases, field, raw, Case};
use crate::helpers::{id_of, json_of, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_rejects_bad_bodies_naming_the_field,
        patch_rejects_bad_bodies_naming_the_field,
        rotate_rejects_bad_bodies_naming_the_field,
    ],
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
        // Naming a workspace is allowed (issue 15: the operator creates keys in any
        // workspace; anyone else gets 404 for another, tests/api/workspaces.rs), but it
        // must be an id.
        field(
            "workspace id that is not a uuid",
            json!({ "name": "a", "workspace_id": "default" }),
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
