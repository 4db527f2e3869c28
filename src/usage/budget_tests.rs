//! `BudgetLedger` against a real SQLite store.

use std::sync::Arc;

use chrono::DateTime;
use tokio::sync::Barrier;

use super::{
    budget::{period_bounds, BudgetLedger, BudgetRefusal, BudgetState},
    test_support::*,
};
use crate::{keys::model::BudgetPeriod, money::PICO_PER_USD};

const USD: i64 = PICO_PER_USD;

async fn state(
    ledger: &BudgetLedger,
    key: &crate::keys::model::ApiKey,
    now: DateTime<chrono::Utc>,
) -> BudgetState {
    ledger.snapshot(key, now).await.unwrap().unwrap()
}

fn assert_budget_refusal(
    refusal: BudgetRefusal,
    limit: &str,
    period: BudgetPeriod,
    resets_at: Option<DateTime<chrono::Utc>>,
) {
    match refusal {
        BudgetRefusal::Budget {
            limit_usd,
            period: p,
            resets_at: r,
        } => {
            assert_eq!(limit_usd, usd(limit));
            assert_eq!(p, period);
            assert_eq!(r, resets_at);
        }
        other => panic!("expected a budget refusal, got {other:?}"),
    }
}

#[test]
fn period_boundaries_are_utc_calendar() {
    use BudgetPeriod::*;
    assert_eq!(
        period_bounds(Day, at(2026, 3, 10, 12, 34, 56)),
        (at(2026, 3, 10, 0, 0, 0), Some(at(2026, 3, 11, 0, 0, 0)))
    );
    // exactly at the boundary, the new period has started
    assert_eq!(
        period_bounds(Day, at(2026, 3, 11, 0, 0, 0)),
        (at(2026, 3, 11, 0, 0, 0), Some(at(2026, 3, 12, 0, 0, 0)))
    );
    assert_eq!(
        period_bounds(Month, at(2025, 12, 31, 23, 59, 59)),
        (at(2025, 12, 1, 0, 0, 0), Some(at(2026, 1, 1, 0, 0, 0)))
    );
    assert_eq!(
        period_bounds(Month, at(2028, 2, 29, 8, 0, 0)),
        (at(2028, 2, 1, 0, 0, 0), Some(at(2028, 3, 1, 0, 0, 0)))
    );
    assert_eq!(
        period_bounds(Lifetime, at(2026, 3, 10, 12, 0, 0)),
        (DateTime::UNIX_EPOCH, None)
    );
}

#[tokio::test]
async fn admit_refuse_settle_sequence() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);
    let tomorrow = Some(at(2026, 3, 11, 0, 0, 0));

    let h1 = ledger.admit(&key, None, 4 * USD / 10, now).await.unwrap();
    let h2 = ledger.admit(&key, None, 4 * USD / 10, now).await.unwrap();
    // 0.2 USD left > 0: admitted, and remaining goes to -0.2
    let h3 = ledger.admit(&key, None, 4 * USD / 10, now).await.unwrap();
    assert_eq!(h3.reserved_pico(), 4 * USD / 10);
    let refusal = ledger.admit(&key, None, 1, now).await.unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "the key's daily budget of 1 USD is exhausted; it resets at 2026-03-11T00:00:00Z"
    );
    assert_budget_refusal(refusal, "1", BudgetPeriod::Day, tomorrow);

    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0"), usd("1.2"), usd("0"))
    );
    assert_eq!(s.period_start, at(2026, 3, 10, 0, 0, 0));
    assert_eq!(s.resets_at, tomorrow);

    // real cost below the estimate frees the difference
    ledger.settle(h1, USD / 10);
    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0.1"), usd("0.8"), usd("0.1"))
    );
    let h4 = ledger.admit(&key, None, USD / 2, now).await.unwrap();
    assert!(ledger.admit(&key, None, 1, now).await.is_err());

    ledger.settle(h2, 0);
    ledger.settle(h3, 4 * USD / 10);
    ledger.settle(h4, 2 * USD / 10);
    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0.7"), usd("0"), usd("0.3"))
    );

    // remaining exactly 0 refuses
    let h5 = ledger.admit(&key, None, 3 * USD / 10, now).await.unwrap();
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    ledger.settle(h5, 3 * USD / 10);
    let s = state(&ledger, &key, now).await;
    assert_eq!((s.spent_usd, s.remaining_usd), (usd("1"), usd("0")));
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    assert_eq!(ledger.baseline_loads(), 1);
}

