//! What authentication and bootstrap rely on: secrets and rotation, admin key count, last use.

use std::sync::Arc;

use chrono::TimeDelta;
use keygate::{
    keys::model::KeyKind,
    store::{DynStore, LastAdmin, SecretVersion, StoreError},
};
use uuid::Uuid;

use crate::harness::{
    audit, create_workspace, default_ws, insert, lookup_id, new_key, page, secret_for, t,
};

pub async fn rotate_limits_old_secrets_and_deletes_expired_ones(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "rotating", t(0));
    let a = insert(&store, &key).await;
    let event = |secs| audit(ws, "key.rotate", &format!("key:{}", key.id), t(secs));

    // Rotation 1 at t10: A stays valid until t70, B is current.
    let b = secret_for(&key, t(10));
    let rotated = store
        .rotate_key(ws, key.id, &b, "kg_bbbb…bbbb", "bbbbbb", t(70), &event(10))
        .await
        .unwrap();
    assert_eq!(rotated.partial_key, "kg_bbbb…bbbb");
    assert_eq!(rotated.last6, "bbbbbb");
    assert_eq!(rotated.updated_at, t(10));
    assert_eq!(rotated.created_at, key.created_at);
    assert_eq!(store.get_key(ws, key.id).await.unwrap(), rotated);
    let (found_a, key_via_a) = store.find_secret(&a.lookup_id).await.unwrap().unwrap();
    assert_eq!(found_a.valid_until, Some(t(70)));
    assert_eq!(found_a.hash, a.hash);
    assert_eq!(key_via_a, rotated);
    let (found_b, _) = store.find_secret(&b.lookup_id).await.unwrap().unwrap();
    assert_eq!(found_b, b);

    // Rotation 2 at t20 with a later limit: A keeps its earlier end, B ends at t80.
    let c = secret_for(&key, t(20));
    store
        .rotate_key(ws, key.id, &c, "kg_cccc…cccc", "cccccc", t(80), &event(20))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_secret(&a.lookup_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .valid_until,
        Some(t(70))
    );
    assert_eq!(
        store
            .find_secret(&b.lookup_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .valid_until,
        Some(t(80))
    );
    assert_eq!(
        store
            .find_secret(&c.lookup_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .valid_until,
        None
    );

    // Rotation 3 at t100: A and B have expired and are deleted; C ends at t160.
    let d = secret_for(&key, t(100));
    let rotated = store
        .rotate_key(
            ws,
            key.id,
            &d,
            "kg_dddd…dddd",
            "dddddd",
            t(160),
            &event(100),
        )
        .await
        .unwrap();
    assert!(store.find_secret(&a.lookup_id).await.unwrap().is_none());
    assert!(store.find_secret(&b.lookup_id).await.unwrap().is_none());
    assert_eq!(
        store
            .find_secret(&c.lookup_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .valid_until,
        Some(t(160))
    );
    assert_eq!(
        store
            .find_secret(&d.lookup_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .valid_until,
        None
    );
    assert_eq!(rotated.last6, "dddddd");

    let log = store.list_audit_events(ws, page(1, 10)).await.unwrap();
    let actions: Vec<_> = log.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["key.rotate", "key.rotate", "key.rotate", "key.create"]
    );

    let ghost = secret_for(&new_key(ws, "ghost", t(0)), t(200));
    let missing = store
        .rotate_key(
            ws,
            ghost.key_id,
            &ghost,
            "kg_x",
            "xxxxxx",
            t(200),
            &event(200),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}

pub async fn rotate_with_no_grace_deletes_old_secrets(store: DynStore) {
    let ws = default_ws(&store).await;
    let key = new_key(ws, "rotating", t(0));
    let a = insert(&store, &key).await;
    let event = audit(ws, "key.rotate", "key", t(10));
    let b = secret_for(&key, t(10));
    store
        .rotate_key(ws, key.id, &b, "kg_b", "bbbbbb", t(10), &event)
        .await
        .unwrap();
    assert!(store.find_secret(&a.lookup_id).await.unwrap().is_none());
    assert_eq!(store.find_secret(&b.lookup_id).await.unwrap().unwrap().0, b);
}

pub async fn find_secret_of_unknown_lookup_id_is_none(store: DynStore) {
    assert!(store.find_secret(&lookup_id()).await.unwrap().is_none());
    assert!(store.find_secret("").await.unwrap().is_none());
    let ws = default_ws(&store).await;
    let key = new_key(ws, "k", t(0));
    let secret = insert(&store, &key).await;
    assert_eq!(
        store.find_secret(&secret.lookup_id).await.unwrap(),
        Some((secret.clone(), key))
    );
    // Lookup ids match exactly.
    assert!(store
        .find_secret(&secret.lookup_id.to_uppercase())
        .await
        .unwrap()
        .is_none());
}

pub async fn count_live_admin_keys_across_workspaces(store: DynStore) {
    assert_eq!(store.count_live_admin_keys().await.unwrap(), 0);
    let ws = default_ws(&store).await;
    let other = create_workspace(&store, "other").await;
    let mut admin = new_key(ws, "admin", t(0));
    admin.kind = KeyKind::Admin;
    let mut other_admin = new_key(other.id, "admin elsewhere", t(1));
    other_admin.kind = KeyKind::Admin;
    insert(&store, &admin).await;
    insert(&store, &other_admin).await;
    insert(&store, &new_key(ws, "inference", t(2))).await;
    assert_eq!(store.count_live_admin_keys().await.unwrap(), 2);

    store
        .revoke_key(
            ws,
            admin.id,
            t(3),
            &audit(ws, "key.revoke", "admin", t(3)),
            LastAdmin::MayGo,
        )
        .await
        .unwrap();
    assert_eq!(store.count_live_admin_keys().await.unwrap(), 1);
}

pub async fn touch_keys_never_lowers_last_used_at(store: DynStore) {
    let ws = default_ws(&store).await;
    let k1 = new_key(ws, "one", t(0));
    let k2 = new_key(ws, "two", t(0));
    let untouched = new_key(ws, "three", t(0));
    insert(&store, &k1).await;
    insert(&store, &k2).await;
    insert(&store, &untouched).await;
    let last_used = |id| {
        let store = Arc::clone(&store);
        async move { store.get_key(ws, id).await.unwrap().last_used_at }
    };

    store.touch_keys(&[]).await.unwrap();
    // Several uses of one key in a batch: the latest wins, whatever the order.
    store
        .touch_keys(&[
            (k1.id, t(10)),
            (k2.id, t(5)),
            (k1.id, t(8)),
            (Uuid::now_v7(), t(9)),
        ])
        .await
        .unwrap();
    assert_eq!(last_used(k1.id).await, Some(t(10)));
    assert_eq!(last_used(k2.id).await, Some(t(5)));
    assert_eq!(last_used(untouched.id).await, None);

    store.touch_keys(&[(k1.id, t(3))]).await.unwrap();
    assert_eq!(
        last_used(k1.id).await,
        Some(t(10)),
        "an older use never lowers it"
    );
    store
        .touch_keys(&[(k1.id, t(20) + TimeDelta::microseconds(7))])
        .await
        .unwrap();
    assert_eq!(
        last_used(k1.id).await,
        Some(t(20) + TimeDelta::microseconds(7))
    );
    // Touching does not count as an update.
    assert_eq!(store.get_key(ws, k1.id).await.unwrap().updated_at, t(0));
}

pub async fn secret_versions_answer_many_lookup_ids_at_once(store: DynStore) {
    // Arrange: three keys, one revoked and one rotated (its old secret gone, its new one
    // valid), and more lookup ids than one PostgreSQL statement takes (1 000), most of them
    // unknown.
    let ws = default_ws(&store).await;
    let keys: Vec<_> = (0..3)
        .map(|n| new_key(ws, &format!("k{n}"), t(n)))
        .collect();
    let mut secrets = Vec::new();
    for key in &keys {
        secrets.push(insert(&store, key).await);
    }
    let revoke = audit(ws, "key.revoke", "key", t(5));
    store
        .revoke_key(ws, keys[1].id, t(5), &revoke, LastAdmin::MayGo)
        .await
        .unwrap();
    let rotated = secret_for(&keys[2], t(10));
    let rotate = audit(ws, "key.rotate", "key", t(10));
    store
        .rotate_key(ws, keys[2].id, &rotated, "kg_b", "bbbbbb", t(10), &rotate)
        .await
        .unwrap();
    let unknown: Vec<String> = (0..1_500).map(|_| lookup_id()).collect();
    let mut asked: Vec<&str> = unknown.iter().map(String::as_str).collect();
    asked.insert(700, &secrets[0].lookup_id);
    asked.push(&secrets[1].lookup_id);
    asked.push(&secrets[2].lookup_id);
    asked.push(&rotated.lookup_id);

    // Act
    let mut found = store.secret_versions(&asked).await.unwrap();

    // Assert: what find_secret answers for each, the unknown and the rotated-away left out.
    found.sort_by(|a, b| a.lookup_id.cmp(&b.lookup_id));
    let mut expected = Vec::new();
    for lookup_id in [
        &secrets[0].lookup_id,
        &secrets[1].lookup_id,
        &rotated.lookup_id,
    ] {
        let (secret, key) = store.find_secret(lookup_id).await.unwrap().unwrap();
        expected.push(SecretVersion {
            lookup_id: secret.lookup_id,
            hash: secret.hash,
            valid_until: secret.valid_until,
            key_updated_at: key.updated_at,
            key_revoked_at: key.revoked_at,
        });
    }
    expected.sort_by(|a, b| a.lookup_id.cmp(&b.lookup_id));
    assert_eq!(found, expected);
    assert_eq!(
        found
            .iter()
            .filter(|v| v.key_revoked_at == Some(t(5)))
            .count(),
        1
    );
    assert!(store.secret_versions(&[]).await.unwrap().is_empty());
}
