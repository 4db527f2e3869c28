//! keygate driven by the official `openai` Python SDK, as a real client of its
//! OpenAI-compatible proxy (DESIGN §4–5).
//!
//! The test makes sure the virtualenv exists (`tests/python/ensure-venv.sh`), starts the
//! mock upstream and keygate in process (temp SQLite database, one wildcard upstream),
//! creates the keys the Python tests need through the keys service, then runs
//! `pytest tests/python/test_openai_client.py` with the base URL and the keys in its
//! environment, and requires it to pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

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
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
    sync::oneshot,
};

/// The whole pytest run may not take longer than this.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv `ensure-venv.sh` creates (it honours `KEYGATE_TEST_VENV` too).
fn venv_dir(root: &Path) -> PathBuf {
    std::env::var_os("KEYGATE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("py-venv"))
}

/// Runs `tests/python/ensure-venv.sh`; a failure fails the test (never a skip).
async fn ensure_venv(root: &Path) -> PathBuf {
    let output = Command::new("bash")
        .arg("tests/python/ensure-venv.sh")
        .current_dir(root)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `bash tests/python/ensure-venv.sh`: {e}"));
    assert!(
        output.status.success(),
        "`bash tests/python/ensure-venv.sh` failed ({}); the Python client tests need the \
         virtualenv with the SDKs of tests/python/requirements.txt (python3 with venv, and \
         access to PyPI the first time).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let python = venv_dir(root).join("bin").join("python");
    assert!(
        python.exists(),
        "ensure-venv.sh succeeded but {} does not exist",
        python.display()
    );
    python
}

fn caller(workspace_id: uuid::Uuid) -> Caller {
    Caller {
        workspace_id,
        actor: "test:python_clients".into(),
        source: None,
        role: CallerRole::Admin,
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

/// Copies one output stream of the child to stderr line by line (so `--nocapture` shows
/// it live) and returns everything it read.
async fn pump(stream: impl AsyncRead + Unpin, label: &'static str) -> String {
    let mut lines = BufReader::new(stream).lines();
    let mut all = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[pytest {label}] {line}");
        all.push_str(&line);
        all.push('\n');
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_against_keygate() {
    let root = repo_root();
    let python = ensure_venv(&root).await;

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

    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python/test_openai_client.py",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Nothing from the developer's environment may steer the SDK elsewhere.
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("OPENAI_")
            || upper.starts_with("AZURE_OPENAI")
            || upper.ends_with("_PROXY")
        {
            command.env_remove(&name);
        }
    }
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("KEYGATE_BASE_URL", format!("http://{address}/v1"))
        .env("KEYGATE_KEY", plain.secret.expose())
        .env("KEYGATE_RPM1_KEY", rpm_headers.secret.expose())
        .env("KEYGATE_RPM1_REFUSED_KEY", rpm_refused.secret.expose())
        .env("KEYGATE_BUDGET0_KEY", budget_zero.secret.expose())
        .env("KEYGATE_ALLOWED_KEY", allowed.secret.expose())
        .env("KEYGATE_ADMIN_KEY", admin_key.secret.expose())
        .env("KEYGATE_REVOKED_KEY", revoked.secret.expose());

    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} -m pytest: {e}", python.display()));
    let stdout = tokio::spawn(pump(child.stdout.take().unwrap(), "out"));
    let stderr = tokio::spawn(pump(child.stderr.take().unwrap(), "err"));
    let status = match tokio::time::timeout(PYTEST_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("wait for pytest"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("pytest did not finish within {PYTEST_TIMEOUT:?}");
        }
    };
    let out = stdout.await.unwrap_or_default();
    let err = stderr.await.unwrap_or_default();

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
