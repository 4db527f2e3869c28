//! Configuration: built-in defaults → `config/keygate.toml` (or `--config PATH`) →
//! `DATABASE_URL` / `REDIS_URL` → `KEYGATE_*` variables (`__` between nesting levels,
//! e.g. `KEYGATE_PROXY__TIMEOUT_SECS`). Unknown keys and bad values stop start-up with
//! a message that names the key (DESIGN §2, §9).

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use rust_decimal::Decimal;
use secrecy::SecretString;
use serde::Deserialize;

/// Where `serve` looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/keygate.toml";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's message names the key and where its value came from.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// More attempts than this would only add latency to a request nobody can serve.
const MAX_ATTEMPTS: u32 = 10;
/// A request's candidates are tracked in one 64-bit set (`proxy::upstreams::select`).
pub const MAX_UPSTREAMS: usize = 64;

/// More threads than this only adds scheduling overhead on any machine keygate targets.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Shared rate-limit state for several instances; `None` = in-process limiter. Same as
    /// `redis.url` (kept for `REDIS_URL` / `KEYGATE_REDIS_URL`); `redis.url` wins.
    pub redis_url: Option<String>,
    pub redis: RedisConfig,
    pub log_format: LogFormat,
    /// Request-serving threads; `None` = one per CPU this process may run on. With one,
    /// keygate runs tokio's single-threaded scheduler (see [`Config::worker_threads`]).
    pub worker_threads: Option<usize>,
    /// Admin key to install on first start instead of printing a generated one.
    pub bootstrap_admin_key: Option<SecretString>,
    pub keys: KeysConfig,
    pub http: HttpConfig,
    pub proxy: ProxyConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub models: Vec<ModelPrice>,
    pub web3: Web3Config,
    pub webhooks: WebhooksConfig,
    pub metrics: MetricsConfig,
    pub console: ConsoleConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(crate::store::redact_url),
            )
            .field("redis", &self.redis)
            .field("log_format", &self.log_format)
            .field("worker_threads", &self.worker_threads)
            .field(
                "bootstrap_admin_key",
                &self.bootstrap_admin_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("keys", &self.keys)
            .field("http", &self.http)
            .field("proxy", &self.proxy)
            .field("upstreams", &self.upstreams)
            .field("models", &self.models)
            .field("web3", &self.web3)
            .field("webhooks", &self.webhooks)
            .field("metrics", &self.metrics)
            .field("console", &self.console)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: DEFAULT_DATABASE_URL.to_string(),
            redis_url: None,
            redis: RedisConfig::default(),
            log_format: LogFormat::Text,
            worker_threads: None,
            bootstrap_admin_key: None,
            keys: KeysConfig::default(),
            http: HttpConfig::default(),
            proxy: ProxyConfig::default(),
            upstreams: Vec::new(),
            models: Vec::new(),
            web3: Web3Config::default(),
            webhooks: WebhooksConfig::default(),
            metrics: MetricsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// How long a verified key is trusted before its row is read again: on PostgreSQL the
    /// safety net behind the change notices (`listen_for_changes`), on SQLite the only
    /// re-read. Keys in use are checked ahead of it in the background, all together, so
    /// their requests do not wait on the read (docs/decisions.md).
    pub cache_ttl_ms: u64,
    /// PostgreSQL: listen for the key and workspace changes every instance announces and
    /// drop what this instance cached about them at once (DESIGN §7). Off, a change made on
    /// another instance takes effect here within `cache_ttl_ms`. Ignored on SQLite.
    pub listen_for_changes: bool,
    /// Live-key cap given to workspaces created after the first start.
    pub default_workspace_key_cap: Option<i64>,
    /// Failed authentications allowed per source address per minute.
    pub failed_auth_per_minute: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            cache_ttl_ms: 1000,
            listen_for_changes: true,
            default_workspace_key_cap: Some(10),
            failed_auth_per_minute: 30,
        }
    }
}

