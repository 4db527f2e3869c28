//! What callers send to create or change workspaces and members, and the checks every
//! surface shares. Serde types without HTTP: the native admin API uses them as its bodies,
//! the CLI builds them from its flags.

use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{
    keys::{
        input::{double_option, not_null},
        KeyError,
    },
    store::Role,
};

/// Shortest member password: long enough that argon2 is not the only defence.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest member password (argon2 takes any length; this bounds the work per sign-in).
pub const MAX_PASSWORD_CHARS: usize = 1024;
pub const MAX_USERNAME_CHARS: usize = 64;
/// A username as a JSON Schema `pattern`: it starts with a letter or digit, then letters,
/// digits and `.`, `_`, `@`, `-` (an e-mail address fits). Stored lower-case.
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$";
/// Largest key cap and credit balance accepted (larger ones are typos).
pub const MAX_KEY_CAP: i64 = 1_000_000;
pub const MAX_CREDITS_USD: i64 = 1_000_000_000;

/// A USD amount on the wire (a JSON number, read exactly).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Usd(#[serde(with = "crate::money::usd")] pub Decimal);

/// Body of a workspace creation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// 1 to 200 characters, unique among workspaces.
    pub name: String,
    /// Most live keys the workspace may hold. Absent: `keys.default_workspace_key_cap`
    /// (10 unless configured); `null`: no cap.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000)]
    pub key_cap: Option<Option<i64>>,
    /// Prepaid credits in USD (exact decimal); absent or `null`: not enforced.
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub credits_usd: Option<Usd>,
    /// Where budget alerts are POSTed: http(s), no credentials, and a public host unless
    /// `webhooks.allow_private`. Setting it issues a signing secret, shown once.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub webhook_url: Option<String>,
}

/// Body of a workspace update: an absent field stays as it is, `null` clears it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    /// Owners only. Lowering it below the live keys keeps them but refuses new ones.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000)]
    pub key_cap: Option<Option<i64>>,
    /// Owners only. Raising it is a top-up.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub credits_usd: Option<Option<Usd>>,
    /// A new URL issues a new signing secret (shown once in this answer); `null` removes
    /// the webhook and its secret.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 2048)]
    pub webhook_url: Option<Option<String>>,
}

/// Body of a member creation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Letters, digits, `.`, `_`, `@`, `-`; stored lower-case, unique in the workspace.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    pub username: String,
    /// Only owners may add owners.
    pub role: Role,
    /// 12 to 1024 characters; stored as an argon2id hash, never shown.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
}

/// Body of a member update: a new role, a new password, or both.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    /// Only owners may make owners or change an owner.
    #[serde(default, deserialize_with = "not_null")]
    pub role: Option<Role>,
    /// 12 to 1024 characters. A member may change their own.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The username as stored (lower-case), or why it cannot be one.
pub fn normalize_username(username: &str) -> Result<String, KeyError> {
    let chars = username.chars().count();
    let well_formed = (1..=MAX_USERNAME_CHARS).contains(&chars)
        && username
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if !well_formed {
        return Err(invalid(
            "username",
            format!(
                "must be 1 to {MAX_USERNAME_CHARS} characters: letters, digits, `.`, `_`, `@` \
                 or `-`, starting with a letter or digit"
            ),
        ));
    }
    Ok(username.to_ascii_lowercase())
}

pub fn validate_password(password: &str) -> Result<(), KeyError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters (got {chars})"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

pub fn validate_key_cap(cap: Option<i64>) -> Result<Option<i64>, KeyError> {
    match cap {
        Some(cap) if !(0..=MAX_KEY_CAP).contains(&cap) => Err(invalid(
            "key_cap",
            format!("must be between 0 and {MAX_KEY_CAP}"),
        )),
        cap => Ok(cap),
    }
}

pub fn validate_credits(credits: Option<Usd>) -> Result<Option<Decimal>, KeyError> {
    match credits {
        Some(Usd(amount)) if amount > Decimal::from(MAX_CREDITS_USD) => Err(invalid(
            "credits_usd",
            format!("must be at most {MAX_CREDITS_USD}"),
        )),
        credits => Ok(credits.map(|Usd(amount)| amount)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(normalize_username("Alice.B@x-y").unwrap(), "alice.b@x-y");
        for bad in ["", "-x", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(normalize_username(bad).is_err(), "{bad:?}");
        }
        let pattern = regex_syntax::parse(USERNAME_PATTERN);
        assert!(pattern.is_ok());
    }

    #[test]
    fn passwords_have_a_length() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("twelve chars").is_ok());
        assert!(validate_password(&"x".repeat(1025)).is_err());
    }
}
