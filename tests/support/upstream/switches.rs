//! Routing and the behaviour switches: which endpoint, which behaviour the `model` asks
//! for, and the request handler that records every request before answering it.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Behavior {
    Normal,
    NoUsage,
    Error(u16),
    SlowFirstByte,
    StallMidStream,
    DropMidStream,
    SlowStream,
    DropConnection,
    NoContent,
    NotModified,
    HopHeaders,
    GiantEvent,
    RichDeltas,
}

/// Behaviour and delay for a model name (`name` or `name:<ms>`) and request headers.
pub(super) fn behavior_for(model: Option<&str>, parts: &Parts) -> (Behavior, Duration) {
    let model = model.unwrap_or("");
    let (base, suffix_ms) = match model.split_once(':') {
        Some((base, ms)) if base.starts_with("mock-") => (base, ms.parse::<u64>().ok()),
        _ => (model, None),
    };
    let (behavior, default_ms) = match base {
        MODEL_NO_USAGE => (Behavior::NoUsage, 0),
        MODEL_ERROR_400 => (Behavior::Error(400), 0),
        MODEL_ERROR_429 => (Behavior::Error(429), 0),
        MODEL_ERROR_500 => (Behavior::Error(500), 0),
        MODEL_ERROR_503 => (Behavior::Error(503), 0),
        MODEL_SLOW_FIRST_BYTE => (Behavior::SlowFirstByte, DEFAULT_FIRST_BYTE_DELAY_MS),
        MODEL_STALL_MID_STREAM => (Behavior::StallMidStream, DEFAULT_STALL_DELAY_MS),
        MODEL_DROP_MID_STREAM => (Behavior::DropMidStream, 0),
        MODEL_SLOW_STREAM => (Behavior::SlowStream, DEFAULT_SLOW_STREAM_DELAY_MS),
        MODEL_DROP_CONNECTION => (Behavior::DropConnection, 0),
        MODEL_NO_CONTENT => (Behavior::NoContent, 0),
        MODEL_NOT_MODIFIED => (Behavior::NotModified, 0),
        MODEL_HOP_HEADERS => (Behavior::HopHeaders, 0),
        MODEL_GIANT_EVENT => (Behavior::GiantEvent, 0),
        MODEL_RICH_DELTAS => (Behavior::RichDeltas, 0),
        _ => (Behavior::Normal, 0),
    };
    let header_ms = parts
        .headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let ms = header_ms.or(suffix_ms).unwrap_or(default_ms);
    (behavior, Duration::from_millis(ms))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Moderations,
    ListModels,
    GetModel,
    ListFiles,
}

pub(super) fn endpoint_for(method: &Method, path: &str) -> Option<Endpoint> {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Some(Endpoint::Chat),
        (&Method::POST, "/v1/completions") => Some(Endpoint::Completions),
        (&Method::POST, "/v1/embeddings") => Some(Endpoint::Embeddings),
        (&Method::POST, "/v1/moderations") => Some(Endpoint::Moderations),
        (&Method::GET, "/v1/models") => Some(Endpoint::ListModels),
        (&Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Some(Endpoint::GetModel)
        }
        (&Method::GET | &Method::HEAD, "/v1/files") => Some(Endpoint::ListFiles),
        _ => None,
    }
}

