//! Limits shared by every replica through Redis (DESIGN §7): the [`RedisGate`] admits a
//! request — every GCRA bucket it touches, the key's budget, the workspace's credits and
//! the key's `max_parallel` slot — in ONE round trip, and settles it later without the
//! request waiting.
//!
//! **Admission** is one Lua script (`admit.lua`), loaded once and called with EVALSHA
//! (the `redis` crate's `Script` reloads it on NOSCRIPT). Redis runs a script alone, so
//! checking everything and then writing everything is all or nothing without locks or
//! WATCH retries. The script answers with the buckets' TATs and the clock it used; the
//! states for the `x-ratelimit-*` headers and a refusal's `Retry-After` are computed here
//! by the same [`Bucket`] code as the in-process limiter, so both give the same answers
//! (the tests in `limits::tests` run against both).
//!
//! **Why the script is written the way it is.**
//! - GCRA counts time in ticks of `1/limit` ns (`gcra.rs`): a TAT is `ns · limit`, up to
//!   2^125, and budgets are pico-USD sums past 2^53. Lua numbers are doubles, exact only
//!   below 2^53, so the script keeps such numbers as six base-2^24 limbs
//!   (`common.lua`: add, compare, multiply — a limb product stays below 2^48). It never
//!   divides: every cost that does not depend on the clock (`n · window`, the capacity)
//!   is computed here in `i128` and passed in, and every division (remaining units, waits)
//!   happens here on the TATs the script returns.
//! - The clock is Redis' `TIME`: one clock for all replicas, so skew between machines
//!   cannot hand out capacity twice.
//! - A key's buckets live in one hash (`{prefix}rl:{<key id>}`, a field per bucket), so a
//!   request reads them with one HMGET and writes them with one HSET.
//! - Nothing is written before everything was checked; a refusal writes nothing (except
//!   dropping expired slot leases, which is housekeeping).
//! - A missing budget/credits counter is not guessed: the script says so, the caller
//!   seeds it from the store's spend with HSETNX (concurrent seeders agree: the first
//!   wins) and calls again.
//!
//! **Settlement** (real usage replaces the estimate, money settled, slot returned) goes
//! into a queue; one task drains it, many requests per `settle.lua` call. The request
//! never waits for it. The same task extends the leases of running requests' slots
//! every third of `slot_lease_secs`, so a replica killed mid-request leaks its slots for at
//! most one lease.
//!
//! **Budget counters** live per period (`{prefix}budget:{<key id>}:<period start>`) and
//! expire an hour after the period; workspace credits (`{prefix}credits:{<ws id>}`) expire
//! after a week without use. The store stays the record of usage: a counter that is
//! missing is seeded from it again.
//!
//! **Redis unreachable** (connect error, an answer later than `timeout`): the gate says
//! [`AdmitError::Unavailable`] and the caller uses the in-process limiter, budget ledger
//! and semaphores, with every rate limit and `max_parallel` divided by
//! `redis.fallback_replicas`. The state change is logged once (warn on entering, info on
//! leaving) and shown in the `keygate_limiter_fallback` gauge and `/readyz`. While in
//! fallback no request talks to Redis; a background probe PINGs it every second or so
//! (jittered, so replicas do not reconnect in lockstep) and switches back when it answers.
//!
//! **Not supported:** Redis Cluster. A request's script touches its key's state and its
//! workspace's credits, which would hash to different slots.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use foldhash::HashMap;
use rand::Rng;
use redis::{aio::ConnectionManager, Script, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use super::{
    gcra::{Bucket, Rate},
    memory::{longer, state},
    BucketState, Charge, Clock, Refusal, Reservation, TokenUsage,
};
use crate::store::{DynStore, StoreError};

const COMMON: &str = include_str!("common.lua");

/// How long a bucket hash lives after its last write: twice the longest window of its
/// buckets, so a bucket in debt for more than a window is still remembered.
fn bucket_ttl_ms(charges: &[Charge]) -> u64 {
    let longest = charges
        .iter()
        .map(|c| c.bucket.kind.window())
        .max()
        .unwrap_or(Duration::from_secs(60));
    duration_ms(longest) * 2
}

/// Credits are lifetime counters: kept while in use, re-seeded from the store after a week
/// without requests.
const CREDITS_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long a budget counter outlives its period (late settlements still land in it).
const PERIOD_GRACE: Duration = Duration::from_secs(3600);
/// Settlements per script call.
const SETTLE_BATCH: usize = 256;

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The gate's settings (`[redis]` in the configuration).
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub url: String,
    pub prefix: String,
    pub slot_lease: Duration,
    /// Deadline of every Redis call.
    pub timeout: Duration,
}

