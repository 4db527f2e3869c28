//! Shared fixtures: a fresh database per test (a SQLite file in a temp dir, or a new
//! PostgreSQL database), `spawn_app` (the real router on 127.0.0.1:0, in process), request
//! helpers, and a runner for the real `keygate` binary.
//!
//! Every test body takes a `Backend` and is run once per backend by `both_backends!`.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keygate::{
    keys::{
        input::NewKey,
        token::{Token, TOKEN_LEN},
        Caller, CallerRole, KeyKind,
    },
    state::AppState,
    store::{AuditEvent, DynStore, Page, Workspace},
    App, Config,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
};
use uuid::Uuid;

/// Generates `sqlite::<name>` and `postgres::<name>` tests from `async fn <name>(Backend)`
/// bodies defined in the invoking module.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use both_backends;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

// ---------------------------------------------------------------------------------------
// databases

/// Server-level PostgreSQL URL used to create and drop the per-test databases.
pub fn pg_admin_url() -> String {
    std::env::var("KEYGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database nobody else uses. SQLite: a file in a temp dir that goes with it.
/// PostgreSQL: `kg_api_<uuid>`, dropped (with force) when this value is dropped.
pub struct TestDb {
    pub url: String,
    /// Holds the SQLite file (and the CLI's config files) for as long as the test runs.
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("keygate.db");
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("kg_api_{}", Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::raw_sql(&format!("create database \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("KEYGATE_TEST_PG_URL is a URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// The SQLite database file and its WAL/SHM companions (whichever exist).
    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .expect("read temp dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("keygate.db"))
            })
            .collect()
    }

    /// Writes a config file naming this database and returns its path.
    pub fn config_file(&self) -> PathBuf {
        let path = self.dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            format!("database_url = {}\n", toml_string(&self.url)),
        )
        .expect("write config file");
        path
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop may run inside the test's runtime; do the async work on a thread of its own.
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::raw_sql(&format!("drop database if exists \"{name}\" with (force)"))
                            .execute(&mut conn)
                            .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------
// in-process server

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// The bootstrap admin key of the `default` workspace.
    pub admin_key: String,
    pub admin_key_id: Uuid,
    /// The `default` workspace.
    pub workspace_id: Uuid,
    pub client: reqwest::Client,
    pub db_url: String,
    pub backend: Backend,
    /// The server's own state (same store, key service and cache as the handlers use).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    // Last: the database goes after everything that uses it.
    pub db: TestDb,
}

/// The configuration every in-process test server starts from.
pub fn test_config(db_url: &str) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("socket address"),
        database_url: db_url.to_string(),
        bootstrap_admin_key: Some(SecretString::from(Token::generate().expose().to_string())),
        ..Config::default()
    };
    // The bad-input tests send many refused keys from 127.0.0.1; the per-address limit on
    // failed attempts has its own test.
    config.keys.failed_auth_per_minute = 100_000;
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// `spawn_app` with a chance to change the configuration first.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db.url);
    configure(&mut config);
    let admin_key = config
        .bootstrap_admin_key
        .as_ref()
        .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string())
        .expect("tests always install a bootstrap key");

    let app = App::build(config).await.expect("the app builds");
    let address = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));

    let token = Token::parse(&admin_key).expect("bootstrap key parses");
    let (_, admin) = state
        .store
        .find_secret(token.lookup_id())
        .await
        .expect("store answers")
        .expect("the bootstrap key was installed");
    TestApp {
        address,
        admin_key,
        admin_key_id: admin.id,
        workspace_id: admin.workspace_id,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        db_url: db.url.clone(),
        backend,
        state,
        shutdown: Some(tx),
        server: Some(server),
        db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl TestApp {
    pub fn store(&self) -> &DynStore {
        &self.state.store
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request carrying the bootstrap admin key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_as(&self.admin_key, method, path)
    }

    /// A request carrying `key` as `Authorization: Bearer`.
    pub fn req_as(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// A request without any key.
    pub fn req_anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("GET")
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.req_as(key, Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.expect("DELETE")
    }

    /// Sends `body` as is, with `Content-Type: application/json`.
    pub async fn send_raw(&self, method: Method, path: &str, body: &str) -> Response {
        self.req(method, path)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Creates a key as the bootstrap admin; panics unless the answer is 201.
    pub async fn create_key(&self, body: &Value) -> Value {
        let response = self.post_json("/admin/v1/keys", body).await;
        let (status, json) = json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "create {body}: {json}");
        json
    }

    /// An inference key named `name`: (id, secret).
    pub async fn create_inference_key(&self, name: &str) -> (String, String) {
        let key = self.create_key(&json!({ "name": name })).await;
        (id_of(&key), secret_of(&key))
    }

    /// An admin key named `name`: (id, secret).
    pub async fn create_admin_key(&self, name: &str) -> (String, String) {
        let key = self
            .create_key(&json!({ "name": name, "kind": "admin" }))
            .await;
        (id_of(&key), secret_of(&key))
    }

    pub async fn rotate(&self, id: &str, body: Option<&Value>) -> Response {
        let mut request = self.req(Method::POST, &format!("/admin/v1/keys/{id}/rotate"));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("rotate")
    }

    /// Status of `GET /admin/v1/keys` with `key`: tells whether an admin key is accepted.
    pub async fn admin_status_of(&self, key: &str) -> StatusCode {
        self.get_as(key, "/admin/v1/keys?limit=1").await.status()
    }

    /// A new workspace (straight through the store) with an admin key in it.
    /// Returns (workspace id, admin key id, admin secret).
    pub async fn create_workspace_with_admin(
        &self,
        name: &str,
        key_cap: Option<i64>,
    ) -> (Uuid, Uuid, String) {
        let now = keygate::clock::now();
        let workspace = Workspace {
            id: Uuid::now_v7(),
            name: name.to_string(),
            key_cap,
            credits_usd: None,
            webhook_url: None,
            webhook_secret: None,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEvent {
            id: Uuid::now_v7(),
            workspace_id: workspace.id,
            actor: "test".into(),
            action: "workspace.create".into(),
            target: format!("workspace:{}", workspace.id),
            at: now,
            source: None,
            details: json!({}),
        };
        self.store()
            .create_workspace(&workspace, &audit)
            .await
            .expect("create workspace");
        let caller = Caller {
            workspace_id: workspace.id,
            actor: "test".into(),
            source: None,
            role: CallerRole::Admin,
            reach: keygate::keys::Reach::Own,
        };
        let created = self
            .state
            .keys
            .create(
                &caller,
                NewKey {
                    name: format!("{name} admin"),
                    kind: Some(KeyKind::Admin),
                    ..NewKey::default()
                },
            )
            .await
            .expect("create the workspace's admin key");
        (
            workspace.id,
            created.key.id,
            created.secret.expose().to_string(),
        )
    }

    /// Every audit event of a workspace, newest first.
    pub async fn audit_events(&self, workspace_id: Uuid) -> Vec<AuditEvent> {
        self.store()
            .list_audit_events(
                workspace_id,
                Page {
                    page: 1,
                    limit: 500,
                },
            )
            .await
            .expect("list audit events")
            .items
    }
}

// ---------------------------------------------------------------------------------------
// response helpers

/// Status and JSON body; panics (showing the body) if the body is not JSON.
pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

pub fn id_of(key: &Value) -> String {
    key["id"].as_str().expect("key has an id").to_string()
}

pub fn secret_of(key: &Value) -> String {
    key["secret"]
        .as_str()
        .expect("key has a secret")
        .to_string()
}

/// Asserts an admin-API error: status, `error.code`, and `error.field` (when given).
/// Returns the `error` object.
pub async fn assert_error(
    response: Response,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> Value {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    if let Some(field) = field {
        assert_eq!(error["field"], field, "{body}");
    }
    error.clone()
}

/// The secret part of a key (between the lookup id and the checksum): what must never be
/// stored or logged, even if someone took the full key apart.
pub fn secret_part(secret: &str) -> &str {
    let start = "kg_".len() + keygate::keys::token::LOOKUP_LEN + 1;
    &secret[start..TOKEN_LEN - keygate::keys::token::CHECKSUM_LEN]
}

/// Every well-formed keygate key (shape and checksum valid) appearing in `text`.
pub fn keys_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("kg_") {
        if let Some(candidate) = text.get(at..at + TOKEN_LEN) {
            if Token::parse(candidate).is_ok() {
                found.push(candidate.to_string());
            }
        }
    }
    found
}

pub fn future_rfc3339(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------
// the real binary

/// `keygate` with a clean environment: no inherited `DATABASE_URL`, `REDIS_URL` or
/// `KEYGATE_*`, no colours, working directory `cwd`.
pub fn keygate(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    command
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") {
            command.env_remove(name);
        }
    }
    command
}

pub struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `keygate --config <db's config file> <args>` to completion.
pub async fn run_cli(db: &TestDb, args: &[&str]) -> CliOutput {
    let config = db.config_file();
    let mut command = keygate(db.dir.path());
    command.arg("--config").arg(&config).args(args);
    run(command).await
}

pub async fn run(mut command: Command) -> CliOutput {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("keygate finished within 60 s")
        .expect("keygate runs");
    CliOutput {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `keygate serve` whose stdout and stderr are captured in full.
pub struct ServeProcess {
    child: Child,
    pub address: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn capture(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap_or_else(|p| p.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// Removes ANSI colour sequences (in case the log writer colours its output anyway).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `keygate --config <db's config> serve --listen 127.0.0.1:0` with `envs` and
/// waits until it logs its address.
pub async fn spawn_serve(db: &TestDb, envs: &[(&str, &str)]) -> ServeProcess {
    spawn_serve_with(db, "", envs).await
}

/// [`spawn_serve`] with `toml` added to the config file (after `database_url`).
pub async fn spawn_serve_with(db: &TestDb, toml: &str, envs: &[(&str, &str)]) -> ServeProcess {
    let config = db.config_file();
    if !toml.is_empty() {
        let mut text = std::fs::read_to_string(&config).expect("read config file");
        text.push_str(toml);
        std::fs::write(&config, text).expect("write config file");
    }
    let mut command = keygate(db.dir.path());
    command
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("keygate serve starts");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
        capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        let text = strip_ansi(&stderr.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains("keygate listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_string)
            })
        {
            break format!("http://{addr}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "keygate serve exited ({status}) before listening:\n{}",
                stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        assert!(
            Instant::now() < deadline,
            "keygate serve did not start within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ServeProcess {
        child,
        address,
        stdout,
        stderr,
        readers,
    }
}

impl ServeProcess {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What the server has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and returns (stdout, stderr).
    pub async fn stop(mut self) -> (String, String) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        let stdout = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (stdout, stderr)
    }
}
