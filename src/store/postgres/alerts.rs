//! Budget alerts and their delivery state (PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Pg;
use crate::store::{
    rows::BudgetAlertRow, AlertAttempt, AuditEvent, BudgetAlert, BudgetAlertId, NewBudgetAlert,
    StoreResult,
};

pub(super) async fn claim_budget_alert(pool: &PgPool, alert: &NewBudgetAlert) -> StoreResult<bool> {
    let done = sqlx::query(
        "insert into budget_alert (key_id, period_start, threshold_bp, claimed_at, workspace_id,
                                   payload, status, attempts, next_attempt_at)
         values ($1, $2, $3, $4, $5, $6, 'pending', 0, $7)
         on conflict (key_id, period_start, threshold_bp) do nothing",
    )
    .bind(alert.id.key_id)
    .bind(alert.id.period_start)
    .bind(alert.id.threshold_bp)
    .bind(alert.claimed_at)
    .bind(alert.workspace_id)
    .bind(&alert.payload)
    .bind(alert.next_attempt_at)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn due_budget_alerts(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<BudgetAlert>> {
    let rows = sqlx::query_as::<_, BudgetAlertRow<Pg>>(
        "select * from budget_alert
         where status = 'pending' and next_attempt_at <= $1 and payload is not null
         order by next_attempt_at limit $2",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(BudgetAlert::try_from).collect()
}

pub(super) async fn lease_budget_alert(
    pool: &PgPool,
    id: &BudgetAlertId,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "update budget_alert set next_attempt_at = $4
         where key_id = $1 and period_start = $2 and threshold_bp = $3
           and status = 'pending' and next_attempt_at <= $5",
    )
    .bind(id.key_id)
    .bind(id.period_start)
    .bind(id.threshold_bp)
    .bind(until)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn record_budget_alert_attempt(
    pool: &PgPool,
    id: &BudgetAlertId,
    attempt: &AlertAttempt,
    audit: Option<&AuditEvent>,
) -> StoreResult<()> {
    let finished_at = (attempt.status != crate::store::AlertStatus::Pending).then_some(attempt.at);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update budget_alert
         set attempts = attempts + 1, status = $4, last_error = $5, next_attempt_at = $6,
             finished_at = $7
         where key_id = $1 and period_start = $2 and threshold_bp = $3",
    )
    .bind(id.key_id)
    .bind(id.period_start)
    .bind(id.threshold_bp)
    .bind(attempt.status.as_str())
    .bind(&attempt.error)
    .bind(attempt.next_attempt_at)
    .bind(finished_at)
    .execute(&mut *tx)
    .await?;
    if let Some(audit) = audit {
        super::insert_audit(&mut tx, audit).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_budget_alerts(
    pool: &PgPool,
    key_id: Uuid,
) -> StoreResult<Vec<BudgetAlert>> {
    let rows = sqlx::query_as::<_, BudgetAlertRow<Pg>>(
        "select * from budget_alert where key_id = $1 and payload is not null
         order by claimed_at, period_start, threshold_bp",
    )
    .bind(key_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(BudgetAlert::try_from).collect()
}
