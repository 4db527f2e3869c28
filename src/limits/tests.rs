//! Behaviour of the [`Limiter`] boundary, run against [`MemoryLimiter`] on a manual clock.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::*;
use crate::keys::model::{Limits, ModelLimits, TokenType};

type TestLimiter = MemoryLimiter<Arc<ManualClock>>;

/// A limiter under test: the in-process one, or the Redis one (with the in-process one
/// only as its fallback, never used while Redis answers), both on a manual clock.
struct Subject {
    limiter: Arc<dyn Limiter>,
    clock: Arc<ManualClock>,
    /// The in-process limiter when it is the subject (for its own bookkeeping checks).
    memory: Option<TestLimiter>,
}

fn memory_subject() -> Subject {
    let (limiter, clock) = setup();
    Subject {
        limiter: Arc::new(limiter.clone()),
        clock,
        memory: Some(limiter),
    }
}

/// The Redis limiter at `KEYGATE_TEST_REDIS_URL` (default 127.0.0.1:6379), under a
/// prefix of its own; the script reads the manual clock instead of Redis' `TIME`.
async fn redis_subject() -> Subject {
    let clock = Arc::new(ManualClock::new());
    clock.advance(Duration::from_secs(1_000_000));
    let config = redis::GateConfig {
        url: std::env::var("KEYGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        prefix: format!("keygate-test:{}:", Uuid::new_v4().simple()),
        slot_lease: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
    };
    let store = crate::store::connect("sqlite::memory:").await.unwrap();
    let gate = redis::RedisGate::with_clock(&config, store, clock.clone()).unwrap();
    let limiter = redis::RedisLimiterWithFallback {
        redis: redis::RedisLimiter::new(gate),
        fallback: MemoryLimiter::new(),
    };
    Subject {
        limiter: Arc::new(limiter),
        clock,
        memory: None,
    }
}

/// Each behaviour below, against both limiters: the Redis script must give the in-process
/// limiter's answers.
macro_rules! both_limiters {
    ($($name:ident),* $(,)?) => {
        mod memory_limiter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::memory_subject()).await;
                }
            )*
        }
        mod redis_limiter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::redis_subject().await).await;
                }
            )*
        }
    };
}

both_limiters!(
    rpm_3_admits_three_then_waits_twenty_seconds,
    buckets_refill_continuously,
    settling_above_the_estimate_goes_negative_and_later_requests_wait,
    settling_below_the_estimate_refunds_capacity,
    model_limit_refuses_while_global_has_room_and_charges_nothing,
    global_limit_refuses_while_model_has_room_and_charges_nothing,
    the_refusal_names_the_limit_with_the_longest_wait,
    limit_zero_blocks_everything,
    an_estimate_above_the_limit_is_refused_without_retry_after,
    token_type_picks_what_a_token_bucket_counts,
    no_limits_admits_with_no_states,
    an_edited_limit_applies_at_the_next_request,
    a_bucket_named_twice_sees_both_charges,
    concurrent_reservations_never_overshoot,
    charges_of_several_keys_are_all_or_nothing,
);

fn setup() -> (TestLimiter, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    // Start away from zero so nothing depends on the origin.
    clock.advance(Duration::from_secs(1_000_000));
    (MemoryLimiter::with_clock(Arc::clone(&clock)), clock)
}

fn est(input: u64, output: u64) -> TokenEstimate {
    TokenEstimate { input, output }
}

fn usage(input: u64, output: u64) -> TokenUsage {
    TokenUsage { input, output }
}

fn model_limits(model: &str, limits: Limits) -> ModelLimits {
    ModelLimits {
        model: model.to_owned(),
        rpm: limits.rpm,
        rpd: limits.rpd,
        tpm: limits.tpm,
        tpd: limits.tpd,
        token_type: limits.token_type,
    }
}

