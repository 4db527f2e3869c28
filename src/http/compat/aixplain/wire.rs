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

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::{prelude::ToPrimitive, Decimal};
use std::{fmt, marker::PhantomData};

use serde::{
    de::{value::MapAccessDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    error::ApiError,
    keys::{
        model::{Budget, BudgetPeriod, Limits, ModelLimits, TokenType},
        ApiKey, KeyKind,
    },
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

/// `expiresAt` as the SDK sends it (a `datetime` becomes `…%.6fZ`; a string passes
/// through): RFC 3339 / ISO 8601 with a zone, a date-time without one (UTC), or a date
/// (midnight UTC).
pub fn parse_timestamp(raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let text = raw.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(at.and_utc());
        }
    }
    if let Some(at) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(at.and_utc());
    }
    Err(ApiError::invalid_field(
        "expiresAt",
        format!(
            "`{}` is not a timestamp (expected ISO 8601, e.g. 2030-01-02T03:04:05.000000Z)",
            text.chars().take(64).collect::<String>()
        ),
    ))
}

/// Body of POST (create) and PUT (update) `sdk/api-keys` (wire §3). On update an absent
/// field stays as it is and `null` clears it (`name` cannot be cleared).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AixplainSaveRequest {
    /// Update only: must be the id in the path.
    #[serde(default)]
    pub id: Option<String>,
    /// 1 to 200 characters; need not be unique (the SDK matches by name itself).
    #[serde(default)]
    pub name: Option<String>,
    /// USD, ≥ 0; `null` = no budget. New budgets are lifetime budgets.
    #[serde(default, deserialize_with = "nullable_usd")]
    #[schema(value_type = Option<f64>)]
    pub budget: Option<Option<Decimal>>,
    /// ISO 8601; must be in the future on create. `null` = never.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable_object")]
    #[schema(value_type = Option<AixplainLimitsInput>)]
    pub global_limits: Option<Option<AixplainLimitsInput>>,
    /// Per-model limits; replaces the key's whole list.
    #[serde(default, deserialize_with = "nullable_objects")]
    #[schema(value_type = Option<Vec<AixplainAssetLimitsInput>>)]
    pub assets_limits: Option<Option<Vec<AixplainAssetLimitsInput>>>,
    /// Read-only: accepted only with the key's current value (`false` on create).
    #[serde(default)]
    pub is_admin: Option<bool>,
}

/// Limits as the SDK sends them; `0` or `null` = no limit.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AixplainLimitsInput {
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub tpd: Option<u64>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub rpd: Option<u64>,
    /// `input`, `output` or `total` (any case); `null` = `total`.
    #[serde(default, rename = "tokenType")]
    pub token_type: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AixplainAssetLimitsInput {
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub tpd: Option<u64>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub rpd: Option<u64>,
    #[serde(default, rename = "tokenType")]
    pub token_type: Option<String>,
    /// The model these limits apply to (required).
    #[serde(default, rename = "assetId")]
    pub asset_id: Option<String>,
}

/// `Some(None)` for an explicit `null`, `None` when absent (with `#[serde(default)]`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A struct read only from a JSON object: serde's derive would also read one from an array
/// (fields by position), so `"globalLimits": [1]` would pass as `{"tpm": 1}`.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectOnly(PhantomData)).map(Obj)
    }
}

fn nullable_object<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Obj<T>>::deserialize(d).map(|o| Some(o.map(|Obj(v)| v)))
}

fn nullable_objects<'de, D, T>(d: D) -> Result<Option<Option<Vec<T>>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<Obj<T>>>::deserialize(d)
        .map(|o| Some(o.map(|items| items.into_iter().map(|Obj(v)| v).collect())))
}

#[derive(Deserialize)]
struct Usd(#[serde(deserialize_with = "crate::money::usd::deserialize")] Decimal);

fn nullable_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Decimal>>, D::Error> {
    Option::<Usd>::deserialize(d).map(|usd| Some(usd.map(|u| u.0)))
}

fn set(value: Option<u64>) -> Option<u64> {
    value.filter(|&v| v > 0)
}

fn token_type(raw: Option<&str>, field: &str) -> Result<TokenType, ApiError> {
    match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(TokenType::Total),
        Some("input") => Ok(TokenType::Input),
        Some("output") => Ok(TokenType::Output),
        Some("total") => Ok(TokenType::Total),
        Some(_) => Err(ApiError::invalid_field(
            field,
            "must be `input`, `output`, `total` or null",
        )),
    }
}

impl AixplainLimitsInput {
    pub fn to_limits(&self) -> Result<Limits, ApiError> {
        Ok(Limits {
            rpm: set(self.rpm),
            rpd: set(self.rpd),
            tpm: set(self.tpm),
            tpd: set(self.tpd),
            token_type: token_type(self.token_type.as_deref(), "globalLimits.tokenType")?,
        })
    }
}

