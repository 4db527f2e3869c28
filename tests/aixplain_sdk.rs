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

mod support;

use keygate::keys::{input::NewKey, KeyKind};
use support::{
    app::{price, spawn_proxy_with},
    backends::Backend,
    pytest,
    sdk::{admin_caller, named, Suite},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aixplain_sdk_against_keygate() {
    let python = pytest::ensure_venv().await;
    let app = spawn_proxy_with(Backend::Sqlite, |config| {
        config.models = vec![price("mock-model", "1", "2")];
        config.keys.default_workspace_key_cap = None;
    })
    .await;

    let caller = admin_caller(app.workspace_id, "test:aixplain_sdk");
    let admin = app
        .create_key_as(
            &caller,
            NewKey {
                kind: Some(KeyKind::Admin),
                ..named("aixplain admin")
            },
        )
        .await;
    let inference = app
        .create_key_as(&caller, named("aixplain inference"))
        .await;

    let env = [
        ("AIXPLAIN_ALLOW_INSECURE_URLS", "1".to_string()),
        ("KEYGATE_AIX_URL", app.address.clone()),
        ("KEYGATE_AIX_ADMIN_KEY", admin.secret.expose().to_string()),
        ("KEYGATE_AIX_ADMIN_KEY_ID", admin.key.id.to_string()),
        (
            "KEYGATE_AIX_INFERENCE_KEY",
            inference.secret.expose().to_string(),
        ),
        ("KEYGATE_AIX_INFERENCE_KEY_ID", inference.key.id.to_string()),
    ];
    Suite {
        python: &python,
        file: "tests/python/test_aixplain_sdk.py",
        what: "the aiXplain SDK tests",
        steers_sdk: |upper| {
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
    }
    .run(app, &env)
    .await;
}
