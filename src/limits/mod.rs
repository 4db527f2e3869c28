//! Rate limits (DESIGN §4): which buckets a request touches, and the [`Limiter`] boundary
//! that admits or refuses all of them in one call. No HTTP here.
//!
//! Flow: [`charges_for`] builds the request's buckets (global and the model's, each with its
//! amount) → [`Limiter::reserve`] charges all of them or none → the upstream answers →
//! [`Limiter::settle`] applies the real token counts. Both `reserve` and its refusal carry
//! the buckets' states, so `x-ratelimit-*` headers cost no second round trip (DESIGN §7:
//! one round trip per request for the Redis implementation).

pub mod gcra;
pub mod memory;
pub mod redis;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::{OnceLock, PoisonError, RwLock},
    time::Duration,
};

use foldhash::HashSet;

use async_trait::async_trait;
use uuid::Uuid;

pub use self::memory::{Clock, ManualClock, MemoryLimiter, SystemClock};
use crate::keys::model::{Limits, ModelLimits, TokenType};

/// Which limit a bucket enforces. The names are the ones DESIGN §3 records in rate-limit
/// events (`rpm | rpd | tpm | tpd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    Rpm,
    Rpd,
    Tpm,
    Tpd,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Rpm,
        LimitKind::Rpd,
        LimitKind::Tpm,
        LimitKind::Tpd,
    ];

    /// The refill window: a minute or a day.
    pub fn window(self) -> Duration {
        match self {
            LimitKind::Rpm | LimitKind::Tpm => Duration::from_secs(60),
            LimitKind::Rpd | LimitKind::Tpd => Duration::from_secs(86_400),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Rpd => "rpd",
            LimitKind::Tpm => "tpm",
            LimitKind::Tpd => "tpd",
        }
    }

    /// Token buckets are charged an estimate and settled; request buckets take 1.
    pub fn is_tokens(self) -> bool {
        matches!(self, LimitKind::Tpm | LimitKind::Tpd)
    }

    /// This kind's value in a set of limits.
    fn of(self, limits: &Limits) -> Option<u64> {
        match self {
            LimitKind::Rpm => limits.rpm,
            LimitKind::Rpd => limits.rpd,
            LimitKind::Tpm => limits.tpm,
            LimitKind::Tpd => limits.tpd,
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a bucket belongs to the key's global limits or to one model's. The model's
/// name is interned ([`intern`]), so a scope is a plain copyable value: a request's
/// charges and states copy it without reference counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Model(&'static str),
}

/// `model` as a string that lives as long as the process, the same one for every call
/// with the same name. Only names that a key's `model_limits` configure are interned, so
/// the set is bounded by what admins configure, not by what clients send.
pub fn intern(model: &str) -> &'static str {
    static NAMES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(RwLock::default);
    // Every request with model limits looks its name up: a read lock, so requests on
    // several worker threads do not wait for each other. Inserts are whole or not at all,
    // so a poisoned set is consistent.
    if let Some(name) = names
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(model)
    {
        return name;
    }
    let mut names = names.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(name) = names.get(model) {
        return name; // another thread added it meanwhile
    }
    let name: &'static str = Box::leak(model.into());
    names.insert(name);
    name
}

impl Scope {
    pub fn model(&self) -> Option<&str> {
        match self {
            Scope::Global => None,
            Scope::Model(model) => Some(model),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Model(model) => write!(f, "model {model}"),
        }
    }
}

/// Names one bucket: a key's limit of one kind in one scope. The kind comes first so
/// that comparing two buckets of one request (same key) usually stops at the first field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub kind: LimitKind,
    pub scope: Scope,
    pub key_id: Uuid,
}

impl BucketKey {
    /// The bucket's field in its key's Redis hash (`<prefix>rl:{<key id>}`, see
    /// `limits::redis`): `<kind>:global` or `<kind>:model:<model>`. The model comes last,
    /// so any characters in its name stay unambiguous.
    pub fn redis_field(&self) -> String {
        match &self.scope {
            Scope::Global => format!("{}:global", self.kind),
            Scope::Model(model) => format!("{}:model:{model}", self.kind),
        }
    }
}

/// Tokens expected at admission: prompt tokens, and `max_tokens` as output if given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenEstimate {
    pub input: u64,
    pub output: u64,
}

/// Tokens the upstream reported (or the tokenizer counted) when the response ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
}

fn count(token_type: TokenType, input: u64, output: u64) -> u64 {
    match token_type {
        TokenType::Input => input,
        TokenType::Output => output,
        TokenType::Total => input.saturating_add(output),
    }
}

impl TokenEstimate {
    pub fn count(self, token_type: TokenType) -> u64 {
        count(token_type, self.input, self.output)
    }
}

impl TokenUsage {
    pub fn count(self, token_type: TokenType) -> u64 {
        count(token_type, self.input, self.output)
    }
}

/// One bucket to charge: its key, its current limit (limits live on the key, not in the
/// limiter, so an edited limit applies at the next request) and the amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub bucket: BucketKey,
    pub limit: u64,
    /// 1 for request buckets; the estimate, counted by `token_type`, for token buckets.
    pub amount: u64,
    /// Which tokens a token bucket counts; `None` for request buckets, which settlement
    /// leaves alone (a request counts toward rpm/rpd even if the upstream fails).
    pub token_type: Option<TokenType>,
}