/// `[redis]`: limits, budgets and concurrency shared by every replica (DESIGN §7,
/// `limits::redis`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or `rediss://`; unset (and no top-level `redis_url`): in-process limits.
    pub url: Option<String>,
    /// While Redis is unreachable each replica enforces every rate limit and
    /// `max_parallel` divided by this (rounded up): the number of replicas sharing the load.
    pub fallback_replicas: u32,
    /// How long a concurrency slot outlives a replica that died mid-request.
    pub slot_lease_secs: u64,
    /// Prefix of every Redis key keygate writes.
    pub key_prefix: String,
    /// Deadline of every Redis call; past it the request is decided in process.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            fallback_replicas: 1,
            slot_lease_secs: 30,
            key_prefix: "keygate:".into(),
            timeout_ms: 250,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("fallback_replicas", &self.fallback_replicas)
            .field("slot_lease_secs", &self.slot_lease_secs)
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Config {
    /// The Redis URL in effect: `redis.url`, else the top-level `redis_url`.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.url.as_deref().or(self.redis_url.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Trust the left-most `X-Forwarded-For` address as the client's (behind a proxy only).
    pub trust_forwarded_for: bool,
    /// How long a keep-alive connection may wait idle for its next request.
    pub keep_alive_idle_secs: f64,
    /// How long a request that has started arriving may take to arrive whole (head and
    /// body); past it the connection is closed.
    pub request_read_timeout_secs: f64,
    /// Serve the hot inference routes on keygate's own HTTP/1.1 fast path. `false`: every
    /// request goes through hyper and the router (the same answers, at a higher cost).
    pub fast_path: bool,
}

impl HttpConfig {
    /// `keep_alive_idle_secs` as a duration (validated at load: positive and finite).
    pub fn keep_alive_idle(&self) -> Duration {
        Duration::from_secs_f64(self.keep_alive_idle_secs)
    }

    /// `request_read_timeout_secs` as a duration (validated at load: positive and finite).
    pub fn request_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_read_timeout_secs)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 4 * 1024 * 1024,
            trust_forwarded_for: false,
            keep_alive_idle_secs: 75.0,
            request_read_timeout_secs: 30.0,
            fast_path: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub connect_timeout_secs: f64,
    /// From sending the request to the first byte of the answer.
    pub first_byte_timeout_secs: f64,
    /// Longest silence between two chunks of a streamed answer.
    pub idle_timeout_secs: f64,
    /// Whole request, first byte to last.
    pub timeout_secs: f64,
    /// Largest event of a streamed answer passed on; past it the stream ends with an
    /// error event (and is charged for what streamed).
    pub max_event_bytes: usize,
    /// Upstreams a request may be sent to, counting the first: a connect error, a timeout
    /// before the first byte, a 429 or a 5xx moves it to the next candidate (docs/decisions.md).
    pub max_attempts: u32,
    /// Failures in a row after which an upstream is skipped for `breaker_cooldown_secs`.
    pub breaker_failures: u32,
    /// How long an upstream whose breaker opened is skipped before one probe request is
    /// let through.
    pub breaker_cooldown_secs: f64,
    /// On a key with `fit_max_tokens`: the smallest completion cap keygate lowers a
    /// request to; when less than this is left, the request is refused as it would be
    /// without fitting.
    pub min_fitted_tokens: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout_secs: 5.0,
            first_byte_timeout_secs: 60.0,
            idle_timeout_secs: 60.0,
            timeout_secs: 600.0,
            max_event_bytes: crate::proxy::sse::MAX_EVENT_BYTES,
            max_attempts: 3,
            breaker_failures: 5,
            breaker_cooldown_secs: 30.0,
            min_fitted_tokens: 16,
        }
    }
}

