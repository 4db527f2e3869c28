//! The usage writer against a real SQLite store.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    batch::minute_of,
    test_support::*,
    writer::{spawn_writer, spawn_writer_with, AfterFlush, Caps, FlushError},
    UsageEvent,
};
use crate::{
    keys::model::ApiKey,
    store::{DynStore, EventFilter, Granularity, Page, RateLimitEvent, UsageQuery},
};

type Sums = (i64, i64, i64, i64);

fn event(key: &ApiKey, model: &str, at: DateTime<Utc>, i: i64) -> UsageEvent {
    UsageEvent {
        key_id: key.id,
        workspace_id: key.workspace_id,
        model: model.to_string(),
        at,
        requests: 1,
        input_tokens: i,
        output_tokens: 2 * i + 1,
        cost_pico: 1_000 * i + 7,
    }
}

fn refusal(key: &ApiKey, at: DateTime<Utc>) -> RateLimitEvent {
    RateLimitEvent {
        id: Uuid::now_v7(),
        workspace_id: key.workspace_id,
        key_id: key.id,
        model: Some("m".into()),
        limit: "rpm".into(),
        limit_value: "60".into(),
        at,
    }
}

/// Every stored minute bucket of `keys` around `around`.
async fn stored(
    store: &DynStore,
    keys: &[ApiKey],
    around: DateTime<Utc>,
) -> HashMap<(Uuid, String, DateTime<Utc>), Sums> {
    let mut out = HashMap::new();
    for key in keys {
        let rows = store
            .usage(&UsageQuery {
                key_id: key.id,
                from: around - TimeDelta::hours(1),
                to: around + TimeDelta::hours(1),
                granularity: Granularity::Minute,
                model: None,
            })
            .await
            .unwrap();
        for r in rows {
            out.insert(
                (key.id, r.model, r.start),
                (r.requests, r.input_tokens, r.output_tokens, r.cost_pico),
            );
        }
    }
    out
}

fn expect(sums: &mut HashMap<(Uuid, String, DateTime<Utc>), Sums>, e: &UsageEvent) {
    let s = sums
        .entry((e.key_id, e.model.clone(), minute_of(e.at)))
        .or_default();
    s.0 += e.requests;
    s.1 += e.input_tokens;
    s.2 += e.output_tokens;
    s.3 += e.cost_pico;
}

