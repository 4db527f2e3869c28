//! Helpers for the inference side: keys made for a test, `/v1/*` calls, `/v1/key`, and
//! the usage a key has recorded.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::TestApp;
use crate::support::http::{json_body, limit_view, usd};

/// A key as created: its id and full secret.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    pub secret: String,
}

impl TestApp {
    /// Creates a key through the admin API; `body` is merged into `{"name": …}` (the
    /// admin-side `create_key` sends its body as is and returns the whole answer).
    pub async fn key_with(&self, body: Value) -> TestKey {
        let mut full = json!({ "name": "proxy test key" });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), body.as_object()) {
            for (k, v) in extra {
                full.insert(k.clone(), v.clone());
            }
        }
        let response = self
            .client
            .post(self.url("/admin/v1/keys"))
            .bearer_auth(&self.admin_key)
            .json(&full)
            .send()
            .await
            .expect("POST /admin/v1/keys");
        let (status, key) = json_body(response).await;
        assert_eq!(status, StatusCode::CREATED, "create {full}: {key}");
        TestKey {
            id: key["id"].as_str().unwrap().to_string(),
            secret: key["secret"].as_str().unwrap().to_string(),
        }
    }

    /// An inference key without limits.
    pub async fn plain_key(&self) -> TestKey {
        self.key_with(json!({})).await
    }

    /// `POST path` with `key` and a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST /v1/chat/completions`.
    pub async fn chat(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/v1/chat/completions", body).await
    }

    /// A non-streamed chat call that must succeed; returns the answer.
    pub async fn chat_ok(&self, key: &str, body: &Value) -> Value {
        let (status, answer) = json_body(self.chat(key, body).await).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    /// `GET /v1/key` with the key itself.
    pub async fn key_info(&self, key: &str) -> Value {
        let (status, info) = json_body(self.get_as(key, "/v1/key").await).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info
    }

    /// `remaining` of one limit in `/v1/key` (`rpm`, `tpm`, …; `model` for model limits).
    pub async fn remaining(&self, key: &str, limit: &str, model: Option<&str>) -> i64 {
        let info = self.key_info(key).await;
        limit_view(&info, limit, model)["remaining"]
            .as_i64()
            .unwrap_or_else(|| panic!("no {limit} remaining in {info}"))
    }

    // -----------------------------------------------------------------------------------
    // accounting

    /// Usage rows of a key for the last hour, per minute (the usage API flushes first).
    pub async fn usage_rows(&self, key_id: &str) -> Vec<Value> {
        let from = (chrono::Utc::now() - chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (status, body) = self
            .admin_get(&format!(
                "/admin/v1/keys/{key_id}/usage?granularity=minute&from={from}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"].as_array().unwrap().clone()
    }

    /// The key's usage summed over all rows.
    pub async fn usage(&self, key_id: &str) -> UsageSum {
        let mut sum = UsageSum::default();
        for row in self.usage_rows(key_id).await {
            sum.requests += row["requests"].as_i64().unwrap();
            sum.input_tokens += row["input_tokens"].as_i64().unwrap();
            sum.output_tokens += row["output_tokens"].as_i64().unwrap();
            sum.cost_usd += usd(&row["cost_usd"]);
        }
        sum
    }

    /// Polls the usage API until `requests` requests are recorded (or 10 s pass), then
    /// waits a little longer and reads again, so that a second settlement would show.
    pub async fn settled_usage(&self, key_id: &str, requests: i64) -> UsageSum {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sum = self.usage(key_id).await;
            if sum.requests >= requests || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        self.usage(key_id).await
    }
}

/// Sum of usage rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSum {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: Decimal,
}
