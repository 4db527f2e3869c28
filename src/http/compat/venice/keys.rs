//! `GET|POST|PATCH|DELETE api_keys` and `GET api_keys/{id}`: thin adapters over
//! `keys::KeysService`.

use axum::{
    extract::{rejection::PathRejection, Path, State},
    Json,
};
use chrono::Utc;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{
    not_found,
    views::{ApiKeyView, CreatedApiKey, Data, ListOf, Succeeded, Success, VeniceErrorBody},
    wire::{self, CreateApiKeyRequest, UpdateApiKeyRequest},
    VeniceAdmin, VeniceError, VeniceJson, VeniceQuery, VeniceResult,
};
use crate::{
    keys::{
        input::{KeyPatch, NewKey},
        model::{Budget, BudgetPeriod},
        ApiKey, KeyKind,
    },
    state::AppState,
    store::Page,
};

/// Largest `limit` of one page.
pub const MAX_PAGE_LIMIT: u32 = 500;
const MAX_PAGE: u32 = 1_000_000;

/// A key id. Ids are UUIDs; anything else cannot name a key, so it is Venice's 404 like an
/// unknown id, never a 500.
fn key_id(raw: &str) -> Result<Uuid, VeniceError> {
    Uuid::parse_str(raw.trim()).map_err(|_| VeniceError(not_found()))
}

