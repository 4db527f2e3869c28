//! What callers send to create or change a key, and the validation every surface shares
//! (DESIGN §3 "Validation"). Serde types without HTTP: the native admin API uses them as
//! its bodies, the compatibility surfaces build them from their own wire shapes.

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::{
    model::{Budget, CompatFields, KeyKind, Limits, ModelLimits},
    KeyError,
};

pub const MAX_NAME_CHARS: usize = 200;
/// Rust's `char::is_whitespace`, what `str::trim` removes (for [`NAME_PATTERN`]).
macro_rules! white_space {
    () => {
        r"\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}
/// Rust's `char::is_control`, Unicode category Cc (for [`NAME_PATTERN`]).
macro_rules! control {
    () => {
        r"\u0000-\u001f\u007f-\u009f"
    };
}
/// Bidi controls and zero-width characters, refused in names and model names (for
/// [`NAME_PATTERN`] and [`MODEL_NAME_PATTERN`]).
macro_rules! invisible {
    () => {
        r"\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff"
    };
}
/// [`validate_name`] as a JSON Schema `pattern` (ECMA-262, read alike by Python's `re` and
/// Rust's `regex`) for the OpenAPI document: once white space is trimmed from both ends, 1
/// to 200 (= 1 + 198 + 1) characters, none of them a control or invisible formatting
/// character. Kept beside the rule it spells; `tests/api/openapi.rs` checks the two agree.
#[rustfmt::skip]
pub const NAME_PATTERN: &str = concat!(
    "^[", white_space!(), "]*",
    "[^", white_space!(), control!(), invisible!(), "]",
    "(?:[^", control!(), invisible!(), "]{0,198}",
    "[^", white_space!(), control!(), invisible!(), "])?",
    "[", white_space!(), "]*$",
);
/// A model name (`allowed_models`, `model_limits[].model`) as a `pattern`: not only white
/// space, no control or invisible formatting character (the document adds `maxLength` 200).
#[rustfmt::skip]
pub const MODEL_NAME_PATTERN: &str = concat!(
    "^[^", control!(), invisible!(), "]*",
    "[^", white_space!(), control!(), invisible!(), "]",
    "[^", control!(), invisible!(), "]*$",
);
/// Larger limits are certainly typos; they would also overflow nothing, but say so early.
pub const MAX_LIMIT: u64 = 1_000_000_000_000_000;
pub const MAX_MODELS: usize = 1000;
pub const MAX_IP_ENTRIES: usize = 100;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_PARALLEL: u32 = 1_000_000;

/// Body of a key creation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// 1 to 200 characters; need not be unique.
    pub name: String,
    /// The workspace to create the key in (default: the caller's own). Only the operator
    /// (an admin key of the `default` workspace) may name another; any other is 404.
    #[serde(default)]
    pub workspace_id: Option<uuid::Uuid>,
    /// `inference` (default) or `admin`.
    #[serde(default)]
    pub kind: Option<KeyKind>,
    /// RFC 3339; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub model_limits: Option<Vec<ModelLimits>>,
    /// Models this key may call; absent = all.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Free-form JSON object, at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Cap on in-flight requests.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// IPv4/IPv6 addresses and CIDRs the key may be used from; stored as CIDRs.
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
    /// Budget fractions (e.g. 0.5, 0.8, 1.0) at which the workspace webhook is called.
    #[serde(default)]
    pub alert_thresholds: Option<Vec<f64>>,
    /// Compatibility fields (Venice `modelPrivacy`, `diem`, `vcu`), stored and echoed.
    #[serde(default, skip)]
    pub compat: CompatFields,
    /// Set by the Web3 flow only.
    #[serde(default, skip)]
    pub wallet_address: Option<String>,
    /// Lower `max_tokens` to what the token limits or budget have left instead of
    /// refusing (the answer says so in `x-keygate-max-tokens-fitted`). Default false.
    #[serde(default)]
    pub fit_max_tokens: Option<bool>,
}

/// Body of a key update: an absent field stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub kind: Option<KeyKind>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Budget>)]
    pub budget: Option<Option<Budget>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Limits>)]
    pub limits: Option<Option<Limits>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<ModelLimits>>)]
    pub model_limits: Option<Option<Vec<ModelLimits>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Map<String, serde_json::Value>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub max_parallel: Option<Option<u32>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub ip_allowlist: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<f64>>)]
    pub alert_thresholds: Option<Option<Vec<f64>>>,
    #[serde(default, skip)]
    pub compat: Option<CompatFields>,
    /// `false` turns fitting off again.
    #[serde(default, deserialize_with = "not_null")]
    pub fit_max_tokens: Option<bool>,
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent (with `#[serde(default)]`).
pub(crate) fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// For fields that cannot be cleared (`name`, `kind`): an explicit `null` is refused
/// rather than silently ignored.
pub(crate) fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "cannot be null (this field cannot be cleared)",
        )),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub fn validate_name(name: &str) -> Result<String, KeyError> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 {
        return Err(invalid("name", "must not be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters (got {chars})"),
        ));
    }
    check_visible("name", trimmed)?;
    Ok(trimmed.to_string())
}

