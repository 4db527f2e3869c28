//! Operational endpoints; all unauthenticated (see `auth::UNAUTHENTICATED`).

use std::time::Duration;

use axum::{extract::State, http::StatusCode, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{proxy::upstreams::UpstreamHealth, state::AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `/readyz` only: each upstream's breaker. Details, not readiness: an instance whose
    /// upstreams are all down still answers (with their errors), serves the admin API
    /// and must stay in its load balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<UpstreamHealth>>,
    /// `/readyz`: which limiter decides now (`memory`, `redis`, or `fallback` while Redis
    /// is unreachable). Not a reason to be unready: the fallback serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limiter: Option<&'static str>,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
        upstreams: None,
        limiter: None,
    })
}

/// How long readiness waits for the store. A probe needs an answer, not a hang: while the
/// store is unreachable the pool waits up to 5 s for a connection.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The store answers (within 2 s) and every migration is applied. While the store is
/// unreachable this says 503 at once, and keygate keeps serving cached keys. `upstreams`
/// shows each upstream's breaker (`closed`, `open`, `half_open`), and never changes the
/// status.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, description = "Not ready; `reason` says why", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (status, Json(mut health)) = match tokio::time::timeout(READY_TIMEOUT, ready(&state)).await
    {
        Ok(answer) => answer,
        Err(_) => {
            tracing::warn!("readiness: the store did not answer within {READY_TIMEOUT:?}");
            not_ready("store unreachable".into())
        }
    };
    health.upstreams = Some(state.gateway.upstreams().health());
    health.limiter = Some(state.gateway.limiter_state());
    (status, Json(health))
}

fn not_ready(reason: String) -> (StatusCode, Json<Health>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "unavailable",
            reason: Some(reason),
            upstreams: None,
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
                upstreams: None,
                limiter: None,
            }),
        ),
        Ok(false) => not_ready("migrations not applied".into()),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: cannot read migrations");
            not_ready("cannot read migration state".into())
        }
    }
}
