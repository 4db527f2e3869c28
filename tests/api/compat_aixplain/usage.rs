//! `usage-limits` counts real calls through the proxy (in front of the mock), and the
//! limits set on this surface are enforced (SQLite only: the store is not what it is about).

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{aix_get, create};
use crate::helpers::{json_of, Backend};
use crate::proxy_helpers::spawn_proxy;
use crate::support::backends::backend_tests;

backend_tests! {
    sqlite: [usage_limits_count_real_calls_and_limits_are_enforced],
}

async fn usage_limits_count_real_calls_and_limits_are_enforced(backend: Backend) {
    let app = spawn_proxy(backend).await;
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
