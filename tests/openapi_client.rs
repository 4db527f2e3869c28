//! keygate driven by a client generated from its own `/openapi.json` (issue 13 §1 hole 9):
//! `openapi-python-client` generates a Python package from the served document at test
//! time, and `tests/openapi/test_generated_client.py` lists, creates, changes, rotates and
//! deletes keys with it. A document that lies (parameters in the wrong place, a missing
//! schema, a body shape the server does not send) breaks the generation or the calls.
//!
//! The virtualenv with the generator is `target/openapi-venv`
//! (`tests/python/ensure-venv.sh tests/openapi/requirements.txt …`), apart from the SDKs'.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{app::spawn_app, backends::Backend, pytest, sdk::Suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_python_client_manages_keys() {
    let python = pytest::ensure_openapi_venv().await;
    let app = spawn_app(Backend::Sqlite).await;
    let env = [
        ("KEYGATE_BASE_URL", app.address.clone()),
        ("KEYGATE_ADMIN_KEY", app.admin_key.clone()),
    ];
    Suite {
        python: &python,
        file: "tests/openapi/test_generated_client.py",
        what: "the generated-client tests",
        steers_sdk: |upper| upper.starts_with("KEYGATE_"),
    }
    .run(app, &env)
    .await;
}
