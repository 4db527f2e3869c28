//! Audit events, rate-limit events, one-time tokens and budget alerts.

use chrono::{TimeDelta, Utc};
use keygate::{
    keys::model::ApiKey,
    store::{DynStore, EventFilter, LastAdmin, RateLimitEvent},
};
use uuid::Uuid;

use crate::harness::{
    at, audit, create_workspace, default_ws, insert, new_key, page, secret_for, t,
};

pub async fn audit_events_are_listed_newest_first(store: DynStore) {
    let ws = default_ws(&store).await;
    let other = create_workspace(&store, "other").await;
    let key = new_key(ws, "audited", t(1));
    let target = format!("key:{}", key.id);
    let mut create = audit(ws, "key.create", &target, t(1));
    create.actor = "member:alice".to_string();
    create.source = Some("203.0.113.7".to_string());
    create.details = serde_json::json!({ "kind": "inference", "fields": ["name", "limits"] });
    store
        .insert_key(&key, &secret_for(&key, t(1)), None, &create)
        .await
        .unwrap();

    let mut changed = key.clone();
    changed.name = "renamed".to_string();
    let update = audit(ws, "key.update", &target, t(2));
    store
        .update_key(&changed, &update, LastAdmin::MayGo)
        .await
        .unwrap();
    let rotate = audit(ws, "key.rotate", &target, t(3));
    store
        .rotate_key(
            ws,
            key.id,
            &secret_for(&key, t(3)),
            "kg_r",
            "rrrrrr",
            t(63),
            &rotate,
        )
        .await
        .unwrap();
    let revoke = audit(ws, "key.revoke", &target, t(4));
    store
        .revoke_key(ws, key.id, t(4), &revoke, LastAdmin::MayGo)
        .await
        .unwrap();

    let all = store.list_audit_events(ws, page(1, 10)).await.unwrap();
    assert_eq!(all.total, 4);
    assert_eq!(
        all.items,
        vec![
            revoke.clone(),
            rotate.clone(),
            update.clone(),
            create.clone()
        ]
    );

    let first = store.list_audit_events(ws, page(1, 3)).await.unwrap();
    assert_eq!(
        (first.total, first.items),
        (4, vec![revoke, rotate, update])
    );
    let second = store.list_audit_events(ws, page(2, 3)).await.unwrap();
    assert_eq!((second.total, second.items), (4, vec![create]));

    // The other workspace sees only its own creation.
    let theirs = store
        .list_audit_events(other.id, page(1, 10))
        .await
        .unwrap();
    assert_eq!(theirs.total, 1);
    assert_eq!(theirs.items[0].action, "workspace.create");
}