pub(super) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&raw).ok();
    let authorization = parts
        .headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let expected = lock(&shared.expected_authorization).clone();
    // Anthropic's routes take the key in `x-api-key`.
    let anthropic_route = parts.method == Method::POST
        && matches!(
            parts.uri.path(),
            "/v1/messages" | "/v1/messages/count_tokens"
        );
    let expected_key = expected
        .as_deref()
        .map(|e| e.strip_prefix("Bearer ").unwrap_or(e).to_owned());
    let auth_ok = match anthropic_route {
        false => expected.map(|e| authorization.as_deref() == Some(e.as_str())),
        true => expected_key
            .as_deref()
            .map(|key| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(key)),
    };
    lock(&shared.requests).push(RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json.clone(),
        raw_body: raw.to_vec(),
        authorization: authorization.clone(),
        auth_ok,
        received_at: Instant::now(),
    });

    if anthropic_route {
        if let Some(refusal) = anthropic_refusal(&parts, expected_key.as_deref()) {
            return refusal;
        }
        let count_tokens = parts.uri.path() == "/v1/messages/count_tokens";
        return anthropic_answer(&shared, &parts, json, count_tokens).await;
    }

    if auth_ok == Some(false) {
        let shown = authorization.unwrap_or_default();
        let shown = shown.strip_prefix("Bearer ").unwrap_or(&shown);
        let tail: String = shown
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return error_response(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Incorrect API key provided: ****{tail}. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "invalid_request_error",
            Value::Null,
            json!("invalid_api_key"),
        );
    }

    let path = parts.uri.path().to_string();
    let Some(endpoint) = endpoint_for(&parts.method, &path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("Invalid URL ({} {})", parts.method, path),
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };

    match endpoint {
        Endpoint::ListModels => {
            let data: Vec<Value> = MODEL_IDS.iter().map(|id| model_object(id)).collect();
            return json_ok(&json!({"object": "list", "data": data}));
        }
        Endpoint::GetModel => {
            let id = path.trim_start_matches("/v1/models/");
            if MODEL_IDS.contains(&id) {
                return json_ok(&model_object(id));
            }
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("The model '{id}' does not exist"),
                "invalid_request_error",
                json!("model"),
                json!("model_not_found"),
            );
        }
        Endpoint::ListFiles => return json_ok(&json!({"object": "list", "data": []})),
        _ => {}
    }

    if let Some(resp) = failing_answer(&shared, mock_error) {
        return resp;
    }

    // POST endpoints with a JSON body.
    let Some(body) = json.filter(Value::is_object) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            Value::Null,
            Value::Null,
        );
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (behavior, delay) = behavior_for(model.as_deref(), &parts);

    match behavior {
        Behavior::DropConnection => return drop_connection(&parts),
        Behavior::Error(code) => return mock_error(code),
        Behavior::NoContent => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            return resp;
        }
        Behavior::NotModified => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return resp;
        }
        Behavior::SlowFirstByte => {
            let mut stop = shared.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => {
                    return mock_error(503);
                }
            }
        }
        _ => {}
    }

    let model = match (endpoint, model) {
        (_, Some(m)) => m,
        (Endpoint::Moderations, None) => "omni-moderation-latest".to_string(),
        (_, None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            )
        }
    };
    let no_usage = matches!(
        behavior,
        Behavior::NoUsage | Behavior::GiantEvent | Behavior::RichDeltas
    );
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);

    let mut answer = match endpoint {
        Endpoint::Chat => {
            if !body.get("messages").is_some_and(Value::is_array) {
                return missing_param("messages");
            }
            if behavior == Behavior::RichDeltas {
                return rich_answer(&shared, &model, stream);
            }
            if behavior == Behavior::GiantEvent && stream {
                let size = parts
                    .headers
                    .get(EVENT_BYTES_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_EVENT_BYTES);
                return giant_event_stream(&shared, &model, size);
            }
            if stream {
                let events = chat_stream_events(&model, &body, no_usage);
                stream_response(&shared, events, behavior, delay)
            } else {
                json_ok(&chat_completion(&model, &body, no_usage))
            }
        }
        Endpoint::Completions => {
            if body.get("prompt").is_none() {
                return missing_param("prompt");
            }
            if stream {
                let events = completion_stream_events(&model, &body, no_usage);
                stream_response(&shared, events, behavior, delay)
            } else {
                json_ok(&text_completion(&model, &body, no_usage))
            }
        }
        Endpoint::Embeddings => match body.get("input") {
            Some(input) => json_ok(&embeddings(&model, &body, input, no_usage)),
            None => missing_param("input"),
        },
        Endpoint::Moderations => json_ok(&json!({
            "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
            "model": model,
            "results": [{
                "flagged": false,
                "categories": {"hate": false, "harassment": false, "violence": false},
                "category_scores": {"hate": 0.0, "harassment": 0.0, "violence": 0.0},
            }],
        })),
        Endpoint::ListModels | Endpoint::GetModel | Endpoint::ListFiles => {
            json_ok(&json!({"object": "list", "data": []}))
        }
    };
    if behavior == Behavior::HopHeaders {
        let headers = answer.headers_mut();
        headers.insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-mock-hop"),
        );
        headers.insert(HOP_HEADER, HeaderValue::from_static("secret"));
    }
    answer
}

/// A chat chunk with one choice whose delta is `delta`.
pub(super) fn delta_chunk(model: &str, delta: Value) -> Bytes {
    sse_event(&json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
    }))
}

pub(super) fn events_response(shared: &Arc<Shared>, events: Vec<Bytes>) -> Response {
    let cut = events.len();
    stream_response(
        shared,
        StreamEvents { events, cut },
        Behavior::Normal,
        Duration::ZERO,
    )
}

pub(super) fn giant_event_stream(shared: &Arc<Shared>, model: &str, size: usize) -> Response {
    let padding = "x".repeat(size);
    let events = vec![
        delta_chunk(model, json!({"role": "assistant", "content": ""})),
        delta_chunk(model, json!({"content": "Hello"})),
        delta_chunk(model, json!({"content": padding})),
        delta_chunk(model, json!({})),
        done_event(),
    ];
    events_response(shared, events)
}

/// `mock-rich-deltas`: [`RICH_TEXTS`] as a stream or as one message, without usage.
pub(super) fn rich_answer(shared: &Arc<Shared>, model: &str, stream: bool) -> Response {
    if stream {
        let mut events = vec![delta_chunk(model, json!({"role": "assistant"}))];
        for (member, text) in RICH_TEXTS {
            let delta = match member {
                "arguments" => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
                }
                _ => json!({ member: text }),
            };
            events.push(delta_chunk(model, delta));
        }
        events.push(done_event());
        return events_response(shared, events);
    }
    let arguments: String = RICH_TEXTS
        .iter()
        .filter(|(member, _)| *member == "arguments")
        .map(|(_, text)| *text)
        .collect();
    let text = |name: &str| {
        RICH_TEXTS
            .iter()
            .find(|(member, _)| *member == name)
            .map(|(_, t)| *t)
    };
    json_ok(&json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": text("content"),
            "reasoning_content": text("reasoning_content"),
            "refusal": text("refusal"),
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": arguments}}],
        }}],
    }))
}

pub(super) fn drop_connection(parts: &Parts) -> Response {
    #[cfg(unix)]
    {
        let socket = parts
            .extensions
            .get::<ConnectInfo<ConnHandle>>()
            .and_then(|ConnectInfo(h)| h.socket.clone());
        if let Some(socket) = socket {
            // FIN to the client now; hyper then fails to write the response below and
            // closes its side.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    }
    let _ = parts;
    // No socket handle: unwind (without the panic hook) so the connection task dies.
    std::panic::resume_unwind(Box::new("mock-drop-connection"))
}

/// What the `fail_with` switch asks for, when it is set: `error(status)` (in the route's
/// own error shape), with the switch's `Retry-After` in place of the error's own.
pub(super) fn failing_answer(shared: &Shared, error: fn(u16) -> Response) -> Option<Response> {
    let (status, retry_after) = (*lock(&shared.failing))?;
    let mut resp = error(status);
    resp.headers_mut().remove(RETRY_AFTER);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    Some(resp)
}