/// Remaining of the bucket `kind` in `scope` among `states`.
fn remaining(states: &[BucketState], scope: &Scope, kind: LimitKind) -> i64 {
    states
        .iter()
        .find(|s| &s.scope == scope && s.kind == kind)
        .map(|s| s.remaining)
        .unwrap_or_else(|| panic!("no {kind} bucket in {scope}"))
}

/// Seconds as a `Duration`, rounded to the nanosecond (`from_secs_f64` truncates 19.999).
fn secs(s: f64) -> Duration {
    Duration::from_nanos((s * 1e9).round() as u64)
}

async fn rpm_3_admits_three_then_waits_twenty_seconds(subject: Subject) {
    let Subject { limiter, clock, .. } = subject;
    let limits = Limits {
        rpm: Some(3),
        ..Limits::default()
    };
    let charges = charges_for(Uuid::new_v4(), &limits, &[], "m", est(10, 0));

    for expected in [2, 1, 0] {
        let reservation = limiter.reserve(&charges).await.unwrap();
        assert_eq!(reservation.states()[0].remaining, expected);
        limiter.settle(reservation, usage(10, 5)).await;
    }
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(
        (refusal.kind, &refusal.scope, refusal.limit),
        (LimitKind::Rpm, &Scope::Global, 3)
    );
    assert_eq!(refusal.retry_after, Some(secs(20.0)));
    assert_eq!(refusal.states[0].remaining, 0);
    assert_eq!(refusal.states[0].reset_after, secs(60.0));

    clock.advance(secs(19.999));
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(refusal.retry_after, Some(Duration::from_millis(1)));

    clock.advance(Duration::from_millis(1));
    let reservation = limiter.reserve(&charges).await.unwrap();
    assert_eq!(reservation.states()[0].remaining, 0);
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(refusal.retry_after, Some(secs(20.0)));
}

async fn buckets_refill_continuously(subject: Subject) {
    let Subject { limiter, clock, .. } = subject;
    let limits = Limits {
        tpm: Some(60),
        ..Limits::default()
    };
    let key = Uuid::new_v4();
    let all = charges_for(key, &limits, &[], "m", est(60, 0));
    let reservation = limiter.reserve(&all).await.unwrap();
    limiter.settle(reservation, usage(60, 0)).await;

    assert_eq!(limiter.snapshot(&all).await[0].remaining, 0);
    clock.advance(secs(0.5));
    assert_eq!(limiter.snapshot(&all).await[0].remaining, 0);
    clock.advance(secs(0.5));
    assert_eq!(limiter.snapshot(&all).await[0].remaining, 1);
    clock.advance(secs(29.0));
    assert_eq!(limiter.snapshot(&all).await[0].remaining, 30);
    assert_eq!(limiter.snapshot(&all).await[0].reset_after, secs(30.0));

    let too_many = charges_for(key, &limits, &[], "m", est(31, 0));
    let refusal = limiter.reserve(&too_many).await.unwrap_err();
    assert_eq!(refusal.retry_after, Some(secs(1.0)));
    let fits = charges_for(key, &limits, &[], "m", est(30, 0));
    assert!(limiter.reserve(&fits).await.is_ok());
}

async fn settling_above_the_estimate_goes_negative_and_later_requests_wait(subject: Subject) {
    let Subject { limiter, clock, .. } = subject;
    let limits = Limits {
        tpm: Some(1000),
        ..Limits::default()
    };
    let key = Uuid::new_v4();
    let reservation = limiter
        .reserve(&charges_for(key, &limits, &[], "m", est(60, 40)))
        .await
        .unwrap();
    assert_eq!(reservation.states()[0].remaining, 900);
    limiter.settle(reservation, usage(600, 1000)).await;

    let small = charges_for(key, &limits, &[], "m", est(1, 0));
    assert_eq!(limiter.snapshot(&small).await[0].remaining, -600);
    // 601 tokens must refill before one is free again, at 60 ms each.
    let refusal = limiter.reserve(&small).await.unwrap_err();
    assert_eq!(refusal.retry_after, Some(secs(36.06)));
    assert_eq!(refusal.states[0].remaining, -600);
    let nothing = charges_for(key, &limits, &[], "m", est(0, 0));
    assert!(
        limiter.reserve(&nothing).await.is_err(),
        "debt refuses even 0 tokens"
    );

    clock.advance(secs(36.06));
    let reservation = limiter.reserve(&small).await.unwrap();
    assert_eq!(reservation.states()[0].remaining, 0);
}

