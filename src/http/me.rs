//! `GET /v1/key`: what a key may still do — its limits with what remains and when each
//! refills, and its budget period's spend (DESIGN §6, PEERS §3 item 9).

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::inference::AnyKey;
use crate::{
    error::{ApiError, Surface},
    keys::{model::BudgetPeriod, KeyKind, KeyStatus},
    limits::buckets_of,
    state::AppState,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct LimitView {
    /// `rpm | rpd | tpm | tpd`.
    pub limit: String,
    /// The model this limit applies to; absent for the key's global limits.
    pub model: Option<String>,
    pub value: u64,
    /// May be negative while the bucket repays a request that used more than estimated.
    pub remaining: i64,
    /// Seconds until the bucket is full again.
    pub reset_seconds: f64,
    pub resets_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub limit_usd: rust_decimal::Decimal,
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    /// Absent for lifetime budgets.
    pub resets_at: Option<DateTime<Utc>>,
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub spent_usd: rust_decimal::Decimal,
    /// Held for requests still in flight.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub reserved_usd: rust_decimal::Decimal,
    /// May be negative: a request admitted with budget left can cost more than what was left.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::signed_usd")]
    pub remaining_usd: rust_decimal::Decimal,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub kind: KeyKind,
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub allowed_models: Option<Vec<String>>,
    pub max_parallel: Option<u32>,
    pub limits: Vec<LimitView>,
    pub budget: Option<BudgetView>,
}

#[utoipa::path(get, path = "/v1/key", tag = "inference",
    responses((status = 200, description = "The calling key's limits, what remains, and its budget period's spend", body = KeyInfo)),
    security(("bearer" = [])))]
pub async fn key_info(
    State(state): State<AppState>,
    AnyKey(key): AnyKey,
) -> Result<Json<KeyInfo>, ApiError> {
    let now = Utc::now();
    let buckets = buckets_of(key.id, &key.limits, &key.model_limits);
    let states = state.gateway.shared().bucket_states(&buckets).await;
    let limits = states
        .iter()
        .map(|s| LimitView {
            limit: s.kind.as_str().to_string(),
            model: s.scope.model().map(str::to_owned),
            value: s.limit,
            remaining: s.remaining,
            reset_seconds: (s.reset_after.as_millis() as f64) / 1000.0,
            resets_at: now + chrono::Duration::from_std(s.reset_after).unwrap_or_default(),
        })
        .collect();
    let budget = state
        .gateway
        .shared()
        .budgets
        .snapshot(&key, crate::clock::now())
        .await
        .map_err(|err| ApiError::from(err).on(Surface::OpenAi))?
        .map(|b| BudgetView {
            limit_usd: b.limit_usd,
            period: b.period,
            period_start: b.period_start,
            resets_at: b.resets_at,
            spent_usd: b.spent_usd,
            reserved_usd: b.reserved_usd,
            remaining_usd: b.remaining_usd,
        });
    Ok(Json(KeyInfo {
        id: key.id,
        name: key.name.clone(),
        kind: key.kind,
        status: key.status_at(now),
        expires_at: key.expires_at,
        allowed_models: key.allowed_models.clone(),
        max_parallel: key.max_parallel,
        limits,
        budget,
    }))
}