/// Characters that change how text around them is shown without being seen: bidi
/// embeddings, overrides, isolates and marks (an `exe` can read as `pdf`), and zero-width
/// characters (`ad\u{200b}min` looks like `admin`). Refused in names rather than stripped,
/// so that what is stored is what the caller sent (docs/decisions.md "Names").
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Refuses control characters (NUL, escapes, DEL…) and invisible formatting characters in
/// a name or model name, naming the first one found.
fn check_visible(field: &str, text: &str) -> Result<(), KeyError> {
    let Some((at, c)) = text
        .chars()
        .enumerate()
        .find(|&(_, c)| c.is_control() || is_invisible_format(c))
    else {
        return Ok(());
    };
    let what = if c.is_control() {
        "control characters"
    } else {
        "invisible formatting characters (bidi controls or zero-width characters)"
    };
    Err(invalid(
        field,
        format!(
            "must not contain {what}; found U+{:04X} at character {}",
            u32::from(c),
            at + 1
        ),
    ))
}

fn check_limit_values(field: &str, limits: &Limits) -> Result<(), KeyError> {
    for (name, value) in [
        ("rpm", limits.rpm),
        ("rpd", limits.rpd),
        ("tpm", limits.tpm),
        ("tpd", limits.tpd),
    ] {
        if value.is_some_and(|v| v > MAX_LIMIT) {
            return Err(invalid(
                format!("{field}.{name}"),
                format!("must be at most {MAX_LIMIT}"),
            ));
        }
    }
    Ok(())
}

pub fn validate_limits(limits: &Limits) -> Result<(), KeyError> {
    check_limit_values("limits", limits)
}

