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
    fit,
    meter::{Admission, Meter, PromptTokens},
    request::RequestFields,
    saturating_i64,
    tokens::{self, BodyKind},
    Gateway, InferenceError, InferenceRequest, SharedLimits,
};
use crate::{
    keys::ApiKey,
    limits::{
        charges_for,
        redis::{Account, AdmitError, AdmitRequest, MoneyAsk, Refused as RedisRefused, Ticket},
        BucketState, Charge, Refusal, Reservation, TokenEstimate,
    },
    money::usd_to_pico,
    store::{RateLimitEvent, StoreError},
    usage::budget::{period_bounds, BudgetRefusal},
};

/// An admitted request: its meter, the rate-limit buckets' states for the answer's
/// headers, and the completion cap it was fitted to (`fit.rs`), if it was.
pub(super) struct Admitted {
    pub meter: Meter,
    pub limits: Vec<BucketState>,
    pub fitted: Option<u64>,
}

/// One admission attempt's refusal: the error, the rate-limit event to record if the
/// refusal stands, and, when fitting was asked for, the largest completion the refusing
/// limit has room for (`None`: no completion helps).
struct Refused {
    error: InferenceError,
    event: Option<(&'static str, Option<String>, String)>,
    room: Option<u64>,
}

impl Refused {
    fn new(error: InferenceError) -> Self {
        Refused {
            error,
            event: None,
            room: None,
        }
    }

