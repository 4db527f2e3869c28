//! The storage boundary: one trait, two backends (PostgreSQL for production, SQLite as the
//! embedded default), chosen once from the URL scheme. Each method is one unit of work and
//! opens its own transaction, so callers never see a backend's transaction type
//! (STYLE §3 rules 11–12). Both backends pass `tests/store_conformance.rs`.

mod breaker;
mod codec;
mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::{
    breaker::GuardedStore,
    postgres::{KeyChanges, PgStore},
    sqlite::SqliteStore,
};
use crate::domain::ApiKey;

/// How long [`Store::add_usage_batch`] remembers a batch id. A writer retries a batch until
/// the store takes it, so this bounds the outage after which a batch whose first commit
/// went through unseen could be counted twice.
pub const USAGE_BATCH_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Name of the workspace that exists from the first start.
pub const DEFAULT_WORKSPACE: &str = "default";

/// Id of the `default` workspace, inserted by the first migration of both backends. Looked
/// up by id, not name, so renaming it does not lose it.
pub const DEFAULT_WORKSPACE_ID: Uuid = Uuid::from_u128(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; `constraint` names it (e.g. `member_username`).
    #[error("conflict on {constraint}")]
    Conflict { constraint: &'static str },
    /// Creating one more live key would pass the workspace's cap.
    #[error("the workspace allows at most {cap} live keys")]
    KeyCapReached { cap: i64 },
    /// The change would leave the workspace without an active admin key ([`LastAdmin::Keep`]).
    #[error("the workspace's last active admin key cannot be revoked, demoted or expired")]
    LastAdminKey,
    /// A workspace with live keys cannot be deleted.
    #[error("the workspace still has {live} live keys")]
    WorkspaceHasKeys { live: u64 },
    /// The change would leave a workspace that has an owner without one.
    #[error("the workspace's last owner cannot be removed or demoted")]
    LastOwner,
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON column could not be decoded: the row was written by something else.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The store was found unreachable moments ago and is not tried again until a
    /// background probe reaches it (see [`GuardedStore`]).
    #[error("the store is unreachable")]
    Unavailable,
}

impl StoreError {
    /// The call failed because the store cannot serve it right now (unreachable,
    /// connection lost, pool exhausted, shutting down, overloaded, a lock or transaction
    /// conflict): the same call may succeed later. HTTP answers 503, never 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable => true,
            StoreError::Database(sqlx::Error::Database(db)) => {
                postgres::is_transient(db.as_ref()) || sqlite::is_transient(db.as_ref())
            }
            _ => self.is_unreachable(),
        }
    }

    /// The narrower case of [`is_unavailable`](Self::is_unavailable): the database could
    /// not be reached or the connection to it broke (not a conflict between transactions).
    /// This is what opens [`GuardedStore`]'s circuit.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Unavailable => true,
            StoreError::Database(err) => match err {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed => true,
                sqlx::Error::Database(db) => postgres::is_connection_failure(db.as_ref()),
                _ => false,
            },
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether a key change may take away a workspace's last active admin key (active: not
/// revoked, not expired at the change's time). The keys service decides; the store checks
/// under the same lock and in the same transaction as the write, so two concurrent changes
/// of a workspace's last two admin keys cannot both pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastAdmin {
    /// A change that leaves the workspace with no active admin key, when it had one, writes
    /// nothing and fails with [`StoreError::LastAdminKey`].
    Keep,
    /// No such rule.
    MayGo,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    /// Maximum number of live (not revoked) keys; `None` = no cap.
    pub key_cap: Option<i64>,
    /// Prepaid credit balance in USD; `None` = credits are not enforced.
    pub credits_usd: Option<Decimal>,
    pub webhook_url: Option<String>,
    /// The key budget alerts to `webhook_url` are signed with; set whenever the URL is.
    pub webhook_secret: Option<WebhookSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A workspace's webhook signing key (HMAC-SHA256). Stored as it is, because keygate signs
