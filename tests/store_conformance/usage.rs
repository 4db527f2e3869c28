//! Usage buckets: upserts, aggregation by granularity, totals.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keygate::{
    keys::model::ApiKey,
    store::{
        DynStore, Granularity, SpendRange, SpendScope, UsageDelta, UsageQuery, UsageRow,
        UsageTotals, Workspace,
    },
};
use uuid::Uuid;

use crate::harness::{at, create_workspace, default_ws, insert, new_key, t};

fn delta(key: &ApiKey, model: &str, minute: DateTime<Utc>, n: i64) -> UsageDelta {
    UsageDelta {
        key_id: key.id,
        workspace_id: key.workspace_id,
        model: model.to_string(),
        minute,
        requests: n,
        input_tokens: 10 * n,
        output_tokens: 100 * n,
        cost_pico: 1_000_000_007 * n,
    }
}

fn row(start: DateTime<Utc>, model: &str, n: i64) -> UsageRow {
    UsageRow {
        start,
        model: model.to_string(),
        requests: n,
        input_tokens: 10 * n,
        output_tokens: 100 * n,
        cost_pico: 1_000_000_007 * n,
    }
}

fn totals(n: i64) -> UsageTotals {
    UsageTotals {
        requests: n,
        input_tokens: 10 * n,
        output_tokens: 100 * n,
        cost_pico: 1_000_000_007 * n,
    }
}

pub async fn add_usage_sums_into_the_same_minute_bucket(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "metered", t(0));
    insert(&store, &key).await;
    let minute = at(2025, 3, 10, 12, 5);

    store.add_usage(&[]).await.unwrap();
    store
        .add_usage(&[delta(&key, "gpt-4o", minute, 1)])
        .await
        .unwrap();
    store
        .add_usage(&[
            delta(&key, "gpt-4o", minute, 2),
            delta(&key, "gpt-4o", minute, 4),
        ])
        .await
        .unwrap();

    let query = UsageQuery {
        key_id: key.id,
        from: at(2025, 3, 10, 0, 0),
        to: at(2025, 3, 11, 0, 0),
        granularity: Granularity::Minute,
        model: None,
    };
    assert_eq!(
        store.usage(&query).await.unwrap(),
        vec![row(minute, "gpt-4o", 7)]
    );
}

pub async fn concurrent_usage_flushes_sum_exactly(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "busy", t(0));
    insert(&store, &key).await;
    let minute = at(2025, 3, 10, 12, 0);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    store
                        .add_usage(&[delta(&key, "m", minute, 1), delta(&key, "n", minute, 2)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store
            .key_usage_totals(key.id, minute, Some("m"))
            .await
            .unwrap(),
        totals(50)
    );
    assert_eq!(
        store
            .key_usage_totals(key.id, minute, Some("n"))
            .await
            .unwrap(),
        totals(100)
    );
}

