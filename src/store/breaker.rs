//! A circuit breaker in front of the store. When a call finds the database unreachable
//! ([`StoreError::is_unreachable`]), the circuit opens: every later call fails at once
//! with [`StoreError::Unavailable`] instead of waiting for the pool's acquire timeout
//! (5 s while connections are refused), and one background task pings the database until
//! it answers, then closes the circuit.
//!
//! Why: while PostgreSQL is down, the hot path still reads the store now and then (a
//! cached key's re-read, a workspace's credits), and those callers have an answer ready
//! without it (the cached key, the last known credits). Without the breaker each of those
//! reads, and every request waiting behind it, stalled for the acquire timeout; with it
//! only the calls in flight when the outage began wait. Admin calls and uncached keys get
//! their 503 at once. Hand-written because the state is one flag and one probe task;
//! the crates for this (`failsafe`) bring policies and timers keygate does not need.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    AlertAttempt, AuditEvent, AuditFilter, BudgetAlert, BudgetAlertId, ConsoleSession, DynStore,
    EventFilter, KeyChanges, LastAdmin, Member, NewBudgetAlert, Page, Paged, RateLimitEvent,
    SecretRecord, SecretVersion, SpendRange, SpendScope, Store, StoreError, StoreResult,
    UsageDelta, UsageQuery, UsageRow, UsageTotals, Workspace,
};
use crate::domain::ApiKey;

/// Pause between two failed probes. A probe against refused connections itself lasts up
/// to the pool's acquire timeout, retrying inside sqlx, so recovery is seen within about
/// a second of the database accepting connections again.
const PROBE_PAUSE: Duration = Duration::from_millis(500);

/// Open/closed state shared by the store and its probe task.
#[derive(Default)]
struct Breaker {
    open: AtomicBool,
    /// A probe task is running (at most one).
    probing: AtomicBool,
}

/// A [`Store`] whose calls fail fast while the database is unreachable. `backend` and
/// `migrate` pass straight through; every other call is guarded.
pub struct GuardedStore {
    inner: DynStore,
    breaker: Arc<Breaker>,
}

impl GuardedStore {
    pub fn new(inner: DynStore) -> Self {
        GuardedStore {
            inner,
            breaker: Arc::default(),
        }
    }

    /// False while the circuit is open (the store was found unreachable and has not
    /// answered a probe since).
    pub fn is_closed(&self) -> bool {
        !self.breaker.open.load(Ordering::Acquire)
    }

    async fn guard<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if !self.is_closed() {
            return Err(StoreError::Unavailable);
        }
        let result = call.await;
        if let Err(err) = &result {
            if err.is_unreachable() {
                self.trip(err);
            }
        }
        result
    }

    /// Opens the circuit and starts the probe, unless both are done already.
    fn trip(&self, cause: &StoreError) {
        if self.breaker.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = %cause, backend = self.inner.backend(), "store unreachable; failing store calls fast until it answers again");
        if self.breaker.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        // Detached on purpose: the task holds nothing that needs flushing, ends as soon
        // as the store answers, and dies with the runtime at shutdown.
        let (inner, breaker) = (self.inner.clone(), self.breaker.clone());
        tokio::spawn(async move {
            let since = Instant::now();
            loop {
                if inner.ping().await.is_ok() {
                    break;
                }
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            // `probing` first: a trip between the two stores then starts a new probe
            // instead of finding one about to end.
            breaker.probing.store(false, Ordering::Release);
            breaker.open.store(false, Ordering::Release);
            tracing::info!(
                unreachable_for_ms = since.elapsed().as_millis() as u64,
                "store reachable again"
            );
        });
    }
}

