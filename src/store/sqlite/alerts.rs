//! Budget alerts and their delivery state (SQLite).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{id, micros, opt_micros, Lite, SqliteStore};
use crate::store::{
    rows::BudgetAlertRow, AlertAttempt, AlertStatus, AuditEvent, BudgetAlert, BudgetAlertId,
    NewBudgetAlert, StoreResult,
};

pub(super) async fn claim_budget_alert(
    store: &SqliteStore,
    alert: &NewBudgetAlert,
) -> StoreResult<bool> {
    let mut w = store.begin_write().await?;
    let done = sqlx::query(
        "insert into budget_alert (key_id, period_start, threshold_bp, claimed_at, workspace_id,
                                   payload, status, attempts, next_attempt_at)
         values (?, ?, ?, ?, ?, ?, 'pending', 0, ?)
         on conflict (key_id, period_start, threshold_bp) do nothing",
    )
    .bind(id(alert.id.key_id))
    .bind(micros(alert.id.period_start))
    .bind(alert.id.threshold_bp)
    .bind(micros(alert.claimed_at))
    .bind(id(alert.workspace_id))
    .bind(&alert.payload)
    .bind(micros(alert.next_attempt_at))
    .execute(w.conn())
    .await?;
    w.commit().await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn due_budget_alerts(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<BudgetAlert>> {
    let rows = sqlx::query_as::<_, BudgetAlertRow<Lite>>(
        "select * from budget_alert
         where status = 'pending' and next_attempt_at <= ? and payload is not null
         order by next_attempt_at limit ?",
    )
    .bind(micros(now))
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    rows.into_iter().map(BudgetAlert::try_from).collect()
}

pub(super) async fn lease_budget_alert(
    store: &SqliteStore,
    alert: &BudgetAlertId,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> StoreResult<bool> {
    let mut w = store.begin_write().await?;
    let done = sqlx::query(
        "update budget_alert set next_attempt_at = ?4
         where key_id = ?1 and period_start = ?2 and threshold_bp = ?3
           and status = 'pending' and next_attempt_at <= ?5",
    )
    .bind(id(alert.key_id))
    .bind(micros(alert.period_start))
    .bind(alert.threshold_bp)
    .bind(micros(until))
    .bind(micros(now))
    .execute(w.conn())
    .await?;
    w.commit().await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn record_budget_alert_attempt(
    store: &SqliteStore,
    alert: &BudgetAlertId,
    attempt: &AlertAttempt,
    audit: Option<&AuditEvent>,
) -> StoreResult<()> {
    let finished_at = (attempt.status != AlertStatus::Pending).then_some(attempt.at);
    let mut w = store.begin_write().await?;
    sqlx::query(
        "update budget_alert
         set attempts = attempts + 1, status = ?4, last_error = ?5, next_attempt_at = ?6,
             finished_at = ?7
         where key_id = ?1 and period_start = ?2 and threshold_bp = ?3",
    )
    .bind(id(alert.key_id))
    .bind(micros(alert.period_start))
    .bind(alert.threshold_bp)
    .bind(attempt.status.as_str())
    .bind(&attempt.error)
    .bind(opt_micros(attempt.next_attempt_at))
    .bind(opt_micros(finished_at))
    .execute(w.conn())
    .await?;
    if let Some(audit) = audit {
        super::insert_audit(w.conn(), audit).await?;
    }
    w.commit().await
}

pub(super) async fn list_budget_alerts(
    store: &SqliteStore,
    key_id: Uuid,
) -> StoreResult<Vec<BudgetAlert>> {
    let rows = sqlx::query_as::<_, BudgetAlertRow<Lite>>(
        "select * from budget_alert where key_id = ? and payload is not null
         order by claimed_at, period_start, threshold_bp",
    )
    .bind(id(key_id))
    .fetch_all(&store.pool)
    .await?;
    rows.into_iter().map(BudgetAlert::try_from).collect()
}