pub async fn usage_aggregates_by_granularity_and_filters(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "metered", t(0));
    let other_key = new_key(ws, "other", t(0));
    insert(&store, &key).await;
    insert(&store, &other_key).await;
    store
        .add_usage(&[
            delta(&key, "a", at(2025, 3, 10, 10, 0), 1),
            delta(&key, "a", at(2025, 3, 10, 10, 1), 2),
            delta(&key, "b", at(2025, 3, 10, 10, 1), 4),
            delta(&key, "a", at(2025, 3, 10, 10, 59), 8),
            delta(&key, "a", at(2025, 3, 10, 11, 0), 16),
            delta(&key, "a", at(2025, 3, 10, 23, 59), 32),
            delta(&key, "a", at(2025, 3, 11, 0, 0), 64),
            delta(&key, "b", at(2025, 3, 12, 7, 30), 128),
            delta(&other_key, "a", at(2025, 3, 10, 10, 0), 256),
        ])
        .await
        .unwrap();
    let query = |granularity, from, to, model: Option<&str>| UsageQuery {
        key_id: key.id,
        from,
        to,
        granularity,
        model: model.map(str::to_string),
    };
    let from = at(2025, 3, 10, 0, 0);
    let to = at(2025, 3, 13, 0, 0);

    let minutes = store
        .usage(&query(Granularity::Minute, from, to, None))
        .await
        .unwrap();
    assert_eq!(
        minutes,
        vec![
            row(at(2025, 3, 10, 10, 0), "a", 1),
            row(at(2025, 3, 10, 10, 1), "a", 2),
            row(at(2025, 3, 10, 10, 1), "b", 4),
            row(at(2025, 3, 10, 10, 59), "a", 8),
            row(at(2025, 3, 10, 11, 0), "a", 16),
            row(at(2025, 3, 10, 23, 59), "a", 32),
            row(at(2025, 3, 11, 0, 0), "a", 64),
            row(at(2025, 3, 12, 7, 30), "b", 128),
        ]
    );

    let hours = store
        .usage(&query(Granularity::Hour, from, to, None))
        .await
        .unwrap();
    assert_eq!(
        hours,
        vec![
            row(at(2025, 3, 10, 10, 0), "a", 11),
            row(at(2025, 3, 10, 10, 0), "b", 4),
            row(at(2025, 3, 10, 11, 0), "a", 16),
            row(at(2025, 3, 10, 23, 0), "a", 32),
            row(at(2025, 3, 11, 0, 0), "a", 64),
            row(at(2025, 3, 12, 7, 0), "b", 128),
        ]
    );

    let days = store
        .usage(&query(Granularity::Day, from, to, None))
        .await
        .unwrap();
    assert_eq!(
        days,
        vec![
            row(at(2025, 3, 10, 0, 0), "a", 59),
            row(at(2025, 3, 10, 0, 0), "b", 4),
            row(at(2025, 3, 11, 0, 0), "a", 64),
            row(at(2025, 3, 12, 0, 0), "b", 128),
        ]
    );

    let only_b = store
        .usage(&query(Granularity::Day, from, to, Some("b")))
        .await
        .unwrap();
    assert_eq!(
        only_b,
        vec![
            row(at(2025, 3, 10, 0, 0), "b", 4),
            row(at(2025, 3, 12, 0, 0), "b", 128)
        ]
    );
    assert!(store
        .usage(&query(Granularity::Day, from, to, Some("zzz")))
        .await
        .unwrap()
        .is_empty());

    // [from, to): `from` is inclusive, `to` exclusive.
    let window = store
        .usage(&query(
            Granularity::Minute,
            at(2025, 3, 10, 10, 1),
            at(2025, 3, 10, 11, 0),
            Some("a"),
        ))
        .await
        .unwrap();
    assert_eq!(
        window,
        vec![
            row(at(2025, 3, 10, 10, 1), "a", 2),
            row(at(2025, 3, 10, 10, 59), "a", 8)
        ]
    );
    let window_day = store
        .usage(&query(
            Granularity::Day,
            at(2025, 3, 10, 11, 0),
            at(2025, 3, 11, 0, 0),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(window_day, vec![row(at(2025, 3, 10, 0, 0), "a", 48)]);
}

/// Two keys in the default workspace and one in another, for the totals and spend tests.
struct Spenders {
    ws: Uuid,
    other: Workspace,
    k1: ApiKey,
    k2: ApiKey,
    foreign: ApiKey,
}

impl Spenders {
    async fn insert(store: &DynStore) -> Spenders {
        let ws = default_ws(store).await;
        let other = create_workspace(store, "other").await;
        let k1 = new_key(ws, "one", t(0));
        let k2 = new_key(ws, "two", t(0));
        let foreign = new_key(other.id, "foreign", t(0));
        for k in [&k1, &k2, &foreign] {
            insert(store, k).await;
        }
        Spenders {
            ws,
            other,
            k1,
            k2,
            foreign,
        }
    }

    /// k1: 1 just before 2025-03-10 00:00, 2 exactly at it, 4 at 05:00 (model "b"); k2: 8
    /// at 06:00; foreign: 16 at 06:00.
    async fn add_usage(&self, store: &DynStore) {
        store
            .add_usage(&[
                delta(&self.k1, "a", at(2025, 3, 9, 23, 59), 1),
                delta(&self.k1, "a", at(2025, 3, 10, 0, 0), 2),
                delta(&self.k1, "b", at(2025, 3, 10, 5, 0), 4),
                delta(&self.k2, "a", at(2025, 3, 10, 6, 0), 8),
                delta(&self.foreign, "a", at(2025, 3, 10, 6, 0), 16),
            ])
            .await
            .unwrap();
    }
}

pub async fn usage_totals_per_key_and_workspace(store: DynStore) {
    let spenders = Spenders::insert(&store).await;
    let since = at(2025, 3, 10, 0, 0);
    assert_eq!(
        store
            .key_usage_totals(spenders.k1.id, since, None)
            .await
            .unwrap(),
        UsageTotals::default()
    );
    assert_eq!(
        store
            .workspace_usage_totals(spenders.ws, since)
            .await
            .unwrap(),
        UsageTotals::default()
    );

    spenders.add_usage(&store).await;
    let Spenders { ws, other, k1, .. } = spenders;

    assert_eq!(
        store.key_usage_totals(k1.id, since, None).await.unwrap(),
        totals(6)
    );
    assert_eq!(
        store
            .key_usage_totals(k1.id, since, Some("a"))
            .await
            .unwrap(),
        totals(2)
    );
    assert_eq!(
        store
            .key_usage_totals(k1.id, since, Some("b"))
            .await
            .unwrap(),
        totals(4)
    );
    assert_eq!(
        store
            .key_usage_totals(k1.id, at(2025, 3, 1, 0, 0), None)
            .await
            .unwrap(),
        totals(7)
    );
    assert_eq!(
        store.workspace_usage_totals(ws, since).await.unwrap(),
        totals(14)
    );
    assert_eq!(
        store.workspace_usage_totals(other.id, since).await.unwrap(),
        totals(16)
    );
    assert_eq!(
        store
            .workspace_usage_totals(ws, at(2025, 3, 11, 0, 0))
            .await
            .unwrap(),
        UsageTotals::default()
    );
}

pub async fn spend_in_answers_many_ranges_in_order(store: DynStore) {
    // Arrange: two keys in one workspace, one in another; usage over a few minutes.
    let spenders = Spenders::insert(&store).await;
    spenders.add_usage(&store).await;
    let Spenders {
        ws,
        other,
        k1,
        k2,
        foreign,
    } = spenders;
    let since = at(2025, 3, 10, 0, 0);
    let cost = |n: i64| 1_000_000_007 * n;
    let range = |id, from, until| SpendRange { id, from, until };

    // Act / Assert: one answer per range, in the order asked; `from` inclusive, `until`
    // exclusive; a range without usage (or an unknown id) spent 0.
    let keys = [
        SpendRange::from(k2.id, since),
        SpendRange::from(k1.id, since),
        SpendRange::from(k1.id, at(2025, 3, 1, 0, 0)),
        range(k1.id, at(2025, 3, 1, 0, 0), Some(since)),
        range(k1.id, since, Some(at(2025, 3, 10, 5, 0))),
        range(k1.id, since, Some(at(2025, 3, 10, 5, 1))),
        SpendRange::from(foreign.id, at(2025, 3, 11, 0, 0)),
        SpendRange::from(Uuid::now_v7(), since),
    ];
    assert_eq!(
        store.spend_in(SpendScope::Key, &keys).await.unwrap(),
        vec![cost(8), cost(6), cost(7), cost(1), cost(2), cost(6), 0, 0]
    );
    let workspaces = [
        SpendRange::from(other.id, since),
        SpendRange::from(ws, since),
        SpendRange::from(ws, at(2025, 3, 1, 0, 0)),
        range(ws, since, Some(at(2025, 3, 10, 6, 0))),
    ];
    assert_eq!(
        store
            .spend_in(SpendScope::Workspace, &workspaces)
            .await
            .unwrap(),
        vec![cost(16), cost(14), cost(15), cost(6)]
    );

    // More ranges than one PostgreSQL statement takes (1 000) come back whole, in order.
    let many: Vec<_> = (0..2_500)
        .map(|n| {
            let id = if n % 1_000 == 999 {
                k1.id
            } else {
                Uuid::now_v7()
            };
            SpendRange::from(id, since)
        })
        .collect();
    let spent = store.spend_in(SpendScope::Key, &many).await.unwrap();
    assert_eq!(spent.len(), 2_500);
    assert_eq!(spent.iter().filter(|&&s| s == cost(6)).count(), 2);
    assert_eq!((spent[999], spent[1_999]), (cost(6), cost(6)));
    assert!(store
        .spend_in(SpendScope::Key, &[])
        .await
        .unwrap()
        .is_empty());
}
