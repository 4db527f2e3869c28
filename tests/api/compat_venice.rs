//! The Venice-compatible `api_keys` resource at the HTTP level: the exact shapes
//! (envelopes, field names, JSON types) that `venice-py` 2.9.0 parses
//! (shared/wire/venice.md §4), route precedence, the error shape and statuses the SDK maps
//! to its exception classes (§5), and the Web3 flow with real secp256k1 signatures.
//! tests/venice_sdk.rs drives the same routes with the real SDK.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use k256::ecdsa::SigningKey;
use keygate::{
    store::{RateLimitEvent, UsageDelta},
    web3::{personal_sign_digest, Address, TokenSigner},
};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{id_of, json_of, spawn_app, spawn_app_with, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_answers_the_created_key_shape,
        list_retrieve_update_delete_answer_their_envelopes,
        venice_keys_are_ordinary_keygate_keys,
        expires_at_accepts_its_three_forms,
        update_changes_each_field_and_clears_with_empty_values,
        list_pages_end_with_a_short_page,
        static_routes_win_over_the_id_route,
        auth_failures_use_the_venice_shape_and_sdk_statuses,
        bad_inputs_are_400_in_venice_shape_never_500,
        key_cap_is_a_409_conflict,
        rate_limits_are_the_calling_keys_real_limits_and_balances,
        rate_limit_log_is_the_last_50_of_the_workspace_or_of_the_key,
        web3_flow_creates_an_inference_key_for_the_signer,
        web3_refuses_bad_proofs_and_admin_keys,
        web3_is_off_by_default_and_honours_the_address_allowlist,
        web3_failed_proofs_count_as_failed_authentications,
    ],
}

const KEYS: &str = "/api/v1/api_keys";
const WEB3: &str = "/api/v1/api_keys/generate_web3_key";
const WEB3_SECRET: &str = "a test secret that is long enough for web3";

async fn venice(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = app.req_as(key, method, path);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (status, json) = json_of(response).await;
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content-type {content_type:?}"
    );
    (status, json)
}

async fn create(app: &TestApp, body: &Value) -> Value {
    let (status, json) = venice(app, &app.admin_key, Method::POST, KEYS, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "create {body}: {json}");
    assert_eq!(json["success"], true, "{json}");
    json["data"].clone()
}

async fn retrieve(app: &TestApp, id: &str) -> (StatusCode, Value) {
    venice(
        app,
        &app.admin_key,
        Method::GET,
        &format!("{KEYS}/{id}"),
        None,
    )
    .await
}

fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// An error in Venice's shape: `error` a non-empty string, `code` an upper-case string.
fn assert_venice_error(status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "`error` must be a string: {body}"
    );
    let code = body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"));
    assert_eq!(code, code.to_ascii_uppercase(), "{body}");
}

/// A 400 whose Zod-like `issues` name `path`.
fn assert_issue(status: StatusCode, body: &Value, path: Value) {
    assert_venice_error(status, body, StatusCode::BAD_REQUEST);
    let issues = body["issues"]
        .as_array()
        .unwrap_or_else(|| panic!("no issues: {body}"));
    assert!(
        issues
            .iter()
            .any(|i| i["path"] == path && i["message"].as_str().is_some_and(|m| !m.is_empty())),
        "no issue at {path}: {body}"
    );
}

/// ISO-8601 UTC with milliseconds, as Venice (JavaScript) writes it.
fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    assert!(
        text.len() == 24
            && text.ends_with('Z')
            && chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "not YYYY-MM-DDTHH:MM:SS.mmmZ: {text}"
    );
}

fn assert_api_key_shape(key: &Value) {
    assert_eq!(
        keys_of(key),
        set(&[
            "id",
            "apiKeyType",
            "description",
            "last6Chars",
            "createdAt",
            "expiresAt",
            "lastUsedAt",
            "consumptionLimits",
            "modelPrivacy",
            "limitPeriod",
            "ipAllowlist",
            "usage",
            "currentPeriodUsage",
        ]),
        "{key}"
    );
    assert!(
        key["id"].is_string() && key["apiKeyType"].is_string() && key["description"].is_string()
    );
    assert_eq!(key["last6Chars"].as_str().map(str::len), Some(6), "{key}");
    assert_timestamp(&key["createdAt"]);
    assert_eq!(
        keys_of(&key["consumptionLimits"]),
        set(&["usd", "diem", "vcu"]),
        "{key}"
    );
    assert!(key["ipAllowlist"].is_array(), "{key}");
    let week = &key["usage"]["trailingSevenDays"];
    assert_eq!(keys_of(week), set(&["usd", "diem", "vcu"]), "{key}");
    for amounts in [week, &key["currentPeriodUsage"]] {
        for unit in ["usd", "diem", "vcu"] {
            assert!(amounts[unit].is_f64(), "`{unit}` must be a float: {key}");
        }
    }
}

fn signing_key() -> (SigningKey, Address) {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let address = Address::of_key(key.verifying_key());
    (key, address)
}

/// `personal_sign` of `message`: `0x` + r ‖ s ‖ v (v = 27/28).
fn personal_sign(key: &SigningKey, message: &str) -> String {
    let digest = personal_sign_digest(message.as_bytes());
    let (signature, recovery) = key.sign_prehash_recoverable(&digest).unwrap();
    let mut bytes = signature.to_vec();
    bytes.push(27 + recovery.to_byte());
    format!("0x{}", hex::encode(bytes))
}

async fn spawn_web3_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.web3.token_secret = Some(SecretString::from(WEB3_SECRET.to_string()));
    })
    .await
}

