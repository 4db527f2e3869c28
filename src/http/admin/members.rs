//! `/admin/v1/workspaces/{id}/members…`: thin adapters over `workspaces::MembersService`,
//! and the JSON shape of a member (never its password hash).

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::views::{ErrorBody, PageParams};
use crate::{
    error::ApiError,
    http::{
        auth::AdminKey,
        extract::{parse_id, parse_json, AppQuery, JsonBytes},
    },
    state::AppState,
    store::{Member, Role},
    workspaces::{MemberPatch, NewMember},
};

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Member> for MemberView {
    fn from(member: &Member) -> Self {
        MemberView {
            id: member.id,
            workspace_id: member.workspace_id,
            username: member.username.clone(),
            role: member.role,
            created_at: member.created_at,
            updated_at: member.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub data: Vec<MemberView>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
}

#[utoipa::path(post, path = "/admin/v1/workspaces/{id}/members", tag = "workspaces", request_body = NewMember,
    params(("id" = Uuid, Path, description = "Workspace id")),
    responses(
        (status = 201, description = "Added", body = MemberView),
        (status = 400, description = "Malformed id (`invalid_id`) or body (`invalid_json`)", body = ErrorBody),
        (status = 403, description = "Only an owner adds owners (an admin key of another workspace acts as its admin)", body = ErrorBody),
        (status = 404, description = "No such workspace, or not one this key can see", body = ErrorBody),
        (status = 409, description = "`username_taken`: the workspace has a member with this username", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    let id = parse_id(&id)?;
    let new: NewMember = parse_json(&body)?;
    let member = state.members.add(&admin.caller, id, new).await?;
    Ok((StatusCode::CREATED, Json(MemberView::from(&member))))
}

#[utoipa::path(get, path = "/admin/v1/workspaces/{id}/members", tag = "workspaces",
    params(("id" = Uuid, Path, description = "Workspace id"), PageParams),
    responses(
        (status = 200, description = "One page of the workspace's members, oldest first", body = MemberList),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "No such workspace, or not one this key can see", body = ErrorBody),
        (status = 422, description = "Bad `page` or `limit`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<PageParams>,
) -> Result<Json<MemberList>, ApiError> {
    let id = parse_id(&id)?;
    let page = params.page()?;
    let members = state.members.list(&admin.caller, id).await?;
    let total = members.len() as u64;
    let offset = usize::try_from(page.offset()).unwrap_or(usize::MAX);
    Ok(Json(MemberList {
        data: members
            .iter()
            .skip(offset)
            .take(page.limit as usize)
            .map(MemberView::from)
            .collect(),
        page: page.page,
        limit: page.limit,
        total,
    }))
}

#[utoipa::path(patch, path = "/admin/v1/workspaces/{id}/members/{username}", tag = "workspaces", request_body = MemberPatch,
    params(
        ("id" = Uuid, Path, description = "Workspace id"),
        ("username" = String, Path, description = "The member's username (any case)"),
    ),
    responses(
        (status = 200, description = "The changed member", body = MemberView),
        (status = 400, description = "Malformed id (`invalid_id`) or body (`invalid_json`)", body = ErrorBody),
        (status = 403, description = "Only an owner changes an owner or makes one", body = ErrorBody),
        (status = 404, description = "No such workspace or member, or not one this key can see", body = ErrorBody),
        (status = 409, description = "`last_owner`: it would demote the workspace's last owner", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn update_member(
    State(state): State<AppState>,
    admin: AdminKey,
    Path((id, username)): Path<(String, String)>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<MemberView>, ApiError> {
    let id = parse_id(&id)?;
    let patch: MemberPatch = parse_json(&body)?;
    let member = state
        .members
        .update(&admin.caller, id, &username, patch)
        .await?;
    Ok(Json(MemberView::from(&member)))
}

#[utoipa::path(delete, path = "/admin/v1/workspaces/{id}/members/{username}", tag = "workspaces",
    params(
        ("id" = Uuid, Path, description = "Workspace id"),
        ("username" = String, Path, description = "The member's username (any case)"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 403, description = "Only an owner removes an owner", body = ErrorBody),
        (status = 404, description = "No such workspace or member, or not one this key can see", body = ErrorBody),
        (status = 409, description = "`last_owner`: it is the workspace's last owner", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<AppState>,
    admin: AdminKey,
    Path((id, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.members.remove(&admin.caller, id, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}
