//! The SQLite backend (the embedded default: one instance, one file).
//!
//! Runtime `sqlx::query`/`query_as` with `FromRow` row structs, like the Postgres backend.
//! Representations (see `migrations/sqlite/0001_init.sql`): uuids are hyphenated TEXT,
//! timestamps are INTEGER microseconds since the Unix epoch (so SQL comparisons and ordering
//! are exact), JSON is TEXT.
//!
//! Writes: SQLite has one writer at a time. A deferred transaction that reads and then
//! writes fails with `SQLITE_BUSY` when another writer got there first, so every write
//! transaction here is `BEGIN IMMEDIATE` (takes the write lock up front, waiting up to the
//! busy timeout), and writers of this process queue on an async mutex first so they do not
//! spin in SQLite's busy handler.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::{
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    FromRow, Sqlite, SqliteConnection, SqlitePool, Transaction,
};
use tokio::sync::{Mutex, MutexGuard};
use tracing::instrument;
use uuid::{fmt::Hyphenated, Uuid};

use super::{
    AuditEvent, EventFilter, Granularity, Member, Page, Paged, RateLimitEvent, Role, SecretRecord,
    Store, StoreError, StoreResult, UsageDelta, UsageQuery, UsageRow, UsageTotals, Workspace,
};
use crate::keys::model::{ApiKey, Budget, KeyKind};

