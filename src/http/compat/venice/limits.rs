//! `GET api_keys/rate_limits` (the calling key's limits and what it can still spend) and
//! `GET api_keys/rate_limits/log` (the last 50 refused requests).

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    views::{timestamp, usd_number, Data, ListOf, VeniceErrorBody},
    VeniceAnyKey, VeniceResult,
};
use crate::{
    keys::KeyKind,
    limits::buckets_of,
    state::AppState,
    store::{EventFilter, Page},
    usage::budget::period_bounds,
};

/// `apiTier.id` and every log entry's `rateLimitTier`: keygate has one tier.
pub const TIER: &str = "keygate";
/// `balances.USD` of a key that no budget and no workspace credits bound: the largest
/// budget keygate accepts, i.e. "no limit" (the SDK requires a number).
pub const UNLIMITED_USD: f64 = 1_000_000_000.0;
/// Entries in the refusal log (Venice's "last 50").
pub const LOG_ENTRIES: u32 = 50;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTier {
    pub id: String,
    /// Whether the key spends against a balance (it has a USD budget, or its workspace
    /// has credits).
    pub is_charged: bool,
}

/// What the key can still spend. `USD` is the lesser of its budget's remainder and its
/// workspace's credits' remainder (0 for admin keys, which cannot call models; 1e9 when
/// nothing bounds it). `DIEM` is always 0: keygate has no DIEM currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Balances {
    #[serde(rename = "USD")]
    pub usd: f64,
    #[serde(rename = "DIEM")]
    pub diem: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// `RPM`, `RPD`, `TPM` or `TPD`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The limit.
    pub amount: f64,
    /// What is left now (keygate extension; may be negative while a bucket repays).
    pub remaining: i64,
    /// When the bucket is full again (keygate extension).
    pub resets_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRateLimits {
    /// `null` for the key's global limits, else the model they apply to.
    pub api_model_id: Option<String>,
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitsData {
    /// Whether the key may call models now: an active inference key with money left.
    pub access_permitted: bool,
    pub api_tier: ApiTier,
    pub balances: Balances,
    pub key_expiration: Option<String>,
    /// Next 00:00 UTC (an epoch is a UTC day).
    pub next_epoch_begins: String,
    pub rate_limits: Vec<ModelRateLimits>,
}

#[utoipa::path(get, path = "/api/v1/api_keys/rate_limits", tag = "venice",
    responses(
        (status = 200, description = "The calling key's rate limits (with what remains) and what it can still spend", body = Data<RateLimitsData>),
        (status = 401, body = VeniceErrorBody),
        (status = 403, description = "The key's IP allowlist excludes the caller", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rate_limits(
    State(state): State<AppState>,
    VeniceAnyKey(key): VeniceAnyKey,
) -> VeniceResult<Json<Data<RateLimitsData>>> {
    let now = Utc::now();
    let shared = state.gateway.shared();
    let buckets = buckets_of(key.id, &key.limits, &key.model_limits);
    let states = shared.bucket_states(&buckets).await;
    // Global limits first, then each model's, in name order.
    let mut scopes: BTreeMap<Option<String>, Vec<RateLimit>> = BTreeMap::new();
    for s in &states {
        scopes
            .entry(s.scope.model().map(str::to_owned))
            .or_default()
            .push(RateLimit {
                kind: s.kind.as_str().to_ascii_uppercase(),
                amount: s.limit as f64,
                remaining: s.remaining,
                resets_at: timestamp(now + Duration::from_std(s.reset_after).unwrap_or_default()),
            });
    }
    let rate_limits = scopes
        .into_iter()
        .map(|(model, rate_limits)| ModelRateLimits {
            api_model_id: model,
            rate_limits,
        })
        .collect();

    // What the key can still spend: its budget's remainder and its workspace's credits'.
    let mut remaining: Vec<Decimal> = Vec::new();
    if let Some(budget) = shared.budgets.snapshot(&key, crate::clock::now()).await? {
        remaining.push(budget.remaining_usd);
    }
    let workspace = state.store.get_workspace(key.workspace_id).await?;
    if let Some(credits) = workspace.credits_usd {
        let credits = shared
            .budgets
            .credits_snapshot(workspace.id, credits, crate::clock::now())
            .await?;
        remaining.push(credits.remaining_usd);
    }
    let is_charged = !remaining.is_empty();
    let can_spend = remaining.iter().min().copied();
    let inference = key.kind == KeyKind::Inference;
    let usd = match (inference, can_spend) {
        (false, _) => 0.0,
        (true, Some(amount)) => usd_number(amount.max(Decimal::ZERO)),
        (true, None) => UNLIMITED_USD,
    };
    let (_, next_epoch) = period_bounds(crate::keys::model::BudgetPeriod::Day, now);
    Ok(Json(Data {
        data: RateLimitsData {
            access_permitted: inference && can_spend.is_none_or(|amount| amount > Decimal::ZERO),
            api_tier: ApiTier {
                id: TIER.to_string(),
                is_charged,
            },
            balances: Balances { usd, diem: 0.0 },
            key_expiration: key.expires_at.map(timestamp),
            next_epoch_begins: timestamp(next_epoch.unwrap_or(now + Duration::days(1))),
            rate_limits,
        },
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitLogEntry {
    pub api_key_id: String,
    /// The model asked for; `""` when the request named none.
    pub model_id: String,
    pub rate_limit_tier: String,
    /// `RPM`, `RPD`, `TPM`, `TPD`, `BUDGET`, `CREDITS` or `CONCURRENCY`.
    pub rate_limit_type: String,
    pub timestamp: String,
    /// The refusing limit's value (keygate extension), e.g. `"60"` or `"25.00"`.
    pub limit_value: String,
}

#[utoipa::path(get, path = "/api/v1/api_keys/rate_limits/log", tag = "venice",
    responses(
        (status = 200, description = "The last 50 refused requests, newest first: of the whole \
            workspace for an admin key, of the calling key itself for an inference key",
            body = ListOf<RateLimitLogEntry>),
        (status = 401, body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rate_limit_log(
    State(state): State<AppState>,
    VeniceAnyKey(key): VeniceAnyKey,
) -> VeniceResult<Json<ListOf<RateLimitLogEntry>>> {
    let filter = EventFilter {
        key_id: (key.kind == KeyKind::Inference).then_some(key.id),
        ..EventFilter::default()
    };
    let page = Page {
        page: 1,
        limit: LOG_ENTRIES,
    };
    let events = state
        .usage
        .refusals(key.workspace_id, &filter, page)
        .await?;
    Ok(Json(ListOf::new(
        events
            .items
            .into_iter()
            .map(|event| RateLimitLogEntry {
                api_key_id: event.key_id.to_string(),
                model_id: event.model.unwrap_or_default(),
                rate_limit_tier: TIER.to_string(),
                rate_limit_type: event.limit.to_ascii_uppercase(),
                timestamp: timestamp(event.at),
                limit_value: event.limit_value,
            })
            .collect(),
    )))
}
