//! Workspaces and their members (SQLite).
//!
//! Every write runs under `BEGIN IMMEDIATE` (see the module above), so a check and the
//! write after it (no live keys before a delete, another owner before a demotion) see no
//! concurrent change.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use tracing::instrument;
use uuid::Uuid;

use super::{id, insert_audit, map_unique, micros, Lite, SqliteStore};
use crate::store::{
    codec::{page_limit, paged},
    rows::{MemberRow, WorkspaceRow},
    AuditEvent, Member, Page, Paged, Role, StoreError, StoreResult, Workspace,
};

/// `NotFound` unless the workspace exists and is not deleted.
#[instrument(skip_all)]
pub(super) async fn require_live_workspace(
    conn: &mut SqliteConnection,
    ws_id: Uuid,
) -> StoreResult<()> {
    sqlx::query("select id from workspace where id = ? and deleted_at is null")
        .bind(id(ws_id))
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(())
}

pub(super) async fn create_workspace(
    store: &SqliteStore,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    sqlx::query(
        "insert into workspace (id, name, key_cap, credits_usd, webhook_url, webhook_secret,
                                created_at, updated_at)
         values (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id(ws.id))
    .bind(&ws.name)
    .bind(ws.key_cap)
    .bind(ws.credits_usd.map(|d| d.to_string()))
    .bind(&ws.webhook_url)
    .bind(ws.webhook_secret.as_ref().map(|s| s.expose()))
    .bind(micros(ws.created_at))
    .bind(micros(ws.updated_at))
    .execute(w.conn())
    .await
    .map_err(map_unique)?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

pub(super) async fn get_workspace(store: &SqliteStore, ws_id: Uuid) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Lite>>(
        "select * from workspace where id = ? and deleted_at is null",
    )
    .bind(id(ws_id))
    .fetch_optional(&store.pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn find_workspace(store: &SqliteStore, name: &str) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Lite>>(
        "select * from workspace where name = ? and deleted_at is null",
    )
    .bind(name)
    .fetch_optional(&store.pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn list_workspaces(
    store: &SqliteStore,
    page: Page,
) -> StoreResult<Paged<Workspace>> {
    let total: i64 = sqlx::query_scalar("select count(*) from workspace where deleted_at is null")
        .fetch_one(&store.pool)
        .await?;
    let rows = sqlx::query_as::<_, WorkspaceRow<Lite>>(
        "select * from workspace where deleted_at is null
         order by created_at, id limit ? offset ?",
    )
    .bind(page_limit(page))
    .bind(page.offset())
    .fetch_all(&store.pool)
    .await?;
    paged(rows, total)
}

pub(super) async fn update_workspace(
    store: &SqliteStore,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    let done = sqlx::query(
        "update workspace
         set name = ?2, key_cap = ?3, credits_usd = ?4, webhook_url = ?5, webhook_secret = ?6,
             updated_at = ?7
         where id = ?1 and deleted_at is null",
    )
    .bind(id(ws.id))
    .bind(&ws.name)
    .bind(ws.key_cap)
    .bind(ws.credits_usd.map(|d| d.to_string()))
    .bind(&ws.webhook_url)
    .bind(ws.webhook_secret.as_ref().map(|s| s.expose()))
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

pub(super) async fn delete_workspace(
    store: &SqliteStore,
    ws_id: Uuid,
    at: DateTime<Utc>,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    require_live_workspace(w.conn(), ws_id).await?;
    let live = live_keys(w.conn(), ws_id).await?;
    if live > 0 {
        return Err(StoreError::WorkspaceHasKeys { live });
    }
    sqlx::query("delete from member where workspace_id = ?")
        .bind(id(ws_id))
        .execute(w.conn())
        .await?;
    sqlx::query(
        "update workspace
         set deleted_at = ?2, updated_at = ?2, name = name || ' (deleted ' || id || ')',
             webhook_url = null, webhook_secret = null
         where id = ?1",
    )
    .bind(id(ws_id))
    .bind(micros(at))
    .execute(w.conn())
    .await?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

async fn live_keys(conn: &mut SqliteConnection, ws_id: Uuid) -> StoreResult<u64> {
    let live: i64 = sqlx::query_scalar(
        "select count(*) from api_key where workspace_id = ? and revoked_at is null",
    )
    .bind(id(ws_id))
    .fetch_one(conn)
    .await?;
    Ok(live.unsigned_abs())
}

pub(super) async fn count_live_keys(store: &SqliteStore, ws_id: Uuid) -> StoreResult<u64> {
    let mut conn = store.pool.acquire().await?;
    live_keys(&mut conn, ws_id).await
}

pub(super) async fn create_member(
    store: &SqliteStore,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    require_live_workspace(w.conn(), member.workspace_id).await?;
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

pub(super) async fn find_member(
    store: &SqliteStore,
    workspace_id: Uuid,
    username: &str,
) -> StoreResult<Member> {
    sqlx::query_as::<_, MemberRow<Lite>>(
        "select * from member where workspace_id = ? and username = ?",
    )
    .bind(id(workspace_id))
    .bind(username)
    .fetch_optional(&store.pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn list_members(
    store: &SqliteStore,
    workspace_id: Uuid,
) -> StoreResult<Vec<Member>> {
    sqlx::query_as::<_, MemberRow<Lite>>(
        "select * from member where workspace_id = ? order by created_at, username",
    )
    .bind(id(workspace_id))
    .fetch_all(&store.pool)
    .await?
    .into_iter()
    .map(Member::try_from)
    .collect()
}

/// `LastOwner` when the member is an owner of the workspace and no other owner exists.
/// `NotFound` if there is no such member.
async fn check_not_last_owner(
    conn: &mut SqliteConnection,
    workspace_id: Uuid,
    member_id: Uuid,
) -> StoreResult<()> {
    let role: String =
        sqlx::query_scalar("select role from member where workspace_id = ? and id = ?")
            .bind(id(workspace_id))
            .bind(id(member_id))
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
    if role != Role::Owner.as_str() {
        return Ok(());
    }
    let others: i64 = sqlx::query_scalar(
        "select count(*) from member where workspace_id = ? and role = 'owner' and id <> ?",
    )
    .bind(id(workspace_id))
    .bind(id(member_id))
    .fetch_one(conn)
    .await?;
    if others == 0 {
        return Err(StoreError::LastOwner);
    }
    Ok(())
}

pub(super) async fn update_member(
    store: &SqliteStore,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    if member.role != Role::Owner {
        check_not_last_owner(w.conn(), member.workspace_id, member.id).await?;
    }
    let done = sqlx::query(
        "update member set role = ?3, password_hash = ?4, updated_at = ?5
         where workspace_id = ?1 and id = ?2",
    )
    .bind(id(member.workspace_id))
    .bind(id(member.id))
    .bind(member.role.as_str())
    .bind(&member.password_hash)
    .bind(micros(member.updated_at))
    .execute(w.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

pub(super) async fn delete_member(
    store: &SqliteStore,
    workspace_id: Uuid,
    member_id: Uuid,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    check_not_last_owner(w.conn(), workspace_id, member_id).await?;
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