async fn web3_token(app: &TestApp) -> String {
    let response = app.req_anon(Method::GET, WEB3).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["token"].as_str().unwrap().to_string()
}

async fn web3_post(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    let response = app
        .req_anon(Method::POST, WEB3)
        .json(body)
        .send()
        .await
        .unwrap();
    json_of(response).await
}

// ---------------------------------------------------------------------------------------

async fn create_answers_the_created_key_shape(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "tenant-1",
            "consumptionLimit": {"usd": 10.5, "diem": 2.0},
            "limitPeriod": "MONTH",
            "modelPrivacy": "PRIVATE_ONLY",
            "expiresAt": "2031-02-03T04:05:06Z",
            "ipAllowlist": ["1.2.3.4", "10.1.2.3/8", "2001:db8::1"]
        }),
    )
    .await;

    // CreatedApiKey: singular `consumptionLimit`, the full secret once.
    for field in [
        "id",
        "apiKey",
        "apiKeyType",
        "description",
        "consumptionLimit",
        "expiresAt",
        "limitPeriod",
        "ipAllowlist",
    ] {
        assert!(created.get(field).is_some(), "`{field}` missing: {created}");
    }
    assert!(created.get("consumptionLimits").is_none(), "{created}");
    Uuid::parse_str(created["id"].as_str().unwrap()).expect("ids are UUIDs");
    let secret = created["apiKey"].as_str().unwrap();
    assert!(secret.starts_with("kg_"), "{created}");
    assert_eq!(created["last6Chars"], &secret[secret.len() - 6..]);
    assert_eq!(created["apiKeyType"], "INFERENCE");
    assert_eq!(created["description"], "tenant-1");
    assert_eq!(
        created["consumptionLimit"],
        json!({"usd": 10.5, "diem": 2.0, "vcu": null})
    );
    assert!(
        created["consumptionLimit"]["usd"].is_f64(),
        "floats as JSON numbers"
    );
    assert_eq!(created["limitPeriod"], "MONTH");
    assert_eq!(created["modelPrivacy"], "PRIVATE_ONLY");
    assert_eq!(created["expiresAt"], "2031-02-03T04:05:06.000Z");
    assert_eq!(
        created["ipAllowlist"],
        json!(["1.2.3.4/32", "10.0.0.0/8", "2001:db8::1/128"])
    );

    // An ADMIN key, and a key without any limit: `consumptionLimit` is still there.
    let admin = create(&app, &json!({"apiKeyType": "ADMIN", "description": "ops"})).await;
    assert_eq!(admin["apiKeyType"], "ADMIN");
    assert_eq!(
        admin["consumptionLimit"],
        json!({"usd": null, "diem": null, "vcu": null})
    );
    assert_eq!(admin["limitPeriod"], Value::Null);
    assert_eq!(admin["expiresAt"], Value::Null);
    assert_eq!(admin["ipAllowlist"], json!([]));
    // The new admin key manages keys on this surface.
    let (status, _) = venice(
        &app,
        admin["apiKey"].as_str().unwrap(),
        Method::GET,
        KEYS,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // No `limitPeriod`: the USD limit is per EPOCH (a UTC day).
    let daily = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "d", "consumptionLimit": {"usd": 1}}),
    )
    .await;
    assert_eq!(daily["limitPeriod"], "EPOCH");
    assert_eq!(daily["consumptionLimit"]["usd"], 1.0);
}

