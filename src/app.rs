//! Start-up shared by `main` and the tests: `App::build` connects the store, migrates,
//! makes sure an admin key exists, binds the listener and returns the bound address
//! (port 0 works). `App::run` serves until the shutdown future resolves, then drains.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    config::Config,
    http,
    keys::{
        bootstrap::{self, Bootstrap},
        cache::KeyCache,
        FailedAuthGuard, KeysService,
    },
    limits::{
        redis::{GateConfig, RedisGate, RedisLimiter, RedisLimiterWithFallback},
        MemoryLimiter,
    },
    proxy::{upstreams::Upstreams, Gateway, Shared, SharedLimits},
    state::AppState,
    store::{self, DynStore},
    usage::{self, budget::BudgetLedger, pricing::Pricing},
    workspaces::{MembersService, WorkspacesService},
};

/// Usage is written to the store at least this often (DESIGN §7).
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store at {url}: {source}")]
    Store {
        url: String,
        source: store::StoreError,
    },
    #[error("cannot apply migrations: {0}")]
    Migrate(store::StoreError),
    #[error("cannot create the bootstrap admin key: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error(transparent)]
    Upstreams(#[from] crate::proxy::upstreams::UpstreamConfigError),
    #[error("invalid redis url: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    limiter: MemoryLimiter,
    usage_writer: JoinHandle<()>,
    stop_tx: watch::Sender<bool>,
    /// What the first-start check did; a generated key must be shown to the operator.
    pub bootstrap: Bootstrap,
}

/// Opens and migrates the store named by the configuration.
pub async fn open_store(config: &Config) -> Result<DynStore, StartError> {
    let store = store::connect(&config.database_url)
        .await
        .map_err(|source| StartError::Store {
            url: store::redact_url(&config.database_url),
            source,
        })?;
    store.migrate().await.map_err(StartError::Migrate)?;
    Ok(store)
}

pub fn keys_service(config: &Config, store: DynStore) -> KeysService {
    KeysService::new(
        store,
        KeyCache::new(Duration::from_millis(config.keys.cache_ttl_ms)),
    )
}

/// The workspace and member services beside `keys` (sharing its store and argon2 hasher).
pub fn workspace_services(
    config: &Config,
    keys: &KeysService,
) -> (WorkspacesService, MembersService) {
    (
        WorkspacesService::new(
            keys.store().clone(),
            config.keys.default_workspace_key_cap,
            config.webhooks.allow_private,
        ),
        MembersService::new(keys.store().clone(), keys.hasher().clone()),
    )
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartError> {
        let store = open_store(&config).await?;
        let keys = keys_service(&config, store.clone());
        let bootstrap =
            bootstrap::ensure_admin_key(&keys, config.bootstrap_admin_key.as_ref()).await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let upstreams = Upstreams::from_config(&config)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let budgets = BudgetLedger::new(store.clone());
        let (recorder, usage_writer) =
            usage::spawn_writer_for(store.clone(), USAGE_FLUSH_EVERY, stop_rx, budgets.clone());
        let limiter = MemoryLimiter::new();
        let redis = shared_limits(&config, &store, &limiter)?;
        let shared = Shared {
            limiter: Arc::new(limiter.clone()),
            budgets,
            recorder: recorder.clone(),
            pricing: Pricing::from_config(&config.models),
            redis,
        };
        let gateway = Gateway::new(
            shared,
            upstreams,
            store.clone(),
            &config.proxy,
            Duration::from_millis(config.keys.cache_ttl_ms),
        );
        let (workspaces, members) = workspace_services(&config, &keys);
        let state = AppState {
            workspaces,
            members,
            auth_attempts: Arc::new(FailedAuthGuard::new(config.keys.failed_auth_per_minute)),
            config: Arc::new(config),
            usage: crate::usage::UsageReader::new(store.clone(), recorder.clone()),
            store,
            keys,
            gateway: Arc::new(gateway),
            recorder,
        };
        Ok(App {
            listener,
            local_addr,
            state,
            limiter,
            usage_writer,
            stop_tx,
            bootstrap,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish and stops the background tasks.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop_tx = self.stop_tx;
        let mut tasks = spawn_background(&self.state, stop_tx.subscribe());
        let mut stop = stop_tx.subscribe();
        if let Some(redis) = &self.state.gateway.shared().redis {
            tasks.extend(redis.gate.spawn_tasks(stop_tx.subscribe()));
        }
        tasks.push(
            self.limiter
                .spawn_evictor(Duration::from_secs(60), async move {
                    let _ = stop.changed().await;
                }),
        );
        tracing::info!(addr = %self.local_addr, store = self.state.store.backend(), "keygate listening");
        let result = http::front::serve::serve(self.listener, self.state.clone(), shutdown).await;
        // In-flight requests have drained (their meters recorded usage); now stop the
        // background tasks, and let the usage writer do its final flush.
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let _ = self.usage_writer.await;
        tracing::info!("keygate stopped");
        result
    }
}

/// The Redis gate when `redis.url` (or `redis_url`) is set; the gauges say which limiter
/// is in force either way.
fn shared_limits(
    config: &Config,
    store: &DynStore,
    limiter: &MemoryLimiter,
) -> Result<Option<SharedLimits>, StartError> {
    let Some(url) = config.redis_url() else {
        metrics::gauge!("keygate_limiter_backend", "backend" => "memory").set(1.0);
        metrics::gauge!("keygate_limiter_backend", "backend" => "redis").set(0.0);
        metrics::gauge!("keygate_limiter_fallback").set(0.0);
        return Ok(None);
    };
    let gate_config = GateConfig {
        url: url.to_string(),
        prefix: config.redis.key_prefix.clone(),
        slot_lease: Duration::from_secs(config.redis.slot_lease_secs),
        timeout: Duration::from_millis(config.redis.timeout_ms),
    };
    let gate = RedisGate::new(&gate_config, store.clone()).map_err(StartError::Redis)?;
    tracing::info!(redis = %store::redact_url(url), "limits, budgets and concurrency are shared through redis");
    Ok(Some(SharedLimits {
        view: RedisLimiterWithFallback {
            redis: RedisLimiter::new(gate.clone()),
            fallback: limiter.clone(),
        },
        gate,
        fallback_replicas: config.redis.fallback_replicas,
    }))
}

/// Owned, cancellable background work (STYLE §3 rule 15).
fn spawn_background(state: &AppState, mut stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let attempts = state.auth_attempts.clone();
    let gc = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // governor's keyed store grows with every address it sees; drop the idle ones.
                    attempts.retain_recent();
                }
                _ = stop.changed() => break,
            }
        }
    });
    vec![gc]
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