/// with it; shown once, in the answer that set the webhook URL. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn new(secret: String) -> Self {
        WebhookSecret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    // Declared from least to most rights: the derived order compares rights.
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub username: String,
    pub role: Role,
    /// argon2id PHC string of the console password.
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One secret that authenticates a key. A key has one current secret, plus the previous
/// ones during a rotation's grace period (`valid_until` set).
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRecord {
    /// Public lookup id embedded in the token (`kg_<lookup_id>_…`); unique across all keys.
    pub lookup_id: String,
    pub key_id: Uuid,
    /// argon2id PHC string of the whole presented token.
    pub hash: String,
    /// `None` for the current secret; set on the old one when the key is rotated.
    pub valid_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub workspace_id: Uuid,
    /// Who acted: `key:<uuid>`, `member:<username>`, `cli`, `bootstrap`, `web3:<address>`.
    pub actor: String,
    /// e.g. `key.create`, `key.update`, `key.rotate`, `key.revoke`, `member.create`.
    pub action: String,
    /// What was acted on, e.g. `key:<uuid>`.
    pub target: String,
    pub at: DateTime<Utc>,
    /// Client address as seen by the server, when the action came over HTTP.
    pub source: Option<String>,
    /// Extra facts (field names changed, grace seconds…). Never secrets.
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based.
    pub page: u32,
    pub limit: u32,
}

impl Page {
    pub fn offset(self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.limit)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// Usage to add to one key·model·minute bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDelta {
    pub key_id: Uuid,
    pub workspace_id: Uuid,
    pub model: String,
    /// Start of the minute (seconds are zero).
    pub minute: DateTime<Utc>,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Cost in pico-USD (see `money::PICO_PER_USD`).
    pub cost_pico: i64,
}

/// A secret's hash and end of validity, and its key's last change: every change to a key
/// that matters to authentication (update, revocation, rotation) moves `updated_at` or
/// `revoked_at`, so a cached key whose four values match is what the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    pub lookup_id: String,
    pub hash: String,
    pub valid_until: Option<DateTime<Utc>>,
    pub key_updated_at: DateTime<Utc>,
    pub key_revoked_at: Option<DateTime<Utc>>,
}

/// Minutes of one key's or workspace's usage: `from` (inclusive) until `until` (exclusive;
/// `None`: all since `from`), for [`Store::spend_in`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendRange {
    pub id: Uuid,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

impl SpendRange {
    /// Everything since `from`.
    pub fn from(id: Uuid, from: DateTime<Utc>) -> Self {
        SpendRange {
            id,
            from,
            until: None,
        }
    }
}

/// Whose spend [`Store::spend_in`] sums: keys' own, or every key of workspaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendScope {
    Key,
    Workspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageQuery {
    pub key_id: Uuid,
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive.
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    pub model: Option<String>,
}

/// One aggregated usage bucket, ordered by (`start`, `model`).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub start: DateTime<Utc>,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_pico: i64,
}

/// Sums over a time range, for budgets and self-service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_pico: i64,
}

/// A refused inference request (DESIGN §3).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitEvent {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub key_id: Uuid,
    pub model: Option<String>,
    /// `rpm | rpd | tpm | tpd | budget | credits | concurrency`.
    pub limit: String,
    /// The limit's configured value, as text (`"60"`, `"25.00"`).
    pub limit_value: String,
    pub at: DateTime<Utc>,
}

/// Which audit events to list; every field narrows (exact matches, `from` inclusive, `to`
/// exclusive). No `workspace_id`: every workspace's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub workspace_id: Option<Uuid>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub key_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// A change some instance (this one included) made that cached state must follow, as
/// [`KeyChanges::next`] hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// The key was updated, revoked or rotated. `workspace_id` is `None` in notices from
    /// instances older than the JSON payload.
    Key {
        key_id: Uuid,
        workspace_id: Option<Uuid>,
    },
    /// The workspace's credits changed, or it was deleted.
    Workspace { workspace_id: Uuid },
    /// Changes may have gone unheard (the listening connection was lost): anything cached
    /// may be out of date.
    Missed,
}