async fn view_of(state: &AppState, key: &ApiKey) -> VeniceResult<ApiKeyView> {
    let spend = state.usage.spend(key, Utc::now()).await?;
    Ok(ApiKeyView::new(key, &spend))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1-based page (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u32>,
    /// Keys per page, 1 to 500 (default 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/api_keys", tag = "venice", params(ListParams),
    responses(
        (status = 200, description = "One page of the workspace's live keys, oldest first. \
            A page shorter than `limit` is the last one (the SDK's `iter_all` stops there).",
            body = ListOf<ApiKeyView>),
        (status = 400, description = "Bad `page` or `limit`", body = VeniceErrorBody),
        (status = 401, body = VeniceErrorBody),
        (status = 403, description = "Not an admin key, or the key's IP allowlist excludes the caller", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    VeniceAdmin(admin): VeniceAdmin,
    VeniceQuery(params): VeniceQuery<ListParams>,
) -> VeniceResult<Json<ListOf<ApiKeyView>>> {
    let page = params.page.unwrap_or(1);
    let limit = params.limit.unwrap_or(MAX_PAGE_LIMIT);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(VeniceError::invalid(
            "page",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(VeniceError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE_LIMIT}"),
        ));
    }
    // Flushed first, so `lastUsedAt` and the spend include this instance's latest requests.
    state.usage.flush().await;
    let keys = state
        .keys
        .list(&admin.caller, None, Page { page, limit })
        .await?;
    let spends = state.usage.spend_of_each(&keys.items, Utc::now()).await?;
    let views = keys
        .items
        .iter()
        .zip(&spends)
        .map(|(key, spend)| ApiKeyView::new(key, spend))
        .collect();
    Ok(Json(ListOf::new(views)))
}

#[utoipa::path(post, path = "/api/v1/api_keys", tag = "venice", request_body = CreateApiKeyRequest,
    responses(
        (status = 200, description = "Created; `apiKey` is the full key, shown only now", body = Succeeded<CreatedApiKey>),
        (status = 400, description = "A field is invalid; `issues` names it", body = VeniceErrorBody),
        (status = 401, body = VeniceErrorBody),
        (status = 403, body = VeniceErrorBody),
        (status = 409, description = "The workspace's key cap is reached", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    VeniceAdmin(admin): VeniceAdmin,
    VeniceJson(request): VeniceJson<CreateApiKeyRequest>,
) -> VeniceResult<Json<Succeeded<CreatedApiKey>>> {
    let new = new_key(
        request.api_key_type.into(),
        request.description,
        Settings {
            consumption_limit: request.consumption_limit,
            model_privacy: request.model_privacy,
            limit_period: request.limit_period,
            expires_at: request.expires_at,
            ip_allowlist: request.ip_allowlist,
        },
    )?;
    let created = state.keys.create(&admin.caller, new).await?;
    Ok(Json(Succeeded::new(CreatedApiKey::new(&created))))
}

/// The optional settings shared by create and the Web3 create.
pub struct Settings {
    pub consumption_limit: Option<wire::ConsumptionLimitInput>,
    pub model_privacy: Option<wire::ModelPrivacy>,
    pub limit_period: Option<wire::LimitPeriod>,
    pub expires_at: Option<String>,
    pub ip_allowlist: Option<Vec<String>>,
}

/// The keys service's input for a new key (the service validates the rest).
pub fn new_key(kind: KeyKind, description: String, settings: Settings) -> VeniceResult<NewKey> {
    let period = settings
        .limit_period
        .map_or(BudgetPeriod::Day, BudgetPeriod::from);
    let limit = settings
        .consumption_limit
        .map(|limit| limit.into_limit(period))
        .transpose()?;
    let expires_at = match settings.expires_at.as_deref() {
        Some(raw) => wire::parse_expires_at(raw)?,
        None => None,
    };
    let ip_allowlist = match settings.ip_allowlist {
        Some(entries) => wire::ip_allowlist(entries)?,
        None => None,
    };
    let compat = wire::compat_with(
        &Default::default(),
        settings.model_privacy,
        limit.as_ref().map(|l| (l.diem, l.vcu)),
    );
    Ok(NewKey {
        name: description,
        kind: Some(kind),
        expires_at,
        budget: limit.and_then(|l| l.budget),
        ip_allowlist,
        compat,
        ..NewKey::default()
    })
}

#[utoipa::path(patch, path = "/api/v1/api_keys", tag = "venice", request_body = UpdateApiKeyRequest,
    responses(
        (status = 200, description = "The updated key; absent fields unchanged", body = Succeeded<ApiKeyView>),
        (status = 400, body = VeniceErrorBody),
        (status = 404, description = "`{\"error\": \"API key not found\"}`", body = VeniceErrorBody),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn update_key(
    State(state): State<AppState>,
    VeniceAdmin(admin): VeniceAdmin,
    VeniceJson(request): VeniceJson<UpdateApiKeyRequest>,
) -> VeniceResult<Json<Succeeded<ApiKeyView>>> {
    let id = key_id(&request.id)?;
    state.usage.flush().await;
    // The current key: a new `consumptionLimit` keeps the budget's period unless
    // `limitPeriod` changes it, and `limitPeriod` alone changes the existing budget's.
    let current = state.keys.get(&admin.caller, id).await?;
    let mut patch = KeyPatch::default();
    if let Some(description) = request.description {
        patch.name = Some(description);
    }
    if let Some(raw) = request.expires_at.as_deref() {
        patch.expires_at = Some(wire::parse_expires_at(raw)?);
    }
    if let Some(entries) = request.ip_allowlist {
        patch.ip_allowlist = Some(wire::ip_allowlist(entries)?);
    }
    let period = request
        .limit_period
        .map(BudgetPeriod::from)
        .or(current.budget.as_ref().map(|b| b.period))
        .unwrap_or(BudgetPeriod::Day);
    let mut units = None;
    match request.consumption_limit {
        Some(limit) => {
            let limit = limit.into_limit(period)?;
            units = Some((limit.diem, limit.vcu));
            patch.budget = Some(limit.budget);
        }
        None => {
            if let (Some(_), Some(budget)) = (request.limit_period, &current.budget) {
                patch.budget = Some(Some(Budget {
                    limit_usd: budget.limit_usd,
                    period,
                }));
            }
        }
    }
    if request.model_privacy.is_some() || units.is_some() {
        patch.compat = Some(wire::compat_with(
            &current.compat,
            request.model_privacy,
            units,
        ));
    }
    let key = state.keys.update(&admin.caller, id, patch).await?;
    Ok(Json(Succeeded::new(view_of(&state, &key).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// The key's id (an id that names no key is a 404).
    #[param(required = true, pattern = r"\S")]
    pub id: Option<String>,
}

#[utoipa::path(delete, path = "/api/v1/api_keys", tag = "venice", params(DeleteParams),
    responses(
        (status = 200, description = "Revoked; the key stops working at once", body = Success),
        (status = 400, description = "No `id`", body = VeniceErrorBody),
        (status = 404, body = VeniceErrorBody),
        (status = 409, description = "`last_admin_key`: it would leave the `default` workspace without an active admin key", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_key(
    State(state): State<AppState>,
    VeniceAdmin(admin): VeniceAdmin,
    VeniceQuery(params): VeniceQuery<DeleteParams>,
) -> VeniceResult<Json<Success>> {
    let raw = params
        .id
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| VeniceError::invalid("id", "the key's id is required (`?id=<id>`)"))?;
    state.keys.revoke(&admin.caller, key_id(&raw)?).await?;
    Ok(Json(Success { success: true }))
}

#[utoipa::path(get, path = "/api/v1/api_keys/{id}", tag = "venice",
    params(("id" = String, Path, description = "Key id (UUID)")),
    responses(
        (status = 200, body = Data<ApiKeyView>),
        (status = 404, description = "`{\"error\": \"API key not found\"}`", body = VeniceErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retrieve_key(
    State(state): State<AppState>,
    VeniceAdmin(admin): VeniceAdmin,
    path: Result<Path<String>, PathRejection>,
) -> VeniceResult<Json<Data<ApiKeyView>>> {
    let Path(raw) = path.map_err(|_| VeniceError(not_found()))?;
    let id = key_id(&raw)?;
    state.usage.flush().await;
    let key = state.keys.get(&admin.caller, id).await?;
    Ok(Json(Data {
        data: view_of(&state, &key).await?,
    }))
}