async fn list_retrieve_update_delete_answer_their_envelopes(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "shape", "consumptionLimit": {"usd": 3}, "limitPeriod": "LIFETIME"}),
    )
    .await;
    let id = id_of(&created);

    // list: {"object": "list", "data": [ApiKey…]}
    let (status, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(keys_of(&list), set(&["object", "data"]));
    assert_eq!(list["object"], "list");
    let items = list["data"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "the bootstrap admin key and the new one: {list}"
    );
    items.iter().for_each(assert_api_key_shape);
    let mine = items.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(
        mine["consumptionLimits"],
        json!({"usd": 3.0, "diem": null, "vcu": null})
    );
    assert_eq!(mine["limitPeriod"], "LIFETIME");
    assert_eq!(
        mine["usage"]["trailingSevenDays"],
        json!({"usd": 0.0, "diem": 0.0, "vcu": 0.0})
    );
    assert_eq!(mine["lastUsedAt"], Value::Null);
    assert_eq!(mine["modelPrivacy"], Value::Null);
    let bootstrap = items
        .iter()
        .find(|k| k["id"] == app.admin_key_id.to_string().as_str())
        .unwrap();
    assert_eq!(bootstrap["apiKeyType"], "ADMIN");
    assert_eq!(bootstrap["limitPeriod"], Value::Null);

    // retrieve: {"data": ApiKey}
    let (status, got) = retrieve(&app, &id).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(keys_of(&got), set(&["data"]));
    assert_api_key_shape(&got["data"]);
    assert_eq!(&got["data"], mine);

    // update: {"data": ApiKey, "success": true}
    let (status, updated) = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": id, "description": "renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(keys_of(&updated), set(&["data", "success"]));
    assert_eq!(updated["success"], true);
    assert_api_key_shape(&updated["data"]);
    assert_eq!(updated["data"]["description"], "renamed");

    // delete: exactly {"success": true}; afterwards the key is Venice's 404.
    let (status, deleted) = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id={id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({"success": true}));
    let secret = created["apiKey"].as_str().unwrap();
    let (status, body) = venice(
        &app,
        secret,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    for (method, path, body) in [
        (Method::GET, format!("{KEYS}/{id}"), None),
        (Method::DELETE, format!("{KEYS}?id={id}"), None),
        (
            Method::PATCH,
            KEYS.to_string(),
            Some(json!({"id": id, "description": "x"})),
        ),
    ] {
        let (status, body) =
            venice(&app, &app.admin_key, method.clone(), &path, body.as_ref()).await;
        assert_venice_error(status, &body, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "API key not found", "{method} {path}");
    }
}

async fn venice_keys_are_ordinary_keygate_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "seen natively",
            "consumptionLimit": {"usd": 0.1},
            "limitPeriod": "MONTH",
            "ipAllowlist": ["192.0.2.7"]
        }),
    )
    .await;
    let id = id_of(&created);

    // The native admin API sees the key, its budget (exact decimal) and allowlist.
    let (status, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(status, StatusCode::OK, "{native}");
    assert_eq!(native["name"], "seen natively");
    assert_eq!(native["kind"], "inference");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 0.1, "period": "month"})
    );
    assert_eq!(native["ip_allowlist"], json!(["192.0.2.7/32"]));
    assert_eq!(native["created_by"], format!("key:{}", app.admin_key_id));
    assert_eq!(native["last6"], created["last6Chars"]);

    // A native change shows on the Venice surface.
    let response = app
        .patch_json(
            &format!("/admin/v1/keys/{id}"),
            &json!({"budget": {"limit_usd": 7, "period": "day"}, "ip_allowlist": null}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (_, got) = retrieve(&app, &id).await;
    assert_eq!(got["data"]["consumptionLimits"]["usd"], 7.0);
    assert_eq!(got["data"]["limitPeriod"], "EPOCH");
    assert_eq!(got["data"]["ipAllowlist"], json!([]));

    // The allowlist is enforced for the key itself (127.0.0.1 is not 192.0.2.7).
    let _ = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": id, "ipAllowlist": ["192.0.2.7"]})),
    )
    .await;
    let (status, body) = venice(
        &app,
        created["apiKey"].as_str().unwrap(),
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("This API key is restricted to configured IP addresses"),
        "{body}"
    );

    // Delete through Venice = revoke: the native API answers 404 too.
    let _ = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id={id}"),
        None,
    )
    .await;
    assert_eq!(
        app.get(&format!("/admin/v1/keys/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn expires_at_accepts_its_three_forms(backend: Backend) {
    let app = spawn_app(backend).await;
    let year = Utc::now().year_ahead();
    for (given, expected) in [
        (json!(""), Value::Null),
        (
            json!(format!("{year}-02-03")),
            json!(format!("{year}-02-03T00:00:00.000Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06.789Z")),
            json!(format!("{year}-02-03T04:05:06.789Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06+02:00")),
            json!(format!("{year}-02-03T02:05:06.000Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06")),
            json!(format!("{year}-02-03T04:05:06.000Z")),
        ),
    ] {
        let created = create(
            &app,
            &json!({"apiKeyType": "INFERENCE", "description": "e", "expiresAt": given}),
        )
        .await;
        assert_eq!(created["expiresAt"], expected, "{given}");
        let (_, got) = retrieve(&app, &id_of(&created)).await;
        assert_eq!(got["data"]["expiresAt"], expected, "{given}");
        if !expected.is_null() {
            // "" on update removes the expiry.
            let (status, updated) = venice(
                &app,
                &app.admin_key,
                Method::PATCH,
                KEYS,
                Some(&json!({"id": id_of(&created), "expiresAt": ""})),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{updated}");
            assert_eq!(updated["data"]["expiresAt"], Value::Null);
        }
    }
    // Today 00:00 UTC is past, and so is yesterday: refused at creation.
    let today = Utc::now().format("%Y-%m-%d").to_string();
    for past in [today, "2001-01-01T00:00:00Z".to_string()] {
        let (status, body) = venice(
            &app,
            &app.admin_key,
            Method::POST,
            KEYS,
            Some(&json!({"apiKeyType": "INFERENCE", "description": "e", "expiresAt": past})),
        )
        .await;
        assert_issue(status, &body, json!(["expiresAt"]));
    }
}

trait YearAhead {
    fn year_ahead(&self) -> i32;
}

impl YearAhead for chrono::DateTime<Utc> {
    fn year_ahead(&self) -> i32 {
        use chrono::Datelike;
        self.year() + 2
    }
}

async fn update_changes_each_field_and_clears_with_empty_values(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "before",
            "consumptionLimit": {"usd": 5, "diem": 1, "vcu": 2},
            "limitPeriod": "MONTH",
            "modelPrivacy": "ALL",
            "ipAllowlist": ["10.0.0.0/8"]
        }),
    )
    .await;
    let id = id_of(&created);
    let patch = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut body = body;
            body["id"] = json!(id);
            let (status, updated) =
                venice(app, &app.admin_key, Method::PATCH, KEYS, Some(&body)).await;
            assert_eq!(status, StatusCode::OK, "{body}: {updated}");
            updated["data"].clone()
        }
    };

    let key = patch(json!({"description": "after"})).await;
    assert_eq!(key["description"], "after");
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": 5.0, "diem": 1.0, "vcu": 2.0}),
        "unchanged"
    );

    let key = patch(json!({"limitPeriod": "LIFETIME"})).await;
    assert_eq!(key["limitPeriod"], "LIFETIME");
    assert_eq!(key["consumptionLimits"]["usd"], 5.0);

    // consumptionLimit replaces the limits as a whole and keeps the period.
    let key = patch(json!({"consumptionLimit": {"usd": 2.25}})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": 2.25, "diem": null, "vcu": null})
    );
    assert_eq!(key["limitPeriod"], "LIFETIME");
    let key = patch(json!({"consumptionLimit": {"diem": 1.0}, "limitPeriod": "EPOCH"})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": null, "diem": 1.0, "vcu": null})
    );
    assert_eq!(key["limitPeriod"], Value::Null, "no USD limit, no period");
    let key = patch(json!({"consumptionLimit": {"usd": 4}, "limitPeriod": "EPOCH"})).await;
    assert_eq!(key["limitPeriod"], "EPOCH");
    let key = patch(json!({"consumptionLimit": {}})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": null, "diem": null, "vcu": null})
    );

    let key = patch(json!({"modelPrivacy": "PRIVATE_TEXT"})).await;
    assert_eq!(key["modelPrivacy"], "PRIVATE_TEXT");

    let key = patch(json!({"ipAllowlist": ["1.2.3.4", "::1"]})).await;
    assert_eq!(key["ipAllowlist"], json!(["1.2.3.4/32", "::1/128"]));
    let key = patch(json!({"ipAllowlist": []})).await;
    assert_eq!(key["ipAllowlist"], json!([]));

    let year = Utc::now().year_ahead();
    let key = patch(json!({"expiresAt": format!("{year}-06-07")})).await;
    assert_eq!(key["expiresAt"], format!("{year}-06-07T00:00:00.000Z"));
    let key = patch(json!({"expiresAt": ""})).await;
    assert_eq!(key["expiresAt"], Value::Null);

    // The native view agrees.
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["name"], "after");
    assert_eq!(native["budget"], Value::Null);
    assert_eq!(native["ip_allowlist"], Value::Null);
    assert_eq!(native["expires_at"], Value::Null);
}

