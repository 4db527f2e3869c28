//! Settlement that happens exactly once per admitted request, on every path: the answer
//! ends, the upstream fails, a timeout fires, or the client goes away (DESIGN §4–5).
//! `Meter::finish` settles with what is known; if the meter is dropped unfinished
//! (a client disconnect drops the response body), `Drop` settles with the fallback count:
//! prompt tokens plus the tokenizer's count of the text produced so far.

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Waker},
};

use bytes::Bytes;
use http::StatusCode;
use metrics::Histogram;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};

use super::{anthropic, saturating_i64, sse, tokens, tokens::BodyKind, Shared};
use crate::{
    config::UpstreamKind,
    keys::ApiKey,
    limits::{redis::Ticket, Limiter, Reservation, TokenUsage},
    telemetry::metrics::ModelId,
    usage::{budget::BudgetHold, pricing::PricedTokens, UsageEvent},
};

/// How a request ended, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered; charge these tokens.
    Charged(TokenUsage),
    /// The upstream refused or failed before producing anything: refund the token
    /// estimate (the request still counts toward rpm/rpd).
    NotCharged,
}

/// The prompt's token count for the fallback: counted at admission when a limit or budget
/// needed the estimate, else counted from the request body only if the upstream reports
/// no usage (so keys without token limits still never pay for the tokenizer otherwise).
pub enum PromptTokens {
    Counted(u64),
    Deferred(BodyKind, Bytes),
}

impl PromptTokens {
    pub fn count(&self) -> u64 {
        match self {
            PromptTokens::Counted(n) => *n,
            PromptTokens::Deferred(kind, body) => tokens::estimate(*kind, body).input,
        }
    }
}

pub struct Meter {
    pending: Option<Pending>,
}

struct Pending {
    shared: Arc<Shared>,
    key: Arc<ApiKey>,
    model: String,
    prompt_tokens: PromptTokens,
    reservation: Reservation,
    hold: Option<BudgetHold>,
    /// Released when the meter settles: the `max_parallel` slot can never leak.
    _slot: Option<OwnedSemaphorePermit>,
    /// What Redis admitted (buckets, money and slot), settled through its queue.
    ticket: Option<Ticket>,
    /// Text streamed so far, counted only if the stream ends without `usage`.
    produced: String,
    reported: Reported,
    /// The API the answer speaks: where its usage is read from.
    api: UpstreamKind,
    /// Usage is booked at admission time, the same period the budget charged it to, so a
    /// stream crossing midnight is stored under the day it started.
    admitted_at: chrono::DateTime<chrono::Utc>,
    /// The model's `/metrics` label.
    model_id: ModelId,
    /// The upstream's duration histogram and when the request was sent, once it was.
    upstream_timing: Option<(Histogram, Instant)>,
}

/// The usage the upstream reported so far. OpenAI reports it whole, once; Anthropic the
/// prompt's at the stream's start and the output's at its end, so a stream that breaks
/// in between is charged the prompt as reported and the output as counted.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    /// The prompt less the cache tokens (Anthropic's `input_tokens`).
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: u64,
    cache_read: u64,
}

impl Reported {
    fn merge(&mut self, usage: anthropic::Usage) {
        if let Some(input) = usage.input_tokens {
            self.input = Some(input);
        }
        if let Some(tokens) = usage.cache_creation_input_tokens {
            self.cache_creation = tokens;
        }
        if let Some(tokens) = usage.cache_read_input_tokens {
            self.cache_read = tokens;
        }
    }
}

/// What a request is charged: tokens for the limits (the prompt with its cache tokens)
/// and by price for the cost.
#[derive(Debug, Clone, Copy)]
struct Billed {
    tokens: TokenUsage,
    priced: PricedTokens,
}

impl From<TokenUsage> for Billed {
    fn from(tokens: TokenUsage) -> Self {
        Billed {
            tokens,
            priced: PricedTokens {
                input: saturating_i64(tokens.input),
                output: saturating_i64(tokens.output),
                ..PricedTokens::default()
            },
        }
    }
}

/// What admission took for a request, for the meter to give back or settle.
pub(super) struct Admission {
    pub reservation: Reservation,
    pub hold: Option<BudgetHold>,
    pub slot: Option<OwnedSemaphorePermit>,
    pub ticket: Option<Ticket>,
    /// When the budget admitted it: the period its usage is booked to.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Meter {
    pub(super) fn new(
        shared: Arc<Shared>,
        key: Arc<ApiKey>,
        model: String,
        prompt_tokens: PromptTokens,
        admission: Admission,
    ) -> Self {
        let Admission {
            reservation,
            hold,
            slot,
            ticket,
            at,
        } = admission;
        shared.metrics.in_flight().increment(1.0);
        let model_id = shared.metrics.model(&model);
        Meter {
            pending: Some(Pending {
                shared,
                key,
                model,
                prompt_tokens,
                reservation,
                hold,
                _slot: slot,
                ticket,
                produced: String::new(),
                reported: Reported::default(),
                api: UpstreamKind::OpenAi,
                admitted_at: at,
                model_id,
                upstream_timing: None,
            }),
        }
    }

