//! `/v1/*`: OpenAI-compatible inference through `proxy::Gateway`, the model list, and key
//! self-service. Errors use OpenAI's body (DESIGN §4).

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{FromRequestParts, OriginalUri, State},
    http::{request::Parts, HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{auth::Authenticated, front::admission, ratelimit_headers};
use crate::{
    error::{ApiError, Surface},
    keys::{ApiKey, AuthError, KeyKind},
    limits::BucketState,
    proxy::{AnswerBody, Endpoint, Handled, InferenceError, InferenceRequest, ProxyAnswer},
    state::AppState,
    telemetry::metrics::ModelId,
    usage::budget::BudgetRefusal,
};

/// An inference-capable key (admission already checked its IP allowlist and kind).
pub struct InferenceKey(pub Arc<ApiKey>);

impl FromRequestParts<AppState> for InferenceKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Admission refused admin keys and noted the key's use on every `/v1` inference
        // path (`admission::Needs::of`); this guards a route registered anywhere else.
        let key = any_key(parts)?;
        if key.kind == KeyKind::Admin {
            return Err(admission::admin_key_refused());
        }
        Ok(InferenceKey(key))
    }
}

/// Any valid key (self-service).
pub struct AnyKey(pub Arc<ApiKey>);

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = any_key(parts)?;
        Ok(AnyKey(key))
    }
}

fn any_key(parts: &Parts) -> Result<Arc<ApiKey>, ApiError> {
    parts
        .extensions
        .get::<Authenticated>()
        .map(|a| a.0.clone())
        .ok_or_else(|| ApiError::from(AuthError::Missing).on(Surface::OpenAi))
}

impl From<InferenceError> for ApiError {
    fn from(err: InferenceError) -> Self {
        let message = err.to_string();
        let error = match err {
            InferenceError::InvalidRequest { param, .. } => {
                let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
                match param {
                    Some(param) => error.with_field(param),
                    None => error,
                }
            }
            InferenceError::ModelNotAllowed(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "model_not_allowed", message)
                    .with_field("model")
            }
            InferenceError::ModelNotFound(_) | InferenceError::ModelOnOtherApi { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message).with_field("model")
            }
            InferenceError::PathNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            InferenceError::RateLimited(refusal) => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    format!(
                        "rate limit exceeded: {} limit of {} ({}){}",
                        refusal.kind,
                        refusal.limit,
                        refusal.scope,
                        refusal
                            .retry_after
                            .map(|d| format!("; retry in {}", ratelimit_headers::go_duration(d)))
                            .unwrap_or_else(|| "; this request can never fit this limit".into())
                    ),
                );
                error.retry_after_secs = refusal
                    .retry_after
                    .map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
                error
            }
            InferenceError::Budget(BudgetRefusal::Budget { resets_at, .. }) => {
                let mut error =
                    ApiError::new(StatusCode::PAYMENT_REQUIRED, "budget_exceeded", message);
                error.retry_after_secs =
                    resets_at.map(|at| (at - chrono::Utc::now()).num_seconds().max(1) as u64);
                error
            }
            InferenceError::BudgetUnavailable
            | InferenceError::Budget(BudgetRefusal::Unavailable(_)) => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "budget_unavailable",
                    message,
                );
                error.retry_after_secs = Some(1);
                error
            }
            InferenceError::Budget(BudgetRefusal::Credits { .. }) => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                message,
            ),
            InferenceError::Concurrency { .. } => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    format!("rate limit exceeded: concurrency: {message}"),
                );
                error.retry_after_secs = Some(1);
                error
            }
            InferenceError::UpstreamTimeout => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
            }
            InferenceError::Upstream(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            }
        };
        error.on(Surface::OpenAi)
    }
}

/// What an inference request comes to: the upstream's answer, or keygate's refusal
/// (OpenAI's error body) with the buckets' states for its rate-limit headers.
pub(super) enum Answer {
    Proxied(ProxyAnswer),
    Refused(ApiError, Vec<BucketState>),
}

