//! What the real-SDK suites (`tests/venice_sdk.rs`, `aixplain_sdk.rs`, `python_clients.rs`,
//! `openapi_client.rs`) share: keygate in process on SQLite, the keys a suite needs made
//! through the keys service (for what its surface cannot make), and one pytest run,
//! judged after keygate has shut down (draining the requests in flight).

use std::path::Path;

use keygate::keys::{input::NewKey, Caller, CallerRole, KeyWithSecret};
use uuid::Uuid;

use super::{app::TestApp, pytest};

/// An admin of `workspace_id` for the keys service, named `actor` in the audit log.
pub fn admin_caller(workspace_id: Uuid, actor: &str) -> Caller {
    Caller {
        workspace_id,
        actor: actor.into(),
        source: None,
        role: CallerRole::Admin,
        reach: keygate::keys::Reach::Own,
    }
}

/// A key named `name` with nothing else set.
pub fn named(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        ..NewKey::default()
    }
}

impl TestApp {
    /// Creates a key through the keys service (as `caller`); panics naming the key.
    pub async fn create_key_as(&self, caller: &Caller, new: NewKey) -> KeyWithSecret {
        let name = new.name.clone();
        self.state
            .keys
            .create(caller, new)
            .await
            .unwrap_or_else(|e| panic!("cannot create key `{name}`: {e}"))
    }
}

/// One pytest file run against an app.
pub struct Suite<'a> {
    /// The virtualenv's python.
    pub python: &'a Path,
    /// `tests/python/….py`, from the repository root.
    pub file: &'a str,
    /// What the failure message calls it ("the Venice SDK tests").
    pub what: &'a str,
    /// Environment variables that could point the SDK elsewhere (given upper-cased); they
    /// are removed, as is every `*_PROXY`.
    pub steers_sdk: fn(&str) -> bool,
}

impl Suite<'_> {
    /// Runs the suite with `env`, shuts `app` down (draining the requests in flight), then
    /// requires the run to have passed and keygate to have stopped cleanly. Returns
    /// pytest's stdout.
    pub async fn run(&self, mut app: TestApp, env: &[(&str, String)]) -> String {
        let pytest::PytestRun { status, out, err } =
            pytest::run_pytest(self.python, self.file, self.steers_sdk, env).await;
        let served = app.stop().await;
        drop(app);
        assert!(
            status.success(),
            "{} failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
            self.what
        );
        if let Err(problem) = served {
            panic!("keygate did not shut down cleanly: {problem}");
        }
        out
    }
}
