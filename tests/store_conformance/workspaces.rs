//! Migrations, workspaces and members.

use keygate::store::{DynStore, Member, Role, StoreError, DEFAULT_WORKSPACE};
use uuid::Uuid;

use crate::harness::{audit, create_workspace, default_ws, page, t, usd, workspace, EmptyStore};

pub async fn fresh_database_reports_migrations_missing(EmptyStore(store): EmptyStore) {
    store.ping().await.unwrap();
    assert!(!store.migrations_applied().await.unwrap());
    store.migrate().await.unwrap();
    assert!(store.migrations_applied().await.unwrap());
}

pub async fn default_workspace_exists_after_migrate(store: DynStore) {
    let ws = store.default_workspace().await.unwrap();
    assert_eq!(ws.name, DEFAULT_WORKSPACE);
    assert_eq!(
        ws.id,
        Uuid::from_u128(1),
        "the default workspace has a fixed id"
    );
    assert_eq!(ws.key_cap, None);
    assert_eq!(ws.credits_usd, None);
    assert_eq!(ws.webhook_url, None);
    assert_eq!(store.get_workspace(ws.id).await.unwrap(), ws);
    assert_eq!(store.find_workspace(DEFAULT_WORKSPACE).await.unwrap(), ws);
    assert_eq!(
        store.list_workspaces(page(1, 10)).await.unwrap().items,
        vec![ws]
    );
}

pub async fn migrate_twice_is_idempotent(store: DynStore) {
    assert!(store.migrations_applied().await.unwrap());
    let before = store.default_workspace().await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.migrations_applied().await.unwrap());
    store.ping().await.unwrap();
    assert_eq!(
        store.list_workspaces(page(1, 10)).await.unwrap().items,
        vec![before]
    );
}

