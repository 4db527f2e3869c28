//! keygate driven by a client generated from its own `/openapi.json` (issue 13 §1 hole 9):
//! `openapi-python-client` generates a Python package from the served document at test
//! time, and `tests/openapi/test_generated_client.py` lists, creates, changes, rotates and
//! deletes keys with it. A document that lies (parameters in the wrong place, a missing
//! schema, a body shape the server does not send) breaks the generation or the calls.
//!
//! The virtualenv with the generator is `target/openapi-venv`
//! (`tests/python/ensure-venv.sh tests/openapi/requirements.txt …`), apart from the SDKs'.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/pytest.rs"]
mod pytest;

use std::time::Duration;

use keygate::{keys::token::Token, App, Config};
use secrecy::SecretString;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_python_client_manages_keys() {
    let python = pytest::ensure_openapi_venv().await;

    let db_dir = tempfile::tempdir().unwrap();
    let admin_key = Token::generate().expose().to_string();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", db_dir.path().join("keygate.db").display()),
        bootstrap_admin_key: Some(SecretString::from(admin_key.clone())),
        ..Config::default()
    };
    let app = App::build(config).await.expect("keygate starts");
    let address = app.local_addr();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));

    let pytest::PytestRun { status, out, err } = pytest::run_pytest(
        &python,
        "tests/openapi/test_generated_client.py",
        |upper| upper.starts_with("KEYGATE_"),
        &[
            ("KEYGATE_BASE_URL", format!("http://{address}")),
            ("KEYGATE_ADMIN_KEY", admin_key),
        ],
    )
    .await;

    let _ = stop_tx.send(());
    let served = tokio::time::timeout(Duration::from_secs(30), server).await;
    assert!(
        status.success(),
        "the generated-client tests failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    match served {
        Ok(Ok(Ok(()))) => {}
        other => panic!("keygate did not shut down cleanly: {other:?}"),
    }
}
