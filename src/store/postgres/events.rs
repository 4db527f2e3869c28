//! Audit and rate-limit events and one-time tokens (PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Pg;
use crate::store::{
    codec::{page_limit, paged},
    rows::{AuditRow, RateLimitRow},
    AuditEvent, AuditFilter, EventFilter, Page, Paged, RateLimitEvent, StoreResult,
};

pub(super) async fn add_audit_event(pool: &PgPool, event: &AuditEvent) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    super::insert_audit(&mut conn, event).await
}

pub(super) async fn find_audit_events(
    pool: &PgPool,
    filter: &AuditFilter,
    page: Page,
) -> StoreResult<Paged<AuditEvent>> {
    const FILTER: &str = "where ($1::uuid is null or workspace_id = $1)
          and ($2::text is null or actor = $2)
          and ($3::text is null or action = $3)
          and ($4::text is null or target = $4)
          and ($5::timestamptz is null or at >= $5)
          and ($6::timestamptz is null or at < $6)";
    let count_sql = format!("select count(*) from audit_event {FILTER}");
    let total: i64 = sqlx::query_scalar(&count_sql)
        .bind(filter.workspace_id)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(filter.from)
        .bind(filter.to)
        .fetch_one(pool)
        .await?;
    let list_sql =
        format!("select * from audit_event {FILTER} order by at desc, id desc limit $7 offset $8");
    let rows = sqlx::query_as::<_, AuditRow<Pg>>(&list_sql)
        .bind(filter.workspace_id)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(filter.from)
        .bind(filter.to)
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(pool)
        .await?;
    paged(rows, total)
}

pub(super) async fn add_rate_limit_events(
    pool: &PgPool,
    events: &[RateLimitEvent],
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for e in events {
        sqlx::query(
            "insert into rate_limit_event (id, workspace_id, key_id, model, limit_kind, limit_value, at)
             values ($1, $2, $3, $4, $5, $6, $7)
             on conflict (id) do nothing",
        )
        .bind(e.id)
        .bind(e.workspace_id)
        .bind(e.key_id)
        .bind(&e.model)
        .bind(&e.limit)
        .bind(&e.limit_value)
        .bind(e.at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_rate_limit_events(
    pool: &PgPool,
    workspace_id: Uuid,
    filter: &EventFilter,
    page: Page,
) -> StoreResult<Paged<RateLimitEvent>> {
    const FILTER: &str = "where workspace_id = $1
          and ($2::uuid is null or key_id = $2)
          and ($3::timestamptz is null or at >= $3)
          and ($4::timestamptz is null or at < $4)";
    let count_sql = format!("select count(*) from rate_limit_event {FILTER}");
    let total: i64 = sqlx::query_scalar(&count_sql)
        .bind(workspace_id)
        .bind(filter.key_id)
        .bind(filter.from)
        .bind(filter.to)
        .fetch_one(pool)
        .await?;
    let list_sql = format!(
        "select * from rate_limit_event {FILTER} order by at desc, id desc limit $5 offset $6"
    );
    let rows = sqlx::query_as::<_, RateLimitRow<Pg>>(&list_sql)
        .bind(workspace_id)
        .bind(filter.key_id)
        .bind(filter.from)
        .bind(filter.to)
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(pool)
        .await?;
    paged(rows, total)
}

/// Also forgets tokens that expired more than a day ago: they are refused by their
/// expiry before they reach the store, so their rows only grow the table.
pub(super) async fn consume_once_token(
    pool: &PgPool,
    token_id: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    sqlx::query("delete from once_token where expires_at < $1")
        .bind(now - chrono::TimeDelta::days(1))
        .execute(&mut *tx)
        .await?;
    let done = sqlx::query(
        "insert into once_token (token_id, expires_at, used_at) values ($1, $2, $3)
         on conflict (token_id) do nothing",
    )
    .bind(token_id)
    .bind(expires_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}
