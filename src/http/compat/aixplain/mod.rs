//! aiXplain-compatible v2 `APIKey` resource under `/sdk/api-keys`, and the model-path
//! resolution it needs under `/v2/models` (shared/wire/aixplain.md, docs/compat.md).
//!
//! Wire adapters only: keys are ordinary keygate keys made and changed through
//! `keys::KeysService`, so the native API, the CLI and the proxy see and enforce them.
//! Every error leaves in aiXplain's shape `{"statusCode", "message", "error": "err.<code>"}`
//! ([`AixError`] makes that the only way out of a handler).
//!
//! Routes (static segments win over `{id}`, so `usage-limits` is never read as an id):
//!
//! | method | path | key |
//! |---|---|---|
//! | GET, POST | `/sdk/api-keys` | admin |
//! | GET | `/sdk/api-keys/usage-limits` | any (the calling key's own usage) |
//! | GET, PUT, DELETE | `/sdk/api-keys/{id}` | admin |
//! | GET | `/sdk/api-keys/{id}/usage-limits` | admin |
//! | GET | `/v2/models/{*path}` | any |

mod keys;
pub mod request;
mod usage;
pub mod wire;

use std::sync::Arc;

use axum::{
    extract::{rejection::PathRejection, FromRequest, FromRequestParts, Path, Request},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::de::DeserializeOwned;
use utoipa::{
    openapi::security::{ApiKey as ApiKeyScheme, ApiKeyValue, SecurityScheme},
    Modify, OpenApi,
};
use uuid::Uuid;

use crate::{
    error::{ApiError, Surface},
    http::{
        auth::{AdminKey, Authenticated},
        extract::AppJson,
    },
    keys::{ApiKey, AuthError, KeyError},
    state::AppState,
    store::StoreError,
};

#[derive(OpenApi)]
#[openapi(
    paths(
        keys::list_keys,
        keys::create_key,
        keys::get_key,
        keys::update_key,
        keys::delete_key,
        usage::key_usage_limits,
        usage::own_usage_limits,
        usage::get_model,
    ),
    modifiers(&XApiKey),
    tags((name = "aixplain", description = "aiXplain-compatible key management (`aixplain` v2 `APIKey`): \
        point `Aixplain(api_key=…, backend_url=…)` at keygate. Keys made here are ordinary keygate keys. \
        Limits of 0 mean \"no limit\" on this surface; budgets are lifetime budgets unless the key's \
        budget already has another period. See docs/compat.md."))
)]
pub struct AixplainApi;

/// The aiXplain SDK authenticates with `x-api-key` (keygate also accepts `x-aixplain-key`,
/// `Authorization: Token …` and `Authorization: Bearer …`).
struct XApiKey;

impl Modify for XApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKeyScheme::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sdk/api-keys", get(keys::list_keys).post(keys::create_key))
        .route("/sdk/api-keys/usage-limits", get(usage::own_usage_limits))
        .route(
            "/sdk/api-keys/{id}",
            get(keys::get_key)
                .put(keys::update_key)
                .delete(keys::delete_key),
        )
        .route(
            "/sdk/api-keys/{id}/usage-limits",
            get(usage::key_usage_limits),
        )
        .route("/v2/models/{*path}", get(usage::get_model))
}

/// An error on this surface. Everything a handler can fail with converts into it, and it
/// always renders in the aiXplain shape.
#[derive(Debug)]
pub struct AixError(ApiError);

pub type AixResult<T> = Result<T, AixError>;

impl IntoResponse for AixError {
    fn into_response(self) -> Response {
        self.0.on(Surface::Aixplain).into_response()
    }
}

impl From<ApiError> for AixError {
    fn from(err: ApiError) -> Self {
        AixError(err)
    }
}

impl From<KeyError> for AixError {
    fn from(err: KeyError) -> Self {
        AixError(match err {
            // Name the field as this surface calls it (`assetsLimits[0].assetId`).
            KeyError::Invalid { field, message } => {
                ApiError::invalid_field(request::wire_field(&field), message)
            }
            KeyError::NotFound => not_found(),
            other => ApiError::from(other),
        })
    }
}

impl From<StoreError> for AixError {
    fn from(err: StoreError) -> Self {
        KeyError::from(err).into()
    }
}

/// aiXplain's own 404 message for keys.
pub fn not_found() -> ApiError {
    ApiError::not_found("API key not found")
}

/// A key id from the path. Ids are UUIDs; anything else cannot name a key, so it is a 404
/// like an unknown id (what the SDK's `get` expects), never a 500.
fn key_id(path: Result<Path<String>, PathRejection>) -> AixResult<Uuid> {
    let Path(raw) = path.map_err(|_| not_found())?;
    Uuid::parse_str(raw.trim()).map_err(|_| not_found().into())
}

/// An admin key (management routes); an inference key gets 403 in aiXplain's shape.
pub struct AixAdmin(pub AdminKey);

impl<S: Send + Sync> FromRequestParts<S> for AixAdmin {
    type Rejection = AixError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AdminKey::from_request_parts(parts, state)
            .await
            .map(AixAdmin)
            .map_err(AixError)
    }
}

/// Any valid key, admin or inference (the calling key's own usage, model resolution).
pub struct AixAnyKey(pub Arc<ApiKey>);

impl<S: Send + Sync> FromRequestParts<S> for AixAnyKey {
    type Rejection = AixError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .map(|a| AixAnyKey(a.0.clone()))
            .ok_or_else(|| AixError(ApiError::from(AuthError::Missing)))
    }
}

/// A JSON body, checked like the native API's (`Content-Type`, size, 400 for bad JSON, 422
/// naming a bad field), refused in aiXplain's shape.
pub struct AixJson<T>(pub T);

impl<S, T> FromRequest<S> for AixJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        AppJson::<T>::from_request(req, state)
            .await
            .map(|AppJson(value)| AixJson(value))
            .map_err(AixError)
    }
}

/// 422: the status the SDK's create path treats as "maybe it exists already".
pub fn unprocessable(field: &str, message: impl Into<String>) -> AixError {
    let error = ApiError::invalid_field(field, message);
    debug_assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
    AixError(error)
}