/// Admissions until `limit − k·e ≤ 0`: k = ⌈limit / e⌉.
fn expected_admissions(limit: i64, estimate: i64) -> usize {
    usize::try_from((limit + estimate - 1) / estimate).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admits_cannot_overshoot() {
    let (_dir, store) = sqlite_store().await;
    // estimate = 10%, 30% and 7% of the limit
    for (estimate, expected) in [(USD / 10, 10), (3 * USD / 10, 4), (7 * USD / 100, 15)] {
        assert_eq!(expected_admissions(USD, estimate), expected);
        let key = Arc::new(insert_key(&store, budget("1", BudgetPeriod::Month)).await);
        let ledger = BudgetLedger::new(store.clone());
        let now = at(2026, 3, 10, 12, 0, 0);
        let barrier = Arc::new(Barrier::new(40));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (ledger, key, barrier) = (ledger.clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    ledger.admit(&key, None, estimate, now).await
                })
            })
            .collect();
        let mut holds = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(hold) => holds.push(hold),
                Err(refusal) => {
                    assert_budget_refusal(
                        refusal,
                        "1",
                        BudgetPeriod::Month,
                        Some(at(2026, 4, 1, 0, 0, 0)),
                    );
                }
            }
        }
        assert_eq!(holds.len(), expected, "estimate {estimate}");
        // concurrent first requests loaded the baseline once
        assert_eq!(ledger.baseline_loads(), 1);
        let s = state(&ledger, &key, now).await;
        assert_eq!(
            s.reserved_usd,
            crate::money::pico_to_usd(estimate * expected as i64).normalize()
        );
        for hold in holds {
            ledger.settle(hold, estimate);
        }
        let s = state(&ledger, &key, now).await;
        let overshoot = s.spent_usd - usd("1");
        assert!(
            overshoot < crate::money::pico_to_usd(estimate),
            "{overshoot}"
        );
        assert_eq!(s.reserved_usd, usd("0"));
    }
}

#[tokio::test]
async fn baseline_comes_from_stored_usage_of_the_period() {
    let (_dir, store) = sqlite_store().await;
    let now = at(2026, 3, 10, 12, 0, 0);
    let day_key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    stored_usage(&store, &day_key, at(2026, 3, 10, 8, 0, 0), 9 * USD / 10).await;
    // yesterday's spend is not today's
    stored_usage(&store, &day_key, at(2026, 3, 9, 23, 59, 0), 5 * USD).await;
    let spent_key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    stored_usage(&store, &spent_key, at(2026, 3, 10, 0, 0, 0), USD).await;
    let month_key = insert_key(&store, budget("2", BudgetPeriod::Month)).await;
    stored_usage(&store, &month_key, at(2026, 3, 1, 0, 0, 0), 2 * USD).await;
    stored_usage(&store, &month_key, at(2026, 2, 28, 23, 59, 0), 7 * USD).await;

    // a fresh ledger (e.g. after a restart) sees the stored spend
    let ledger = BudgetLedger::new(store.clone());
    let s = state(&ledger, &day_key, now).await;
    assert_eq!((s.spent_usd, s.remaining_usd), (usd("0.9"), usd("0.1")));
    let hold = ledger.admit(&day_key, None, USD / 20, now).await.unwrap();
    let _hold = ledger.admit(&day_key, None, USD / 20, now).await.unwrap();
    assert!(ledger.admit(&day_key, None, 1, now).await.is_err());
    drop(hold);

    assert_budget_refusal(
        ledger.admit(&spent_key, None, 1, now).await.unwrap_err(),
        "1",
        BudgetPeriod::Day,
        Some(at(2026, 3, 11, 0, 0, 0)),
    );
    assert_budget_refusal(
        ledger.admit(&month_key, None, 1, now).await.unwrap_err(),
        "2",
        BudgetPeriod::Month,
        Some(at(2026, 4, 1, 0, 0, 0)),
    );
}