/// A router request as the gateway takes it: path after `/v1`, and the `x-request-id` the
/// request-id layer set, for its log events. (The fast path builds its own from the raw
/// head.)
fn inference_request(
    key: Arc<ApiKey>,
    endpoint: Endpoint,
    method: Method,
    uri: &axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> InferenceRequest {
    let path = uri
        .path()
        .strip_prefix("/v1")
        .unwrap_or(uri.path())
        .to_string();
    let request_id = headers
        .get(super::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    InferenceRequest {
        key,
        request_id,
        endpoint,
        path,
        query: uri.query().map(str::to_owned),
        method,
        headers: headers.into(),
        body,
    }
}

/// The answer to an inference request, and the model it named (its `/metrics` label).
pub(super) async fn answer(
    state: &AppState,
    request: InferenceRequest,
) -> (Answer, Option<ModelId>) {
    // Refusals in the shape of the route's API (Anthropic's on `/v1/messages`).
    let surface = Surface::for_path(request.endpoint.route());
    let Handled { model, result } = state.gateway.handle(request).await;
    let answer = match result {
        Ok(answer) => Answer::Proxied(answer),
        Err(err) => {
            let states = match &err {
                InferenceError::RateLimited(refusal) => refusal.states.clone(),
                _ => Vec::new(),
            };
            Answer::Refused(ApiError::from(err).on(surface), states)
        }
    };
    (answer, model)
}

pub(super) async fn proxy(
    state: AppState,
    key: Arc<ApiKey>,
    endpoint: Endpoint,
    method: Method,
    uri: &axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let head_request = method == Method::HEAD;
    let request = inference_request(key, endpoint, method, uri, headers, body);
    let (answer, model) = answer(&state, request).await;
    let (mut response, limits) = match answer {
        Answer::Proxied(answer) => {
            let mut response = match answer.body {
                // axum would write `content-length: 0` for an empty body, which for HEAD
                // claims the GET's body is empty: an empty body of unknown length has none.
                _ if head_request => Response::new(Body::from_stream(futures::stream::empty::<
                    Result<Bytes, std::io::Error>,
                >())),
                _ if !super::front::wire::has_body(answer.status, false) => {
                    Response::new(Body::empty())
                }
                AnswerBody::Whole(bytes) => Response::new(Body::from(bytes)),
                AnswerBody::Stream(stream) => Response::new(Body::from_stream(stream)),
            };
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            (response, answer.limits)
        }
        Answer::Refused(refusal, limits) => (refusal.into_response(), limits),
    };
    ratelimit_headers::apply(response.headers_mut(), &limits);
    if let Some(model) = model {
        response.extensions_mut().insert(model);
    }
    response
}

macro_rules! endpoint_handler {
    ($name:ident, $endpoint:expr, $path:literal, $summary:literal $(, $params:tt)?) => {
        #[utoipa::path(post, path = $path, tag = "inference", summary = $summary,
            $(params $params,)?
            request_body(content = Object, description = "OpenAI request body"),
            responses(
                (status = 200, description = "The upstream's answer (JSON, or SSE when `stream` is true)"),
                (status = 400, description = "invalid_request: the body is not a JSON object, or a field is invalid", body = OpenAiErrorBody),
                (status = 401, description = "invalid_api_key", body = OpenAiErrorBody),
                (status = 402, description = "budget_exceeded / insufficient_credits", body = OpenAiErrorBody),
                (status = 403, description = "model_not_allowed / admin_key_not_for_inference", body = OpenAiErrorBody),
                (status = 404, description = "model_not_found, or a path no upstream declares", body = OpenAiErrorBody),
                (status = 429, description = "rate_limit_exceeded; see Retry-After", body = OpenAiErrorBody),
                (status = 502, description = "upstream_error", body = OpenAiErrorBody),
                (status = 503, description = "budget_unavailable / store_unavailable; retry", body = OpenAiErrorBody),
                (status = 504, description = "upstream_timeout", body = OpenAiErrorBody),
            ),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<AppState>,
            InferenceKey(key): InferenceKey,
            method: Method,
            OriginalUri(uri): OriginalUri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            proxy(state, key, $endpoint, method, &uri, headers, body).await
        }
    };
}

endpoint_handler!(
    chat_completions,
    Endpoint::ChatCompletions,
    "/v1/chat/completions",
    "Chat completion (streaming or not)"
);
endpoint_handler!(
    completions,
    Endpoint::Completions,
    "/v1/completions",
    "Legacy text completion"
);
endpoint_handler!(
    embeddings,
    Endpoint::Embeddings,
    "/v1/embeddings",
    "Embeddings"
);
/// Anthropic's Messages API: the same walk, Anthropic's wire format and error shape.
macro_rules! anthropic_handler {
    ($name:ident, $endpoint:expr, $path:literal, $summary:literal) => {
        #[utoipa::path(post, path = $path, tag = "inference", summary = $summary,
            request_body(content = Object, description = "Anthropic Messages request body"),
            responses(
                (status = 200, description = "The upstream's answer (JSON, or SSE when `stream` is true)"),
                (status = 400, description = "invalid_request_error: the body is not a JSON object, or a field (`max_tokens`) is invalid", body = AnthropicErrorBody),
                (status = 401, description = "authentication_error", body = AnthropicErrorBody),
                (status = 402, description = "billing_error: budget exceeded or credits exhausted", body = AnthropicErrorBody),
                (status = 403, description = "permission_error: model not allowed, or an admin key", body = AnthropicErrorBody),
                (status = 404, description = "not_found_error: no anthropic upstream serves the model", body = AnthropicErrorBody),
                (status = 429, description = "rate_limit_error; see Retry-After", body = AnthropicErrorBody),
                (status = 502, description = "api_error: the upstream failed", body = AnthropicErrorBody),
                (status = 503, description = "overloaded_error: budget or store unavailable; retry", body = AnthropicErrorBody),
                (status = 504, description = "api_error: the upstream timed out", body = AnthropicErrorBody),
            ),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<AppState>,
            InferenceKey(key): InferenceKey,
            method: Method,
            OriginalUri(uri): OriginalUri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            proxy(state, key, $endpoint, method, &uri, headers, body).await
        }
    };
}