async fn settling_below_the_estimate_refunds_capacity(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let limits = Limits {
        tpm: Some(1000),
        ..Limits::default()
    };
    let key = Uuid::new_v4();
    let big = charges_for(key, &limits, &[], "m", est(100, 700));
    let reservation = limiter.reserve(&big).await.unwrap();
    assert_eq!(reservation.states()[0].remaining, 200);
    assert!(limiter.reserve(&big).await.is_err());

    limiter.settle(reservation, usage(100, 0)).await;
    assert_eq!(limiter.snapshot(&big).await[0].remaining, 900);
    let again = limiter.reserve(&big).await.unwrap();
    assert_eq!(again.states()[0].remaining, 100);
}

async fn model_limit_refuses_while_global_has_room_and_charges_nothing(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let key = Uuid::new_v4();
    let global = Limits {
        rpm: Some(10),
        tpm: Some(10_000),
        ..Limits::default()
    };
    let per_model = [model_limits(
        "gpt-4o",
        Limits {
            rpm: Some(2),
            tpm: Some(5_000),
            ..Limits::default()
        },
    )];
    let charges = charges_for(key, &global, &per_model, "gpt-4o", est(100, 0));
    assert_eq!(charges.len(), 4);

    for _ in 0..2 {
        let reservation = limiter.reserve(&charges).await.unwrap();
        limiter.settle(reservation, usage(100, 0)).await;
    }
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    let model = Scope::Model("gpt-4o");
    assert_eq!(
        (refusal.kind, &refusal.scope, refusal.limit),
        (LimitKind::Rpm, &model, 2)
    );
    assert_eq!(
        refusal.to_string(),
        "rate limit exceeded: rpm limit of 2 (model gpt-4o)"
    );

    let states = limiter.snapshot(&charges).await;
    assert_eq!(remaining(&states, &Scope::Global, LimitKind::Rpm), 8);
    assert_eq!(remaining(&states, &Scope::Global, LimitKind::Tpm), 9_800);
    assert_eq!(remaining(&states, &model, LimitKind::Rpm), 0);
    assert_eq!(remaining(&states, &model, LimitKind::Tpm), 4_800);
    assert_eq!(
        refusal.states, states,
        "the refusal reports the unchanged buckets"
    );

    // Another model only meets the global limits, which still have room.
    let other = charges_for(key, &global, &per_model, "gpt-4o-mini", est(100, 0));
    assert_eq!(other.len(), 2);
    assert!(limiter.reserve(&other).await.is_ok());
}

async fn global_limit_refuses_while_model_has_room_and_charges_nothing(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let key = Uuid::new_v4();
    let global = Limits {
        tpm: Some(100),
        ..Limits::default()
    };
    let per_model = [model_limits(
        "m",
        Limits {
            rpm: Some(5),
            tpm: Some(1000),
            ..Limits::default()
        },
    )];
    let charges = charges_for(key, &global, &per_model, "m", est(60, 0));
    let reservation = limiter.reserve(&charges).await.unwrap();
    limiter.settle(reservation, usage(60, 0)).await;

    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(
        (refusal.kind, &refusal.scope, refusal.limit),
        (LimitKind::Tpm, &Scope::Global, 100)
    );
    assert_eq!(refusal.retry_after, Some(secs(12.0)));
    let states = limiter.snapshot(&charges).await;
    let model = Scope::Model("m");
    assert_eq!(remaining(&states, &Scope::Global, LimitKind::Tpm), 40);
    assert_eq!(remaining(&states, &model, LimitKind::Rpm), 4);
    assert_eq!(remaining(&states, &model, LimitKind::Tpm), 940);
}

