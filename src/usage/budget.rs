//! The budget and credits gate (DESIGN §4): a request is admitted only while the key's
//! budget and its workspace's credits have money left, and its estimated cost is reserved
//! until the real cost is known. No HTTP here; the caller maps refusals to 402.
//!
//! **State.** One account per budgeted key and budget period, and one per workspace with
//! credits (its period is the whole lifetime). An account holds
//! - `baseline`: the stored spend of the period, loaded once from the store on first use
//!   (`key_usage_totals(key, period_start)` / `workspace_usage_totals(ws, epoch)`);
//!   concurrent first requests wait for that one load (a `OnceCell`), so none slips past an
//!   unloaded account (PEERS §2 item 2);
//! - `settled`: real costs settled on this instance since the account was created;
//! - `reserved`: estimates of admitted requests not yet settled.
//!
//! `spent = baseline + settled`, `remaining = limit − spent − reserved`.
//!
//! **Rule.** Admitted iff `remaining > 0` (checked and reserved under one lock, so there is
//! no check-then-increment race), then `reserved += estimate`. A request whose estimate is
//! 0 is always admitted: it cannot spend money (unpriced or zero-priced models, PEERS §2
//! item 12). A key without a budget and a workspace without credits are never refused and
//! keep no state.
//!
//! **Overshoot bound** (one instance). Just before the last admission `remaining ≥ 1` pico,
//! and it drops by that request's estimate `e_last`, so `limit − spent − reserved > −e_last`
//! at every instant. When every admitted request has settled, the final overshoot is
//!
//! ```text
//! spent_final − limit  <  e_last + Σ_in-flight (actual_i − estimate_i)
//! ```
//!
//! i.e. strictly less than the last admitted request's own estimate (at most `e_last − 1`
//! pico) plus whatever the requests in flight at that moment cost beyond their estimates.
//! With estimates that bound the real cost (prompt tokens + `max_tokens`), the overshoot is
//! below one request's estimate. Under-estimates (no `max_tokens`) add their difference.
//!
//! **Several instances** (without Redis, which keeps budgets exact across instances: see
//! `limits::redis`). After every usage flush the writer calls
//! [`BudgetLedger::after_flush`]: what this instance flushed moves from `settled` into the
//! baseline, and every active account's baseline is re-read from the store (all in one
//! batch, and only the recent minutes of each: see [`Reload`]), so other instances' spend
//! counts as soon as they have flushed it. Overshoot bound with N instances: the
//! single-instance bound above plus what the other instances spent on the account within
//! about two seconds (their flush interval, then our reload); spend an instance flushes
//! late, for minutes more than five minutes old, counts within five minutes. Accounts idle
//! for a minute with nothing pending are dropped and loaded afresh on their next use.
//!
//! **Periods.** Day and month start at UTC calendar boundaries, lifetime at the epoch
//! (PEERS §2 item 7). The first request after a boundary starts a new account with a fresh
//! baseline; holds still in flight settle into the period they were admitted in, so record
//! their usage with the admission time (see `UsageEvent::at`).

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use foldhash::HashMap;

