//! `LastAdmin::Keep`: a revoke or update that would leave a workspace without an active
//! admin key writes nothing and fails with `LastAdminKey`, also when two such changes race.

use std::sync::Arc;

use keygate::{
    keys::model::{ApiKey, KeyKind},
    store::{DynStore, LastAdmin, Page, StoreError},
};
use uuid::Uuid;

use crate::harness::{audit, create_workspace, default_ws, insert, new_key, t};

fn admin(workspace_id: Uuid, name: &str, secs: i64) -> ApiKey {
    let mut key = new_key(workspace_id, name, t(secs));
    key.kind = KeyKind::Admin;
    key
}

async fn revoke(store: &DynStore, key: &ApiKey, secs: i64) -> Result<ApiKey, StoreError> {
    let event = audit(key.workspace_id, "key.revoke", "k", t(secs));
    store
        .revoke_key(key.workspace_id, key.id, t(secs), &event, LastAdmin::Keep)
        .await
}

async fn update(store: &DynStore, key: &ApiKey, secs: i64) -> Result<(), StoreError> {
    let mut key = key.clone();
    key.updated_at = t(secs);
    let event = audit(key.workspace_id, "key.update", "k", t(secs));
    store.update_key(&key, &event, LastAdmin::Keep).await
}

async fn audit_events(store: &DynStore, workspace_id: Uuid) -> u64 {
    let page = Page {
        page: 1,
        limit: 500,
    };
    store
        .list_audit_events(workspace_id, page)
        .await
        .unwrap()
        .total
}

pub async fn the_last_active_admin_key_is_kept(store: DynStore) {
    // Arrange: one active admin key, one expired admin key, one inference key.
    let ws = default_ws(&store).await;
    let last = admin(ws, "last", 0);
    let mut expired = admin(ws, "expired", 1);
    expired.expires_at = Some(t(5));
    let inference = new_key(ws, "inference", t(2));
    for key in [&last, &expired, &inference] {
        insert(&store, key).await;
    }
    let events = audit_events(&store, ws).await;

    // Act and assert: revoking, demoting or expiring the active one is refused.
    assert!(matches!(
        revoke(&store, &last, 10).await,
        Err(StoreError::LastAdminKey)
    ));
    let mut demoted = last.clone();
    demoted.kind = KeyKind::Inference;
    assert!(matches!(
        update(&store, &demoted, 10).await,
        Err(StoreError::LastAdminKey)
    ));
    let mut expiring = last.clone();
    expiring.expires_at = Some(t(10));
    assert!(matches!(
        update(&store, &expiring, 10).await,
        Err(StoreError::LastAdminKey)
    ));
    // Nothing was written, not even an audit event.
    assert_eq!(store.get_key(ws, last.id).await.unwrap(), last);
    assert_eq!(audit_events(&store, ws).await, events);

    // What leaves it active goes through: a rename, a later expiry, other keys' changes.
    let mut renamed = last.clone();
    renamed.name = "root".into();
    update(&store, &renamed, 11).await.unwrap();
    let mut later = renamed.clone();
    later.expires_at = Some(t(1000));
    update(&store, &later, 12).await.unwrap();
    revoke(&store, &inference, 13).await.unwrap();
    let mut renamed_expired = expired.clone();
    renamed_expired.name = "old".into();
    update(&store, &renamed_expired, 14).await.unwrap();
    revoke(&store, &expired, 15).await.unwrap();
    // Once expired on its own, it was not taken away by anyone: changing it is fine.
    let mut past = later.clone();
    past.name = "gone by itself".into();
    update(&store, &past, 2000).await.unwrap();

    // `MayGo` has no such rule.
    let other = create_workspace(&store, "other").await;
    let only = admin(other.id, "only", 0);
    insert(&store, &only).await;
    let event = audit(other.id, "key.revoke", "k", t(20));
    store
        .revoke_key(other.id, only.id, t(20), &event, LastAdmin::MayGo)
        .await
        .unwrap();
}

pub async fn racing_changes_of_the_last_two_admin_keys_leave_one(store: DynStore) {
    // Several rounds, each in its own workspace: two admin keys, two changes at once that
    // would each take one away (revoke + revoke, revoke + demote).
    for round in 0..8 {
        // Arrange
        let ws = create_workspace(&store, &format!("race {round}")).await;
        let a = admin(ws.id, "a", 0);
        let b = admin(ws.id, "b", 1);
        insert(&store, &a).await;
        insert(&store, &b).await;

        // Act
        let first = {
            let store = Arc::clone(&store);
            let a = a.clone();
            tokio::spawn(async move { revoke(&store, &a, 10).await.map(|_| ()) })
        };
        let second = {
            let store = Arc::clone(&store);
            let mut b = b.clone();
            tokio::spawn(async move {
                if round % 2 == 0 {
                    revoke(&store, &b, 10).await.map(|_| ())
                } else {
                    b.kind = KeyKind::Inference;
                    update(&store, &b, 10).await
                }
            })
        };
        let outcomes = [first.await.unwrap(), second.await.unwrap()];

        // Assert: one went through, the other was refused, one admin key is left.
        let passed = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::LastAdminKey)))
            .count();
        assert_eq!((passed, refused), (1, 1), "round {round}: {outcomes:?}");
        let page = Page { page: 1, limit: 10 };
        let admins = store
            .list_keys(ws.id, page)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|k| k.kind == KeyKind::Admin)
            .count();
        assert_eq!(admins, 1, "round {round}");
    }
}
