//! Workspaces and their members (SQLite).

use uuid::Uuid;

use super::{id, insert_audit, map_unique, micros, Lite, SqliteStore};
use crate::store::{
    rows::{MemberRow, WorkspaceRow},
    AuditEvent, Member, StoreError, StoreResult, Workspace,
};

pub(super) async fn create_workspace(
    store: &SqliteStore,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
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

pub(super) async fn get_workspace(store: &SqliteStore, ws_id: Uuid) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Lite>>("select * from workspace where id = ?")
        .bind(id(ws_id))
        .fetch_optional(&store.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

pub(super) async fn find_workspace(store: &SqliteStore, name: &str) -> StoreResult<Workspace> {
    sqlx::query_as::<_, WorkspaceRow<Lite>>("select * from workspace where name = ?")
        .bind(name)
        .fetch_optional(&store.pool)
        .await?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

pub(super) async fn list_workspaces(store: &SqliteStore) -> StoreResult<Vec<Workspace>> {
    sqlx::query_as::<_, WorkspaceRow<Lite>>("select * from workspace order by created_at, name")
        .fetch_all(&store.pool)
        .await?
        .into_iter()
        .map(Workspace::try_from)
        .collect()
}

pub(super) async fn update_workspace(
    store: &SqliteStore,
    ws: &Workspace,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
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

pub(super) async fn create_member(
    store: &SqliteStore,
    member: &Member,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
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

pub(super) async fn delete_member(
    store: &SqliteStore,
    workspace_id: Uuid,
    member_id: Uuid,
    audit: &AuditEvent,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
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
