//! Deleting workspaces, the last-owner rule and the audit log's filters (issue 15 §1).

use keygate::store::{AuditFilter, DynStore, Member, Role, StoreError, WebhookSecret};
use uuid::Uuid;

use crate::harness::{audit, create_workspace, insert, new_key as key, page, secret_for, t};

fn member(workspace_id: Uuid, username: &str, role: Role) -> Member {
    Member {
        id: Uuid::now_v7(),
        workspace_id,
        username: username.to_string(),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
        created_at: t(1),
        updated_at: t(1),
    }
}

async fn add(store: &DynStore, m: &Member) {
    let event = audit(m.workspace_id, "member.create", "member:x", t(1));
    store.create_member(m, &event).await.unwrap();
}

pub async fn a_workspace_with_live_keys_is_not_deleted(store: DynStore) {
    let ws = create_workspace(&store, "acme").await;
    let k = key(ws.id, "k", t(1));
    insert(&store, &k).await;
    let event = audit(ws.id, "workspace.delete", "workspace:acme", t(2));
    match store.delete_workspace(ws.id, t(2), &event).await {
        Err(StoreError::WorkspaceHasKeys { live }) => assert_eq!(live, 1),
        other => panic!("expected WorkspaceHasKeys, got {other:?}"),
    }
    assert_eq!(store.get_workspace(ws.id).await.unwrap().name, "acme");
    assert_eq!(store.count_live_keys(ws.id).await.unwrap(), 1);
    // Nothing of the refused call was kept, not even its audit event.
    let log = store.list_audit_events(ws.id, page(1, 10)).await.unwrap();
    assert!(log.items.iter().all(|e| e.action != "workspace.delete"));
}