async fn list_pages_end_with_a_short_page(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        create(
            &app,
            &json!({"apiKeyType": "INFERENCE", "description": format!("k{i}")}),
        )
        .await;
    }
    // 6 keys with the bootstrap admin key: pages of 4 are 4, 2, 0.
    let mut seen = BTreeSet::new();
    for (page, expected) in [(1, 4), (2, 2), (3, 0)] {
        let (status, list) = venice(
            &app,
            &app.admin_key,
            Method::GET,
            &format!("{KEYS}?page={page}&limit=4"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let items = list["data"].as_array().unwrap();
        assert_eq!(items.len(), expected, "page {page}: {list}");
        for item in items {
            assert!(
                seen.insert(item["id"].as_str().unwrap().to_string()),
                "a key on two pages"
            );
        }
    }
    let (_, all) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        6,
        "no parameters: every key (up to 500)"
    );
}

async fn static_routes_win_over_the_id_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, limits) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert!(limits["data"]["accessPermitted"].is_boolean(), "{limits}");
    let (status, log) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits/log",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["object"], "list");
    // Web3 is off here: its own 403, not a key lookup, and without any key.
    let response = app.req_anon(Method::GET, WEB3).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_DISABLED");
    // Anything else under api_keys/ is an id: unknown ones and non-UUIDs are 404s.
    for id in [
        Uuid::new_v4().to_string(),
        "rate_limit".to_string(),
        "generate_web3_keys".to_string(),
        "%20".to_string(),
    ] {
        let (status, body) = retrieve(&app, &id).await;
        assert_venice_error(status, &body, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "API key not found", "{id}");
    }
    // Deeper unknown paths are the router's 404, still in Venice's shape.
    let (status, body) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits/nope",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = venice(&app, &app.admin_key, Method::PUT, KEYS, None).await;
    assert_venice_error(status, &body, StatusCode::METHOD_NOT_ALLOWED);
}

