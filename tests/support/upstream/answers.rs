//! The JSON bodies the mock answers with (chat and legacy completions, embeddings,
//! models, OpenAI-shaped errors) and the headers every answer carries.

use super::*;

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"})
}

pub(super) fn include_usage(body: &Value) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

pub(super) fn chat_usage_json(body: &Value) -> Value {
    let u = expected_usage(body);
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

pub(super) fn plain_usage_json(body: &Value) -> Value {
    let u = expected_usage(body);
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    })
}

pub(super) fn chat_completion(model: &str, body: &Value, no_usage: bool) -> Value {
    let content = reply_for(body);
    let finish = finish_reason_for(body);
    let choices: Vec<Value> = (0..choices_for(body))
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish,
            })
        })
        .collect();
    let mut v = json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    });
    if !no_usage {
        v["usage"] = chat_usage_json(body);
    }
    v
}

pub(super) fn text_completion(model: &str, body: &Value, no_usage: bool) -> Value {
    let text = reply_for(body);
    let finish = finish_reason_for(body);
    let choices: Vec<Value> = (0..choices_for(body))
        .map(|i| json!({"text": text, "index": i, "logprobs": null, "finish_reason": finish}))
        .collect();
    let mut v = json!({
        "id": format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "text_completion",
        "created": now_secs(),
        "model": model,
        "choices": choices,
    });
    if !no_usage {
        v["usage"] = plain_usage_json(body);
    }
    v
}

pub(super) fn embedding_inputs(input: &Value) -> Vec<Value> {
    match input {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![input.clone()]
        }
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    }
}

/// The deterministic embedding of one input (string or token-id array).
pub fn embedding_for(input: &Value) -> [f32; EMBEDDING_DIMS] {
    // FNV-1a over the input's JSON text.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in input.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [0f32; EMBEDDING_DIMS];
    for (j, x) in out.iter_mut().enumerate() {
        let byte = (h >> ((j % 8) * 8)) & 0xff;
        *x = (byte as f32 - 127.5) / 128.0;
    }
    out
}

pub(super) fn embeddings(model: &str, body: &Value, input: &Value, no_usage: bool) -> Value {
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = embedding_inputs(input)
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let vector = embedding_for(item);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut v = json!({"object": "list", "data": data, "model": model});
    if !no_usage {
        let p = text_input_tokens(input);
        v["usage"] = json!({"prompt_tokens": p, "total_tokens": p});
    }
    v
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(super) fn add_common_headers(resp: &mut Response, success: bool) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple())) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    h.insert(
        HeaderName::from_static("openai-version"),
        HeaderValue::from_static("2020-10-01"),
    );
    h.insert(
        HeaderName::from_static("openai-processing-ms"),
        HeaderValue::from_static("1"),
    );
    if success {
        for (name, value) in UPSTREAM_RATELIMIT_HEADERS {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    add_common_headers(&mut resp, status.is_success());
    resp
}

pub(super) fn json_ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

pub(super) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Value,
    code: Value,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

pub(super) fn missing_param(name: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{name}'."),
        "invalid_request_error",
        json!(name),
        json!("missing_required_parameter"),
    )
}

pub(super) fn mock_error(code: u16) -> Response {
    match code {
        400 => {
            let mut resp = Response::new(Body::from(ERROR_400_BODY));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            add_common_headers(&mut resp, false);
            resp
        }
        429 => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests on the mock upstream. Please try again in 1s.",
                "requests",
                Value::Null,
                json!("rate_limit_exceeded"),
            );
            let h = resp.headers_mut();
            h.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            h.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from_static("0"),
            );
            resp
        }
        503 => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
            Value::Null,
        ),
        _ => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            Value::Null,
            Value::Null,
        ),
    }
}
