//! The Venice wire shapes (shared/wire/venice.md §3–4) and their mapping to keygate's
//! domain types. Surface rules decided here (docs/compat.md, "Venice"):
//!
//! - `description` is the key's name; `apiKeyType` `INFERENCE`/`ADMIN` its kind.
//! - `consumptionLimit.usd` + `limitPeriod` is the key's budget (exact decimal; `EPOCH` =
//!   day, `MONTH` = month, `LIFETIME` = lifetime; no `limitPeriod` = `EPOCH`). `diem` and
//!   `vcu` are stored and echoed, not enforced. An update's `consumptionLimit` replaces the
//!   limits as a whole (`{}` removes them all).
//! - `expiresAt`: `""` = none (clears on update), `YYYY-MM-DD` = 00:00:00 UTC that day
//!   (what JavaScript's `new Date("YYYY-MM-DD")` means), or an ISO-8601 date-time (UTC when
//!   it has no offset).
//! - `ipAllowlist`: `[]` = any address (clears on update); at most 100 entries of at most
//!   64 characters; answered as canonical CIDRs.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use rust_decimal::{prelude::ToPrimitive, Decimal};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::VeniceError;
use crate::keys::{
    model::{Budget, BudgetPeriod, CompatFields},
    ApiKey, KeyKind,
};

/// At most this many `ipAllowlist` entries (Venice's limit, also keygate's).
pub const MAX_IP_ENTRIES: usize = 100;
/// Longest `ipAllowlist` entry (Venice's limit).
pub const MAX_IP_ENTRY_CHARS: usize = 64;
/// Largest `diem` / `vcu` limit accepted (same bound as a USD budget).
const MAX_UNITS: f64 = 1_000_000_000.0;

// ------------------------------------------------------------------------------------
// enums

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiKeyType {
    Inference,
    Admin,
}

impl From<ApiKeyType> for KeyKind {
    fn from(kind: ApiKeyType) -> Self {
        match kind {
            ApiKeyType::Inference => KeyKind::Inference,
            ApiKeyType::Admin => KeyKind::Admin,
        }
    }
}

pub fn key_type(kind: KeyKind) -> String {
    match kind {
        KeyKind::Inference => "INFERENCE",
        KeyKind::Admin => "ADMIN",
    }
    .to_string()
}

/// The period a consumption limit resets over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LimitPeriod {
    /// One UTC day (Venice's epoch).
    Epoch,
    Month,
    Lifetime,
}

impl From<LimitPeriod> for BudgetPeriod {
    fn from(period: LimitPeriod) -> Self {
        match period {
            LimitPeriod::Epoch => BudgetPeriod::Day,
            LimitPeriod::Month => BudgetPeriod::Month,
            LimitPeriod::Lifetime => BudgetPeriod::Lifetime,
        }
    }
}

impl From<BudgetPeriod> for LimitPeriod {
    fn from(period: BudgetPeriod) -> Self {
        match period {
            BudgetPeriod::Day => LimitPeriod::Epoch,
            BudgetPeriod::Month => LimitPeriod::Month,
            BudgetPeriod::Lifetime => LimitPeriod::Lifetime,
        }
    }
}

/// Stored and echoed; keygate has no model privacy tiers, so it is not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelPrivacy {
    All,
    PrivateText,
    PrivateOnly,
}

impl ModelPrivacy {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPrivacy::All => "ALL",
            ModelPrivacy::PrivateText => "PRIVATE_TEXT",
            ModelPrivacy::PrivateOnly => "PRIVATE_ONLY",
        }
    }
}

// ------------------------------------------------------------------------------------
// requests

/// `{"usd"?, "diem"?, "vcu"?}`, each a number ≥ 0 (or `null` = not set).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumptionLimitInput {
    /// USD per `limitPeriod`: the key's budget (exact decimal), enforced by the proxy.
    #[serde(default, deserialize_with = "optional_usd")]
    #[schema(value_type = Option<f64>)]
    pub usd: Option<Decimal>,
    /// Stored and echoed, not enforced (keygate has no DIEM currency).
    #[serde(default)]
    pub diem: Option<f64>,
    /// Legacy DIEM; stored and echoed, not enforced.
    #[serde(default)]
    pub vcu: Option<f64>,
}

fn optional_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    struct Usd(#[serde(with = "crate::money::usd")] Decimal);
    Ok(Option::<Usd>::deserialize(d)?.map(|Usd(amount)| amount))
}

