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

#[path = "support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use keygate::{
    config::{ModelPrice, UpstreamConfig},
    keys::{input::NewKey, Caller, CallerRole, KeyKind},
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
        "`bash tests/python/ensure-venv.sh` failed ({}); the aiXplain SDK tests need the \
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
async fn aixplain_sdk_against_keygate() {
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
    let caller = Caller {
        workspace_id: workspace.id,
        actor: "test:aixplain_sdk".into(),
        source: None,
        role: CallerRole::Admin,
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

    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python/test_aixplain_sdk.py",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Nothing from the developer's environment may steer the SDKs elsewhere.
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("OPENAI_")
            || upper.starts_with("AIXPLAIN_")
            || upper.ends_with("_PROXY")
            || [
                "TEAM_API_KEY",
                "BACKEND_URL",
                "MODELS_RUN_URL",
                "PIPELINES_RUN_URL",
            ]
            .contains(&upper.as_str())
        {
            command.env_remove(&name);
        }
    }
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("AIXPLAIN_ALLOW_INSECURE_URLS", "1")
        .env("KEYGATE_AIX_URL", format!("http://{address}"))
        .env("KEYGATE_AIX_ADMIN_KEY", admin.secret.expose())
        .env("KEYGATE_AIX_ADMIN_KEY_ID", admin.key.id.to_string())
        .env("KEYGATE_AIX_INFERENCE_KEY", inference.secret.expose())
        .env("KEYGATE_AIX_INFERENCE_KEY_ID", inference.key.id.to_string());

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
        "the aiXplain SDK tests failed ({status})\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    match served {
        Ok(Ok(Ok(()))) => {}
        other => panic!("keygate did not shut down cleanly: {other:?}"),
    }
}
