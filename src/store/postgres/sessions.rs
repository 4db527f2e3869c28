//! Console sessions (PostgreSQL): see migrations/postgres/0006_console_session.sql.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::insert_audit;
use crate::store::{AuditEvent, ConsoleSession, StoreError, StoreResult};

type Row = (String, Uuid, String, String, DateTime<Utc>, DateTime<Utc>);

pub(super) async fn create(
    pool: &PgPool,
    session: &ConsoleSession,
    audit: &AuditEvent,
    idle_before: DateTime<Utc>,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from console_session where last_seen_at < $1")
        .bind(idle_before)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into console_session (id, workspace_id, principal, csrf_token, created_at, last_seen_at)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&session.id)
    .bind(session.workspace_id)
    .bind(&session.principal)
    .bind(&session.csrf_token)
    .bind(session.created_at)
    .bind(session.last_seen_at)
    .execute(&mut *tx)
    .await?;
    insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn use_session(
    pool: &PgPool,
    id: &str,
    idle_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<ConsoleSession> {
    let row: Row = sqlx::query_as(
        "update console_session set last_seen_at = $3
         where id = $1 and last_seen_at >= $2
         returning id, workspace_id, principal, csrf_token, created_at, last_seen_at",
    )
    .bind(id)
    .bind(idle_before)
    .bind(now)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(ConsoleSession {
        id: row.0,
        workspace_id: row.1,
        principal: row.2,
        csrf_token: row.3,
        created_at: row.4,
        last_seen_at: row.5,
    })
}

pub(super) async fn delete(pool: &PgPool, id: &str) -> StoreResult<()> {
    sqlx::query("delete from console_session where id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}
