//! aiXplain-compatible v2 `APIKey` resource under `/sdk/api-keys` (shared/wire/aixplain.md).

use axum::Router;
use utoipa::OpenApi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(tags((name = "aixplain", description = "aiXplain-compatible key management (`aixplain` v2 `APIKey`)")))]
pub struct AixplainApi;

pub fn router() -> Router<AppState> {
    Router::new()
}
