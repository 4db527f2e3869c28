//! Anthropic's Messages API, as the mock serves it on `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`: the credential in `x-api-key` and a required
//! `anthropic-version`, errors in Anthropic's shape
//! (`{"type":"error","error":{"type","message"}}`), `message` answers with `usage`, and
//! streams of `message_start`, `content_block_start`, `ping`, `content_block_delta`s,
//! `content_block_stop`, `message_delta` (the output's usage) and `message_stop`, each
//! `event: <name>\ndata: {json}\n\n`.
//!
//! Token formulas: input_tokens = words of `system` (a string or text blocks) + Σ over
//! `messages` of the words of their text; output_tokens = min(`max_tokens`, 7), the reply
//! being the first that many [`REPLY_WORDS`]. Model [`MODEL_CACHED`] also reports
//! [`CACHE_CREATION_TOKENS`] and [`CACHE_READ_TOKENS`]; the other `mock-*` switches work
//! as on the OpenAI routes (errors, stalls, drops, slow streams).

use super::*;

/// Reports prompt-cache tokens besides the normal answer.
pub const MODEL_CACHED: &str = "mock-cached";
pub const CACHE_CREATION_TOKENS: u64 = 1000;
pub const CACHE_READ_TOKENS: u64 = 2000;
/// `message_start`'s placeholder `output_tokens`, as Anthropic sends it.
pub const START_OUTPUT_TOKENS: u64 = 1;

/// Anthropic's input_tokens for a Messages body (see the module's formulas).
pub fn anthropic_input_tokens(body: &Value) -> u64 {
    let system = content_words(body.get("system"));
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .map(|m| content_words(m.get("content")))
                .sum()
        })
        .unwrap_or(0);
    system + messages
}

/// Anthropic's output_tokens for a Messages body.
pub fn anthropic_output_tokens(body: &Value) -> u64 {
    body.get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_COMPLETION_TOKENS)
        .min(DEFAULT_COMPLETION_TOKENS)
}

/// The `usage` object of a Messages answer (`output_tokens` as given).
pub fn anthropic_usage(model: &str, body: &Value, output_tokens: u64) -> Value {
    let cached = model == MODEL_CACHED;
    json!({
        "input_tokens": anthropic_input_tokens(body),
        "cache_creation_input_tokens": if cached { CACHE_CREATION_TOKENS } else { 0 },
        "cache_read_input_tokens": if cached { CACHE_READ_TOKENS } else { 0 },
        "output_tokens": output_tokens,
    })
}

/// An error in Anthropic's shape.
pub(super) fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut resp = Response::new(Body::from(
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
    ));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple())) {
        h.insert(HeaderName::from_static("request-id"), v);
    }
    resp
}

/// The `mock-error-<code>` answers (and [`MockUpstream::fail_with`]'s) on these routes.
pub(super) fn anthropic_mock_error(code: u16) -> Response {
    match code {
        400 => anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad thing",
        ),
        429 => {
            let mut resp = anthropic_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            resp
        }
        503 | 529 => anthropic_error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
            "Overloaded",
        ),
        _ => anthropic_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error",
        ),
    }
}

/// The checks Anthropic makes before anything else: the key (when the mock expects one)
/// and the `anthropic-version` header.
pub(super) fn anthropic_refusal(parts: &Parts, expected: Option<&str>) -> Option<Response> {
    let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if let Some(expected) = expected {
        if key != Some(expected) {
            return Some(anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            ));
        }
    }
    if parts.headers.get("anthropic-version").is_none() {
        return Some(anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    None
}

fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

fn stop_reason(body: &Value) -> &'static str {
    if anthropic_output_tokens(body) < DEFAULT_COMPLETION_TOKENS {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// A whole `message` answer.
pub(super) fn anthropic_message(model: &str, body: &Value) -> Value {
    let output = anthropic_output_tokens(body);
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply_text(output as usize)}],
        "stop_reason": stop_reason(body),
        "stop_sequence": null,
        "usage": anthropic_usage(model, body, output),
    })
}

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The events of a streamed message; the cut (for stalls and drops) is after the
/// [`CHUNKS_BEFORE_STALL`]th text delta.
pub(super) fn anthropic_stream_events(model: &str, body: &Value) -> StreamEvents {
    let output = anthropic_output_tokens(body);
    let mut events = vec![
        named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": anthropic_usage(model, body, START_OUTPUT_TOKENS),
            }}),
        ),
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        named_event("ping", &json!({"type": "ping"})),
    ];
    let mut cut = None;
    for (w, word) in REPLY_WORDS[..output as usize].iter().enumerate() {
        let piece = if w == 0 {
            (*word).to_string()
        } else {
            format!(" {word}")
        };
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
        if w + 1 == CHUNKS_BEFORE_STALL {
            cut = Some(events.len());
        }
    }
    let cut = cut.unwrap_or(events.len());
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named_event(
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(body), "stop_sequence": null},
            "usage": {"output_tokens": output}}),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    StreamEvents { events, cut }
}

/// `POST /v1/messages` and `/v1/messages/count_tokens` once recorded and authenticated.
pub(super) async fn anthropic_answer(
    shared: &Arc<Shared>,
    parts: &Parts,
    json: Option<Value>,
    count_tokens: bool,
) -> Response {
    if let Some(resp) = failing_answer(shared, anthropic_mock_error) {
        return resp;
    }
    let Some(body) = json.filter(Value::is_object) else {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "There was an issue with the request body: not a JSON object",
        );
    };
    let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model: Field required",
        );
    };
    if !body.get("messages").is_some_and(Value::is_array) {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "messages: Field required",
        );
    }
    if count_tokens {
        return json_ok(&json!({"input_tokens": anthropic_input_tokens(&body)}));
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    }
    let (behavior, delay) = behavior_for(Some(&model), parts);
    match behavior {
        Behavior::DropConnection => return drop_connection(parts),
        Behavior::Error(code) => return anthropic_mock_error(code),
        Behavior::SlowFirstByte => {
            let mut stop = shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return anthropic_mock_error(503),
            }
        }
        _ => {}
    }
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        stream_response(
            shared,
            anthropic_stream_events(&model, &body),
            behavior,
            delay,
        )
    } else {
        json_ok(&anthropic_message(&model, &body))
    }
}
