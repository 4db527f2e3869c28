//! Reading and checking answers (JSON bodies, the admin API's and OpenAI's error shapes,
//! headers, USD amounts, Go durations, `/v1/key` limits) and building request bodies.

use std::{
    future::Future,
    str::FromStr,
    time::{Duration, Instant},
};

use keygate::{
    keys::token::{Token, TOKEN_LEN},
    proxy::tokens::{self, BodyKind},
};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

/// Status and JSON body; panics (showing the body) if the body is not JSON.
pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

pub fn id_of(key: &Value) -> String {
    key["id"].as_str().expect("key has an id").to_string()
}

pub fn secret_of(key: &Value) -> String {
    key["secret"]
        .as_str()
        .expect("key has a secret")
        .to_string()
}

/// Asserts an admin-API error: status, `error.code`, and `error.field` (when given).
/// Returns the `error` object.
pub async fn assert_error(
    response: Response,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> Value {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    if let Some(field) = field {
        assert_eq!(error["field"], field, "{body}");
    }
    error.clone()
}

/// The secret part of a key (between the lookup id and the checksum): what must never be
/// stored or logged, even if someone took the full key apart.
pub fn secret_part(secret: &str) -> &str {
    let start = "kg_".len() + keygate::keys::token::LOOKUP_LEN + 1;
    &secret[start..TOKEN_LEN - keygate::keys::token::CHECKSUM_LEN]
}

/// Every well-formed keygate key (shape and checksum valid) appearing in `text`.
pub fn keys_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("kg_") {
        if let Some(candidate) = text.get(at..at + TOKEN_LEN) {
            if Token::parse(candidate).is_ok() {
                found.push(candidate.to_string());
            }
        }
    }
    found
}

pub fn future_rfc3339(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Same as [`json_of`] (the proxy tests' name for it).
pub async fn json_body(response: Response) -> (StatusCode, Value) {
    json_of(response).await
}

/// A USD amount from a JSON number, exactly as written.
pub fn usd(value: &Value) -> Decimal {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => panic!("not a USD amount: {other}"),
    };
    Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .unwrap_or_else(|_| panic!("not a USD amount: {text}"))
}

/// Exact cost of `input` and `output` tokens at per-million prices.
pub fn cost(input: i64, output: i64, input_per_mtok: &str, output_per_mtok: &str) -> Decimal {
    (Decimal::from(input) * Decimal::from_str(input_per_mtok).unwrap()
        + Decimal::from(output) * Decimal::from_str(output_per_mtok).unwrap())
        / Decimal::from(1_000_000)
}

/// One entry of `/v1/key`'s `limits`.
pub fn limit_view<'a>(info: &'a Value, limit: &str, model: Option<&str>) -> &'a Value {
    info["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == limit && l["model"].as_str() == model)
        .unwrap_or_else(|| panic!("no {limit} ({model:?}) in {info}"))
}

/// keygate's own prompt-token count of a request body (what it records when the
/// upstream reports no usage), from the same tokenizer.
pub fn keygate_prompt_tokens(kind: BodyKind, body: &Value) -> i64 {
    tokens::estimate(kind, body.to_string().as_bytes()).input as i64
}

/// keygate's count of generated text.
pub fn keygate_text_tokens(text: &str) -> i64 {
    tokens::count(text) as i64
}

/// Asserts an OpenAI-shaped error (`{"error": {"message", "type", "code", "param"}}`) and
/// returns the `error` object.
pub async fn assert_openai_error(response: Response, status: StatusCode, code: &str) -> Value {
    let (got, body) = json_body(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    assert!(error["type"].is_string(), "error without a type: {body}");
    assert!(error.get("param").is_some(), "error without param: {body}");
    error.clone()
}

/// A header as text.
pub fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `1s`, `6m0s`, `1h2m3.5s`, `250ms`, `0s`: Go's duration format as OpenAI sends it.
pub fn is_go_duration(text: &str) -> bool {
    if let Some(ms) = text.strip_suffix("ms") {
        return !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
    }
    let Some(mut rest) = text.strip_suffix('s') else {
        return false;
    };
    for unit in ['h', 'm'] {
        if let Some((number, tail)) = rest.split_once(unit) {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            rest = tail;
        }
    }
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, "0"));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// Seconds in a Go duration string.
pub fn go_duration_secs(text: &str) -> f64 {
    assert!(is_go_duration(text), "not a Go duration: {text:?}");
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let mut rest = text.strip_suffix('s').unwrap();
    let mut secs = 0.0;
    for (unit, factor) in [('h', 3600.0), ('m', 60.0)] {
        if let Some((number, tail)) = rest.split_once(unit) {
            secs += number.parse::<f64>().unwrap() * factor;
            rest = tail;
        }
    }
    secs + rest.parse::<f64>().unwrap()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chat body with `max_tokens`.
pub fn chat_body(model: &str, content: &str, max_tokens: Option<u64>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// A streamed chat body.
pub fn stream_body(model: &str, content: &str, include_usage: Option<bool>) -> Value {
    let mut body = chat_body(model, content, None);
    body["stream"] = json!(true);
    if let Some(include_usage) = include_usage {
        body["stream_options"] = json!({ "include_usage": include_usage });
    }
    body
}

/// A unique environment variable name for one test's upstream credential.
pub fn unique_env_var(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple()).to_ascii_uppercase()
}

/// An address nothing listens on (bound, then released).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}