async fn auth_failures_use_the_venice_shape_and_sdk_statuses(backend: Backend) {
    let app = spawn_app(backend).await;
    let inference = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "i"}),
    )
    .await;
    let inference = inference["apiKey"].as_str().unwrap();

    // No key / a bad key: 401 (AuthenticationError).
    let response = app.req_anon(Method::GET, KEYS).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    let (status, body) = venice(&app, "kg_not_a_key", Method::GET, KEYS, None).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_API_KEY");

    // An inference key on management: 403 (PermissionDeniedError), not IP-restricted.
    for (method, path) in [
        (Method::GET, KEYS.to_string()),
        (Method::POST, KEYS.to_string()),
        (Method::GET, format!("{KEYS}/{}", app.admin_key_id)),
    ] {
        let (status, body) = venice(
            &app,
            inference,
            method,
            &path,
            Some(&json!({"apiKeyType": "INFERENCE", "description": "x"})),
        )
        .await;
        assert_venice_error(status, &body, StatusCode::FORBIDDEN);
        assert!(
            !body["error"]
                .as_str()
                .unwrap()
                .starts_with("This API key is restricted"),
            "{body}"
        );
    }
    // …but it reads its own rate limits and refusals.
    for path in [
        "/api/v1/api_keys/rate_limits",
        "/api/v1/api_keys/rate_limits/log",
    ] {
        let (status, body) = venice(&app, inference, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // A key restricted to other addresses: 403 with the message the SDK turns into
    // ApiKeyIpRestrictedError.
    let restricted = create(
        &app,
        &json!({"apiKeyType": "ADMIN", "description": "r", "ipAllowlist": ["203.0.113.0/24"]}),
    )
    .await;
    let (status, body) = venice(
        &app,
        restricted["apiKey"].as_str().unwrap(),
        Method::GET,
        KEYS,
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .starts_with("this api key is restricted to configured ip addresses"),
        "{body}"
    );
}

async fn bad_inputs_are_400_in_venice_shape_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let ok = json!({"apiKeyType": "INFERENCE", "description": "x"});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let cases: Vec<(Value, Value)> = vec![
        (json!({"description": "x"}), json!(["apiKeyType"])),
        (json!({"apiKeyType": "INFERENCE"}), json!(["description"])),
        (with("apiKeyType", json!("SUPER")), json!(["apiKeyType"])),
        (with("apiKeyType", json!(1)), json!(["apiKeyType"])),
        (with("description", json!("")), json!(["description"])),
        (with("description", json!("   ")), json!(["description"])),
        (
            with("description", json!("x".repeat(201))),
            json!(["description"]),
        ),
        (with("description", json!(null)), json!(["description"])),
        (
            with("consumptionLimit", json!({"usd": -1})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"usd": "ten"})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"usd": 1e12})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"diem": -0.5})),
            json!(["consumptionLimit", "diem"]),
        ),
        (
            with("consumptionLimit", json!({"vcu": 1e300})),
            json!(["consumptionLimit", "vcu"]),
        ),
        (
            with("consumptionLimit", json!({"eur": 1})),
            json!(["consumptionLimit", "eur"]),
        ),
        (
            with("consumptionLimit", json!(5)),
            json!(["consumptionLimit"]),
        ),
        (with("limitPeriod", json!("WEEK")), json!(["limitPeriod"])),
        (with("modelPrivacy", json!("NONE")), json!(["modelPrivacy"])),
        (
            with("expiresAt", json!("next tuesday")),
            json!(["expiresAt"]),
        ),
        (with("expiresAt", json!(1700000000)), json!(["expiresAt"])),
        (
            with("ipAllowlist", json!(["banana"])),
            json!(["ipAllowlist", 0]),
        ),
        (
            with("ipAllowlist", json!(["1.2.3.4", "1.2.3.4/33"])),
            json!(["ipAllowlist", 1]),
        ),
        (
            with("ipAllowlist", json!(vec!["1.2.3.4"; 101])),
            json!(["ipAllowlist"]),
        ),
        (
            with("ipAllowlist", json!(["1".repeat(65)])),
            json!(["ipAllowlist", 0]),
        ),
        (
            with("ipAllowlist", json!("1.2.3.4")),
            json!(["ipAllowlist"]),
        ),
        (
            with("consumptionLimits", json!({"usd": 1})),
            json!(["consumptionLimits"]),
        ),
    ];
    for (body, path) in cases {
        let (status, answer) = venice(&app, &app.admin_key, Method::POST, KEYS, Some(&body)).await;
        assert_issue(status, &answer, path.clone());
        assert_eq!(answer["error"], "Invalid request", "{body}: {answer}");
    }

    // Bodies that are not a JSON object: 400 (415 for another content type).
    for raw in [
        "",
        "{",
        "[]",
        "null",
        "\"x\"",
        "{\"apiKeyType\": \"INFERENCE\"} trailing",
    ] {
        let response = app.send_raw(Method::POST, KEYS, raw).await;
        let (status, body) = json_of(response).await;
        assert_venice_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let response = app
        .req(Method::POST, KEYS)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Updates.
    let key = create(&app, &ok).await;
    let id = id_of(&key);
    for (body, path) in [
        (json!({"description": "no id"}), json!(["id"])),
        (json!({"id": id, "expiresAt": "soon"}), json!(["expiresAt"])),
        (json!({"id": id, "description": ""}), json!(["description"])),
        (
            json!({"id": id, "ipAllowlist": ["300.1.1.1"]}),
            json!(["ipAllowlist", 0]),
        ),
        (
            json!({"id": id, "consumptionLimit": {"usd": -2}}),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            json!({"id": id, "apiKeyType": "ADMIN"}),
            json!(["apiKeyType"]),
        ),
        (json!({"id": 5}), json!(["id"])),
    ] {
        let (status, answer) = venice(&app, &app.admin_key, Method::PATCH, KEYS, Some(&body)).await;
        assert_issue(status, &answer, path);
    }
    let (status, answer) = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": "nope"})),
    )
    .await;
    assert_venice_error(status, &answer, StatusCode::NOT_FOUND);

    // Queries.
    for query in [
        "page=0",
        "page=abc",
        "limit=0",
        "limit=501",
        "limit=-1",
        "colour=red",
    ] {
        let (status, answer) = venice(
            &app,
            &app.admin_key,
            Method::GET,
            &format!("{KEYS}?{query}"),
            None,
        )
        .await;
        assert_venice_error(status, &answer, StatusCode::BAD_REQUEST);
        assert!(answer["issues"].is_array(), "{query}: {answer}");
    }
    for query in ["", "?id=", "?key=1"] {
        let (status, answer) = venice(
            &app,
            &app.admin_key,
            Method::DELETE,
            &format!("{KEYS}{query}"),
            None,
        )
        .await;
        assert_venice_error(status, &answer, StatusCode::BAD_REQUEST);
    }
    let (status, answer) = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id=not-a-uuid"),
        None,
    )
    .await;
    assert_venice_error(status, &answer, StatusCode::NOT_FOUND);

    // Nothing was created by any of that: the bootstrap key and `key` only.
    let (_, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

async fn key_cap_is_a_409_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    // Cap 2: the workspace's admin key and one more.
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    let body = json!({"apiKeyType": "INFERENCE", "description": "one"});
    let (status, answer) = venice(&app, &admin, Method::POST, KEYS, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = venice(&app, &admin, Method::POST, KEYS, Some(&body)).await;
    assert_venice_error(status, &answer, StatusCode::CONFLICT);
    assert!(
        answer["error"].as_str().unwrap().contains('2'),
        "names the cap: {answer}"
    );
    assert_eq!(answer["code"], "KEY_CAP_REACHED");
}

async fn rate_limits_are_the_calling_keys_real_limits_and_balances(backend: Backend) {
    let app = spawn_app(backend).await;
    // Limits are set natively (the Venice request has no rate-limit fields).
    let native = app
        .create_key(&json!({
            "name": "limited",
            "limits": {"rpm": 60, "tpm": 1000},
            "model_limits": [{"model": "m-1", "rpd": 5}],
            "budget": {"limit_usd": 2.5, "period": "day"},
            "expires_at": "2040-01-01T00:00:00Z"
        }))
        .await;
    let secret = native["secret"].as_str().unwrap();
    let key_id: Uuid = id_of(&native).parse().unwrap();
    // Spend 0.75 USD today (stored usage, as the proxy would have recorded it).
    let minute = keygate::clock::now().duration_trunc_minute();
    app.store()
        .add_usage(&[UsageDelta {
            key_id,
            workspace_id: app.workspace_id,
            model: "m-1".into(),
            minute,
            requests: 3,
            input_tokens: 10,
            output_tokens: 20,
            cost_pico: 750_000_000_000,
        }])
        .await
        .unwrap();

    let (status, body) = venice(
        &app,
        secret,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(keys_of(&body), set(&["data"]));
    let data = &body["data"];
    assert_eq!(
        keys_of(data),
        set(&[
            "accessPermitted",
            "apiTier",
            "balances",
            "keyExpiration",
            "nextEpochBegins",
            "rateLimits"
        ])
    );
    assert_eq!(data["accessPermitted"], true);
    assert!(data["apiTier"]["id"].is_string());
    assert_eq!(data["apiTier"]["isCharged"], true);
    assert_eq!(data["balances"], json!({"USD": 1.75, "DIEM": 0.0}));
    assert_eq!(data["keyExpiration"], "2040-01-01T00:00:00.000Z");
    assert_timestamp(&data["nextEpochBegins"]);
    let next =
        chrono::DateTime::parse_from_rfc3339(data["nextEpochBegins"].as_str().unwrap()).unwrap();
    assert!(next > Utc::now() && next <= Utc::now() + Duration::days(1));
    assert_eq!(next.format("%H:%M:%S").to_string(), "00:00:00");
    let scopes = data["rateLimits"].as_array().unwrap();
    assert_eq!(scopes.len(), 2, "{data}");
    assert_eq!(scopes[0]["apiModelId"], Value::Null);
    let global: Vec<(String, f64)> = scopes[0]["rateLimits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap().to_string(),
                l["amount"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        global,
        vec![("RPM".to_string(), 60.0), ("TPM".to_string(), 1000.0)]
    );
    assert!(
        scopes[0]["rateLimits"][0]["amount"].is_f64(),
        "floats as JSON numbers"
    );
    assert_eq!(scopes[1]["apiModelId"], "m-1");
    assert_eq!(scopes[1]["rateLimits"][0]["type"], "RPD");
    assert_eq!(scopes[1]["rateLimits"][0]["amount"], 5.0);

    // The same usage shows in the key's Venice view.
    let (_, got) = retrieve(&app, &key_id.to_string()).await;
    assert_eq!(got["data"]["usage"]["trailingSevenDays"]["usd"], 0.75);
    assert_eq!(got["data"]["currentPeriodUsage"]["usd"], 0.75);

    // An admin key cannot spend: accessPermitted false, USD 0, no limits.
    let (_, admin) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(admin["data"]["accessPermitted"], false);
    assert_eq!(admin["data"]["balances"], json!({"USD": 0.0, "DIEM": 0.0}));
    assert_eq!(admin["data"]["rateLimits"], json!([]));
    assert_eq!(admin["data"]["keyExpiration"], Value::Null);

    // An exhausted budget: no access, nothing left.
    let spent = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "zero", "consumptionLimit": {"usd": 0}}),
    )
    .await;
    let (_, zero) = venice(
        &app,
        spent["apiKey"].as_str().unwrap(),
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(zero["data"]["accessPermitted"], false, "{zero}");
    assert_eq!(zero["data"]["balances"]["USD"], 0.0);
    // No budget, no credits: a number meaning "no limit".
    let free = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "free"}),
    )
    .await;
    let (_, free) = venice(
        &app,
        free["apiKey"].as_str().unwrap(),
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(free["data"]["accessPermitted"], true);
    assert_eq!(free["data"]["apiTier"]["isCharged"], false);
    assert!(free["data"]["balances"]["USD"].as_f64().unwrap() >= 1e9);
}

