//! Keys: insert, get, list, update, revoke, and the workspace key cap.

use std::sync::Arc;

use chrono::TimeDelta;
use keygate::{
    keys::model::{Budget, BudgetPeriod, CompatFields, KeyKind, Limits, ModelLimits, TokenType},
    store::{DynStore, LastAdmin, StoreError},
};
use sqlx::{Connection, PgConnection, SqliteConnection};
use uuid::Uuid;

use crate::harness::{
    audit, create_workspace, default_ws, insert, new_key, page, secret_for, t, usd, workspace,
    StoreWithUrl,
};

pub async fn insert_get_and_list_keys_oldest_first(store: DynStore) {
    let ws = default_ws(&store).await;
    // Inserted out of order; listed by created_at.
    let keys: Vec<_> = (0..5)
        .map(|i| new_key(ws, &format!("key {i}"), t(i * 60)))
        .collect();
    for i in [3, 0, 4, 1, 2] {
        insert(&store, &keys[i]).await;
    }

    for key in &keys {
        assert_eq!(&store.get_key(ws, key.id).await.unwrap(), key);
    }

    let first = store.list_keys(ws, page(1, 2)).await.unwrap();
    assert_eq!(first.total, 5);
    assert_eq!(first.items, keys[0..2]);
    let second = store.list_keys(ws, page(2, 2)).await.unwrap();
    assert_eq!(second.total, 5);
    assert_eq!(second.items, keys[2..4]);
    let third = store.list_keys(ws, page(3, 2)).await.unwrap();
    assert_eq!(third.items, keys[4..5]);
    let beyond = store.list_keys(ws, page(9, 2)).await.unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 5);
    assert_eq!(store.list_keys(ws, page(1, 50)).await.unwrap().items, keys);

    // Equal created_at: ordered by id.
    let twin_a = new_key(ws, "twin", t(1000));
    let mut twin_b = new_key(ws, "twin", t(1000));
    twin_b.id = Uuid::from_u128(twin_a.id.as_u128() + 1);
    insert(&store, &twin_b).await;
    insert(&store, &twin_a).await;
    let all = store.list_keys(ws, page(1, 50)).await.unwrap().items;
    assert_eq!(all[5..], [twin_a, twin_b]);

    assert!(matches!(
        store.get_key(ws, Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn keys_of_another_workspace_are_invisible(store: DynStore) {
    let ws = default_ws(&store).await;
    let other = create_workspace(&store, "other").await;
    let mine = new_key(ws, "mine", t(0));
    let theirs = new_key(other.id, "theirs", t(1));
    insert(&store, &mine).await;
    insert(&store, &theirs).await;

    assert!(matches!(
        store.get_key(ws, theirs.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_key(other.id, mine.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.list_keys(ws, page(1, 10)).await.unwrap().items,
        vec![mine.clone()]
    );
    assert_eq!(
        store.list_keys(other.id, page(1, 10)).await.unwrap().items,
        vec![theirs.clone()]
    );

    let event = audit(ws, "key.revoke", "key:x", t(5));
    assert!(matches!(
        store
            .revoke_key(ws, theirs.id, t(5), &event, LastAdmin::MayGo)
            .await,
        Err(StoreError::NotFound)
    ));
    let mut moved = theirs.clone();
    moved.workspace_id = ws;
    moved.name = "hijacked".to_string();
    assert!(matches!(
        store.update_key(&moved, &event, LastAdmin::MayGo).await,
        Err(StoreError::NotFound)
    ));
    let new_secret = secret_for(&theirs, t(6));
    let rotated = store
        .rotate_key(ws, theirs.id, &new_secret, "kg_x", "xxxxxx", t(6), &event)
        .await;
    assert!(matches!(rotated, Err(StoreError::NotFound)));
    assert_eq!(store.get_key(other.id, theirs.id).await.unwrap(), theirs);
}

pub async fn update_key_round_trips_every_field(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "plain", t(0));
    let secret = insert(&store, &key).await;

    let mut changed = key.clone();
    changed.name = "everything set ✓".to_string();
    changed.kind = KeyKind::Admin;
    changed.updated_at = t(30);
    // Microsecond precision survives on both backends.
    changed.expires_at = Some(t(86_400) + TimeDelta::microseconds(123_456));
    changed.metadata = serde_json::json!({
        "team": { "name": "ml", "tags": ["a", "b"], "depth": { "deeper": [1, 2.5, null] } },
        "cost_center": 4711,
        "active": true,
        "note": null,
    })
    .as_object()
    .unwrap()
    .clone();
    changed.allowed_models = Some(vec!["gpt-4o-mini".to_string(), "llama-3.1-8b".to_string()]);
    changed.budget = Some(Budget {
        limit_usd: usd("0.1"),
        period: BudgetPeriod::Month,
    });
    changed.limits = Limits {
        rpm: Some(60),
        rpd: Some(0),
        tpm: Some(100_000),
        tpd: Some(10_000_000_000),
        token_type: TokenType::Output,
    };
    changed.model_limits = vec![
        ModelLimits {
            model: "gpt-4o".to_string(),
            rpm: Some(5),
            rpd: None,
            tpm: Some(1000),
            tpd: None,
            token_type: TokenType::Input,
        },
        ModelLimits {
            model: "gpt-4o-mini".to_string(),
            rpm: None,
            rpd: Some(100),
            tpm: None,
            tpd: Some(5),
            token_type: TokenType::Total,
        },
    ];
    changed.max_parallel = Some(4);
    changed.ip_allowlist = Some(vec![
        "10.0.0.0/8".parse().unwrap(),
        "192.168.1.7/32".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ]);
    changed.alert_thresholds = Some(vec![0.5, 0.8, 1.0]);
    changed.compat = CompatFields {
        model_privacy: Some("private".to_string()),
        diem: Some(0.25),
        vcu: Some(12.5),
    };
    changed.wallet_address = Some("0x52908400098527886E0F7030069857D2E4169EE7".to_string());

    let event = || audit(ws, "key.update", &format!("key:{}", key.id), t(30));
    store
        .update_key(&changed, &event(), LastAdmin::MayGo)
        .await
        .unwrap();
    let got = store.get_key(ws, key.id).await.unwrap();
    assert_eq!(got, changed);
    assert_eq!(
        got.budget.as_ref().unwrap().limit_usd.to_string(),
        "0.1",
        "budgets are exact"
    );
    assert_eq!(got.expires_at.unwrap().timestamp_subsec_micros(), 123_456);
    let (_, via_secret) = store.find_secret(&secret.lookup_id).await.unwrap().unwrap();
    assert_eq!(via_secret, changed);

    // A budget with more digits than an f64 holds stays exact too.
    changed.budget = Some(Budget {
        limit_usd: usd("12345678901.123456789"),
        period: BudgetPeriod::Lifetime,
    });
    store
        .update_key(&changed, &event(), LastAdmin::MayGo)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key(ws, key.id)
            .await
            .unwrap()
            .budget
            .unwrap()
            .limit_usd
            .to_string(),
        "12345678901.123456789"
    );

    // And everything can be cleared again.
    let mut cleared = key.clone();
    cleared.updated_at = t(40);
    store
        .update_key(&cleared, &event(), LastAdmin::MayGo)
        .await
        .unwrap();
    assert_eq!(store.get_key(ws, key.id).await.unwrap(), cleared);
}

pub async fn update_key_of_missing_or_revoked_key_is_not_found(store: DynStore) {
    let ws = default_ws(&store).await;
    let event = audit(ws, "key.update", "key:x", t(1));
    let ghost = new_key(ws, "ghost", t(0));
    assert!(matches!(
        store.update_key(&ghost, &event, LastAdmin::MayGo).await,
        Err(StoreError::NotFound)
    ));

    let key = new_key(ws, "soon revoked", t(0));
    insert(&store, &key).await;
    store
        .revoke_key(ws, key.id, t(1), &event, LastAdmin::MayGo)
        .await
        .unwrap();
    let mut renamed = key.clone();
    renamed.name = "renamed".to_string();
    assert!(matches!(
        store.update_key(&renamed, &event, LastAdmin::MayGo).await,
        Err(StoreError::NotFound)
    ));
    // Only the create and revoke events exist: failed calls write no audit event.
    assert_eq!(
        store
            .list_audit_events(ws, page(1, 10))
            .await
            .unwrap()
            .total,
        2
    );
}

pub async fn insert_key_is_all_or_nothing(store: DynStore) {
    let ws = default_ws(&store).await;
    let first = new_key(ws, "first", t(0));
    let secret = insert(&store, &first).await;

    // A second key whose secret reuses the first's lookup id: the whole insert fails.
    let second = new_key(ws, "second", t(1));
    let mut clash = secret_for(&second, t(1));
    clash.lookup_id = secret.lookup_id.clone();
    let event = audit(ws, "key.create", "key:second", t(1));
    match store.insert_key(&second, &clash, None, &event).await {
        Err(StoreError::Conflict { constraint }) => assert_eq!(constraint, "secret_lookup_id"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.get_key(ws, second.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_keys(ws, page(1, 10)).await.unwrap().total, 1);
    assert_eq!(
        store
            .list_audit_events(ws, page(1, 10))
            .await
            .unwrap()
            .total,
        1
    );
    let (found, key) = store.find_secret(&secret.lookup_id).await.unwrap().unwrap();
    assert_eq!((found, key), (secret, first));
}

pub async fn revoke_hides_key_but_find_secret_still_sees_it(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "to revoke", t(0));
    let keep = new_key(ws, "to keep", t(1));
    let secret = insert(&store, &key).await;
    insert(&store, &keep).await;

    let event = audit(ws, "key.revoke", &format!("key:{}", key.id), t(60));
    let revoked = store
        .revoke_key(ws, key.id, t(60), &event, LastAdmin::MayGo)
        .await
        .unwrap();
    assert_eq!(revoked.id, key.id);
    assert_eq!(revoked.revoked_at, Some(t(60)));
    assert_eq!(revoked.name, key.name);

    assert!(matches!(
        store.get_key(ws, key.id).await,
        Err(StoreError::NotFound)
    ));
    let listed = store.list_keys(ws, page(1, 10)).await.unwrap();
    assert_eq!((listed.total, listed.items), (1, vec![keep]));

    let (found_secret, found_key) = store.find_secret(&secret.lookup_id).await.unwrap().unwrap();
    assert_eq!(found_secret, secret);
    assert_eq!(found_key.revoked_at, Some(t(60)));
    assert_eq!(found_key, revoked);

    assert!(matches!(
        store
            .revoke_key(ws, key.id, t(70), &event, LastAdmin::MayGo)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .revoke_key(ws, Uuid::now_v7(), t(70), &event, LastAdmin::MayGo)
            .await,
        Err(StoreError::NotFound)
    ));
    let new_secret = secret_for(&key, t(80));
    let rotated = store
        .rotate_key(ws, key.id, &new_secret, "kg_x", "xxxxxx", t(80), &event)
        .await;
    assert!(matches!(rotated, Err(StoreError::NotFound)));
    assert!(store
        .find_secret(&new_secret.lookup_id)
        .await
        .unwrap()
        .is_none());
}

pub async fn key_cap_holds_under_concurrent_inserts(store: DynStore) {
    let mut ws = workspace("capped", t(0));
    ws.key_cap = Some(3);
    store
        .create_workspace(
            &ws,
            &audit(ws.id, "workspace.create", "workspace:capped", t(0)),
        )
        .await
        .unwrap();

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            let ws_id = ws.id;
            tokio::spawn(async move {
                let key = new_key(ws_id, &format!("racer {i}"), t(i));
                let secret = secret_for(&key, t(i));
                let event = audit(ws_id, "key.create", &format!("key:{}", key.id), t(i));
                store.insert_key(&key, &secret, Some(3), &event).await
            })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::KeyCapReached { cap }) => {
                assert_eq!(cap, 3);
                refused += 1;
            }
            Err(other) => panic!("insert failed with {other}"),
        }
    }
    assert_eq!((created, refused), (3, 17));
    assert_eq!(store.list_keys(ws.id, page(1, 50)).await.unwrap().total, 3);
    // One audit event for the workspace and one per created key, none for refusals.
    assert_eq!(
        store
            .list_audit_events(ws.id, page(1, 50))
            .await
            .unwrap()
            .total,
        4
    );
}

pub async fn key_cap_ignores_revoked_keys(store: DynStore) {
    let ws = default_ws(&store).await;
    let try_insert = |name: &'static str, secs: i64, cap: Option<i64>| {
        let store = Arc::clone(&store);
        async move {
            let key = new_key(ws, name, t(secs));
            let secret = secret_for(&key, t(secs));
            let event = audit(ws, "key.create", name, t(secs));
            store
                .insert_key(&key, &secret, cap, &event)
                .await
                .map(|()| key)
        }
    };
    assert!(matches!(
        try_insert("zero", 0, Some(0)).await,
        Err(StoreError::KeyCapReached { cap: 0 })
    ));
    let a = try_insert("a", 1, Some(2)).await.unwrap();
    try_insert("b", 2, Some(2)).await.unwrap();
    assert!(matches!(
        try_insert("c", 3, Some(2)).await,
        Err(StoreError::KeyCapReached { cap: 2 })
    ));

    store
        .revoke_key(
            ws,
            a.id,
            t(4),
            &audit(ws, "key.revoke", "a", t(4)),
            LastAdmin::MayGo,
        )
        .await
        .unwrap();
    try_insert("d", 5, Some(2)).await.unwrap();
    assert!(matches!(
        try_insert("e", 6, Some(2)).await,
        Err(StoreError::KeyCapReached { cap: 2 })
    ));
    // Without a cap there is no limit.
    try_insert("f", 7, None).await.unwrap();
    let names: Vec<_> = store
        .list_keys(ws, page(1, 10))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["b", "d", "f"]);
}

pub async fn undecodable_json_is_reported_as_corrupt(StoreWithUrl(store, url): StoreWithUrl) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "victim", t(0));
    let secret = insert(&store, &key).await;

    // Something other than keygate writes a `limits` value of the wrong shape.
    let sql = r#"update api_key set limits = '{"rpm": "many"}' where name = 'victim'"#;
    match store.backend() {
        "postgres" => {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        _ => {
            let mut conn = SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }

    let is_corrupt = |result: Result<_, StoreError>| matches!(result, Err(StoreError::Corrupt { table: "api_key", ref reason }) if reason.contains("limits"));
    assert!(is_corrupt(store.get_key(ws, key.id).await.map(|_| ())));
    assert!(is_corrupt(
        store.list_keys(ws, page(1, 10)).await.map(|_| ())
    ));
    assert!(is_corrupt(
        store.find_secret(&secret.lookup_id).await.map(|_| ())
    ));
}
