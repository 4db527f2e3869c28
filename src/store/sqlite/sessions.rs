//! Console sessions (SQLite): see migrations/sqlite/0006_console_session.sql.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{id as text_id, insert_audit, micros, Lite, SqliteStore};
use crate::store::{
    codec::{corrupt, Columns},
    AuditEvent, ConsoleSession, StoreError, StoreResult,
};

type Row = (String, String, String, String, i64, i64);

pub(super) async fn create(
    store: &SqliteStore,
    session: &ConsoleSession,
    audit: &AuditEvent,
    idle_before: DateTime<Utc>,
) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    sqlx::query("delete from console_session where last_seen_at < ?")
        .bind(micros(idle_before))
        .execute(w.conn())
        .await?;
    sqlx::query(
        "insert into console_session (id, workspace_id, principal, csrf_token, created_at, last_seen_at)
         values (?, ?, ?, ?, ?, ?)",
    )
    .bind(&session.id)
    .bind(text_id(session.workspace_id))
    .bind(&session.principal)
    .bind(&session.csrf_token)
    .bind(micros(session.created_at))
    .bind(micros(session.last_seen_at))
    .execute(w.conn())
    .await?;
    insert_audit(w.conn(), audit).await?;
    w.commit().await
}

pub(super) async fn use_session(
    store: &SqliteStore,
    id: &str,
    idle_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<ConsoleSession> {
    let mut w = store.begin_write().await?;
    let row: Row = sqlx::query_as(
        "update console_session set last_seen_at = ?
         where id = ? and last_seen_at >= ?
         returning id, workspace_id, principal, csrf_token, created_at, last_seen_at",
    )
    .bind(micros(now))
    .bind(id)
    .bind(micros(idle_before))
    .fetch_optional(w.conn())
    .await?
    .ok_or(StoreError::NotFound)?;
    w.commit().await?;
    Ok(ConsoleSession {
        id: row.0,
        workspace_id: Uuid::parse_str(&row.1)
            .map_err(|e| corrupt("console_session", format!("workspace_id: {e}")))?,
        principal: row.2,
        csrf_token: row.3,
        created_at: Lite::time("console_session", row.4)?,
        last_seen_at: Lite::time("console_session", row.5)?,
    })
}

pub(super) async fn delete(store: &SqliteStore, id: &str) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    sqlx::query("delete from console_session where id = ?")
        .bind(id)
        .execute(w.conn())
        .await?;
    w.commit().await
}
