//! The Venice-compatible `api_keys` resource at the HTTP level: the exact shapes
//! (envelopes, field names, JSON types) that `venice-py` 2.9.0 parses
//! (shared/wire/venice.md §4), route precedence, the error shape and statuses the SDK maps
//! to its exception classes (§5), and the Web3 flow with real secp256k1 signatures.
//! tests/venice_sdk.rs drives the same routes with the real SDK. One file per part of the
//! resource; this one holds the requests and shape checks they share.

mod errors;
mod keys;
mod limits;
mod update;
mod web3;

use std::collections::BTreeSet;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{json_of, TestApp};

const KEYS: &str = "/api/v1/api_keys";

const WEB3: &str = "/api/v1/api_keys/generate_web3_key";

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

trait YearAhead {
    fn year_ahead(&self) -> i32;
}

impl YearAhead for chrono::DateTime<Utc> {
    fn year_ahead(&self) -> i32 {
        use chrono::Datelike;
        self.year() + 2
    }
}