async fn the_refusal_names_the_limit_with_the_longest_wait(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let key = Uuid::new_v4();
    let global = Limits {
        rpm: Some(1),
        ..Limits::default()
    };
    let per_model = [model_limits(
        "m",
        Limits {
            rpd: Some(1),
            ..Limits::default()
        },
    )];
    let charges = charges_for(key, &global, &per_model, "m", est(0, 0));
    let _kept = limiter.reserve(&charges).await.unwrap();

    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(
        (refusal.kind, refusal.scope.model()),
        (LimitKind::Rpd, Some("m"))
    );
    assert_eq!(refusal.retry_after, Some(secs(86_400.0)));

    // A limit no wait can satisfy outranks any wait.
    let blocked = [model_limits(
        "m",
        Limits {
            rpd: Some(1),
            tpm: Some(0),
            ..Limits::default()
        },
    )];
    let charges = charges_for(key, &global, &blocked, "m", est(0, 0));
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!((refusal.kind, refusal.retry_after), (LimitKind::Tpm, None));
}

async fn limit_zero_blocks_everything(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        memory,
    } = subject;
    let limits = Limits {
        rpm: Some(0),
        tpm: Some(1000),
        ..Limits::default()
    };
    let charges = charges_for(Uuid::new_v4(), &limits, &[], "m", est(0, 0));
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!(
        (refusal.kind, refusal.limit, refusal.retry_after),
        (LimitKind::Rpm, 0, None)
    );
    assert_eq!(refusal.states[1].remaining, 1000);
    assert!(
        memory.as_ref().is_none_or(MemoryLimiter::is_empty),
        "a refusal stores nothing"
    );
}

async fn an_estimate_above_the_limit_is_refused_without_retry_after(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let limits = Limits {
        rpm: Some(10),
        tpm: Some(1000),
        ..Limits::default()
    };
    let charges = charges_for(Uuid::new_v4(), &limits, &[], "m", est(900, 200));
    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!((refusal.kind, refusal.retry_after), (LimitKind::Tpm, None));
    assert_eq!(
        refusal.states[0].remaining, 10,
        "the rpm bucket was not charged"
    );
}

async fn token_type_picks_what_a_token_bucket_counts(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    for (token_type, reserved, settled) in [
        (TokenType::Input, 990, 995),
        (TokenType::Output, 980, 950),
        (TokenType::Total, 970, 945),
    ] {
        let limits = Limits {
            tpm: Some(1000),
            tpd: Some(10_000),
            token_type,
            ..Limits::default()
        };
        let charges = charges_for(Uuid::new_v4(), &limits, &[], "m", est(10, 20));
        assert!(charges.iter().all(|c| c.token_type == Some(token_type)));
        let reservation = limiter.reserve(&charges).await.unwrap();
        assert_eq!(
            reservation.states()[0].remaining,
            reserved,
            "{token_type:?}"
        );
        assert_eq!(
            reservation.states()[1].remaining,
            reserved + 9000,
            "{token_type:?}"
        );
        limiter.settle(reservation, usage(5, 50)).await;
        let states = limiter.snapshot(&charges).await;
        assert_eq!(states[0].remaining, settled, "{token_type:?}");
        assert_eq!(states[1].remaining, settled + 9000, "{token_type:?}");
    }
}