#[tokio::test]
async fn day_budget_rolls_over_at_utc_midnight() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let evening = at(2026, 3, 10, 23, 59, 30);

    let hold = ledger.admit(&key, None, USD, evening).await.unwrap();
    ledger.settle(hold, USD);
    // what the usage writer would have stored for it
    stored_usage(&store, &key, at(2026, 3, 10, 23, 59, 0), USD).await;
    assert_budget_refusal(
        ledger
            .admit(&key, None, 1, at(2026, 3, 10, 23, 59, 59))
            .await
            .unwrap_err(),
        "1",
        BudgetPeriod::Day,
        Some(at(2026, 3, 11, 0, 0, 0)),
    );

    let after_midnight = at(2026, 3, 11, 0, 0, 10);
    let hold = ledger
        .admit(&key, None, USD / 4, after_midnight)
        .await
        .unwrap();
    assert_eq!(ledger.baseline_loads(), 2);
    let s = state(&ledger, &key, after_midnight).await;
    assert_eq!(s.period_start, at(2026, 3, 11, 0, 0, 0));
    assert_eq!(s.resets_at, Some(at(2026, 3, 12, 0, 0, 0)));
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0"), usd("0.25"), usd("0.75"))
    );
    // a request whose clock lags behind the rollover joins the new day, it does not
    // bring back yesterday's account
    let late = ledger
        .admit(&key, None, USD / 4, at(2026, 3, 10, 23, 59, 59))
        .await
        .unwrap();
    let s = state(&ledger, &key, after_midnight).await;
    assert_eq!(
        (s.period_start, s.reserved_usd),
        (at(2026, 3, 11, 0, 0, 0), usd("0.5"))
    );
    ledger.settle(hold, USD / 4);
    ledger.settle(late, USD / 4);
    assert_eq!(
        state(&ledger, &key, after_midnight).await.spent_usd,
        usd("0.5")
    );

    // and the month rolls over on the 1st
    let month_key = insert_key(&store, budget("1", BudgetPeriod::Month)).await;
    let hold = ledger
        .admit(&month_key, None, USD, at(2026, 1, 31, 23, 0, 0))
        .await
        .unwrap();
    ledger.settle(hold, USD);
    assert!(ledger
        .admit(&month_key, None, 1, at(2026, 1, 31, 23, 59, 59))
        .await
        .is_err());
    let hold = ledger
        .admit(&month_key, None, 1, at(2026, 2, 1, 0, 0, 0))
        .await
        .unwrap();
    ledger.settle(hold, 1);
}

#[tokio::test]
async fn lifetime_budget_never_resets() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Lifetime)).await;
    stored_usage(&store, &key, at(2020, 1, 1, 0, 0, 0), 6 * USD / 10).await;
    let ledger = BudgetLedger::new(store.clone());

    let hold = ledger
        .admit(&key, None, 3 * USD / 10, at(2030, 6, 1, 0, 0, 0))
        .await
        .unwrap();
    ledger.settle(hold, 4 * USD / 10);
    let refusal = ledger
        .admit(&key, None, 1, at(2035, 1, 1, 0, 0, 0))
        .await
        .unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "the key's lifetime budget of 1 USD is exhausted"
    );
    assert_budget_refusal(refusal, "1", BudgetPeriod::Lifetime, None);
    let s = state(&ledger, &key, at(2099, 1, 1, 0, 0, 0)).await;
    assert_eq!(s.period_start, DateTime::UNIX_EPOCH);
    assert_eq!(s.resets_at, None);
    assert_eq!(s.spent_usd, usd("1"));
    assert_eq!(ledger.baseline_loads(), 1);
}

