//! Admission (DESIGN §5): whether a parsed request may go upstream now. In order: the
//! key's concurrency slot, the workspace's credits and the key's budget (by the request's
//! estimated cost), then its rate limits. With Redis all four are one call
//! ([`RedisGate::admit`](crate::limits::redis::RedisGate::admit), refusals reported in the
//! same order); while Redis is unavailable, or without it, they are decided in process,
//! rate limits and the slot divided by `redis.fallback_replicas` in the first case. Each refusal is logged as a rate-limit event and
//! gives back what earlier steps took (RAII), so nothing refused is counted. An admitted
//! request comes out as a [`Meter`] holding all it took, which settles exactly once.

use std::sync::Arc;

use bytes::Bytes;
use rust_decimal::Decimal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use super::{
    meter::{Admission, Meter, PromptTokens},
    request::RequestFields,
    saturating_i64, tokens, Gateway, InferenceError, InferenceRequest, SharedLimits,
};
use crate::{
    keys::ApiKey,
    limits::{
        charges_for,
        redis::{Account, AdmitError, AdmitRequest, MoneyAsk, Refused, Ticket},
        BucketState, Reservation, TokenEstimate,
    },
    money::usd_to_pico,
    store::{RateLimitEvent, StoreError},
    usage::budget::{period_bounds, BudgetRefusal},
};

/// An admitted request: its meter, and the rate-limit buckets' states for the answer's
/// headers.
pub(super) struct Admitted {
    pub meter: Meter,
    pub limits: Vec<BucketState>,
}

impl Gateway {
    /// Admits `request` (whose `body` was read into `fields`) for `model`, or says which
    /// limit refused it.
    pub(super) async fn admit(
        &self,
        request: &InferenceRequest,
        body: &Bytes,
        fields: Option<&RequestFields<'_>>,
        model: Option<String>,
    ) -> Result<Admitted, InferenceError> {
        let key = &request.key;
        let kind = request.endpoint.body_kind();
        let model_name = model.as_deref().unwrap_or_default();
        // Workspace credits are charged by cost too, so a priced request needs its estimate
        // even on a key without limits or budget (a 0 estimate is always admitted).
        let credits = self
            .workspace_credits(key.workspace_id)
            .await
            .map_err(|err| {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "workspace credits unavailable; refusing (fail closed)");
                InferenceError::BudgetUnavailable
            })?;
        let estimated =
            needs_estimate(key) || (credits.is_some() && !self.shared.pricing.is_free(model_name));
        let (estimate, prompt_tokens) = match fields {
            Some(fields) if estimated => {
                let estimate = tokens::estimate_fields(kind, fields);
                (estimate, PromptTokens::Counted(estimate.input))
            }
            // Counted from the body only if the upstream reports no usage.
            _ => (
                TokenEstimate::default(),
                PromptTokens::Deferred(kind, body.clone()),
            ),
        };

