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
//!
//! No change notices: a SQLite file serves one instance, whose own key changes mark its
//! cache at once (`KeysService`), so [`Store::key_changes`] keeps its default (`None`) and
//! no listener runs.
//!
//! This file holds the pool, the write lock, migrations and the [`Store`] impl, which hands
//! each method to the module of its area; the SQL lives there. Row structs and conversions
//! are shared with the Postgres backend (`store/rows.rs`, `store/codec.rs`).

mod alerts;
mod events;
mod keys;
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
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Sqlite, SqliteConnection, SqlitePool, Transaction,
};
use tokio::sync::{Mutex, MutexGuard};
use tracing::instrument;
use uuid::{fmt::Hyphenated, Uuid};

use super::{
    codec::{self, corrupt, Columns},
    AlertAttempt, AuditEvent, AuditFilter, BudgetAlert, BudgetAlertId, ConsoleSession, EventFilter,
    LastAdmin, Member, NewBudgetAlert, Page, Paged, RateLimitEvent, SecretRecord, SecretVersion,
    SpendRange, SpendScope, Store, StoreError, StoreResult, UsageDelta, UsageQuery, UsageRow,
    UsageTotals, Workspace, DEFAULT_WORKSPACE_ID,
};
use crate::domain::ApiKey;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serialises this process's write transactions (see the module docs).
    write_lock: Mutex<()>,
    /// Next to a database file: the file `migrate` locks, so that instances starting
    /// together on one file migrate it one after the other (sqlx takes no lock on SQLite,
    /// and two instances would both run the first migration). `None` in memory.
    migrate_lock: Option<std::path::PathBuf>,
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
        let migrate_lock = (!memory).then(|| {
            let mut name = options.get_filename().as_os_str().to_owned();
            name.push(".migrate-lock");
            std::path::PathBuf::from(name)
        });
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
            migrate_lock,
        })
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`) behind the process-wide write lock.
    async fn begin_write(&self) -> StoreResult<WriteTx<'_>> {
        let guard = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx { tx, _guard: guard })
    }
}

/// `path` opened (created if missing) and locked exclusively, waiting for another
/// process that holds it.
async fn lock_file(path: std::path::PathBuf) -> StoreResult<std::fs::File> {
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        lock_exclusive(&file)?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|err| std::io::Error::other(err.to_string()))
    .and_then(|result| result);
    locked.map_err(|err| StoreError::from(sqlx::Error::Io(err)))
}

/// `flock(LOCK_EX)`, waiting for the holder. By hand because `File::lock` is newer than the
/// crate's MSRV (1.85); the kernel drops the lock when the file is closed.
#[cfg(target_os = "linux")]
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` takes a file descriptor and a flag and touches no memory; the
    // descriptor is `file`'s own and stays open for the call.
    match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Elsewhere the lock is not taken: keygate runs on Linux (the image and the tests).
#[cfg(not(target_os = "linux"))]
fn lock_exclusive(_file: &std::fs::File) -> std::io::Result<()> {
    Ok(())
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

/// SQLite columns: uuids as hyphenated TEXT, timestamps as INTEGER microseconds, JSON as
/// TEXT.
enum Lite {}

impl Columns for Lite {
    type Id = Hyphenated;
    type Time = i64;
    type Json = String;

    fn time(table: &'static str, v: i64) -> StoreResult<DateTime<Utc>> {
        DateTime::from_timestamp_micros(v)
            .ok_or_else(|| corrupt(table, format!("timestamp {v} out of range")))
    }

    fn to_json<T: Serialize>(value: &T) -> serde_json::Result<String> {
        serde_json::to_string(value)
    }

    fn from_json<T: DeserializeOwned>(json: String) -> serde_json::Result<T> {
        serde_json::from_str(&json)
    }

    fn json_value(value: Value) -> String {
        value.to_string()
    }
}

type KeyJson = codec::KeyJson<Lite>;

fn id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

/// SQLite does not report constraint names, only `UNIQUE constraint failed: table.col, …`:
/// the column lists, and the names callers see in `Conflict`.
const UNIQUE_RULES: &[(&str, &str)] = &[
    ("workspace.name", "workspace_name"),
    ("member.workspace_id, member.username", "member_username"),
    ("workspace.id", "workspace_id"),
    ("member.id", "member_id"),
    ("api_key.id", "api_key_id"),
    ("api_key_secret.lookup_id", "secret_lookup_id"),
];

fn failed_columns(db: &dyn DatabaseError) -> Option<&str> {
    db.message().rsplit(": ").next()
}

/// Unique violations become `Conflict` named after the rule; everything else passes through.
fn map_unique(err: sqlx::Error) -> StoreError {
    codec::map_unique(err, failed_columns, UNIQUE_RULES)
}

/// Worth retrying later: the primary result code (the low byte of the extended code
/// SQLite reports) is BUSY or LOCKED (the write lock not obtained within the busy
/// timeout), IOERR, FULL (disk full) or CANTOPEN.
pub(super) fn is_transient(db: &dyn DatabaseError) -> bool {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, BUSY | LOCKED | IOERR | FULL | CANTOPEN))
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

