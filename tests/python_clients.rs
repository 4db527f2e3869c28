//! keygate driven by the official `openai` Python SDK, as a real client of its
//! OpenAI-compatible proxy (DESIGN §4–5).
//!
//! The test makes sure the virtualenv exists (`tests/python/ensure-venv.sh`), starts the
//! mock upstream and keygate in process (temp SQLite database, one wildcard upstream),
//! creates the keys the Python tests need through the keys service, then runs
//! `pytest tests/python/test_openai_client.py` with the base URL and the keys in its
//! environment, and requires it to pass: once through each front door
//! (`http.fast_path` on and off).

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
        model::{Budget, BudgetPeriod, Limits},
        Caller, CallerRole, KeyKind,
    },
    App, Config,
};
use rust_decimal::Decimal;
use support::upstream::MockUpstream;
use tokio::sync::oneshot;

fn caller(workspace_id: uuid::Uuid) -> Caller {
    Caller {
        workspace_id,
        actor: "test:python_clients".into(),
        source: None,
        role: CallerRole::Admin,
        reach: keygate::keys::Reach::Own,
    }
}

fn named(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..NewKey::default()
    }
}

fn rpm(limit: u64) -> Option<Limits> {
    Some(Limits {
        rpm: Some(limit),
        ..Limits::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_keygate_on_the_fast_path() {
    openai_python_sdk_against_keygate(true).await
}

/// The same suite with `http.fast_path = false`: every request through hyper and the
/// router, which must answer the SDK exactly as the fast path does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_keygate_through_the_router() {
    openai_python_sdk_against_keygate(false).await
}

async fn openai_python_sdk_against_keygate(fast_path: bool) {
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
        models: vec![ModelPrice {
            name: "mock-model".into(),
            input_usd_per_mtok: Decimal::new(1, 0),
            output_usd_per_mtok: Decimal::new(2, 0),
        }],
        ..Config::default()
    };
    config.keys.default_workspace_key_cap = None;
    config.http.fast_path = fast_path;

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
    let create = |new: NewKey| {
        let keys = state.keys.clone();
        let admin = admin.clone();
        async move {
            let name = new.name.clone();
            keys.create(&admin, new)
                .await
                .unwrap_or_else(|e| panic!("cannot create key `{name}`: {e}"))
        }
    };

    let plain = create(named("python plain")).await;
    let rpm_headers = create(NewKey {
        limits: rpm(1),
        ..named("python rpm=1 (headers)")
    })
    .await;
    let rpm_refused = create(NewKey {
        limits: rpm(1),
        ..named("python rpm=1 (429)")
    })
    .await;
    let budget_zero = create(NewKey {
        budget: Some(Budget {
            limit_usd: Decimal::ZERO,
            period: BudgetPeriod::Month,
        }),
        ..named("python budget 0")
    })
    .await;
    let allowed = create(NewKey {
        allowed_models: Some(vec!["mock-model".into()]),
        ..named("python allowed_models")
    })
    .await;
    let admin_key = create(NewKey {
        kind: Some(KeyKind::Admin),
        ..named("python admin")
    })
    .await;
    let revoked = create(named("python revoked")).await;
    state
        .keys
        .revoke(&admin, revoked.key.id)
        .await
        .expect("the key is revoked");

    let run = pytest::run_pytest(
        &python,
        "tests/python/test_openai_client.py",
        |upper| upper.starts_with("OPENAI_") || upper.starts_with("AZURE_OPENAI"),
        &[
            ("KEYGATE_BASE_URL", format!("http://{address}/v1")),
            ("KEYGATE_KEY", plain.secret.expose().to_string()),
            ("KEYGATE_RPM1_KEY", rpm_headers.secret.expose().to_string()),
            (
                "KEYGATE_RPM1_REFUSED_KEY",
                rpm_refused.secret.expose().to_string(),
            ),
            (
                "KEYGATE_BUDGET0_KEY",
                budget_zero.secret.expose().to_string(),
            ),
            ("KEYGATE_ALLOWED_KEY", allowed.secret.expose().to_string()),
            ("KEYGATE_ADMIN_KEY", admin_key.secret.expose().to_string()),
            ("KEYGATE_REVOKED_KEY", revoked.secret.expose().to_string()),
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
        "the openai SDK tests failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    match served {
        Ok(Ok(Ok(()))) => {}
        other => panic!("keygate did not shut down cleanly: {other:?}"),
    }
}