/// Identifies one budget alert: at most one per key, budget period and threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BudgetAlertId {
    pub key_id: Uuid,
    pub period_start: DateTime<Utc>,
    /// The threshold in basis points of the budget (0.8 = 8000).
    pub threshold_bp: i64,
}

/// A budget alert as claimed: what to POST, and when its first attempt's lease ends.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBudgetAlert {
    pub id: BudgetAlertId,
    pub workspace_id: Uuid,
    /// The JSON body, fixed at the claim (each attempt signs it with a fresh timestamp).
    pub payload: String,
    pub claimed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

/// Where a budget alert's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Pending,
    Delivered,
    /// Retried until the retry horizon without a 2xx answer.
    Failed,
    /// The destination is (or resolves to) a non-public address and
    /// `webhooks.allow_private` is off: never called.
    Refused,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Pending => "pending",
            AlertStatus::Delivered => "delivered",
            AlertStatus::Failed => "failed",
            AlertStatus::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(AlertStatus::Pending),
            "delivered" => Some(AlertStatus::Delivered),
            "failed" => Some(AlertStatus::Failed),
            "refused" => Some(AlertStatus::Refused),
            _ => None,
        }
    }
}

/// A signed-in console session (src/http/console). `id` is the SHA-256 (hex) of the
/// cookie's random value; the cookie value itself is never stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSession {
    pub id: String,
    pub workspace_id: Uuid,
    /// `member:<username>` or `key:<uuid>`.
    pub principal: String,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// The connection pool's state, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

impl PoolStats {
    fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolStats {
        PoolStats {
            size: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        }
    }
}

