//! The native admin API under `/admin/v1`, authenticated by admin keys.

pub mod audit;
pub mod keys;
pub mod members;
pub mod usage;
pub mod views;
pub mod workspaces;

use axum::{
    routing::{get, post},
    Router,
};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/keys",
            get(keys::list_keys).post(keys::create_key),
        )
        .route(
            "/admin/v1/keys/{id}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::delete_key),
        )
        .route("/admin/v1/keys/{id}/rotate", post(keys::rotate_key))
        .route("/admin/v1/keys/{id}/usage", get(usage::key_usage))
        .route("/admin/v1/rate-limit-events", get(usage::rate_limit_events))
        .route(
            "/admin/v1/workspaces",
            get(workspaces::list_workspaces).post(workspaces::create_workspace),
        )
        .route(
            "/admin/v1/workspaces/{id}",
            get(workspaces::get_workspace)
                .patch(workspaces::update_workspace)
                .delete(workspaces::delete_workspace),
        )
        .route(
            "/admin/v1/workspaces/{id}/members",
            get(members::list_members).post(members::add_member),
        )
        .route(
            "/admin/v1/workspaces/{id}/members/{username}",
            axum::routing::patch(members::update_member).delete(members::remove_member),
        )
        .route("/admin/v1/audit-events", get(audit::list_audit_events))
}