/// A budget or credits account to reserve the estimate on.
#[derive(Debug, Clone, Copy)]
pub struct MoneyAsk {
    pub account: Account,
    pub limit_pico: i64,
    /// The period's start (the epoch for lifetime budgets and credits).
    pub period_start: DateTime<Utc>,
    /// The next period's start; `None` for lifetime.
    pub period_end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// A key's budget.
    Budget(Uuid),
    /// A workspace's credits.
    Credits(Uuid),
}

/// Everything one request asks for at admission.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    pub key_id: Uuid,
    pub charges: Vec<Charge>,
    pub budget: Option<MoneyAsk>,
    pub credits: Option<MoneyAsk>,
    pub estimate_pico: i64,
    pub max_parallel: Option<u32>,
    /// Money is admitted only when the whole estimate fits what is left (a key that fits
    /// `max_tokens`), not merely while something is left.
    pub exact_money: bool,
}

/// Which limit refused, checked in the in-process order.
#[derive(Debug)]
pub enum Refused {
    Slot,
    /// With what the account had left, in pico-USD (at least 0).
    Budget {
        left_pico: i64,
    },
    Credits {
        left_pico: i64,
    },
    Rate(Refusal),
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("refused: {0:?}")]
    Refused(Refused),
    /// Redis did not answer in time (or at all): use the in-process fallback.
    #[error("redis unavailable")]
    Unavailable,
    /// A budget counter had to be seeded and the store could not say the spend.
    #[error("cannot seed the budget counter: {0}")]
    Store(#[source] StoreError),
}

/// What an admitted request holds in Redis. Settle it with [`Ticket::settle`]; dropping
/// it unsettled keeps the rate-limit estimate charged, releases the money reservations
/// without charging anything and gives the slot back (as the in-process types do).
#[must_use = "settle the ticket when the response ends"]
pub struct Ticket {
    charges: Vec<Charge>,
    states: Vec<BucketState>,
    money: Vec<(String, i64)>,
    slot: Option<Slot>,
    queue: mpsc::UnboundedSender<Settlement>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("charges", &self.charges.len())
            .field("slot", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Slot {
    lease_id: u64,
    key: String,
    member: String,
}

impl Ticket {
    /// The buckets' states right after admission (for the answer's headers).
    pub fn take_states(&mut self) -> Vec<BucketState> {
        std::mem::take(&mut self.states)
    }

    /// Queues the settlement: the real token usage and cost replace the estimates and the
    /// slot comes back. Never waits for Redis.
    pub fn settle(mut self, actual: TokenUsage, actual_pico: i64) {
        self.send(Some(actual), actual_pico.max(0));
    }

    fn send(&mut self, actual: Option<TokenUsage>, actual_pico: i64) {
        let settlement = Settlement {
            charges: std::mem::take(&mut self.charges),
            actual,
            money: std::mem::take(&mut self.money),
            actual_pico,
            slot: self.slot.take(),
        };
        if settlement.is_empty() {
            return;
        }
        // The drain task outlives every request; after shutdown the lease expires instead.
        let _ = self.queue.send(settlement);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.money.is_empty() || self.slot.is_some() {
            self.send(None, 0);
        }
    }
}

/// One request's settlement, as queued.
struct Settlement {
    charges: Vec<Charge>,
    /// `None`: keep the estimates (an unsettled drop).
    actual: Option<TokenUsage>,
    money: Vec<(String, i64)>,
    actual_pico: i64,
    slot: Option<Slot>,
}

impl Settlement {
    fn is_empty(&self) -> bool {
        self.money.is_empty()
            && self.slot.is_none()
            && (self.actual.is_none() || self.charges.iter().all(|c| c.token_type.is_none()))
    }
}

/// Whether Redis is answering; the transitions log (`/metrics` and `/readyz` read the state).
struct Health {
    fallback: AtomicBool,
}

impl Health {
    fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Relaxed)
    }

