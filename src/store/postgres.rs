//! The PostgreSQL backend (production, several instances share one database).
//!
//! Runtime `sqlx::query`/`query_as` with `FromRow` row structs, because the `query!` macros
//! check against a single database at build time (STYLE §1, "sqlx with two backends").
//! Every trait method is one transaction. Timestamps are `timestamptz`, JSON is `jsonb`.
//! Key changes (update, revoke, rotate) send a `NOTIFY` on [`PgStore::KEY_CHANGE_CHANNEL`]
//! in the same transaction, so other instances can drop cached keys (DESIGN §7).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    FromRow, PgConnection, PgPool,
};
use tracing::instrument;
use uuid::Uuid;

use super::{
    AuditEvent, EventFilter, Granularity, Member, Page, Paged, RateLimitEvent, Role, SecretRecord,
    Store, StoreError, StoreResult, UsageDelta, UsageQuery, UsageRow, UsageTotals, Workspace,
};
use crate::keys::model::{ApiKey, Budget, KeyKind};

/// Id of the `default` workspace, inserted by the first migration. Looked up by id, not
/// name, so renaming it does not lose it.
const DEFAULT_WORKSPACE_ID: Uuid = Uuid::from_u128(1);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// PostgreSQL implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// `NOTIFY` channel that carries the id of every key that was updated, revoked or
    /// rotated. The payload is the key's uuid in hyphenated text.
    pub const KEY_CHANGE_CHANNEL: &'static str = "keygate_key_change";

    /// Opens a pool (up to 16 connections). Does not migrate.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The connection pool, for work outside the [`Store`] trait (e.g. `LISTEN`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// ---------------------------------------------------------------------------------------
// rows and conversions