#[tokio::test]
async fn credits_refusal_releases_the_budget_reservation() {
    let (_dir, store) = sqlite_store().await;
    let now = at(2026, 3, 10, 12, 0, 0);
    let key = insert_key(&store, budget("10", BudgetPeriod::Day)).await;
    let other = insert_key(&store, None).await;
    let ws = key.workspace_id;
    // the workspace already spent 0.5 of its 1 USD credits (through another key, long ago)
    stored_usage(&store, &other, at(2024, 5, 5, 5, 5, 0), USD / 2).await;
    let ledger = BudgetLedger::new(store.clone());
    let credits = Some((ws, usd("1")));

    let first = ledger
        .admit(&key, credits, 6 * USD / 10, now)
        .await
        .unwrap();
    let refusal = ledger
        .admit(&key, credits, USD / 10, now)
        .await
        .unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "the workspace's credits of 1 USD are exhausted"
    );
    assert!(matches!(refusal, BudgetRefusal::Credits { credits_usd } if credits_usd == usd("1")));
    let event = refusal.rate_limit_event(&key, Some("m"), now).unwrap();
    assert_eq!(
        (event.limit.as_str(), event.limit_value.as_str()),
        ("credits", "1")
    );
    // the refused request's budget reservation was released: only the first remains
    let s = state(&ledger, &key, now).await;
    assert_eq!(s.reserved_usd, usd("0.6"));
    let c = ledger.credits_snapshot(ws, usd("1"), now).await.unwrap();
    assert_eq!(
        (c.spent_usd, c.reserved_usd, c.remaining_usd),
        (usd("0.5"), usd("0.6"), usd("0"))
    );
    // credits are shared by the workspace's keys
    assert!(matches!(
        ledger.admit(&other, credits, 1, now).await,
        Err(BudgetRefusal::Credits { .. })
    ));

    // settling charges both the budget and the credits
    ledger.settle(first, 3 * USD / 10);
    let s = state(&ledger, &key, now).await;
    assert_eq!((s.spent_usd, s.reserved_usd), (usd("0.3"), usd("0")));
    let c = ledger.credits_snapshot(ws, usd("1"), now).await.unwrap();
    assert_eq!(
        (c.spent_usd, c.reserved_usd, c.remaining_usd),
        (usd("0.8"), usd("0"), usd("0.2"))
    );
    // a top-up takes effect at once
    let hold = ledger
        .admit(&other, Some((ws, usd("5"))), 3 * USD, now)
        .await
        .unwrap();
    ledger.settle(hold, 3 * USD);
}

#[tokio::test]
async fn no_budget_and_no_credits_are_never_refused_and_keep_no_state() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    stored_usage(&store, &key, at(2026, 3, 10, 0, 0, 0), 1_000 * USD).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);
    for _ in 0..3 {
        let hold = ledger.admit(&key, None, 1_000 * USD, now).await.unwrap();
        assert!(hold.is_unmetered());
        ledger.settle(hold, 1_000 * USD);
    }
    assert_eq!(ledger.snapshot(&key, now).await.unwrap(), None);
    assert_eq!(ledger.tracked(), (0, 0));
    assert_eq!(ledger.baseline_loads(), 0);

    // a budget removed by an admin drops the key's state at its next request
    let mut budgeted = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let hold = ledger.admit(&budgeted, None, 1, now).await.unwrap();
    ledger.settle(hold, 1);
    assert_eq!(ledger.tracked(), (1, 0));
    budgeted.budget = None;
    let hold = ledger.admit(&budgeted, None, 1, now).await.unwrap();
    ledger.settle(hold, 1);
    assert_eq!(ledger.tracked(), (0, 0));
}

#[tokio::test]
async fn zero_cost_requests_pass_an_exhausted_budget() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("0", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);
    // a budget of 0 blocks anything that costs money…
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    // …but not unpriced (local) models: PEERS §2 item 12
    let hold = ledger.admit(&key, None, 0, now).await.unwrap();
    ledger.settle(hold, 0);
}

#[tokio::test]
async fn dropping_an_unsettled_hold_frees_its_reservation() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);

    let hold = ledger.admit(&key, None, USD, now).await.unwrap();
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    drop(hold);
    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0"), usd("0"), usd("1"))
    );

    // a request cancelled while it holds a reservation (its task is aborted)
    let hold = ledger.admit(&key, None, USD, now).await.unwrap();
    let task = tokio::spawn(async move {
        let _hold = hold;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    task.abort();
    let _ = task.await;
    let hold = ledger.admit(&key, None, USD, now).await.unwrap();
    ledger.settle(hold, USD / 2);
    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0.5"), usd("0"), usd("0.5"))
    );
}

