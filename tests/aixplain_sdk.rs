//! keygate's aiXplain-compatible key management driven by the real aiXplain SDK
//! (`aixplain` 0.2.48, v2 `APIKey`; shared/wire/aixplain.md).
//!
//! The test makes sure the virtualenv exists (`tests/python/ensure-venv.sh`), starts the
//! mock upstream and keygate in process (temp SQLite database, one wildcard upstream),
//! creates an admin key and an inference key through the keys service, then runs
//! `pytest tests/python/test_aixplain_sdk.py` with the base URL and the keys in its
//! environment, and requires it to pass. The Python tests use
//! `Aixplain(api_key=…, backend_url=http://127.0.0.1:PORT)` with
//! `AIXPLAIN_ALLOW_INSECURE_URLS=1`, the `openai` SDK for inference calls through the proxy,
//! and `httpx` for the native admin API.
//!
//! Run with `cargo test --test aixplain_sdk -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/pytest.rs"]
mod pytest;
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use keygate::{
    config::{ModelPrice, UpstreamConfig},
    keys::{input::NewKey, Caller, CallerRole, KeyKind},
    App, Config,
};
use rust_decimal::Decimal;
use support::upstream::MockUpstream;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aixplain_sdk_against_keygate() {
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
    let caller = Caller {
        workspace_id: workspace.id,
        actor: "test:aixplain_sdk".into(),
        source: None,
        role: CallerRole::Admin,
        reach: keygate::keys::Reach::Own,
    };
    let admin = state
        .keys
        .create(
            &caller,
            NewKey {
                name: "aixplain admin".into(),
                kind: Some(KeyKind::Admin),
                ..NewKey::default()
            },
        )
        .await
        .expect("create the admin key");
    let inference = state
        .keys
        .create(
            &caller,
            NewKey {
                name: "aixplain inference".into(),
                ..NewKey::default()
            },
        )
        .await
        .expect("create the inference key");

    let run = pytest::run_pytest(
        &python,
        "tests/python/test_aixplain_sdk.py",
        |upper| {
            upper.starts_with("OPENAI_")
                || upper.starts_with("AIXPLAIN_")
                || [
                    "TEAM_API_KEY",
                    "BACKEND_URL",
                    "MODELS_RUN_URL",
                    "PIPELINES_RUN_URL",
                ]
                .contains(&upper)
        },
        &[
            ("AIXPLAIN_ALLOW_INSECURE_URLS", "1".to_string()),
            ("KEYGATE_AIX_URL", format!("http://{address}")),
            ("KEYGATE_AIX_ADMIN_KEY", admin.secret.expose().to_string()),
            ("KEYGATE_AIX_ADMIN_KEY_ID", admin.key.id.to_string()),
            (
                "KEYGATE_AIX_INFERENCE_KEY",
                inference.secret.expose().to_string(),
            ),
            ("KEYGATE_AIX_INFERENCE_KEY_ID", inference.key.id.to_string()),
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
        "the aiXplain SDK tests failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    match served {
        Ok(Ok(Ok(()))) => {}
        other => panic!("keygate did not shut down cleanly: {other:?}"),
    }
}
