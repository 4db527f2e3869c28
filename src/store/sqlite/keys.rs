//! API keys and their secrets (SQLite).

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use tracing::instrument;
use uuid::Uuid;

use super::{id, insert_audit, map_unique, micros, opt_micros, KeyJson, Lite, SqliteStore};
use crate::{
    domain::ApiKey,
    store::{
        codec::{page_limit, paged, BindKeyJson},
        rows::{KeyRow, SecretKeyRow, SecretVersionRow},
        AuditEvent, LastAdmin, Page, Paged, SecretRecord, SecretVersion, StoreError, StoreResult,
    },
};

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

pub(super) async fn insert_key(
    store: &SqliteStore,
    key: &ApiKey,
    secret: &SecretRecord,
    key_cap: Option<i64>,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let json = KeyJson::new(key)?;
    // BEGIN IMMEDIATE holds the database's write lock from here to commit, so the count
    // cannot change between the check and the insert.
    let mut w = store.begin_write().await?;
    super::workspaces::require_live_workspace(w.conn(), key.workspace_id).await?;
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
             model_limits, max_parallel, ip_allowlist, alert_thresholds, compat, wallet_address,
             fit_max_tokens)
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .bind_key_json(json)
    .bind(&key.wallet_address)
    .bind(key.fit_max_tokens)
    .execute(w.conn())
    .await
    .map_err(map_unique)?;
    insert_secret(w.conn(), secret).await?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