anthropic_handler!(
    messages,
    Endpoint::Messages,
    "/v1/messages",
    "Anthropic Messages (streaming or not), to `kind = \"anthropic\"` upstreams"
);
anthropic_handler!(
    count_tokens,
    Endpoint::CountTokens,
    "/v1/messages/count_tokens",
    "Anthropic token count, to `kind = \"anthropic\"` upstreams (charged no tokens)"
);
endpoint_handler!(
    passthrough,
    Endpoint::Other,
    "/v1/{path}",
    "Other /v1 paths an upstream declares (any method)",
    ((
        "path" = String,
        Path,
        description = "The rest of the path after `/v1/`, as the upstream names it"
    ))
);

/// OpenAI's error body, which every `/v1` refusal uses (written by `error::ApiError`; this
/// type only describes it).
#[derive(Debug, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiError,
}

#[derive(Debug, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `insufficient_quota` or `api_error`.
    #[schema(rename = "type")]
    pub kind: String,
    /// keygate's stable code, e.g. `invalid_api_key`, `model_not_allowed`.
    pub code: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
}

/// Anthropic's error body, which every `/v1/messages` refusal uses.
#[derive(Debug, ToSchema)]
pub struct AnthropicErrorBody {
    /// Always `error`.
    #[schema(rename = "type")]
    pub kind: String,
    pub error: AnthropicError,
}

#[derive(Debug, ToSchema)]
pub struct AnthropicError {
    /// `invalid_request_error`, `authentication_error`, `billing_error`,
    /// `permission_error`, `not_found_error`, `rate_limit_error`, `api_error` or
    /// `overloaded_error`.
    #[schema(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// `GET /v1/models`: `{"object": "list", "data": [...]}`, as OpenAI lists models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0: keygate does not know when the upstream made the model.
    pub created: u64,
    /// The upstream that serves it.
    pub owned_by: String,
}

/// Models this key may use.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, description = "OpenAI model list, only models the key may use", body = ModelList)),
    security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    InferenceKey(key): InferenceKey,
) -> Json<ModelList> {
    let models = state.gateway.models_for(&key).await;
    Json(ModelList {
        object: "list",
        data: models
            .into_iter()
            .map(|(id, owned_by)| Model {
                id,
                object: "model",
                created: 0,
                owned_by,
            })
            .collect(),
    })
}
