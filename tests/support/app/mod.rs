//! The in-process harness: keygate's real `App` on 127.0.0.1:0 in a task of the test's
//! runtime, on a [`TestDb`] of the chosen backend, in front of a [`MockUpstream`], behind
//! the chosen front door, with the test's changes to the configuration. Several apps may
//! share one database and one mock (replicas). Request helpers live in `admin.rs` (the
//! admin API) and `inference.rs` (keys, `/v1/*`, usage).

use std::{str::FromStr, sync::Arc, time::Duration};

use keygate::{
    config::{ModelPrice, UpstreamConfig},
    keys::token::Token,
    state::AppState,
    store::DynStore,
    App, Config,
};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use tokio::{sync::oneshot, task::JoinHandle};
use uuid::Uuid;

use super::{
    backends::{Backend, FrontDoor, Setup},
    db::TestDb,
    upstream::MockUpstream,
};

mod admin;
mod inference;

pub use inference::{TestKey, UsageSum};

/// Priced by default: `gpt-4o-mini` at 0.15 / 0.60 USD per million tokens (DESIGN §9).
pub const PRICED_MODEL: &str = "gpt-4o-mini";
pub const PRICED_INPUT: &str = "0.15";
pub const PRICED_OUTPUT: &str = "0.60";
/// Served by the mock like any model, but without a price.
pub const UNPRICED_MODEL: &str = "mock-model";

/// keygate in process, as a test sees it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// `http://<metrics.listen>` as bound, when the configuration sets one.
    pub metrics_address: Option<String>,
    /// The bootstrap admin key of the `default` workspace.
    pub admin_key: String,
    pub admin_key_id: Uuid,
    /// The `default` workspace.
    pub workspace_id: Uuid,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub door: FrontDoor,
    /// The configuration the app was built with.
    pub config: Config,
    pub db_url: String,
    /// The server's own state (same store, key service and cache as the handlers use).
    pub state: AppState,
    /// Always running; the upstream of apps started by `spawn_proxy*` and `spawn_replicas`.
    pub mock: Arc<MockUpstream>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    // Last: the database goes after everything that uses it.
    pub db: Arc<TestDb>,
}

/// The configuration every in-process test server starts from: the bootstrap admin key
/// set, no upstream.
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

/// [`test_config`] plus one upstream serving every model (`*`) at the mock,
/// `gpt-4o-mini` priced, timeouts short enough for tests to notice hangs.
pub fn proxy_config(db: &TestDb, mock: &MockUpstream) -> Config {
    let mut config = test_config(&db.url);
    config.upstreams = vec![mock_upstream(mock)];
    config.models = vec![price(PRICED_MODEL, PRICED_INPUT, PRICED_OUTPUT)];
    config.proxy.connect_timeout_secs = 2.0;
    config.proxy.first_byte_timeout_secs = 10.0;
    config.proxy.idle_timeout_secs = 10.0;
    config.proxy.timeout_secs = 60.0;
    config
}

/// The mock as an upstream serving every model.
pub fn mock_upstream(mock: &MockUpstream) -> UpstreamConfig {
    UpstreamConfig::new("mock", &mock.base_url, &["*"])
}

pub fn price(name: &str, input_usd_per_mtok: &str, output_usd_per_mtok: &str) -> ModelPrice {
    ModelPrice {
        name: name.to_string(),
        input_usd_per_mtok: Decimal::from_str(input_usd_per_mtok).unwrap(),
        output_usd_per_mtok: Decimal::from_str(output_usd_per_mtok).unwrap(),
        cache_creation_input_usd_per_mtok: None,
        cache_read_input_usd_per_mtok: None,
    }
}

/// keygate with [`test_config`] (no upstream) on a fresh database.
pub async fn spawn_app(setup: impl Into<Setup>) -> TestApp {
    spawn_app_with(setup, |_| {}).await
}

