//! What the two backends share below the SQL: how a domain value becomes a column value and
//! back, how a broken uniqueness rule becomes [`StoreError::Conflict`], paging, and the
//! "all migrations applied" check.
//!
//! The backends differ only in how a column holds a uuid, a timestamp or a JSON document
//! (Postgres: `uuid`, `timestamptz`, `jsonb`; SQLite: hyphenated TEXT, INTEGER microseconds,
//! TEXT). Each backend names those types once by implementing [`Columns`]; the row structs in
//! `rows.rs` and [`KeyJson`] are generic over it, so every conversion is written once. SQL
//! text stays in the backend modules (STYLE §1, "sqlx with two backends").

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sqlx::{error::DatabaseError, migrate::Migrator, query::Query, Database, Encode, Type};
use uuid::Uuid;

use super::{Page, Paged, StoreError, StoreResult};
use crate::domain::{ApiKey, Budget};

/// How one backend represents uuid, timestamp and JSON columns.
pub(super) trait Columns {
    /// A uuid column as decoded from a row.
    type Id: Into<Uuid> + Copy;
    /// A timestamp column as decoded from a row.
    type Time;
    /// A JSON column, as decoded from a row and as bound to a query.
    type Json;

    /// The timestamp a column holds; `Corrupt` (naming `table`) if it is out of range.
    fn time(table: &'static str, t: Self::Time) -> StoreResult<DateTime<Utc>>;
    fn to_json<T: Serialize>(value: &T) -> serde_json::Result<Self::Json>;
    fn from_json<T: DeserializeOwned>(json: Self::Json) -> serde_json::Result<T>;
    /// A JSON document built in code (it cannot fail to encode).
    fn json_value(value: Value) -> Self::Json;
}

pub(super) fn opt_time<C: Columns>(
    table: &'static str,
    t: Option<C::Time>,
) -> StoreResult<Option<DateTime<Utc>>> {
    t.map(|t| C::time(table, t)).transpose()
}

pub(super) fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { table, reason }
}

/// Encodes one JSON column of `api_key`.
fn encode<C: Columns, T: Serialize>(column: &str, value: &T) -> StoreResult<C::Json> {
    C::to_json(value).map_err(|e| corrupt("api_key", format!("cannot encode {column}: {e}")))
}

/// Decodes one JSON column; `Corrupt` if it does not hold a `T`.
pub(super) fn decode<C: Columns, T: DeserializeOwned>(
    table: &'static str,
    column: &str,
    json: C::Json,
) -> StoreResult<T> {
    C::from_json(json).map_err(|e| corrupt(table, format!("{column}: {e}")))
}

/// The JSON columns of a key (and `max_parallel`, widened for the database), encoded for
/// binding with [`BindKeyJson::bind_key_json`].
pub(super) struct KeyJson<C: Columns> {
    metadata: C::Json,
    allowed_models: Option<C::Json>,
    budget: Option<C::Json>,
    limits: C::Json,
    model_limits: C::Json,
    ip_allowlist: Option<C::Json>,
    alert_thresholds: Option<C::Json>,
    compat: C::Json,
    max_parallel: Option<i64>,
}

impl<C: Columns> KeyJson<C> {
    pub fn new(key: &ApiKey) -> StoreResult<Self> {
        Ok(KeyJson {
            metadata: encode::<C, _>("metadata", &key.metadata)?,
            allowed_models: key
                .allowed_models
                .as_ref()
                .map(|v| encode::<C, _>("allowed_models", v))
                .transpose()?,
            budget: key.budget.as_ref().map(|b| C::json_value(budget_json(b))),
            limits: encode::<C, _>("limits", &key.limits)?,
            model_limits: encode::<C, _>("model_limits", &key.model_limits)?,
            ip_allowlist: key
                .ip_allowlist
                .as_ref()
                .map(|v| encode::<C, _>("ip_allowlist", v))
                .transpose()?,
            alert_thresholds: key
                .alert_thresholds
                .as_ref()
                .map(|v| encode::<C, _>("alert_thresholds", v))
                .transpose()?,
            compat: encode::<C, _>("compat", &key.compat)?,
            max_parallel: key.max_parallel.map(i64::from),
        })
    }
}

/// Binds a key's [`KeyJson`] as nine consecutive parameters, in the order in which both
/// backends' `insert into api_key` and `update api_key` list those columns: `metadata,
/// allowed_models, budget, limits, model_limits, max_parallel, ip_allowlist,
/// alert_thresholds, compat`.
pub(super) trait BindKeyJson<C: Columns> {
    fn bind_key_json(self, json: KeyJson<C>) -> Self;
}

impl<'q, DB, C> BindKeyJson<C> for Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    C: Columns,
    C::Json: 'q + Encode<'q, DB> + Type<DB>,
    Option<C::Json>: 'q + Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    fn bind_key_json(self, json: KeyJson<C>) -> Self {
        self.bind(json.metadata)
            .bind(json.allowed_models)
            .bind(json.budget)
            .bind(json.limits)
            .bind(json.model_limits)
            .bind(json.max_parallel)
            .bind(json.ip_allowlist)
            .bind(json.alert_thresholds)
            .bind(json.compat)
    }
}

/// A budget as stored: the amount is exact decimal text (the wire form is a JSON number,
/// which would pass through f64). `Budget`'s deserializer reads both.
fn budget_json(budget: &Budget) -> Value {
    serde_json::json!({ "limit_usd": budget.limit_usd.to_string(), "period": budget.period })
}

/// Unique violations become `Conflict` named after the rule; everything else passes through.
/// `rule_of` reads the backend's name for the broken rule from the error, and `rules` maps
/// that name to the one callers see (`workspace_name`, `member_username`, …).
pub(super) fn map_unique(
    err: sqlx::Error,
    rule_of: fn(&dyn DatabaseError) -> Option<&str>,
    rules: &[(&str, &'static str)],
) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            let rule = rule_of(db.as_ref());
            let known = rules.iter().find(|(name, _)| Some(*name) == rule);
            if let Some(&(_, constraint)) = known {
                return StoreError::Conflict { constraint };
            }
        }
    }
    StoreError::Database(err)
}

/// Start of the minute containing `t`.
pub(super) fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).unwrap_or(t)
}

pub(super) fn page_limit(page: Page) -> i64 {
    i64::from(page.limit)
}

/// One page of rows as domain values, with the `count(*)` of all matching rows.
pub(super) fn paged<R, T>(rows: Vec<R>, total: i64) -> StoreResult<Paged<T>>
where
    T: TryFrom<R, Error = StoreError>,
{
    let items = rows
        .into_iter()
        .map(T::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Paged {
        items,
        total: total.unsigned_abs(),
    })
}

/// Every up migration of `migrator` is among the `applied` versions (those `_sqlx_migrations`
/// records as successful).
pub(super) fn all_applied(migrator: &Migrator, applied: &[i64]) -> bool {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version))
}
