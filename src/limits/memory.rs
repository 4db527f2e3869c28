//! In-process [`Limiter`]: the default for one instance, and the fallback when Redis is
//! unreachable (DESIGN §7).
//!
//! Buckets live in 64 `Mutex<HashMap<key id, its buckets>>` shards chosen by key id, so
//! all buckets of one request share a shard and `reserve` takes one short lock in which
//! it checks and charges every bucket. (Charges of several keys lock their shards in
//! index order, which cannot deadlock.) A bucket whose TAT is behind the clock is full,
//! the same as an absent one, so [`MemoryLimiter::evict_idle`] drops it without changing
//! any answer: memory stays bounded by the buckets used within their last window, however
//! many keys come and go. Run it periodically with [`MemoryLimiter::spawn_evictor`].

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt};

use async_trait::async_trait;
use tokio::{task::JoinHandle, time::MissedTickBehavior};
use uuid::Uuid;

use super::{
    gcra::{duration_ns, Bucket, Rate},
    BucketState, Charge, LimitKind, Limiter, Refusal, Reservation, Scope, TokenUsage,
};

/// A monotonic clock in nanoseconds since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> u64;
}

/// Nanoseconds since the clock was made, from `Instant` (monotonic, never jumps back).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        duration_ns(self.origin.elapsed())
    }
}

/// A clock that moves only when told to, for deterministic tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_ns(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

const SHARDS: usize = 64;

/// The buckets of one key: each scope in use, with a slot per limit kind. A request
/// touches one key, so a reserve hashes once and then scans a few scopes.
#[derive(Debug, Default)]
struct KeyBuckets {
    scopes: Vec<(Scope, [Option<Bucket>; 4])>,
}

impl KeyBuckets {
    fn get(&self, scope: &Scope, kind: LimitKind) -> Option<Bucket> {
        self.slots(scope)?[slot_of(kind)]
    }

    /// One scope's buckets, by kind.
    fn slots(&self, scope: &Scope) -> Option<&[Option<Bucket>; 4]> {
        self.scopes
            .iter()
            .find(|(s, _)| s == scope)
            .map(|(_, slots)| slots)
    }

    /// Where `scope` is in `scopes`, added (empty) if it was not there.
    fn scope_index(&mut self, scope: &Scope) -> usize {
        match self.scopes.iter().position(|(s, _)| s == scope) {
            Some(index) => index,
            None => {
                self.scopes.push((*scope, [None; 4]));
                self.scopes.len() - 1
            }
        }
    }

    fn get_mut(&mut self, scope: &Scope, kind: LimitKind) -> Option<&mut Bucket> {
        let (_, slots) = self.scopes.iter_mut().find(|(s, _)| s == scope)?;
        slots[slot_of(kind)].as_mut()
    }

    fn put(&mut self, scope: &Scope, kind: LimitKind, bucket: Bucket) {
        let index = self.scope_index(scope);
        self.scopes[index].1[slot_of(kind)] = Some(bucket);
    }

    /// Drops full buckets and scopes left empty; returns how many buckets went.
    fn evict_idle(&mut self, now: u64) -> usize {
        let mut evicted = 0;
        for (_, slots) in &mut self.scopes {
            for slot in slots.iter_mut() {
                if slot.is_some_and(|bucket| bucket.is_idle(now)) {
                    *slot = None;
                    evicted += 1;
                }
            }
        }
        self.scopes
            .retain(|(_, slots)| slots.iter().any(Option::is_some));
        evicted
    }

    fn len(&self) -> usize {
        self.scopes
            .iter()
            .map(|(_, slots)| slots.iter().flatten().count())
            .sum()
    }
}

fn slot_of(kind: LimitKind) -> usize {
    match kind {
        LimitKind::Rpm => 0,
        LimitKind::Rpd => 1,
        LimitKind::Tpm => 2,
        LimitKind::Tpd => 3,
    }
}

type Shard = HashMap<Uuid, KeyBuckets>;

struct Shared<C> {
    clock: C,
    shards: Vec<Mutex<Shard>>,
}

/// In-process limiter; clones share the same buckets.
pub struct MemoryLimiter<C = SystemClock> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for MemoryLimiter<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl MemoryLimiter<SystemClock> {
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new())
    }
}

impl Default for MemoryLimiter<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

/// Key ids are random (v4) or end in random bits (v7), and the gateway makes them, so
/// folding the id spreads keys evenly without hashing.
fn shard_of(key_id: &Uuid) -> usize {
    let (high, low) = key_id.as_u64_pair();
    // The remainder is below SHARDS, so the cast cannot truncate.
    ((high ^ low) % SHARDS as u64) as usize
}