/// The buckets a request for `model` touches: every limit set in `limits`, and every limit
/// of the first `model_limits` entry naming `model` exactly.
pub fn charges_for(
    key_id: Uuid,
    limits: &Limits,
    model_limits: &[ModelLimits],
    model: &str,
    estimate: TokenEstimate,
) -> Vec<Charge> {
    let mut charges = Vec::with_capacity(8);
    push_charges(&mut charges, key_id, Scope::Global, limits, Some(estimate));
    if let Some(entry) = model_limits.iter().find(|m| m.model == model) {
        let scope = Scope::Model(intern(&entry.model));
        push_charges(&mut charges, key_id, scope, &entry.limits(), Some(estimate));
    }
    charges
}

/// Every bucket a key has (global and all models), with amount 0: the input to
/// [`Limiter::snapshot`] for the key's self-service view.
pub fn buckets_of(key_id: Uuid, limits: &Limits, model_limits: &[ModelLimits]) -> Vec<Charge> {
    let mut charges = Vec::new();
    push_charges(&mut charges, key_id, Scope::Global, limits, None);
    for entry in model_limits {
        let scope = Scope::Model(intern(&entry.model));
        push_charges(&mut charges, key_id, scope, &entry.limits(), None);
    }
    charges
}

fn push_charges(
    out: &mut Vec<Charge>,
    key_id: Uuid,
    scope: Scope,
    limits: &Limits,
    estimate: Option<TokenEstimate>,
) {
    for kind in LimitKind::ALL {
        let Some(limit) = kind.of(limits) else {
            continue;
        };
        let token_type = kind.is_tokens().then_some(limits.token_type);
        let amount = match (estimate, token_type) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(estimate), Some(token_type)) => estimate.count(token_type),
        };
        out.push(Charge {
            bucket: BucketKey {
                key_id,
                scope,
                kind,
            },
            limit,
            amount,
            token_type,
        });
    }
}

/// A bucket as the `x-ratelimit-*` headers and `/v1/key` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    pub kind: LimitKind,
    pub scope: Scope,
    pub limit: u64,
    /// Whole units left; negative while the bucket is in debt after a settlement.
    pub remaining: i64,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
}

impl BucketState {
    /// The state OpenAI's headers report: the minute window (rpm, or tpm with `tokens`)
    /// with the least remaining; on a tie, the one that takes longer to refill.
    pub fn tightest_minute(states: &[BucketState], tokens: bool) -> Option<&BucketState> {
        let kind = if tokens {
            LimitKind::Tpm
        } else {
            LimitKind::Rpm
        };
        states.iter().filter(|s| s.kind == kind).min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_after.cmp(&a.reset_after))
        })
    }
}

/// Proof that a request's buckets were charged. Settle it exactly once: [`Limiter::settle`]
/// takes it by value and it is not `Clone`. Dropping it unsettled keeps the estimate
/// charged as if it had been the real usage.
#[derive(Debug)]
#[must_use = "settle the reservation when the response ends"]
pub struct Reservation {
    charges: Vec<Charge>,
    states: Vec<BucketState>,
}

impl Reservation {
    /// A reservation of nothing (a request admitted elsewhere, e.g. in Redis).
    pub fn empty() -> Self {
        Reservation {
            charges: Vec::new(),
            states: Vec::new(),
        }
    }

    pub fn charges(&self) -> &[Charge] {
        &self.charges
    }

    /// The charged buckets right after admission, in the order of the charges.
    pub fn states(&self) -> &[BucketState] {
        &self.states
    }

    /// Moves the states out (for the answer's headers); settling does not need them.
    pub fn take_states(&mut self) -> Vec<BucketState> {
        std::mem::take(&mut self.states)
    }
}

/// A request refused by a rate limit. Nothing was charged in any bucket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded: {kind} limit of {limit} ({scope})")]
pub struct Refusal {
    /// The refusing limit; if several refused, the one with the longest wait.
    pub kind: LimitKind,
    pub scope: Scope,
    pub limit: u64,
    /// When the same request would be admitted; `None` when no wait helps (the limit is
    /// 0, or this request alone needs more than the limit).
    pub retry_after: Option<Duration>,
    /// All the request's buckets, unchanged, in the order of the charges.
    pub states: Vec<BucketState>,
}

/// Rate-limit state: in-process ([`MemoryLimiter`]) or shared across instances (Redis).
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Charges every bucket, or none if any refuses. An empty list is admitted.
    async fn reserve(&self, charges: &[Charge]) -> Result<Reservation, Refusal>;

    /// Charges (or refunds) each token bucket the difference between its estimate and
    /// `actual`, counted by its token type. May take buckets negative.
    async fn settle(&self, reservation: Reservation, actual: TokenUsage);

    /// The buckets' states without charging anything (amounts are ignored).
    async fn snapshot(&self, buckets: &[Charge]) -> Vec<BucketState>;

    /// [`Limiter::reserve`] without a future, for a limiter that needs no I/O (in-process);
    /// `None` means "call `reserve`". The proxy tries this first on every request: a boxed
    /// future per call cost more than the in-process limiter's work.
    fn reserve_now(&self, _charges: &[Charge]) -> Option<Result<Reservation, Refusal>> {
        None
    }

    /// [`Limiter::settle`] without a future; `Err` hands the arguments back for `settle`.
    fn settle_now(
        &self,
        reservation: Reservation,
        actual: TokenUsage,
    ) -> Result<(), (Reservation, TokenUsage)> {
        Err((reservation, actual))
    }
}