/// `POST api_keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateApiKeyRequest {
    pub api_key_type: ApiKeyType,
    /// The key's name, 1 to 200 characters.
    pub description: String,
    #[serde(default)]
    pub consumption_limit: Option<ConsumptionLimitInput>,
    #[serde(default)]
    pub model_privacy: Option<ModelPrivacy>,
    /// Period of `consumptionLimit.usd`; default `EPOCH` (a UTC day).
    #[serde(default)]
    pub limit_period: Option<LimitPeriod>,
    /// `""` (none), `YYYY-MM-DD` (00:00 UTC that day) or ISO-8601.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// IPv4/IPv6 addresses and CIDRs; `[]` = any address.
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
}

/// `PATCH api_keys`: `id` plus the fields to change; absent (or `null`) = unchanged.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateApiKeyRequest {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `""` removes the expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Replaces the key's consumption limits as a whole; `{}` removes them.
    #[serde(default)]
    pub consumption_limit: Option<ConsumptionLimitInput>,
    #[serde(default)]
    pub model_privacy: Option<ModelPrivacy>,
    /// Changes the period of the key's USD limit (no effect on a key without one).
    #[serde(default)]
    pub limit_period: Option<LimitPeriod>,
    /// Replaces the allowlist; `[]` removes the restriction.
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
}

/// `POST api_keys/generate_web3_key`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Web3CreateApiKeyRequest {
    /// Must be `INFERENCE`: admin keys are never made through the Web3 flow.
    pub api_key_type: ApiKeyType,
    /// The wallet, `0x` + 40 hex digits.
    pub address: String,
    /// `personal_sign` (EIP-191) signature of `token` by `address`: 65 bytes hex.
    pub signature: String,
    /// From `GET api_keys/generate_web3_key`.
    pub token: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub consumption_limit: Option<ConsumptionLimitInput>,
    #[serde(default)]
    pub model_privacy: Option<ModelPrivacy>,
    #[serde(default)]
    pub limit_period: Option<LimitPeriod>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
}

// ------------------------------------------------------------------------------------
// request → domain

/// The parts of a consumption limit keygate stores: the budget and the compat units.
pub struct Limit {
    pub budget: Option<Budget>,
    pub diem: Option<f64>,
    pub vcu: Option<f64>,
}

impl ConsumptionLimitInput {
    /// Checks the units and builds the budget with `period`.
    pub fn into_limit(self, period: BudgetPeriod) -> Result<Limit, VeniceError> {
        for (field, value) in [("diem", self.diem), ("vcu", self.vcu)] {
            if let Some(value) = value {
                if !(value.is_finite() && (0.0..=MAX_UNITS).contains(&value)) {
                    return Err(VeniceError::invalid(
                        format!("consumptionLimit.{field}"),
                        format!("must be a number between 0 and {MAX_UNITS}"),
                    ));
                }
            }
        }
        Ok(Limit {
            budget: self.usd.map(|limit_usd| Budget { limit_usd, period }),
            diem: self.diem,
            vcu: self.vcu,
        })
    }
}