#[test]
fn charges_for_builds_global_and_the_matching_model_only() {
    let key = Uuid::new_v4();
    let global = Limits {
        rpm: Some(1),
        rpd: Some(2),
        tpm: Some(3),
        tpd: Some(4),
        ..Limits::default()
    };
    let per_model = [
        model_limits(
            "a",
            Limits {
                rpm: Some(5),
                ..Limits::default()
            },
        ),
        model_limits(
            "b",
            Limits {
                tpd: Some(6),
                token_type: TokenType::Output,
                ..Limits::default()
            },
        ),
    ];
    let charges = charges_for(key, &global, &per_model, "b", est(7, 8));
    let got: Vec<_> = charges
        .iter()
        .map(|c| {
            (
                c.bucket.scope.model(),
                c.bucket.kind,
                c.limit,
                c.amount,
                c.token_type,
            )
        })
        .collect();
    let total = Some(TokenType::Total);
    assert_eq!(
        got,
        [
            (None, LimitKind::Rpm, 1, 1, None),
            (None, LimitKind::Rpd, 2, 1, None),
            (None, LimitKind::Tpm, 3, 15, total),
            (None, LimitKind::Tpd, 4, 15, total),
            (Some("b"), LimitKind::Tpd, 6, 8, Some(TokenType::Output)),
        ]
    );
    assert!(charges.iter().all(|c| c.bucket.key_id == key));
    assert_eq!(
        charges_for(key, &Limits::default(), &per_model, "c", est(1, 1)),
        []
    );

    let all = buckets_of(key, &global, &per_model);
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|c| c.amount == 0));
}

async fn no_limits_admits_with_no_states(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        memory,
    } = subject;
    let reservation = limiter.reserve(&[]).await.unwrap();
    assert!(reservation.states().is_empty());
    limiter.settle(reservation, usage(1, 1)).await;
    assert!(memory.as_ref().is_none_or(MemoryLimiter::is_empty));
}

async fn an_edited_limit_applies_at_the_next_request(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let key = Uuid::new_v4();
    let two = charges_for(
        key,
        &Limits {
            rpm: Some(2),
            ..Limits::default()
        },
        &[],
        "m",
        est(0, 0),
    );
    for _ in 0..2 {
        let _ = limiter.reserve(&two).await.unwrap();
    }
    assert!(limiter.reserve(&two).await.is_err());
    let five = charges_for(
        key,
        &Limits {
            rpm: Some(5),
            ..Limits::default()
        },
        &[],
        "m",
        est(0, 0),
    );
    assert_eq!(limiter.snapshot(&five).await[0].remaining, 3);
    for _ in 0..3 {
        let _ = limiter.reserve(&five).await.unwrap();
    }
    assert!(limiter.reserve(&five).await.is_err());
}

async fn a_bucket_named_twice_sees_both_charges(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let limits = Limits {
        rpm: Some(2),
        ..Limits::default()
    };
    let one = charges_for(Uuid::new_v4(), &limits, &[], "m", est(0, 0));
    let twice = [one[0], one[0]];
    let reservation = limiter.reserve(&twice).await.unwrap();
    assert_eq!(reservation.states()[1].remaining, 0);
    assert!(limiter.reserve(&one).await.is_err());
}

#[tokio::test]
async fn idle_buckets_are_evicted_without_changing_answers() {
    let (limiter, clock) = setup();
    let limits = Limits {
        rpm: Some(10),
        tpm: Some(60),
        ..Limits::default()
    };
    let charges = charges_for(Uuid::new_v4(), &limits, &[], "m", est(30, 0));
    let reservation = limiter.reserve(&charges).await.unwrap();
    assert_eq!(limiter.len(), 2);
    assert_eq!(limiter.evict_idle(), 0);

    clock.advance(secs(6.0)); // the rpm bucket is full again, tpm has 24 s to go
    assert_eq!(limiter.evict_idle(), 1);
    clock.advance(secs(24.0));
    assert_eq!(limiter.evict_idle(), 1);
    assert!(limiter.is_empty());
    let states = limiter.snapshot(&charges).await;
    assert_eq!((states[0].remaining, states[1].remaining), (10, 60));

    // Settling after eviction still charges the difference, from now.
    limiter.settle(reservation, usage(40, 0)).await;
    assert_eq!(limiter.snapshot(&charges).await[1].remaining, 50);
}

