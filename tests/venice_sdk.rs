//! keygate's Venice-compatible key management driven by the real Venice SDK
//! (`venice-py` 2.9.0, `venice_ai`; shared/wire/venice.md).
//!
//! The test makes sure the virtualenv exists (`tests/python/ensure-venv.sh`), starts the
//! mock upstream and keygate in process (temp SQLite database, one wildcard upstream, a
//! priced model, the Web3 flow enabled), creates through the keys service the keys the
//! Python tests cannot make on the Venice surface (rate limits are not part of it), then
//! runs `pytest tests/python/test_venice_sdk.py` with the base URL and the keys in its
//! environment, and requires it to pass. The Python tests drive every `api_keys` method
//! with both `SyncVeniceClient` and `VeniceClient`, use the `openai` SDK for inference
//! through the proxy, `requests` for the native admin API and `eth_account` to sign Web3
//! tokens.
//!
//! Run with `cargo test --test venice_sdk -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use keygate::{
    keys::{
        input::NewKey,
        model::{Budget, BudgetPeriod, Limits, ModelLimits},
        KeyKind, KeyWithSecret,
    },
    store::{AuditEvent, Workspace},
    web3::TokenSigner,
};
use rust_decimal::Decimal;
use secrecy::SecretString;
use support::{
    app::{price, spawn_proxy_with},
    backends::Backend,
    pytest,
    sdk::{admin_caller, named, Suite},
    upstream::DEFAULT_MODEL,
};
use uuid::Uuid;

const WEB3_SECRET: &str = "venice sdk test secret, at least 32 characters";
const ACTOR: &str = "test:venice_sdk";

/// rpm 100, tpm 100 000, 50 requests a day of the mock model, a budget of 1 USD a day.
fn limited(name: &str) -> NewKey {
    NewKey {
        limits: Some(Limits {
            rpm: Some(100),
            tpm: Some(100_000),
            ..Limits::default()
        }),
        model_limits: Some(vec![ModelLimits {
            model: DEFAULT_MODEL.into(),
            rpm: None,
            rpd: Some(50),
            tpm: None,
            tpd: None,
            token_type: Default::default(),
        }]),
        budget: Some(Budget {
            limit_usd: Decimal::ONE,
            period: BudgetPeriod::Day,
        }),
        ..named(name)
    }
}

fn rpm1(name: &str) -> NewKey {
    NewKey {
        limits: Some(Limits {
            rpm: Some(1),
            ..Limits::default()
        }),
        ..named(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venice_sdk_against_keygate() {
    let python = pytest::ensure_venv().await;
    let app = spawn_proxy_with(Backend::Sqlite, |config| {
        // Expensive on purpose: one chat costs about 2 cents, so a balance visibly drops.
        config.models = vec![price(DEFAULT_MODEL, "1000", "2000")];
        config.keys.default_workspace_key_cap = None;
        config.web3.enabled = true;
        config.web3.token_secret = Some(SecretString::from(WEB3_SECRET.to_string()));
    })
    .await;

    let admin = admin_caller(app.workspace_id, ACTOR);
    let admin_key = app
        .create_key_as(
            &admin,
            NewKey {
                kind: Some(KeyKind::Admin),
                ..named("venice admin")
            },
        )
        .await;
    let limited_sync = app
        .create_key_as(&admin, limited("venice limited (sync)"))
        .await;
    let limited_async = app
        .create_key_as(&admin, limited("venice limited (async)"))
        .await;
    let rpm1_sync = app.create_key_as(&admin, rpm1("venice rpm=1 (sync)")).await;
    let rpm1_async = app
        .create_key_as(&admin, rpm1("venice rpm=1 (async)"))
        .await;

    // A workspace that allows two live keys, with its admin key (the first of the two).
    let now = keygate::clock::now();
    let capped = Workspace {
        id: Uuid::now_v7(),
        name: "venice capped".into(),
        key_cap: Some(2),
        credits_usd: None,
        webhook_url: None,
        webhook_secret: None,
        created_at: now,
        updated_at: now,
    };
    app.store()
        .create_workspace(
            &capped,
            &AuditEvent {
                id: Uuid::now_v7(),
                workspace_id: capped.id,
                actor: ACTOR.into(),
                action: "workspace.create".into(),
                target: format!("workspace:{}", capped.id),
                at: now,
                source: None,
                details: serde_json::json!({}),
            },
        )
        .await
        .expect("create the capped workspace");
    let capped_admin = app
        .create_key_as(
            &admin_caller(capped.id, ACTOR),
            NewKey {
                kind: Some(KeyKind::Admin),
                ..named("capped admin")
            },
        )
        .await;

    // A genuine token of this gateway that expired an hour ago.
    let (expired_token, _) = TokenSigner::from_secret(WEB3_SECRET.as_bytes()).issue(
        chrono::Utc::now() - chrono::Duration::hours(1),
        Duration::from_secs(60),
    );

    let secret = |k: &KeyWithSecret| k.secret.expose().to_string();
    let env = [
        ("KEYGATE_VENICE_URL", app.address.clone()),
        ("KEYGATE_VENICE_ADMIN_KEY", secret(&admin_key)),
        ("KEYGATE_VENICE_LIMITED_SYNC_KEY", secret(&limited_sync)),
        (
            "KEYGATE_VENICE_LIMITED_SYNC_ID",
            limited_sync.key.id.to_string(),
        ),
        ("KEYGATE_VENICE_LIMITED_ASYNC_KEY", secret(&limited_async)),
        (
            "KEYGATE_VENICE_LIMITED_ASYNC_ID",
            limited_async.key.id.to_string(),
        ),
        ("KEYGATE_VENICE_RPM1_SYNC_KEY", secret(&rpm1_sync)),
        ("KEYGATE_VENICE_RPM1_SYNC_ID", rpm1_sync.key.id.to_string()),
        ("KEYGATE_VENICE_RPM1_ASYNC_KEY", secret(&rpm1_async)),
        (
            "KEYGATE_VENICE_RPM1_ASYNC_ID",
            rpm1_async.key.id.to_string(),
        ),
        ("KEYGATE_VENICE_CAPPED_ADMIN_KEY", secret(&capped_admin)),
        ("KEYGATE_VENICE_EXPIRED_TOKEN", expired_token.clone()),
    ];
    let out = Suite {
        python: &python,
        file: "tests/python/test_venice_sdk.py",
        what: "the Venice SDK tests",
        steers_sdk: |upper| upper.starts_with("OPENAI_") || upper.starts_with("VENICE_"),
    }
    .run(app, &env)
    .await;
    assert!(
        out.contains(" passed") && !out.contains("skipped"),
        "pytest did not run every test:\n{out}"
    );
}
