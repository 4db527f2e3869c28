//! The native admin API under `/admin/v1`, authenticated by admin keys.

pub mod keys;
pub mod usage;
pub mod views;

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
}
