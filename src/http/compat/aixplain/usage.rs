//! Usage limits (`/sdk/api-keys/{id}/usage-limits`, `/sdk/api-keys/usage-limits`) and
//! model-path resolution (`/v2/models/{*path}`).
//!
//! The SDK names the usage fields `daily_*`: each entry is today's (UTC) real usage from
//! the store, next to the daily limits (`rpd`, `tpd`; 0 = none). One entry for the key as a
//! whole (no `assetId`), then one per model limit.

use axum::{
    extract::{rejection::PathRejection, Path, State},
    Json,
};
use chrono::Utc;

use super::{
    key_id,
    wire::{AixplainError, AixplainModel, AixplainUsageLimit},
    AixAdmin, AixAnyKey, AixResult,
};
use crate::{
    error::ApiError,
    keys::{input, model::Limits, ApiKey},
    limits::TokenUsage,
    state::AppState,
    store::UsageRow,
};

#[utoipa::path(get, path = "/sdk/api-keys/{id}/usage-limits", tag = "aixplain",
    description = "Today's (UTC) usage of the key and its daily limits: one entry for the key as a \
        whole (no `assetId`), then one per model limit.",
    params(("id" = String, Path, description = "Key id (UUID)")),
    responses(
        (status = 200, body = [AixplainUsageLimit]),
        (status = 404, body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn key_usage_limits(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
    path: Result<Path<String>, PathRejection>,
) -> AixResult<Json<Vec<AixplainUsageLimit>>> {
    let key = state.keys.get(&admin.caller, key_id(path)?).await?;
    Ok(Json(usage_limits(&state, &key).await?))
}

#[utoipa::path(get, path = "/sdk/api-keys/usage-limits", tag = "aixplain",
    description = "The calling key's own usage and daily limits (any valid key, admin or inference).",
    responses(
        (status = 200, body = [AixplainUsageLimit]),
        (status = 401, body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn own_usage_limits(
    State(state): State<AppState>,
    AixAnyKey(key): AixAnyKey,
) -> AixResult<Json<Vec<AixplainUsageLimit>>> {
    Ok(Json(usage_limits(&state, &key).await?))
}

#[utoipa::path(get, path = "/v2/models/{path}", tag = "aixplain",
    description = "Model-path resolution for the SDK (it resolves an `assetId` containing `/` \
        before saving limits): the model's id is its path, as clients name it in inference requests.",
    params(("path" = String, Path, description = "Model path, e.g. `openai/gpt-4o-mini`")),
    responses(
        (status = 200, body = AixplainModel),
        (status = 404, description = "An empty path", body = AixplainError),
        (status = 422, description = "The path is no model name (control or invisible characters, \
            white space only, over 200 characters)", body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn get_model(
    AixAnyKey(_key): AixAnyKey,
    path: Result<Path<String>, PathRejection>,
) -> AixResult<Json<AixplainModel>> {
    let not_found = || ApiError::not_found("model not found");
    let Path(path) = path.map_err(|_| not_found())?;
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Err(not_found().into());
    }
    // A model id is a model name: `/v2/models/%00` is refused (422 naming `path`), not
    // echoed back as an id.
    input::validate_model_name("path", path)?;
    Ok(Json(AixplainModel {
        id: path.to_string(),
    }))
}

async fn usage_limits(state: &AppState, key: &ApiKey) -> AixResult<Vec<AixplainUsageLimit>> {
    let rows = state.usage.today(key.id, Utc::now()).await?;
    let mut entries = vec![entry(&key.limits, rows.iter(), None)];
    for model in &key.model_limits {
        entries.push(entry(
            &model.limits(),
            rows.iter().filter(|row| row.model == model.model),
            Some(model.model.clone()),
        ));
    }
    Ok(entries)
}

fn entry<'a>(
    limits: &Limits,
    rows: impl Iterator<Item = &'a UsageRow>,
    asset_id: Option<String>,
) -> AixplainUsageLimit {
    let (mut requests, mut tokens) = (0_u64, 0_u64);
    for row in rows {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        requests = requests.saturating_add(count(row.requests));
        tokens = tokens.saturating_add(
            TokenUsage {
                input: count(row.input_tokens),
                output: count(row.output_tokens),
            }
            .count(limits.token_type),
        );
    }
    AixplainUsageLimit {
        request_count: requests,
        request_count_limit: limits.rpd.unwrap_or(0),
        token_count: tokens,
        token_count_limit: limits.tpd.unwrap_or(0),
        asset_id,
    }
}
