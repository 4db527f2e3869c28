//! keygate driven by the official `openai` Python SDK, as a real client of its
//! OpenAI-compatible proxy (DESIGN §4–5).
//!
//! The test makes sure the virtualenv exists (`tests/python/ensure-venv.sh`), starts the
//! mock upstream and keygate in process (temp SQLite database, one wildcard upstream),
//! creates the keys the Python tests need through the keys service, then runs
//! `pytest tests/python/test_openai_client.py` with the base URL and the keys in its
//! environment, and requires it to pass: once through each front door
//! (`http.fast_path` on and off). The same for the official `anthropic` SDK against
//! `/v1/messages` (`tests/python/test_anthropic_sdk.py`), the mock as an Anthropic upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keygate::{
    config::{UpstreamConfig, UpstreamKind},
    keys::{
        input::NewKey,
        model::{Budget, BudgetPeriod, Limits},
        KeyKind,
    },
};
use rust_decimal::Decimal;
use support::{
    app::{price, spawn_proxy_with},
    backends::{Backend, FrontDoor, Setup},
    pytest,
    sdk::{admin_caller, named, Suite},
};

fn rpm(limit: u64) -> Option<Limits> {
    Some(Limits {
        rpm: Some(limit),
        ..Limits::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_keygate_on_the_fast_path() {
    openai_python_sdk_against_keygate(FrontDoor::Fast).await
}

/// The same suite with `http.fast_path = false`: every request through hyper and the
/// router, which must answer the SDK exactly as the fast path does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_keygate_through_the_router() {
    openai_python_sdk_against_keygate(FrontDoor::Router).await
}

async fn openai_python_sdk_against_keygate(door: FrontDoor) {
    let python = pytest::ensure_venv().await;
    let setup = Setup {
        backend: Backend::Sqlite,
        door,
    };
    let app = spawn_proxy_with(setup, |config| {
        config.models = vec![price("mock-model", "1", "2")];
        config.keys.default_workspace_key_cap = None;
    })
    .await;

    let admin = admin_caller(app.workspace_id, "test:python_clients");
    let plain = app.create_key_as(&admin, named("python plain")).await;
    let rpm_headers = app
        .create_key_as(
            &admin,
            NewKey {
                limits: rpm(1),
                ..named("python rpm=1 (headers)")
            },
        )
        .await;
    let rpm_refused = app
        .create_key_as(
            &admin,
            NewKey {
                limits: rpm(1),
                ..named("python rpm=1 (429)")
            },
        )
        .await;
    let budget_zero = app
        .create_key_as(
            &admin,
            NewKey {
                budget: Some(Budget {
                    limit_usd: Decimal::ZERO,
                    period: BudgetPeriod::Month,
                }),
                ..named("python budget 0")
            },
        )
        .await;
    let allowed = app
        .create_key_as(
            &admin,
            NewKey {
                allowed_models: Some(vec!["mock-model".into()]),
                ..named("python allowed_models")
            },
        )
        .await;
    let admin_key = app
        .create_key_as(
            &admin,
            NewKey {
                kind: Some(KeyKind::Admin),
                ..named("python admin")
            },
        )
        .await;
    let revoked = app.create_key_as(&admin, named("python revoked")).await;
    app.state
        .keys
        .revoke(&admin, revoked.key.id)
        .await
        .expect("the key is revoked");

    let env = [
        ("KEYGATE_BASE_URL", format!("{}/v1", app.address)),
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
    ];
    Suite {
        python: &python,
        file: "tests/python/test_openai_client.py",
        what: "the openai SDK tests",
        steers_sdk: |upper| upper.starts_with("OPENAI_") || upper.starts_with("AZURE_OPENAI"),
    }
    .run(app, &env)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_against_keygate_on_the_fast_path() {
    anthropic_python_sdk_against_keygate(FrontDoor::Fast).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_against_keygate_through_the_router() {
    anthropic_python_sdk_against_keygate(FrontDoor::Router).await
}

/// `tests/python/test_anthropic_sdk.py`: the official `anthropic` SDK against
/// `/v1/messages`, the mock as an Anthropic upstream of two models.
async fn anthropic_python_sdk_against_keygate(door: FrontDoor) {
    let python = pytest::ensure_venv().await;
    let setup = Setup {
        backend: Backend::Sqlite,
        door,
    };
    let app = spawn_proxy_with(setup, |config| {
        let url = config.upstreams[0].base_url.clone();
        config.upstreams = vec![UpstreamConfig {
            kind: UpstreamKind::Anthropic,
            ..UpstreamConfig::new("claude", &url, &["mock-model", "mock-cached"])
        }];
        config.models = vec![price("mock-model", "3", "15")];
    })
    .await;
    let admin = admin_caller(app.workspace_id, "test:python_clients");
    let plain = app.create_key_as(&admin, named("anthropic plain")).await;
    let rpm_refused = app
        .create_key_as(
            &admin,
            NewKey {
                limits: rpm(1),
                ..named("anthropic rpm=1 (429)")
            },
        )
        .await;
    let env = [
        // As `ANTHROPIC_BASE_URL` is given: the SDK adds `/v1/messages`.
        ("KEYGATE_ANTHROPIC_BASE_URL", app.address.clone()),
        ("KEYGATE_KEY", plain.secret.expose().to_string()),
        (
            "KEYGATE_RPM1_REFUSED_KEY",
            rpm_refused.secret.expose().to_string(),
        ),
    ];
    Suite {
        python: &python,
        file: "tests/python/test_anthropic_sdk.py",
        what: "the anthropic SDK tests",
        steers_sdk: |upper| upper.starts_with("ANTHROPIC_"),
    }
    .run(app, &env)
    .await;
}
