//! `/admin/v1/keys`: create, list, get, update, delete, rotate; workspace isolation, the
//! key cap, the audit trail and the key cache. This file holds the key-view checks they
//! share.

mod keys;
mod rotate;
mod update;
mod workspace;

use keygate::keys::Token;
use serde_json::Value;

const KEY_FIELDS: &[&str] = &[
    "id",
    "name",
    "kind",
    "workspace_id",
    "partial_key",
    "last6",
    "status",
    "created_by",
    "created_at",
    "updated_at",
    "expires_at",
    "last_used_at",
    "budget",
    "limits",
    "model_limits",
    "allowed_models",
    "metadata",
];

fn assert_is_key_view(key: &Value) {
    for field in KEY_FIELDS {
        assert!(key.get(*field).is_some(), "`{field}` missing from {key}");
    }
    assert!(
        key.get("secret").is_none(),
        "a read shows the secret: {key}"
    );
}

/// `partial_key` and `last6` are derived from `secret`.
fn assert_partial_matches(key: &Value, secret: &str) {
    let token = Token::parse(secret).expect("the secret is a well-formed key");
    let expected_partial = format!("kg_{}…{}", token.lookup_id(), &secret[secret.len() - 4..]);
    assert_eq!(key["partial_key"], expected_partial.as_str(), "{key}");
    assert_eq!(key["last6"], &secret[secret.len() - 6..], "{key}");
}
