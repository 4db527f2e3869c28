//! The console's read-only workspace pages: members and the audit log (admins and owners;
//! the services refuse members, and the navigation does not offer them).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};

use super::{pages, session::Console, PageError};
use crate::{state::AppState, store::Page, workspaces::AuditQuery};

/// GET `/console/members`.
pub async fn members(
    State(state): State<AppState>,
    console: Console,
) -> Result<Response, PageError> {
    let members = state
        .members
        .list(&console.caller, console.session.workspace_id)
        .await?;
    Ok(pages::members(&console, &members).into_response())
}

/// GET `/console/audit`: the newest 200 events of the session's workspace.
pub async fn audit(State(state): State<AppState>, console: Console) -> Result<Response, PageError> {
    let query = AuditQuery {
        workspace_id: Some(console.session.workspace_id),
        actor: None,
        action: None,
        target: None,
        from: None,
        to: None,
    };
    let events = state
        .workspaces
        .audit_events(
            &console.caller,
            query,
            Page {
                page: 1,
                limit: 200,
            },
        )
        .await?;
    Ok(pages::audit(&console, &events.items, events.total).into_response())
}