/// The Venice-compatible Web3 key flow (`/api/v1/api_keys/generate_web3_key`, see
/// docs/compat.md). Its two routes need no API key, so it is off unless enabled.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Web3Config {
    /// Serve the flow at all. Off: both routes answer 403.
    pub enabled: bool,
    /// HMAC key for the challenge tokens. Unset: a random key per process, so a token is
    /// only accepted by the instance that issued it; several instances need this value.
    pub token_secret: Option<SecretString>,
    /// How long a challenge token stays valid.
    pub token_ttl_secs: u64,
    /// Wallets allowed to create keys (`0x…`, any case). Empty: any wallet that signs.
    pub allowed_addresses: Vec<String>,
}

impl Default for Web3Config {
    fn default() -> Self {
        Web3Config {
            enabled: false,
            token_secret: None,
            token_ttl_secs: 300,
            allowed_addresses: Vec::new(),
        }
    }
}

impl fmt::Debug for Web3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Web3Config")
            .field("enabled", &self.enabled)
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("allowed_addresses", &self.allowed_addresses)
            .finish()
    }
}

/// Workspace webhooks (budget alerts, DESIGN §3; src/alerts).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept webhook URLs whose host is (or resolves to) a loopback, private, link-local
    /// or otherwise non-public address. Off: a workspace admin cannot make keygate call
    /// services on its own network (checked when the URL is set and again at each POST).
    pub allow_private: bool,
    /// One delivery attempt (resolve, connect, send, read the answer) must end within this.
    pub attempt_timeout_secs: f64,
    /// A delivery is retried until this long after the threshold was crossed, then given up.
    pub retry_for_secs: f64,
    /// Wait before the second attempt; it doubles per attempt (at most 10 minutes), with
    /// jitter.
    pub retry_initial_secs: f64,
}

impl WebhooksConfig {
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.attempt_timeout_secs)
    }

    pub fn retry_for(&self) -> Duration {
        Duration::from_secs_f64(self.retry_for_secs)
    }

    pub fn retry_initial(&self) -> Duration {
        Duration::from_secs_f64(self.retry_initial_secs)
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_private: false,
            attempt_timeout_secs: 10.0,
            retry_for_secs: 3600.0,
            retry_initial_secs: 5.0,
        }
    }
}

/// The web console at `/console` (src/http/console, README "Console").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console`. Off: every console path answers 404.
    pub enabled: bool,
    /// Mark the session cookie `Secure` even when the request did not arrive over TLS
    /// (keygate behind a TLS-terminating proxy).
    pub secure_cookies: bool,
    /// A session unused this long is gone (default 12 hours).
    pub session_idle_secs: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            secure_cookies: false,
            session_idle_secs: 12 * 3600,
        }
    }
}

/// Prometheus series (`GET /metrics`, docs/metrics.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Count the series at all. Off: nothing is counted and `/metrics` answers 404.
    pub enabled: bool,
    /// A second address serving `GET /metrics` WITHOUT a key (for a scraper on a private
    /// network). `None`: only the main port serves it, behind an admin key.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// e.g. `https://api.openai.com/v1`: request paths after `/v1` are appended to it.
    pub base_url: String,
    /// Name of the environment variable holding this upstream's credential.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Exact model names, or `*` for any model. Every upstream listing a model is a
    /// candidate for it; an exact listing outranks `*` at the same `priority`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Other paths under `/v1` this upstream serves and keygate passes through as they
    /// are (e.g. `["/moderations", "/files"]`), still authenticated and counted.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// Lower is tried first; a higher number only when every better candidate failed or
    /// is cooling down.
    #[serde(default)]
    pub priority: u32,
    /// Share of the requests among the candidates of one priority (at least 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The client's model name → this upstream's (`gpt-4o = "azure-gpt4o-eu"`). The
    /// forwarded body carries the upstream's name; limits, prices and usage stay keyed by
    /// the client's. A mapped name is served by this upstream even if `models` omits it.
    #[serde(default)]
    pub model_mapping: BTreeMap<String, String>,
    /// The API the upstream speaks: `openai` (chat, completions, embeddings; `Bearer`
    /// credential) or `anthropic` (`/v1/messages`; `x-api-key` credential). A request
    /// goes only to upstreams of its route's kind.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// `anthropic-version` sent to an `anthropic` upstream (replacing the client's).
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// A PEM file of CA certificates trusted for this upstream only, besides the public
    /// web roots (an upstream behind a private CA). There is no way to skip verification.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The wire API an upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Anthropic => "anthropic",
        }
    }
}

