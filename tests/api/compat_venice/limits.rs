//! `GET /api/v1/api_keys/rate_limits` and its log: the calling key's real limits and
//! balances, and the last 50 refusals of the workspace or of the key.

use chrono::{Duration, Utc};
use keygate::store::{RateLimitEvent, UsageDelta};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{assert_timestamp, create, keys_of, retrieve, set, venice};
use crate::helpers::{id_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        rate_limits_are_the_calling_keys_real_limits_and_balances,
        rate_limit_log_is_the_last_50_of_the_workspace_or_of_the_key,
    ],
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