/// [`spawn_app`] with a chance to change the configuration first.
pub async fn spawn_app_with(
    setup: impl Into<Setup>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let setup = setup.into();
    let db = Arc::new(TestDb::new(setup.backend).await);
    let mock = Arc::new(MockUpstream::start().await);
    let mut config = test_config(&db.url);
    config.http.fast_path = setup.door == FrontDoor::Fast;
    configure(&mut config);
    TestApp::start(setup.backend, db, mock, config).await
}

/// keygate with [`proxy_config`] (in front of its mock) on a fresh database.
pub async fn spawn_proxy(setup: impl Into<Setup>) -> TestApp {
    spawn_proxy_with(setup, |_| {}).await
}

/// [`spawn_proxy`] with a chance to change the configuration first.
pub async fn spawn_proxy_with(
    setup: impl Into<Setup>,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let setup = setup.into();
    let db = Arc::new(TestDb::new(setup.backend).await);
    let mock = Arc::new(MockUpstream::start().await);
    let mut config = proxy_config(&db, &mock);
    config.http.fast_path = setup.door == FrontDoor::Fast;
    configure(&mut config);
    TestApp::start(setup.backend, db, mock, config).await
}

/// `n` keygate instances ([`proxy_config`]) on ONE fresh database and in front of one
/// mock, as replicas behind a load balancer; `configure(i, config)` changes replica `i`'s
/// configuration. They share the bootstrap admin key; started one after the other (the
/// first one migrates).
pub async fn spawn_replicas(
    n: usize,
    setup: impl Into<Setup>,
    configure: impl Fn(usize, &mut Config),
) -> Vec<TestApp> {
    assert!(n > 0, "at least one replica");
    let first = spawn_proxy_with(setup, |config| configure(0, config)).await;
    let mut replicas = Vec::with_capacity(n);
    for i in 1..n {
        let replica = first.spawn_peer(|config| configure(i, config)).await;
        replicas.push(replica);
    }
    replicas.insert(0, first);
    replicas
}

impl TestApp {
    /// Starts keygate with `config` (whose `database_url` is `db`'s, or leads to it); the
    /// front door is the one `config.http.fast_path` picks.
    pub async fn start(
        backend: Backend,
        db: Arc<TestDb>,
        mock: Arc<MockUpstream>,
        config: Config,
    ) -> TestApp {
        let admin_key = config
            .bootstrap_admin_key
            .as_ref()
            .map(|k| k.expose_secret().to_string())
            .expect("tests always install a bootstrap key");
        let app = App::build(config.clone()).await.expect("the app builds");
        let address = format!("http://{}", app.local_addr());
        let metrics_address = app.metrics_addr().map(|addr| format!("http://{addr}"));
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
            metrics_address,
            admin_key,
            admin_key_id: admin.id,
            workspace_id: admin.workspace_id,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            backend,
            door: if config.http.fast_path {
                FrontDoor::Fast
            } else {
                FrontDoor::Router
            },
            db_url: db.url.clone(),
            config,
            state,
            mock,
            shutdown: Some(tx),
            server: Some(server),
            db,
        }
    }

    /// Another keygate on the same database and mock, with this one's configuration
    /// (bootstrap key included) changed by `configure`: a second replica, or this one
    /// restarted after [`TestApp::shut_down`].
    pub async fn spawn_peer(&self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        configure(&mut config);
        TestApp::start(self.backend, self.db.clone(), self.mock.clone(), config).await
    }

    pub fn setup(&self) -> Setup {
        Setup {
            backend: self.backend,
            door: self.door,
        }
    }

    pub fn store(&self) -> &DynStore {
        &self.state.store
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Stops the server as SIGTERM would (graceful shutdown, final usage flush) and waits
    /// until `App::run` has returned; says what went wrong if it did not end cleanly.
    pub async fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(30), server).await {
            Err(_) => Err("the app did not stop within 30 s".into()),
            Ok(Err(e)) => Err(format!("the server task failed: {e}")),
            Ok(Ok(Err(e))) => Err(format!("the server did not end cleanly: {e}")),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// [`TestApp::stop`], panicking unless the app ended cleanly.
    pub async fn shut_down(&mut self) {
        if let Err(problem) = self.stop().await {
            panic!("{problem}");
        }
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
