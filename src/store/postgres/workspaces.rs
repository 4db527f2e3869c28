//! Workspaces and their members (PostgreSQL).
//!
//! Changes that must see a stable workspace (deleting it while keys are created, demoting
//! or removing owners) first lock the workspace's row, as key creation does, so the check
//! and the write happen with no concurrent change in between.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tracing::instrument;
use uuid::Uuid;

use super::{insert_audit, map_unique, notify_key_change, Pg};
use crate::store::{
    codec::{page_limit, paged},
    rows::{MemberRow, WorkspaceRow},
    AuditEvent, Member, Page, Paged, Role, StoreError, StoreResult, Workspace,
};

/// Locks a live workspace's row until the transaction ends; `NotFound` if missing or deleted.
#[instrument(skip_all)]
pub(super) async fn lock_workspace(conn: &mut PgConnection, id: Uuid) -> StoreResult<()> {
    sqlx::query("select id from workspace where id = $1 and deleted_at is null for update")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(())
}

pub(super) async fn create_workspace(
    pool: &PgPool,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into workspace (id, name, key_cap, credits_usd, webhook_url, webhook_secret,
                                created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ws.id)
    .bind(&ws.name)
    .bind(ws.key_cap)
    .bind(ws.credits_usd.map(|d| d.to_string()))
    .bind(&ws.webhook_url)
    .bind(ws.webhook_secret.as_ref().map(|s| s.expose()))
    .bind(ws.created_at)
    .bind(ws.updated_at)
    .execute(&mut *tx)
    .await
    .map_err(map_unique)?;
    insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn get_workspace(pool: &PgPool, id: Uuid) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Pg>>(
        "select * from workspace where id = $1 and deleted_at is null",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn find_workspace(pool: &PgPool, name: &str) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Pg>>(
        "select * from workspace where name = $1 and deleted_at is null",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn list_workspaces(pool: &PgPool, page: Page) -> StoreResult<Paged<Workspace>> {
    let total: i64 = sqlx::query_scalar("select count(*) from workspace where deleted_at is null")
        .fetch_one(pool)
        .await?;
    let rows = sqlx::query_as::<_, WorkspaceRow<Pg>>(
        "select * from workspace where deleted_at is null
         order by created_at, id limit $1 offset $2",
    )
    .bind(page_limit(page))
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    paged(rows, total)
}

pub(super) async fn update_workspace(
    pool: &PgPool,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "update workspace
         set name = $2, key_cap = $3, credits_usd = $4, webhook_url = $5, webhook_secret = $6,
             updated_at = $7
         where id = $1 and deleted_at is null",
    )
    .bind(ws.id)
    .bind(&ws.name)
    .bind(ws.key_cap)
    .bind(ws.credits_usd.map(|d| d.to_string()))
    .bind(&ws.webhook_url)
    .bind(ws.webhook_secret.as_ref().map(|s| s.expose()))
    .bind(ws.updated_at)
    .execute(&mut *tx)
    .await
    .map_err(map_unique)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    insert_audit(&mut tx, audit).await?;
    // Admission reads the workspace's credits (cached per instance).
    notify_key_change(&mut tx, None, ws.id).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_workspace(
    pool: &PgPool,
    id: Uuid,
    at: DateTime<Utc>,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    lock_workspace(&mut tx, id).await?;
    let live = live_keys(&mut tx, id).await?;
    if live > 0 {
        return Err(StoreError::WorkspaceHasKeys { live });
    }
    sqlx::query("delete from member where workspace_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update workspace
         set deleted_at = $2, updated_at = $2, name = name || ' (deleted ' || id::text || ')',
             webhook_url = null, webhook_secret = null
         where id = $1",
    )
    .bind(id)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    insert_audit(&mut tx, audit).await?;
    notify_key_change(&mut tx, None, id).await?;
    tx.commit().await?;
    Ok(())
}

async fn live_keys(conn: &mut PgConnection, workspace_id: Uuid) -> StoreResult<u64> {
    let live: i64 = sqlx::query_scalar(
        "select count(*) from api_key where workspace_id = $1 and revoked_at is null",
    )
    .bind(workspace_id)
    .fetch_one(conn)
    .await?;
    Ok(live.unsigned_abs())
}

pub(super) async fn count_live_keys(pool: &PgPool, workspace_id: Uuid) -> StoreResult<u64> {
    let mut conn = pool.acquire().await?;
    live_keys(&mut conn, workspace_id).await
}

pub(super) async fn create_member(
    pool: &PgPool,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    lock_workspace(&mut tx, member.workspace_id).await?;
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

pub(super) async fn find_member(
    pool: &PgPool,
    workspace_id: Uuid,
    username: &str,
) -> StoreResult<Member> {
    sqlx::query_as::<_, MemberRow<Pg>>(
        "select * from member where workspace_id = $1 and username = $2",
    )
    .bind(workspace_id)
    .bind(username)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?
    .try_into()
}

pub(super) async fn list_members(pool: &PgPool, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
    sqlx::query_as::<_, MemberRow<Pg>>(
        "select * from member where workspace_id = $1 order by created_at, username",
    )
    .bind(workspace_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Member::try_from)
    .collect()
}

/// `LastOwner` when the member `id` is an owner of the workspace and no other owner
/// exists (the caller holds the workspace's lock). `NotFound` if there is no such member.
async fn check_not_last_owner(
    conn: &mut PgConnection,
    workspace_id: Uuid,
    id: Uuid,
) -> StoreResult<()> {
    let role: String =
        sqlx::query_scalar("select role from member where workspace_id = $1 and id = $2")
            .bind(workspace_id)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound)?;
    if role != Role::Owner.as_str() {
        return Ok(());
    }
    let others: i64 = sqlx::query_scalar(
        "select count(*) from member where workspace_id = $1 and role = 'owner' and id <> $2",
    )
    .bind(workspace_id)
    .bind(id)
    .fetch_one(conn)
    .await?;
    if others == 0 {
        return Err(StoreError::LastOwner);
    }
    Ok(())
}

pub(super) async fn update_member(
    pool: &PgPool,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    lock_workspace(&mut tx, member.workspace_id).await?;
    if member.role != Role::Owner {
        check_not_last_owner(&mut tx, member.workspace_id, member.id).await?;
    }
    let done = sqlx::query(
        "update member set role = $3, password_hash = $4, updated_at = $5
         where workspace_id = $1 and id = $2",
    )
    .bind(member.workspace_id)
    .bind(member.id)
    .bind(member.role.as_str())
    .bind(&member.password_hash)
    .bind(member.updated_at)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_member(
    pool: &PgPool,
    workspace_id: Uuid,
    id: Uuid,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    lock_workspace(&mut tx, workspace_id).await?;
    check_not_last_owner(&mut tx, workspace_id, id).await?;
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
