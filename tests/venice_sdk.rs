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

#[path = "support/pytest.rs"]
mod pytest;
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use keygate::{
    config::{ModelPrice, UpstreamConfig},
    keys::{
        input::NewKey,
        model::{Budget, BudgetPeriod, Limits, ModelLimits},
        Caller, CallerRole, KeyKind, KeyWithSecret,
    },
    store::{AuditEvent, Workspace},
    web3::TokenSigner,
    App, Config,
};
use rust_decimal::Decimal;
use secrecy::SecretString;
use support::upstream::{MockUpstream, DEFAULT_MODEL};
use tokio::sync::oneshot;
use uuid::Uuid;

const WEB3_SECRET: &str = "venice sdk test secret, at least 32 characters";

fn caller(workspace_id: Uuid) -> Caller {
    Caller {
        workspace_id,
        actor: "test:venice_sdk".into(),
        source: None,
        role: CallerRole::Admin,
        reach: keygate::keys::Reach::Own,
    }
}

/// rpm 100, tpm 100 000, 50 requests a day of the mock model, a budget of 1 USD a day.
fn limited(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
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
        ..NewKey::default()
    }
}

fn rpm1(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        limits: Some(Limits {
            rpm: Some(1),
            ..Limits::default()
        }),
        ..NewKey::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venice_sdk_against_keygate() {
    let python = pytest::ensure_venv().await;

    let mock = MockUpstream::start().await;
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", db_dir.path().join("keygate.db").display()),
        upstreams: vec![UpstreamConfig {
            name: "mock".into(),
            base_url: mock.base_url.clone(),
            api_key_env: None,
            models: vec!["*".into()],
            passthrough: vec![],
        }],
        // Expensive on purpose: one chat costs about 2 cents, so a balance visibly drops.
        models: vec![ModelPrice {
            name: DEFAULT_MODEL.into(),
            input_usd_per_mtok: Decimal::new(1000, 0),
            output_usd_per_mtok: Decimal::new(2000, 0),
        }],
        ..Config::default()
    };
    config.keys.default_workspace_key_cap = None;
    // The failure tests send refused keys from 127.0.0.1 on purpose.
    config.keys.failed_auth_per_minute = 100_000;
    config.web3.enabled = true;
    config.web3.token_secret = Some(SecretString::from(WEB3_SECRET.to_string()));

    let app = App::build(config).await.expect("keygate starts");
    let address = app.local_addr();
    let state = app.state().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    let workspace = state
        .store
        .default_workspace()
        .await
        .expect("the default workspace exists");
    let admin = caller(workspace.id);
    let create = |admin: Caller, new: NewKey| {
        let keys = state.keys.clone();
        async move {
            let name = new.name.clone();
            keys.create(&admin, new)
                .await
                .unwrap_or_else(|e| panic!("cannot create key `{name}`: {e}"))
        }
    };
    let admin_key = create(
        admin.clone(),
        NewKey {
            kind: Some(KeyKind::Admin),
            ..NewKey {
                name: "venice admin".into(),
                ..NewKey::default()
            }
        },
    )
    .await;
    let limited_sync = create(admin.clone(), limited("venice limited (sync)")).await;
    let limited_async = create(admin.clone(), limited("venice limited (async)")).await;
    let rpm1_sync = create(admin.clone(), rpm1("venice rpm=1 (sync)")).await;
    let rpm1_async = create(admin.clone(), rpm1("venice rpm=1 (async)")).await;

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
    state
        .store
        .create_workspace(
            &capped,
            &AuditEvent {
                id: Uuid::now_v7(),
                workspace_id: capped.id,
                actor: "test:venice_sdk".into(),
                action: "workspace.create".into(),
                target: format!("workspace:{}", capped.id),
                at: now,
                source: None,
                details: serde_json::json!({}),
            },
        )
        .await
        .expect("create the capped workspace");
    let capped_admin = create(
        caller(capped.id),
        NewKey {
            name: "capped admin".into(),
            kind: Some(KeyKind::Admin),
            ..NewKey::default()
        },
    )
    .await;

    // A genuine token of this gateway that expired an hour ago.
    let (expired_token, _) = TokenSigner::from_secret(WEB3_SECRET.as_bytes()).issue(
        chrono::Utc::now() - chrono::Duration::hours(1),
        Duration::from_secs(60),
    );

    let secret = |k: &KeyWithSecret| k.secret.expose().to_string();
    let run = pytest::run_pytest(
        &python,
        "tests/python/test_venice_sdk.py",
        |upper| upper.starts_with("OPENAI_") || upper.starts_with("VENICE_"),
        &[
            ("KEYGATE_VENICE_URL", format!("http://{address}")),
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
        ],
    )
    .await;
    let pytest::PytestRun { status, out, err } = run;

    // Shut keygate down (draining in-flight requests) before judging the run.
    let _ = stop_tx.send(());
    let served = tokio::time::timeout(Duration::from_secs(30), server).await;
    drop(mock);

    assert!(
        status.success(),
        "the Venice SDK tests failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    assert!(
        out.contains(" passed") && !out.contains("skipped"),
        "pytest did not run every test:\n{out}"
    );
    match served {
        Ok(Ok(Ok(()))) => {}
        other => panic!("keygate did not shut down cleanly: {other:?}"),
    }
}
