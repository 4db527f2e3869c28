//! Compatibility surfaces: the Venice (`/api/v1/api_keys…`) and aiXplain
//! (`/sdk/api-keys…`, `/v2/models/…`) key-management APIs, served so that their SDKs work
//! unchanged (DESIGN §6, shared/wire/). Wire-format adapters only: every rule lives in
//! `keys::KeysService` and the other domain modules, shared with the native API.

pub mod aixplain;
pub mod venice;

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    venice::router().merge(aixplain::router())
}