use chrono::{DateTime, Datelike, DurationRound, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{
    keys::model::{ApiKey, BudgetPeriod},
    money::{pico_to_usd, usd_to_pico},
    store::{DynStore, RateLimitEvent, SpendRange, SpendScope, StoreError, UsageDelta},
};

/// Shards of the account maps, so unrelated keys rarely share a lock.
const SHARDS: usize = 16;
/// An account unused this long, with nothing pending, is dropped at the next flush.
const IDLE_ACCOUNT: std::time::Duration = std::time::Duration::from_secs(60);

/// Minute rows at least this old are summed only by the full reload (see [`Reload`]): an
/// instance flushes within a second, or, after a store outage, late.
const SETTLED_AFTER: TimeDelta = TimeDelta::minutes(5);

/// How often a reload sums an account's whole period again (see [`Reload`]).
const FULL_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Why a request was refused with 402 (or, for `Unavailable`, could not be checked).
#[derive(Debug, thiserror::Error)]
pub enum BudgetRefusal {
    /// The key's budget for the current period is spent (or fully reserved).
    #[error("{}", budget_message(*limit_usd, *period, *resets_at))]
    Budget {
        limit_usd: Decimal,
        period: BudgetPeriod,
        /// When the period ends; `None` for a lifetime budget.
        resets_at: Option<DateTime<Utc>>,
    },
    /// The workspace's credits are spent (or fully reserved).
    #[error("the workspace's credits of {} USD are exhausted", credits_usd.normalize())]
    Credits { credits_usd: Decimal },
    /// The spend baseline could not be loaded. The gate fails closed: without it a
    /// request could spend past the budget (map to 503). The cause is for logs only.
    #[error("budget state is unavailable, try again")]
    Unavailable(#[source] StoreError),
}

fn budget_message(
    limit_usd: Decimal,
    period: BudgetPeriod,
    resets_at: Option<DateTime<Utc>>,
) -> String {
    let limit = limit_usd.normalize();
    match (period, resets_at) {
        (BudgetPeriod::Lifetime, _) | (_, None) => {
            format!("the key's lifetime budget of {limit} USD is exhausted")
        }
        (_, Some(at)) => format!(
            "the key's {} budget of {limit} USD is exhausted; it resets at {}",
            period_name(period),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    }
}

fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "daily",
        BudgetPeriod::Month => "monthly",
        BudgetPeriod::Lifetime => "lifetime",
    }
}

impl BudgetRefusal {
    /// The rate-limit event kind (DESIGN §3): `budget` or `credits`; `None` for
    /// `Unavailable`, which is not a refusal by a limit.
    pub fn limit_kind(&self) -> Option<&'static str> {
        match self {
            BudgetRefusal::Budget { .. } => Some("budget"),
            BudgetRefusal::Credits { .. } => Some("credits"),
            BudgetRefusal::Unavailable(_) => None,
        }
    }

    /// The event to hand to `Recorder::refusal`, or `None` for `Unavailable`.
    pub fn rate_limit_event(
        &self,
        key: &ApiKey,
        model: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<RateLimitEvent> {
        let value = match self {
            BudgetRefusal::Budget { limit_usd, .. } => limit_usd.normalize().to_string(),
            BudgetRefusal::Credits { credits_usd } => credits_usd.normalize().to_string(),
            BudgetRefusal::Unavailable(_) => return None,
        };
        Some(RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: key.workspace_id,
            key_id: key.id,
            model: model.map(str::to_string),
            limit: self.limit_kind()?.to_string(),
            limit_value: value,
            at,
        })
    }
}

/// A key's budget in its current period, for the `/v1/key` self-service view.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BudgetState {
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub limit_usd: Decimal,
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    /// Start of the next period; `None` for a lifetime budget.
    pub resets_at: Option<DateTime<Utc>>,
    /// Settled spend of the period (stored baseline + settlements on this instance).
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub spent_usd: Decimal,
    /// Estimates of requests in flight.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub reserved_usd: Decimal,
    /// `limit − spent − reserved`, shown as 0 when the budget is overshot.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub remaining_usd: Decimal,
}

/// A workspace's credits, for self-service and admin views.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreditsState {
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub credits_usd: Decimal,
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub spent_usd: Decimal,
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub reserved_usd: Decimal,
    /// `credits − spent − reserved`, shown as 0 when overshot.
    #[schema(value_type = f64)]
    #[serde(with = "crate::money::usd")]
    pub remaining_usd: Decimal,
}

/// Start of the period containing `now` and the start of the next one (`None` for
/// lifetime). Day: today 00:00 UTC; month: the 1st 00:00 UTC; lifetime: the epoch.
pub fn period_bounds(
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let start = period_start(period, now);
    (start, next_boundary(period, start))
}

fn period_start(period: BudgetPeriod, now: DateTime<Utc>) -> DateTime<Utc> {
    let date = now.date_naive();
    let first = match period {
        BudgetPeriod::Day => Some(date),
        BudgetPeriod::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1),
        BudgetPeriod::Lifetime => None,
    };
    first
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::UNIX_EPOCH, |t| t.and_utc())
}