    fn enter_fallback(&self, why: &dyn fmt::Display) {
        if !self.fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "redis unreachable; limits fall back to this instance (divided by redis.fallback_replicas)");
        }
    }

    fn leave_fallback(&self) {
        if self.fallback.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again; limits are shared across instances again");
        }
    }
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    admit: Script,
    settle: Script,
    health: Health,
    store: DynStore,
    queue: mpsc::UnboundedSender<Settlement>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Settlement>>>,
    /// Slots of requests running on this instance, whose leases the drain task extends.
    leases: Mutex<HashMap<u64, (String, String)>>,
    next_lease: AtomicU64,
    /// Tests: a manual clock instead of Redis' `TIME`.
    clock: Option<Arc<dyn Clock>>,
}

/// The shared limiter; cheap to clone.
#[derive(Clone)]
pub struct RedisGate {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisGate")
            .field("prefix", &self.inner.prefix)
            .field("fallback", &self.inner.health.in_fallback())
            .finish_non_exhaustive()
    }
}

impl RedisGate {
    /// Connects lazily: start-up does not wait for (or fail without) Redis; until it
    /// answers, requests use the fallback. Run [`RedisGate::spawn_tasks`] once.
    pub fn new(config: &GateConfig, store: DynStore) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        let (queue, queued) = mpsc::unbounded_channel();
        Ok(RedisGate {
            inner: Arc::new(Inner {
                conn,
                prefix: config.prefix.clone(),
                timeout: config.timeout,
                lease: config.slot_lease,
                admit: Script::new(&format!("{COMMON}{}", include_str!("admit.lua"))),
                settle: Script::new(&format!("{COMMON}{}", include_str!("settle.lua"))),
                health: Health {
                    fallback: AtomicBool::new(false),
                },
                store,
                queue,
                queued: Mutex::new(Some(queued)),
                leases: Mutex::default(),
                next_lease: AtomicU64::new(0),
                clock: None,
            }),
        })
    }

    /// Tests: the same gate reading `clock` instead of Redis' clock.
    pub fn with_clock(
        config: &GateConfig,
        store: DynStore,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, redis::RedisError> {
        let mut gate = Self::new(config, store)?;
        if let Some(inner) = Arc::get_mut(&mut gate.inner) {
            inner.clock = Some(clock);
        }
        Ok(gate)
    }

    /// True while Redis is unreachable and the in-process fallback decides.
    pub fn in_fallback(&self) -> bool {
        self.inner.health.in_fallback()
    }

    /// Admits `request`, all or nothing, in one script call (two more when a budget
    /// counter must be seeded first). Runs in its own task: if the caller goes away
    /// mid-call, what the script took is given back through the ticket's `Drop`.
    pub async fn admit(&self, request: AdmitRequest) -> Result<Ticket, AdmitError> {
        if self.in_fallback() {
            return Err(AdmitError::Unavailable);
        }
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.admit(&request, false).await }).await {
            Ok(result) => result,
            Err(_) => Err(AdmitError::Unavailable),
        }
    }

    /// Spawns the settlement drain (which also extends slot leases) and the reconnect
    /// probe; both stop when `stop` changes, after a last drain.
    pub fn spawn_tasks(&self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let queued = self
            .inner
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut tasks = Vec::new();
        if let Some(queued) = queued {
            tasks.push(tokio::spawn(drain(
                self.inner.clone(),
                queued,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(probe(self.inner.clone(), stop)));
        tasks
    }
}

/// Ticks (`ns · limit`) and pico-USD as the scripts' limbs: six base-2^24 digits, least
/// significant first.
fn limbs(value: i128) -> String {
    let mut v = value.max(0);
    let mut out = String::with_capacity(48);
    for i in 0..6 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(itoa::Buffer::new().format(v & 0xFF_FFFF));
        v >>= 24;
    }
    out
}

/// The scripts' limbs back as a number, saturating like the in-process math.
fn from_limbs(text: &[u8]) -> i128 {
    let mut value: i128 = 0;
    for (i, limb) in text.split(|b| *b == b',').enumerate().take(6) {
        let limb: i128 = std::str::from_utf8(limb)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let shifted = limb.checked_mul(1i128 << (24 * i)).unwrap_or(i128::MAX);
        value = value.saturating_add(shifted);
    }
    value
}

impl Inner {
    fn bucket_hash(&self, key_id: &Uuid) -> String {
        format!("{}rl:{{{key_id}}}", self.prefix)
    }

    fn money_key(&self, ask: &MoneyAsk) -> String {
        match ask.account {
            Account::Budget(key_id) => format!(
                "{}budget:{{{key_id}}}:{}",
                self.prefix,
                ask.period_start.timestamp()
            ),
            Account::Credits(ws) => format!("{}credits:{{{ws}}}", self.prefix),
        }
    }

    fn money_ttl_ms(ask: &MoneyAsk) -> u64 {
        match ask.period_end {
            Some(end) => {
                let left = (end - crate::clock::now()).to_std().unwrap_or_default();
                duration_ms(left + PERIOD_GRACE)
            }
            None => duration_ms(CREDITS_TTL),
        }
    }

    /// The caller's clock (tests), or `None` for Redis' `TIME`.
    fn now_args(&self) -> (String, String) {
        match &self.clock {
            Some(clock) => {
                let ns = clock.now();
                (limbs(i128::from(ns)), (ns / 1_000_000).to_string())
            }
            None => (String::new(), String::new()),
        }
    }

    async fn call(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, AdmitError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<Value>(&mut conn)).await
        {
            Ok(Ok(value)) => {
                self.health.leave_fallback();
                Ok(value)
            }
            Ok(Err(err)) => {
                self.health.enter_fallback(&err);
                Err(AdmitError::Unavailable)
            }
            Err(_) => {
                self.health
                    .enter_fallback(&format_args!("no answer within {:?}", self.timeout));
                Err(AdmitError::Unavailable)
            }
        }
    }

    async fn admit(
        self: &Arc<Self>,
        request: &AdmitRequest,
        peek: bool,
    ) -> Result<Ticket, AdmitError> {
        for _ in 0..3 {
            let reply = self.run_admit(request, peek).await?;
            match reply {
                Reply::Seed(accounts) => self.seed(request, &accounts).await?,
                Reply::Done {
                    now,
                    reason,
                    tats,
                    member,
                    slot_key,
                } => return self.conclude(request, now, reason, &tats, member, slot_key),
            }
        }
        Err(AdmitError::Unavailable)
    }

    async fn run_admit(&self, request: &AdmitRequest, peek: bool) -> Result<Reply, AdmitError> {
        let (now_limbs, now_ms) = self.now_args();
        let mut invocation = self.admit.prepare_invoke();
        let mut keys = 0usize;
        let mut key = |invocation: &mut redis::ScriptInvocation<'_>, name: String| {
            invocation.key(name);
            keys += 1;
            keys
        };
        invocation
            .arg(&now_limbs)
            .arg(&now_ms)
            .arg(match (peek, request.exact_money) {
                (true, _) => "peek",
                (false, true) => "exact",
                (false, false) => "admit",
            })
            .arg(request.charges.len())
            .arg(bucket_ttl_ms(&request.charges));
        let mut member = None;
        let mut slot_key = None;
        match request.max_parallel.filter(|_| !peek) {
            Some(max) => {
                let name = format!("{}slots:{{{}}}", self.prefix, request.key_id);
                slot_key = Some(name.clone());
                let index = key(&mut invocation, name);
                let id = Uuid::new_v4().simple().to_string();
                invocation
                    .arg(index)
                    .arg(max)
                    .arg(&id)
                    .arg(duration_ms(self.lease));
                member = Some(id);
            }
            None => {
                invocation.arg(0).arg(0).arg("").arg(0);
            }
        }
        let asks: Vec<(&str, &MoneyAsk)> =
            [("budget", &request.budget), ("credits", &request.credits)]
                .into_iter()
                .filter_map(|(kind, ask)| Some((kind, ask.as_ref()?)))
                .collect();
        invocation.arg(asks.len());
        for (kind, ask) in &asks {
            let index = key(&mut invocation, self.money_key(ask));
            invocation
                .arg(*kind)
                .arg(index)
                .arg(limbs(i128::from(ask.limit_pico)))
                .arg(request.estimate_pico.max(0))
                .arg(Self::money_ttl_ms(ask));
        }
        let mut hashes: Vec<(Uuid, usize)> = Vec::with_capacity(1);
        for charge in &request.charges {
            let key_id = charge.bucket.key_id;
            let index = match hashes.iter().find(|(id, _)| *id == key_id) {
                Some((_, index)) => *index,
                None => {
                    let index = key(&mut invocation, self.bucket_hash(&key_id));
                    hashes.push((key_id, index));
                    index
                }
            };
            let rate = Rate::new(charge.limit, charge.bucket.kind.window());
            invocation
                .arg(index)
                .arg(charge.bucket.redis_field())
                .arg(limbs(i128::from(charge.limit)))
                .arg(limbs(rate.cost(charge.amount.max(1))))
                .arg(limbs(rate.cost(charge.amount)))
                .arg(limbs(rate.cost(charge.limit)));
        }
        let value = self.call(invocation).await?;
        parse_reply(value, member, slot_key).ok_or_else(|| {
            tracing::error!("unexpected answer from the admission script");
            AdmitError::Unavailable
        })
    }

    /// Seeds the missing counters from the store's spend; HSETNX so that when several
    /// replicas seed at once, the first value stands for all.
    async fn seed(&self, request: &AdmitRequest, accounts: &[String]) -> Result<(), AdmitError> {
        let mut pipe = redis::pipe();
        for account in accounts {
            let ask = match account.as_str() {
                "budget" => request.budget.as_ref(),
                _ => request.credits.as_ref(),
            };
            let Some(ask) = ask else { continue };
            let spent = match ask.account {
                Account::Budget(key_id) => {
                    self.store
                        .key_usage_totals(key_id, ask.period_start, None)
                        .await
                }
                Account::Credits(ws) => {
                    self.store
                        .workspace_usage_totals(ws, ask.period_start)
                        .await
                }
            }
            .map_err(AdmitError::Store)?
            .cost_pico;
            let key = self.money_key(ask);
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg("spent")
                .arg(spent)
                .ignore();
            pipe.cmd("HSETNX").arg(&key).arg("reserved").arg(0).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(Self::money_ttl_ms(ask))
                .ignore();
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                self.health.enter_fallback(&err);
                Err(AdmitError::Unavailable)
            }
            Err(_) => {
                self.health.enter_fallback(&"seeding timed out");
                Err(AdmitError::Unavailable)
            }
        }
    }

    fn conclude(
        self: &Arc<Self>,
        request: &AdmitRequest,
        now: u64,
        reason: Option<Vec<u8>>,
        tats: &[i128],
        member: Option<String>,
        slot_key: Option<String>,
    ) -> Result<Ticket, AdmitError> {
        let buckets = request.charges.iter().zip(tats).map(|(charge, tat)| {
            let rate = Rate::new(charge.limit, charge.bucket.kind.window());
            (charge, Bucket::from_tat(rate, *tat))
        });
        match reason.as_deref() {
            None => {
                let states = buckets
                    .map(|(charge, bucket)| state(charge, &bucket, now))
                    .collect();
                let slot = match (member, slot_key) {
                    (Some(member), Some(key)) => {
                        let lease_id = self.next_lease.fetch_add(1, Ordering::Relaxed);
                        self.leases
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(lease_id, (key.clone(), member.clone()));
                        Some(Slot {
                            lease_id,
                            key,
                            member,
                        })
                    }
                    _ => None,
                };
                let money = [&request.budget, &request.credits]
                    .into_iter()
                    .flatten()
                    .map(|ask| (self.money_key(ask), request.estimate_pico.max(0)))
                    .collect();
                Ok(Ticket {
                    charges: request.charges.clone(),
                    states,
                    money,
                    slot,
                    queue: self.queue.clone(),
                })
            }
            Some(b"slot") => Err(AdmitError::Refused(Refused::Slot)),
            Some(reason @ (b"budget" | b"credits")) => {
                // The script adds what the account had left after the buckets' TATs.
                let left = tats.get(request.charges.len()).copied().unwrap_or(0);
                let left_pico = i64::try_from(left).unwrap_or(i64::MAX);
                Err(AdmitError::Refused(if reason == b"budget" {
                    Refused::Budget { left_pico }
                } else {
                    Refused::Credits { left_pico }
                }))
            }
            Some(_) => {
                // The same choice as the in-process limiter: the refusing bucket with the
                // longest wait, found by charging the states the script saw.
                let mut states = Vec::with_capacity(request.charges.len());
                let mut refused: Option<(usize, Option<Duration>)> = None;
                for (i, (charge, bucket)) in buckets.enumerate() {
                    if let Err(denied) = bucket.charge(charge.amount, now) {
                        if refused.is_none_or(|(_, worst)| longer(denied.retry_after, worst)) {
                            refused = Some((i, denied.retry_after));
                        }
                    }
                    states.push(state(charge, &bucket, now));
                }
                let (i, retry_after) = refused.unwrap_or((0, None));
                let charge = request.charges.get(i).ok_or(AdmitError::Unavailable)?;
                Err(AdmitError::Refused(Refused::Rate(Refusal {
                    kind: charge.bucket.kind,
                    scope: charge.bucket.scope,
                    limit: charge.limit,
                    retry_after,
                    states,
                })))
            }
        }
    }

    /// One settlement script call for `batch`, plus the lease extensions when due.
    async fn settle_batch(
        &self,
        batch: &[Settlement],
        refresh: &[(String, String)],
    ) -> Result<(), AdmitError> {
        let (now_limbs, now_ms) = self.now_args();
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(&now_limbs).arg(&now_ms);
        let mut keys: Vec<String> = Vec::new();
        let mut key = |invocation: &mut redis::ScriptInvocation<'_>, name: String| -> usize {
            if let Some(i) = keys.iter().position(|k| *k == name) {
                return i + 1;
            }
            invocation.key(&name);
            keys.push(name);
            keys.len()
        };
        for settlement in batch {
            if let Some(actual) = settlement.actual {
                for charge in &settlement.charges {
                    let Some(token_type) = charge.token_type else {
                        continue;
                    };
                    let used = actual.count(token_type);
                    if used == charge.amount {
                        continue;
                    }
                    let rate = Rate::new(charge.limit, charge.bucket.kind.window());
                    let (sign, delta) = if used > charge.amount {
                        ("+", used - charge.amount)
                    } else {
                        ("-", charge.amount - used)
                    };
                    let index = key(&mut invocation, self.bucket_hash(&charge.bucket.key_id));
                    invocation
                        .arg("b")
                        .arg(index)
                        .arg(charge.bucket.redis_field())
                        .arg(sign)
                        .arg(limbs(rate.cost(delta)))
                        .arg(limbs(i128::from(charge.limit)))
                        .arg(bucket_ttl_ms(&settlement.charges));
                }
            }
            for (name, estimate) in &settlement.money {
                let index = key(&mut invocation, name.clone());
                invocation
                    .arg("m")
                    .arg(index)
                    .arg(*estimate)
                    .arg(settlement.actual_pico);
            }
            if let Some(slot) = &settlement.slot {
                let index = key(&mut invocation, slot.key.clone());
                invocation.arg("s").arg(index).arg(&slot.member);
            }
        }
        for (name, member) in refresh {
            let index = key(&mut invocation, name.clone());
            invocation
                .arg("r")
                .arg(index)
                .arg(member)
                .arg(duration_ms(self.lease));
        }
        self.call(invocation).await.map(|_| ())
    }
}