#[derive(FromRow)]
struct WorkspaceRow {
    id: Uuid,
    name: String,
    key_cap: Option<i64>,
    credits_usd: Option<String>,
    webhook_url: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<WorkspaceRow> for Workspace {
    type Error = StoreError;

    fn try_from(row: WorkspaceRow) -> StoreResult<Self> {
        let credits_usd = row
            .credits_usd
            .map(|text| {
                Decimal::from_str(&text)
                    .map_err(|e| corrupt("workspace", format!("credits_usd `{text}`: {e}")))
            })
            .transpose()?;
        Ok(Workspace {
            id: row.id,
            name: row.name,
            key_cap: row.key_cap,
            credits_usd,
            webhook_url: row.webhook_url,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(FromRow)]
struct MemberRow {
    id: Uuid,
    workspace_id: Uuid,
    username: String,
    role: String,
    password_hash: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<MemberRow> for Member {
    type Error = StoreError;

    fn try_from(row: MemberRow) -> StoreResult<Self> {
        let role = Role::parse(&row.role)
            .ok_or_else(|| corrupt("member", format!("role `{}`", row.role)))?;
        Ok(Member {
            id: row.id,
            workspace_id: row.workspace_id,
            username: row.username,
            role,
            password_hash: row.password_hash,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(FromRow)]
struct KeyRow {
    id: Uuid,
    workspace_id: Uuid,
    name: String,
    kind: String,
    partial_key: String,
    last6: String,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    metadata: Value,
    allowed_models: Option<Value>,
    budget: Option<Value>,
    limits: Value,
    model_limits: Value,
    max_parallel: Option<i64>,
    ip_allowlist: Option<Value>,
    alert_thresholds: Option<Value>,
    compat: Value,
    wallet_address: Option<String>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> StoreResult<Self> {
        let kind = KeyKind::parse(&row.kind)
            .ok_or_else(|| corrupt("api_key", format!("kind `{}`", row.kind)))?;
        let max_parallel = row
            .max_parallel
            .map(|n| u32::try_from(n).map_err(|_| corrupt("api_key", format!("max_parallel {n}"))))
            .transpose()?;
        Ok(ApiKey {
            id: row.id,
            workspace_id: row.workspace_id,
            name: row.name,
            kind,
            partial_key: row.partial_key,
            last6: row.last6,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
            metadata: decode("metadata", row.metadata)?,
            allowed_models: row
                .allowed_models
                .map(|v| decode("allowed_models", v))
                .transpose()?,
            budget: row.budget.map(|v| decode("budget", v)).transpose()?,
            limits: decode("limits", row.limits)?,
            model_limits: decode("model_limits", row.model_limits)?,
            max_parallel,
            ip_allowlist: row
                .ip_allowlist
                .map(|v| decode("ip_allowlist", v))
                .transpose()?,
            alert_thresholds: row
                .alert_thresholds
                .map(|v| decode("alert_thresholds", v))
                .transpose()?,
            compat: decode("compat", row.compat)?,
            wallet_address: row.wallet_address,
        })
    }
}

/// A secret joined with its key (`find_secret`).
#[derive(FromRow)]
struct SecretKeyRow {
    secret_lookup_id: String,
    secret_hash: String,
    secret_valid_until: Option<DateTime<Utc>>,
    secret_created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    key: KeyRow,
}

#[derive(FromRow)]
struct AuditRow {
    id: Uuid,
    workspace_id: Uuid,
    actor: String,
    action: String,
    target: String,
    at: DateTime<Utc>,
    source: Option<String>,
    details: Value,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            id: row.id,
            workspace_id: row.workspace_id,
            actor: row.actor,
            action: row.action,
            target: row.target,
            at: row.at,
            source: row.source,
            details: row.details,
        }
    }
}

#[derive(FromRow)]
struct UsageBucketRow {
    start: DateTime<Utc>,
    model: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_pico: i64,
}

#[derive(FromRow)]
struct TotalsRow {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_pico: i64,
}

#[derive(FromRow)]
struct RateLimitRow {
    id: Uuid,
    workspace_id: Uuid,
    key_id: Uuid,
    model: Option<String>,
    limit_kind: String,
    limit_value: String,
    at: DateTime<Utc>,
}

impl From<RateLimitRow> for RateLimitEvent {
    fn from(row: RateLimitRow) -> Self {
        RateLimitEvent {
            id: row.id,
            workspace_id: row.workspace_id,
            key_id: row.key_id,
            model: row.model,
            limit: row.limit_kind,
            limit_value: row.limit_value,
            at: row.at,
        }
    }
}

/// The JSON columns of a key, encoded for binding.
struct KeyJson {
    metadata: Value,
    allowed_models: Option<Value>,
    budget: Option<Value>,
    limits: Value,
    model_limits: Value,
    ip_allowlist: Option<Value>,
    alert_thresholds: Option<Value>,
    compat: Value,
    max_parallel: Option<i64>,
}

impl KeyJson {
    fn new(key: &ApiKey) -> StoreResult<Self> {
        Ok(KeyJson {
            metadata: encode("metadata", &key.metadata)?,
            allowed_models: key
                .allowed_models
                .as_ref()
                .map(|v| encode("allowed_models", v))
                .transpose()?,
            budget: key.budget.as_ref().map(budget_json),
            limits: encode("limits", &key.limits)?,
            model_limits: encode("model_limits", &key.model_limits)?,
            ip_allowlist: key
                .ip_allowlist
                .as_ref()
                .map(|v| encode("ip_allowlist", v))
                .transpose()?,
            alert_thresholds: key
                .alert_thresholds
                .as_ref()
                .map(|v| encode("alert_thresholds", v))
                .transpose()?,
            compat: encode("compat", &key.compat)?,
            max_parallel: key.max_parallel.map(i64::from),
        })
    }
}

/// A budget as stored: the amount is exact decimal text (the wire form is a JSON number,
/// which would pass through f64). `Budget`'s deserializer reads both.
fn budget_json(budget: &Budget) -> Value {
    serde_json::json!({ "limit_usd": budget.limit_usd.to_string(), "period": budget.period })
}

fn encode<T: Serialize>(column: &str, value: &T) -> StoreResult<Value> {
    serde_json::to_value(value)
        .map_err(|e| corrupt("api_key", format!("cannot encode {column}: {e}")))
}

fn decode<T: DeserializeOwned>(column: &str, value: Value) -> StoreResult<T> {
    serde_json::from_value(value).map_err(|e| corrupt("api_key", format!("{column}: {e}")))
}

fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { table, reason }
}

/// Unique violations become `Conflict` named after the rule; everything else passes through.
fn map_unique(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            let constraint = match db.constraint() {
                Some("workspace_name") => Some("workspace_name"),
                Some("member_username") => Some("member_username"),
                Some("workspace_pkey") => Some("workspace_id"),
                Some("member_pkey") => Some("member_id"),
                Some("api_key_pkey") => Some("api_key_id"),
                Some("api_key_secret_pkey") => Some("secret_lookup_id"),
                _ => None,
            };
            if let Some(constraint) = constraint {
                return StoreError::Conflict { constraint };
            }
        }
    }
    StoreError::Database(err)
}

fn granularity_unit(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::Minute => "minute",
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    }
}

/// Start of the minute containing `t`.
fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).unwrap_or(t)
}

