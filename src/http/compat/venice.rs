//! Venice-compatible `api_keys` resource under `/api/v1` (shared/wire/venice.md).

use axum::Router;
use utoipa::OpenApi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(tags((name = "venice", description = "Venice-compatible key management (`venice-py`)")))]
pub struct VeniceApi;

pub fn router() -> Router<AppState> {
    Router::new()
}