trait TruncMinute {
    fn duration_trunc_minute(self) -> chrono::DateTime<Utc>;
}

impl TruncMinute for chrono::DateTime<Utc> {
    fn duration_trunc_minute(self) -> chrono::DateTime<Utc> {
        use chrono::DurationRound;
        self.duration_trunc(chrono::TimeDelta::minutes(1)).unwrap()
    }
}

async fn rate_limit_log_is_the_last_50_of_the_workspace_or_of_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "a"}),
    )
    .await;
    let b = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "b"}),
    )
    .await;
    let a_id: Uuid = id_of(&a).parse().unwrap();
    let b_id: Uuid = id_of(&b).parse().unwrap();
    let start = keygate::clock::now() - Duration::minutes(10);
    let mut events = Vec::new();
    // 54 refusals of `a` (oldest first), then 2 of `b`.
    for i in 0..54 {
        events.push(RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: app.workspace_id,
            key_id: a_id,
            model: if i % 2 == 0 { Some("m-1".into()) } else { None },
            limit: "rpm".into(),
            limit_value: "1".into(),
            at: start + Duration::seconds(i),
        });
    }
    for (i, limit) in ["tpm", "budget"].iter().enumerate() {
        events.push(RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: app.workspace_id,
            key_id: b_id,
            model: Some("m-2".into()),
            limit: limit.to_string(),
            limit_value: "9".into(),
            at: start + Duration::seconds(100 + i as i64),
        });
    }
    app.store().add_rate_limit_events(&events).await.unwrap();
    // Another workspace's refusals are never shown.
    let (other_ws, other_key, _) = app.create_workspace_with_admin("other", None).await;
    app.store()
        .add_rate_limit_events(&[RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: other_ws,
            key_id: other_key,
            model: None,
            limit: "rpm".into(),
            limit_value: "1".into(),
            at: keygate::clock::now(),
        }])
        .await
        .unwrap();

    // An admin key: the workspace's last 50, newest first.
    let (status, log) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits/log",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(keys_of(&log), set(&["object", "data"]));
    assert_eq!(log["object"], "list");
    let entries = log["data"].as_array().unwrap();
    assert_eq!(entries.len(), 50);
    let newest = &entries[0];
    assert_eq!(
        keys_of(newest),
        set(&[
            "apiKeyId",
            "modelId",
            "rateLimitTier",
            "rateLimitType",
            "timestamp",
            "limitValue"
        ])
    );
    for field in [
        "apiKeyId",
        "modelId",
        "rateLimitTier",
        "rateLimitType",
        "timestamp",
    ] {
        assert!(
            entries.iter().all(|e| e[field].is_string()),
            "`{field}` must be a string"
        );
    }
    assert_eq!(newest["apiKeyId"], b_id.to_string());
    assert_eq!(newest["rateLimitType"], "BUDGET");
    assert_eq!(newest["modelId"], "m-2");
    assert_eq!(entries[1]["rateLimitType"], "TPM");
    assert_eq!(entries[2]["apiKeyId"], a_id.to_string());
    assert_eq!(entries[2]["rateLimitType"], "RPM");
    assert_timestamp(&newest["timestamp"]);
    assert!(
        entries.iter().any(|e| e["modelId"] == ""),
        "no model: empty string"
    );
    assert!(entries
        .iter()
        .all(|e| e["apiKeyId"] != other_key.to_string().as_str()));

    // An inference key: its own refusals only.
    let (_, own) = venice(
        &app,
        b["apiKey"].as_str().unwrap(),
        Method::GET,
        "/api/v1/api_keys/rate_limits/log",
        None,
    )
    .await;
    let own = own["data"].as_array().unwrap();
    assert_eq!(own.len(), 2);
    assert!(own
        .iter()
        .all(|e| e["apiKeyId"] == b_id.to_string().as_str()));
}

