//! `GET /metrics`: the Prometheus exposition (`telemetry::metrics`). On the main port it
//! needs the operator's admin key (Prometheus sends it with its `authorization` scrape
//! setting); on `metrics.listen`, a second address for a private network, it needs none.
//! Also the router's request counter (`count_requests`); the fast path counts its own.

use std::sync::Arc;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

use super::auth::AdminKey;
use crate::{
    error::ApiError,
    keys::{KeyError, Reach},
    state::AppState,
    telemetry::metrics::{Metrics, ModelId, Snapshot, UsageStats},
};

/// The exposition format's media type (text format 0.0.4).
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every series in Prometheus' text format. Only the operator (an admin key of the
/// `default` workspace) may read them: they count every workspace's traffic.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text exposition (format 0.0.4); the series are listed in docs/metrics.md", content_type = "text/plain", body = String),
        (status = 401, description = "missing or invalid key", body = super::admin::views::ErrorBody),
        (status = 403, description = "not an admin key, or the admin key of a workspace other than `default`", body = super::admin::views::ErrorBody),
        (status = 404, description = "metrics are off (`metrics.enabled = false`)", body = super::admin::views::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn scrape(State(state): State<AppState>, admin: AdminKey) -> Response {
    if admin.caller.reach != Reach::Every {
        return ApiError::from(KeyError::Forbidden(
            "only the operator (an admin key of the default workspace) may read /metrics".into(),
        ))
        .into_response();
    }
    exposition(&state)
}

/// `/metrics` on `metrics.listen`: no key, the address is the protection.
async fn scrape_open(State(state): State<AppState>) -> Response {
    exposition(&state)
}

fn exposition(state: &AppState) -> Response {
    if !state.metrics.enabled() {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off (metrics.enabled = false)",
        )
        .into_response();
    }
    let body = state.metrics.render(&snapshot(state));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(EXPOSITION))],
        body,
    )
        .into_response()
}

/// The process state the exposition reads from its owners.
fn snapshot(state: &AppState) -> Snapshot {
    let recorder = &state.recorder;
    Snapshot {
        store_backend: state.store.backend(),
        pool: state.store.pool_stats(),
        key_cache: state.keys.cache().stats(),
        usage: UsageStats {
            oldest_pending: recorder.oldest_pending(),
            flush_failures: recorder.flush_failures(),
            dropped: recorder.dropped(),
            discarded: recorder.discarded(),
        },
        upstreams: (state.gateway.upstreams().health().into_iter())
            .map(|upstream| (upstream.name, upstream.state))
            .collect(),
        limiter: state.gateway.limiter_state(),
    }
}

/// The router behind `metrics.listen`: `/metrics` only, without a key.
pub fn listener_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape_open))
        .with_state(state)
}

/// The router's request counter: the matched route template (never the raw path), the
/// answer's status, and the model an inference handler put into the answer's extensions.
pub async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    if !metrics.enabled() {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let model = response.extensions().get::<ModelId>().copied();
    metrics.count_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_u16(),
        model,
    );
    response
}
