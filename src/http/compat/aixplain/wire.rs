//! The aiXplain wire shapes (shared/wire/aixplain.md §3–4) and their mapping to keygate's
//! domain types. Surface rules decided here (docs/compat.md, "aiXplain"):
//!
//! - A limit of `0` (or `null`) means "not set": the SDK sends 0 for every field the user
//!   never set. Unset limits are answered as `0`, never `null` (the SDK crashes on null).
//! - `budget` is a USD amount without a period: new budgets are `lifetime`; an update keeps
//!   the period the key's budget already has. `0` is a real (blocking) budget, `null` none.
//! - `tokenType` is read case-insensitively and answered lower-case (`total` by default).
//! - `accessKey` is the full key only in the answer to create; everywhere else it is the
//!   partial form `<first 4>…<last 4>`, enough for the SDK's `get_by_access_key`.

use chrono::{DateTime, Utc};
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::keys::{
    model::{Limits, TokenType},
    ApiKey, KeyKind,
};

/// The key object of every answer (list item, get, create, update).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AixplainKey {
    pub id: Uuid,
    pub name: String,
    /// USD; `null` = no budget. The budget's period is not part of this surface.
    pub budget: Option<f64>,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds); `null` = never.
    pub expires_at: Option<String>,
    /// The full key in the answer to create only; elsewhere `<first 4>…<last 4>`.
    pub access_key: String,
    /// Admin keys manage keys; inference keys call models. Read-only here.
    pub is_admin: bool,
    pub global_limits: AixplainLimits,
    pub assets_limits: Vec<AixplainAssetLimits>,
}

/// Rate limits as aiXplain writes them. `0` = no limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct AixplainLimits {
    /// Tokens per minute.
    pub tpm: u64,
    /// Tokens per day.
    pub tpd: u64,
    /// Requests per minute.
    pub rpm: u64,
    /// Requests per day.
    pub rpd: u64,
    /// Which tokens the token limits count: `input`, `output` or `total`.
    #[serde(rename = "tokenType")]
    pub token_type: TokenType,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AixplainAssetLimits {
    pub tpm: u64,
    pub tpd: u64,
    pub rpm: u64,
    pub rpd: u64,
    #[serde(rename = "tokenType")]
    pub token_type: TokenType,
    /// The model (as clients name it in inference requests).
    #[serde(rename = "assetId")]
    pub asset_id: String,
}

impl AixplainLimits {
    fn of(limits: &Limits) -> Self {
        AixplainLimits {
            tpm: limits.tpm.unwrap_or(0),
            tpd: limits.tpd.unwrap_or(0),
            rpm: limits.rpm.unwrap_or(0),
            rpd: limits.rpd.unwrap_or(0),
            token_type: limits.token_type,
        }
    }
}

/// Which form of the secret an answer carries.
pub enum Secret<'a> {
    /// The answer to create: the full key, shown this once.
    Full(&'a str),
    /// Every other answer.
    Partial,
}

impl AixplainKey {
    pub fn new(key: &ApiKey, secret: Secret<'_>) -> Self {
        AixplainKey {
            id: key.id,
            name: key.name.clone(),
            budget: key
                .budget
                .as_ref()
                .map(|b| b.limit_usd.to_f64().unwrap_or(f64::MAX)),
            expires_at: key.expires_at.map(format_timestamp),
            access_key: match secret {
                Secret::Full(full) => full.to_string(),
                Secret::Partial => partial_access_key(&key.partial_key),
            },
            is_admin: key.kind == KeyKind::Admin,
            global_limits: AixplainLimits::of(&key.limits),
            assets_limits: key
                .model_limits
                .iter()
                .map(|m| {
                    let limits = AixplainLimits::of(&m.limits());
                    AixplainAssetLimits {
                        tpm: limits.tpm,
                        tpd: limits.tpd,
                        rpm: limits.rpm,
                        rpd: limits.rpd,
                        token_type: limits.token_type,
                        asset_id: m.model.clone(),
                    }
                })
                .collect(),
        }
    }
}

/// `<first 4>…<last 4>` of the key, from the stored partial form `kg_<lookup>…<last 4>`.
/// The SDK's `get_by_access_key(full)` matches keys whose `accessKey` starts with the first
/// 4 and ends with the last 4 characters of `full`; this form does exactly that.
pub fn partial_access_key(partial_key: &str) -> String {
    let chars: Vec<char> = partial_key.chars().collect();
    if chars.len() < 9 {
        return partial_key.to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The SDK's own timestamp format (`%Y-%m-%dT%H:%M:%S.%fZ`), so a datetime the user set
/// reads back as the same string.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One entry of the usage-limits answers (wire §4): today's (UTC) usage and daily limits,
/// for the key as a whole (no `assetId`) or for one model.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AixplainUsageLimit {
    /// Requests since 00:00 UTC today.
    pub request_count: u64,
    /// Requests per day allowed (`rpd`); 0 = no limit.
    pub request_count_limit: u64,
    /// Tokens since 00:00 UTC today, counted by the scope's `tokenType`.
    pub token_count: u64,
    /// Tokens per day allowed (`tpd`); 0 = no limit.
    pub token_count_limit: u64,
    /// The model; absent for the key's global entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
}

/// `{"statusCode", "message", "error"}`, e.g.
/// `{"statusCode": 404, "message": "API key not found", "error": "err.not_found"}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AixplainError {
    pub status_code: u16,
    pub message: String,
    /// `err.<code>`.
    pub error: String,
}

/// The answer of `GET /v2/models/{path}`: the model's id is its path.
#[derive(Debug, Serialize, ToSchema)]
pub struct AixplainModel {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_access_key_keeps_first_and_last_four() {
        assert_eq!(partial_access_key("kg_AbCdEfGhIjKl…wxyz"), "kg_A…wxyz");
    }
}
