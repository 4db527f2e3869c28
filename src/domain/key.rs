//! The API-key domain types (DESIGN §3): plain data with validation; no I/O, no HTTP.

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What a key may be used for. Admin keys manage keys; inference keys call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Inference,
    Admin,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Inference => "inference",
            KeyKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inference" => Some(KeyKind::Inference),
            "admin" => Some(KeyKind::Admin),
            _ => None,
        }
    }
}

/// Derived from `revoked_at` and `expires_at`; never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Expired,
    Revoked,
}

/// Which tokens a token bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Input,
    Output,
    #[default]
    Total,
}

/// The window a budget resets over. Day and month reset at UTC calendar boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Lifetime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// USD, exact decimal (sent and returned as a JSON number or string).
    #[schema(value_type = f64, example = 25.0)]
    #[serde(with = "crate::money::usd")]
    pub limit_usd: Decimal,
    pub period: BudgetPeriod,
}

/// Rate limits of one scope (global, or one model). `None` means "no limit"; 0 blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub rpd: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub tpd: Option<u64>,
    #[serde(default)]
    pub token_type: TokenType,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.rpd.is_none() && self.tpm.is_none() && self.tpd.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    pub model: String,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub rpd: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub tpd: Option<u64>,
    #[serde(default)]
    pub token_type: TokenType,
}

impl ModelLimits {
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            rpd: self.rpd,
            tpm: self.tpm,
            tpd: self.tpd,
            token_type: self.token_type,
        }
    }
}

/// Fields kept only so the Venice / aiXplain compatibility surfaces can echo them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompatFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_privacy: Option<String>,
    /// Venice DIEM consumption limit: stored and echoed, not enforced (keygate has no DIEM currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diem: Option<f64>,
    /// Venice VCU consumption limit: stored and echoed, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcu: Option<f64>,
}

/// A stored API key, without any secret material.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub kind: KeyKind,
    /// `kg_<lookup>…<last4>`: enough to recognise a key, never enough to use it.
    pub partial_key: String,
    pub last6: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub allowed_models: Option<Vec<String>>,
    pub budget: Option<Budget>,
    pub limits: Limits,
    pub model_limits: Vec<ModelLimits>,
    pub max_parallel: Option<u32>,
    pub ip_allowlist: Option<Vec<IpNet>>,
    pub alert_thresholds: Option<Vec<f64>>,
    pub compat: CompatFields,
    pub wallet_address: Option<String>,
    /// Lower a completion's cap to what the token limits or budget have left instead of
    /// refusing the request (docs/decisions.md, "max_tokens fitted to what is left").
    pub fit_max_tokens: bool,
}

#[cfg(test)]
impl ApiKey {
    /// A live inference key named `name` in `workspace_id`, with no limits, budget or
    /// rules: the in-crate tests' fixture.
    pub(crate) fn for_tests(workspace_id: Uuid, name: &str) -> ApiKey {
        let now = crate::clock::now();
        ApiKey {
            id: Uuid::now_v7(),
            workspace_id,
            name: name.into(),
            kind: KeyKind::Inference,
            partial_key: "kg_test…abcd".into(),
            last6: "abcdef".into(),
            created_by: "test".into(),
            created_at: now,
            updated_at: now,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
            metadata: serde_json::Map::new(),
            allowed_models: None,
            budget: None,
            limits: Limits::default(),
            model_limits: Vec::new(),
            max_parallel: None,
            ip_allowlist: None,
            alert_thresholds: None,
            compat: CompatFields::default(),
            wallet_address: None,
            fit_max_tokens: false,
        }
    }
}

impl ApiKey {
    pub fn status_at(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}
