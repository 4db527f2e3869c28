//! The plain data that the store reads and writes and the services work on: below both
//! `store` and `keys`, so that neither imports the other's types upward. No I/O, no HTTP.
//! `keys::model` re-exports the key types, where most code names them.

pub mod key;

pub use self::key::{
    ApiKey, Budget, BudgetPeriod, CompatFields, KeyKind, KeyStatus, Limits, ModelLimits, TokenType,
};