/// Consecutive charges of one key (all of them, for a request built by `charges_for`).
fn runs(charges: &[Charge]) -> impl Iterator<Item = (&Uuid, &[Charge])> {
    charges
        .chunk_by(|a, b| a.bucket.key_id == b.bucket.key_id)
        .filter_map(|run| Some((&run.first()?.bucket.key_id, run)))
}

/// The locked shards of one operation, sorted by shard index.
struct Locked<'a> {
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
}

impl Locked<'_> {
    fn shard(&mut self, key_id: &Uuid) -> &mut Shard {
        let index = shard_of(key_id);
        let pos = self.guards.partition_point(|(i, _)| *i < index);
        // Every key's shard was locked in `lock`.
        &mut self.guards[pos].1
    }
}

impl<C: Clock> MemoryLimiter<C> {
    pub fn with_clock(clock: C) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
        }
    }

    /// Locks the shards of `charges` in index order (so two callers cannot deadlock).
    fn lock(&self, charges: &[Charge]) -> Locked<'_> {
        let lock = |i: usize| {
            let guard = self.shared.shards[i]
                .lock()
                // The critical sections only do arithmetic; a poisoned shard is consistent.
                .unwrap_or_else(PoisonError::into_inner);
            (i, guard)
        };
        // The usual case: every charge is one key's (one request).
        if let Some((first, _)) = runs(charges).next() {
            let shard = shard_of(first);
            if runs(charges).all(|(key_id, _)| shard_of(key_id) == shard) {
                return Locked {
                    guards: vec![lock(shard)],
                };
            }
        }
        let mut indexes: Vec<usize> = runs(charges).map(|(key_id, _)| shard_of(key_id)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        Locked {
            guards: indexes.into_iter().map(lock).collect(),
        }
    }

    /// [`Limiter::reserve`] without the async wrapper.
    pub fn try_reserve(&self, charges: &[Charge]) -> Result<Reservation, Refusal> {
        if charges.is_empty() {
            // A key without limits: nothing to lock.
            return Ok(Reservation {
                charges: Vec::new(),
                states: Vec::new(),
            });
        }
        let mut locked = self.lock(charges);
        // Read after locking, so operations serialised by a lock also see time in order.
        let now = self.shared.clock.now();
        // Each bucket before and after its charge (unchanged if refused); a bucket named
        // twice sees the first charge. Two plain buckets per entry, not a `Result`: its
        // tag made every copy of an entry a misaligned, stalling one.
        let mut plan: Vec<(Bucket, Bucket)> = Vec::with_capacity(charges.len());
        let mut refused: Option<(usize, Option<Duration>)> = None;
        for (key_id, run) in runs(charges) {
            let stored = locked.shard(key_id).get(key_id);
            // A request's charges come scope by scope: look each scope up once.
            let mut scope_slots = None;
            for charge in run {
                let i = plan.len();
                let earlier = charges[..i]
                    .iter()
                    .zip(&plan)
                    .rev()
                    .find(|(c, _)| c.bucket == charge.bucket)
                    .map(|(_, (_, after))| *after);
                let (scope, kind) = (charge.bucket.scope, charge.bucket.kind);
                let slots = match scope_slots {
                    Some((cached, slots)) if cached == scope => slots,
                    _ => {
                        let slots = stored.and_then(|b| b.slots(&scope));
                        scope_slots = Some((scope, slots));
                        slots
                    }
                };
                let mut before = earlier
                    .or_else(|| slots?[slot_of(kind)])
                    .unwrap_or_else(|| fresh(charge));
                before.set_limit(charge.limit, now);
                let after = match before.charge(charge.amount, now) {
                    Ok(after) => after,
                    Err(denied) => {
                        if refused.is_none_or(|(_, worst)| longer(denied.retry_after, worst)) {
                            refused = Some((i, denied.retry_after));
                        }
                        before
                    }
                };
                plan.push((before, after));
            }
        }

        if let Some((i, retry_after)) = refused {
            let charge = &charges[i];
            return Err(Refusal {
                kind: charge.bucket.kind,
                scope: charge.bucket.scope,
                limit: charge.limit,
                retry_after,
                states: charges
                    .iter()
                    .zip(&plan)
                    .map(|(c, (before, _))| state(c, before, now))
                    .collect(),
            });
        }

        let mut states = Vec::with_capacity(charges.len());
        let mut plan = plan.iter();
        for (key_id, run) in runs(charges) {
            let buckets = locked.shard(key_id).entry(*key_id).or_default();
            let mut scope_at: Option<(Scope, usize)> = None;
            for (charge, (_, after)) in run.iter().zip(plan.by_ref()) {
                let scope = charge.bucket.scope;
                let at = match scope_at {
                    Some((cached, at)) if cached == scope => at,
                    _ => {
                        let at = buckets.scope_index(&scope);
                        scope_at = Some((scope, at));
                        at
                    }
                };
                buckets.scopes[at].1[slot_of(charge.bucket.kind)] = Some(*after);
                states.push(state(charge, after, now));
            }
        }
        Ok(Reservation {
            charges: charges.to_vec(),
            states,
        })
    }

    /// [`Limiter::settle`] without the async wrapper (usable from `Drop`).
    pub fn settle_now(&self, reservation: Reservation, actual: TokenUsage) {
        // Token buckets whose real count differs from the estimate, with that count.
        let differs = |charge: &Charge| {
            let used = actual.count(charge.token_type?);
            (used != charge.amount).then_some(used)
        };
        let mut locked = self.lock(&reservation.charges);
        let now = self.shared.clock.now();
        for (key_id, run) in runs(&reservation.charges) {
            if !run.iter().any(|charge| differs(charge).is_some()) {
                continue;
            }
            let buckets = locked.shard(key_id).entry(*key_id).or_default();
            for charge in run {
                let Some(used) = differs(charge) else {
                    continue;
                };
                let (scope, kind) = (&charge.bucket.scope, charge.bucket.kind);
                if let Some(bucket) = buckets.get_mut(scope, kind) {
                    bucket.settle(charge.amount, used, now);
                } else if used > charge.amount {
                    // Evicted since the reservation (full again): the extra starts from now.
                    let mut bucket = fresh(charge);
                    bucket.settle(charge.amount, used, now);
                    buckets.put(scope, kind, bucket);
                }
            }
        }
    }

    /// [`Limiter::snapshot`] without the async wrapper.
    pub fn states(&self, buckets: &[Charge]) -> Vec<BucketState> {
        let mut locked = self.lock(buckets);
        let now = self.shared.clock.now();
        let mut states = Vec::with_capacity(buckets.len());
        for (key_id, run) in runs(buckets) {
            let stored = locked.shard(key_id).get(key_id);
            for charge in run {
                let (scope, kind) = (&charge.bucket.scope, charge.bucket.kind);
                let mut bucket = stored
                    .and_then(|b| b.get(scope, kind))
                    .unwrap_or_else(|| fresh(charge));
                bucket.set_limit(charge.limit, now);
                states.push(state(charge, &bucket, now));
            }
        }
        states
    }

    /// Drops every full bucket; returns how many. Changes no answer (see the module doc).
    pub fn evict_idle(&self) -> usize {
        let mut evicted = 0;
        for shard in &self.shared.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let now = self.shared.clock.now();
            shard.retain(|_, buckets| {
                evicted += buckets.evict_idle(now);
                !buckets.scopes.is_empty()
            });
        }
        evicted
    }

    /// Buckets currently held in memory.
    pub fn len(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                shard.values().map(KeyBuckets::len).sum::<usize>()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs [`Self::evict_idle`] every `every` until `shutdown` completes (e.g.
    /// `async move { let _ = stop_rx.changed().await; }` on a `tokio::sync::watch`).
    /// Await the handle at shutdown; the task holds a clone of the limiter until then.
    pub fn spawn_evictor<F>(&self, every: Duration, shutdown: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    _ = ticks.tick() => {
                        let evicted = limiter.evict_idle();
                        tracing::trace!(evicted, "evicted idle rate-limit buckets");
                    }
                }
            }
        })
    }
}