    fn event(mut self, limit: &'static str, model: Option<&str>, value: String) -> Self {
        self.event = Some((limit, model.map(str::to_owned), value));
        self
    }
}

/// What one attempt admits with: the estimate, and whether money must fit it whole.
#[derive(Clone, Copy)]
struct Ask {
    estimate: TokenEstimate,
    /// Set for keys that fit `max_tokens`: fitting is only worth it if the budget then
    /// holds the fitted estimate exactly (`BudgetLedger::admit_exact`).
    fit: bool,
}

impl Gateway {
    /// Admits `request` (whose `body` was read into `fields`) for `model`, or says which
    /// limit refused it. On a key with `fit_max_tokens`, a refusal by a token bucket or by
    /// money is followed by attempts with the completion cap lowered to the refusing
    /// limit's room (`fit.rs`), each lower than the last, at most one per kind of limit.
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
        // Only a completion's cap can be fitted: chat and legacy completions.
        let fit = key.fit_max_tokens
            && estimated
            && fields.is_some()
            && matches!(kind, BodyKind::Chat | BodyKind::Completion);
        // The cap asked for; none is as many as the model gives.
        let mut cap = fields
            .and_then(RequestFields::max_output_tokens)
            .unwrap_or(u64::MAX);
        let mut ask = Ask { estimate, fit };
        let mut fitted = None;
        // At most one fit per kind of limit (token buckets, money): three attempts.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let refused = match self
                .admit_once(request, credits, ask, model.as_deref())
                .await
            {
                Ok((admission, limits)) => {
                    let meter = self.meter(key, model, prompt_tokens, admission);
                    return Ok(Admitted {
                        meter,
                        limits,
                        fitted,
                    });
                }
                Err(refused) => refused,
            };
            match refused
                .room
                .filter(|room| fit && *room < cap && attempts < 3)
            {
                Some(room) if room >= self.min_fitted_tokens => {
                    cap = room;
                    ask.estimate.output = room;
                    fitted = Some(room);
                }
                _ => {
                    if let Some((limit, model, value)) = refused.event {
                        self.record_refusal(key, model.as_deref(), limit, value);
                    }
                    return Err(refused.error);
                }
            }
        }
    }

    /// One admission attempt for `ask`: in Redis when it is the limiter in force, else in
    /// process (limits divided while Redis is unavailable).
    async fn admit_once(
        &self,
        request: &InferenceRequest,
        credits: Option<Decimal>,
        ask: Ask,
        model: Option<&str>,
    ) -> Result<(Admission, Vec<BucketState>), Refused> {
        let key = &request.key;
        if let Some(redis) = &self.shared.redis {
            match self.admit_shared(redis, request, credits, ask, model).await {
                Some(Ok((mut ticket, at))) => {
                    let limits = ticket.take_states();
                    let admission = Admission {
                        reservation: Reservation::empty(),
                        hold: None,
                        slot: None,
                        ticket: Some(ticket),
                        at,
                    };
                    return Ok((admission, limits));
                }
                Some(Err(refused)) => return Err(refused),
                None => {} // Redis unavailable: decide in process, limits divided.
            }
        }
        let model_name = model.unwrap_or_default();
        let estimate = ask.estimate;
        let divisor = self
            .shared
            .redis
            .as_ref()
            .map_or(1, |r| r.fallback_replicas);
        let slot = self.take_slot(key, divisor).map_err(|error| {
            let limit = key.max_parallel.unwrap_or(0).to_string();
            Refused::new(error).event("concurrency", model, limit)
        })?;
        let estimate_cost = self.shared.pricing.cost_pico(
            model_name,
            saturating_i64(estimate.input),
            saturating_i64(estimate.output),
        );
        let admitted_at = crate::clock::now();
        let credits = credits.map(|c| (key.workspace_id, c));
        let budgets = &self.shared.budgets;
        let held = if ask.fit {
            budgets
                .admit_exact(key, credits, estimate_cost, admitted_at)
                .await
        } else {
            budgets
                .admit(key, credits, estimate_cost, admitted_at)
                .await
                .map_err(|refusal| (refusal, 0))
        };
        let hold = match held {
            Ok(hold) => hold,
            Err((BudgetRefusal::Unavailable(err), _)) => {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "budget state unavailable; refusing (fail closed)");
                return Err(Refused::new(InferenceError::BudgetUnavailable));
            }
            Err((refusal, left_pico)) => {
                let (limit, value) = match &refusal {
                    BudgetRefusal::Credits { credits_usd } => ("credits", credits_usd.to_string()),
                    BudgetRefusal::Budget { limit_usd, .. } => ("budget", limit_usd.to_string()),
                    BudgetRefusal::Unavailable(_) => ("budget", String::new()),
                };
                let room = self.money_room(ask, model_name, left_pico);
                let refused =
                    Refused::new(InferenceError::Budget(refusal)).event(limit, model, value);
                return Err(Refused { room, ..refused });
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
            Err(refusal) => return Err(Self::rate_refused(ask, &charges, refusal, model)),
        };
        let limits = reservation.take_states();
        let admission = Admission {
            reservation,
            hold: Some(hold),
            slot,
            ticket: None,
            at: admitted_at,
        };
        Ok((admission, limits))
    }

    /// A rate-limit refusal, with the room its token buckets leave when fitting.
    fn rate_refused(
        ask: Ask,
        charges: &[Charge],
        refusal: Refusal,
        model: Option<&str>,
    ) -> Refused {
        let room = ask
            .fit
            .then(|| fit::room_in_buckets(charges, &refusal.states, ask.estimate.input))
            .flatten();
        let (limit, value) = (refusal.kind.as_str(), refusal.limit.to_string());
        let scope_model = refusal.scope.model().or(model).map(str::to_owned);
        Refused {
            error: InferenceError::RateLimited(refusal),
            event: Some((limit, scope_model, value)),
            room,
        }
    }

    /// The completion `left_pico` pays for beside the prompt, when fitting.
    fn money_room(&self, ask: Ask, model: &str, left_pico: i64) -> Option<u64> {
        let cap = ask.estimate.output;
        ask.fit
            .then(|| {
                fit::room_in_money(
                    &self.shared.pricing,
                    model,
                    ask.estimate.input,
                    cap,
                    left_pico,
                )
            })
            .flatten()
    }

    /// Admission in Redis: every bucket, the budget, the credits and the slot in one
    /// script call. `None` when Redis is unavailable (the caller decides in process).
    async fn admit_shared(
        &self,
        redis: &SharedLimits,
        request: &InferenceRequest,
        credits: Option<Decimal>,
        ask: Ask,
        model: Option<&str>,
    ) -> Option<Result<(Ticket, DateTime<Utc>), Refused>> {
        let key = &request.key;
        let model_name = model.unwrap_or_default();
        let estimate = ask.estimate;
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
            exact_money: ask.fit,
        };
        let refused = match redis.gate.admit(admit).await {
            Ok(ticket) => return Some(Ok((ticket, now))),
            Err(AdmitError::Unavailable) => return None,
            Err(AdmitError::Store(err)) => {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "budget state unavailable; refusing (fail closed)");
                return Some(Err(Refused::new(InferenceError::BudgetUnavailable)));
            }
            Err(AdmitError::Refused(refused)) => refused,
        };
        let limit = key.max_parallel.unwrap_or(0);
        let refused = match refused {
            RedisRefused::Slot => Refused::new(InferenceError::Concurrency { limit }).event(
                "concurrency",
                model,
                limit.to_string(),
            ),
            RedisRefused::Budget { left_pico } => {
                let budget = key.budget.as_ref()?;
                let error = InferenceError::Budget(BudgetRefusal::Budget {
                    limit_usd: budget.limit_usd,
                    period: budget.period,
                    resets_at: period_bounds(budget.period, now).1,
                });
                let refused =
                    Refused::new(error).event("budget", model, budget.limit_usd.to_string());
                let room = self.money_room(ask, model_name, left_pico);
                Refused { room, ..refused }
            }
            RedisRefused::Credits { left_pico } => {
                let credits_usd = credits?;
                let error = InferenceError::Budget(BudgetRefusal::Credits { credits_usd });
                let refused = Refused::new(error).event("credits", model, credits_usd.to_string());
                let room = self.money_room(ask, model_name, left_pico);
                Refused { room, ..refused }
            }
            RedisRefused::Rate(refusal) => {
                // The charges as the script saw them (the same function, the same input).
                let charges =
                    charges_for(key.id, &key.limits, &key.model_limits, model_name, estimate);
                Self::rate_refused(ask, &charges, refusal, model)
            }
        };
        Some(Err(refused))
    }

    /// The meter of an admitted request, holding what `admission` took.
    fn meter(
        &self,
        key: &Arc<ApiKey>,
        model: Option<String>,
        prompt_tokens: PromptTokens,
        admission: Admission,
    ) -> Meter {
        Meter::new(
            self.shared.clone(),
            key.clone(),
            model.unwrap_or_default(),
            prompt_tokens,
            admission,
        )
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
