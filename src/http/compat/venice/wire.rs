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

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::VeniceError;
use crate::keys::{
    model::{Budget, BudgetPeriod, CompatFields},
    KeyKind,
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
    use crate::http::compat::venice::views::timestamp;

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
        for bad in [
            "tomorrow",
            "2031-13-01",
            "2031-02-30",
            "31-02-03",
            "2031-02-03T25:00:00Z",
        ] {
            assert!(parse_expires_at(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_and_paths() {
        assert_eq!(wire_field("ip_allowlist[3]"), "ipAllowlist[3]");
        assert_eq!(wire_field("budget.limit_usd"), "consumptionLimit.usd");
        assert_eq!(wire_field("name"), "description");
        assert_eq!(wire_field("names"), "names");
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
