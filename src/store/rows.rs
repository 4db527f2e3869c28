//! Row structs shared by both backends, and their conversions into domain types.
//!
//! Every table has the same columns in both schemas; only the representation of uuid,
//! timestamp and JSON columns differs, and that is the type parameter `C` (see
//! [`Columns`]). Each backend reads rows with `query_as::<_, KeyRow<ItsColumns>>(…)`.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::FromRow;

use super::{
    codec::{corrupt, decode, opt_time, Columns},
    AlertStatus, AuditEvent, BudgetAlert, BudgetAlertId, Member, RateLimitEvent, Role,
    SecretRecord, SecretVersion, StoreError, StoreResult, UsageRow, UsageTotals, WebhookSecret,
    Workspace,
};
use crate::domain::{ApiKey, KeyKind};

#[derive(FromRow)]
pub(super) struct WorkspaceRow<C: Columns> {
    id: C::Id,
    name: String,
    key_cap: Option<i64>,
    credits_usd: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    created_at: C::Time,
    updated_at: C::Time,
}

impl<C: Columns> TryFrom<WorkspaceRow<C>> for Workspace {
    type Error = StoreError;

    fn try_from(row: WorkspaceRow<C>) -> StoreResult<Self> {
        let credits_usd = row
            .credits_usd
            .map(|text| {
                Decimal::from_str(&text)
                    .map_err(|e| corrupt("workspace", format!("credits_usd `{text}`: {e}")))
            })
            .transpose()?;
        Ok(Workspace {
            id: row.id.into(),
            name: row.name,
            key_cap: row.key_cap,
            credits_usd,
            webhook_url: row.webhook_url,
            webhook_secret: row.webhook_secret.map(WebhookSecret::new),
            created_at: C::time("workspace", row.created_at)?,
            updated_at: C::time("workspace", row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct MemberRow<C: Columns> {
    id: C::Id,
    workspace_id: C::Id,
    username: String,
    role: String,
    password_hash: String,
    created_at: C::Time,
    updated_at: C::Time,
}

impl<C: Columns> TryFrom<MemberRow<C>> for Member {
    type Error = StoreError;

    fn try_from(row: MemberRow<C>) -> StoreResult<Self> {
        let role = Role::parse(&row.role)
            .ok_or_else(|| corrupt("member", format!("role `{}`", row.role)))?;
        Ok(Member {
            id: row.id.into(),
            workspace_id: row.workspace_id.into(),
            username: row.username,
            role,
            password_hash: row.password_hash,
            created_at: C::time("member", row.created_at)?,
            updated_at: C::time("member", row.updated_at)?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct KeyRow<C: Columns> {
    id: C::Id,
    workspace_id: C::Id,
    name: String,
    kind: String,
    partial_key: String,
    last6: String,
    created_by: String,
    created_at: C::Time,
    updated_at: C::Time,
    expires_at: Option<C::Time>,
    last_used_at: Option<C::Time>,
    revoked_at: Option<C::Time>,
    metadata: C::Json,
    allowed_models: Option<C::Json>,
    budget: Option<C::Json>,
    limits: C::Json,
    model_limits: C::Json,
    max_parallel: Option<i64>,
    ip_allowlist: Option<C::Json>,
    alert_thresholds: Option<C::Json>,
    compat: C::Json,
    wallet_address: Option<String>,
    fit_max_tokens: bool,
}

impl<C: Columns> TryFrom<KeyRow<C>> for ApiKey {
    type Error = StoreError;

    fn try_from(row: KeyRow<C>) -> StoreResult<Self> {
        const T: &str = "api_key";
        let kind =
            KeyKind::parse(&row.kind).ok_or_else(|| corrupt(T, format!("kind `{}`", row.kind)))?;
        let max_parallel = row
            .max_parallel
            .map(|n| u32::try_from(n).map_err(|_| corrupt(T, format!("max_parallel {n}"))))
            .transpose()?;
        Ok(ApiKey {
            id: row.id.into(),
            workspace_id: row.workspace_id.into(),
            name: row.name,
            kind,
            partial_key: row.partial_key,
            last6: row.last6,
            created_by: row.created_by,
            created_at: C::time(T, row.created_at)?,
            updated_at: C::time(T, row.updated_at)?,
            expires_at: opt_time::<C>(T, row.expires_at)?,
            last_used_at: opt_time::<C>(T, row.last_used_at)?,
            revoked_at: opt_time::<C>(T, row.revoked_at)?,
            metadata: decode::<C, _>(T, "metadata", row.metadata)?,
            allowed_models: row
                .allowed_models
                .map(|v| decode::<C, _>(T, "allowed_models", v))
                .transpose()?,
            budget: row
                .budget
                .map(|v| decode::<C, _>(T, "budget", v))
                .transpose()?,
            limits: decode::<C, _>(T, "limits", row.limits)?,
            model_limits: decode::<C, _>(T, "model_limits", row.model_limits)?,
            max_parallel,
            ip_allowlist: row
                .ip_allowlist
                .map(|v| decode::<C, _>(T, "ip_allowlist", v))
                .transpose()?,
            alert_thresholds: row
                .alert_thresholds
                .map(|v| decode::<C, _>(T, "alert_thresholds", v))
                .transpose()?,
            compat: decode::<C, _>(T, "compat", row.compat)?,
            wallet_address: row.wallet_address,
            fit_max_tokens: row.fit_max_tokens,
        })
    }
}

/// A secret joined with its key (`find_secret`): `select s.lookup_id as secret_lookup_id, …,
/// k.*`.
#[derive(FromRow)]
pub(super) struct SecretKeyRow<C: Columns> {
    secret_lookup_id: String,
    secret_hash: String,
    secret_valid_until: Option<C::Time>,
    secret_created_at: C::Time,
    #[sqlx(flatten)]
    key: KeyRow<C>,
}

impl<C: Columns> SecretKeyRow<C> {
    pub fn into_pair(self) -> StoreResult<(SecretRecord, ApiKey)> {
        const T: &str = "api_key_secret";
        let secret = SecretRecord {
            lookup_id: self.secret_lookup_id,
            key_id: self.key.id.into(),
            hash: self.secret_hash,
            valid_until: opt_time::<C>(T, self.secret_valid_until)?,
            created_at: C::time(T, self.secret_created_at)?,
        };
        Ok((secret, ApiKey::try_from(self.key)?))
    }
}

/// What decides whether a cached key is still what the store holds (`secret_versions`):
/// `select s.lookup_id, s.hash, s.valid_until, k.updated_at, k.revoked_at`.
#[derive(FromRow)]
pub(super) struct SecretVersionRow<C: Columns> {
    lookup_id: String,
    hash: String,
    valid_until: Option<C::Time>,
    updated_at: C::Time,
    revoked_at: Option<C::Time>,
}

impl<C: Columns> TryFrom<SecretVersionRow<C>> for SecretVersion {
    type Error = StoreError;

    fn try_from(row: SecretVersionRow<C>) -> StoreResult<Self> {
        const T: &str = "api_key_secret";
        Ok(SecretVersion {
            lookup_id: row.lookup_id,
            hash: row.hash,
            valid_until: opt_time::<C>(T, row.valid_until)?,
            key_updated_at: C::time("api_key", row.updated_at)?,
            key_revoked_at: opt_time::<C>("api_key", row.revoked_at)?,
        })
    }
}

#[derive(FromRow)]
pub(super) struct AuditRow<C: Columns> {
    id: C::Id,
    workspace_id: C::Id,
    actor: String,
    action: String,
    target: String,
    at: C::Time,
    source: Option<String>,
    details: C::Json,
}

impl<C: Columns> TryFrom<AuditRow<C>> for AuditEvent {
    type Error = StoreError;

    fn try_from(row: AuditRow<C>) -> StoreResult<Self> {
        Ok(AuditEvent {
            id: row.id.into(),
            workspace_id: row.workspace_id.into(),
            actor: row.actor,
            action: row.action,
            target: row.target,
            at: C::time("audit_event", row.at)?,
            source: row.source,
            details: decode::<C, Value>("audit_event", "details", row.details)?,
        })
    }
}

/// One bucket of `Store::usage`; `start` is computed by the backend's SQL.
#[derive(FromRow)]
pub(super) struct UsageBucketRow<C: Columns> {
    start: C::Time,
    model: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_pico: i64,
}

impl<C: Columns> TryFrom<UsageBucketRow<C>> for UsageRow {
    type Error = StoreError;

    fn try_from(row: UsageBucketRow<C>) -> StoreResult<Self> {
        Ok(UsageRow {
            start: C::time("usage_minute", row.start)?,
            model: row.model,
            requests: row.requests,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_pico: row.cost_pico,
        })
    }
}

#[derive(FromRow)]
pub(super) struct TotalsRow {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_pico: i64,
}

impl From<TotalsRow> for UsageTotals {
    fn from(row: TotalsRow) -> Self {
        UsageTotals {
            requests: row.requests,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_pico: row.cost_pico,
        }
    }
}

#[derive(FromRow)]
pub(super) struct RateLimitRow<C: Columns> {
    id: C::Id,
    workspace_id: C::Id,
    key_id: C::Id,
    model: Option<String>,
    limit_kind: String,
    limit_value: String,
    at: C::Time,
}

impl<C: Columns> TryFrom<RateLimitRow<C>> for RateLimitEvent {
    type Error = StoreError;

    fn try_from(row: RateLimitRow<C>) -> StoreResult<Self> {
        Ok(RateLimitEvent {
            id: row.id.into(),
            workspace_id: row.workspace_id.into(),
            key_id: row.key_id.into(),
            model: row.model,
            limit: row.limit_kind,
            limit_value: row.limit_value,
            at: C::time("rate_limit_event", row.at)?,
        })
    }
}

/// A `budget_alert` row. `workspace_id` and `payload` are null only in rows written before
/// migration 0004 (none were: nothing claimed alerts then); reads skip such rows.
#[derive(FromRow)]
pub(super) struct BudgetAlertRow<C: Columns> {
    key_id: C::Id,
    period_start: C::Time,
    threshold_bp: i64,
    claimed_at: C::Time,
    workspace_id: Option<C::Id>,
    payload: Option<String>,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    next_attempt_at: Option<C::Time>,
    finished_at: Option<C::Time>,
}

impl<C: Columns> TryFrom<BudgetAlertRow<C>> for BudgetAlert {
    type Error = StoreError;

    fn try_from(row: BudgetAlertRow<C>) -> StoreResult<Self> {
        const TABLE: &str = "budget_alert";
        let status = AlertStatus::parse(&row.status)
            .ok_or_else(|| corrupt(TABLE, format!("status `{}`", row.status)))?;
        Ok(BudgetAlert {
            id: BudgetAlertId {
                key_id: row.key_id.into(),
                period_start: C::time(TABLE, row.period_start)?,
                threshold_bp: row.threshold_bp,
            },
            workspace_id: row
                .workspace_id
                .ok_or_else(|| corrupt(TABLE, "no workspace_id".into()))?
                .into(),
            payload: row
                .payload
                .ok_or_else(|| corrupt(TABLE, "no payload".into()))?,
            claimed_at: C::time(TABLE, row.claimed_at)?,
            status,
            attempts: row.attempts,
            last_error: row.last_error,
            next_attempt_at: opt_time::<C>(TABLE, row.next_attempt_at)?,
            finished_at: opt_time::<C>(TABLE, row.finished_at)?,
        })
    }
}
