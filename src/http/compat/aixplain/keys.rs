//! `/sdk/api-keys` and `/sdk/api-keys/{id}`: list, create, get, update, delete.

use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::StatusCode,
    Json,
};

use super::{
    key_id,
    request::{budget, parse_timestamp, to_model_limits, AixplainSaveRequest},
    unprocessable,
    wire::{AixplainError, AixplainKey, Secret},
    AixAdmin, AixJson, AixResult,
};
use crate::{
    http::admin::views::MAX_PAGE_LIMIT,
    keys::{
        input::{KeyPatch, NewKey},
        KeyKind,
    },
    state::AppState,
    store::Page,
};

#[utoipa::path(get, path = "/sdk/api-keys", tag = "aixplain",
    description = "Every live key of the workspace as one bare array (no pagination; the SDK \
        matches names and access keys itself). A JSON body (`{}`, what the SDK sends) is ignored.",
    responses(
        (status = 200, body = [AixplainKey]),
        (status = 401, description = "Missing or invalid key", body = AixplainError),
        (status = 403, description = "Not an admin key", body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
) -> AixResult<Json<Vec<AixplainKey>>> {
    let mut all = Vec::new();
    let mut page = Page {
        page: 1,
        limit: MAX_PAGE_LIMIT,
    };
    loop {
        let paged = state.keys.list(&admin.caller, None, page).await?;
        let got = paged.items.len();
        all.extend(
            paged
                .items
                .iter()
                .map(|key| AixplainKey::new(key, Secret::Partial)),
        );
        if got < page.limit as usize || all.len() as u64 >= paged.total {
            break;
        }
        page.page += 1;
    }
    Ok(Json(all))
}

#[utoipa::path(post, path = "/sdk/api-keys", tag = "aixplain", request_body = AixplainSaveRequest,
    description = "Creates an inference key. The answer's `accessKey` is the full key, shown only now.",
    responses(
        (status = 201, description = "Created", body = AixplainKey),
        (status = 400, description = "Malformed JSON", body = AixplainError),
        (status = 409, description = "Workspace key cap reached", body = AixplainError),
        (status = 422, description = "A field is invalid; the message names it", body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
    AixJson(body): AixJson<AixplainSaveRequest>,
) -> AixResult<(StatusCode, Json<AixplainKey>)> {
    if body.id.as_deref().is_some_and(|id| !id.is_empty()) {
        return Err(unprocessable(
            "id",
            "is chosen by the server; send no `id` when creating a key",
        ));
    }
    if body.is_admin == Some(true) {
        return Err(unprocessable(
            "isAdmin",
            "is read-only: keys made on this surface are inference keys (create admin keys with the admin API or the CLI)",
        ));
    }
    let name = body
        .name
        .ok_or_else(|| unprocessable("name", "is required"))?;
    let expires_at = body
        .expires_at
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_timestamp(&s))
        .transpose()?;
    let new = NewKey {
        name,
        kind: Some(KeyKind::Inference),
        expires_at,
        budget: body.budget.flatten().map(|amount| budget(amount, None)),
        limits: body
            .global_limits
            .flatten()
            .map(|l| l.to_limits())
            .transpose()?,
        model_limits: body
            .assets_limits
            .flatten()
            .map(|entries| to_model_limits(&entries))
            .transpose()?,
        ..NewKey::default()
    };
    let created = state.keys.create(&admin.caller, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(AixplainKey::new(
            &created.key,
            Secret::Full(created.secret.expose()),
        )),
    ))
}

#[utoipa::path(get, path = "/sdk/api-keys/{id}", tag = "aixplain",
    params(("id" = String, Path, description = "Key id (UUID)")),
    responses(
        (status = 200, body = AixplainKey),
        (status = 404, description = "`API key not found` (unknown, revoked, malformed or another workspace's id)", body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn get_key(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
    path: Result<Path<String>, PathRejection>,
) -> AixResult<Json<AixplainKey>> {
    let key = state.keys.get(&admin.caller, key_id(path)?).await?;
    Ok(Json(AixplainKey::new(&key, Secret::Partial)))
}

#[utoipa::path(put, path = "/sdk/api-keys/{id}", tag = "aixplain", request_body = AixplainSaveRequest,
    description = "Updates the key. Absent fields stay as they are, `null` clears; `globalLimits` and \
        `assetsLimits` replace the key's limits. A budget keeps its period. The answer's `accessKey` \
        is the partial form.",
    params(("id" = String, Path, description = "Key id (UUID)")),
    responses(
        (status = 200, body = AixplainKey),
        (status = 404, body = AixplainError),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = AixplainError),
        (status = 422, body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn update_key(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
    path: Result<Path<String>, PathRejection>,
    AixJson(body): AixJson<AixplainSaveRequest>,
) -> AixResult<Json<AixplainKey>> {
    let id = key_id(path)?;
    if let Some(sent) = body.id.as_deref().filter(|s| !s.is_empty()) {
        if sent.trim() != id.to_string() {
            return Err(unprocessable(
                "id",
                format!(
                    "`{}` is not the id in the path",
                    sent.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    let current = state.keys.get(&admin.caller, id).await?;
    if body
        .is_admin
        .is_some_and(|is_admin| is_admin != (current.kind == KeyKind::Admin))
    {
        return Err(unprocessable(
            "isAdmin",
            "is read-only: a key's kind cannot be changed on this surface",
        ));
    }
    let expires_at = match body.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) if raw.trim().is_empty() => Some(None),
        Some(Some(raw)) => Some(Some(parse_timestamp(&raw)?)),
    };
    let patch = KeyPatch {
        name: body.name,
        expires_at,
        budget: body
            .budget
            .map(|amount| amount.map(|amount| budget(amount, current.budget.as_ref()))),
        limits: body
            .global_limits
            .map(|limits| limits.map(|l| l.to_limits()).transpose())
            .transpose()?,
        model_limits: body
            .assets_limits
            .map(|entries| entries.map(|e| to_model_limits(&e)).transpose())
            .transpose()?,
        ..KeyPatch::default()
    };
    let key = state.keys.update(&admin.caller, id, patch).await?;
    Ok(Json(AixplainKey::new(&key, Secret::Partial)))
}

#[utoipa::path(delete, path = "/sdk/api-keys/{id}", tag = "aixplain",
    description = "Revokes the key: it stops working at once; reads answer 404 from now on.",
    params(("id" = String, Path, description = "Key id (UUID)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, body = AixplainError),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = AixplainError),
    ),
    security(("x_api_key" = [])))]
pub async fn delete_key(
    State(state): State<AppState>,
    AixAdmin(admin): AixAdmin,
    path: Result<Path<String>, PathRejection>,
) -> AixResult<StatusCode> {
    state.keys.revoke(&admin.caller, key_id(path)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
