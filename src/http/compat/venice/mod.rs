//! Venice-compatible `api_keys` resource under `/api/v1` (shared/wire/venice.md,
//! docs/compat.md "Venice"), so that `venice-py` (`venice_ai`) works unchanged with its
//! base URL pointed at keygate.
//!
//! Wire adapters only: keys are ordinary keygate keys made and changed through
//! `keys::KeysService`, so the native API, the CLI and the proxy see and enforce them.
//! Every error leaves in Venice's shape `{"error": message, "code": CODE}` (plus Zod-like
//! `issues` for a field at fault); [`VeniceError`] makes that the only way out of a handler.
//!
//! | method | path (under `/api/v1`) | key |
//! |---|---|---|
//! | GET, POST, PATCH, DELETE | `api_keys` (DELETE `?id=`, PATCH `id` in the body) | admin |
//! | GET | `api_keys/rate_limits` | any (the calling key's own limits and balances) |
//! | GET | `api_keys/rate_limits/log` | any (admin: the workspace's last 50 refusals; inference: its own) |
//! | GET, POST | `api_keys/generate_web3_key` | none (a wallet signature; off unless `web3.enabled`) |
//! | GET | `api_keys/{id}` | admin |
//!
//! The literal segments (`rate_limits`, `generate_web3_key`) win over `{id}` in axum's
//! router, and issued ids are UUIDs, so no id can be mistaken for them.

mod keys;
mod limits;
pub mod views;
mod web3;
pub mod wire;

use std::sync::Arc;

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use self::views::{issue_path, Issue, VeniceErrorBody};
use crate::{
    error::{ApiError, Surface},
    http::{
        auth::{AdminKey, Authenticated},
        extract::{AppJson, AppQuery},
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
        keys::update_key,
        keys::delete_key,
        keys::retrieve_key,
        limits::rate_limits,
        limits::rate_limit_log,
        web3::web3_token,
        web3::web3_create_key,
    ),
    tags((name = "venice", description = "Venice-compatible key management (`venice-py`): point \
        `VeniceClient(api_key=…, base_url=\"http://<keygate>\")` at keygate. Keys made here are \
        ordinary keygate keys; `consumptionLimit.usd` + `limitPeriod` is their budget, `diem`, \
        `vcu` and `modelPrivacy` are stored and echoed but not enforced. See docs/compat.md."))
)]
pub struct VeniceApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/api_keys",
            get(keys::list_keys)
                .post(keys::create_key)
                .patch(keys::update_key)
                .delete(keys::delete_key),
        )
        .route("/api/v1/api_keys/rate_limits", get(limits::rate_limits))
        .route(
            "/api/v1/api_keys/rate_limits/log",
            get(limits::rate_limit_log),
        )
        .route(
            "/api/v1/api_keys/generate_web3_key",
            get(web3::web3_token).post(web3::web3_create_key),
        )
        .route("/api/v1/api_keys/{id}", get(keys::retrieve_key))
}

/// An error on this surface. Everything a handler can fail with converts into it, and it
/// always renders in Venice's shape. A field at fault makes it a 400 with Zod-like
/// `issues` (the SDK raises `InvalidRequestError` and lists them in the message).
#[derive(Debug)]
pub struct VeniceError(pub ApiError);

pub type VeniceResult<T> = Result<T, VeniceError>;

impl VeniceError {
    /// 400 naming the (Venice) field at fault.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        VeniceError(
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message).with_field(field),
        )
    }
}

impl IntoResponse for VeniceError {
    fn into_response(self) -> Response {
        let error = self.0;
        let Some(field) = error.field.clone() else {
            return error.on(Surface::Venice).into_response();
        };
        let status = if error.status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            error.status
        };
        // `ApiError::invalid_field` prefixes the message with the field; the issue has it apart.
        let message = error
            .message
            .strip_prefix(&format!("`{field}`: "))
            .unwrap_or(&error.message)
            .to_string();
        let body = VeniceErrorBody {
            // Venice's own wording; the SDK appends the issues (`path: message`).
            error: if status == StatusCode::BAD_REQUEST {
                "Invalid request".to_string()
            } else {
                error.message.clone()
            },
            code: if status == StatusCode::BAD_REQUEST {
                "INVALID_REQUEST".to_string()
            } else {
                error.code.to_ascii_uppercase()
            },
            issues: Some(vec![Issue {
                code: "custom",
                path: issue_path(&field),
                message,
            }]),
        };
        (status, Json(body)).into_response()
    }
}

impl From<ApiError> for VeniceError {
    fn from(err: ApiError) -> Self {
        VeniceError(err)
    }
}

impl From<KeyError> for VeniceError {
    fn from(err: KeyError) -> Self {
        match err {
            // Name the field as this surface calls it (`ipAllowlist[2]`, `description`).
            KeyError::Invalid { field, message } => {
                VeniceError::invalid(wire::wire_field(&field), message)
            }
            KeyError::NotFound => VeniceError(not_found()),
            other => VeniceError(ApiError::from(other)),
        }
    }
}

impl From<StoreError> for VeniceError {
    fn from(err: StoreError) -> Self {
        KeyError::from(err).into()
    }
}

/// Venice's own 404 for keys: `{"error": "API key not found"}` (the SDK's `NotFoundError`).
pub fn not_found() -> ApiError {
    ApiError::not_found("API key not found")
}

/// An admin key (management routes); an inference key gets 403 in Venice's shape (the
/// SDK's `PermissionDeniedError`).
pub struct VeniceAdmin(pub AdminKey);

impl<S: Send + Sync> FromRequestParts<S> for VeniceAdmin {
    type Rejection = VeniceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AdminKey::from_request_parts(parts, state)
            .await
            .map(VeniceAdmin)
            .map_err(VeniceError)
    }
}

/// Any valid key, admin or inference (its own rate limits and refusals).
pub struct VeniceAnyKey(pub Arc<ApiKey>);

impl<S: Send + Sync> FromRequestParts<S> for VeniceAnyKey {
    type Rejection = VeniceError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authenticated>()
            .map(|a| VeniceAnyKey(a.0.clone()))
            .ok_or_else(|| VeniceError(ApiError::from(AuthError::Missing)))
    }
}

/// A JSON body, checked like the native API's (`Content-Type`, size, bad JSON, a bad field
/// named), refused in Venice's shape.
pub struct VeniceJson<T>(pub T);

impl<S, T> FromRequest<S> for VeniceJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = VeniceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        AppJson::<T>::from_request(req, state)
            .await
            .map(|AppJson(value)| VeniceJson(value))
            .map_err(VeniceError)
    }
}

/// A query string; a bad parameter is a 400 naming it.
pub struct VeniceQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for VeniceQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = VeniceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AppQuery::<T>::from_request_parts(parts, state)
            .await
            .map(|AppQuery(value)| VeniceQuery(value))
            .map_err(VeniceError)
    }
}