pub fn validate_model_limits(model_limits: &[ModelLimits]) -> Result<(), KeyError> {
    if model_limits.len() > MAX_MODELS {
        return Err(invalid(
            "model_limits",
            format!("at most {MAX_MODELS} entries"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in model_limits.iter().enumerate() {
        let field = format!("model_limits[{i}]");
        validate_model_name(&format!("{field}.model"), &entry.model)?;
        if !seen.insert(entry.model.as_str()) {
            return Err(invalid(
                format!("{field}.model"),
                format!("`{}` is listed twice", entry.model),
            ));
        }
        check_limit_values(&field, &entry.limits())?;
    }
    Ok(())
}

/// A model name as keys name models (`allowed_models`, `model_limits[].model`) and as the
/// aiXplain surface looks one up: 1 to 200 characters, all of them visible.
pub fn validate_model_name(field: &str, model: &str) -> Result<(), KeyError> {
    if model.trim().is_empty() || model.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    check_visible(field, model)
}

pub fn validate_allowed_models(models: &[String]) -> Result<(), KeyError> {
    if models.len() > MAX_MODELS {
        return Err(invalid(
            "allowed_models",
            format!("at most {MAX_MODELS} entries"),
        ));
    }
    for (i, model) in models.iter().enumerate() {
        validate_model_name(&format!("allowed_models[{i}]"), model)?;
    }
    Ok(())
}

pub fn validate_budget(budget: &Budget) -> Result<(), KeyError> {
    if budget.limit_usd > rust_decimal::Decimal::from(1_000_000_000_i64) {
        return Err(invalid("budget.limit_usd", "must be at most 1000000000"));
    }
    Ok(())
}

pub fn validate_metadata(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), KeyError> {
    let size = serde_json::to_vec(metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

pub fn validate_max_parallel(value: u32) -> Result<(), KeyError> {
    if value > MAX_PARALLEL {
        return Err(invalid(
            "max_parallel",
            format!("must be at most {MAX_PARALLEL}"),
        ));
    }
    Ok(())
}

/// Parses addresses and CIDRs into canonical networks (`1.2.3.4` → `1.2.3.4/32`,
/// `10.1.2.3/8` → `10.0.0.0/8`), dropping duplicates.
pub fn parse_ip_allowlist(entries: &[String]) -> Result<Vec<IpNet>, KeyError> {
    if entries.len() > MAX_IP_ENTRIES {
        return Err(invalid(
            "ip_allowlist",
            format!("at most {MAX_IP_ENTRIES} entries"),
        ));
    }
    let mut nets: Vec<IpNet> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.trim();
        let net = entry
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                invalid(
                    format!("ip_allowlist[{i}]"),
                    format!("`{entry}` is not an IP address or CIDR"),
                )
            })?;
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

pub fn validate_alert_thresholds(thresholds: &[f64]) -> Result<Vec<f64>, KeyError> {
    if thresholds.len() > 10 {
        return Err(invalid("alert_thresholds", "at most 10 entries"));
    }
    let mut sorted = Vec::with_capacity(thresholds.len());
    for (i, &t) in thresholds.iter().enumerate() {
        if !(t.is_finite() && t > 0.0 && t <= 10.0) {
            return Err(invalid(
                format!("alert_thresholds[{i}]"),
                "must be a fraction of the budget in (0, 10]",
            ));
        }
        sorted.push(t);
    }
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  ci bot ").unwrap(), "ci bot");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(200)).is_ok());
        assert!(validate_name(&"x".repeat(201)).is_err());
        assert!(validate_name(&"é".repeat(200)).is_ok());
        assert!(validate_name("a\u{0}b").is_err());
        assert!(validate_name("Zürich · 東京").is_ok());
    }

    #[test]
    fn invisible_and_control_characters_are_named() {
        for (name, shown) in [
            ("a\u{202e}b", "U+202E at character 2"),
            ("\u{200b}admin", "U+200B at character 1"),
            ("ab\u{feff}", "U+FEFF at character 3"),
            ("x\u{2066}y\u{2069}", "U+2066 at character 2"),
        ] {
            match validate_name(name) {
                Err(KeyError::Invalid { field, message }) => {
                    assert_eq!(field, "name");
                    assert!(message.contains("invisible"), "{message}");
                    assert!(message.contains(shown), "{message}");
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        match validate_allowed_models(&["ok".into(), "gpt\u{0}".into()]) {
            Err(KeyError::Invalid { field, message }) => {
                assert_eq!(field, "allowed_models[1]");
                assert!(message.contains("control characters"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ip_entries_become_canonical_cidrs() {
        let nets = parse_ip_allowlist(&[
            "1.2.3.4".into(),
            "10.1.2.3/8".into(),
            "::1".into(),
            "1.2.3.4/32".into(),
        ])
        .unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["1.2.3.4/32", "10.0.0.0/8", "::1/128"]);
        match parse_ip_allowlist(&["1.2.3.4".into(), "banana".into()]) {
            Err(KeyError::Invalid { field, .. }) => assert_eq!(field, "ip_allowlist[1]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_model_limits_are_named() {
        let entry = ModelLimits {
            model: "m".into(),
            rpm: Some(1),
            rpd: None,
            tpm: None,
            tpd: None,
            token_type: Default::default(),
        };
        match validate_model_limits(&[entry.clone(), entry]) {
            Err(KeyError::Invalid { field, .. }) => assert_eq!(field, "model_limits[1].model"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let patch: KeyPatch = serde_json::from_str(r#"{"budget": null}"#).unwrap();
        assert_eq!(patch.budget, Some(None));
        assert!(patch.limits.is_none());
        let patch: KeyPatch = serde_json::from_str(r#"{"limits": {"rpm": 5}}"#).unwrap();
        assert_eq!(patch.limits.unwrap().unwrap().rpm, Some(5));
    }
}