#[tokio::test]
async fn the_evictor_task_runs_until_shutdown() {
    let (limiter, clock) = setup();
    let limits = Limits {
        rpm: Some(10),
        ..Limits::default()
    };
    let _ = limiter
        .reserve(&charges_for(Uuid::new_v4(), &limits, &[], "m", est(0, 0)))
        .await
        .unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = limiter.spawn_evictor(Duration::from_millis(5), async move {
        let _ = stopped.changed().await;
    });
    clock.advance(secs(6.0));
    tokio::time::timeout(Duration::from_secs(5), async {
        while !limiter.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

async fn concurrent_reservations_never_overshoot(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        ..
    } = subject;
    let limits = Limits {
        tpm: Some(1000),
        ..Limits::default()
    };
    let charges = Arc::new(charges_for(Uuid::new_v4(), &limits, &[], "m", est(100, 0)));
    let start = Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (limiter, charges, start) =
                (limiter.clone(), Arc::clone(&charges), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                limiter.reserve(&charges).await.is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
    assert_eq!(limiter.snapshot(&charges).await[0].remaining, 0);
}

#[test]
fn redis_fields_name_kind_then_scope() {
    let key_id = Uuid::nil();
    let global = BucketKey {
        key_id,
        scope: Scope::Global,
        kind: LimitKind::Rpm,
    };
    let model = BucketKey {
        key_id,
        scope: Scope::Model("org/m:1"),
        kind: LimitKind::Tpd,
    };
    assert_eq!(global.redis_field(), "rpm:global");
    assert_eq!(model.redis_field(), "tpd:model:org/m:1");
}

#[test]
fn tightest_minute_picks_the_least_remaining() {
    let state = |kind, scope, remaining, reset| BucketState {
        kind,
        scope,
        limit: 100,
        remaining,
        reset_after: secs(reset),
    };
    let m = || Scope::Model("m");
    let states = [
        state(LimitKind::Rpm, Scope::Global, 5, 1.0),
        state(LimitKind::Rpm, m(), 5, 9.0),
        state(LimitKind::Rpd, Scope::Global, 0, 9.0),
        state(LimitKind::Tpm, Scope::Global, -3, 2.0),
        state(LimitKind::Tpm, m(), 7, 2.0),
    ];
    let requests = BucketState::tightest_minute(&states, false).unwrap();
    assert_eq!((&requests.scope, requests.reset_after), (&m(), secs(9.0)));
    let tokens = BucketState::tightest_minute(&states, true).unwrap();
    assert_eq!(tokens.remaining, -3);
    assert_eq!(BucketState::tightest_minute(&[], true), None);
}

async fn charges_of_several_keys_are_all_or_nothing(subject: Subject) {
    let Subject {
        limiter,
        clock: _clock,
        memory,
    } = subject;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let one = Limits {
        rpm: Some(1),
        ..Limits::default()
    };
    let two = Limits {
        rpm: Some(2),
        ..Limits::default()
    };
    let mut charges = charges_for(a, &two, &[], "m", est(0, 0));
    charges.extend(charges_for(b, &one, &[], "m", est(0, 0)));
    charges.extend(charges_for(a, &two, &[], "m", est(0, 0)));
    let reservation = limiter.reserve(&charges).await.unwrap();
    let left: Vec<_> = reservation.states().iter().map(|s| s.remaining).collect();
    assert_eq!(left, [1, 0, 0]);

    let refusal = limiter.reserve(&charges).await.unwrap_err();
    assert_eq!((refusal.limit, refusal.retry_after), (1, Some(secs(60.0))));
    if let Some(memory) = &memory {
        assert_eq!(memory.len(), 2);
    }
}

#[test]
fn interned_model_names_are_one_string_per_name_across_threads() {
    let first = crate::limits::intern("intern-test-model");
    let again = crate::limits::intern(&String::from("intern-test-model"));
    assert!(std::ptr::eq(first, again));
    assert_eq!(first, "intern-test-model");
    assert!(!std::ptr::eq(
        first,
        crate::limits::intern("intern-test-other")
    ));
    let names: Vec<&'static str> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| crate::limits::intern("intern-test-threads")))
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    assert_eq!(names.len(), 4);
    assert!(names.iter().all(|name| std::ptr::eq(*name, names[0])));
}