    /// Times the upstream from `sent` until the meter settles, into `duration`.
    pub fn time_upstream(&mut self, duration: Histogram, sent: Instant) {
        if let Some(pending) = &mut self.pending {
            pending.upstream_timing = Some((duration, sent));
        }
    }

    /// Remembers streamed text, for the fallback count.
    pub fn produced(&mut self, text: &str) {
        if let Some(pending) = &mut self.pending {
            pending.produced.push_str(text);
        }
    }

    /// The answer speaks `api`'s wire format (OpenAI's until told).
    pub fn speaks(&mut self, api: UpstreamKind) {
        if let Some(pending) = &mut self.pending {
            pending.api = api;
        }
    }

    /// The API whose usage fields this meter reads.
    pub fn api(&self) -> UpstreamKind {
        self.pending
            .as_ref()
            .map_or(UpstreamKind::OpenAi, |pending| pending.api)
    }

    /// Remembers the upstream's reported usage (the stream may still go on).
    pub fn reported(&mut self, usage: TokenUsage) {
        if let Some(pending) = &mut self.pending {
            pending.reported = Reported {
                input: Some(usage.input),
                output: Some(usage.output),
                ..Reported::default()
            };
        }
    }

    /// Remembers an Anthropic stream's usage: `message_start`'s prompt (its
    /// `output_tokens` is a placeholder) and each `message_delta`'s running output.
    pub fn reported_anthropic(&mut self, event: anthropic::EventUsage) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        if let Some(start) = event.start {
            pending.reported.merge(start);
        }
        if let Some(delta) = event.delta {
            pending.reported.merge(delta);
            if let Some(output) = delta.output_tokens {
                pending.reported.output = Some(output);
            }
        }
    }

    /// The usage to charge when no more is coming: as reported, the rest counted.
    fn fallback(pending: &Pending) -> Billed {
        let reported = pending.reported;
        let output = reported
            .output
            .unwrap_or_else(|| tokens::count(&pending.produced));
        let Some(input) = reported.input else {
            return TokenUsage {
                input: pending.prompt_tokens.count(),
                output,
            }
            .into();
        };
        Billed {
            tokens: TokenUsage {
                input: input
                    .saturating_add(reported.cache_creation)
                    .saturating_add(reported.cache_read),
                output,
            },
            priced: PricedTokens {
                input: saturating_i64(input),
                output: saturating_i64(output),
                cache_creation: saturating_i64(reported.cache_creation),
                cache_read: saturating_i64(reported.cache_read),
            },
        }
    }

    /// The prompt's tokens by keygate's count (0 once settled).
    pub fn prompt_tokens(&self) -> u64 {
        self.pending
            .as_ref()
            .map_or(0, |pending| pending.prompt_tokens.count())
    }

    /// Settles with the reported usage, or the fallback count if none was reported.
    pub fn finish_streamed(&mut self) {
        if let Some(pending) = &self.pending {
            let billed = Self::fallback(pending);
            self.settle(Some(billed));
        }
    }

    /// Settles a whole (non-streamed) answer with status `status`: an upstream error is
    /// passed on uncharged; a success is charged the usage it reports, else keygate's count.
    pub fn finish_whole(&mut self, status: StatusCode, answer: &[u8]) {
        if !status.is_success() {
            self.finish(Outcome::NotCharged);
            return;
        }
        if self.api() == UpstreamKind::Anthropic {
            let (usage, generated) = anthropic::answer_usage(answer);
            if let Some(pending) = &mut self.pending {
                match usage {
                    Some(usage) => {
                        pending.reported.merge(usage);
                        pending.reported.output = Some(usage.output_tokens.unwrap_or(0));
                    }
                    None => pending.reported.output = Some(generated),
                }
            }
            self.finish_streamed();
            return;
        }
        let usage = match sse::answer_usage(answer) {
            Some(usage) => usage.into(),
            None => TokenUsage {
                input: self.prompt_tokens(),
                output: serde_json::from_slice::<serde_json::Value>(answer)
                    .map(|v| tokens::completion_tokens(&v))
                    .unwrap_or(0),
            },
        };
        self.finish(Outcome::Charged(usage));
    }

    /// Settles now. Later calls (and the drop) do nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        self.settle(match outcome {
            Outcome::Charged(usage) => Some(usage.into()),
            Outcome::NotCharged => None,
        });
    }

    /// Settles now with `billed` (`None`: not charged). Later calls do nothing.
    fn settle(&mut self, billed: Option<Billed>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let Pending {
            shared,
            key,
            model,
            reservation,
            hold,
            ticket,
            admitted_at,
            model_id,
            upstream_timing,
            ..
        } = pending;
        let metrics = &shared.metrics;
        metrics.in_flight().decrement(1.0);
        if let Some((duration, sent)) = upstream_timing {
            duration.record(sent.elapsed());
        }
        let usage = billed.map_or_else(TokenUsage::default, |billed| billed.tokens);
        let cost_pico = billed.map_or(0, |billed| {
            shared.pricing.cost_pico_tokens(&model, billed.priced)
        });
        if let Some(hold) = hold {
            shared.budgets.settle(hold, cost_pico);
        }
        if let Some(ticket) = ticket {
            ticket.settle(usage, cost_pico);
        }
        if billed.is_some() {
            metrics.used(model_id, usage.input, usage.output, cost_pico);
            shared.recorder.record(UsageEvent {
                key_id: key.id,
                workspace_id: key.workspace_id,
                model,
                at: admitted_at,
                requests: 1,
                input_tokens: saturating_i64(usage.input),
                output_tokens: saturating_i64(usage.output),
                cost_pico,
            });
        }
        settle_in_background(shared.limiter.clone(), reservation, usage);
    }
}