pub async fn rate_limit_events_filter_and_page_newest_first(store: DynStore) {
    let ws = default_ws(&store).await;
    let other = create_workspace(&store, "other").await;
    let k1 = new_key(ws, "one", t(0));
    let k2 = new_key(ws, "two", t(0));
    let foreign = new_key(other.id, "foreign", t(0));
    for k in [&k1, &k2, &foreign] {
        insert(&store, k).await;
    }
    let event = |key: &ApiKey, secs: i64, limit: &str, model: Option<&str>| RateLimitEvent {
        id: Uuid::now_v7(),
        workspace_id: key.workspace_id,
        key_id: key.id,
        model: model.map(str::to_string),
        limit: limit.to_string(),
        limit_value: if limit == "budget" {
            "25.00".to_string()
        } else {
            "60".to_string()
        },
        at: t(secs),
    };
    let e1 = event(&k1, 1, "rpm", Some("gpt-4o"));
    let e2 = event(&k1, 2, "tpm", Some("gpt-4o"));
    let e3 = event(&k2, 3, "budget", None);
    let e4 = event(&k1, 4, "concurrency", None);
    let e5 = event(&k2, 5, "rpd", Some("gpt-4o-mini"));
    let e6 = event(&foreign, 6, "rpm", None);
    store.add_rate_limit_events(&[]).await.unwrap();
    store
        .add_rate_limit_events(&[e1.clone(), e2.clone(), e3.clone()])
        .await
        .unwrap();
    store
        .add_rate_limit_events(&[e4.clone(), e5.clone(), e6.clone()])
        .await
        .unwrap();

    let all = store
        .list_rate_limit_events(ws, &EventFilter::default(), page(1, 10))
        .await
        .unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(
        all.items,
        vec![e5.clone(), e4.clone(), e3.clone(), e2.clone(), e1.clone()]
    );

    let page2 = store
        .list_rate_limit_events(ws, &EventFilter::default(), page(2, 2))
        .await
        .unwrap();
    assert_eq!(
        (page2.total, page2.items),
        (5, vec![e3.clone(), e2.clone()])
    );

    let by_key = EventFilter {
        key_id: Some(k1.id),
        ..EventFilter::default()
    };
    let k1_events = store
        .list_rate_limit_events(ws, &by_key, page(1, 10))
        .await
        .unwrap();
    assert_eq!(
        (k1_events.total, k1_events.items),
        (3, vec![e4.clone(), e2.clone(), e1.clone()])
    );

    // [from, to)
    let window = EventFilter {
        key_id: None,
        from: Some(t(2)),
        to: Some(t(4)),
    };
    let in_window = store
        .list_rate_limit_events(ws, &window, page(1, 10))
        .await
        .unwrap();
    assert_eq!(
        (in_window.total, in_window.items),
        (2, vec![e3.clone(), e2.clone()])
    );
    let since = EventFilter {
        key_id: Some(k2.id),
        from: Some(t(4)),
        to: None,
    };
    let k2_since = store
        .list_rate_limit_events(ws, &since, page(1, 10))
        .await
        .unwrap();
    assert_eq!((k2_since.total, k2_since.items), (1, vec![e5]));
    let until = EventFilter {
        key_id: None,
        from: None,
        to: Some(t(2)),
    };
    assert_eq!(
        store
            .list_rate_limit_events(ws, &until, page(1, 10))
            .await
            .unwrap()
            .items,
        vec![e1]
    );

    // Workspaces are isolated, even when filtering by another workspace's key.
    let foreign_filter = EventFilter {
        key_id: Some(foreign.id),
        ..EventFilter::default()
    };
    assert_eq!(
        store
            .list_rate_limit_events(ws, &foreign_filter, page(1, 10))
            .await
            .unwrap()
            .total,
        0
    );
    let theirs = store
        .list_rate_limit_events(other.id, &EventFilter::default(), page(1, 10))
        .await
        .unwrap();
    assert_eq!(theirs.items, vec![e6]);
}

// ---------------------------------------------------------------------------------------
// one-time tokens and alerts

pub async fn once_tokens_are_single_use(store: DynStore) {
    let expires = Utc::now() + TimeDelta::minutes(5);
    assert!(store.consume_once_token("nonce-1", expires).await.unwrap());
    assert!(!store.consume_once_token("nonce-1", expires).await.unwrap());
    assert!(!store
        .consume_once_token("nonce-1", expires + TimeDelta::hours(1))
        .await
        .unwrap());
    assert!(store.consume_once_token("nonce-2", expires).await.unwrap());
}

pub async fn budget_alerts_are_claimed_once(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "budgeted", t(0));
    let other_key = new_key(ws, "other", t(0));
    insert(&store, &key).await;
    insert(&store, &other_key).await;
    let march = at(2025, 3, 1, 0, 0);
    let april = at(2025, 4, 1, 0, 0);
    assert!(store.claim_budget_alert(key.id, march, 8000).await.unwrap());
    assert!(!store.claim_budget_alert(key.id, march, 8000).await.unwrap());
    assert!(store
        .claim_budget_alert(key.id, march, 10000)
        .await
        .unwrap());
    assert!(store.claim_budget_alert(key.id, april, 8000).await.unwrap());
    assert!(store
        .claim_budget_alert(other_key.id, march, 8000)
        .await
        .unwrap());
    assert!(!store.claim_budget_alert(key.id, april, 8000).await.unwrap());
}