pub fn to_model_limits(entries: &[AixplainAssetLimitsInput]) -> Result<Vec<ModelLimits>, ApiError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let model = entry
                .asset_id
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        format!("assetsLimits[{i}].assetId"),
                        "every asset limit needs the model it applies to",
                    )
                })?;
            Ok(ModelLimits {
                model: model.to_string(),
                rpm: set(entry.rpm),
                rpd: set(entry.rpd),
                tpm: set(entry.tpm),
                tpd: set(entry.tpd),
                token_type: token_type(
                    entry.token_type.as_deref(),
                    &format!("assetsLimits[{i}].tokenType"),
                )?,
            })
        })
        .collect()
}

/// A budget of `amount` USD; the period is the existing budget's, else lifetime.
pub fn budget(amount: Decimal, existing: Option<&Budget>) -> Budget {
    Budget {
        limit_usd: amount,
        period: existing.map_or(BudgetPeriod::Lifetime, |b| b.period),
    }
}

/// A keygate field name (from `KeyError::Invalid`) in the aiXplain wire's terms.
pub fn wire_field(native: &str) -> String {
    if let Some(rest) = native.strip_prefix("model_limits") {
        let rest = rest.replace(".model", ".assetId");
        return format!("assetsLimits{rest}");
    }
    if let Some(rest) = native.strip_prefix("limits.") {
        return format!("globalLimits.{rest}");
    }
    match native {
        "limits" => "globalLimits".into(),
        "expires_at" => "expiresAt".into(),
        "budget.limit_usd" | "budget.period" => "budget".into(),
        other => other.to_string(),
    }
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

    #[test]
    fn timestamps_round_trip_in_the_sdk_format() {
        let at = parse_timestamp("2030-01-02T03:04:05.000007Z").unwrap();
        assert_eq!(format_timestamp(at), "2030-01-02T03:04:05.000007Z");
        let at = parse_timestamp("2030-01-02T03:04:05.000Z").unwrap();
        assert_eq!(format_timestamp(at), "2030-01-02T03:04:05.000000Z");
        assert_eq!(
            format_timestamp(parse_timestamp("2030-01-02T03:04:05").unwrap()),
            "2030-01-02T03:04:05.000000Z"
        );
        assert_eq!(
            format_timestamp(parse_timestamp("2030-01-02").unwrap()),
            "2030-01-02T00:00:00.000000Z"
        );
        assert_eq!(
            format_timestamp(parse_timestamp("2030-01-02T05:04:05+02:00").unwrap()),
            "2030-01-02T03:04:05.000000Z"
        );
        assert!(parse_timestamp("tomorrow").is_err());
    }

    #[test]
    fn zero_means_not_set_and_token_type_is_case_insensitive() {
        let input = AixplainLimitsInput {
            tpm: Some(0),
            tpd: Some(5),
            rpm: None,
            rpd: Some(0),
            token_type: Some("INPUT".into()),
        };
        let limits = input.to_limits().unwrap();
        assert_eq!(limits.tpm, None);
        assert_eq!(limits.tpd, Some(5));
        assert_eq!(limits.rpd, None);
        assert_eq!(limits.token_type, TokenType::Input);
        let bad = AixplainLimitsInput {
            token_type: Some("tokens".into()),
            ..AixplainLimitsInput::default()
        };
        assert_eq!(
            bad.to_limits().unwrap_err().field.as_deref(),
            Some("globalLimits.tokenType")
        );
    }

    #[test]
    fn limits_are_read_from_objects_only() {
        let parse = |body: &str| {
            crate::http::extract::parse_json::<AixplainSaveRequest>(body.as_bytes())
                .map(|_| ())
                .unwrap_err()
                .field
        };
        assert_eq!(
            parse(r#"{"name":"a","globalLimits":[1]}"#).as_deref(),
            Some("globalLimits")
        );
        assert_eq!(
            parse(r#"{"name":"a","assetsLimits":[{"assetId":"m"},[1]]}"#).as_deref(),
            Some("assetsLimits[1]")
        );
        assert_eq!(
            parse(r#"{"name":"a","assetsLimits":[{"assetId":"m","rpm":-1}]}"#).as_deref(),
            Some("assetsLimits[0].rpm")
        );
        let ok: AixplainSaveRequest = crate::http::extract::parse_json(
            br#"{"name":"a","globalLimits":{"rpm":1},"assetsLimits":[{"assetId":"m"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.global_limits.flatten().and_then(|l| l.rpm), Some(1));
        assert_eq!(ok.assets_limits.flatten().map(|a| a.len()), Some(1));
    }

    #[test]
    fn native_fields_get_wire_names() {
        assert_eq!(
            wire_field("model_limits[1].model"),
            "assetsLimits[1].assetId"
        );
        assert_eq!(wire_field("model_limits[0].rpm"), "assetsLimits[0].rpm");
        assert_eq!(wire_field("model_limits"), "assetsLimits");
        assert_eq!(wire_field("limits.tpd"), "globalLimits.tpd");
        assert_eq!(wire_field("expires_at"), "expiresAt");
        assert_eq!(wire_field("budget.limit_usd"), "budget");
        assert_eq!(wire_field("name"), "name");
    }
}