// ---------------------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn pool_stats(&self) -> super::PoolStats {
        super::PoolStats::of(&self.pool)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let _guard = self.write_lock.lock().await;
        // Held (an exclusive `flock`) until the migrations are done; closing the file on
        // drop releases it, also if this process dies.
        let _file_lock = match &self.migrate_lock {
            Some(path) => Some(lock_file(path.clone()).await?),
            None => None,
        };
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
        Ok(codec::all_applied(&MIGRATOR, &applied))
    }

    // --- workspaces and members ---

    async fn default_workspace(&self) -> StoreResult<Workspace> {
        self.get_workspace(DEFAULT_WORKSPACE_ID).await
    }

    async fn create_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::create_workspace(self, ws, audit).await
    }

    async fn get_workspace(&self, ws_id: Uuid) -> StoreResult<Workspace> {
        workspaces::get_workspace(self, ws_id).await
    }

    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace> {
        workspaces::find_workspace(self, name).await
    }

    async fn list_workspaces(&self, page: Page) -> StoreResult<Paged<Workspace>> {
        workspaces::list_workspaces(self, page).await
    }

    async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::update_workspace(self, ws, audit).await
    }

    async fn delete_workspace(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        workspaces::delete_workspace(self, id, at, audit).await
    }

    async fn count_live_keys(&self, workspace_id: Uuid) -> StoreResult<u64> {
        workspaces::count_live_keys(self, workspace_id).await
    }

    async fn update_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::update_member(self, member, audit).await
    }

    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        workspaces::create_member(self, member, audit).await
    }

    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member> {
        workspaces::find_member(self, workspace_id, username).await
    }

    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
        workspaces::list_members(self, workspace_id).await
    }

    async fn delete_member(
        &self,
        workspace_id: Uuid,
        member_id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        workspaces::delete_member(self, workspace_id, member_id, audit).await
    }

    // --- keys ---

    async fn insert_key(
        &self,
        key: &ApiKey,
        secret: &SecretRecord,
        key_cap: Option<i64>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        keys::insert_key(self, key, secret, key_cap, audit).await
    }

    async fn get_key(&self, workspace_id: Uuid, key_id: Uuid) -> StoreResult<ApiKey> {
        keys::get_key(self, workspace_id, key_id).await
    }

    async fn find_key(&self, key_id: Uuid) -> StoreResult<ApiKey> {
        keys::find_key(self, key_id).await
    }

    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>> {
        keys::list_keys(self, workspace_id, page).await
    }

    async fn update_key(
        &self,
        key: &ApiKey,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<()> {
        keys::update_key(self, key, audit, last_admin).await
    }

    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        key_id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<ApiKey> {
        keys::revoke_key(self, workspace_id, key_id, at, audit, last_admin).await
    }

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
        keys::rotate_key(
            self,
            workspace_id,
            key_id,
            new_secret,
            partial_key,
            last6,
            old_valid_until,
            audit,
        )
        .await
    }

    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
        keys::find_secret(self, lookup_id).await
    }

    async fn secret_versions(&self, lookup_ids: &[&str]) -> StoreResult<Vec<SecretVersion>> {
        keys::secret_versions(self, lookup_ids).await
    }

    async fn count_live_admin_keys(&self) -> StoreResult<u64> {
        keys::count_live_admin_keys(self).await
    }

    async fn touch_keys(&self, uses: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        keys::touch_keys(self, uses).await
    }

    // --- audit ---

    async fn add_audit_event(&self, event: &AuditEvent) -> StoreResult<()> {
        events::add_audit_event(self, event).await
    }

    async fn find_audit_events(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        events::find_audit_events(self, filter, page).await
    }

    // --- usage ---

    async fn add_usage_batch(&self, batch: Uuid, deltas: &[UsageDelta]) -> StoreResult<bool> {
        usage::add_usage_batch(self, batch, deltas).await
    }

    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        usage::usage(self, query).await
    }

    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals> {
        usage::key_usage_totals(self, key_id, since, model).await
    }

    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals> {
        usage::workspace_usage_totals(self, workspace_id, since).await
    }

    async fn spend_in(&self, scope: SpendScope, ranges: &[SpendRange]) -> StoreResult<Vec<i64>> {
        usage::spend_in(self, scope, ranges).await
    }

    // --- rate-limit events ---

    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()> {
        events::add_rate_limit_events(self, events).await
    }

    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>> {
        events::list_rate_limit_events(self, workspace_id, filter, page).await
    }

    // --- one-time tokens and alerts ---

    async fn consume_once_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        events::consume_once_token(self, token_id, expires_at).await
    }

    async fn claim_budget_alert(&self, alert: &NewBudgetAlert) -> StoreResult<bool> {
        alerts::claim_budget_alert(self, alert).await
    }

    async fn due_budget_alerts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<BudgetAlert>> {
        alerts::due_budget_alerts(self, now, limit).await
    }

    async fn lease_budget_alert(
        &self,
        id: &BudgetAlertId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        alerts::lease_budget_alert(self, id, now, until).await
    }

    async fn record_budget_alert_attempt(
        &self,
        id: &BudgetAlertId,
        attempt: &AlertAttempt,
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()> {
        alerts::record_budget_alert_attempt(self, id, attempt, audit).await
    }

    async fn list_budget_alerts(&self, key_id: Uuid) -> StoreResult<Vec<BudgetAlert>> {
        alerts::list_budget_alerts(self, key_id).await
    }

    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        audit: &AuditEvent,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<()> {
        sessions::create(self, session, audit, idle_before).await
    }

    async fn use_console_session(
        &self,
        id: &str,
        idle_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<ConsoleSession> {
        sessions::use_session(self, id, idle_before, now).await
    }

    async fn delete_console_session(&self, id: &str) -> StoreResult<()> {
        sessions::delete(self, id).await
    }
}
