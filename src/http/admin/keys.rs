//! `/admin/v1/keys`: thin adapters over `keys::KeysService`.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    Json,
};

use super::views::{
    parse_workspace_id, ErrorBody, KeyList, KeyListParams, KeyView, KeyWithSecretView,
    RotateRequest,
};
use crate::{
    error::ApiError,
    http::{
        auth::AdminKey,
        extract::{parse_id, parse_json, require_objects, AppQuery, JsonBytes},
    },
    keys::input::{KeyPatch, NewKey},
    state::AppState,
};

#[utoipa::path(post, path = "/admin/v1/keys", tag = "keys", request_body = NewKey,
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = KeyWithSecretView),
        (status = 400, description = "Malformed JSON (`invalid_json`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid admin key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "`workspace_id` names no workspace this key can see", body = ErrorBody),
        (status = 409, description = "`key_cap_reached`: the workspace's key cap is reached (the message names it)", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    admin: AdminKey,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<KeyWithSecretView>), ApiError> {
    let new: NewKey = key_body(&body)?;
    let created = state.keys.create(&admin.caller, new).await?;
    Ok((StatusCode::CREATED, Json(KeyWithSecretView::from(&created))))
}

#[utoipa::path(get, path = "/admin/v1/keys", tag = "keys", params(KeyListParams),
    responses(
        (status = 200, description = "One page of the workspace's live keys, oldest first", body = KeyList),
        (status = 400, description = "Malformed `workspace_id` (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "`workspace_id` names no workspace this key can see", body = ErrorBody),
        (status = 422, description = "Bad `page` or `limit`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    admin: AdminKey,
    AppQuery(params): AppQuery<KeyListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let page = params.page()?;
    let workspace = parse_workspace_id(params.workspace_id.as_deref())?;
    let keys = state.keys.list(&admin.caller, workspace, page).await?;
    Ok(Json(KeyList::new(&keys, page)))
}

#[utoipa::path(get, path = "/admin/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 200, body = KeyView),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 404, description = "No such live key in this workspace", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let key = state.keys.get(&admin.caller, parse_id(&id)?).await?;
    Ok(Json(KeyView::from(&key)))
}

#[utoipa::path(patch, path = "/admin/v1/keys/{id}", tag = "keys", request_body = KeyPatch,
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The updated key; absent fields unchanged, `null` clears", body = KeyView),
        (status = 400, description = "Malformed id (`invalid_id`) or body (`invalid_json`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn update_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<KeyView>, ApiError> {
    let key = state
        .keys
        .update(&admin.caller, parse_id(&id)?, key_body::<KeyPatch>(&body)?)
        .await?;
    Ok(Json(KeyView::from(&key)))
}

#[utoipa::path(delete, path = "/admin/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked; the key stops working at once"),
        (status = 400, description = "Malformed id (`invalid_id`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.keys.revoke(&admin.caller, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/v1/keys/{id}/rotate", tag = "keys", request_body(content = Option<RotateRequest>),
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key with its new secret, shown only now", body = KeyWithSecretView),
        (status = 400, description = "Malformed id (`invalid_id`) or body (`invalid_json`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rotate_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<KeyWithSecretView>, ApiError> {
    let id = parse_id(&id)?;
    // The body is optional: no body (or `null`) means "no grace period".
    let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        parse_json::<Option<RotateRequest>>(&body)?.unwrap_or_default()
    };
    let rotated = state
        .keys
        .rotate(&admin.caller, id, request.grace_seconds.unwrap_or(0))
        .await?;
    Ok(Json(KeyWithSecretView::from(&rotated)))
}

/// A create or update body: the key settings that are objects must be sent as objects.
fn key_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let typed = parse_json(body)?;
    // parse_json accepted it, so the bytes are one valid JSON document.
    if let Ok(document) = serde_json::from_slice::<serde_json::Value>(body) {
        require_objects(
            &document,
            &["limits", "budget", "metadata"],
            &["model_limits"],
        )?;
    }
    Ok(typed)
}
