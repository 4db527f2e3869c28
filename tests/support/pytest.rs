//! Running one of `tests/python/*.py` with the real client SDKs against a running keygate:
//! the virtualenv from `tests/python/ensure-venv.sh`, a pytest child with a clean
//! environment, its output shown live (`--nocapture`) and collected for the assertion.
//! Included by the SDK runner test binaries only (`#[path = "support/pytest.rs"]`).

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
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

/// Runs `tests/python/ensure-venv.sh` and returns the venv's python; a failure fails the
/// test (never a skip).
#[allow(dead_code)] // each runner binary uses one of the two virtualenvs
pub async fn ensure_venv() -> PathBuf {
    let root = repo_root();
    ensure_venv_from(&[], venv_dir(&root)).await
}

/// The OpenAPI tools' own virtualenv (`tests/openapi/requirements.txt`, in
/// `target/openapi-venv`), apart from the SDKs' so their pins never meet.
#[allow(dead_code)] // each runner binary uses one of the two virtualenvs
pub async fn ensure_openapi_venv() -> PathBuf {
    let root = repo_root();
    let venv = root.join("target").join("openapi-venv");
    let venv_arg = venv.to_string_lossy().into_owned();
    ensure_venv_from(&["tests/openapi/requirements.txt", &venv_arg], venv).await
}

/// `bash tests/python/ensure-venv.sh ARGS…`, then the python of `venv`.
async fn ensure_venv_from(args: &[&str], venv: PathBuf) -> PathBuf {
    let root = repo_root();
    let output = Command::new("bash")
        .arg("tests/python/ensure-venv.sh")
        .args(args)
        .current_dir(&root)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `bash tests/python/ensure-venv.sh`: {e}"));
    assert!(
        output.status.success(),
        "`bash tests/python/ensure-venv.sh {}` failed ({}); the Python-driven tests need their \
         virtualenv (python3 with venv, and access to PyPI the first time).\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "ensure-venv.sh succeeded but {} does not exist",
        python.display()
    );
    python
}

/// Copies one output stream of the child to stderr line by line and returns all of it.
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

pub struct PytestRun {
    pub status: ExitStatus,
    pub out: String,
    pub err: String,
}

/// Runs `python -m pytest -q <test_file>` from the repository root with `env` set.
/// Variables for which `steers_sdk` (given the upper-cased name) is true, and every
/// `*_PROXY`, are removed first, so nothing from the developer's environment can point
/// the SDK elsewhere.
pub async fn run_pytest(
    python: &Path,
    test_file: &str,
    steers_sdk: impl Fn(&str) -> bool,
    env: &[(&str, String)],
) -> PytestRun {
    let mut command = Command::new(python);
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", test_file])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.ends_with("_PROXY") || steers_sdk(&upper) {
            command.env_remove(&name);
        }
    }
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} -m pytest: {e}", python.display()));
    let stdout = tokio::spawn(pump(child.stdout.take().expect("piped stdout"), "out"));
    let stderr = tokio::spawn(pump(child.stderr.take().expect("piped stderr"), "err"));
    let status = match tokio::time::timeout(PYTEST_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("wait for pytest"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("pytest did not finish within {PYTEST_TIMEOUT:?}");
        }
    };
    PytestRun {
        status,
        out: stdout.await.unwrap_or_default(),
        err: stderr.await.unwrap_or_default(),
    }
}
