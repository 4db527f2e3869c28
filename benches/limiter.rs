//! The limiter's hot path: one reserve and one settle per request, for a key with 4 global
//! and 4 per-model buckets. `cargo bench --bench limiter` (add `-- --quick` for a short run).

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use keygate::{
    keys::model::{Limits, ModelLimits, TokenType},
    limits::{charges_for, Charge, Limiter, MemoryLimiter, TokenEstimate, TokenUsage},
};
use uuid::Uuid;

const MODEL: &str = "gpt-4o-mini";
const ESTIMATE: TokenEstimate = TokenEstimate {
    input: 500,
    output: 300,
};
const ACTUAL: TokenUsage = TokenUsage {
    input: 500,
    output: 120,
};

/// Limits high enough that nothing is ever refused: the bench measures admission work.
fn key_limits() -> (Limits, Vec<ModelLimits>) {
    let global = Limits {
        rpm: Some(1 << 40),
        rpd: Some(1 << 50),
        tpm: Some(1 << 50),
        tpd: Some(1 << 60),
        token_type: TokenType::Total,
    };
    let per_model = vec![
        ModelLimits {
            model: "gpt-4o".into(),
            rpm: Some(10),
            rpd: None,
            tpm: Some(1000),
            tpd: None,
            token_type: TokenType::Total,
        },
        ModelLimits {
            model: MODEL.into(),
            rpm: Some(1 << 40),
            rpd: Some(1 << 50),
            tpm: Some(1 << 50),
            tpd: Some(1 << 60),
            token_type: TokenType::Output,
        },
    ];
    (global, per_model)
}

fn charges(key_id: Uuid) -> Vec<Charge> {
    let (global, per_model) = key_limits();
    charges_for(key_id, &global, &per_model, MODEL, ESTIMATE)
}

fn single_thread(c: &mut Criterion) {
    let limiter = MemoryLimiter::new();
    let key_id = Uuid::new_v4();
    let charges = charges(key_id);
    assert_eq!(charges.len(), 8);
    let (global, per_model) = key_limits();

    let mut group = c.benchmark_group("limiter");
    group.bench_function("reserve_settle_8_buckets", |b| {
        b.iter(|| {
            let reservation = block_on(limiter.reserve(black_box(&charges)));
            if let Ok(reservation) = reservation {
                block_on(limiter.settle(reservation, black_box(ACTUAL)));
            }
        })
    });
    group.bench_function("reserve_settle_8_buckets_sync", |b| {
        b.iter(|| {
            if let Ok(reservation) = limiter.try_reserve(black_box(&charges)) {
                limiter.settle_now(reservation, black_box(ACTUAL));
            }
        })
    });
    group.bench_function("charges_for_reserve_settle", |b| {
        b.iter(|| {
            let charges = charges_for(key_id, &global, &per_model, black_box(MODEL), ESTIMATE);
            if let Ok(reservation) = limiter.try_reserve(&charges) {
                limiter.settle_now(reservation, ACTUAL);
            }
        })
    });
    group.finish();
}

/// `threads` threads share `iters` reserve+settle pairs; each thread uses `key(thread)`.
fn run_parallel(
    limiter: &MemoryLimiter,
    iters: u64,
    threads: u64,
    key: impl Fn(u64) -> Uuid,
) -> Duration {
    let per_thread: Vec<Vec<Charge>> = (0..threads).map(|t| charges(key(t))).collect();
    let start = Instant::now();
    thread::scope(|scope| {
        for charges in &per_thread {
            scope.spawn(move || {
                for _ in 0..iters.div_ceil(threads) {
                    if let Ok(reservation) = limiter.try_reserve(charges) {
                        limiter.settle_now(reservation, ACTUAL);
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    const THREADS: u64 = 4;
    let limiter = MemoryLimiter::new();
    let shared_key = Uuid::new_v4();
    let own_keys: Vec<Uuid> = (0..THREADS).map(|_| Uuid::new_v4()).collect();

    let mut group = c.benchmark_group("limiter_4_threads");
    group.bench_function("same_key", |b| {
        b.iter_custom(|iters| run_parallel(&limiter, iters, THREADS, |_| shared_key))
    });
    group.bench_function("distinct_keys", |b| {
        b.iter_custom(|iters| run_parallel(&limiter, iters, THREADS, |t| own_keys[t as usize]))
    });
    group.finish();
}

criterion_group!(benches, single_thread, contended);
criterion_main!(benches);