/// The limiter's settle may be a network round trip (Redis); the response (or a `Drop`)
/// must not wait for it. An in-process limiter settles at once (`settle_now`); otherwise
/// poll once here and spawn a task only for a settle that is really still pending.
fn settle_in_background(limiter: Arc<dyn Limiter>, reservation: Reservation, usage: TokenUsage) {
    if reservation.charges().is_empty() {
        return;
    }
    let Err((reservation, usage)) = limiter.settle_now(reservation, usage) else {
        return;
    };
    let mut settle = Box::pin(async move { limiter.settle(reservation, usage).await });
    let mut context = Context::from_waker(Waker::noop());
    if settle.as_mut().poll(&mut context).is_pending() {
        // The runtime polls a new task at once, which registers its real waker.
        tokio::spawn(settle);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.pending.is_some() {
            self.finish_streamed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use uuid::Uuid;

    use super::*;
    use crate::{
        keys::model::{Limits, TokenType},
        limits::{charges_for, BucketState, Charge, MemoryLimiter, Refusal, TokenEstimate},
    };

    /// A limiter with only the async methods (as one doing I/O would be).
    struct AsyncOnly(MemoryLimiter);

    #[async_trait]
    impl Limiter for AsyncOnly {
        async fn reserve(&self, charges: &[Charge]) -> Result<Reservation, Refusal> {
            tokio::task::yield_now().await;
            self.0.try_reserve(charges)
        }

        async fn settle(&self, reservation: Reservation, actual: TokenUsage) {
            tokio::task::yield_now().await;
            self.0.settle_now(reservation, actual);
        }

        async fn snapshot(&self, buckets: &[Charge]) -> Vec<BucketState> {
            self.0.states(buckets)
        }
    }

    fn tpm_charges(key_id: Uuid) -> Vec<Charge> {
        let limits = Limits {
            tpm: Some(1000),
            token_type: TokenType::Total,
            ..Limits::default()
        };
        let estimate = TokenEstimate {
            input: 100,
            output: 0,
        };
        charges_for(key_id, &limits, &[], "m", estimate)
    }

    async fn remaining_after_settling(limiter: Arc<dyn Limiter>, memory: &MemoryLimiter) -> i64 {
        let charges = tpm_charges(Uuid::new_v4());
        let reservation = match limiter.reserve_now(&charges) {
            Some(reserved) => reserved,
            None => limiter.reserve(&charges).await,
        };
        let Ok(reservation) = reservation else {
            return -1;
        };
        let usage = TokenUsage {
            input: 10,
            output: 0,
        };
        settle_in_background(limiter, reservation, usage);
        for _ in 0..100 {
            let remaining = memory.states(&charges)[0].remaining;
            if remaining >= 990 {
                return remaining;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        memory.states(&charges)[0].remaining
    }

    #[tokio::test]
    async fn settlement_reaches_an_in_process_and_an_async_only_limiter() {
        let memory = MemoryLimiter::new();
        assert_eq!(
            remaining_after_settling(Arc::new(memory.clone()), &memory).await,
            990
        );
        let memory = MemoryLimiter::new();
        let async_only = Arc::new(AsyncOnly(memory.clone()));
        assert!(async_only.reserve_now(&[]).is_none());
        assert_eq!(remaining_after_settling(async_only, &memory).await, 990);
    }
}
