//! Workspaces and their members (PostgreSQL).

use sqlx::PgPool;
use uuid::Uuid;

use super::{insert_audit, map_unique, Pg};
use crate::store::{
    rows::{MemberRow, WorkspaceRow},
    AuditEvent, Member, StoreError, StoreResult, Workspace,
};

pub(super) async fn create_workspace(
    pool: &PgPool,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
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

pub(super) async fn get_workspace(pool: &PgPool, id: Uuid) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Pg>>("select * from workspace where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

pub(super) async fn find_workspace(pool: &PgPool, name: &str) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Pg>>("select * from workspace where name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

pub(super) async fn list_workspaces(pool: &PgPool) -> StoreResult<Vec<Workspace>> {
    sqlx::query_as::<_, WorkspaceRow<Pg>>("select * from workspace order by created_at, name")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(Workspace::try_from)
        .collect()
}

pub(super) async fn update_workspace(
    pool: &PgPool,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
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

pub(super) async fn create_member(
    pool: &PgPool,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
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

pub(super) async fn delete_member(
    pool: &PgPool,
    workspace_id: Uuid,
    id: Uuid,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
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