pub(super) async fn get_key(
    store: &SqliteStore,
    workspace_id: Uuid,
    key_id: Uuid,
) -> StoreResult<ApiKey> {
    sqlx::query_as::<_, KeyRow<Lite>>(
        "select * from api_key where workspace_id = ? and id = ? and revoked_at is null",
    )
    .bind(id(workspace_id))
    .bind(id(key_id))
    .fetch_optional(&store.pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn find_key(store: &SqliteStore, key_id: Uuid) -> StoreResult<ApiKey> {
    sqlx::query_as::<_, KeyRow<Lite>>("select * from api_key where id = ? and revoked_at is null")
        .bind(id(key_id))
        .fetch_optional(&store.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

pub(super) async fn list_keys(
    store: &SqliteStore,
    workspace_id: Uuid,
    page: Page,
) -> StoreResult<Paged<ApiKey>> {
    let total: i64 = sqlx::query_scalar(
        "select count(*) from api_key where workspace_id = ? and revoked_at is null",
    )
    .bind(id(workspace_id))
    .fetch_one(&store.pool)
    .await?;
    let rows = sqlx::query_as::<_, KeyRow<Lite>>(
        "select * from api_key where workspace_id = ? and revoked_at is null
         order by created_at, id limit ? offset ?",
    )
    .bind(id(workspace_id))
    .bind(page_limit(page))
    .bind(page.offset())
    .fetch_all(&store.pool)
    .await?;
    paged(rows, total)
}

/// Active admin keys of the workspace at `now`: not revoked, not expired.
async fn active_admins(
    conn: &mut SqliteConnection,
    workspace_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from api_key
         where workspace_id = ? and kind = 'admin' and revoked_at is null
           and (expires_at is null or expires_at > ?)",
    )
    .bind(id(workspace_id))
    .bind(micros(now))
    .fetch_one(conn)
    .await?)
}

/// Under [`LastAdmin::Keep`], the workspace's active admin keys before the change. The
/// write transaction (`BEGIN IMMEDIATE`) already keeps every other writer out until commit.
async fn admins_before(
    conn: &mut SqliteConnection,
    workspace_id: Uuid,
    now: DateTime<Utc>,
    last_admin: LastAdmin,
) -> StoreResult<Option<i64>> {
    match last_admin {
        LastAdmin::MayGo => Ok(None),
        LastAdmin::Keep => active_admins(conn, workspace_id, now).await.map(Some),
    }
}

/// Fails with `LastAdminKey` when the change just made (in the same transaction) took the
/// workspace's active admin keys from some to none.
async fn check_admins_after(
    conn: &mut SqliteConnection,
    workspace_id: Uuid,
    now: DateTime<Utc>,
    before: Option<i64>,
) -> StoreResult<()> {
    match before {
        Some(before) if before > 0 && active_admins(conn, workspace_id, now).await? == 0 => {
            Err(StoreError::LastAdminKey)
        }
        _ => Ok(()),
    }
}

pub(super) async fn update_key(
    store: &SqliteStore,
    key: &ApiKey,
    audit: &AuditEvent,
    last_admin: LastAdmin,
) -> StoreResult<()> {
    let json = KeyJson::new(key)?;
    let mut w = store.begin_write().await?;
    let before = admins_before(w.conn(), key.workspace_id, key.updated_at, last_admin).await?;
    let done = sqlx::query(
        "update api_key
         set name = ?3, kind = ?4, expires_at = ?5, metadata = ?6, allowed_models = ?7, budget = ?8,
             limits = ?9, model_limits = ?10, max_parallel = ?11, ip_allowlist = ?12,
             alert_thresholds = ?13, compat = ?14, wallet_address = ?15, updated_at = ?16,
             fit_max_tokens = ?17
         where workspace_id = ?1 and id = ?2 and revoked_at is null",
    )
    .bind(id(key.workspace_id))
    .bind(id(key.id))
    .bind(&key.name)
    .bind(key.kind.as_str())
    .bind(opt_micros(key.expires_at))
    .bind_key_json(json)
    .bind(&key.wallet_address)
    .bind(micros(key.updated_at))
    .bind(key.fit_max_tokens)
    .execute(w.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    check_admins_after(w.conn(), key.workspace_id, key.updated_at, before).await?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

pub(super) async fn revoke_key(
    store: &SqliteStore,
    workspace_id: Uuid,
    key_id: Uuid,
    at: DateTime<Utc>,
    audit: &AuditEvent,
    last_admin: LastAdmin,
) -> StoreResult<ApiKey> {
    let mut w = store.begin_write().await?;
    let before = admins_before(w.conn(), workspace_id, at, last_admin).await?;
    let row = sqlx::query_as::<_, KeyRow<Lite>>(
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
    check_admins_after(w.conn(), workspace_id, at, before).await?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await?;
    Ok(key)
}

/// "Now" for deciding which old secrets are already expired is `new_secret.created_at`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rotate_key(
    store: &SqliteStore,
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
    let mut w = store.begin_write().await?;
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
    sqlx::query(
        "delete from api_key_secret where key_id = ?1 and min(coalesce(valid_until, ?2), ?2) <= ?3",
    )
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
    let row = sqlx::query_as::<_, KeyRow<Lite>>(
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

pub(super) async fn find_secret(
    store: &SqliteStore,
    lookup_id: &str,
) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
    sqlx::query_as::<_, SecretKeyRow<Lite>>(
        "select s.lookup_id as secret_lookup_id, s.hash as secret_hash,
                s.valid_until as secret_valid_until, s.created_at as secret_created_at, k.*
         from api_key_secret s join api_key k on k.id = s.key_id
         where s.lookup_id = ?",
    )
    .bind(lookup_id)
    .fetch_optional(&store.pool)
    .await?
    .map(SecretKeyRow::into_pair)
    .transpose()
}

/// The versions of many secrets in one statement (the key cache's re-read ahead): the ids
/// go in as one JSON array, which SQLite's `json_each` unpacks, so the statement has one
/// parameter however many ids there are.
pub(super) async fn secret_versions(
    store: &SqliteStore,
    lookup_ids: &[&str],
) -> StoreResult<Vec<SecretVersion>> {
    if lookup_ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = serde_json::to_string(lookup_ids).map_err(|e| StoreError::Corrupt {
        table: "api_key_secret",
        reason: e.to_string(),
    })?;
    sqlx::query_as::<_, SecretVersionRow<Lite>>(
        "select s.lookup_id, s.hash, s.valid_until, k.updated_at, k.revoked_at
         from api_key_secret s join api_key k on k.id = s.key_id
         where s.lookup_id in (select value from json_each(?))",
    )
    .bind(ids)
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(SecretVersion::try_from)
    .collect()
}

pub(super) async fn count_live_admin_keys(store: &SqliteStore) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar(
        "select count(*) from api_key where kind = 'admin' and revoked_at is null",
    )
    .fetch_one(&store.pool)
    .await?;
    Ok(n.unsigned_abs())
}

pub(super) async fn touch_keys(
    store: &SqliteStore,
    uses: &[(Uuid, DateTime<Utc>)],
) -> StoreResult<()> {
    if uses.is_empty() {
        return Ok(());
    }
    let mut w = store.begin_write().await?;
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