pub async fn a_deleted_workspace_is_gone_but_its_history_stays(store: DynStore) {
    let mut ws = create_workspace(&store, "acme").await;
    ws.webhook_url = Some("https://93.184.216.34/hook".into());
    ws.webhook_secret = Some(WebhookSecret::new("whsec_x".into()));
    store
        .update_workspace(&ws, &audit(ws.id, "workspace.update", "w", t(1)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(ws.id).await.unwrap(), ws);
    let k = key(ws.id, "k", t(1));
    insert(&store, &k).await;
    store
        .revoke_key(
            ws.id,
            k.id,
            t(2),
            &audit(ws.id, "key.revoke", "k", t(2)),
            keygate::store::LastAdmin::MayGo,
        )
        .await
        .unwrap();
    add(&store, &member(ws.id, "alice", Role::Owner)).await;

    let event = audit(ws.id, "workspace.delete", "workspace:acme", t(3));
    store.delete_workspace(ws.id, t(3), &event).await.unwrap();

    for result in [
        store.get_workspace(ws.id).await,
        store.find_workspace("acme").await,
    ] {
        assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    }
    assert_eq!(store.list_workspaces(page(1, 10)).await.unwrap().total, 1);
    assert!(store.list_members(ws.id).await.unwrap().is_empty());
    assert!(matches!(
        store.delete_workspace(ws.id, t(4), &event).await,
        Err(StoreError::NotFound)
    ));
    // Its audit log stays readable, with the deletion last.
    let log = store.list_audit_events(ws.id, page(1, 10)).await.unwrap();
    assert_eq!(log.items[0].action, "workspace.delete");
    // No key or member can be added to it any more.
    let late = key(ws.id, "late", t(5));
    let create = audit(ws.id, "key.create", "late", t(5));
    assert!(matches!(
        store
            .insert_key(&late, &secret_for(&late, t(5)), None, &create)
            .await,
        Err(StoreError::NotFound)
    ));
    let bob = member(ws.id, "bob", Role::Member);
    assert!(matches!(
        store
            .create_member(&bob, &audit(ws.id, "member.create", "b", t(5)))
            .await,
        Err(StoreError::NotFound)
    ));
    // Its name is free again.
    let again = create_workspace(&store, "acme").await;
    assert_eq!(store.find_workspace("acme").await.unwrap().id, again.id);
}

pub async fn the_last_owner_stays(store: DynStore) {
    let ws = create_workspace(&store, "acme").await;
    let alice = member(ws.id, "alice", Role::Owner);
    let bob = member(ws.id, "bob", Role::Admin);
    add(&store, &alice).await;
    add(&store, &bob).await;
    // Each change writes its own audit event (ids are unique).
    let event = || audit(ws.id, "member.update", "member:alice", t(2));

    let mut demoted = alice.clone();
    demoted.role = Role::Admin;
    assert!(matches!(
        store.update_member(&demoted, &event()).await,
        Err(StoreError::LastOwner)
    ));
    assert!(matches!(
        store.delete_member(ws.id, alice.id, &event()).await,
        Err(StoreError::LastOwner)
    ));
    // A password change of the last owner is fine.
    let mut changed = alice.clone();
    changed.password_hash = "$argon2id$other".into();
    store.update_member(&changed, &event()).await.unwrap();
    assert_eq!(
        store
            .find_member(ws.id, "alice")
            .await
            .unwrap()
            .password_hash,
        "$argon2id$other"
    );

    // With a second owner, either may go.
    let mut promoted = bob.clone();
    promoted.role = Role::Owner;
    store.update_member(&promoted, &event()).await.unwrap();
    store.update_member(&demoted, &event()).await.unwrap();
    store
        .delete_member(ws.id, alice.id, &event())
        .await
        .unwrap();
    assert_eq!(
        store.list_members(ws.id).await.unwrap()[0].role,
        Role::Owner
    );
    // A member that is not there is not found.
    assert!(matches!(
        store
            .update_member(&member(ws.id, "ghost", Role::Member), &event())
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn racing_removals_of_the_last_two_owners_leave_one(store: DynStore) {
    let ws = create_workspace(&store, "acme").await;
    let alice = member(ws.id, "alice", Role::Owner);
    let bob = member(ws.id, "bob", Role::Owner);
    add(&store, &alice).await;
    add(&store, &bob).await;
    let event = audit(ws.id, "member.delete", "member:x", t(2));
    let (a, b) = tokio::join!(
        store.delete_member(ws.id, alice.id, &event),
        store.delete_member(ws.id, bob.id, &event),
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert_eq!(store.list_members(ws.id).await.unwrap().len(), 1);
}

pub async fn audit_events_filter_and_find_key_sees_every_workspace(store: DynStore) {
    let one = create_workspace(&store, "one").await;
    let two = create_workspace(&store, "two").await;
    let mut event = audit(one.id, "key.update", "key:a", t(10));
    event.actor = "key:x".into();
    store.add_audit_event(&event).await.unwrap();
    store
        .add_audit_event(&audit(two.id, "key.update", "key:b", t(20)))
        .await
        .unwrap();

    let all = store
        .find_audit_events(&AuditFilter::default(), page(1, 50))
        .await
        .unwrap();
    assert!(all.total >= 4, "both workspaces' events: {all:?}");
    assert!(
        all.items.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first"
    );
    let by = |filter: AuditFilter| {
        let store = store.clone();
        async move { store.find_audit_events(&filter, page(1, 50)).await.unwrap() }
    };
    let found = by(AuditFilter {
        action: Some("key.update".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(found.total, 2);
    let found = by(AuditFilter {
        actor: Some("key:x".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(found.items, vec![event.clone()]);
    let found = by(AuditFilter {
        workspace_id: Some(two.id),
        target: Some("key:b".into()),
        from: Some(t(20)),
        to: Some(t(21)),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(found.total, 1);
    let found = by(AuditFilter {
        workspace_id: Some(two.id),
        to: Some(t(20)),
        action: Some("key.update".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(found.total, 0, "`to` is exclusive");

    let k = key(two.id, "k", t(1));
    insert(&store, &k).await;
    assert_eq!(store.find_key(k.id).await.unwrap().workspace_id, two.id);
    assert!(matches!(
        store.get_key(one.id, k.id).await,
        Err(StoreError::NotFound)
    ));
}