/// The Messages API version keygate speaks to Anthropic unless configured otherwise.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

fn default_anthropic_version() -> String {
    DEFAULT_ANTHROPIC_VERSION.to_owned()
}

fn default_weight() -> u32 {
    1
}

impl UpstreamConfig {
    /// An upstream at `base_url` serving `models`, everything else as by default.
    pub fn new(name: &str, base_url: &str, models: &[&str]) -> Self {
        UpstreamConfig {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            api_key_env: None,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            passthrough: Vec::new(),
            priority: 0,
            weight: default_weight(),
            model_mapping: BTreeMap::new(),
            kind: UpstreamKind::OpenAi,
            anthropic_version: default_anthropic_version(),
            ca_file: None,
        }
    }
}

/// A provider keygate serves on its own on a first run: no `[[upstreams]]` configured and
/// the provider's credential in the environment. One more provider is one more line of
/// [`PROVIDERS`].
#[derive(Debug)]
pub struct Provider {
    pub name: &'static str,
    /// The variable holding the credential (also the upstream's `api_key_env`).
    pub key_env: &'static str,
    /// A variable that, when set, replaces `base_url` (the provider's SDKs read it too).
    pub base_url_env: &'static str,
    pub base_url: &'static str,
    /// Appended to `base_url_env`'s value: Anthropic's SDK reads its base URL without
    /// the `/v1` that keygate's `base_url` ends with.
    pub base_url_env_suffix: &'static str,
    pub kind: UpstreamKind,
}

pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "openai",
        key_env: "OPENAI_API_KEY",
        base_url_env: "OPENAI_BASE_URL",
        base_url: "https://api.openai.com/v1",
        base_url_env_suffix: "",
        kind: UpstreamKind::OpenAi,
    },
    Provider {
        name: "anthropic",
        key_env: "ANTHROPIC_API_KEY",
        base_url_env: "ANTHROPIC_BASE_URL",
        base_url: "https://api.anthropic.com/v1",
        base_url_env_suffix: "/v1",
        kind: UpstreamKind::Anthropic,
    },
];