fn page_limit(page: Page) -> i64 {
    i64::from(page.limit)
}

// ---------------------------------------------------------------------------------------
// helpers that run inside a caller's transaction

#[instrument(skip_all)]
async fn insert_audit(conn: &mut PgConnection, event: &AuditEvent) -> StoreResult<()> {
    sqlx::query(
        "insert into audit_event (id, workspace_id, actor, action, target, at, source, details)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event.id)
    .bind(event.workspace_id)
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(event.at)
    .bind(&event.source)
    .bind(&event.details)
    .execute(conn)
    .await?;
    Ok(())
}

#[instrument(skip_all)]
async fn insert_secret(conn: &mut PgConnection, secret: &SecretRecord) -> StoreResult<()> {
    sqlx::query(
        "insert into api_key_secret (lookup_id, key_id, hash, valid_until, created_at)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(&secret.lookup_id)
    .bind(secret.key_id)
    .bind(&secret.hash)
    .bind(secret.valid_until)
    .bind(secret.created_at)
    .execute(conn)
    .await
    .map_err(map_unique)?;
    Ok(())
}

async fn notify_key_change(conn: &mut PgConnection, key_id: Uuid) -> StoreResult<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(PgStore::KEY_CHANGE_CHANNEL)
        .bind(key_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrations_applied(&self) -> StoreResult<bool> {
        let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("select version from _sqlx_migrations where success")
                .fetch_all(&self.pool)
                .await?;
        Ok(MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .all(|m| applied.contains(&m.version)))
    }

    // --- workspaces and members ---

    async fn default_workspace(&self) -> StoreResult<Workspace> {
        self.get_workspace(DEFAULT_WORKSPACE_ID).await
    }

    async fn create_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "insert into workspace (id, name, key_cap, credits_usd, webhook_url, created_at, updated_at)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(ws.id)
        .bind(&ws.name)
        .bind(ws.key_cap)
        .bind(ws.credits_usd.map(|d| d.to_string()))
        .bind(&ws.webhook_url)
        .bind(ws.created_at)
        .bind(ws.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_workspace(&self, id: Uuid) -> StoreResult<Workspace> {
        sqlx::query_as::<_, WorkspaceRow>("select * from workspace where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_into()
    }

    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace> {
        sqlx::query_as::<_, WorkspaceRow>("select * from workspace where name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_into()
    }

    async fn list_workspaces(&self) -> StoreResult<Vec<Workspace>> {
        sqlx::query_as::<_, WorkspaceRow>("select * from workspace order by created_at, name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Workspace::try_from)
            .collect()
    }

    async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "update workspace
             set name = $2, key_cap = $3, credits_usd = $4, webhook_url = $5, updated_at = $6
             where id = $1",
        )
        .bind(ws.id)
        .bind(&ws.name)
        .bind(ws.key_cap)
        .bind(ws.credits_usd.map(|d| d.to_string()))
        .bind(&ws.webhook_url)
        .bind(ws.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "insert into member (id, workspace_id, username, role, password_hash, created_at, updated_at)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(member.id)
        .bind(member.workspace_id)
        .bind(&member.username)
        .bind(member.role.as_str())
        .bind(&member.password_hash)
        .bind(member.created_at)
        .bind(member.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member> {
        sqlx::query_as::<_, MemberRow>(
            "select * from member where workspace_id = $1 and username = $2",
        )
        .bind(workspace_id)
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
        sqlx::query_as::<_, MemberRow>(
            "select * from member where workspace_id = $1 order by created_at, username",
        )
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Member::try_from)
        .collect()
    }

    async fn delete_member(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("delete from member where workspace_id = $1 and id = $2")
            .bind(workspace_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- keys ---

    async fn insert_key(
        &self,
        key: &ApiKey,
        secret: &SecretRecord,
        key_cap: Option<i64>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let json = KeyJson::new(key)?;
        let mut tx = self.pool.begin().await?;
        if let Some(cap) = key_cap {
            // The row lock serialises concurrent inserts into one workspace, so the count
            // below cannot be stale when we insert.
            sqlx::query("select id from workspace where id = $1 for update")
                .bind(key.workspace_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let live: i64 = sqlx::query_scalar(
                "select count(*) from api_key where workspace_id = $1 and revoked_at is null",
            )
            .bind(key.workspace_id)
            .fetch_one(&mut *tx)
            .await?;
            if live >= cap {
                return Err(StoreError::KeyCapReached { cap });
            }
        }
        sqlx::query(
            "insert into api_key (
                 id, workspace_id, name, kind, partial_key, last6, created_by, created_at, updated_at,
                 expires_at, last_used_at, revoked_at, metadata, allowed_models, budget, limits,
                 model_limits, max_parallel, ip_allowlist, alert_thresholds, compat, wallet_address)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                     $19, $20, $21, $22)",
        )
        .bind(key.id)
        .bind(key.workspace_id)
        .bind(&key.name)
        .bind(key.kind.as_str())
        .bind(&key.partial_key)
        .bind(&key.last6)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.updated_at)
        .bind(key.expires_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .bind(json.metadata)
        .bind(json.allowed_models)
        .bind(json.budget)
        .bind(json.limits)
        .bind(json.model_limits)
        .bind(json.max_parallel)
        .bind(json.ip_allowlist)
        .bind(json.alert_thresholds)
        .bind(json.compat)
        .bind(&key.wallet_address)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        insert_secret(&mut tx, secret).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, workspace_id: Uuid, id: Uuid) -> StoreResult<ApiKey> {
        sqlx::query_as::<_, KeyRow>(
            "select * from api_key where workspace_id = $1 and id = $2 and revoked_at is null",
        )
        .bind(workspace_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>> {
        let total: i64 = sqlx::query_scalar(
            "select count(*) from api_key where workspace_id = $1 and revoked_at is null",
        )
        .bind(workspace_id)
        .fetch_one(&self.pool)
        .await?;
        let items = sqlx::query_as::<_, KeyRow>(
            "select * from api_key where workspace_id = $1 and revoked_at is null
             order by created_at, id limit $2 offset $3",
        )
        .bind(workspace_id)
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(ApiKey::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(Paged {
            items,
            total: total.unsigned_abs(),
        })
    }

    async fn update_key(&self, key: &ApiKey, audit: &AuditEvent) -> StoreResult<()> {
        let json = KeyJson::new(key)?;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "update api_key
             set name = $3, kind = $4, expires_at = $5, metadata = $6, allowed_models = $7, budget = $8,
                 limits = $9, model_limits = $10, max_parallel = $11, ip_allowlist = $12,
                 alert_thresholds = $13, compat = $14, wallet_address = $15, updated_at = $16
             where workspace_id = $1 and id = $2 and revoked_at is null",
        )
        .bind(key.workspace_id)
        .bind(key.id)
        .bind(&key.name)
        .bind(key.kind.as_str())
        .bind(key.expires_at)
        .bind(json.metadata)
        .bind(json.allowed_models)
        .bind(json.budget)
        .bind(json.limits)
        .bind(json.model_limits)
        .bind(json.max_parallel)
        .bind(json.ip_allowlist)
        .bind(json.alert_thresholds)
        .bind(json.compat)
        .bind(&key.wallet_address)
        .bind(key.updated_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(&mut tx, audit).await?;
        notify_key_change(&mut tx, key.id).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, KeyRow>(
            "update api_key set revoked_at = $3, updated_at = $3
             where workspace_id = $1 and id = $2 and revoked_at is null
             returning *",
        )
        .bind(workspace_id)
        .bind(id)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let key = ApiKey::try_from(row)?;
        insert_audit(&mut tx, audit).await?;
        notify_key_change(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// "Now" for deciding which old secrets are already expired is `new_secret.created_at`.
    async fn rotate_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        new_secret: &SecretRecord,
        partial_key: &str,
        last6: &str,
        old_valid_until: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey> {
        let now = new_secret.created_at;
        let mut tx = self.pool.begin().await?;
        // Lock the key so two rotations of one key cannot interleave.
        sqlx::query("select id from api_key where workspace_id = $1 and id = $2 and revoked_at is null for update")
            .bind(workspace_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        // Older secrets end at `old_valid_until` at the latest (a rotation never extends a
        // grace period); those whose end is already past are deleted.
        sqlx::query(
            "delete from api_key_secret where key_id = $1 and least(valid_until, $2) <= $3",
        )
        .bind(id)
        .bind(old_valid_until)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update api_key_secret set valid_until = least(valid_until, $2) where key_id = $1",
        )
        .bind(id)
        .bind(old_valid_until)
        .execute(&mut *tx)
        .await?;
        insert_secret(&mut tx, new_secret).await?;
        let row = sqlx::query_as::<_, KeyRow>(
            "update api_key set partial_key = $2, last6 = $3, updated_at = $4 where id = $1 returning *",
        )
        .bind(id)
        .bind(partial_key)
        .bind(last6)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let key = ApiKey::try_from(row)?;
        insert_audit(&mut tx, audit).await?;
        notify_key_change(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
        let row = sqlx::query_as::<_, SecretKeyRow>(
            "select s.lookup_id as secret_lookup_id, s.hash as secret_hash,
                    s.valid_until as secret_valid_until, s.created_at as secret_created_at, k.*
             from api_key_secret s join api_key k on k.id = s.key_id
             where s.lookup_id = $1",
        )
        .bind(lookup_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let secret = SecretRecord {
            lookup_id: row.secret_lookup_id,
            key_id: row.key.id,
            hash: row.secret_hash,
            valid_until: row.secret_valid_until,
            created_at: row.secret_created_at,
        };
        Ok(Some((secret, ApiKey::try_from(row.key)?)))
    }

    async fn count_live_admin_keys(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from api_key where kind = 'admin' and revoked_at is null",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unsigned_abs())
    }

    async fn touch_keys(&self, uses: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = uses.iter().copied().unzip();
        sqlx::query(
            "update api_key k set last_used_at = u.at
             from (select id, max(at) as at
                   from unnest($1::uuid[], $2::timestamptz[]) as t(id, at)
                   group by id) u
             where k.id = u.id and (k.last_used_at is null or k.last_used_at < u.at)",
        )
        .bind(ids)
        .bind(ats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // --- audit ---

    async fn list_audit_events(
        &self,
        workspace_id: Uuid,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        let total: i64 =
            sqlx::query_scalar("select count(*) from audit_event where workspace_id = $1")
                .bind(workspace_id)
                .fetch_one(&self.pool)
                .await?;
        let items = sqlx::query_as::<_, AuditRow>(
            "select * from audit_event where workspace_id = $1
             order by at desc, id desc limit $2 offset $3",
        )
        .bind(workspace_id)
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(AuditEvent::from)
        .collect();
        Ok(Paged {
            items,
            total: total.unsigned_abs(),
        })
    }

    // --- usage ---

    async fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "insert into usage_minute
                     (key_id, workspace_id, model, minute, requests, input_tokens, output_tokens, cost_pico)
                 values ($1, $2, $3, $4, $5, $6, $7, $8)
                 on conflict (key_id, model, minute) do update set
                     requests = usage_minute.requests + excluded.requests,
                     input_tokens = usage_minute.input_tokens + excluded.input_tokens,
                     output_tokens = usage_minute.output_tokens + excluded.output_tokens,
                     cost_pico = usage_minute.cost_pico + excluded.cost_pico",
            )
            .bind(d.key_id)
            .bind(d.workspace_id)
            .bind(&d.model)
            .bind(floor_minute(d.minute))
            .bind(d.requests)
            .bind(d.input_tokens)
            .bind(d.output_tokens)
            .bind(d.cost_pico)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let rows = sqlx::query_as::<_, UsageBucketRow>(
            "select date_trunc($2, minute at time zone 'UTC') at time zone 'UTC' as start,
                    model,
                    sum(requests)::bigint as requests,
                    sum(input_tokens)::bigint as input_tokens,
                    sum(output_tokens)::bigint as output_tokens,
                    sum(cost_pico)::bigint as cost_pico
             from usage_minute
             where key_id = $1 and minute >= $3 and minute < $4 and ($5::text is null or model = $5)
             group by 1, 2
             order by 1, 2",
        )
        .bind(query.key_id)
        .bind(granularity_unit(query.granularity))
        .bind(query.from)
        .bind(query.to)
        .bind(&query.model)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UsageRow {
                start: r.start,
                model: r.model,
                requests: r.requests,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_pico: r.cost_pico,
            })
            .collect())
    }

    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals> {
        let row = sqlx::query_as::<_, TotalsRow>(
            "select coalesce(sum(requests), 0)::bigint as requests,
                    coalesce(sum(input_tokens), 0)::bigint as input_tokens,
                    coalesce(sum(output_tokens), 0)::bigint as output_tokens,
                    coalesce(sum(cost_pico), 0)::bigint as cost_pico
             from usage_minute
             where key_id = $1 and minute >= $2 and ($3::text is null or model = $3)",
        )
        .bind(key_id)
        .bind(since)
        .bind(model)
        .fetch_one(&self.pool)
        .await?;
        Ok(totals(row))
    }

    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals> {
        let row = sqlx::query_as::<_, TotalsRow>(
            "select coalesce(sum(requests), 0)::bigint as requests,
                    coalesce(sum(input_tokens), 0)::bigint as input_tokens,
                    coalesce(sum(output_tokens), 0)::bigint as output_tokens,
                    coalesce(sum(cost_pico), 0)::bigint as cost_pico
             from usage_minute
             where workspace_id = $1 and minute >= $2",
        )
        .bind(workspace_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(totals(row))
    }

    // --- rate-limit events ---

    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for e in events {
            sqlx::query(
                "insert into rate_limit_event (id, workspace_id, key_id, model, limit_kind, limit_value, at)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.id)
            .bind(e.workspace_id)
            .bind(e.key_id)
            .bind(&e.model)
            .bind(&e.limit)
            .bind(&e.limit_value)
            .bind(e.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>> {
        const FILTER: &str = "where workspace_id = $1
              and ($2::uuid is null or key_id = $2)
              and ($3::timestamptz is null or at >= $3)
              and ($4::timestamptz is null or at < $4)";
        let count_sql = format!("select count(*) from rate_limit_event {FILTER}");
        let total: i64 = sqlx::query_scalar(&count_sql)
            .bind(workspace_id)
            .bind(filter.key_id)
            .bind(filter.from)
            .bind(filter.to)
            .fetch_one(&self.pool)
            .await?;
        let list_sql = format!(
            "select * from rate_limit_event {FILTER} order by at desc, id desc limit $5 offset $6"
        );
        let items = sqlx::query_as::<_, RateLimitRow>(&list_sql)
            .bind(workspace_id)
            .bind(filter.key_id)
            .bind(filter.from)
            .bind(filter.to)
            .bind(page_limit(page))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(RateLimitEvent::from)
            .collect();
        Ok(Paged {
            items,
            total: total.unsigned_abs(),
        })
    }

    // --- one-time tokens and alerts ---

    /// Also forgets tokens that expired more than a day ago: they are refused by their
    /// expiry before they reach the store, so their rows only grow the table.
    async fn consume_once_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from once_token where expires_at < $1")
            .bind(now - chrono::TimeDelta::days(1))
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "insert into once_token (token_id, expires_at, used_at) values ($1, $2, $3)
             on conflict (token_id) do nothing",
        )
        .bind(token_id)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_budget_alert(
        &self,
        key_id: Uuid,
        period_start: DateTime<Utc>,
        threshold_bp: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "insert into budget_alert (key_id, period_start, threshold_bp, sent_at) values ($1, $2, $3, $4)
             on conflict (key_id, period_start, threshold_bp) do nothing",
        )
        .bind(key_id)
        .bind(period_start)
        .bind(threshold_bp)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn totals(row: TotalsRow) -> UsageTotals {
    UsageTotals {
        requests: row.requests,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        cost_pico: row.cost_pico,
    }
}
