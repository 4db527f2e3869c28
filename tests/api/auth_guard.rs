//! The failed-attempt guard (DESIGN §8) throttles guessing, never keys this instance has
//! already verified: a script that keeps sending a revoked or mangled key from an office's
//! one address must not lock everyone behind that address out. Tested on both front doors:
//! the admin API (router) and `/v1/chat/completions` (fast path).

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keygate::keys::Token;
use reqwest::StatusCode;

use crate::helpers::{spawn_app_with, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        a_bad_script_cannot_lock_out_admin_keys,
        guessing_is_throttled_but_verified_admin_keys_pass,
    ],
}

/// A key whose shape is wrong ("Bearer undefined" from a script whose variable is unset):
/// refused before any store read or argon2 run.
const MANGLED: &str = "undefined";

/// Long enough for every cache entry of the test's apps (`cache_ttl_ms = 50`) to be due for
/// a re-read.
const PAST_TTL: Duration = Duration::from_millis(150);

async fn a_bad_script_cannot_lock_out_admin_keys(backend: Backend) {
    // Arrange: 3 failed attempts a minute per address; verified keys are re-read after 50 ms.
    let app = spawn_app_with(backend, |config| {
        config.keys.failed_auth_per_minute = 3;
        config.keys.cache_ttl_ms = 50;
    })
    .await;
    let (_, colleague) = app.create_admin_key("colleague").await;
    let (old_id, old) = app.create_admin_key("old script").await;
    assert_eq!(app.admin_status_of(&old).await, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/admin/v1/keys/{old_id}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    // Act: one script keeps using the revoked key, another a mangled one, 10 times each.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(app.admin_status_of(&old).await);
        statuses.push(app.admin_status_of(MANGLED).await);
    }
    tokio::time::sleep(PAST_TTL).await;

    // Assert: each is told its key is bad, none is throttled (they cost no guessing), and
    // the address is not blocked: the bootstrap key (verified, due for a re-read) and a
    // colleague's key this instance has never seen both get in.
    assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 20].to_vec());
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
    assert_eq!(app.admin_status_of(&colleague).await, StatusCode::OK);
}

async fn guessing_is_throttled_but_verified_admin_keys_pass(backend: Backend) {
    // Arrange
    let app = spawn_app_with(backend, |config| {
        config.keys.failed_auth_per_minute = 3;
        config.keys.cache_ttl_ms = 50;
    })
    .await;
    let (_, unseen) = app.create_admin_key("never used here").await;

    // Act: keys that reach the store (well-formed, unknown) from one address.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let guess = Token::generate().expose().to_string();
        statuses.push(app.admin_status_of(&guess).await);
    }
    tokio::time::sleep(PAST_TTL).await;

    // Assert: the fourth guess is throttled, and so is a key that would cost an argon2 run;
    // the bootstrap key, verified before and due for a re-read, is not.
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
        .to_vec()
    );
    assert_eq!(
        app.admin_status_of(&app.admin_key.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        app.admin_status_of(&unseen).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// `/v1/chat/completions` with a `Content-Length` body, through both front doors.
mod inference {
    use reqwest::StatusCode;

    use super::{MANGLED, PAST_TTL};
    use crate::proxy_helpers::{chat_body, spawn_proxy_with, support::upstream as mock, Setup};
    use crate::support::backends::backend_tests;

    backend_tests! {
        doors: both,
        flavor: by_backend,
        both: [a_bad_script_cannot_lock_out_inference_keys],
        sqlite: [],
    }

    async fn a_bad_script_cannot_lock_out_inference_keys(setup: Setup) {
        // Arrange
        let app = spawn_proxy_with(setup, |config| {
            config.keys.failed_auth_per_minute = 3;
            config.keys.cache_ttl_ms = 50;
        })
        .await;
        let body = chat_body(mock::DEFAULT_MODEL, "hi", None);
        let verified = app.plain_key().await;
        app.chat_ok(&verified.secret, &body).await;
        let colleague = app.plain_key().await;
        let old = app.plain_key().await;
        app.chat_ok(&old.secret, &body).await;
        assert_eq!(
            app.admin_delete(&format!("/admin/v1/keys/{}", old.id))
                .await,
            StatusCode::NO_CONTENT
        );

        // Act
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(app.chat(&old.secret, &body).await.status());
            statuses.push(app.chat(MANGLED, &body).await.status());
        }
        tokio::time::sleep(PAST_TTL).await;

        // Assert
        assert_eq!(statuses, [StatusCode::UNAUTHORIZED; 20].to_vec());
        app.chat_ok(&verified.secret, &body).await;
        app.chat_ok(&colleague.secret, &body).await;
    }
}
