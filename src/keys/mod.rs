//! API keys: the token format, hashing, the failed-attempt guard, the verified-key cache
//! and the service that the three key-management surfaces (native, Venice, aiXplain), the
//! console and the CLI all call. The key types themselves live in `crate::domain`.

pub mod bootstrap;
pub mod cache;
pub mod caller;
pub mod guard;
pub mod hashing;
pub mod input;
pub mod presented;
pub mod service;
pub mod token;
mod verify;

/// The key types live in `crate::domain` (below the store); named here as before.
pub use crate::domain::key as model;

pub use self::{
    caller::{Caller, CallerRole, Reach},
    guard::{FailedAuthGuard, SignInGuard},
    model::{ApiKey, KeyKind, KeyStatus},
    service::{KeyWithSecret, KeysService},
    token::{Token, TokenError},
};
use crate::store::StoreError;

/// Why a key-management operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("no such key")]
    NotFound,
    /// No such workspace, or one outside the caller's reach (never told apart).
    #[error("no such workspace")]
    WorkspaceNotFound,
    #[error("no such member")]
    MemberNotFound,
    /// The change contradicts the current state; `code` names the rule (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the workspace allows at most {cap} live keys")]
    CapReached { cap: i64 },
    /// The change would leave the `default` workspace without an active admin key.
    #[error(
        "this is the last active admin key of the default workspace: create another admin key \
         before revoking, demoting or expiring this one"
    )]
    LastAdminKey,
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Hash(#[from] hashing::HashError),
}

impl From<StoreError> for KeyError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => KeyError::NotFound,
            StoreError::KeyCapReached { cap } => KeyError::CapReached { cap },
            StoreError::LastAdminKey => KeyError::LastAdminKey,
            StoreError::WorkspaceHasKeys { live } => KeyError::Conflict {
                code: "workspace_has_keys",
                message: format!(
                    "the workspace still has {live} live keys; revoke them before deleting it"
                ),
            },
            StoreError::LastOwner => KeyError::Conflict {
                code: "last_owner",
                message: "this is the workspace's last owner: make another member an owner \
                          before removing or demoting this one"
                    .into(),
            },
            StoreError::Conflict {
                constraint: "workspace_name",
            } => KeyError::Conflict {
                code: "name_taken",
                message: "a workspace with this name exists".into(),
            },
            StoreError::Conflict {
                constraint: "member_username",
            } => KeyError::Conflict {
                code: "username_taken",
                message: "this workspace has a member with this username".into(),
            },
            other => KeyError::Store(other),
        }
    }
}

/// Why a presented key was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was presented")]
    Missing,
    #[error(transparent)]
    Malformed(#[from] TokenError),
    #[error("unknown API key")]
    Unknown,
    #[error("this API key has been revoked")]
    Revoked,
    #[error("this API key has expired")]
    Expired,
    #[error("this API key was rotated and its grace period has ended")]
    Rotated,
    /// The client's address is past its allowance of failed authentications
    /// ([`FailedAuthGuard`]); the key was not looked at.
    #[error("too many failed authentications from this address; wait and retry")]
    TooManyAttempts { retry_after: std::time::Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] hashing::HashError),
}