enum Reply {
    Seed(Vec<String>),
    Done {
        now: u64,
        reason: Option<Vec<u8>>,
        tats: Vec<i128>,
        member: Option<String>,
        slot_key: Option<String>,
    },
}

fn parse_reply(value: Value, member: Option<String>, slot_key: Option<String>) -> Option<Reply> {
    let Value::Array(items) = value else {
        return None;
    };
    let mut items = items.into_iter();
    let status = match items.next()? {
        Value::Int(status) => status,
        _ => return None,
    };
    let text = |value: Value| match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    if status == 2 {
        let accounts = items
            .filter_map(text)
            .filter_map(|b| String::from_utf8(b).ok())
            .collect();
        return Some(Reply::Seed(accounts));
    }
    let now = u64::try_from(from_limbs(&text(items.next()?)?)).ok()?;
    let reason = text(items.next()?)?;
    let tats = items
        .map(|v| text(v).map(|b| from_limbs(&b)))
        .collect::<Option<Vec<_>>>()?;
    Some(Reply::Done {
        now,
        reason: (status == 0).then_some(reason),
        tats,
        member,
        slot_key,
    })
}

/// Drains the settlement queue: everything queued goes in one script call (up to
/// [`SETTLE_BATCH`] requests); the leases of running requests are extended every third of
/// the lease. A batch that cannot be sent (Redis down) is dropped and counted: the
/// estimates stay charged until the buckets refill, the slots until their lease ends.
async fn drain(
    inner: Arc<Inner>,
    mut queue: mpsc::UnboundedReceiver<Settlement>,
    mut stop: watch::Receiver<bool>,
) {
    let mut refresh = tokio::time::interval((inner.lease / 3).max(Duration::from_millis(100)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    let mut stopping = false;
    loop {
        let mut leases = Vec::new();
        tokio::select! {
            received = queue.recv(), if !stopping => match received {
                Some(settlement) => batch.push(settlement),
                None => stopping = true,
            },
            _ = refresh.tick() => {
                leases = inner
                    .leases
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect();
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
        while batch.len() < SETTLE_BATCH {
            match queue.try_recv() {
                Ok(settlement) => batch.push(settlement),
                Err(_) => break,
            }
        }
        if !batch.is_empty() || !leases.is_empty() {
            {
                let mut running = inner.leases.lock().unwrap_or_else(PoisonError::into_inner);
                for slot in batch.iter().filter_map(|s| s.slot.as_ref()) {
                    running.remove(&slot.lease_id);
                }
            }
            if !inner.health.in_fallback() {
                if let Err(err) = inner.settle_batch(&batch, &leases).await {
                    tracing::debug!(error = %err, settlements = batch.len(), "settlements not sent to redis");
                }
            }
            batch.clear();
        }
        if stopping && queue.is_empty() {
            break;
        }
    }
}

/// While in fallback, PINGs Redis every second or so (jittered, so replicas do not all
/// reconnect at once) and switches back when it answers.
async fn probe(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = Duration::from_millis(rand::thread_rng().gen_range(500..1500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        if !inner.health.in_fallback() {
            continue;
        }
        let mut conn = inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        if let Ok(Ok(_)) = tokio::time::timeout(inner.timeout, ping).await {
            inner.health.leave_fallback();
        }
    }
}

/// The [`super::Limiter`] boundary over Redis (rate limits only), for the shared limiter
/// tests and `/v1/key` snapshots.
#[derive(Clone, Debug)]
pub struct RedisLimiter {
    gate: RedisGate,
}

impl RedisLimiter {
    pub fn new(gate: RedisGate) -> Self {
        RedisLimiter { gate }
    }

    fn request(charges: &[Charge]) -> AdmitRequest {
        AdmitRequest {
            key_id: charges.first().map_or(Uuid::nil(), |c| c.bucket.key_id),
            charges: charges.to_vec(),
            budget: None,
            credits: None,
            estimate_pico: 0,
            max_parallel: None,
            exact_money: false,
        }
    }

    /// Reserves directly (the caller waits; no fallback): `Err(None)` when Redis failed.
    pub async fn try_reserve(&self, charges: &[Charge]) -> Result<Reservation, Option<Refusal>> {
        match self.gate.inner.admit(&Self::request(charges), false).await {
            Ok(mut ticket) => {
                let states = ticket.take_states();
                let charges = std::mem::take(&mut ticket.charges);
                Ok(Reservation { charges, states })
            }
            Err(AdmitError::Refused(Refused::Rate(refusal))) => Err(Some(refusal)),
            Err(_) => Err(None),
        }
    }

    /// Settles directly, waiting for Redis.
    pub async fn settle_direct(&self, reservation: Reservation, actual: TokenUsage) -> bool {
        let settlement = Settlement {
            charges: reservation.charges,
            actual: Some(actual),
            money: Vec::new(),
            actual_pico: 0,
            slot: None,
        };
        self.gate
            .inner
            .settle_batch(&[settlement], &[])
            .await
            .is_ok()
    }

    /// States without charging; `None` when Redis failed.
    pub async fn peek(&self, buckets: &[Charge]) -> Option<Vec<BucketState>> {
        match self.gate.inner.admit(&Self::request(buckets), true).await {
            Ok(mut ticket) => Some(ticket.take_states()),
            Err(_) => None,
        }
    }
}

/// Rate limits over Redis, and over `fallback` while Redis does not answer.
#[async_trait::async_trait]
impl super::Limiter for RedisLimiterWithFallback {
    async fn reserve(&self, charges: &[Charge]) -> Result<Reservation, Refusal> {
        match self.redis.try_reserve(charges).await {
            Ok(reservation) => Ok(reservation),
            Err(Some(refusal)) => Err(refusal),
            Err(None) => self.fallback.try_reserve(charges),
        }
    }

    async fn settle(&self, reservation: Reservation, actual: TokenUsage) {
        self.redis.settle_direct(reservation, actual).await;
    }

    async fn snapshot(&self, buckets: &[Charge]) -> Vec<BucketState> {
        match self.redis.peek(buckets).await {
            Some(states) => states,
            None => self.fallback.states(buckets),
        }
    }
}

/// [`RedisLimiter`] behind the [`super::Limiter`] boundary: `/v1/key` snapshots and the
/// shared limiter tests.
#[derive(Clone)]
pub struct RedisLimiterWithFallback {
    pub redis: RedisLimiter,
    pub fallback: super::MemoryLimiter,
}