#[test]
fn minutes_truncate_in_utc() {
    assert_eq!(
        minute_of(at(2026, 3, 10, 12, 34, 56)),
        at(2026, 3, 10, 12, 34, 0)
    );
    assert_eq!(
        minute_of(at(2026, 3, 10, 12, 34, 0) + TimeDelta::microseconds(999_999)),
        at(2026, 3, 10, 12, 34, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_aggregate_exactly_per_bucket() {
    let (_dir, store) = sqlite_store().await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(insert_key(&store, None).await);
    }
    let (_stop_tx, stop) = watch::channel(false);
    let (recorder, _writer) = spawn_writer(store.clone(), Duration::from_secs(1), stop);
    let base = at(2026, 3, 10, 12, 30, 0);
    let models = ["gpt-4o-mini", "gpt-4o"];

    let mut events = Vec::new();
    let mut expected = HashMap::new();
    for i in 0..1000_i64 {
        let key = &keys[(i % 3) as usize];
        let model = models[((i / 3) % 2) as usize];
        let at = base + TimeDelta::minutes((i / 6) % 2) + TimeDelta::seconds(i % 60);
        let e = event(key, model, at, i);
        expect(&mut expected, &e);
        events.push(e);
    }
    assert_eq!(expected.len(), 12, "3 keys × 2 models × 2 minutes");

    // four request tasks recording through clones
    let tasks: Vec<_> = events
        .chunks(250)
        .map(|chunk| {
            let (recorder, chunk) = (recorder.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for e in chunk {
                    recorder.record(e);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    recorder.flush_now().await.unwrap();

    assert_eq!(stored(&store, &keys, base).await, expected);
    let total: i64 = expected.values().map(|s| s.3).sum();
    assert_eq!(total, (0..1000).map(|i| 1_000 * i + 7).sum::<i64>());
    assert_eq!(recorder.dropped(), 0);

    // a second flush adds to the same buckets, it does not overwrite them
    let again = event(&keys[0], models[0], base, 5);
    expect(&mut expected, &again);
    recorder.record(again);
    recorder.flush_now().await.unwrap();
    assert_eq!(stored(&store, &keys, base).await, expected);
}

#[tokio::test]
async fn flushes_on_the_tick_without_being_asked() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    let (_stop_tx, stop) = watch::channel(false);
    let (recorder, _writer) = spawn_writer(store.clone(), Duration::from_millis(100), stop);
    let now = at(2026, 3, 10, 12, 0, 0);
    recorder.record(event(&key, "m", now, 3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let totals = store.key_usage_totals(key.id, now, None).await.unwrap();
        if totals.requests == 1 {
            assert_eq!((totals.input_tokens, totals.cost_pico), (3, 3_007));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stop_drains_and_flushes_everything_recorded_before_it() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    let other = insert_key(&store, None).await;
    let (stop_tx, stop) = watch::channel(false);
    // a long interval: only the final flush can write these
    let (recorder, writer) = spawn_writer(store.clone(), Duration::from_secs(1), stop);
    let now = at(2026, 3, 10, 12, 0, 0);

    for i in 0..100 {
        recorder.record(event(&key, "m", now, i));
    }
    recorder.refusal(refusal(&key, now));
    recorder.refusal(refusal(&other, now));
    let t1 = crate::clock::now();
    let (t0, t2) = (t1 - TimeDelta::seconds(5), t1 - TimeDelta::seconds(1));
    recorder.touch(key.id, t0);
    recorder.touch(key.id, t1);
    recorder.touch(key.id, t2);
    recorder.touch(other.id, t0);
    // queue a flush request (the first poll sends it) and stop before it is answered
    let mut pending_flush = Box::pin(recorder.flush_now());
    assert!(futures::poll!(&mut pending_flush).is_pending());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap();
    // a flush request queued before the stop is answered by the final flush
    assert_eq!(pending_flush.await, Ok(()));

    let totals = store.key_usage_totals(key.id, now, None).await.unwrap();
    assert_eq!(totals.requests, 100);
    assert_eq!(totals.input_tokens, (0..100).sum::<i64>());
    assert_eq!(
        totals.output_tokens,
        (0..100).map(|i| 2 * i + 1).sum::<i64>()
    );
    assert_eq!(
        totals.cost_pico,
        (0..100).map(|i| 1_000 * i + 7).sum::<i64>()
    );

    let events = store
        .list_rate_limit_events(
            key.workspace_id,
            &EventFilter::default(),
            Page { page: 1, limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(events.total, 2);
    assert!(events.items.iter().all(|e| e.limit == "rpm" && e.at == now));

    // the latest use per key, not the last one recorded
    let stored_key = store.get_key(key.workspace_id, key.id).await.unwrap();
    assert_eq!(stored_key.last_used_at, Some(t1));
    let stored_other = store.get_key(other.workspace_id, other.id).await.unwrap();
    assert_eq!(stored_other.last_used_at, Some(t0));

    // after the stop nothing is accepted, and that is counted
    recorder.record(event(&key, "m", now, 1));
    assert_eq!(recorder.dropped(), 1);
    assert_eq!(recorder.flush_now().await, Err(FlushError::Stopped));
}

#[tokio::test]
async fn dropping_every_recorder_also_ends_the_writer_after_a_flush() {
    let (_dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    let (_stop_tx, stop) = watch::channel(false);
    let (recorder, writer) = spawn_writer(store.clone(), Duration::from_secs(1), stop);
    let now = at(2026, 3, 10, 12, 0, 0);
    recorder.record(event(&key, "m", now, 1));
    drop(recorder);
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .unwrap()
        .unwrap();
    let totals = store.key_usage_totals(key.id, now, None).await.unwrap();
    assert_eq!(totals.requests, 1);
}

#[tokio::test]
async fn a_failed_flush_keeps_the_batch_for_the_next_one() {
    let (dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    let (_stop_tx, stop) = watch::channel(false);
    let (recorder, _writer) = spawn_writer(store.clone(), Duration::from_secs(1), stop);
    let now = at(2026, 3, 10, 12, 0, 0);

    break_usage_table(&dir, true).await;
    for i in 0..10 {
        recorder.record(event(&key, "m", now + TimeDelta::minutes(i % 2), i));
    }
    recorder.refusal(refusal(&key, now));
    let result = recorder.flush_now().await;
    assert!(matches!(result, Err(FlushError::Failed(_))), "{result:?}");
    // what the store accepted (the refusal) is not written twice later
    break_usage_table(&dir, false).await;
    recorder.record(event(&key, "m", now, 100));
    recorder.flush_now().await.unwrap();

    let totals = store.key_usage_totals(key.id, now, None).await.unwrap();
    assert_eq!(totals.requests, 11);
    assert_eq!(totals.input_tokens, (0..10).sum::<i64>() + 100);
    assert_eq!(
        totals.cost_pico,
        (0..10).map(|i| 1_000 * i + 7).sum::<i64>() + 100_007
    );
    let events = store
        .list_rate_limit_events(
            key.workspace_id,
            &EventFilter::default(),
            Page { page: 1, limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(events.total, 1);
    assert_eq!(recorder.discarded(), 0);
}

#[tokio::test]
async fn the_retained_batch_is_capped_and_what_it_drops_is_counted() {
    let (dir, store) = sqlite_store().await;
    let key = insert_key(&store, None).await;
    let (_stop_tx, stop) = watch::channel(false);
    let caps = Caps {
        buckets: 2,
        refusals: 1,
        touches: 1,
    };
    let (recorder, _writer) = spawn_writer_with(
        store.clone(),
        Duration::from_secs(1),
        stop,
        caps,
        AfterFlush::default(),
    );
    let now = at(2026, 3, 10, 12, 0, 0);

    break_usage_table(&dir, true).await;
    recorder.record(event(&key, "a", now, 1));
    recorder.record(event(&key, "b", now, 2));
    recorder.record(event(&key, "c", now, 3)); // a third bucket: discarded
    recorder.record(event(&key, "a", now, 4)); // an existing bucket still takes more
    recorder.touch(key.id, now);
    recorder.touch(Uuid::now_v7(), now); // a second key: discarded
    assert!(recorder.flush_now().await.is_err());
    assert_eq!(recorder.discarded(), 2);
    break_usage_table(&dir, false).await;
    recorder.flush_now().await.unwrap();

    let totals = store.key_usage_totals(key.id, now, None).await.unwrap();
    assert_eq!((totals.requests, totals.input_tokens), (3, 1 + 2 + 4));
    assert_eq!(recorder.dropped(), 0);
}
