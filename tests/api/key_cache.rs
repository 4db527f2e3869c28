//! The key cache (DESIGN §8): keys in steady use are re-read ahead of their expiry, all
//! together and off their requests' path, so a request never waits on a store read for a
//! key this instance knows; a change made behind the cache's back (no change notice) still
//! takes effect within the TTL.

use std::time::{Duration, Instant};

use keygate::store::{AuditEvent, LastAdmin};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::proxy_helpers::{chat_body, spawn_proxy_with, support::upstream as mock, Setup};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [a_key_in_steady_use_is_re_read_ahead_and_still_sees_changes],
}

/// Long enough that a loaded machine's stalls fit in the quarter TTL a check has to spare
/// (a pass every 500 ms renews what is 1 s old, before it expires at 2 s).
const TTL: Duration = Duration::from_secs(2);

async fn a_key_in_steady_use_is_re_read_ahead_and_still_sees_changes(setup: Setup) {
    // Arrange: no change notices, so only re-reads can see a change made elsewhere; a key
    // verified once.
    let app = spawn_proxy_with(setup, |config| {
        config.keys.cache_ttl_ms = TTL.as_millis() as u64;
        config.keys.listen_for_changes = false;
    })
    .await;
    let key = app.plain_key().await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
    app.chat_ok(&key.secret, &body).await;
    let cache = app.state.keys.cache();
    let before = cache.stats();

    // Act: three TTLs of steady use, a request every 40 ms.
    let mut sent = 0;
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert_eq!(app.chat(&key.secret, &body).await.status(), StatusCode::OK);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    // Assert: every one was answered from memory: not one read the store on its way.
    let after = cache.stats();
    assert_eq!(after.misses - before.misses, 0, "of {sent} requests");
    assert_eq!(after.hits - before.hits, sent);

    // Act: the key is revoked behind the cache's back (in the store, unannounced).
    let key_id: Uuid = key.id.parse().unwrap();
    let now = keygate::clock::now();
    let event = AuditEvent {
        id: Uuid::now_v7(),
        workspace_id: app.workspace_id,
        actor: "test".into(),
        action: "key.revoke".into(),
        target: format!("key:{key_id}"),
        at: now,
        source: None,
        details: json!({}),
    };
    app.store()
        .revoke_key(app.workspace_id, key_id, now, &event, LastAdmin::MayGo)
        .await
        .unwrap();
    let revoked = Instant::now();

    // Assert: still in steady use, it is refused within the TTL (and a margin for a loaded
    // machine), as it was before keys were re-read ahead.
    loop {
        let status = app.chat(&key.secret, &body).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked.elapsed() < TTL * 3,
            "still served {:?} after its revocation",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