/// Where the upstreams came from, for the start-up log.
#[derive(Debug)]
pub enum UpstreamSource {
    /// `[[upstreams]]` in the configuration.
    Configured,
    /// None configured; these providers' credentials were in the environment.
    Environment(Vec<&'static Provider>),
    /// None configured and no provider credential: nothing can be proxied.
    Nothing,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub name: String,
    #[serde(with = "crate::money::usd")]
    pub input_usd_per_mtok: Decimal,
    #[serde(with = "crate::money::usd")]
    pub output_usd_per_mtok: Decimal,
    /// Anthropic's `cache_creation_input_tokens` (prompt caching writes); the input
    /// price when absent.
    #[serde(default, with = "crate::money::usd::option")]
    pub cache_creation_input_usd_per_mtok: Option<Decimal>,
    /// Anthropic's `cache_read_input_tokens` (prompt cache hits); the input price when
    /// absent.
    #[serde(default, with = "crate::money::usd::option")]
    pub cache_read_input_usd_per_mtok: Option<Decimal>,
}

impl Config {
    /// Loads and validates the configuration. `path` is `--config`; without it the default
    /// path is read when present.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(path) => {
                if !path.exists() {
                    return Err(invalid(
                        "--config",
                        format!("{} does not exist", path.display()),
                    ));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_PATH)),
        }
        let config: Config = figment
            .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL"]))
            .merge(
                Env::prefixed("KEYGATE_")
                    .split("__")
                    // `KEYGATE_TEST_*` (the database, virtualenv and outage length the test
                    // suite uses) belongs to the tests, not to keygate's configuration: an
                    // unknown key would stop start-up.
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    // `KEYGATE_ADMIN_KEY` is the CLI's credential for `--url`, not a setting.
                    .filter(|key| !key.as_str().eq_ignore_ascii_case("admin_key")),
            )
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The first run: with no `[[upstreams]]`, one upstream serving every model (`*`) per
    /// provider of [`PROVIDERS`] whose credential `env` finds (`serve` passes the process
    /// environment; the tests' in-process configurations never come through here).
    pub fn upstreams_from_environment(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> UpstreamSource {
        if !self.upstreams.is_empty() {
            return UpstreamSource::Configured;
        }
        let present = |var: &str| env(var).filter(|value| !value.trim().is_empty());
        let found: Vec<&'static Provider> = PROVIDERS
            .iter()
            .filter(|provider| present(provider.key_env).is_some())
            .collect();
        for provider in &found {
            let base_url = present(provider.base_url_env)
                .map(|url| {
                    let url = url.trim().trim_end_matches('/');
                    match url.ends_with(provider.base_url_env_suffix) {
                        true => url.to_owned(),
                        false => format!("{url}{}", provider.base_url_env_suffix),
                    }
                })
                .unwrap_or_else(|| provider.base_url.to_owned());
            let mut upstream = UpstreamConfig::new(provider.name, &base_url, &["*"]);
            upstream.api_key_env = Some(provider.key_env.to_owned());
            upstream.kind = provider.kind;
            self.upstreams.push(upstream);
        }
        if found.is_empty() {
            UpstreamSource::Nothing
        } else {
            UpstreamSource::Environment(found)
        }
    }

    /// The request-serving threads to start: `worker_threads`, else the CPUs this process
    /// may run on (its affinity mask, so `taskset -c 0` or a one-CPU container gives 1).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self
            .worker_threads
            .is_some_and(|n| !(1..=MAX_WORKER_THREADS).contains(&n))
        {
            return Err(invalid(
                "worker_threads",
                format!("must be a whole number in [1, {MAX_WORKER_THREADS}]"),
            ));
        }
        let db = &self.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        for (field, url) in [
            ("redis_url", &self.redis_url),
            ("redis.url", &self.redis.url),
        ] {
            if let Some(redis) = url {
                if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
                    return Err(invalid(field, "must start with redis:// or rediss://"));
                }
            }
        }
        if self.redis.fallback_replicas == 0 {
            return Err(invalid("redis.fallback_replicas", "must be at least 1"));
        }
        if !(1..=3600).contains(&self.redis.slot_lease_secs) {
            return Err(invalid(
                "redis.slot_lease_secs",
                "must be a number of seconds in [1, 3600]",
            ));
        }
        if !(1..=10_000).contains(&self.redis.timeout_ms) {
            return Err(invalid(
                "redis.timeout_ms",
                "must be a number of milliseconds in [1, 10000]",
            ));
        }
        if self
            .keys
            .default_workspace_key_cap
            .is_some_and(|cap| cap < 0)
        {
            return Err(invalid("keys.default_workspace_key_cap", "must be >= 0"));
        }
        if self.metrics.listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "metrics.listen",
                "must differ from `listen` (it serves /metrics without a key)",
            ));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(invalid("http.max_body_bytes", "must be at least 1024"));
        }
        if self.proxy.max_event_bytes < 1024 {
            return Err(invalid("proxy.max_event_bytes", "must be at least 1024"));
        }
        for (field, value) in [
            (
                "proxy.connect_timeout_secs",
                self.proxy.connect_timeout_secs,
            ),
            (
                "proxy.first_byte_timeout_secs",
                self.proxy.first_byte_timeout_secs,
            ),
            ("proxy.idle_timeout_secs", self.proxy.idle_timeout_secs),
            ("proxy.timeout_secs", self.proxy.timeout_secs),
            (
                "proxy.breaker_cooldown_secs",
                self.proxy.breaker_cooldown_secs,
            ),
            ("http.keep_alive_idle_secs", self.http.keep_alive_idle_secs),
            (
                "webhooks.attempt_timeout_secs",
                self.webhooks.attempt_timeout_secs,
            ),
            ("webhooks.retry_for_secs", self.webhooks.retry_for_secs),
            (
                "webhooks.retry_initial_secs",
                self.webhooks.retry_initial_secs,
            ),
            (
                "http.request_read_timeout_secs",
                self.http.request_read_timeout_secs,
            ),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
                return Err(invalid(field, "must be a number of seconds in (0, 86400]"));
            }
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.proxy.max_attempts) {
            return Err(invalid(
                "proxy.max_attempts",
                format!("must be a whole number in [1, {MAX_ATTEMPTS}]"),
            ));
        }
        if self.proxy.min_fitted_tokens == 0 {
            return Err(invalid("proxy.min_fitted_tokens", "must be at least 1"));
        }
        if self.proxy.breaker_failures == 0 {
            return Err(invalid("proxy.breaker_failures", "must be at least 1"));
        }
        if self.upstreams.len() > MAX_UPSTREAMS {
            return Err(invalid(
                "upstreams",
                format!("at most {MAX_UPSTREAMS} upstreams can be configured"),
            ));
        }
        let mut names = HashSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let at = |f: &str| format!("upstreams[{i}].{f}");
            if upstream.name.trim().is_empty() || !names.insert(upstream.name.as_str()) {
                return Err(invalid(at("name"), "must be non-empty and unique"));
            }
            match url::Url::parse(&upstream.base_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => {
                    return Err(invalid(
                        at("base_url"),
                        "must be an http:// or https:// URL",
                    ))
                }
            }
            if (upstream.models.is_empty() && upstream.model_mapping.is_empty())
                || upstream.models.iter().any(|m| m.trim().is_empty())
            {
                return Err(invalid(
                    at("models"),
                    "must list at least one model name or \"*\"",
                ));
            }
            if upstream.weight == 0 {
                return Err(invalid(
                    at("weight"),
                    "must be at least 1 (for an upstream that should only serve as a fallback, give it a larger `priority`)",
                ));
            }
            if let Some((from, _)) = upstream
                .model_mapping
                .iter()
                .find(|(from, to)| from.trim().is_empty() || *from == "*" || to.trim().is_empty())
            {
                return Err(invalid(
                    at(&format!("model_mapping.{from}")),
                    "must map a model name to a non-empty model name (`*` cannot be mapped)",
                ));
            }
        }
        if !(1..=86_400).contains(&self.web3.token_ttl_secs) {
            return Err(invalid(
                "web3.token_ttl_secs",
                "must be a number of seconds in [1, 86400]",
            ));
        }
        if let Some(secret) = &self.web3.token_secret {
            if secrecy::ExposeSecret::expose_secret(secret).len() < 32 {
                return Err(invalid(
                    "web3.token_secret",
                    "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
                ));
            }
        }
        for (i, address) in self.web3.allowed_addresses.iter().enumerate() {
            if address.parse::<crate::web3::Address>().is_err() {
                return Err(invalid(
                    format!("web3.allowed_addresses[{i}]"),
                    "must be an Ethereum address (0x followed by 40 hex digits)",
                ));
            }
        }
        let mut priced = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
            if model.name.trim().is_empty() || !priced.insert(model.name.as_str()) {
                return Err(invalid(
                    format!("models[{i}].name"),
                    "must be non-empty and unique",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_from(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn defaults_match_the_design() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        config.validate().unwrap();
    }

    #[test]
    fn the_shipped_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        Config::load(Some(&path)).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_from("listne = \"1.2.3.4:5\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
        let err = load_from("[proxy]\ntimeout = 3\n").unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = load_from("listen = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = load_from("database_url = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
        let err = load_from("[proxy]\ntimeout_secs = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.timeout_secs"), "{err}");
        let err =
            load_from("[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://x\"\nmodels = [\"*\"]\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("upstreams[0].base_url"), "{err}");
    }

    #[test]
    fn the_event_cap_is_read_and_checked() {
        assert_eq!(Config::default().proxy.max_event_bytes, 1024 * 1024);
        let config = load_from("[proxy]\nmax_event_bytes = 65536\n").unwrap();
        assert_eq!(config.proxy.max_event_bytes, 65536);
        let err = load_from("[proxy]\nmax_event_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.max_event_bytes"), "{err}");
    }

    #[test]
    fn worker_threads_default_to_the_usable_cpus_and_are_checked() {
        let config = Config::default();
        assert!(config.worker_threads() >= 1);
        assert_eq!(
            load_from("worker_threads = 1\n").unwrap().worker_threads(),
            1
        );
        for bad in ["worker_threads = 0\n", "worker_threads = 5000\n"] {
            let err = load_from(bad).unwrap_err().to_string();
            assert!(err.contains("worker_threads"), "{err}");
        }
        let err = load_from("worker_threads = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker_threads"), "{err}");
    }

    #[test]
    fn web3_settings_are_checked() {
        let config = load_from(
            "[web3]\nenabled = true\ntoken_ttl_secs = 60\nallowed_addresses = [\"0x2c7536E3605D9C16a7a3D7b1898e529396a65c23\"]\n",
        )
        .unwrap();
        assert!(config.web3.enabled);
        assert!(!Config::default().web3.enabled);
        let err = load_from("[web3]\nallowed_addresses = [\"0x12\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("web3.allowed_addresses[0]"), "{err}");
        let err = load_from("[web3]\ntoken_secret = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("web3.token_secret"), "{err}");
        assert!(!err.contains("short"), "{err}");
        let err = load_from("[web3]\ntoken_ttl_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("web3.token_ttl_secs"), "{err}");
    }

    #[test]
    fn the_front_door_settings_load_and_are_checked() {
        let defaults = Config::default().http;
        assert!(defaults.fast_path);
        assert_eq!(defaults.request_read_timeout(), Duration::from_secs(30));
        let config = load_from(
            "[http]
fast_path = false
request_read_timeout_secs = 2.5
",
        )
        .unwrap();
        assert!(!config.http.fast_path);
        assert_eq!(
            config.http.request_read_timeout(),
            Duration::from_millis(2500)
        );
        let err = load_from(
            "[http]
request_read_timeout_secs = 0
",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http.request_read_timeout_secs"), "{err}");
        let err = load_from(
            "[http]
fast_path = \"yes\"
",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fast_path"), "{err}");
    }

    #[test]
    fn routing_fields_load_with_their_defaults_and_are_checked() {
        let config = load_from(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://a/v1\"\nmodels = [\"*\"]\n\
             [[upstreams]]\nname = \"b\"\nbase_url = \"http://b/v1\"\npriority = 1\nweight = 3\n\
             model_mapping = { gpt-4o = \"azure-gpt4o-eu\" }\n",
        )
        .unwrap();
        assert_eq!(
            (config.upstreams[0].priority, config.upstreams[0].weight),
            (0, 1)
        );
        assert_eq!(
            (config.upstreams[1].priority, config.upstreams[1].weight),
            (1, 3)
        );
        assert_eq!(
            config.upstreams[1]
                .model_mapping
                .get("gpt-4o")
                .map(String::as_str),
            Some("azure-gpt4o-eu")
        );
        assert_eq!(config.proxy.max_attempts, 3);
        assert_eq!(config.proxy.min_fitted_tokens, 16);
        let err = load_from(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://a/v1\"\nmodels = [\"*\"]\nweight = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("upstreams[0].weight"), "{err}");
        assert!(err.contains("priority"), "{err}");
        for bad in [
            "max_attempts = 0",
            "breaker_failures = 0",
            "breaker_cooldown_secs = 0",
            "min_fitted_tokens = 0",
        ] {
            let err = load_from(&format!("[proxy]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad.split(' ').next().unwrap_or(bad)), "{err}");
        }
    }

    #[test]
    fn the_first_run_serves_the_providers_whose_key_is_set() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let mut config = Config::default();
        let source = config.upstreams_from_environment(env(&[("OPENAI_API_KEY", "sk-x")]));
        assert!(matches!(source, UpstreamSource::Environment(ref p) if p.len() == 1));
        let openai = &config.upstreams[0];
        assert_eq!(openai.base_url, "https://api.openai.com/v1");
        assert_eq!(openai.models, ["*"]);
        assert_eq!(openai.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        config.validate().unwrap();

        let mut config = Config::default();
        config.upstreams_from_environment(env(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ]));
        assert_eq!(config.upstreams[0].base_url, "http://127.0.0.1:9/v1");

        let mut config = Config::default();
        let source = config.upstreams_from_environment(env(&[("OPENAI_API_KEY", " ")]));
        assert!(matches!(source, UpstreamSource::Nothing));
        assert!(config.upstreams.is_empty());

        // Configured upstreams are never added to.
        let mut config = Config {
            upstreams: vec![UpstreamConfig::new("mine", "http://x/v1", &["*"])],
            ..Config::default()
        };
        let source = config.upstreams_from_environment(env(&[("OPENAI_API_KEY", "sk-x")]));
        assert!(matches!(source, UpstreamSource::Configured));
        assert_eq!(config.upstreams.len(), 1);
    }

    #[test]
    fn the_first_run_serves_anthropic_with_both_keys_each_on_its_kind() {
        let vars = [
            ("OPENAI_API_KEY", "sk-x"),
            ("ANTHROPIC_API_KEY", "sk-ant-x"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/"),
        ];
        let env = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let mut config = Config::default();
        let source = config.upstreams_from_environment(env);
        assert!(matches!(source, UpstreamSource::Environment(ref p) if p.len() == 2));
        let anthropic = &config.upstreams[1];
        assert_eq!(anthropic.kind, UpstreamKind::Anthropic);
        // As Anthropic's SDK takes it, without `/v1`: keygate's base URLs end with it.
        assert_eq!(anthropic.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(anthropic.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
        assert_eq!(anthropic.anthropic_version, DEFAULT_ANTHROPIC_VERSION);
        assert_eq!(config.upstreams[0].kind, UpstreamKind::OpenAi);
        config.validate().unwrap();
    }

    #[test]
    fn an_upstream_kind_and_cache_prices_are_read_from_the_file() {
        let config = load_from(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://a/v1\"\nmodels = [\"*\"]\nkind = \"anthropic\"\n\
             [[models]]\nname = \"c\"\ninput_usd_per_mtok = 3\noutput_usd_per_mtok = 15\n\
             cache_read_input_usd_per_mtok = 0.3\n",
        )
        .unwrap();
        assert_eq!(config.upstreams[0].kind, UpstreamKind::Anthropic);
        assert_eq!(config.upstreams[0].anthropic_version, "2023-06-01");
        let price = &config.models[0];
        assert_eq!(
            price.cache_read_input_usd_per_mtok.map(|p| p.to_string()),
            Some("0.3".into())
        );
        assert_eq!(price.cache_creation_input_usd_per_mtok, None);
        let err = load_from(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://a/v1\"\nmodels = [\"*\"]\nkind = \"gemini\"\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("kind") && err.contains("anthropic"), "{err}");
    }

    #[test]
    fn prices_are_exact_decimals() {
        let config = load_from(
            "[[models]]\nname = \"m\"\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n",
        )
        .unwrap();
        assert_eq!(config.models[0].input_usd_per_mtok.to_string(), "0.15");
        let err = load_from(
            "[[models]]\nname = \"m\"\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 0.6\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("input_usd_per_mtok"), "{err}");
    }
}