/// Id of the `default` workspace, inserted by the first migration. Looked up by id, not
/// name, so renaming it does not lose it.
const DEFAULT_WORKSPACE_ID: Uuid = Uuid::from_u128(1);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serialises this process's write transactions (see the module docs).
    write_lock: Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url` (`sqlite://path` or
    /// `sqlite::memory:`), in WAL mode with foreign keys on. Does not migrate.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal);
        let pool_options = if memory {
            // An in-memory database lives as long as its one connection: keep exactly one.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            write_lock: Mutex::new(()),
        })
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`) behind the process-wide write lock.
    async fn begin_write(&self) -> StoreResult<WriteTx<'_>> {
        let guard = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _guard: guard })
    }
}

/// A write transaction and the lock it holds. Field order matters: the transaction is
/// dropped (rolled back, if not committed) before the lock is released.
struct WriteTx<'a> {
    tx: Transaction<'static, Sqlite>,
    _guard: MutexGuard<'a, ()>,
}

impl WriteTx<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// representations

fn id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

fn time(table: &'static str, v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| corrupt(table, format!("timestamp {v} out of range")))
}

fn opt_time(table: &'static str, v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(|v| time(table, v)).transpose()
}

/// A budget as stored: the amount is exact decimal text (the wire form is a JSON number,
/// which would pass through f64). `Budget`'s deserializer reads both.
fn budget_json(budget: &Budget) -> String {
    serde_json::json!({ "limit_usd": budget.limit_usd.to_string(), "period": budget.period })
        .to_string()
}

fn encode<T: Serialize>(column: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| corrupt("api_key", format!("cannot encode {column}: {e}")))
}

fn decode<T: DeserializeOwned>(table: &'static str, column: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(table, format!("{column}: {e}")))
}

fn corrupt(table: &'static str, reason: String) -> StoreError {
    StoreError::Corrupt { table, reason }
}

/// Unique violations become `Conflict` named after the rule; everything else passes through.
/// SQLite does not report constraint names, only `UNIQUE constraint failed: table.col, …`.
fn map_unique(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            let message = db.message();
            let columns = message.rsplit(": ").next().unwrap_or_default();
            let constraint = match columns {
                "workspace.name" => Some("workspace_name"),
                "member.workspace_id, member.username" => Some("member_username"),
                "workspace.id" => Some("workspace_id"),
                "member.id" => Some("member_id"),
                "api_key.id" => Some("api_key_id"),
                "api_key_secret.lookup_id" => Some("secret_lookup_id"),
                _ => None,
            };
            if let Some(constraint) = constraint {
                return StoreError::Conflict { constraint };
            }
        }
    }
    StoreError::Database(err)
}

fn bucket_micros(granularity: Granularity) -> i64 {
    const MINUTE: i64 = 60_000_000;
    match granularity {
        Granularity::Minute => MINUTE,
        Granularity::Hour => 60 * MINUTE,
        Granularity::Day => 24 * 60 * MINUTE,
    }
}

/// Start of the minute containing `t`, in microseconds.
fn floor_minute(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60) * 60_000_000
}

fn page_limit(page: Page) -> i64 {
    i64::from(page.limit)
}

// ---------------------------------------------------------------------------------------
// rows and conversions

#[derive(FromRow)]
struct WorkspaceRow {
    id: Hyphenated,
    name: String,
    key_cap: Option<i64>,
    credits_usd: Option<String>,
    webhook_url: Option<String>,
    created_at: i64,
    updated_at: i64,
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
            id: row.id.into_uuid(),
            name: row.name,
            key_cap: row.key_cap,
            credits_usd,
            webhook_url: row.webhook_url,
            created_at: time("workspace", row.created_at)?,
            updated_at: time("workspace", row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
struct MemberRow {
    id: Hyphenated,
    workspace_id: Hyphenated,
    username: String,
    role: String,
    password_hash: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<MemberRow> for Member {
    type Error = StoreError;

    fn try_from(row: MemberRow) -> StoreResult<Self> {
        let role = Role::parse(&row.role)
            .ok_or_else(|| corrupt("member", format!("role `{}`", row.role)))?;
        Ok(Member {
            id: row.id.into_uuid(),
            workspace_id: row.workspace_id.into_uuid(),
            username: row.username,
            role,
            password_hash: row.password_hash,
            created_at: time("member", row.created_at)?,
            updated_at: time("member", row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
struct KeyRow {
    id: Hyphenated,
    workspace_id: Hyphenated,
    name: String,
    kind: String,
    partial_key: String,
    last6: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    metadata: String,
    allowed_models: Option<String>,
    budget: Option<String>,
    limits: String,
    model_limits: String,
    max_parallel: Option<i64>,
    ip_allowlist: Option<String>,
    alert_thresholds: Option<String>,
    compat: String,
    wallet_address: Option<String>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> StoreResult<Self> {
        const T: &str = "api_key";
        let kind =
            KeyKind::parse(&row.kind).ok_or_else(|| corrupt(T, format!("kind `{}`", row.kind)))?;
        let max_parallel = row
            .max_parallel
            .map(|n| u32::try_from(n).map_err(|_| corrupt(T, format!("max_parallel {n}"))))
            .transpose()?;
        Ok(ApiKey {
            id: row.id.into_uuid(),
            workspace_id: row.workspace_id.into_uuid(),
            name: row.name,
            kind,
            partial_key: row.partial_key,
            last6: row.last6,
            created_by: row.created_by,
            created_at: time(T, row.created_at)?,
            updated_at: time(T, row.updated_at)?,
            expires_at: opt_time(T, row.expires_at)?,
            last_used_at: opt_time(T, row.last_used_at)?,
            revoked_at: opt_time(T, row.revoked_at)?,
            metadata: decode(T, "metadata", &row.metadata)?,
            allowed_models: row
                .allowed_models
                .map(|v| decode(T, "allowed_models", &v))
                .transpose()?,
            budget: row.budget.map(|v| decode(T, "budget", &v)).transpose()?,
            limits: decode(T, "limits", &row.limits)?,
            model_limits: decode(T, "model_limits", &row.model_limits)?,
            max_parallel,
            ip_allowlist: row
                .ip_allowlist
                .map(|v| decode(T, "ip_allowlist", &v))
                .transpose()?,
            alert_thresholds: row
                .alert_thresholds
                .map(|v| decode(T, "alert_thresholds", &v))
                .transpose()?,
            compat: decode(T, "compat", &row.compat)?,
            wallet_address: row.wallet_address,
        })
    }
}

/// A secret joined with its key (`find_secret`).
#[derive(FromRow)]
struct SecretKeyRow {
    secret_lookup_id: String,
    secret_hash: String,
    secret_valid_until: Option<i64>,
    secret_created_at: i64,
    #[sqlx(flatten)]
    key: KeyRow,
}

#[derive(FromRow)]
struct AuditRow {
    id: Hyphenated,
    workspace_id: Hyphenated,
    actor: String,
    action: String,
    target: String,
    at: i64,
    source: Option<String>,
    details: String,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> StoreResult<Self> {
        Ok(AuditEvent {
            id: row.id.into_uuid(),
            workspace_id: row.workspace_id.into_uuid(),
            actor: row.actor,
            action: row.action,
            target: row.target,
            at: time("audit_event", row.at)?,
            source: row.source,
            details: decode("audit_event", "details", &row.details)?,
        })
    }
}

#[derive(FromRow)]
struct UsageBucketRow {
    start: i64,
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

impl From<TotalsRow> for UsageTotals {
    fn from(row: TotalsRow) -> Self {
        UsageTotals {
            requests: row.requests,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_pico: row.cost_pico,
        }
    }
}

#[derive(FromRow)]
struct RateLimitRow {
    id: Hyphenated,
    workspace_id: Hyphenated,
    key_id: Hyphenated,
    model: Option<String>,
    limit_kind: String,
    limit_value: String,
    at: i64,
}

impl TryFrom<RateLimitRow> for RateLimitEvent {
    type Error = StoreError;

    fn try_from(row: RateLimitRow) -> StoreResult<Self> {
        Ok(RateLimitEvent {
            id: row.id.into_uuid(),
            workspace_id: row.workspace_id.into_uuid(),
            key_id: row.key_id.into_uuid(),
            model: row.model,
            limit: row.limit_kind,
            limit_value: row.limit_value,
            at: time("rate_limit_event", row.at)?,
        })
    }
}

/// The JSON columns of a key, encoded for binding.
struct KeyJson {
    metadata: String,
    allowed_models: Option<String>,
    budget: Option<String>,
    limits: String,
    model_limits: String,
    ip_allowlist: Option<String>,
    alert_thresholds: Option<String>,
    compat: String,
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

// ---------------------------------------------------------------------------------------
// helpers that run inside a caller's transaction

#[instrument(skip_all)]
async fn insert_audit(conn: &mut SqliteConnection, event: &AuditEvent) -> StoreResult<()> {
    sqlx::query(
        "insert into audit_event (id, workspace_id, actor, action, target, at, source, details)
         values (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id(event.id))
    .bind(id(event.workspace_id))
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(micros(event.at))
    .bind(&event.source)
    .bind(event.details.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

#[instrument(skip_all)]
async fn insert_secret(conn: &mut SqliteConnection, secret: &SecretRecord) -> StoreResult<()> {
    sqlx::query(
        "insert into api_key_secret (lookup_id, key_id, hash, valid_until, created_at)
         values (?, ?, ?, ?, ?)",
    )
    .bind(&secret.lookup_id)
    .bind(id(secret.key_id))
    .bind(&secret.hash)
    .bind(opt_micros(secret.valid_until))
    .bind(micros(secret.created_at))
    .execute(conn)
    .await
    .map_err(map_unique)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> StoreResult<()> {
        let _guard = self.write_lock.lock().await;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrations_applied(&self) -> StoreResult<bool> {
        let exists: i64 = sqlx::query_scalar(
            "select count(*) from sqlite_master where type = 'table' and name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
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
        let mut w = self.begin_write().await?;
        sqlx::query(
            "insert into workspace (id, name, key_cap, credits_usd, webhook_url, created_at, updated_at)
             values (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id(ws.id))
        .bind(&ws.name)
        .bind(ws.key_cap)
        .bind(ws.credits_usd.map(|d| d.to_string()))
        .bind(&ws.webhook_url)
        .bind(micros(ws.created_at))
        .bind(micros(ws.updated_at))
        .execute(w.conn())
        .await
        .map_err(map_unique)?;
        insert_audit(w.conn(), audit).await?;
        w.commit().await
    }

    async fn get_workspace(&self, ws_id: Uuid) -> StoreResult<Workspace> {
        sqlx::query_as::<_, WorkspaceRow>("select * from workspace where id = ?")
            .bind(id(ws_id))
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_into()
    }

    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace> {
        sqlx::query_as::<_, WorkspaceRow>("select * from workspace where name = ?")
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
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "update workspace
             set name = ?2, key_cap = ?3, credits_usd = ?4, webhook_url = ?5, updated_at = ?6
             where id = ?1",
        )
        .bind(id(ws.id))
        .bind(&ws.name)
        .bind(ws.key_cap)
        .bind(ws.credits_usd.map(|d| d.to_string()))
        .bind(&ws.webhook_url)
        .bind(micros(ws.updated_at))
        .execute(w.conn())
        .await
        .map_err(map_unique)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(w.conn(), audit).await?;
        w.commit().await
    }

    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "insert into member (id, workspace_id, username, role, password_hash, created_at, updated_at)
             values (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id(member.id))
        .bind(id(member.workspace_id))
        .bind(&member.username)
        .bind(member.role.as_str())
        .bind(&member.password_hash)
        .bind(micros(member.created_at))
        .bind(micros(member.updated_at))
        .execute(w.conn())
        .await
        .map_err(map_unique)?;
        insert_audit(w.conn(), audit).await?;
        w.commit().await
    }

    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member> {
        sqlx::query_as::<_, MemberRow>(
            "select * from member where workspace_id = ? and username = ?",
        )
        .bind(id(workspace_id))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
        sqlx::query_as::<_, MemberRow>(
            "select * from member where workspace_id = ? order by created_at, username",
        )
        .bind(id(workspace_id))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Member::try_from)
        .collect()
    }

    async fn delete_member(
        &self,
        workspace_id: Uuid,
        member_id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query("delete from member where workspace_id = ? and id = ?")
            .bind(id(workspace_id))
            .bind(id(member_id))
            .execute(w.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(w.conn(), audit).await?;
        w.commit().await
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
        // BEGIN IMMEDIATE holds the database's write lock from here to commit, so the count
        // cannot change between the check and the insert.
        let mut w = self.begin_write().await?;
        if let Some(cap) = key_cap {
            let live: i64 = sqlx::query_scalar(
                "select count(*) from api_key where workspace_id = ? and revoked_at is null",
            )
            .bind(id(key.workspace_id))
            .fetch_one(w.conn())
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
             values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id(key.id))
        .bind(id(key.workspace_id))
        .bind(&key.name)
        .bind(key.kind.as_str())
        .bind(&key.partial_key)
        .bind(&key.last6)
        .bind(&key.created_by)
        .bind(micros(key.created_at))
        .bind(micros(key.updated_at))
        .bind(opt_micros(key.expires_at))
        .bind(opt_micros(key.last_used_at))
        .bind(opt_micros(key.revoked_at))
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
        .execute(w.conn())
        .await
        .map_err(map_unique)?;
        insert_secret(w.conn(), secret).await?;
        insert_audit(w.conn(), audit).await?;
        w.commit().await
    }

    async fn get_key(&self, workspace_id: Uuid, key_id: Uuid) -> StoreResult<ApiKey> {
        sqlx::query_as::<_, KeyRow>(
            "select * from api_key where workspace_id = ? and id = ? and revoked_at is null",
        )
        .bind(id(workspace_id))
        .bind(id(key_id))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
    }

    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>> {
        let total: i64 = sqlx::query_scalar(
            "select count(*) from api_key where workspace_id = ? and revoked_at is null",
        )
        .bind(id(workspace_id))
        .fetch_one(&self.pool)
        .await?;
        let items = sqlx::query_as::<_, KeyRow>(
            "select * from api_key where workspace_id = ? and revoked_at is null
             order by created_at, id limit ? offset ?",
        )
        .bind(id(workspace_id))
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
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "update api_key
             set name = ?3, kind = ?4, expires_at = ?5, metadata = ?6, allowed_models = ?7, budget = ?8,
                 limits = ?9, model_limits = ?10, max_parallel = ?11, ip_allowlist = ?12,
                 alert_thresholds = ?13, compat = ?14, wallet_address = ?15, updated_at = ?16
             where workspace_id = ?1 and id = ?2 and revoked_at is null",
        )
        .bind(id(key.workspace_id))
        .bind(id(key.id))
        .bind(&key.name)
        .bind(key.kind.as_str())
        .bind(opt_micros(key.expires_at))
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
        .bind(micros(key.updated_at))
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        insert_audit(w.conn(), audit).await?;
        w.commit().await
    }

    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        key_id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey> {
        let mut w = self.begin_write().await?;
        let row = sqlx::query_as::<_, KeyRow>(
            "update api_key set revoked_at = ?3, updated_at = ?3
             where workspace_id = ?1 and id = ?2 and revoked_at is null
             returning *",
        )
        .bind(id(workspace_id))
        .bind(id(key_id))
        .bind(micros(at))
        .fetch_optional(w.conn())
        .await?
        .ok_or(StoreError::NotFound)?;
        let key = ApiKey::try_from(row)?;
        insert_audit(w.conn(), audit).await?;
        w.commit().await?;
        Ok(key)
    }

    /// "Now" for deciding which old secrets are already expired is `new_secret.created_at`.
    async fn rotate_key(
        &self,
        workspace_id: Uuid,
        key_id: Uuid,
        new_secret: &SecretRecord,
        partial_key: &str,
        last6: &str,
        old_valid_until: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey> {
        let now = micros(new_secret.created_at);
        let until = micros(old_valid_until);
        let mut w = self.begin_write().await?;
        let live: i64 = sqlx::query_scalar(
            "select count(*) from api_key where workspace_id = ? and id = ? and revoked_at is null",
        )
        .bind(id(workspace_id))
        .bind(id(key_id))
        .fetch_one(w.conn())
        .await?;
        if live == 0 {
            return Err(StoreError::NotFound);
        }
        // Older secrets end at `old_valid_until` at the latest (a rotation never extends a
        // grace period); those whose end is already past are deleted.
        sqlx::query("delete from api_key_secret where key_id = ?1 and min(coalesce(valid_until, ?2), ?2) <= ?3")
            .bind(id(key_id))
            .bind(until)
            .bind(now)
            .execute(w.conn())
            .await?;
        sqlx::query("update api_key_secret set valid_until = min(coalesce(valid_until, ?2), ?2) where key_id = ?1")
            .bind(id(key_id))
            .bind(until)
            .execute(w.conn())
            .await?;
        insert_secret(w.conn(), new_secret).await?;
        let row = sqlx::query_as::<_, KeyRow>(
            "update api_key set partial_key = ?2, last6 = ?3, updated_at = ?4 where id = ?1 returning *",
        )
        .bind(id(key_id))
        .bind(partial_key)
        .bind(last6)
        .bind(now)
        .fetch_one(w.conn())
        .await?;
        let key = ApiKey::try_from(row)?;
        insert_audit(w.conn(), audit).await?;
        w.commit().await?;
        Ok(key)
    }

    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
        let row = sqlx::query_as::<_, SecretKeyRow>(
            "select s.lookup_id as secret_lookup_id, s.hash as secret_hash,
                    s.valid_until as secret_valid_until, s.created_at as secret_created_at, k.*
             from api_key_secret s join api_key k on k.id = s.key_id
             where s.lookup_id = ?",
        )
        .bind(lookup_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let secret = SecretRecord {
            lookup_id: row.secret_lookup_id,
            key_id: row.key.id.into_uuid(),
            hash: row.secret_hash,
            valid_until: opt_time("api_key_secret", row.secret_valid_until)?,
            created_at: time("api_key_secret", row.secret_created_at)?,
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
        let mut w = self.begin_write().await?;
        for (key_id, at) in uses {
            sqlx::query(
                "update api_key set last_used_at = ?2
                 where id = ?1 and (last_used_at is null or last_used_at < ?2)",
            )
            .bind(id(*key_id))
            .bind(micros(*at))
            .execute(w.conn())
            .await?;
        }
        w.commit().await
    }

    // --- audit ---

    async fn list_audit_events(
        &self,
        workspace_id: Uuid,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        let total: i64 =
            sqlx::query_scalar("select count(*) from audit_event where workspace_id = ?")
                .bind(id(workspace_id))
                .fetch_one(&self.pool)
                .await?;
        let items = sqlx::query_as::<_, AuditRow>(
            "select * from audit_event where workspace_id = ?
             order by at desc, id desc limit ? offset ?",
        )
        .bind(id(workspace_id))
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(AuditEvent::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
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
        let mut w = self.begin_write().await?;
        for d in deltas {
            sqlx::query(
                "insert into usage_minute
                     (key_id, workspace_id, model, minute, requests, input_tokens, output_tokens, cost_pico)
                 values (?, ?, ?, ?, ?, ?, ?, ?)
                 on conflict (key_id, model, minute) do update set
                     requests = usage_minute.requests + excluded.requests,
                     input_tokens = usage_minute.input_tokens + excluded.input_tokens,
                     output_tokens = usage_minute.output_tokens + excluded.output_tokens,
                     cost_pico = usage_minute.cost_pico + excluded.cost_pico",
            )
            .bind(id(d.key_id))
            .bind(id(d.workspace_id))
            .bind(&d.model)
            .bind(floor_minute(d.minute))
            .bind(d.requests)
            .bind(d.input_tokens)
            .bind(d.output_tokens)
            .bind(d.cost_pico)
            .execute(w.conn())
            .await?;
        }
        w.commit().await
    }

    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        // `minute` is never negative (after 1970), so `%` floors it to the bucket start.
        let rows = sqlx::query_as::<_, UsageBucketRow>(
            "select minute - (minute % ?2) as start,
                    model,
                    sum(requests) as requests,
                    sum(input_tokens) as input_tokens,
                    sum(output_tokens) as output_tokens,
                    sum(cost_pico) as cost_pico
             from usage_minute
             where key_id = ?1 and minute >= ?3 and minute < ?4 and (?5 is null or model = ?5)
             group by 1, 2
             order by 1, 2",
        )
        .bind(id(query.key_id))
        .bind(bucket_micros(query.granularity))
        .bind(micros(query.from))
        .bind(micros(query.to))
        .bind(&query.model)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(UsageRow {
                    start: time("usage_minute", r.start)?,
                    model: r.model,
                    requests: r.requests,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_pico: r.cost_pico,
                })
            })
            .collect()
    }

    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals> {
        let row = sqlx::query_as::<_, TotalsRow>(
            "select coalesce(sum(requests), 0) as requests,
                    coalesce(sum(input_tokens), 0) as input_tokens,
                    coalesce(sum(output_tokens), 0) as output_tokens,
                    coalesce(sum(cost_pico), 0) as cost_pico
             from usage_minute
             where key_id = ?1 and minute >= ?2 and (?3 is null or model = ?3)",
        )
        .bind(id(key_id))
        .bind(micros(since))
        .bind(model)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals> {
        let row = sqlx::query_as::<_, TotalsRow>(
            "select coalesce(sum(requests), 0) as requests,
                    coalesce(sum(input_tokens), 0) as input_tokens,
                    coalesce(sum(output_tokens), 0) as output_tokens,
                    coalesce(sum(cost_pico), 0) as cost_pico
             from usage_minute
             where workspace_id = ? and minute >= ?",
        )
        .bind(id(workspace_id))
        .bind(micros(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    // --- rate-limit events ---

    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        for e in events {
            sqlx::query(
                "insert into rate_limit_event (id, workspace_id, key_id, model, limit_kind, limit_value, at)
                 values (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id(e.id))
            .bind(id(e.workspace_id))
            .bind(id(e.key_id))
            .bind(&e.model)
            .bind(&e.limit)
            .bind(&e.limit_value)
            .bind(micros(e.at))
            .execute(w.conn())
            .await?;
        }
        w.commit().await
    }

    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>> {
        const FILTER: &str = "where workspace_id = ?1
              and (?2 is null or key_id = ?2)
              and (?3 is null or at >= ?3)
              and (?4 is null or at < ?4)";
        let count_sql = format!("select count(*) from rate_limit_event {FILTER}");
        let total: i64 = sqlx::query_scalar(&count_sql)
            .bind(id(workspace_id))
            .bind(filter.key_id.map(id))
            .bind(opt_micros(filter.from))
            .bind(opt_micros(filter.to))
            .fetch_one(&self.pool)
            .await?;
        let list_sql = format!(
            "select * from rate_limit_event {FILTER} order by at desc, id desc limit ?5 offset ?6"
        );
        let items = sqlx::query_as::<_, RateLimitRow>(&list_sql)
            .bind(id(workspace_id))
            .bind(filter.key_id.map(id))
            .bind(opt_micros(filter.from))
            .bind(opt_micros(filter.to))
            .bind(page_limit(page))
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(RateLimitEvent::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
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
        let mut w = self.begin_write().await?;
        sqlx::query("delete from once_token where expires_at < ?")
            .bind(micros(now - chrono::TimeDelta::days(1)))
            .execute(w.conn())
            .await?;
        let done = sqlx::query(
            "insert into once_token (token_id, expires_at, used_at) values (?, ?, ?)
             on conflict (token_id) do nothing",
        )
        .bind(token_id)
        .bind(micros(expires_at))
        .bind(micros(now))
        .execute(w.conn())
        .await?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_budget_alert(
        &self,
        key_id: Uuid,
        period_start: DateTime<Utc>,
        threshold_bp: i64,
    ) -> StoreResult<bool> {
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "insert into budget_alert (key_id, period_start, threshold_bp, sent_at) values (?, ?, ?, ?)
             on conflict (key_id, period_start, threshold_bp) do nothing",
        )
        .bind(id(key_id))
        .bind(micros(period_start))
        .bind(threshold_bp)
        .bind(micros(Utc::now()))
        .execute(w.conn())
        .await?;
        w.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
