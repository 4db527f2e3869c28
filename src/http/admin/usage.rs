//! `/admin/v1/keys/{id}/usage` and `/admin/v1/rate-limit-events`.

use axum::{
    extract::{Path, State},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::views::{parse_workspace_id, ErrorBody, PageParams};
use crate::{
    error::ApiError,
    http::{
        auth::AdminKey,
        extract::{parse_id, AppQuery},
    },
    money::pico_to_usd,
    state::AppState,
    store::{EventFilter, Granularity, UsageRow},
    usage::{RangeRequest, ReadError},
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Start, RFC 3339 (inclusive; default: 24 hours before `to`).
    pub from: Option<DateTime<Utc>>,
    /// End, RFC 3339 (exclusive; default: now).
    pub to: Option<DateTime<Utc>>,
    /// `minute`, `hour` (default) or `day`, aligned to UTC.
    #[param(inline)]
    pub granularity: Option<Granularity>,
    /// Only this model.
    pub model: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Exact decimal USD, as a JSON number.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub cost_usd: rust_decimal::Decimal,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageAnswer {
    pub data: Vec<UsageBucket>,
}

#[utoipa::path(get, path = "/admin/v1/keys/{id}/usage", tag = "usage", params(("id" = uuid::Uuid, Path, description = "Key id"), UsageParams),
    responses(
        (status = 200, description = "Usage per bucket and model, oldest first", body = UsageAnswer),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Bad `from`, `to`, `granularity` or range", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn key_usage(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<UsageParams>,
) -> Result<Json<UsageAnswer>, ApiError> {
    // 404 for keys of other workspaces; revoked keys keep their history.
    let key = state.keys.get(&admin.caller, parse_id(&id)?).await?;
    let range = RangeRequest {
        from: params.from,
        to: params.to,
        granularity: params.granularity,
        model: params.model,
    };
    let rows = state.usage.key_usage(key.id, range, Utc::now()).await?;
    Ok(Json(UsageAnswer {
        data: rows.into_iter().map(UsageBucket::from).collect(),
    }))
}

impl From<UsageRow> for UsageBucket {
    fn from(row: UsageRow) -> Self {
        UsageBucket {
            start: row.start,
            model: row.model,
            requests: row.requests,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_usd: pico_to_usd(row.cost_pico),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::InvalidRange { field, message } => ApiError::invalid_field(field, message),
            ReadError::Store(err) => err.into(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// The workspace whose refusals to list (default: the key's own). Only an admin key of
    /// the `default` workspace may name another; any other answers 404.
    #[param(value_type = Option<Uuid>)]
    pub workspace_id: Option<String>,
    /// Only this key's refusals.
    #[param(value_type = Option<Uuid>)]
    pub key_id: Option<String>,
    /// Start, RFC 3339 (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// End, RFC 3339 (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitEventView {
    pub key_id: Uuid,
    pub model: Option<String>,
    /// `rpm | rpd | tpm | tpd | budget | credits | concurrency`.
    pub limit: String,
    pub limit_value: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitEventList {
    pub data: Vec<RateLimitEventView>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
}

#[utoipa::path(get, path = "/admin/v1/rate-limit-events", tag = "usage", params(EventParams),
    responses(
        (status = 200, description = "Refused requests of the workspace, newest first", body = RateLimitEventList),
        (status = 400, description = "Malformed `key_id` or `workspace_id` (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "`workspace_id` names no workspace this key can see", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rate_limit_events(
    State(state): State<AppState>,
    admin: AdminKey,
    AppQuery(params): AppQuery<EventParams>,
) -> Result<Json<RateLimitEventList>, ApiError> {
    let page = PageParams {
        page: params.page,
        limit: params.limit,
    }
    .page()?;
    let key_id = params
        .key_id
        .as_deref()
        .map(|raw| parse_id(raw).map_err(|e| e.with_field("key_id")))
        .transpose()?;
    let filter = EventFilter {
        key_id,
        from: params.from,
        to: params.to,
    };
    let workspace_id = state
        .keys
        .readable_workspace(
            &admin.caller,
            parse_workspace_id(params.workspace_id.as_deref())?,
        )
        .await?;
    let events = state.usage.refusals(workspace_id, &filter, page).await?;
    Ok(Json(RateLimitEventList {
        data: events
            .items
            .into_iter()
            .map(|e| RateLimitEventView {
                key_id: e.key_id,
                model: e.model,
                limit: e.limit,
                limit_value: e.limit_value,
                at: e.at,
            })
            .collect(),
        page: page.page,
        limit: page.limit,
        total: events.total,
    }))
}