async fn web3_flow_creates_an_inference_key_for_the_signer(backend: Backend) {
    let app = spawn_web3_app(backend).await;
    let (wallet, address) = signing_key();

    // The token needs no API key; the SDK sends its Bearer key anyway, which is ignored.
    let response = app
        .req_as("kg_whatever", Method::GET, WEB3)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let token = body["data"]["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kgw3."), "{token}");

    let year = Utc::now().year_ahead();
    let (status, body) = web3_post(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "address": address.to_string().to_lowercase(),
            "signature": personal_sign(&wallet, &token),
            "token": token,
            "description": "Web3 API Key",
            "consumptionLimit": {"usd": 1.5},
            "limitPeriod": "MONTH",
            "expiresAt": format!("{year}-01-01"),
            "modelPrivacy": "PRIVATE_ONLY"
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(keys_of(&body), set(&["success", "data"]));
    assert_eq!(body["success"], true);
    let created = &body["data"];
    assert_eq!(created["apiKeyType"], "INFERENCE");
    assert_eq!(created["description"], "Web3 API Key");
    assert_eq!(
        created["consumptionLimit"],
        json!({"usd": 1.5, "diem": null, "vcu": null})
    );
    assert_eq!(created["limitPeriod"], "MONTH");
    assert_eq!(created["expiresAt"], format!("{year}-01-01T00:00:00.000Z"));
    let secret = created["apiKey"].as_str().unwrap();

    // An ordinary inference key of the default workspace, made by the wallet.
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{}", id_of(created))).await).await;
    assert_eq!(native["kind"], "inference");
    assert_eq!(native["workspace_id"], app.workspace_id.to_string());
    assert_eq!(native["wallet_address"], address.to_string(), "EIP-55 form");
    assert_eq!(native["created_by"], format!("web3:{address}"));
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 1.5, "period": "month"})
    );
    let (status, limits) = venice(
        &app,
        secret,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["data"]["balances"]["USD"], 1.5);
    let audit = app.audit_events(app.workspace_id).await;
    assert!(audit
        .iter()
        .any(|e| e.action == "key.create" && e.actor == format!("web3:{address}")));

    // Another instance sharing `web3.token_secret` accepts this gateway's tokens.
    let signer = TokenSigner::from_secret(WEB3_SECRET.as_bytes());
    let (forged_here, _) = signer.issue(Utc::now(), std::time::Duration::from_secs(60));
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&wallet, &forged_here), "token": forged_here}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["description"], "Web3 API Key",
        "the default description"
    );
}

