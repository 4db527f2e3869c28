//! `/admin/v1/audit-events`: the audit log, newest first, over
//! `WorkspacesService::audit_events`.

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::views::{parse_workspace_id, ErrorBody, PageParams};
use crate::{
    error::ApiError,
    http::{auth::AdminKey, extract::AppQuery},
    state::AppState,
    store::AuditEvent,
    workspaces::AuditQuery,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this workspace's events. Default: every workspace for the operator (an admin
    /// key of the `default` workspace), the key's own workspace for any other.
    #[param(value_type = Option<Uuid>)]
    pub workspace_id: Option<String>,
    /// Only this actor's (`key:<uuid>`, `member:<username>`, `cli`, `bootstrap`, …).
    pub actor: Option<String>,
    /// Only this action (`key.create`, `workspace.delete`, `member.sign_in_failed`, …).
    pub action: Option<String>,
    /// Only events about this target (`key:<uuid>`, `workspace:<uuid>`, `member:<username>`).
    pub target: Option<String>,
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
pub struct AuditEventView {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub workspace_id: Uuid,
    /// The client's address, when the action came over HTTP.
    pub source_ip: Option<String>,
    /// Facts about the action (fields changed, names, roles). Never a secret or a hash.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&AuditEvent> for AuditEventView {
    fn from(event: &AuditEvent) -> Self {
        AuditEventView {
            id: event.id,
            at: event.at,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            workspace_id: event.workspace_id,
            source_ip: event.source.clone(),
            details: event.details.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventList {
    pub data: Vec<AuditEventView>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
}

#[utoipa::path(get, path = "/admin/v1/audit-events", tag = "workspaces", params(AuditParams),
    responses(
        (status = 200, description = "Audit events, newest first", body = AuditEventList),
        (status = 400, description = "Malformed `workspace_id` (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "`workspace_id` names no workspace this key can see", body = ErrorBody),
        (status = 422, description = "Bad `page`, `limit`, `from` or `to` (`from` must be before `to`)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    admin: AdminKey,
    AppQuery(params): AppQuery<AuditParams>,
) -> Result<Json<AuditEventList>, ApiError> {
    let page = PageParams {
        page: params.page,
        limit: params.limit,
    }
    .page()?;
    let query = AuditQuery {
        workspace_id: parse_workspace_id(params.workspace_id.as_deref())?,
        actor: params.actor,
        action: params.action,
        target: params.target,
        from: params.from,
        to: params.to,
    };
    let events = state
        .workspaces
        .audit_events(&admin.caller, query, page)
        .await?;
    Ok(Json(AuditEventList {
        data: events.items.iter().map(AuditEventView::from).collect(),
        page: page.page,
        limit: page.limit,
        total: events.total,
    }))
}
