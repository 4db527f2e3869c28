//! API keys: the token format, hashing, the failed-attempt guard, the verified-key cache
//! and the service that the three key-management surfaces (native, Venice, aiXplain), the
//! console and the CLI all call. The key types themselves live in `crate::domain`.

pub mod bootstrap;
pub mod cache;
pub mod guard;
pub mod hashing;
pub mod input;
pub mod service;
pub mod token;

/// The key types live in `crate::domain` (below the store); named here as before.
pub use crate::domain::key as model;

pub use self::{
    guard::FailedAuthGuard,
    model::{ApiKey, KeyKind, KeyStatus},
    service::{Caller, CallerRole, KeyWithSecret, KeysService},
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