async fn web3_refuses_bad_proofs_and_admin_keys(backend: Backend) {
    let app = spawn_web3_app(backend).await;
    let (wallet, address) = signing_key();
    let (other_wallet, _) = signing_key();
    let request = |token: &str, signature: String| json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": signature, "token": token});

    // Signed by another wallet: 401.
    let token = web3_token(&app).await;
    let (status, body) =
        web3_post(&app, &request(&token, personal_sign(&other_wallet, &token))).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_SIGNATURE");
    // A signature of another message: 401.
    let (status, body) = web3_post(
        &app,
        &request(&token, personal_sign(&wallet, "something else")),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    // Malformed signatures: 401 too (the proof failed), never 500.
    for bad in [
        "",
        "0x",
        "0x1234",
        &"ab".repeat(65),
        &format!("0x{}", "00".repeat(65)),
    ] {
        let (status, body) = web3_post(&app, &request(&token, bad.to_string())).await;
        assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    }
    // A token this gateway did not issue, a tampered one, an expired one: 401.
    let signer = TokenSigner::from_secret(WEB3_SECRET.as_bytes());
    let (expired, _) = signer.issue(
        Utc::now() - Duration::hours(1),
        std::time::Duration::from_secs(60),
    );
    let (foreign, _) = TokenSigner::random().issue(Utc::now(), std::time::Duration::from_secs(60));
    // The MAC's last hex digit changed (to another digit, whatever it was).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &token[..token.len() - 1]);
    assert_ne!(tampered, token);
    for bad in [
        expired.as_str(),
        foreign.as_str(),
        tampered.as_str(),
        "",
        "eyJhbGciOi.x.y",
    ] {
        let (status, body) = web3_post(&app, &request(bad, personal_sign(&wallet, bad))).await;
        assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
        assert_eq!(body["code"], "INVALID_WEB3_TOKEN", "{bad}: {body}");
    }
    let (_, body) = web3_post(&app, &request(&expired, personal_sign(&wallet, &expired))).await;
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // ADMIN is refused before anything is checked or used: 403.
    let mut admin = request(&token, personal_sign(&wallet, &token));
    admin["apiKeyType"] = json!("ADMIN");
    let (status, body) = web3_post(&app, &admin).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);

    // A bad body: 400 naming the field (the token stays unused).
    for (field, value) in [
        ("address", json!("0x123")),
        ("expiresAt", json!("never")),
        ("ipAllowlist", json!(["x"])),
    ] {
        let mut body = request(&token, personal_sign(&wallet, &token));
        body[field] = value;
        let (status, answer) = web3_post(&app, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
    }

    // The right signer: accepted once; the same token again: 401.
    let good = request(&token, personal_sign(&wallet, &token));
    let (status, body) = web3_post(&app, &good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = web3_post(&app, &good).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "WEB3_TOKEN_USED");

    // Nothing else was created: the bootstrap key and the one Web3 key.
    let (_, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

async fn web3_is_off_by_default_and_honours_the_address_allowlist(backend: Backend) {
    // Off: both routes 403, without touching anything.
    let app = spawn_app(backend).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": "0x0", "signature": "0x", "token": "t"}),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_DISABLED");
    let response = app
        .req_anon(Method::POST, WEB3)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    drop(app);

    // On, with an allowlist: a proven but unlisted wallet gets 403; a listed one its key.
    let (listed_wallet, listed) = signing_key();
    let (unlisted_wallet, unlisted) = signing_key();
    let app = spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.web3.allowed_addresses = vec![listed.to_string().to_uppercase().replace("0X", "0x")];
    })
    .await;
    let token = web3_token(&app).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": unlisted.to_string(), "signature": personal_sign(&unlisted_wallet, &token), "token": token}),
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_ADDRESS_NOT_ALLOWED");
    // Per-process token key (no `token_secret` configured) works on this instance.
    let token = web3_token(&app).await;
    let (status, body) = web3_post(
        &app,
        &json!({"apiKeyType": "INFERENCE", "address": listed.to_string(), "signature": personal_sign(&listed_wallet, &token), "token": token}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The OpenAPI document lists the Venice routes.
    let (_, doc) = json_of(
        app.req_anon(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    for path in [
        "/api/v1/api_keys",
        "/api/v1/api_keys/{id}",
        "/api/v1/api_keys/rate_limits",
        "/api/v1/api_keys/rate_limits/log",
        "/api/v1/api_keys/generate_web3_key",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    assert_eq!(
        doc["paths"]["/api/v1/api_keys"]["get"]["tags"],
        json!(["venice"])
    );
}

async fn web3_failed_proofs_count_as_failed_authentications(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.keys.failed_auth_per_minute = 3;
    })
    .await;
    let (wallet, address) = signing_key();
    let (stranger, _) = signing_key();
    let token = web3_token(&app).await;
    let forged = json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&stranger, &token), "token": token});
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, body) = web3_post(&app, &forged).await;
        assert!(body["error"].is_string(), "{body}");
        statuses.push(status);
    }
    assert_eq!(
        &statuses[..3],
        &[StatusCode::UNAUTHORIZED; 3],
        "{statuses:?}"
    );
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // While blocked, even a good proof from the address waits (and the token stays unused).
    let response = app
        .req_anon(Method::POST, WEB3)
        .json(&json!({"apiKeyType": "INFERENCE", "address": address.to_string(), "signature": personal_sign(&wallet, &token), "token": token}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "TOO_MANY_AUTH_ATTEMPTS");
}
