//! `/admin/v1/workspaces` and `/admin/v1/workspaces/{id}`: thin adapters over
//! `workspaces::WorkspacesService`, and the JSON shape of a workspace.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;
use uuid::Uuid;

use super::views::{ErrorBody, PageParams};
use crate::{
    error::ApiError,
    http::{
        auth::AdminKey,
        extract::{parse_id, parse_json, AppQuery, JsonBytes},
    },
    money::pico_to_usd,
    state::AppState,
    store::Paged,
    workspaces::{NewWorkspace, WorkspaceChange, WorkspaceDetails, WorkspacePatch},
};

/// A workspace as every read shows it. Its webhook secret is never part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceView {
    pub id: Uuid,
    pub name: String,
    /// Most live keys it may hold; `null`: no cap.
    pub key_cap: Option<i64>,
    /// Credits granted in USD; `null`: not enforced.
    #[schema(value_type = Option<f64>)]
    #[serde(serialize_with = "optional_usd")]
    pub credits_usd: Option<Decimal>,
    pub webhook_url: Option<String>,
    /// Live (not revoked) keys, what the cap counts.
    pub live_keys: u64,
    /// Spend of all its keys since the start of this UTC month.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub spent_this_month_usd: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn optional_usd<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(amount) => crate::money::usd::serialize(amount, s),
        None => s.serialize_none(),
    }
}

impl From<&WorkspaceDetails> for WorkspaceView {
    fn from(details: &WorkspaceDetails) -> Self {
        let ws = &details.workspace;
        WorkspaceView {
            id: ws.id,
            name: ws.name.clone(),
            key_cap: ws.key_cap,
            credits_usd: ws.credits_usd,
            webhook_url: ws.webhook_url.clone(),
            live_keys: details.live_keys,
            spent_this_month_usd: pico_to_usd(details.spent_this_month_pico),
            created_at: ws.created_at,
            updated_at: ws.updated_at,
        }
    }
}

/// The answer to a create or change. `webhook_secret` is present only when this call set
/// a webhook URL: keygate signs budget alerts with it, and it is never shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceChangeView {
    #[serde(flatten)]
    pub workspace: WorkspaceView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl From<&WorkspaceChange> for WorkspaceChangeView {
    fn from(change: &WorkspaceChange) -> Self {
        WorkspaceChangeView {
            workspace: WorkspaceView::from(&change.details),
            webhook_secret: change
                .new_webhook_secret
                .as_ref()
                .map(|s| s.expose().to_string()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceList {
    pub data: Vec<WorkspaceView>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
}

#[utoipa::path(post, path = "/admin/v1/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses(
        (status = 201, description = "Created; `webhook_secret` (when a webhook URL was given) is shown only now", body = WorkspaceChangeView),
        (status = 400, description = "Malformed JSON (`invalid_json`)", body = ErrorBody),
        (status = 403, description = "Only the operator (an admin key of the `default` workspace) creates workspaces", body = ErrorBody),
        (status = 409, description = "`name_taken`: a workspace has this name", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it (a webhook URL that is not http(s), carries credentials, or whose host is or resolves to a non-public address)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_workspace(
    State(state): State<AppState>,
    admin: AdminKey,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<WorkspaceChangeView>), ApiError> {
    let new: NewWorkspace = parse_json(&body)?;
    let created = state.workspaces.create(&admin.caller, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(WorkspaceChangeView::from(&created)),
    ))
}

#[utoipa::path(get, path = "/admin/v1/workspaces", tag = "workspaces", params(PageParams),
    responses(
        (status = 200, description = "The workspaces this key can see (every one for the operator, else its own), oldest first", body = WorkspaceList),
        (status = 422, description = "Bad `page` or `limit`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_workspaces(
    State(state): State<AppState>,
    admin: AdminKey,
    AppQuery(params): AppQuery<PageParams>,
) -> Result<Json<WorkspaceList>, ApiError> {
    let page = params.page()?;
    state.usage.flush().await;
    let Paged { items, total } = state.workspaces.list(&admin.caller, page).await?;
    Ok(Json(WorkspaceList {
        data: items.iter().map(WorkspaceView::from).collect(),
        page: page.page,
        limit: page.limit,
        total,
    }))
}

#[utoipa::path(get, path = "/admin/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The workspace, with its live keys and this month's spend", body = WorkspaceView),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "No such workspace, or not one this key can see", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_workspace(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let id = parse_id(&id)?;
    state.usage.flush().await;
    let details = state.workspaces.get(&admin.caller, id).await?;
    Ok(Json(WorkspaceView::from(&details)))
}

#[utoipa::path(patch, path = "/admin/v1/workspaces/{id}", tag = "workspaces", request_body = WorkspacePatch,
    params(("id" = Uuid, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The changed workspace; `webhook_secret` is present (once) when a webhook URL was set", body = WorkspaceChangeView),
        (status = 400, description = "Malformed id (`invalid_id`) or body (`invalid_json`)", body = ErrorBody),
        (status = 403, description = "Changing `key_cap` or `credits_usd` needs an owner (an admin key of another workspace acts as its admin)", body = ErrorBody),
        (status = 404, description = "No such workspace, or not one this key can see", body = ErrorBody),
        (status = 409, description = "`name_taken`: another workspace has this name", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn update_workspace(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<WorkspaceChangeView>, ApiError> {
    let id = parse_id(&id)?;
    let patch: WorkspacePatch = parse_json(&body)?;
    let changed = state.workspaces.update(&admin.caller, id, patch).await?;
    Ok(Json(WorkspaceChangeView::from(&changed)))
}

#[utoipa::path(delete, path = "/admin/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace id")),
    responses(
        (status = 204, description = "Deleted, with its members; its history (revoked keys, usage, audit events) stays"),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 403, description = "Only an owner deletes a workspace (an admin key of another workspace acts as its admin)", body = ErrorBody),
        (status = 404, description = "No such workspace, or not one this key can see", body = ErrorBody),
        (status = 409, description = "`workspace_has_keys`: it still has live keys; `default_workspace`: the default workspace stays", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_workspace(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .workspaces
        .delete(&admin.caller, parse_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
