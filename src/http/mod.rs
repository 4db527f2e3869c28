//! The HTTP surfaces. This is the only module that imports axum (with `error`).
//!
//! Connections are accepted by `front::serve`: the three hot inference routes are read and
//! answered by the fast path on the connection's own task; any other request hands the
//! connection to hyper and `router` (with the bytes already read) for the rest of its
//! life. Both doors run the same admission steps (`front::admission`).
//!
//! Router middleware, outermost first (ServiceBuilder runs top to bottom):
//! 1. `SetRequestId`: an `x-request-id` for every request (`admission::request_id`).
//! 2. `TraceLayer`: one span per request with the matched route, request id and key id.
//! 3. `PropagateRequestId`: echoes the id on the response.
//! 4. `SetSensitiveRequestHeaders`: the headers that carry a key never reach logs.
//! 5. `metrics::count_requests`: `keygate_requests_total` by matched route, status, model.
//! 6. `panic_guard`: a panic becomes the surface's JSON 500 (`admission::guarded`).
//! 7. body limit: bodies over `http.max_body_bytes` get 413, declared or as they stream.
//! 8. `auth::authenticate`: the rest of `admission::admit` (address, key, allowlist).

pub mod admin;
pub mod auth;
pub mod compat;
pub mod console;
pub mod extract;
pub mod front;
pub mod inference;
pub mod me;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod ratelimit_headers;

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{header, HeaderName, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use tower::ServiceBuilder;
use tower_http::{
    limit::RequestBodyLimitLayer,
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    trace::{DefaultOnResponse, TraceLayer},
    LatencyUnit,
};
use tracing::Level;

use self::front::admission::{self, MakeId};
use crate::{error::ApiError, state::AppState};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let max_body = state.config.http.max_body_bytes;
    let counted = state.metrics.clone();
    let api = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(metrics::scrape))
        .merge(admin::router())
        .merge(compat::router())
        .merge(console::router(state.clone()))
        .route("/v1/chat/completions", post(inference::chat_completions))
        .route("/v1/completions", post(inference::completions))
        .route("/v1/embeddings", post(inference::embeddings))
        .route("/v1/messages", post(inference::messages))
        .route("/v1/messages/count_tokens", post(inference::count_tokens))
        .route("/v1/models", get(inference::list_models))
        .route("/v1/key", get(me::key_info))
        .route("/v1/{*path}", any(inference::passthrough))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state);

    Router::new().merge(openapi::docs()).merge(api).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeId))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(make_span)
                    .on_request(())
                    .on_response(
                        DefaultOnResponse::new()
                            .level(Level::DEBUG)
                            .latency_unit(LatencyUnit::Micros),
                    ),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            // The headers that carry a key: never logged.
            .layer(SetSensitiveRequestHeadersLayer::new(
                admission::KEY_HEADERS.map(HeaderName::from_static),
            ))
            .layer(middleware::from_fn_with_state(
                counted,
                metrics::count_requests,
            ))
            .layer(middleware::from_fn(panic_guard))
            .layer(middleware::from_fn(body_too_large_as_json))
            .layer(DefaultBodyLimit::max(max_body))
            .layer(RequestBodyLimitLayer::new(max_body)),
    )
}

fn make_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        tracing::span!(Level::DEBUG, "request", method = %request.method(), route, request_id, key_id = tracing::field::Empty)
    } else {
        tracing::info_span!("request", method = %request.method(), route, request_id, key_id = tracing::field::Empty)
    }
}

/// `RequestBodyLimitLayer` refuses a body whose `Content-Length` is over the limit with a
/// plain-text 413 before any extractor runs; answer in the surface's JSON error shape.
async fn body_too_large_as_json(request: Request, next: Next) -> Response {
    let surface = crate::error::Surface::for_path(request.uri().path());
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return admission::body_too_large(surface).into_response();
    }
    response
}

/// The router's panic guard (`admission::guarded`), on the request's surface.
async fn panic_guard(request: Request, next: Next) -> Response {
    let surface = crate::error::Surface::for_path(request.uri().path());
    match admission::guarded(surface, next.run(request)).await {
        Ok(response) => response,
        Err(panicked) => panicked.into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    let surface = crate::error::Surface::for_path(request.uri().path());
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
    .on(surface)
}

async fn method_not_allowed(request: Request) -> ApiError {
    let surface = crate::error::Surface::for_path(request.uri().path());
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .on(surface)
}