/// `expiresAt` → `None` for `""` (no expiry), else the instant.
pub fn parse_expires_at(raw: &str) -> Result<Option<DateTime<Utc>>, VeniceError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let parsed = if text.len() == 10 {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|at| at.and_utc())
    } else {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .or_else(|| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| {
                [
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M:%S%.f",
                    "%Y-%m-%dT%H:%M",
                    "%Y-%m-%d %H:%M",
                ]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|at| at.and_utc())
            })
    };
    parsed.map(Some).ok_or_else(|| {
        VeniceError::invalid(
            "expiresAt",
            format!(
                "`{}` is not a date: use \"\" (no expiry), YYYY-MM-DD or an ISO-8601 date-time",
                text.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// `ipAllowlist` → `None` for `[]` (any address), else the entries for the keys service
/// (which parses them into canonical CIDRs and names a bad one).
pub fn ip_allowlist(entries: Vec<String>) -> Result<Option<Vec<String>>, VeniceError> {
    if entries.len() > MAX_IP_ENTRIES {
        return Err(VeniceError::invalid(
            "ipAllowlist",
            format!("at most {MAX_IP_ENTRIES} entries"),
        ));
    }
    if let Some(i) = entries
        .iter()
        .position(|e| e.chars().count() > MAX_IP_ENTRY_CHARS)
    {
        return Err(VeniceError::invalid(
            format!("ipAllowlist[{i}]"),
            format!("must be at most {MAX_IP_ENTRY_CHARS} characters"),
        ));
    }
    Ok((!entries.is_empty()).then_some(entries))
}

/// The Venice name of a field the keys service named (`ip_allowlist[2]` →
/// `ipAllowlist[2]`).
pub fn wire_field(field: &str) -> String {
    for (native, venice) in [
        ("budget.limit_usd", "consumptionLimit.usd"),
        ("budget", "consumptionLimit"),
        ("ip_allowlist", "ipAllowlist"),
        ("expires_at", "expiresAt"),
        ("name", "description"),
        ("kind", "apiKeyType"),
    ] {
        if let Some(rest) = field.strip_prefix(native) {
            if rest.is_empty() || rest.starts_with(['.', '[']) {
                return format!("{venice}{rest}");
            }
        }
    }
    field.to_string()
}

// ------------------------------------------------------------------------------------
// responses

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

/// A key's spend: the trailing seven days, and the current limit period (the budget's
/// period, or the current UTC day for a key without a USD limit).
#[derive(Debug, Clone)]
pub struct KeySpend {
    pub trailing_seven_days: Decimal,
    pub current_period: Decimal,
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
    #[schema(value_type = Vec<Object>)]
    pub path: Vec<serde_json::Value>,
    pub message: String,
}

/// `consumptionLimit.usd` → `["consumptionLimit", "usd"]`, `ipAllowlist[2]` →
/// `["ipAllowlist", 2]`.
pub fn issue_path(field: &str) -> Vec<serde_json::Value> {
    let mut path = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            path.push(serde_json::Value::from(name));
        }
        for index in pieces {
            let index = index.trim_end_matches(']');
            path.push(match index.parse::<u64>() {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => serde_json::Value::from(index),
            });
        }
    }
    path
}

/// The compat fields after applying a model privacy and/or a consumption limit's units.
pub fn compat_with(
    current: &CompatFields,
    privacy: Option<ModelPrivacy>,
    units: Option<(Option<f64>, Option<f64>)>,
) -> CompatFields {
    let mut compat = current.clone();
    if let Some(privacy) = privacy {
        compat.model_privacy = Some(privacy.as_str().to_string());
    }
    if let Some((diem, vcu)) = units {
        compat.diem = diem;
        compat.vcu = vcu;
    }
    compat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expires_at("").unwrap(), None);
        assert_eq!(parse_expires_at("  ").unwrap(), None);
        let day = parse_expires_at("2031-02-03").unwrap().unwrap();
        assert_eq!(timestamp(day), "2031-02-03T00:00:00.000Z");
        for (text, expected) in [
            ("2031-02-03T04:05:06Z", "2031-02-03T04:05:06.000Z"),
            ("2031-02-03T04:05:06.789Z", "2031-02-03T04:05:06.789Z"),
            ("2031-02-03T04:05:06+02:00", "2031-02-03T02:05:06.000Z"),
            ("2031-02-03T04:05:06+0200", "2031-02-03T02:05:06.000Z"),
            ("2031-02-03T04:05:06", "2031-02-03T04:05:06.000Z"),
            ("2031-02-03 04:05", "2031-02-03T04:05:00.000Z"),
        ] {
            let at = parse_expires_at(text).unwrap().unwrap();
            assert_eq!(timestamp(at), expected, "{text}");
        }
        for bad in ["tomorrow", "2031-13-01", "2031-02-30", "31-02-03", "2031-02-03T25:00:00Z"] {
            assert!(parse_expires_at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_and_paths() {
        assert_eq!(wire_field("ip_allowlist[3]"), "ipAllowlist[3]");
        assert_eq!(wire_field("budget.limit_usd"), "consumptionLimit.usd");
        assert_eq!(wire_field("name"), "description");
        assert_eq!(wire_field("names"), "names");
        assert_eq!(
            issue_path("ipAllowlist[3]"),
            vec![serde_json::json!("ipAllowlist"), serde_json::json!(3)]
        );
        assert_eq!(
            issue_path("consumptionLimit.usd"),
            vec![serde_json::json!("consumptionLimit"), serde_json::json!("usd")]
        );
    }

    #[test]
    fn allowlist_bounds() {
        assert_eq!(ip_allowlist(vec![]).unwrap(), None);
        assert!(ip_allowlist(vec!["1.2.3.4".into(); 101]).is_err());
        assert!(ip_allowlist(vec!["1".repeat(65)]).is_err());
        assert_eq!(
            ip_allowlist(vec!["1.2.3.4".into()]).unwrap(),
            Some(vec!["1.2.3.4".to_string()])
        );
    }
}