pub async fn workspaces_create_find_list_update(store: DynStore) {
    let default = store.default_workspace().await.unwrap();
    let mut ws = workspace("acme", t(10));
    ws.key_cap = Some(10);
    ws.credits_usd = Some(usd("12.50"));
    ws.webhook_url = Some("https://hooks.example.com/keygate".to_string());
    let event = audit(ws.id, "workspace.create", "workspace:acme", t(10));
    store.create_workspace(&ws, &event).await.unwrap();

    assert_eq!(store.get_workspace(ws.id).await.unwrap(), ws);
    assert_eq!(store.find_workspace("acme").await.unwrap(), ws);
    let all = store.list_workspaces(page(1, 10)).await.unwrap().items;
    assert_eq!(all.len(), 2);
    assert!(all.contains(&default) && all.contains(&ws));

    let mut changed = ws.clone();
    changed.name = "acme-corp".to_string();
    changed.key_cap = None;
    changed.credits_usd = Some(usd("0.1"));
    changed.webhook_url = None;
    changed.updated_at = t(20);
    let event = audit(ws.id, "workspace.update", "workspace:acme", t(20));
    store.update_workspace(&changed, &event).await.unwrap();
    let got = store.get_workspace(ws.id).await.unwrap();
    assert_eq!(got, changed);
    assert_eq!(
        got.credits_usd.unwrap().to_string(),
        "0.1",
        "credits are exact decimals"
    );
    assert!(matches!(
        store.find_workspace("acme").await,
        Err(StoreError::NotFound)
    ));

    let audit_log = store.list_audit_events(ws.id, page(1, 10)).await.unwrap();
    let actions: Vec<_> = audit_log.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["workspace.update", "workspace.create"]);

    assert!(matches!(
        store.get_workspace(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.find_workspace("nope").await,
        Err(StoreError::NotFound)
    ));
    let ghost = workspace("ghost", t(0));
    let event = audit(default.id, "workspace.update", "workspace:ghost", t(0));
    assert!(matches!(
        store.update_workspace(&ghost, &event).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn duplicate_workspace_name_is_a_conflict(store: DynStore) {
    let acme = create_workspace(&store, "acme").await;
    let dup = workspace("acme", t(1));
    let event = audit(dup.id, "workspace.create", "workspace:acme", t(1));
    match store.create_workspace(&dup, &event).await {
        Err(StoreError::Conflict { constraint }) => assert_eq!(constraint, "workspace_name"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.get_workspace(dup.id).await,
        Err(StoreError::NotFound)
    ));

    // Renaming onto an existing name is a conflict too.
    let mut renamed = acme.clone();
    renamed.name = DEFAULT_WORKSPACE.to_string();
    let event = audit(acme.id, "workspace.update", "workspace:acme", t(2));
    match store.update_workspace(&renamed, &event).await {
        Err(StoreError::Conflict { constraint }) => assert_eq!(constraint, "workspace_name"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get_workspace(acme.id).await.unwrap().name, "acme");
}

fn member(workspace_id: Uuid, username: &str, role: Role, secs: i64) -> Member {
    Member {
        id: Uuid::now_v7(),
        workspace_id,
        username: username.to_string(),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
        created_at: t(secs),
        updated_at: t(secs),
    }
}

pub async fn members_create_find_list_delete(store: DynStore) {
    let ws = default_ws(&store).await;
    let other = create_workspace(&store, "other").await;
    let alice = member(ws, "alice", Role::Owner, 1);
    let bob = member(ws, "bob", Role::Admin, 2);
    let carol = member(ws, "carol", Role::Member, 3);
    for m in [&alice, &bob, &carol] {
        let event = audit(
            ws,
            "member.create",
            &format!("member:{}", m.username),
            m.created_at,
        );
        store.create_member(m, &event).await.unwrap();
    }
    // The same username in another workspace is a different member.
    let alice_elsewhere = member(other.id, "alice", Role::Member, 4);
    let event = audit(other.id, "member.create", "member:alice", t(4));
    store.create_member(&alice_elsewhere, &event).await.unwrap();

    assert_eq!(store.find_member(ws, "alice").await.unwrap(), alice);
    assert_eq!(
        store.find_member(ws, "carol").await.unwrap().role,
        Role::Member
    );
    assert_eq!(
        store.find_member(other.id, "alice").await.unwrap(),
        alice_elsewhere
    );
    assert!(matches!(
        store.find_member(other.id, "bob").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.list_members(ws).await.unwrap(),
        vec![alice.clone(), bob.clone(), carol.clone()]
    );
    assert_eq!(
        store.list_members(other.id).await.unwrap(),
        vec![alice_elsewhere.clone()]
    );

    let event = audit(ws, "member.delete", "member:bob", t(5));
    // Deleting through the wrong workspace finds nothing.
    assert!(matches!(
        store.delete_member(other.id, bob.id, &event).await,
        Err(StoreError::NotFound)
    ));
    store.delete_member(ws, bob.id, &event).await.unwrap();
    assert!(matches!(
        store.find_member(ws, "bob").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_member(ws, bob.id, &event).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_members(ws).await.unwrap(), vec![alice, carol]);

    let log = store.list_audit_events(ws, page(1, 10)).await.unwrap();
    assert_eq!(log.total, 4);
    assert_eq!(log.items[0].action, "member.delete");
}

pub async fn duplicate_username_is_a_conflict(store: DynStore) {
    let ws = default_ws(&store).await;
    let first = member(ws, "alice", Role::Owner, 1);
    store
        .create_member(&first, &audit(ws, "member.create", "member:alice", t(1)))
        .await
        .unwrap();
    let second = member(ws, "alice", Role::Member, 2);
    match store
        .create_member(&second, &audit(ws, "member.create", "member:alice", t(2)))
        .await
    {
        Err(StoreError::Conflict { constraint }) => assert_eq!(constraint, "member_username"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.list_members(ws).await.unwrap(), vec![first]);
    // Nothing of the failed call was kept, not even its audit event.
    assert_eq!(
        store
            .list_audit_events(ws, page(1, 10))
            .await
            .unwrap()
            .total,
        1
    );
}

pub async fn default_workspace_survives_a_rename(store: DynStore) {
    let mut ws = store.default_workspace().await.unwrap();
    ws.name = "main".to_string();
    ws.key_cap = Some(25);
    ws.updated_at = t(5);
    let event = audit(ws.id, "workspace.update", "workspace:default", t(5));
    store.update_workspace(&ws, &event).await.unwrap();
    assert_eq!(store.default_workspace().await.unwrap(), ws);
    assert!(matches!(
        store.find_workspace(DEFAULT_WORKSPACE).await,
        Err(StoreError::NotFound)
    ));
}
