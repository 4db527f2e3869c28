//! The PostgreSQL backend (production, several instances share one database).
//!
//! Runtime `sqlx::query`/`query_as` with `FromRow` row structs, because the `query!` macros
//! check against a single database at build time (STYLE §1, "sqlx with two backends").
//! Every trait method is one transaction. Timestamps are `timestamptz`, JSON is `jsonb`.
//! Key changes (update, revoke, rotate) and workspace changes that admission reads (credits,
//! deletion) send a `NOTIFY` on [`PgStore::KEY_CHANGE_CHANNEL`] in the same transaction, so
//! every instance drops what it cached about them (DESIGN §7). The payload is JSON:
//! `{"key_id": "<uuid>", "workspace_id": "<uuid>"}` for a key, `{"workspace_id": "<uuid>"}`
//! for a workspace (`listen::Notice`); `listen.rs` hears them ([`KeyChanges`]). Key
//! creation sends none (nothing can be cached about a key that did not exist), nor does
//! `touch_keys` (`last_used_at` is not read on the hot path).
//!
//! This file holds the pool, migrations and the [`Store`] impl, which hands each method to
//! the module of its area; the SQL lives there. Row structs and conversions are shared with
//! the SQLite backend (`store/rows.rs`, `store/codec.rs`).

mod alerts;
mod events;
mod keys;
mod listen;
mod sessions;
mod usage;
mod workspaces;

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sqlx::{
    error::DatabaseError,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions},
    PgConnection, PgPool,
};
use tracing::instrument;
use uuid::Uuid;

pub use self::listen::KeyChanges;
use super::{
    codec::{self, Columns},
    AlertAttempt, AuditEvent, AuditFilter, BudgetAlert, BudgetAlertId, ConsoleSession, EventFilter,
    LastAdmin, Member, NewBudgetAlert, Page, Paged, RateLimitEvent, SecretRecord, SecretVersion,
    SpendRange, SpendScope, Store, StoreError, StoreResult, UsageDelta, UsageQuery, UsageRow,
    UsageTotals, Workspace, DEFAULT_WORKSPACE_ID,
};
use crate::domain::ApiKey;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// PostgreSQL implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// `NOTIFY` channel that names every key that was updated, revoked or rotated, and
    /// every workspace whose credits changed or that was deleted (payload: see the module
    /// doc).
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
// representations

/// Postgres columns: native `uuid` and `timestamptz`, `jsonb` as [`Value`].
enum Pg {}

impl Columns for Pg {
    type Id = Uuid;
    type Time = DateTime<Utc>;
    type Json = Value;

    fn time(_table: &'static str, t: DateTime<Utc>) -> StoreResult<DateTime<Utc>> {
        Ok(t)
    }

    fn to_json<T: Serialize>(value: &T) -> serde_json::Result<Value> {
        serde_json::to_value(value)
    }

    fn from_json<T: DeserializeOwned>(json: Value) -> serde_json::Result<T> {
        serde_json::from_value(json)
    }

    fn json_value(value: Value) -> Value {
        value
    }
}

type KeyJson = codec::KeyJson<Pg>;

/// Unique constraints by name, and the names callers see in `Conflict`.
const UNIQUE_RULES: &[(&str, &str)] = &[
    ("workspace_name", "workspace_name"),
    ("member_username", "member_username"),
    ("workspace_pkey", "workspace_id"),
    ("member_pkey", "member_id"),
    ("api_key_pkey", "api_key_id"),
    ("api_key_secret_pkey", "secret_lookup_id"),
];

fn constraint_name(db: &dyn DatabaseError) -> Option<&str> {
    db.constraint()
}

/// Unique violations become `Conflict` named after the rule; everything else passes through.
fn map_unique(err: sqlx::Error) -> StoreError {
    codec::map_unique(err, constraint_name, UNIQUE_RULES)
}

/// The SQLSTATE of a PostgreSQL error (`None` for another backend's).
fn sqlstate(db: &dyn DatabaseError) -> Option<&str> {
    db.try_downcast_ref::<PgDatabaseError>()
        .map(PgDatabaseError::code)
}

/// The server refused or dropped the connection: class 08 (connection exception), the
/// server shutting down or starting (57P01–57P03), or out of connection slots (53300).
pub(super) fn is_connection_failure(db: &dyn DatabaseError) -> bool {
    sqlstate(db).is_some_and(|code| {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    })
}

