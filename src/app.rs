//! Start-up shared by `main` and the tests: `App::build` connects the store, migrates,
//! makes sure an admin key exists, binds the listener and returns the bound address
//! (port 0 works). `App::run` serves until the shutdown future resolves, then drains.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    alerts,
    config::Config,
    http,
    key_changes::{self, Caches},
    keys::{
        bootstrap::{self, Bootstrap},
        cache::KeyCache,
        FailedAuthGuard, KeysService, SignInGuard,
    },
    limits::{
        redis::{GateConfig, RedisGate, RedisLimiter, RedisLimiterWithFallback},
        MemoryLimiter,
    },
    proxy::{upstreams::Upstreams, Gateway, Shared, SharedLimits},
    state::AppState,
    store::{self, DynStore, KeyChanges},
    telemetry::metrics::Metrics,
    usage::{self, budget::BudgetLedger, pricing::Pricing},
    workspaces::{MembersService, WorkspacesService},
};

/// Usage is written to the store at least this often (DESIGN §7).
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

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
    #[error("cannot listen for key changes in the store: {0}")]
    KeyChanges(store::StoreError),
    #[error("cannot start the budget-alert webhooks: {0}")]
    Webhooks(#[from] reqwest::Error),
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
    /// `metrics.listen`: `/metrics` without a key, on its own address.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    state: AppState,
    limiter: MemoryLimiter,
    usage_writer: JoinHandle<()>,
    /// Changes other instances make, heard from the end of `build` on (PostgreSQL).
    key_changes: Option<KeyChanges>,
    /// The budget-alert checker (ends after the usage writer) and delivery task.
    alerts: Vec<JoinHandle<()>>,
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
        let metrics_listener = match config.metrics.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let upstreams = Upstreams::from_config(&config)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (flushed_keys, alerts) =
            alerts::spawn(store.clone(), &config.webhooks, stop_rx.clone())?;
        let budgets = BudgetLedger::new(store.clone());
        let (recorder, usage_writer) = usage::spawn_writer_after(
            store.clone(),
            USAGE_FLUSH_EVERY,
            stop_rx,
            usage::AfterFlush {
                ledger: Some(budgets.clone()),
                alerts: Some(flushed_keys.hook()),
            },
        );
        let limiter = MemoryLimiter::new();
        let metrics = Arc::new(Metrics::new(&config));
        let redis = shared_limits(&config, &store, &limiter)?;
        let shared = Shared {
            limiter: Arc::new(limiter.clone()),
            budgets,
            recorder: recorder.clone(),
            pricing: Pricing::from_config(&config.models),
            metrics: metrics.clone(),
            redis,
        };
        let gateway = Gateway::new(
            shared,
            upstreams,
            store.clone(),
            &config.proxy,
            Duration::from_millis(config.keys.cache_ttl_ms),
        );
        // Listening starts before the first request is served, so no change made after
        // `build` returns goes unheard.
        let key_changes = if config.keys.listen_for_changes {
            store.key_changes().await.map_err(StartError::KeyChanges)?
        } else {
            None
        };
        let (workspaces, members) = workspace_services(&config, &keys);
        let state = AppState {
            workspaces,
            members,
            auth_attempts: Arc::new(FailedAuthGuard::new(config.keys.failed_auth_per_minute)),
            sign_in_attempts: Arc::new(SignInGuard::new(config.keys.failed_auth_per_minute)),
            config: Arc::new(config),
            usage: crate::usage::UsageReader::new(store.clone(), recorder.clone()),
            store,
            keys,
            gateway: Arc::new(gateway),
            recorder,
            metrics,
        };
        Ok(App {
            listener,
            local_addr,
            metrics_listener,
            state,
            limiter,
            usage_writer,
            key_changes,
            alerts,
            stop_tx,
            bootstrap,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound `metrics.listen` address, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
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
        if let Some(changes) = self.key_changes {
            let caches = Caches {
                keys: self.state.keys.cache().clone(),
                budgets: self.state.gateway.shared().budgets.clone(),
                gateway: self.state.gateway.clone(),
            };
            tasks.push(key_changes::spawn(changes, caches, stop_tx.subscribe()));
        }
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
        if let Some((listener, addr)) = self.metrics_listener {
            tracing::info!(%addr, "serving /metrics without a key (metrics.listen)");
            tasks.push(serve_metrics(listener, &self.state, stop_tx.subscribe()));
        }
        tracing::info!(addr = %self.local_addr, store = self.state.store.backend(), "keygate listening");
        let result = http::front::serve::serve(self.listener, self.state.clone(), shutdown).await;
        // In-flight requests have drained (their meters recorded usage); now stop the
        // background tasks, and let the usage writer do its final flush.
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let _ = self.usage_writer.await;
        for task in self.alerts {
            let _ = task.await;
        }
        tracing::info!("keygate stopped");
        result
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

/// `/metrics` without a key on `metrics.listen`, until `stop`.
fn serve_metrics(
    listener: TcpListener,
    state: &AppState,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let router = http::metrics::listener_router(state.clone());
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %err, "the metrics listener failed");
        }
    })
}

/// The Redis gate when `redis.url` (or `redis_url`) is set.
fn shared_limits(
    config: &Config,
    store: &DynStore,
    limiter: &MemoryLimiter,
) -> Result<Option<SharedLimits>, StartError> {
    let Some(url) = config.redis_url() else {
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
    let metrics = state.metrics.clone();
    let mut upkeep_stop = stop.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => metrics.upkeep(),
                _ = upkeep_stop.changed() => break,
            }
        }
    });
    let refresh = spawn_key_refresh(state.keys.clone(), stop.clone());
    let attempts = state.auth_attempts.clone();
    let sign_ins = state.sign_in_attempts.clone();
    let gc = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // governor's keyed store grows with every address it sees; drop the idle ones.
                    attempts.retain_recent();
                    sign_ins.retain_recent();
                }
                _ = stop.changed() => break,
            }
        }
    });
    vec![gc, upkeep, refresh]
}

/// Checks the keys in use ahead of their expiry, in one store read each time
/// (`KeysService::refresh_ahead`). A pass every quarter TTL checks what is half a TTL old,
/// so an entry in use is renewed by three quarters of its TTL, a quarter of it to spare
/// for a slow read. A failed pass is logged once per failure streak; the entries then
/// expire and their next use reads the store as before.
fn spawn_key_refresh(keys: KeysService, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let every = (keys.cache().ttl() / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => match keys.refresh_ahead().await {
                    Ok(_) => failing = false,
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(error = %err, "keys in use not checked ahead; they will be re-read on their next use");
                    }
                    Err(_) => {}
                },
                _ = stop.changed() => break,
            }
        }
    })
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
