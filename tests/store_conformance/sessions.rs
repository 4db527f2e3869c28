//! Console sessions (issue 15 §4): stored with their sign-in audit event, used (and kept
//! alive) only while not idle, dropped when stale or signed out.

use keygate::store::{AuditFilter, ConsoleSession, DynStore, StoreError};

use crate::harness::{audit, default_ws, page, t};

fn session(id: &str, workspace_id: uuid::Uuid, seen: i64) -> ConsoleSession {
    ConsoleSession {
        id: id.to_string(),
        workspace_id,
        principal: "member:alice".to_string(),
        csrf_token: format!("csrf-{id}"),
        created_at: t(seen),
        last_seen_at: t(seen),
    }
}

pub async fn console_sessions_live_while_used_and_end_when_idle_or_deleted(store: DynStore) {
    let ws = default_ws(&store).await;
    let first = session("digest-1", ws, 1);
    let sign_in = audit(ws, "member.sign_in", "member:alice", t(1));
    store
        .create_console_session(&first, &sign_in, t(0))
        .await
        .unwrap();

    // Used: the same session back, seen now.
    let used = store
        .use_console_session("digest-1", t(0), t(5))
        .await
        .unwrap();
    assert_eq!(
        used,
        ConsoleSession {
            last_seen_at: t(5),
            ..first.clone()
        }
    );
    // The sign-in is audited with it.
    let filter = AuditFilter {
        action: Some("member.sign_in".into()),
        ..AuditFilter::default()
    };
    assert_eq!(
        store
            .find_audit_events(&filter, page(1, 10))
            .await
            .unwrap()
            .total,
        1
    );
    // Idle since t(5): refused at a cutoff after that, and unknown ids are not found.
    assert!(matches!(
        store.use_console_session("digest-1", t(6), t(7)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.use_console_session("nope", t(0), t(7)).await,
        Err(StoreError::NotFound)
    ));

    // A new session drops the stale ones.
    let second = session("digest-2", ws, 100);
    store
        .create_console_session(
            &second,
            &audit(ws, "member.sign_in", "member:alice", t(100)),
            t(50),
        )
        .await
        .unwrap();
    assert!(matches!(
        store.use_console_session("digest-1", t(0), t(101)).await,
        Err(StoreError::NotFound)
    ));

    // Sign-out deletes it.
    store
        .use_console_session("digest-2", t(0), t(101))
        .await
        .unwrap();
    store.delete_console_session("digest-2").await.unwrap();
    assert!(matches!(
        store.use_console_session("digest-2", t(0), t(102)).await,
        Err(StoreError::NotFound)
    ));
}
