//! Operational endpoints; all unauthenticated (see `auth::UNAUTHENTICATED`).

use axum::{extract::State, http::StatusCode, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
    })
}

/// The store answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, description = "Not ready; `reason` says why", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                reason: Some(reason),
            }),
        )
    };
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
            }),
        ),
        Ok(false) => not_ready("migrations not applied".into()),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: cannot read migrations");
            not_ready("cannot read migration state".into())
        }
    }
}
