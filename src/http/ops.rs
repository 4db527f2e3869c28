//! Operational endpoints; all unauthenticated (see `auth::UNAUTHENTICATED`).

use std::time::Duration;

use axum::{extract::State, http::StatusCode, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `/readyz`: which limiter decides now (`memory`, `redis`, or `fallback` while Redis
    /// is unreachable). Not a reason to be unready: the fallback serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limiter: Option<&'static str>,
}

/// Which limiter decides now, for `/readyz`.
fn limiter_state(state: &AppState) -> &'static str {
    match &state.gateway.shared().redis {
        None => "memory",
        Some(redis) if redis.gate.in_fallback() => "fallback",
        Some(_) => "redis",
    }
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
        limiter: None,
    })
}

/// How long readiness waits for the store. A probe needs an answer, not a hang: while the
/// store is unreachable the pool waits up to 5 s for a connection.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The store answers (within 2 s) and every migration is applied. While the store is
/// unreachable this says 503 at once, and keygate keeps serving cached keys.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, description = "Not ready; `reason` says why", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match tokio::time::timeout(READY_TIMEOUT, ready(&state)).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::warn!("readiness: the store did not answer within {READY_TIMEOUT:?}");
            not_ready("store unreachable".into())
        }
    }
}

fn not_ready(reason: String) -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "unavailable",
            reason: Some(reason),
            limiter: None,
        }),
    )
}

async fn ready(state: &AppState) -> (StatusCode, Json<Health>) {
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "readiness: store unreachable");
        return not_ready("store unreachable".into());
    }
    match state.store.migrations_applied().await {
        Ok(true) => (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                reason: None,
                limiter: Some(limiter_state(state)),
            }),
        ),
        Ok(false) => not_ready("migrations not applied".into()),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: cannot read migrations");
            not_ready("cannot read migration state".into())
        }
    }
}
