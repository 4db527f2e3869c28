//! Writes that a caller retries when it cannot tell whether they went through (the
//! connection broke after the commit was sent): usage batches and rate-limit events are
//! stored once however often they are sent.

use keygate::store::{DynStore, EventFilter, RateLimitEvent, UsageDelta};
use uuid::Uuid;

use crate::harness::{at, default_ws, insert, new_key, page, t};

pub async fn a_usage_batch_sent_twice_is_added_once(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "retried", t(0));
    insert(&store, &key).await;
    let minute = at(2025, 3, 10, 12, 5);
    let delta = |n: i64| UsageDelta {
        key_id: key.id,
        workspace_id: ws,
        model: "gpt-4o".to_string(),
        minute,
        requests: n,
        input_tokens: 10 * n,
        output_tokens: 100 * n,
        cost_pico: 7 * n,
    };
    let batch = Uuid::now_v7();

    assert!(store.add_usage_batch(batch, &[delta(2)]).await.unwrap());
    assert!(!store.add_usage_batch(batch, &[delta(2)]).await.unwrap());
    // Another batch with the same numbers is new usage.
    assert!(store
        .add_usage_batch(Uuid::now_v7(), &[delta(2)])
        .await
        .unwrap());
    assert!(store.add_usage_batch(Uuid::now_v7(), &[]).await.unwrap());

    let totals = store.key_usage_totals(key.id, minute, None).await.unwrap();
    assert_eq!(
        (
            totals.requests,
            totals.input_tokens,
            totals.output_tokens,
            totals.cost_pico
        ),
        (4, 40, 400, 28)
    );
}

pub async fn rate_limit_events_sent_twice_are_stored_once(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "refused", t(0));
    insert(&store, &key).await;
    let event = |secs: i64| RateLimitEvent {
        id: Uuid::now_v7(),
        workspace_id: ws,
        key_id: key.id,
        model: None,
        limit: "rpm".to_string(),
        limit_value: "1".to_string(),
        at: t(secs),
    };
    let (first, second) = (event(1), event(2));

    store
        .add_rate_limit_events(std::slice::from_ref(&first))
        .await
        .unwrap();
    // The retry carries the first event again with one that came later.
    store
        .add_rate_limit_events(&[first.clone(), second.clone()])
        .await
        .unwrap();

    let stored = store
        .list_rate_limit_events(ws, &EventFilter::default(), page(1, 50))
        .await
        .unwrap();
    assert_eq!(stored.total, 2);
    assert_eq!(stored.items, vec![second, first]);
}