/// A stored budget alert and its delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    pub id: BudgetAlertId,
    pub workspace_id: Uuid,
    pub payload: String,
    pub claimed_at: DateTime<Utc>,
    pub status: AlertStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertAttempt {
    pub at: DateTime<Utc>,
    /// `Pending` to try again at `next_attempt_at`; anything else is final.
    pub status: AlertStatus,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name for logs and metrics: `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// The connection pool's state now.
    fn pool_stats(&self) -> PoolStats;
    async fn migrate(&self) -> StoreResult<()>;
    /// The database answers a trivial query.
    async fn ping(&self) -> StoreResult<()>;
    /// Every embedded migration has been applied successfully.
    async fn migrations_applied(&self) -> StoreResult<bool>;
    /// Starts hearing the changes every instance on this store makes to keys and
    /// workspaces (PostgreSQL: `LISTEN`). `None` for a store only one instance uses
    /// (SQLite), where the instance's own changes are the only ones.
    async fn key_changes(&self) -> StoreResult<Option<KeyChanges>> {
        Ok(None)
    }

    // --- workspaces and members ---
    // A deleted workspace is invisible to every read here (`NotFound`), as are its members.
    /// The `default` workspace, created by the migrations.
    async fn default_workspace(&self) -> StoreResult<Workspace>;
    /// `Conflict{constraint: "workspace_name"}` on a duplicate name.
    async fn create_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()>;
    async fn get_workspace(&self, id: Uuid) -> StoreResult<Workspace>;
    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace>;
    /// Oldest first (`created_at`, then `id`).
    async fn list_workspaces(&self, page: Page) -> StoreResult<Paged<Workspace>>;
    /// Writes every mutable field (name, key_cap, credits, webhook URL and secret,
    /// updated_at) and the audit event.
    async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()>;
    /// Deletes the workspace and its members, with the audit event, unless it has live
    /// keys (`WorkspaceHasKeys`, checked under the same lock as key creation, so no key
    /// can slip in). The row stays, marked deleted and renamed so that its name is free,
    /// because revoked keys, usage and audit events still point at it.
    async fn delete_workspace(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    /// Live (not revoked) keys of the workspace.
    async fn count_live_keys(&self, workspace_id: Uuid) -> StoreResult<u64>;
    /// `Conflict{constraint: "member_username"}` on a duplicate username in the workspace;
    /// `NotFound` if the workspace is gone.
    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()>;
    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member>;
    /// Oldest first.
    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>>;
    /// Writes the member's role, password hash and updated_at, with the audit event.
    /// `LastOwner` when it would demote the workspace's only owner (checked under the
    /// workspace's lock, so two concurrent demotions of the last two owners leave one).
    async fn update_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()>;
    /// `LastOwner` when it is the workspace's only owner (checked as for `update_member`).
    async fn delete_member(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()>;

    // --- keys ---
    /// Inserts the key, its first secret and the audit event atomically. When `key_cap` is
    /// set and the workspace already has that many live keys, nothing is written and
    /// `KeyCapReached` is returned; this holds under concurrent inserts. `NotFound` when
    /// the workspace is missing or deleted (also under a concurrent delete).
    async fn insert_key(
        &self,
        key: &ApiKey,
        secret: &SecretRecord,
        key_cap: Option<i64>,
        audit: &AuditEvent,
    ) -> StoreResult<()>;
    /// A live (not revoked) key of the workspace; `NotFound` otherwise.
    async fn get_key(&self, workspace_id: Uuid, id: Uuid) -> StoreResult<ApiKey>;
    /// A live key of any workspace (for callers that manage every workspace).
    async fn find_key(&self, id: Uuid) -> StoreResult<ApiKey>;
    /// Live keys of the workspace, oldest first (`created_at`, then `id`).
    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>>;
    /// Writes every mutable field of `key` (name, expires_at, limits…, updated_at) and the
    /// audit event. `NotFound` if the key is revoked or missing; `LastAdminKey` under
    /// [`LastAdmin::Keep`] (active judged at `key.updated_at`).
    async fn update_key(
        &self,
        key: &ApiKey,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<()>;
    /// Sets `revoked_at`; `NotFound` if missing or already revoked; `LastAdminKey` under
    /// [`LastAdmin::Keep`]. Returns the revoked key.
    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<ApiKey>;
    /// Adds `new_secret` as the key's current secret, limits every older secret to
    /// `old_valid_until` (deleting those already past it), sets `partial_key`/`last6`/
    /// `updated_at`, writes the audit event. Returns the updated key.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        new_secret: &SecretRecord,
        partial_key: &str,
        last6: &str,
        old_valid_until: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey>;
    /// The secret with this lookup id and its key, revoked or not (the caller decides).
    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>>;
    /// For each of `lookup_ids` that has a secret, what decides whether a cached copy of it
    /// and its key is still current ([`SecretVersion`]); in no particular order. The key
    /// cache asks it for every key in use, in one statement per pass (`crate::keys::cache`),
    /// and reads whole rows only for what changed.
    async fn secret_versions(&self, lookup_ids: &[&str]) -> StoreResult<Vec<SecretVersion>>;
    /// Number of live admin keys across all workspaces (bootstrap checks for zero).
    async fn count_live_admin_keys(&self) -> StoreResult<u64>;
    /// Raises `last_used_at` to the given times (never lowers it). Batched by the caller.
    async fn touch_keys(&self, uses: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()>;

    // --- audit ---
    /// Records an event that goes with no other change (a failed console sign-in). Every
    /// change writes its own event in its own transaction instead.
    async fn add_audit_event(&self, event: &AuditEvent) -> StoreResult<()>;
    /// Newest first (`at`, then `id`).
    async fn find_audit_events(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>>;
    /// One workspace's audit events, newest first.
    async fn list_audit_events(
        &self,
        workspace_id: Uuid,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        let filter = AuditFilter {
            workspace_id: Some(workspace_id),
            ..AuditFilter::default()
        };
        self.find_audit_events(&filter, page).await
    }

    // --- usage ---
    /// Adds each delta to its key·model·minute bucket (upsert, summing), in one
    /// transaction, at most once per `batch` id: a batch whose id was applied before is
    /// skipped and `Ok(false)` returned. So a writer whose commit went through but whose
    /// answer was lost (the connection broke) can retry with the same id without counting
    /// twice. Ids are remembered for [`USAGE_BATCH_RETENTION`].
    async fn add_usage_batch(&self, batch: Uuid, deltas: &[UsageDelta]) -> StoreResult<bool>;
    /// [`add_usage_batch`](Self::add_usage_batch) under a fresh id (no retry protection).
    async fn add_usage(&self, deltas: &[UsageDelta]) -> StoreResult<()> {
        self.add_usage_batch(Uuid::now_v7(), deltas)
            .await
            .map(|_| ())
    }
    /// Buckets aggregated to the query's granularity (UTC), ordered by start then model.
    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>>;
    /// Sums for one key since `since` (inclusive), optionally one model.
    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals>;
    /// Sums for every key of a workspace since `since` (inclusive).
    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals>;
    /// The cost in pico-USD spent in each of `ranges`, in their order: by keys or by
    /// workspaces, as `scope` says. The budget ledger re-reads every active account after
    /// each usage flush, so a store answers many in one statement (a statement per account
    /// was a round trip each: 10 000 keys in use, 10 000 a flush).
    async fn spend_in(&self, scope: SpendScope, ranges: &[SpendRange]) -> StoreResult<Vec<i64>>;

    // --- rate-limit events ---
    /// Inserts the events; an event whose id is stored already is skipped, so a batch
    /// retried after a lost commit answer is not stored twice.
    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()>;
    /// Newest first.
    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>>;

    // --- one-time tokens and alerts ---
    /// Records a one-time token (Web3 sign-in) as used. `false` if it was used before.
    async fn consume_once_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Claims the right to send one budget alert (key, period start, threshold in basis
    /// points) and, when it is the first claim, stores it as a pending delivery whose
    /// first attempt belongs to the caller until `alert.next_attempt_at`. `false` if it
    /// was claimed before (by any instance, at any time): the caller sends nothing.
    async fn claim_budget_alert(&self, alert: &NewBudgetAlert) -> StoreResult<bool>;
    /// Pending alerts whose `next_attempt_at` has come (oldest first, at most `limit`).
    async fn due_budget_alerts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<BudgetAlert>>;
    /// Takes the next attempt of a pending alert that is due at `now`, by moving its
    /// `next_attempt_at` to `until` (the lease). `false` if it is not pending or not due
    /// (another instance took it): the caller must not send it.
    async fn lease_budget_alert(
        &self,
        id: &BudgetAlertId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Records one delivery attempt (`attempts + 1`, its error, the next attempt's time or
    /// the final status) with the audit event of a final outcome, in one transaction.
    async fn record_budget_alert_attempt(
        &self,
        id: &BudgetAlertId,
        attempt: &AlertAttempt,
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()>;
    /// Every alert of a key, oldest claim first (the operator's view of deliveries).
    async fn list_budget_alerts(&self, key_id: Uuid) -> StoreResult<Vec<BudgetAlert>>;

    // --- console sessions ---
    /// Stores a new session with its sign-in audit event, in one transaction, and drops
    /// the sessions last seen before `idle_before` (they can never be used again).
    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        audit: &AuditEvent,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The session with this id, if it was seen at or after `idle_before` (`NotFound`
    /// otherwise); its `last_seen_at` becomes `now`.
    async fn use_console_session(
        &self,
        id: &str,
        idle_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<ConsoleSession>;
    async fn delete_console_session(&self, id: &str) -> StoreResult<()>;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store named by `url` (`postgres://…` or `sqlite://…`), behind a
/// [`GuardedStore`] (calls fail fast while the store is unreachable). Does not migrate.
pub async fn connect(url: &str) -> StoreResult<DynStore> {
    let store: DynStore = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PgStore::connect(url).await?)
    } else if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(url).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(redact_url(url)));
    };
    Ok(Arc::new(GuardedStore::new(store)))
}

/// The URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}://{}:***{}",
                    &url[..scheme_end],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