#[async_trait]
impl Store for GuardedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn pool_stats(&self) -> super::PoolStats {
        self.inner.pool_stats()
    }

    async fn key_changes(&self) -> StoreResult<Option<KeyChanges>> {
        self.inner.key_changes().await
    }

    async fn migrate(&self) -> StoreResult<()> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.guard(self.inner.ping()).await
    }

    async fn migrations_applied(&self) -> StoreResult<bool> {
        self.guard(self.inner.migrations_applied()).await
    }

    async fn default_workspace(&self) -> StoreResult<Workspace> {
        self.guard(self.inner.default_workspace()).await
    }

    async fn create_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        self.guard(self.inner.create_workspace(ws, audit)).await
    }

    async fn get_workspace(&self, id: Uuid) -> StoreResult<Workspace> {
        self.guard(self.inner.get_workspace(id)).await
    }

    async fn find_workspace(&self, name: &str) -> StoreResult<Workspace> {
        self.guard(self.inner.find_workspace(name)).await
    }

    async fn list_workspaces(&self, page: Page) -> StoreResult<Paged<Workspace>> {
        self.guard(self.inner.list_workspaces(page)).await
    }

    async fn delete_workspace(
        &self,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        self.guard(self.inner.delete_workspace(id, at, audit)).await
    }

    async fn count_live_keys(&self, workspace_id: Uuid) -> StoreResult<u64> {
        self.guard(self.inner.count_live_keys(workspace_id)).await
    }

    async fn update_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        self.guard(self.inner.update_member(member, audit)).await
    }

    async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> StoreResult<()> {
        self.guard(self.inner.update_workspace(ws, audit)).await
    }

    async fn create_member(&self, member: &Member, audit: &AuditEvent) -> StoreResult<()> {
        self.guard(self.inner.create_member(member, audit)).await
    }

    async fn find_member(&self, workspace_id: Uuid, username: &str) -> StoreResult<Member> {
        self.guard(self.inner.find_member(workspace_id, username))
            .await
    }

    async fn list_members(&self, workspace_id: Uuid) -> StoreResult<Vec<Member>> {
        self.guard(self.inner.list_members(workspace_id)).await
    }

    async fn delete_member(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        self.guard(self.inner.delete_member(workspace_id, id, audit))
            .await
    }

    async fn insert_key(
        &self,
        key: &ApiKey,
        secret: &SecretRecord,
        key_cap: Option<i64>,
        audit: &AuditEvent,
    ) -> StoreResult<()> {
        self.guard(self.inner.insert_key(key, secret, key_cap, audit))
            .await
    }

    async fn get_key(&self, workspace_id: Uuid, id: Uuid) -> StoreResult<ApiKey> {
        self.guard(self.inner.get_key(workspace_id, id)).await
    }

    async fn find_key(&self, id: Uuid) -> StoreResult<ApiKey> {
        self.guard(self.inner.find_key(id)).await
    }

    async fn list_keys(&self, workspace_id: Uuid, page: Page) -> StoreResult<Paged<ApiKey>> {
        self.guard(self.inner.list_keys(workspace_id, page)).await
    }

    async fn update_key(
        &self,
        key: &ApiKey,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<()> {
        self.guard(self.inner.update_key(key, audit, last_admin))
            .await
    }

    async fn revoke_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
        audit: &AuditEvent,
        last_admin: LastAdmin,
    ) -> StoreResult<ApiKey> {
        self.guard(
            self.inner
                .revoke_key(workspace_id, id, at, audit, last_admin),
        )
        .await
    }

    async fn rotate_key(
        &self,
        workspace_id: Uuid,
        id: Uuid,
        new_secret: &SecretRecord,
        partial_key: &str,
        last6: &str,
        old_valid_until: DateTime<Utc>,
        audit: &AuditEvent,
    ) -> StoreResult<ApiKey> {
        self.guard(self.inner.rotate_key(
            workspace_id,
            id,
            new_secret,
            partial_key,
            last6,
            old_valid_until,
            audit,
        ))
        .await
    }

    async fn find_secret(&self, lookup_id: &str) -> StoreResult<Option<(SecretRecord, ApiKey)>> {
        self.guard(self.inner.find_secret(lookup_id)).await
    }

    async fn secret_versions(&self, lookup_ids: &[&str]) -> StoreResult<Vec<SecretVersion>> {
        self.guard(self.inner.secret_versions(lookup_ids)).await
    }

    async fn count_live_admin_keys(&self) -> StoreResult<u64> {
        self.guard(self.inner.count_live_admin_keys()).await
    }

    async fn touch_keys(&self, uses: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        self.guard(self.inner.touch_keys(uses)).await
    }

    async fn add_audit_event(&self, event: &AuditEvent) -> StoreResult<()> {
        self.guard(self.inner.add_audit_event(event)).await
    }

    async fn find_audit_events(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> StoreResult<Paged<AuditEvent>> {
        self.guard(self.inner.find_audit_events(filter, page)).await
    }

    async fn add_usage_batch(&self, batch: Uuid, deltas: &[UsageDelta]) -> StoreResult<bool> {
        self.guard(self.inner.add_usage_batch(batch, deltas)).await
    }

    async fn usage(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        self.guard(self.inner.usage(query)).await
    }

    async fn key_usage_totals(
        &self,
        key_id: Uuid,
        since: DateTime<Utc>,
        model: Option<&str>,
    ) -> StoreResult<UsageTotals> {
        self.guard(self.inner.key_usage_totals(key_id, since, model))
            .await
    }

    async fn workspace_usage_totals(
        &self,
        workspace_id: Uuid,
        since: DateTime<Utc>,
    ) -> StoreResult<UsageTotals> {
        self.guard(self.inner.workspace_usage_totals(workspace_id, since))
            .await
    }

    async fn spend_in(&self, scope: SpendScope, ranges: &[SpendRange]) -> StoreResult<Vec<i64>> {
        self.guard(self.inner.spend_in(scope, ranges)).await
    }

    async fn add_rate_limit_events(&self, events: &[RateLimitEvent]) -> StoreResult<()> {
        self.guard(self.inner.add_rate_limit_events(events)).await
    }

    async fn list_rate_limit_events(
        &self,
        workspace_id: Uuid,
        filter: &EventFilter,
        page: Page,
    ) -> StoreResult<Paged<RateLimitEvent>> {
        self.guard(
            self.inner
                .list_rate_limit_events(workspace_id, filter, page),
        )
        .await
    }

    async fn consume_once_token(
        &self,
        token_id: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.guard(self.inner.consume_once_token(token_id, expires_at))
            .await
    }

    async fn claim_budget_alert(&self, alert: &NewBudgetAlert) -> StoreResult<bool> {
        self.guard(self.inner.claim_budget_alert(alert)).await
    }

    async fn due_budget_alerts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<BudgetAlert>> {
        self.guard(self.inner.due_budget_alerts(now, limit)).await
    }

    async fn lease_budget_alert(
        &self,
        id: &BudgetAlertId,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.guard(self.inner.lease_budget_alert(id, now, until))
            .await
    }

    async fn record_budget_alert_attempt(
        &self,
        id: &BudgetAlertId,
        attempt: &AlertAttempt,
        audit: Option<&AuditEvent>,
    ) -> StoreResult<()> {
        self.guard(self.inner.record_budget_alert_attempt(id, attempt, audit))
            .await
    }

    async fn list_budget_alerts(&self, key_id: Uuid) -> StoreResult<Vec<BudgetAlert>> {
        self.guard(self.inner.list_budget_alerts(key_id)).await
    }

    async fn create_console_session(
        &self,
        session: &ConsoleSession,
        audit: &AuditEvent,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.guard(
            self.inner
                .create_console_session(session, audit, idle_before),
        )
        .await
    }

    async fn use_console_session(
        &self,
        id: &str,
        idle_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<ConsoleSession> {
        self.guard(self.inner.use_console_session(id, idle_before, now))
            .await
    }

    async fn delete_console_session(&self, id: &str) -> StoreResult<()> {
        self.guard(self.inner.delete_console_session(id)).await
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn lost_connections_open_the_circuit_and_other_errors_do_not() {
        let refused = || sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        for err in [
            StoreError::Unavailable,
            StoreError::Database(refused()),
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
            StoreError::Database(sqlx::Error::Protocol("unexpected eof".into())),
        ] {
            assert!(err.is_unreachable(), "{err}");
            assert!(err.is_unavailable(), "{err}");
        }
        for err in [
            StoreError::NotFound,
            StoreError::Conflict {
                constraint: "workspace_name",
            },
            StoreError::KeyCapReached { cap: 1 },
            StoreError::Corrupt {
                table: "api_key",
                reason: "bad json".into(),
            },
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Database(sqlx::Error::ColumnNotFound("id".into())),
        ] {
            assert!(!err.is_unreachable(), "{err}");
            assert!(!err.is_unavailable(), "{err}");
        }
    }
}
