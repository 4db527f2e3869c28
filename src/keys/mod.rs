//! API keys: the token format, hashing, the domain model and the service that the three
//! key-management surfaces (native, Venice, aiXplain), the console and the CLI all call.

pub mod bootstrap;
pub mod cache;
pub mod hashing;
pub mod input;
pub mod model;
pub mod presented;
pub mod service;
pub mod token;

pub use self::{
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] hashing::HashError),
}