fn next_boundary(period: BudgetPeriod, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match period {
        BudgetPeriod::Day => start.checked_add_signed(TimeDelta::days(1)),
        BudgetPeriod::Month => {
            let (year, month) = match start.month() {
                12 => (start.year() + 1, 1),
                m => (start.year(), m + 1),
            };
            NaiveDate::from_ymd_opt(year, month, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        }
        BudgetPeriod::Lifetime => None,
    }
}

/// Admits requests against key budgets and workspace credits. Cheap to clone; all clones
/// share one state. One per process.
#[derive(Clone)]
pub struct BudgetLedger {
    inner: Arc<Inner>,
}

impl fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetLedger").finish_non_exhaustive()
    }
}

struct Inner {
    store: DynStore,
    keys: Accounts,
    workspaces: Accounts,
    #[cfg(test)]
    loads: std::sync::atomic::AtomicU64,
}

impl BudgetLedger {
    pub fn new(store: DynStore) -> Self {
        BudgetLedger {
            inner: Arc::new(Inner {
                store,
                keys: Accounts::new(Scope::Key),
                workspaces: Accounts::new(Scope::Workspace),
                #[cfg(test)]
                loads: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Checks the key's budget, then the workspace's credits (`(workspace id,
    /// credits_usd)`, `None` when the workspace has no credits), reserving `estimate_pico`
    /// on each. On a credits refusal the budget reservation is released. Dropping the
    /// returned hold releases its reservations; settle it with the real cost instead.
    pub async fn admit(
        &self,
        key: &ApiKey,
        workspace_credits: Option<(Uuid, Decimal)>,
        estimate_pico: i64,
        now: DateTime<Utc>,
    ) -> Result<BudgetHold, BudgetRefusal> {
        self.admit_with(key, workspace_credits, estimate_pico, now, false)
            .await
            .map_err(|(refusal, _)| refusal)
    }

    /// [`admit`](Self::admit) for a key that fits its requests to what is left
    /// (`fit_max_tokens`): the whole estimate must fit what each account has left, not
    /// merely something be left, so an admitted estimate never overshoots. A refusal
    /// comes with what the refusing account had left (pico-USD, at least 0), the room a
    /// smaller request may be fitted to.
    pub async fn admit_exact(
        &self,
        key: &ApiKey,
        workspace_credits: Option<(Uuid, Decimal)>,
        estimate_pico: i64,
        now: DateTime<Utc>,
    ) -> Result<BudgetHold, (BudgetRefusal, i64)> {
        self.admit_with(key, workspace_credits, estimate_pico, now, true)
            .await
    }

    async fn admit_with(
        &self,
        key: &ApiKey,
        workspace_credits: Option<(Uuid, Decimal)>,
        estimate_pico: i64,
        now: DateTime<Utc>,
        exact: bool,
    ) -> Result<BudgetHold, (BudgetRefusal, i64)> {
        let estimate = estimate_pico.max(0);
        let unavailable = |err| (BudgetRefusal::Unavailable(err), 0);
        // Reservations live in the hold from the moment they are made, so a refusal below
        // or a cancelled future releases them through `Drop`.
        let mut hold = BudgetHold {
            key: None,
            workspace: None,
        };
        match &key.budget {
            Some(budget) => {
                let account = self.inner.keys.get_or_start(key.id, budget.period, now);
                let baseline = self.inner.baseline(&account).await.map_err(unavailable)?;
                let limit = usd_to_pico(budget.limit_usd);
                if let Err(left) = account.try_reserve(baseline, limit, estimate, exact) {
                    let refusal = BudgetRefusal::Budget {
                        limit_usd: budget.limit_usd,
                        period: budget.period,
                        resets_at: next_boundary(account.period, account.period_start),
                    };
                    return Err((refusal, left));
                }
                hold.key = Some(Reservation { account, estimate });
            }
            None => self.inner.keys.remove(key.id),
        }
        match workspace_credits {
            Some((workspace_id, credits_usd)) => {
                let account =
                    self.inner
                        .workspaces
                        .get_or_start(workspace_id, BudgetPeriod::Lifetime, now);
                let baseline = self.inner.baseline(&account).await.map_err(unavailable)?;
                let limit = usd_to_pico(credits_usd);
                if let Err(left) = account.try_reserve(baseline, limit, estimate, exact) {
                    return Err((BudgetRefusal::Credits { credits_usd }, left));
                }
                hold.workspace = Some(Reservation { account, estimate });
            }
            None => self.inner.workspaces.remove(key.workspace_id),
        }
        Ok(hold)
    }

    /// Replaces the hold's reservations with the real cost (negative counts as 0). Taking
    /// the hold by value makes settling twice impossible.
    ///
    /// The cost goes to the account the request was admitted under, or, when that account
    /// was replaced by `forget` and reloaded for the same period, to its successor (whose
    /// baseline cannot contain this request yet, because usage is recorded after settling).
    pub fn settle(&self, mut hold: BudgetHold, actual_pico: i64) {
        let actual = actual_pico.max(0);
        if let Some(reservation) = hold.key.take() {
            reservation.account.release(reservation.estimate);
            self.inner
                .keys
                .successor(&reservation.account)
                .charge(actual);
        }
        if let Some(reservation) = hold.workspace.take() {
            reservation.account.release(reservation.estimate);
            self.inner
                .workspaces
                .successor(&reservation.account)
                .charge(actual);
        }
    }

    /// The key's budget in the period containing `now`; `Ok(None)` without a budget.
    /// Loads the baseline if this is the period's first use.
    pub async fn snapshot(
        &self,
        key: &ApiKey,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetState>, StoreError> {
        let Some(budget) = &key.budget else {
            return Ok(None);
        };
        let account = self.inner.keys.get_or_start(key.id, budget.period, now);
        let baseline = self.inner.baseline(&account).await?;
        let (spent, reserved) = account.totals(baseline);
        let remaining = remaining(usd_to_pico(budget.limit_usd), spent, reserved);
        Ok(Some(BudgetState {
            limit_usd: budget.limit_usd,
            period: budget.period,
            period_start: account.period_start,
            resets_at: next_boundary(account.period, account.period_start),
            spent_usd: usd(spent),
            reserved_usd: usd(reserved),
            remaining_usd: usd_floor_zero(remaining),
        }))
    }

    /// The workspace's credits: `credits_usd` granted minus lifetime spend and reservations.
    pub async fn credits_snapshot(
        &self,
        workspace_id: Uuid,
        credits_usd: Decimal,
        now: DateTime<Utc>,
    ) -> Result<CreditsState, StoreError> {
        let account = self
            .inner
            .workspaces
            .get_or_start(workspace_id, BudgetPeriod::Lifetime, now);
        let baseline = self.inner.baseline(&account).await?;
        let (spent, reserved) = account.totals(baseline);
        let remaining = remaining(usd_to_pico(credits_usd), spent, reserved);
        Ok(CreditsState {
            credits_usd,
            spent_usd: usd(spent),
            reserved_usd: usd(reserved),
            remaining_usd: usd_floor_zero(remaining),
        })
    }

    /// Drops the key's account (call when an admin changes its budget); the next request
    /// reloads the baseline from the store. Holds in flight keep their old account, so
    /// their reservations are released where they were made and their costs follow to
    /// the reloaded account (see [`settle`](Self::settle)).
    pub fn forget(&self, key_id: Uuid) {
        self.inner.keys.remove(key_id);
    }

    /// Same as [`forget`](Self::forget) for a workspace's credits account.
    pub fn forget_workspace(&self, workspace_id: Uuid) {
        self.inner.workspaces.remove(workspace_id);
    }

    /// After a usage flush of this instance (`flushed` is what it wrote): the flushed costs
    /// move from the accounts' own settlements into their baselines, and every account's
    /// baseline is read again from the store, so what other instances flushed counts too.
    /// With N instances on one database a budget is overshot by at most what the others
    /// spent within one flush interval (docs/decisions.md). Accounts idle for a minute with
    /// nothing pending are dropped instead (the next request loads them afresh).
    pub async fn after_flush(&self, flushed: &[UsageDelta]) {
        for delta in flushed.iter().filter(|d| d.cost_pico > 0) {
            for (accounts, id) in [
                (&self.inner.keys, delta.key_id),
                (&self.inner.workspaces, delta.workspace_id),
            ] {
                if let Some(account) = accounts.current(id) {
                    if account.covers(delta.minute) {
                        let mut c = account.counters();
                        c.settled = c.settled.saturating_sub(delta.cost_pico).max(0);
                    }
                }
            }
        }
        for (accounts, scope) in [
            (&self.inner.keys, SpendScope::Key),
            (&self.inner.workspaces, SpendScope::Workspace),
        ] {
            let candidates = accounts.reload_candidates();
            let plan = Reload::plan(&candidates, Utc::now());
            // Every account in one batch (a statement per account on PostgreSQL was one
            // round trip each: 10 000 keys in use made 10 000 reads a flush).
            match self.inner.store.spend_in(scope, &plan.ranges).await {
                Ok(spent) if spent.len() == plan.ranges.len() => plan.apply(&candidates, &spent),
                Ok(spent) => {
                    // Never read a missing answer as "nothing spent".
                    tracing::warn!(
                        asked = plan.ranges.len(),
                        answered = spent.len(),
                        "budget baselines not reloaded: the store answered for other ranges than asked"
                    );
                }
                Err(err) => {
                    tracing::debug!(error = %err, "budget baselines not reloaded; keeping the last ones");
                }
            }
        }
    }

    /// Baseline loads so far (tests check that concurrent first requests load once).
    #[cfg(test)]
    pub(crate) fn baseline_loads(&self) -> u64 {
        self.inner.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.inner.keys.len(), self.inner.workspaces.len())
    }
}

impl Inner {
    async fn baseline(&self, account: &Account) -> Result<i64, StoreError> {
        account
            .baseline
            .get_or_try_init(|| async {
                #[cfg(test)]
                self.loads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.load(account).await
            })
            .await
            .copied()
    }

    /// The account's stored spend in its period.
    async fn load(&self, account: &Account) -> Result<i64, StoreError> {
        let totals = match account.scope {
            Scope::Key(id) => {
                self.store
                    .key_usage_totals(id, account.period_start, None)
                    .await?
            }
            Scope::Workspace(id) => {
                self.store
                    .workspace_usage_totals(id, account.period_start)
                    .await?
            }
        };
        Ok(totals.cost_pico)
    }
}

/// What an admitted request holds until it settles. Settle it with
/// [`BudgetLedger::settle`]; dropping it unsettled (a cancelled request) releases the
/// reservations and charges nothing, so a reservation can never leak.
#[must_use = "settle the hold with BudgetLedger::settle; dropping it charges nothing"]
pub struct BudgetHold {
    key: Option<Reservation>,
    workspace: Option<Reservation>,
}

impl BudgetHold {
    /// pico-USD reserved per account (0 when neither a budget nor credits applied).
    pub fn reserved_pico(&self) -> i64 {
        self.key
            .as_ref()
            .or(self.workspace.as_ref())
            .map_or(0, |r| r.estimate)
    }

    /// True when the key has no budget and the workspace no credits.
    pub fn is_unmetered(&self) -> bool {
        self.key.is_none() && self.workspace.is_none()
    }
}

impl fmt::Debug for BudgetHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHold")
            .field("key", &self.key.as_ref().map(|r| r.estimate))
            .field("workspace", &self.workspace.as_ref().map(|r| r.estimate))
            .finish()
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        for reservation in [self.key.take(), self.workspace.take()]
            .into_iter()
            .flatten()
        {
            reservation.account.release(reservation.estimate);
        }
    }
}

struct Reservation {
    account: Arc<Account>,
    estimate: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Key(Uuid),
    Workspace(Uuid),
}

impl Scope {
    fn id(&self) -> Uuid {
        match *self {
            Scope::Key(id) | Scope::Workspace(id) => id,
        }
    }
}

/// What a reload after a flush reads: for most accounts only the recent minutes of the
/// period, added to the older part read at the last full reload ([`Frozen`]). Summing the
/// whole period every second would grow with it: a month's budget in steady use has up to
/// 43 200 minute rows per model by its end, 10 000 such keys 432 million rows a second.
/// Rows older than [`SETTLED_AFTER`] change only when an instance flushes late (after a
/// store outage), which the full reload every [`FULL_RELOAD_EVERY`] takes in.
struct Reload {
    ranges: Vec<SpendRange>,
    /// Per candidate: the frozen part it keeps, or the split of the full read it asked.
    steps: Vec<ReloadStep>,
}

enum ReloadStep {
    /// One range from `frozen.until`: the recent part.
    Recent(Frozen),
    /// Two ranges: before `split` (frozen from now on), and from `split`.
    Full { split: DateTime<Utc> },
}

impl Reload {
    fn plan(candidates: &[Arc<Account>], now: DateTime<Utc>) -> Reload {
        let mut ranges = Vec::with_capacity(candidates.len());
        let mut steps = Vec::with_capacity(candidates.len());
        for account in candidates {
            let id = account.scope.id();
            let frozen = account.counters().frozen;
            match frozen {
                Some(frozen) if frozen.read_at.elapsed() < FULL_RELOAD_EVERY => {
                    ranges.push(SpendRange::from(id, frozen.until));
                    steps.push(ReloadStep::Recent(frozen));
                }
                _ => {
                    let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
                    let split = (minute - SETTLED_AFTER).max(account.period_start);
                    ranges.push(SpendRange {
                        id,
                        from: account.period_start,
                        until: Some(split),
                    });
                    ranges.push(SpendRange::from(id, split));
                    steps.push(ReloadStep::Full { split });
                }
            }
        }
        Reload { ranges, steps }
    }

    /// Sets each candidate's reloaded spend from the answers to `ranges`, in order (one
    /// per range: the caller checks).
    fn apply(self, candidates: &[Arc<Account>], spent: &[i64]) {
        let mut spent = spent.iter().copied();
        let read_at = std::time::Instant::now();
        for (account, step) in candidates.iter().zip(self.steps) {
            let frozen = match step {
                ReloadStep::Recent(frozen) => frozen,
                ReloadStep::Full { split } => Frozen {
                    until: split,
                    spent: spent.next().unwrap_or_default(),
                    read_at,
                },
            };
            let recent = spent.next().unwrap_or_default();
            let mut c = account.counters();
            c.frozen = Some(frozen);
            c.reloaded = Some(frozen.spent.saturating_add(recent));
        }
    }
}

/// The stored spend of a period before `until`, as read at `read_at` (see [`Reload`]).
#[derive(Debug, Clone, Copy)]
struct Frozen {
    until: DateTime<Utc>,
    spent: i64,
    read_at: std::time::Instant,
}

/// One key's budget period, or one workspace's credits.
struct Account {
    scope: Scope,
    period: BudgetPeriod,
    period_start: DateTime<Utc>,
    /// Where the period ends (`None` for lifetime): within it, a request needs no calendar
    /// arithmetic to find its account.
    period_end: Option<DateTime<Utc>>,
    /// Stored spend of the period when the account started; loaded once.
    baseline: OnceCell<i64>,
    counters: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Real costs settled here and not yet in `baseline` (not yet flushed to the store when
    /// the baseline was last read).
    settled: i64,
    reserved: i64,
    /// The stored spend as last reloaded after a usage flush; `None` until the first
    /// reload (the first load in `baseline` stands until then).
    reloaded: Option<i64>,
    /// When a request last reserved on the account (idle accounts are dropped).
    last_used: Option<std::time::Instant>,
    /// The older part of the stored spend, read at the last full reload.
    frozen: Option<Frozen>,
}

impl Account {
    /// Whether usage booked at `at` belongs to this account's period.
    fn covers(&self, at: DateTime<Utc>) -> bool {
        self.period_start <= at && self.period_end.is_none_or(|end| at < end)
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        // Nothing below can panic while the lock is held; recover the data regardless.
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The admission rule, checked and applied under one lock: something must be left,
    /// and with `exact` the whole estimate must fit. `Err` says what was left (at least 0).
    fn try_reserve(
        &self,
        baseline: i64,
        limit: i64,
        estimate: i64,
        exact: bool,
    ) -> Result<(), i64> {
        let mut c = self.counters();
        let baseline = c.reloaded.unwrap_or(baseline);
        let left = remaining(limit, baseline.saturating_add(c.settled), c.reserved);
        if estimate > 0 && (left <= 0 || (exact && i128::from(estimate) > left)) {
            return Err(i64::try_from(left.max(0)).unwrap_or(i64::MAX));
        }
        c.reserved = c.reserved.saturating_add(estimate);
        c.last_used = Some(std::time::Instant::now());
        Ok(())
    }

    fn release(&self, estimate: i64) {
        let mut c = self.counters();
        c.reserved = c.reserved.saturating_sub(estimate).max(0);
    }

    fn charge(&self, actual: i64) {
        let mut c = self.counters();
        c.settled = c.settled.saturating_add(actual);
    }

    /// (spent, reserved) in pico-USD.
    fn totals(&self, baseline: i64) -> (i64, i64) {
        let c = self.counters();
        let baseline = c.reloaded.unwrap_or(baseline);
        (baseline.saturating_add(c.settled), c.reserved)
    }
}

fn remaining(limit: i64, spent: i64, reserved: i64) -> i128 {
    i128::from(limit) - i128::from(spent) - i128::from(reserved)
}

/// pico-USD → USD without trailing zeros (`0.4`, not `0.400000000000`).
fn usd(pico: i64) -> Decimal {
    pico_to_usd(pico).normalize()
}

/// A remaining amount for display: never below 0.
fn usd_floor_zero(pico: i128) -> Decimal {
    usd(i64::try_from(pico.max(0)).unwrap_or(i64::MAX))
}

/// Current accounts by key or workspace id.
struct Accounts {
    shards: Vec<Mutex<HashMap<Uuid, Arc<Account>>>>,
    scope: fn(Uuid) -> Scope,
}

impl Accounts {
    fn new(scope: fn(Uuid) -> Scope) -> Self {
        Accounts {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            scope,
        }
    }

    fn shard(&self, id: Uuid) -> MutexGuard<'_, HashMap<Uuid, Arc<Account>>> {
        let index = (id.as_u128() % SHARDS as u128) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The account for the period containing `now`, starting a new one when the period
    /// kind changed or `now` passed the current account's period end. A request whose
    /// `now` lags behind an account that already rolled over joins the newer account.
    fn get_or_start(&self, id: Uuid, period: BudgetPeriod, now: DateTime<Utc>) -> Arc<Account> {
        let mut shard = self.shard(id);
        if let Some(current) = shard.get(&id) {
            let within =
                current.period_start <= now && current.period_end.is_none_or(|end| now < end);
            if current.period == period && within {
                return current.clone();
            }
        }
        let start = period_start(period, now);
        if let Some(current) = shard.get(&id) {
            if current.period == period && current.period_start >= start {
                return current.clone();
            }
        }
        let account = Arc::new(Account {
            scope: (self.scope)(id),
            period,
            period_start: start,
            period_end: next_boundary(period, start),
            baseline: OnceCell::new(),
            counters: Mutex::default(),
        });
        shard.insert(id, account.clone());
        account
    }

    /// The account a settlement of `admitted_under` charges: the current account when it
    /// covers the same period (itself, or its reload after `forget`), else the old one.
    fn successor(&self, admitted_under: &Arc<Account>) -> Arc<Account> {
        let id = admitted_under.scope.id();
        self.shard(id)
            .get(&id)
            .filter(|current| {
                current.period == admitted_under.period
                    && current.period_start == admitted_under.period_start
            })
            .cloned()
            .unwrap_or_else(|| admitted_under.clone())
    }

    fn remove(&self, id: Uuid) {
        self.shard(id).remove(&id);
    }

    fn current(&self, id: Uuid) -> Option<Arc<Account>> {
        self.shard(id).get(&id).cloned()
    }

    /// Accounts whose baseline was loaded, to reload; drops the idle ones (a minute
    /// without requests, nothing reserved or unflushed).
    fn reload_candidates(&self) -> Vec<Arc<Account>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, account| {
                let c = account.counters();
                let idle = c.last_used.is_none_or(|at| at.elapsed() > IDLE_ACCOUNT);
                !(idle && c.reserved == 0 && c.settled == 0)
            });
            out.extend(shard.values().filter(|a| a.baseline.initialized()).cloned());
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
