//! The bodies of POST and PUT `sdk/api-keys` (shared/wire/aixplain.md §3) and how they
//! become keygate's `NewKey` / `KeyPatch` parts (rules in the `wire` module's docs).

use std::{fmt, marker::PhantomData};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{
    de::{value::MapAccessDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    keys::model::{Budget, BudgetPeriod, Limits, ModelLimits, TokenType},
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::compat::aixplain::wire::format_timestamp;

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
