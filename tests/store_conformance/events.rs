//! Audit events, rate-limit events, one-time tokens and budget alerts.

use chrono::{DateTime, TimeDelta, Utc};
use keygate::{
    keys::model::ApiKey,
    store::{
        AlertAttempt, AlertStatus, AuditFilter, BudgetAlertId, DynStore, EventFilter, LastAdmin,
        NewBudgetAlert, RateLimitEvent,
    },
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

fn new_alert(
    key: &ApiKey,
    period_start: DateTime<Utc>,
    threshold_bp: i64,
    claimed_at: DateTime<Utc>,
) -> NewBudgetAlert {
    NewBudgetAlert {
        id: BudgetAlertId {
            key_id: key.id,
            period_start,
            threshold_bp,
        },
        workspace_id: key.workspace_id,
        payload: format!(r#"{{"threshold":{}}}"#, threshold_bp as f64 / 10_000.0),
        claimed_at,
        next_attempt_at: claimed_at + TimeDelta::seconds(40),
    }
}

pub async fn budget_alerts_are_claimed_once(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "budgeted", t(0));
    let other_key = new_key(ws, "other", t(0));
    insert(&store, &key).await;
    insert(&store, &other_key).await;
    let march = at(2025, 3, 1, 0, 0);
    let april = at(2025, 4, 1, 0, 0);
    let claim = |key: &ApiKey, period, bp| new_alert(key, period, bp, t(0));
    assert!(store
        .claim_budget_alert(&claim(&key, march, 8000))
        .await
        .unwrap());
    assert!(!store
        .claim_budget_alert(&claim(&key, march, 8000))
        .await
        .unwrap());
    assert!(store
        .claim_budget_alert(&claim(&key, march, 10000))
        .await
        .unwrap());
    assert!(store
        .claim_budget_alert(&claim(&key, april, 8000))
        .await
        .unwrap());
    assert!(store
        .claim_budget_alert(&claim(&other_key, march, 8000))
        .await
        .unwrap());
    assert!(!store
        .claim_budget_alert(&claim(&key, april, 8000))
        .await
        .unwrap());

    // The first claim's row, as stored: pending, no attempt yet, leased to the claimer.
    let stored = store.list_budget_alerts(key.id).await.unwrap();
    assert_eq!(stored.len(), 3);
    let first = &stored[0];
    assert_eq!(first.id, claim(&key, march, 8000).id);
    assert_eq!(first.workspace_id, ws);
    assert_eq!(first.payload, r#"{"threshold":0.8}"#);
    assert_eq!(first.claimed_at, t(0));
    assert_eq!(first.status, AlertStatus::Pending);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.last_error, None);
    assert_eq!(first.next_attempt_at, Some(t(40)));
    assert_eq!(first.finished_at, None);
}

pub async fn budget_alert_leases_and_attempts(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "alerting", t(0));
    insert(&store, &key).await;
    let march = at(2025, 3, 1, 0, 0);
    let alert = new_alert(&key, march, 5000, t(0));
    assert!(store.claim_budget_alert(&alert).await.unwrap());

    // Not due while the claimer's lease runs; due after it, and then leased only once.
    assert!(store.due_budget_alerts(t(39), 10).await.unwrap().is_empty());
    assert!(!store
        .lease_budget_alert(&alert.id, t(39), t(100))
        .await
        .unwrap());
    let due = store.due_budget_alerts(t(40), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, alert.id);
    assert!(store
        .lease_budget_alert(&alert.id, t(40), t(80))
        .await
        .unwrap());
    assert!(
        !store
            .lease_budget_alert(&alert.id, t(41), t(81))
            .await
            .unwrap(),
        "taken"
    );
    assert!(store.due_budget_alerts(t(79), 10).await.unwrap().is_empty());

    // A failed attempt: counted, its error kept, due again at the retry time.
    let failed = AlertAttempt {
        at: t(50),
        status: AlertStatus::Pending,
        error: Some("the webhook answered 500".into()),
        next_attempt_at: Some(t(60)),
    };
    store
        .record_budget_alert_attempt(&alert.id, &failed, None)
        .await
        .unwrap();
    let due = store.due_budget_alerts(t(60), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(
        due[0].last_error.as_deref(),
        Some("the webhook answered 500")
    );

    // Delivered, with its audit event in the same call: final, never due again.
    assert!(store
        .lease_budget_alert(&alert.id, t(60), t(100))
        .await
        .unwrap());
    let delivered = AlertAttempt {
        at: t(61),
        status: AlertStatus::Delivered,
        error: None,
        next_attempt_at: None,
    };
    let event = audit(ws, "budget_alert.sent", &format!("key:{}", key.id), t(61));
    store
        .record_budget_alert_attempt(&alert.id, &delivered, Some(&event))
        .await
        .unwrap();
    let stored = store.list_budget_alerts(key.id).await.unwrap();
    assert_eq!(stored[0].status, AlertStatus::Delivered);
    assert_eq!(stored[0].attempts, 2);
    assert_eq!(stored[0].last_error, None);
    assert_eq!(stored[0].finished_at, Some(t(61)));
    assert!(store
        .due_budget_alerts(t(10_000), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(!store
        .lease_budget_alert(&alert.id, t(10_000), t(10_040))
        .await
        .unwrap());
    let filter = AuditFilter {
        action: Some("budget_alert.sent".into()),
        ..AuditFilter::default()
    };
    let events = store.find_audit_events(&filter, page(1, 10)).await.unwrap();
    assert_eq!(events.total, 1);
    assert_eq!(events.items[0].target, format!("key:{}", key.id));
}