/// Worth retrying later: a connection failure, insufficient resources (class 53), a
/// serialization failure or deadlock (40001, 40P01), a lock not available (55P03) or a
/// cancelled statement (57014).
pub(super) fn is_transient(db: &dyn DatabaseError) -> bool {
    is_connection_failure(db)
        || sqlstate(db).is_some_and(|code| {
            code.starts_with("53") || matches!(code, "40001" | "40P01" | "55P03" | "57014")
        })
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

/// Announces, in the caller's transaction, that the key `key_id` of `workspace_id` changed
/// (or, with no key, the workspace itself).
#[instrument(skip_all)]
async fn notify_key_change(
    conn: &mut PgConnection,
    key_id: Option<Uuid>,
    workspace_id: Uuid,
) -> StoreResult<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(PgStore::KEY_CHANGE_CHANNEL)
        .bind(listen::Notice::payload(key_id, workspace_id))
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

    fn pool_stats(&self) -> super::PoolStats {
        super::PoolStats::of(&self.pool)
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn key_changes(&self) -> StoreResult<Option<KeyChanges>> {
        KeyChanges::start(self).await.map(Some)
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
        Ok(codec::all_applied(&MIGRATOR, &applied))
    }

    // --- workspaces and members ---

    async fn default_workspace(&self) -> StoreResult<Workspace> {
        self.get_workspace(DEFAULT_WORKSPACE_ID).await
    }

    async fn create_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::create_workspace(&self.pool, ws, audit).await
    }

    async fn get_workspace(&self, id: Uuid) -> StoreResult<Workspace> {
        workspaces::get_workspace(&self.pool, id).await
    }

    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace> {
        workspaces::find_workspace(&self.pool, name).await
    }

    async fn list_workspaces(&self, page: Page) -> StoreResult<Paged<Workspace>> {
        workspaces::list_workspaces(&self.pool, page).await
    }

    async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::update_workspace(&self.pool, ws, audit).await
    }

    async fn delete_workspace(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        workspaces::delete_workspace(&self.pool, id, at, audit).await
    }

    async fn count_live_keys(&self, workspace_id: Uuid) -> StoreResult<u64> {
        workspaces::count_live_keys(&self.pool, workspace_id).await
    }

    async fn update_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::update_member(&self.pool, member, audit).await
    }

    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::create_member(&self.pool, member, audit).await
    }

    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member> {
        workspaces::find_member(&self.pool, workspace_id, username).await
    }

    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
        workspaces::list_members(&self.pool, workspace_id).await
    }

    async fn delete_member(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        workspaces::delete_member(&self.pool, workspace_id, id, audit).await
    }

    // --- keys ---

    async fn insert_key(
        &self,
        key: &ApiKey,
        secret: &SecretRecord,
        key_cap: Option<i64>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        keys::insert_key(&self.pool, key, secret, key_cap, audit).await
    }

    async fn get_key(&self, workspace_id: Uuid, id: Uuid) -> StoreResult<ApiKey> {
        keys::get_key(&self.pool, workspace_id, id).await
    }

    async fn find_key(&self, id: Uuid) -> StoreResult<ApiKey> {
        keys::find_key(&self.pool, id).await
    }

    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>> {
        keys::list_keys(&self.pool, workspace_id, page).await
    }

    async fn update_key(
        &self,
        key: &ApiKey,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<()> {
        keys::update_key(&self.pool, key, audit, last_admin).await
    }

    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<ApiKey> {
        keys::revoke_key(&self.pool, workspace_id, id, at, audit, last_admin).await
    }

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
        keys::rotate_key(
            &self.pool,
            workspace_id,
            id,
            new_secret,
            partial_key,
            last6,
            old_valid_until,
            audit,
        )
        .await
    }

    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
        keys::find_secret(&self.pool, lookup_id).await
    }

    async fn secret_versions(&self, lookup_ids: &[&str]) -> StoreResult<Vec<SecretVersion>> {
        keys::secret_versions(&self.pool, lookup_ids).await
    }

    async fn count_live_admin_keys(&self) -> StoreResult<u64> {
        keys::count_live_admin_keys(&self.pool).await
    }

    async fn touch_keys(&self, uses: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        keys::touch_keys(&self.pool, uses).await
    }

    // --- audit ---

    async fn add_audit_event(&self, event: &AuditEvent) -> StoreResult<()> {
        events::add_audit_event(&self.pool, event).await
    }

    async fn find_audit_events(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        events::find_audit_events(&self.pool, filter, page).await
    }

    // --- usage ---

    async fn add_usage_batch(&self, batch: Uuid, deltas: &[UsageDelta]) -> StoreResult<bool> {
        usage::add_usage_batch(&self.pool, batch, deltas).await
    }

    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        usage::usage(&self.pool, query).await
    }

    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals> {
        usage::key_usage_totals(&self.pool, key_id, since, model).await
    }

    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals> {
        usage::workspace_usage_totals(&self.pool, workspace_id, since).await
    }

    async fn spend_in(&self, scope: SpendScope, ranges: &[SpendRange]) -> StoreResult<Vec<i64>> {
        usage::spend_in(&self.pool, scope, ranges).await
    }

    // --- rate-limit events ---

    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()> {
        events::add_rate_limit_events(&self.pool, events).await
    }

    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>> {
        events::list_rate_limit_events(&self.pool, workspace_id, filter, page).await
    }

    // --- one-time tokens and alerts ---

    async fn consume_once_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        events::consume_once_token(&self.pool, token_id, expires_at).await
    }

    async fn claim_budget_alert(&self, alert: &NewBudgetAlert) -> StoreResult<bool> {
        alerts::claim_budget_alert(&self.pool, alert).await
    }

    async fn due_budget_alerts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<BudgetAlert>> {
        alerts::due_budget_alerts(&self.pool, now, limit).await
    }

    async fn lease_budget_alert(
        &self,
        id: &BudgetAlertId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        alerts::lease_budget_alert(&self.pool, id, now, until).await
    }

    async fn record_budget_alert_attempt(
        &self,
        id: &BudgetAlertId,
        attempt: &AlertAttempt,
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()> {
        alerts::record_budget_alert_attempt(&self.pool, id, attempt, audit).await
    }

    async fn list_budget_alerts(&self, key_id: Uuid) -> StoreResult<Vec<BudgetAlert>> {
        alerts::list_budget_alerts(&self.pool, key_id).await
    }

    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        audit: &AuditEvent,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<()> {
        sessions::create(&self.pool, session, audit, idle_before).await
    }

    async fn use_console_session(
        &self,
        id: &str,
        idle_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<ConsoleSession> {
        sessions::use_session(&self.pool, id, idle_before, now).await
    }

    async fn delete_console_session(&self, id: &str) -> StoreResult<()> {
        sessions::delete(&self.pool, id).await
    }
}
