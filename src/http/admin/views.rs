//! JSON shapes of the native admin API (DESIGN §6). Conversions from domain types only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    error::ApiError,
    keys::{
        model::{Budget, Limits, ModelLimits},
        ApiKey, KeyKind, KeyStatus, KeyWithSecret,
    },
    store::{Page, Paged},
};

/// A key as every read shows it. The secret is never part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    pub kind: KeyKind,
    pub workspace_id: Uuid,
    /// `kg_<lookup>…<last4>`.
    pub partial_key: String,
    pub last6: String,
    pub status: KeyStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub budget: Option<Budget>,
    pub limits: Limits,
    pub model_limits: Vec<ModelLimits>,
    pub allowed_models: Option<Vec<String>>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub max_parallel: Option<u32>,
    /// Canonical CIDRs.
    pub ip_allowlist: Option<Vec<String>>,
    pub alert_thresholds: Option<Vec<f64>>,
    /// The wallet that made this key through the Web3 flow (EIP-55); `null` otherwise.
    pub wallet_address: Option<String>,
    /// Whether a completion's cap is lowered to what the limits or budget have left
    /// instead of the request being refused.
    pub fit_max_tokens: bool,
}

impl From<&ApiKey> for KeyView {
    fn from(key: &ApiKey) -> Self {
        KeyView {
            id: key.id,
            name: key.name.clone(),
            kind: key.kind,
            workspace_id: key.workspace_id,
            partial_key: key.partial_key.clone(),
            last6: key.last6.clone(),
            status: key.status_at(Utc::now()),
            created_by: key.created_by.clone(),
            created_at: key.created_at,
            updated_at: key.updated_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
            budget: key.budget.clone(),
            limits: key.limits.clone(),
            model_limits: key.model_limits.clone(),
            allowed_models: key.allowed_models.clone(),
            metadata: key.metadata.clone(),
            max_parallel: key.max_parallel,
            ip_allowlist: key
                .ip_allowlist
                .as_ref()
                .map(|nets| nets.iter().map(ToString::to_string).collect()),
            alert_thresholds: key.alert_thresholds.clone(),
            wallet_address: key.wallet_address.clone(),
            fit_max_tokens: key.fit_max_tokens,
        }
    }
}

/// The answer to create and rotate: the key plus its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithSecretView {
    #[serde(flatten)]
    pub key: KeyView,
    /// The full key. It is not stored and cannot be shown again.
    pub secret: String,
}

impl From<&KeyWithSecret> for KeyWithSecretView {
    fn from(created: &KeyWithSecret) -> Self {
        KeyWithSecretView {
            key: KeyView::from(&created.key),
            secret: created.secret.expose().to_string(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
}

impl KeyList {
    pub fn new(paged: &Paged<ApiKey>, page: Page) -> Self {
        KeyList {
            data: paged.items.iter().map(KeyView::from).collect(),
            page: page.page,
            limit: page.limit,
            total: paged.total,
        }
    }
}

pub const MAX_PAGE_LIMIT: u32 = 500;
const MAX_PAGE: u32 = 1_000_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

impl PageParams {
    pub fn page(&self) -> Result<Page, ApiError> {
        let page = self.page.unwrap_or(1);
        let limit = self.limit.unwrap_or(50);
        if !(1..=MAX_PAGE).contains(&page) {
            return Err(ApiError::invalid_field(
                "page",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_field(
                "limit",
                format!("must be between 1 and {MAX_PAGE_LIMIT}"),
            ));
        }
        Ok(Page { page, limit })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The workspace to list (default: the key's own). Only an admin key of the `default`
    /// workspace may name another; any other answers 404.
    #[param(value_type = Option<Uuid>)]
    pub workspace_id: Option<String>,
}

impl KeyListParams {
    pub fn page(&self) -> Result<Page, ApiError> {
        PageParams {
            page: self.page,
            limit: self.limit,
        }
        .page()
    }
}

/// A `workspace_id` query parameter: 400 `invalid_id` naming it when malformed.
pub fn parse_workspace_id(raw: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    raw.map(|raw| crate::http::extract::parse_id(raw).map_err(|e| e.with_field("workspace_id")))
        .transpose()
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Seconds the old secret keeps working (default 0, at most 604800).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604_800)]
    pub grace_seconds: Option<u64>,
}

/// `{"error": {"code", "message", "field"?}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}