#[async_trait]
impl<C: Clock> Limiter for MemoryLimiter<C> {
    async fn reserve(&self, charges: &[Charge]) -> Result<Reservation, Refusal> {
        self.try_reserve(charges)
    }

    async fn settle(&self, reservation: Reservation, actual: TokenUsage) {
        self.settle_now(reservation, actual);
    }

    async fn snapshot(&self, buckets: &[Charge]) -> Vec<BucketState> {
        self.states(buckets)
    }

    fn reserve_now(&self, charges: &[Charge]) -> Option<Result<Reservation, Refusal>> {
        Some(self.try_reserve(charges))
    }

    fn settle_now(
        &self,
        reservation: Reservation,
        actual: TokenUsage,
    ) -> Result<(), (Reservation, TokenUsage)> {
        MemoryLimiter::settle_now(self, reservation, actual);
        Ok(())
    }
}

/// A full bucket for `charge`.
fn fresh(charge: &Charge) -> Bucket {
    Bucket::new(Rate::new(charge.limit, charge.bucket.kind.window()))
}

/// Whether wait `a` is longer than `b`; `None` (no wait helps) is the longest.
pub(super) fn longer(a: Option<Duration>, b: Option<Duration>) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
    }
}

pub(super) fn state(charge: &Charge, bucket: &Bucket, now: u64) -> BucketState {
    BucketState {
        kind: charge.bucket.kind,
        scope: charge.bucket.scope,
        limit: charge.limit,
        remaining: bucket.remaining(now),
        reset_after: bucket.reset_after(now),
    }
}
