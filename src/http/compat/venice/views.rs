//! The Venice response shapes (shared/wire/venice.md §4): envelopes, the key views and
//! the error body. Conversions from domain types only. Timestamps are written as
//! JavaScript's `toISOString` does (`YYYY-MM-DDTHH:MM:SS.mmmZ`), amounts as JSON numbers.

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::{prelude::ToPrimitive, Decimal};
use serde::Serialize;
use utoipa::ToSchema;

use super::wire::{key_type, LimitPeriod};
use crate::{keys::ApiKey, usage::KeySpend};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as JavaScript's `toISOString` writes it.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn usd_number(amount: Decimal) -> f64 {
    amount.to_f64().unwrap_or(0.0)
}

/// `{"usd", "diem", "vcu"}`, each a number or `null` (not set).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConsumptionLimits {
    pub usd: Option<f64>,
    pub diem: Option<f64>,
    pub vcu: Option<f64>,
}

impl ConsumptionLimits {
    pub fn of(key: &ApiKey) -> Self {
        ConsumptionLimits {
            usd: key.budget.as_ref().map(|b| usd_number(b.limit_usd)),
            diem: key.compat.diem,
            vcu: key.compat.vcu,
        }
    }
}

/// Spend in USD (keygate's real usage); `diem` and `vcu` are always 0 here.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageAmounts {
    pub usd: f64,
    pub diem: f64,
    pub vcu: f64,
}

impl UsageAmounts {
    pub fn usd(amount: Decimal) -> Self {
        UsageAmounts {
            usd: usd_number(amount),
            diem: 0.0,
            vcu: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyUsage {
    pub trailing_seven_days: UsageAmounts,
}

/// A key as list, retrieve and update answer it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub id: String,
    /// `INFERENCE` or `ADMIN`.
    pub api_key_type: String,
    pub description: String,
    #[serde(rename = "last6Chars")]
    pub last6_chars: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    /// Plural on this shape (Venice's naming).
    pub consumption_limits: ConsumptionLimits,
    pub model_privacy: Option<String>,
    /// `EPOCH`, `MONTH` or `LIFETIME`; `null` without a USD limit.
    pub limit_period: Option<LimitPeriod>,
    /// Canonical CIDRs; `[]` = any address.
    pub ip_allowlist: Vec<String>,
    pub usage: ApiKeyUsage,
    pub current_period_usage: UsageAmounts,
}

fn ip_allowlist_view(key: &ApiKey) -> Vec<String> {
    key.ip_allowlist
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect()
}

impl ApiKeyView {
    pub fn new(key: &ApiKey, spend: &KeySpend) -> Self {
        ApiKeyView {
            id: key.id.to_string(),
            api_key_type: key_type(key.kind),
            description: key.name.clone(),
            last6_chars: key.last6.clone(),
            created_at: timestamp(key.created_at),
            expires_at: key.expires_at.map(timestamp),
            last_used_at: key.last_used_at.map(timestamp),
            consumption_limits: ConsumptionLimits::of(key),
            model_privacy: key.compat.model_privacy.clone(),
            limit_period: key.budget.as_ref().map(|b| b.period.into()),
            ip_allowlist: ip_allowlist_view(key),
            usage: ApiKeyUsage {
                trailing_seven_days: UsageAmounts::usd(spend.trailing_seven_days),
            },
            current_period_usage: UsageAmounts::usd(spend.current_period),
        }
    }
}

/// The answer to create (and Web3 create): the key with its full secret, shown once.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub id: String,
    /// The full key. It is not stored and cannot be shown again.
    pub api_key: String,
    pub api_key_type: String,
    pub description: String,
    pub expires_at: Option<String>,
    /// Singular on this shape (Venice's naming); always present.
    pub consumption_limit: ConsumptionLimits,
    pub limit_period: Option<LimitPeriod>,
    pub ip_allowlist: Vec<String>,
    pub model_privacy: Option<String>,
    pub created_at: String,
    #[serde(rename = "last6Chars")]
    pub last6_chars: String,
}

impl CreatedApiKey {
    pub fn new(created: &crate::keys::KeyWithSecret) -> Self {
        let key = &created.key;
        CreatedApiKey {
            id: key.id.to_string(),
            api_key: created.secret.expose().to_string(),
            api_key_type: key_type(key.kind),
            description: key.name.clone(),
            expires_at: key.expires_at.map(timestamp),
            consumption_limit: ConsumptionLimits::of(key),
            limit_period: key.budget.as_ref().map(|b| b.period.into()),
            ip_allowlist: ip_allowlist_view(key),
            model_privacy: key.compat.model_privacy.clone(),
            created_at: timestamp(key.created_at),
            last6_chars: key.last6.clone(),
        }
    }
}

/// `{"data": …}`
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// `{"object": "list", "data": […]}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ListOf<T> {
    pub object: &'static str,
    pub data: Vec<T>,
}

impl<T> ListOf<T> {
    pub fn new(data: Vec<T>) -> Self {
        ListOf {
            object: "list",
            data,
        }
    }
}

/// `{"success": true, "data": …}` (create, update, Web3).
#[derive(Debug, Serialize, ToSchema)]
pub struct Succeeded<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Succeeded<T> {
    pub fn new(data: T) -> Self {
        Succeeded {
            success: true,
            data,
        }
    }
}

/// `{"success": true}` (delete).
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

/// Web3 challenge: `{"token"}` (plus its expiry, which the SDK ignores).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Web3Token {
    /// Sign this exact string with `personal_sign`.
    pub token: String,
    pub expires_at: String,
}

/// `{"error": message, "code": CODE, "issues"?: [{"path", "message"}]}`
#[derive(Debug, Serialize, ToSchema)]
pub struct VeniceErrorBody {
    pub error: String,
    pub code: String,
    /// Zod-style: the fields at fault, for 400s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issues: Option<Vec<Issue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Issue {
    pub code: &'static str,
    /// Field path, e.g. `["ipAllowlist", 2]`.
    pub path: Vec<PathSegment>,
    pub message: String,
}

/// One step of an issue's path: a field name or a list index (Zod's `(string | number)[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PathSegment {
    Field(String),
    Index(u64),
}

/// `consumptionLimit.usd` → `["consumptionLimit", "usd"]`, `ipAllowlist[2]` →
/// `["ipAllowlist", 2]`.
pub fn issue_path(field: &str) -> Vec<PathSegment> {
    let mut path = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            path.push(PathSegment::Field(name.to_string()));
        }
        for index in pieces {
            let index = index.trim_end_matches(']');
            path.push(match index.parse::<u64>() {
                Ok(i) => PathSegment::Index(i),
                Err(_) => PathSegment::Field(index.to_string()),
            });
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_paths() {
        let json = |field: &str| serde_json::to_value(issue_path(field)).unwrap();
        assert_eq!(
            json("ipAllowlist[3]"),
            serde_json::json!(["ipAllowlist", 3])
        );
        assert_eq!(
            json("consumptionLimit.usd"),
            serde_json::json!(["consumptionLimit", "usd"])
        );
        assert_eq!(timestamp(DateTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
