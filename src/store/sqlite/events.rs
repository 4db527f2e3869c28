//! Audit and rate-limit events and one-time tokens (SQLite).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{id, micros, opt_micros, Lite, SqliteStore};
use crate::store::{
    codec::{page_limit, paged},
    rows::{AuditRow, RateLimitRow},
    AuditEvent, AuditFilter, EventFilter, Page, Paged, RateLimitEvent, StoreResult,
};

pub(super) async fn add_audit_event(store: &SqliteStore, event: &AuditEvent) -> StoreResult<()> {
    let mut w = store.begin_write().await?;
    super::insert_audit(w.conn(), event).await?;
    w.commit().await
}

pub(super) async fn find_audit_events(
    store: &SqliteStore,
    filter: &AuditFilter,
    page: Page,
) -> StoreResult<Paged<AuditEvent>> {
    const FILTER: &str = "where (?1 is null or workspace_id = ?1)
          and (?2 is null or actor = ?2)
          and (?3 is null or action = ?3)
          and (?4 is null or target = ?4)
          and (?5 is null or at >= ?5)
          and (?6 is null or at < ?6)";
    let count_sql = format!("select count(*) from audit_event {FILTER}");
    let total: i64 = sqlx::query_scalar(&count_sql)
        .bind(filter.workspace_id.map(id))
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(opt_micros(filter.from))
        .bind(opt_micros(filter.to))
        .fetch_one(&store.pool)
        .await?;
    let list_sql =
        format!("select * from audit_event {FILTER} order by at desc, id desc limit ?7 offset ?8");
    let rows = sqlx::query_as::<_, AuditRow<Lite>>(&list_sql)
        .bind(filter.workspace_id.map(id))
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(opt_micros(filter.from))
        .bind(opt_micros(filter.to))
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(&store.pool)
        .await?;
    paged(rows, total)
}

pub(super) async fn add_rate_limit_events(
    store: &SqliteStore,
    events: &[RateLimitEvent],
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut w = store.begin_write().await?;
    for e in events {
        sqlx::query(
            "insert into rate_limit_event (id, workspace_id, key_id, model, limit_kind, limit_value, at)
             values (?, ?, ?, ?, ?, ?, ?)
             on conflict (id) do nothing",
        )
        .bind(id(e.id))
        .bind(id(e.workspace_id))
        .bind(id(e.key_id))
        .bind(&e.model)
        .bind(&e.limit)
        .bind(&e.limit_value)
        .bind(micros(e.at))
        .execute(w.conn())
        .await?;
    }
    w.commit().await
}

pub(super) async fn list_rate_limit_events(
    store: &SqliteStore,
    workspace_id: Uuid,
    filter: &EventFilter,
    page: Page,
) -> StoreResult<Paged<RateLimitEvent>> {
    const FILTER: &str = "where workspace_id = ?1
          and (?2 is null or key_id = ?2)
          and (?3 is null or at >= ?3)
          and (?4 is null or at < ?4)";
    let count_sql = format!("select count(*) from rate_limit_event {FILTER}");
    let total: i64 = sqlx::query_scalar(&count_sql)
        .bind(id(workspace_id))
        .bind(filter.key_id.map(id))
        .bind(opt_micros(filter.from))
        .bind(opt_micros(filter.to))
        .fetch_one(&store.pool)
        .await?;
    let list_sql = format!(
        "select * from rate_limit_event {FILTER} order by at desc, id desc limit ?5 offset ?6"
    );
    let rows = sqlx::query_as::<_, RateLimitRow<Lite>>(&list_sql)
        .bind(id(workspace_id))
        .bind(filter.key_id.map(id))
        .bind(opt_micros(filter.from))
        .bind(opt_micros(filter.to))
        .bind(page_limit(page))
        .bind(page.offset())
        .fetch_all(&store.pool)
        .await?;
    paged(rows, total)
}

/// Also forgets tokens that expired more than a day ago: they are refused by their
/// expiry before they reach the store, so their rows only grow the table.
pub(super) async fn consume_once_token(
    store: &SqliteStore,
    token_id: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let now = Utc::now();
    let mut w = store.begin_write().await?;
    sqlx::query("delete from once_token where expires_at < ?")
        .bind(micros(now - chrono::TimeDelta::days(1)))
        .execute(w.conn())
        .await?;
    let done = sqlx::query(
        "insert into once_token (token_id, expires_at, used_at) values (?, ?, ?)
         on conflict (token_id) do nothing",
    )
    .bind(token_id)
    .bind(micros(expires_at))
    .bind(micros(now))
    .execute(w.conn())
    .await?;
    w.commit().await?;
    Ok(done.rows_affected() == 1)
}