        if let Some(redis) = &self.shared.redis {
            let shared = self
                .admit_shared(redis, request, credits, estimate, model.as_deref())
                .await;
            match shared {
                Some(Ok((ticket, at))) => {
                    return Ok(self.admitted_shared(key, model, prompt_tokens, ticket, at));
                }
                Some(Err(refused)) => return Err(refused),
                None => {} // Redis unavailable: decide in process, limits divided.
            }
        }
        let divisor = self
            .shared
            .redis
            .as_ref()
            .map_or(1, |r| r.fallback_replicas);
        let slot = self.take_slot(key, divisor).inspect_err(|_| {
            self.record_refusal(
                key,
                model.as_deref(),
                "concurrency",
                key.max_parallel.unwrap_or(0).to_string(),
            );
        })?;
        let estimate_cost = self.shared.pricing.cost_pico(
            model_name,
            saturating_i64(estimate.input),
            saturating_i64(estimate.output),
        );
        let admitted_at = crate::clock::now();
        let hold = match self
            .shared
            .budgets
            .admit(
                key,
                credits.map(|c| (key.workspace_id, c)),
                estimate_cost,
                admitted_at,
            )
            .await
        {
            Ok(hold) => hold,
            Err(BudgetRefusal::Unavailable(err)) => {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "budget state unavailable; refusing (fail closed)");
                return Err(InferenceError::BudgetUnavailable);
            }
            Err(refusal) => {
                let (limit, value) = match &refusal {
                    BudgetRefusal::Credits { credits_usd } => ("credits", credits_usd.to_string()),
                    BudgetRefusal::Budget { limit_usd, .. } => ("budget", limit_usd.to_string()),
                    BudgetRefusal::Unavailable(_) => ("budget", String::new()),
                };
                self.record_refusal(key, model.as_deref(), limit, value);
                return Err(InferenceError::Budget(refusal));
            }
        };
        let mut charges = charges_for(key.id, &key.limits, &key.model_limits, model_name, estimate);
        if divisor > 1 {
            for charge in &mut charges {
                charge.limit = charge.limit.div_ceil(u64::from(divisor));
            }
        }
        let reserved = match self.shared.limiter.reserve_now(&charges) {
            Some(reserved) => reserved,
            None => self.shared.limiter.reserve(&charges).await,
        };
        let mut reservation = match reserved {
            Ok(reservation) => reservation,
            Err(refusal) => {
                self.record_refusal(
                    key,
                    refusal.scope.model().or(model.as_deref()),
                    refusal.kind.as_str(),
                    refusal.limit.to_string(),
                );
                return Err(InferenceError::RateLimited(refusal));
            }
        };
        let limits = reservation.take_states();
        let admission = Admission {
            reservation,
            hold: Some(hold),
            slot,
            ticket: None,
            at: admitted_at,
        };
        Ok(self.admitted(key, model, prompt_tokens, admission, limits))
    }

    /// Admission in Redis: every bucket, the budget, the credits and the slot in one
    /// script call. `None` when Redis is unavailable (the caller decides in process).
    async fn admit_shared(
        &self,
        redis: &SharedLimits,
        request: &InferenceRequest,
        credits: Option<Decimal>,
        estimate: TokenEstimate,
        model: Option<&str>,
    ) -> Option<Result<(Ticket, DateTime<Utc>), InferenceError>> {
        let key = &request.key;
        let model_name = model.unwrap_or_default();
        let now = crate::clock::now();
        let budget = key.budget.as_ref().map(|budget| {
            let (start, end) = period_bounds(budget.period, now);
            MoneyAsk {
                account: Account::Budget(key.id),
                limit_pico: usd_to_pico(budget.limit_usd),
                period_start: start,
                period_end: end,
            }
        });
        let credits_ask = credits.map(|credits| MoneyAsk {
            account: Account::Credits(key.workspace_id),
            limit_pico: usd_to_pico(credits),
            period_start: DateTime::UNIX_EPOCH,
            period_end: None,
        });
        let admit = AdmitRequest {
            key_id: key.id,
            charges: charges_for(key.id, &key.limits, &key.model_limits, model_name, estimate),
            budget,
            credits: credits_ask,
            estimate_pico: self.shared.pricing.cost_pico(
                model_name,
                saturating_i64(estimate.input),
                saturating_i64(estimate.output),
            ),
            max_parallel: key.max_parallel,
        };
        let refused = match redis.gate.admit(admit).await {
            Ok(ticket) => return Some(Ok((ticket, now))),
            Err(AdmitError::Unavailable) => return None,
            Err(AdmitError::Store(err)) => {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "budget state unavailable; refusing (fail closed)");
                return Some(Err(InferenceError::BudgetUnavailable));
            }
            Err(AdmitError::Refused(refused)) => refused,
        };
        let limit = key.max_parallel.unwrap_or(0);
        let error = match refused {
            Refused::Slot => {
                self.record_refusal(key, model, "concurrency", limit.to_string());
                InferenceError::Concurrency { limit }
            }
            Refused::Budget => {
                let budget = key.budget.as_ref()?;
                self.record_refusal(key, model, "budget", budget.limit_usd.to_string());
                InferenceError::Budget(BudgetRefusal::Budget {
                    limit_usd: budget.limit_usd,
                    period: budget.period,
                    resets_at: period_bounds(budget.period, now).1,
                })
            }
            Refused::Credits => {
                let credits_usd = credits?;
                self.record_refusal(key, model, "credits", credits_usd.to_string());
                InferenceError::Budget(BudgetRefusal::Credits { credits_usd })
            }
            Refused::Rate(refusal) => {
                self.record_refusal(
                    key,
                    refusal.scope.model().or(model),
                    refusal.kind.as_str(),
                    refusal.limit.to_string(),
                );
                InferenceError::RateLimited(refusal)
            }
        };
        Some(Err(error))
    }

    fn admitted_shared(
        &self,
        key: &Arc<ApiKey>,
        model: Option<String>,
        prompt_tokens: PromptTokens,
        mut ticket: Ticket,
        at: DateTime<Utc>,
    ) -> Admitted {
        let limits = ticket.take_states();
        let admission = Admission {
            reservation: Reservation::empty(),
            hold: None,
            slot: None,
            ticket: Some(ticket),
            at,
        };
        self.admitted(key, model, prompt_tokens, admission, limits)
    }

    /// The meter of an admitted request, holding what `admission` took, and the buckets'
    /// states for the answer's headers.
    fn admitted(
        &self,
        key: &Arc<ApiKey>,
        model: Option<String>,
        prompt_tokens: PromptTokens,
        admission: Admission,
        limits: Vec<BucketState>,
    ) -> Admitted {
        let meter = Meter::new(
            self.shared.clone(),
            key.clone(),
            model.unwrap_or_default(),
            prompt_tokens,
            admission,
        );
        Admitted { meter, limits }
    }

    /// The key's `max_parallel` slot, if it has a cap (divided by `divisor` in fallback).
    fn take_slot(
        &self,
        key: &ApiKey,
        divisor: u32,
    ) -> Result<Option<OwnedSemaphorePermit>, InferenceError> {
        let Some(limit) = key.max_parallel else {
            return Ok(None);
        };
        let limit = limit.div_ceil(divisor);
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let entry = slots
                .entry(key.id)
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
            if entry.0 != limit {
                // The cap changed: requests in flight keep their slots on the old semaphore.
                *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
            }
            entry.1.clone()
        };
        semaphore
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| InferenceError::Concurrency { limit })
    }

    /// The workspace's credits, read again after `credits_ttl`. When the store cannot
    /// answer, the last value read stands (as a cached key does); with none, `Err`, and
    /// admission fails closed like an unloaded budget (docs/decisions.md).
    async fn workspace_credits(&self, workspace_id: Uuid) -> Result<Option<Decimal>, StoreError> {
        let known = {
            let credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
            match credits.get(&workspace_id) {
                Some((value, at)) if at.elapsed() < self.credits_ttl => return Ok(*value),
                other => other.map(|(value, _)| *value),
            }
        };
        let value = match (self.store.get_workspace(workspace_id).await, known) {
            (Ok(ws), _) => ws.credits_usd,
            (Err(err), Some(value)) if err.is_unavailable() => {
                tracing::debug!(error = %err, %workspace_id, "store unavailable; using the credits read last");
                value
            }
            (Err(err), _) => return Err(err),
        };
        let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
        credits.insert(workspace_id, (value, std::time::Instant::now()));
        Ok(value)
    }

    fn record_refusal(&self, key: &ApiKey, model: Option<&str>, limit: &str, limit_value: String) {
        self.shared.metrics.refused(limit);
        self.shared.recorder.refusal(RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: key.workspace_id,
            key_id: key.id,
            model: model.map(str::to_owned),
            limit: limit.to_string(),
            limit_value,
            at: crate::clock::now(),
        });
    }
}

/// The estimate only matters when a token bucket or a budget will be charged.
fn needs_estimate(key: &ApiKey) -> bool {
    key.budget.is_some()
        || key.limits.tpm.is_some()
        || key.limits.tpd.is_some()
        || key
            .model_limits
            .iter()
            .any(|m| m.tpm.is_some() || m.tpd.is_some())
}