#[tokio::test]
async fn forget_reloads_and_in_flight_holds_still_settle() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);

    let in_flight = ledger.admit(&key, None, USD / 2, now).await.unwrap();
    // the admin changes the budget; earlier usage reached the store meanwhile
    ledger.forget(key.id);
    stored_usage(&store, &key, at(2026, 3, 10, 11, 0, 0), 2 * USD / 10).await;
    let next = ledger.admit(&key, None, USD / 2, now).await.unwrap();
    assert_eq!(ledger.baseline_loads(), 2);
    let s = state(&ledger, &key, now).await;
    // the old reservation is not in the new account
    assert_eq!((s.spent_usd, s.reserved_usd), (usd("0.2"), usd("0.5")));

    // the in-flight request releases its reservation where it was made (the new account's
    // reservation is untouched) and its cost follows to the reloaded account
    ledger.settle(in_flight, 3 * USD / 10);
    let s = state(&ledger, &key, now).await;
    assert_eq!(
        (s.spent_usd, s.reserved_usd, s.remaining_usd),
        (usd("0.5"), usd("0.5"), usd("0"))
    );
    assert!(ledger.admit(&key, None, 1, now).await.is_err());
    ledger.settle(next, USD / 2);
    let s = state(&ledger, &key, now).await;
    assert_eq!((s.spent_usd, s.reserved_usd), (usd("1"), usd("0")));
}

#[tokio::test]
async fn store_failure_fails_closed_and_recovers() {
    let (dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("1", BudgetPeriod::Day)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);

    break_usage_table(&dir, true).await;
    let refusal = ledger.admit(&key, None, 1, now).await.unwrap_err();
    assert!(matches!(refusal, BudgetRefusal::Unavailable(_)));
    assert_eq!(refusal.limit_kind(), None);
    assert!(refusal.rate_limit_event(&key, None, now).is_none());
    // keys without a budget do not touch the store
    let free = insert_key(&store, None).await;
    let hold = ledger.admit(&free, None, USD, now).await.unwrap();
    ledger.settle(hold, USD);

    break_usage_table(&dir, false).await;
    let hold = ledger.admit(&key, None, 1, now).await.unwrap();
    ledger.settle(hold, 1);
}

#[tokio::test]
async fn refusal_events_name_the_limit() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, budget("25.50", BudgetPeriod::Month)).await;
    let ledger = BudgetLedger::new(store.clone());
    let now = at(2026, 3, 10, 12, 0, 0);
    let _hold = ledger.admit(&key, None, 26 * USD, now).await.unwrap();
    let refusal = ledger.admit(&key, None, 1, now).await.unwrap_err();
    assert_eq!(refusal.limit_kind(), Some("budget"));
    let event = refusal.rate_limit_event(&key, Some("gpt-4o"), now).unwrap();
    assert_eq!(event.limit, "budget");
    assert_eq!(event.limit_value, "25.5");
    assert_eq!(event.key_id, key.id);
    assert_eq!(event.workspace_id, key.workspace_id);
    assert_eq!(event.model.as_deref(), Some("gpt-4o"));
    assert_eq!(event.at, now);
}

#[tokio::test]
async fn reloads_read_the_recent_minutes_again_and_the_older_part_at_a_full_reload() {
    // Arrange: a lifetime budget (no period boundary near the test's clock) with spend
    // 20 minutes ago and now, loaded by an admission.
    let (_dir, store) = sqlite_store().await;
    let now = crate::clock::now();
    let twenty_min_ago = now - chrono::TimeDelta::minutes(20);
    let key = insert_key(&store, budget("100", BudgetPeriod::Lifetime)).await;
    stored_usage(&store, &key, twenty_min_ago, USD).await;
    stored_usage(&store, &key, now, 2 * USD).await;
    let ledger = BudgetLedger::new(store.clone());
    let _hold = ledger.admit(&key, None, 1, now).await.unwrap();
    ledger.after_flush(&[]).await;
    assert_eq!(state(&ledger, &key, now).await.spent_usd, usd("3"));

    // Act: another instance flushes spend of the current minute, and one flushes late
    // (after a store outage) spend of a minute 20 minutes old.
    stored_usage(&store, &key, now, 4 * USD).await;
    stored_usage(&store, &key, twenty_min_ago, 8 * USD).await;
    ledger.after_flush(&[]).await;

    // Assert: the recent minutes are read at every reload; the late spend waits for the
    // next full reload (here: the account loaded afresh).
    assert_eq!(state(&ledger, &key, now).await.spent_usd, usd("7"));
    ledger.forget(key.id);
    assert_eq!(state(&ledger, &key, now).await.spent_usd, usd("15"));
}
