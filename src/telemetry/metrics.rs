//! Prometheus series (issue 12 §4), rendered in the text exposition format by `GET
//! /metrics` (`http::metrics`). The list of series, their labels and what each counts is
//! in docs/metrics.md; this module keeps them.
//!
//! Each `App` builds its own `PrometheusRecorder` and never installs it as the process's
//! global recorder: the tests run several apps in one process, and each must read exact
//! counts for its own requests. So nothing here uses the `metrics!` macros; series are
//! registered on this recorder directly and their handles (`Counter`, `Gauge`,
//! `Histogram`: an `Arc` around an atomic) are kept, so the request path adds to an
//! atomic without building a key or looking the series up in the registry.
//!
//! Label values are bounded by construction, and never carry a key or a key id:
//! - `route`: the matched route template (`/admin/v1/keys/{id}`), `unmatched` otherwise;
//! - `model`: a model the configuration names (an upstream's exact model or a `[[models]]`
//!   price), else `other`; absent where no model was named;
//! - `upstream`: a configured upstream's name; `limit`: one of [`LIMIT_KINDS`].
//!
//! Process state (the store's pool, the key cache, the usage writer) is read from its
//! owner at scrape time ([`Snapshot`]) rather than pushed on every change.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::Duration,
};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::{config::Config, keys::cache::CacheStats, store::PoolStats};

const REQUESTS: &str = "keygate_requests_total";
const IN_FLIGHT: &str = "keygate_requests_in_flight";
const UPSTREAM_DURATION: &str = "keygate_upstream_duration_seconds";
const UPSTREAM_TTFB: &str = "keygate_upstream_ttfb_seconds";
const TOKENS: &str = "keygate_tokens_total";
const COST: &str = "keygate_cost_usd_total";
const REFUSALS: &str = "keygate_refusals_total";
const CACHE_HITS: &str = "keygate_key_cache_hits_total";
const CACHE_MISSES: &str = "keygate_key_cache_misses_total";
const CACHE_ENTRIES: &str = "keygate_key_cache_entries";
const FLUSH_LAG: &str = "keygate_usage_flush_lag_seconds";
const FLUSH_FAILURES: &str = "keygate_usage_flush_failures_total";
const USAGE_DROPPED: &str = "keygate_usage_dropped_total";
const USAGE_DISCARDED: &str = "keygate_usage_discarded_total";
const LIMITER_BACKEND: &str = "keygate_limiter_backend";
const LIMITER_FALLBACK: &str = "keygate_limiter_fallback";
const POOL_SIZE: &str = "keygate_store_pool_connections";
const POOL_IDLE: &str = "keygate_store_pool_idle_connections";
const POOL_MAX: &str = "keygate_store_pool_max_connections";
const UPSTREAM_STATE: &str = "keygate_upstream_state";
const UPSTREAM_FALLBACKS: &str = "keygate_upstream_fallbacks_total";

/// The `limit` label of `keygate_refusals_total`, as admission names its refusals.
pub const LIMIT_KINDS: [&str; 7] = [
    "rpm",
    "rpd",
    "tpm",
    "tpd",
    "budget",
    "credits",
    "concurrency",
];

/// Upper bounds of the upstream histograms' buckets, in seconds: a first byte in a few
/// milliseconds (an embedding) up to a long stream's five minutes.
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The `model` label of a request: an index into the configured models, 0 being `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelId(u16);

impl ModelId {
    pub const OTHER: ModelId = ModelId(0);
}

/// The two histograms of one upstream serving one model.
pub struct UpstreamSeries {
    /// From sending the request until its answer's head arrived.
    pub ttfb: Histogram,
    /// From sending the request until its answer ended (or the client left).
    pub duration: Histogram,
}

/// The request counters of one route, by status and model, made on first use.
pub struct RouteSeries {
    route: SharedString,
    counters: RwLock<HashMap<(u16, Option<ModelId>), Counter>>,
}

/// Process state read from its owners when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `postgres` or `sqlite`.
    pub store_backend: &'static str,
    pub pool: PoolStats,
    pub key_cache: CacheStats,
    pub usage: UsageStats,
    /// Each upstream's breaker: its name and `closed`, `half_open` or `open`.
    pub upstreams: Vec<(String, &'static str)>,
    /// The limiter deciding now: `memory`, `redis`, or `fallback` (Redis configured and
    /// unreachable).
    pub limiter: &'static str,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UsageStats {
    /// How long the oldest record not yet written to the store has waited (zero when
    /// everything is written).
    pub oldest_pending: Duration,
    pub flush_failures: u64,
    pub dropped: u64,
    pub discarded: u64,
}

pub struct Metrics {
    enabled: bool,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Label of each `ModelId`; `[0]` is `other`.
    model_names: Vec<SharedString>,
    models: HashMap<Box<str>, ModelId>,
    upstream_names: Vec<SharedString>,
    upstreams: HashMap<Box<str>, usize>,
    /// `[upstream × models + model]`, made on first use.
    upstream_series: Vec<OnceLock<UpstreamSeries>>,
    /// `[model] = [input, output]`.
    tokens: Vec<[Counter; 2]>,
    /// pico-USD per model. The facade's counters hold whole numbers only, and a float
    /// would drift; rendered as USD by [`Metrics::render`].
    cost_pico: Vec<AtomicU64>,
    refusals: [Counter; LIMIT_KINDS.len()],
    in_flight: Gauge,
    routes: RwLock<HashMap<Box<str>, Arc<RouteSeries>>>,
    fast_routes: [Arc<RouteSeries>; 5],
}

/// The recorder ignores metadata; one static value serves every registration.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    /// The series for `config`: its models and upstreams label the inference series.
    /// With `metrics.enabled = false` nothing is counted and `/metrics` answers 404.
    pub fn new(config: &Config) -> Metrics {
        let enabled = config.metrics.enabled;
        let recorder = recorder();
        describe(&recorder);
        let mut model_names: Vec<SharedString> = vec!["other".into()];
        let mut models = HashMap::new();
        let named = config
            .upstreams
            .iter()
            .flat_map(|u| u.models.iter().chain(u.model_mapping.keys()))
            .filter(|m| *m != "*")
            .chain(config.models.iter().map(|m| &m.name));
        for name in named {
            if models.contains_key(name.as_str()) || model_names.len() > usize::from(u16::MAX) {
                continue;
            }
            let id = ModelId(model_names.len() as u16);
            models.insert(name.clone().into_boxed_str(), id);
            model_names.push(name.clone().into());
        }
        let upstream_names: Vec<SharedString> = config
            .upstreams
            .iter()
            .map(|u| SharedString::from(u.name.clone()))
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone().into_boxed_str(), i))
            .collect();
        let upstream_series = (0..upstream_names.len() * model_names.len())
            .map(|_| OnceLock::new())
            .collect();
        // Off: the request path's handles do nothing (no atomic is touched).
        let counter = |name, labels| match enabled {
            true => counter(&recorder, name, labels),
            false => Counter::noop(),
        };
        let tokens = model_names
            .iter()
            .map(|model| {
                ["input", "output"].map(|kind| {
                    counter(
                        TOKENS,
                        vec![Label::new("model", model.clone()), Label::new("type", kind)],
                    )
                })
            })
            .collect();
        let cost_pico = model_names.iter().map(|_| AtomicU64::new(0)).collect();
        let refusals = LIMIT_KINDS.map(|kind| counter(REFUSALS, vec![Label::new("limit", kind)]));
        let in_flight = match enabled {
            true => recorder.register_gauge(&Key::from_static_name(IN_FLIGHT), &METADATA),
            false => Gauge::noop(),
        };
        let fast_routes = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/messages",
            "/v1/messages/count_tokens",
        ]
        .map(RouteSeries::new);
        let routes = fast_routes
            .iter()
            .map(|series| (Box::from(&*series.route), series.clone()))
            .collect();
        let handle = recorder.handle();
        Metrics {
            enabled,
            recorder,
            handle,
            model_names,
            models,
            upstream_names,
            upstreams,
            upstream_series,
            tokens,
            cost_pico,
            refusals,
            in_flight,
            routes: RwLock::new(routes),
            fast_routes,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The label of a model the request named.
    pub fn model(&self, name: &str) -> ModelId {
        self.models.get(name).copied().unwrap_or(ModelId::OTHER)
    }

    /// Counts one answered request. `route` is a route template, never the raw path.
    pub fn count_request(&self, route: &str, status: u16, model: Option<ModelId>) {
        if !self.enabled {
            return;
        }
        let known = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let series = match known {
            Some(series) => series,
            None => self
                .routes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(route.into())
                .or_insert_with(|| RouteSeries::new(route.to_owned()))
                .clone(),
        };
        self.count_on(&series, status, model);
    }

    /// [`Metrics::count_request`] for the fast path's routes (no route lookup):
    /// `0` chat completions, `1` completions, `2` embeddings.
    pub fn count_fast_request(&self, route: usize, status: u16, model: Option<ModelId>) {
        if !self.enabled {
            return;
        }
        if let Some(series) = self.fast_routes.get(route) {
            self.count_on(series, status, model);
        }
    }

    fn count_on(&self, series: &RouteSeries, status: u16, model: Option<ModelId>) {
        let known = series
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(status, model))
            .map(|counter| counter.increment(1))
            .is_some();
        if known {
            return;
        }
        let mut labels = vec![
            Label::new("route", series.route.clone()),
            Label::new("status", status.to_string()),
        ];
        if let Some(model) = model {
            labels.push(Label::new("model", self.model_label(model)));
        }
        series
            .counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry((status, model))
            .or_insert_with(|| counter(&self.recorder, REQUESTS, labels))
            .increment(1);
    }

    fn model_label(&self, model: ModelId) -> SharedString {
        self.model_names
            .get(usize::from(model.0))
            .cloned()
            .unwrap_or_else(|| "other".into())
    }

    /// The histograms of `upstream` serving `model`; `None` when metrics are off (or the
    /// upstream is not configured, which cannot happen).
    pub fn upstream(&self, upstream: &str, model: ModelId) -> Option<&UpstreamSeries> {
        if !self.enabled {
            return None;
        }
        let index = *self.upstreams.get(upstream)?;
        let cell = self
            .upstream_series
            .get(index * self.model_names.len() + usize::from(model.0))?;
        Some(cell.get_or_init(|| {
            let labels = || {
                vec![
                    Label::new("upstream", self.upstream_names[index].clone()),
                    Label::new("model", self.model_label(model)),
                ]
            };
            UpstreamSeries {
                ttfb: self
                    .recorder
                    .register_histogram(&Key::from_parts(UPSTREAM_TTFB, labels()), &METADATA),
                duration: self
                    .recorder
                    .register_histogram(&Key::from_parts(UPSTREAM_DURATION, labels()), &METADATA),
            }
        }))
    }

    /// Counts what a settled request used.
    pub fn used(&self, model: ModelId, input_tokens: u64, output_tokens: u64, cost_pico: i64) {
        if !self.enabled {
            return;
        }
        let index = usize::from(model.0);
        if let Some([input, output]) = self.tokens.get(index) {
            input.increment(input_tokens);
            output.increment(output_tokens);
        }
        if let (Some(cost), Ok(pico)) = (self.cost_pico.get(index), u64::try_from(cost_pico)) {
            if pico > 0 {
                cost.fetch_add(pico, Ordering::Relaxed);
            }
        }
    }

    /// Counts a refusal by admission; `limit` is one of [`LIMIT_KINDS`].
    pub fn refused(&self, limit: &str) {
        if let Some(index) = LIMIT_KINDS.iter().position(|kind| *kind == limit) {
            self.refusals[index].increment(1);
        }
    }

    /// Inference requests admitted and not yet settled (streams included).
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Drains recorded histogram samples into their buckets. Run every few seconds (the
    /// App does), or samples pile up in memory between scrapes.
    pub fn upkeep(&self) {
        if self.enabled {
            self.handle.run_upkeep();
        }
    }

    /// The exposition: every series, with `snapshot`'s process state. Empty when off.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        if !self.enabled {
            return String::new();
        }
        self.record_snapshot(snapshot);
        let mut out = self.handle.render();
        self.render_cost(&mut out);
        out
    }

    fn record_snapshot(&self, snapshot: &Snapshot) {
        let recorder = &self.recorder;
        let store = || vec![Label::new("backend", snapshot.store_backend)];
        let pool = &snapshot.pool;
        for (name, value) in [
            (POOL_SIZE, pool.size),
            (POOL_IDLE, pool.idle),
            (POOL_MAX, pool.max),
        ] {
            self.gauge(name, store()).set(f64::from(value));
        }
        let cache = &snapshot.key_cache;
        counter(recorder, CACHE_HITS, Vec::new()).absolute(cache.hits);
        counter(recorder, CACHE_MISSES, Vec::new()).absolute(cache.misses);
        self.gauge(CACHE_ENTRIES, Vec::new())
            .set(cache.entries as f64);
        let usage = &snapshot.usage;
        self.gauge(FLUSH_LAG, Vec::new())
            .set(usage.oldest_pending.as_secs_f64());
        counter(recorder, FLUSH_FAILURES, Vec::new()).absolute(usage.flush_failures);
        counter(recorder, USAGE_DROPPED, Vec::new()).absolute(usage.dropped);
        counter(recorder, USAGE_DISCARDED, Vec::new()).absolute(usage.discarded);
        for backend in ["memory", "redis"] {
            let in_force = match snapshot.limiter {
                "memory" => backend == "memory",
                _ => backend == "redis",
            };
            self.gauge(LIMITER_BACKEND, vec![Label::new("backend", backend)])
                .set(if in_force { 1.0 } else { 0.0 });
        }
        self.gauge(LIMITER_FALLBACK, Vec::new())
            .set(if snapshot.limiter == "fallback" {
                1.0
            } else {
                0.0
            });
        for (upstream, state) in &snapshot.upstreams {
            let value = match *state {
                "closed" => 0.0,
                "half_open" => 1.0,
                _ => 2.0,
            };
            self.gauge(
                UPSTREAM_STATE,
                vec![Label::new("upstream", upstream.clone())],
            )
            .set(value);
        }
    }

    /// Counts a request moved off `upstream` to the next candidate, and why (`cause`:
    /// connect, timeout, rate_limited, server_error). Rare, so the series is looked up here.
    pub fn fallback(&self, upstream: &str, cause: &'static str) {
        if !self.enabled {
            return;
        }
        let labels = vec![
            Label::new("upstream", upstream.to_owned()),
            Label::new("cause", cause),
        ];
        counter(&self.recorder, UPSTREAM_FALLBACKS, labels).increment(1);
    }

    /// `keygate_cost_usd_total`, written here because its value is a decimal sum kept in
    /// pico-USD (exact), which the facade's integer counters cannot show as USD.
    fn render_cost(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {COST} Cost of the tokens used, by model, in USD (the configured prices)."
        );
        let _ = writeln!(out, "# TYPE {COST} counter");
        for (name, pico) in self.model_names.iter().zip(&self.cost_pico) {
            let pico = pico.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{COST}{{model=\"{}\"}} {}.{:012}",
                escape_label(name),
                pico / 1_000_000_000_000,
                pico % 1_000_000_000_000
            );
        }
        out.push('\n');
    }
}

impl RouteSeries {
    fn new(route: impl Into<SharedString>) -> Arc<RouteSeries> {
        Arc::new(RouteSeries {
            route: route.into(),
            counters: RwLock::default(),
        })
    }
}

fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new();
    // Both calls only fail on an empty bucket list.
    let builder = match builder
        .set_buckets_for_metric(Matcher::Full(UPSTREAM_DURATION.into()), &LATENCY_BUCKETS)
    {
        Ok(builder) => builder,
        Err(_) => PrometheusBuilder::new(),
    };
    let builder = match builder
        .set_buckets_for_metric(Matcher::Full(UPSTREAM_TTFB.into()), &LATENCY_BUCKETS)
    {
        Ok(builder) => builder,
        Err(_) => PrometheusBuilder::new(),
    };
    builder.build_recorder()
}

fn counter(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
}

/// The `# HELP` lines.
fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        (
            REQUESTS,
            "Requests answered, by matched route, status and (inference) model.",
        ),
        (
            TOKENS,
            "Tokens charged, by model and type (input or output).",
        ),
        (
            REFUSALS,
            "Requests refused by admission, by the limit that refused them.",
        ),
        (
            CACHE_HITS,
            "Key verifications answered from the cache without a store read.",
        ),
        (
            CACHE_MISSES,
            "Key verifications that read the store (not cached, or older than keys.cache_ttl_ms).",
        ),
        (
            FLUSH_FAILURES,
            "Usage flushes the store refused (the batch is kept and retried).",
        ),
        (
            USAGE_DROPPED,
            "Usage records that arrived after the writer stopped.",
        ),
        (
            UPSTREAM_FALLBACKS,
            "Requests moved off an upstream to the next candidate, by upstream and cause.",
        ),
        (
            USAGE_DISCARDED,
            "Usage records thrown away because the batch was full while the store refused writes.",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
    }
    let gauges = [
        (IN_FLIGHT, "Inference requests admitted and not yet settled (streams included)."),
        (CACHE_ENTRIES, "Verified keys held in the cache."),
        (FLUSH_LAG, "How long the oldest usage record not yet written to the store has waited; 0 when all is written."),
        (LIMITER_BACKEND, "1 for the rate limiter in use (memory or redis)."),
        (LIMITER_FALLBACK, "1 while the shared limiter is unreachable and this instance limits on its own."),
        (POOL_SIZE, "Open connections of the store's pool."),
        (POOL_IDLE, "Idle connections of the store's pool."),
        (POOL_MAX, "The store pool's maximum size."),
        (UPSTREAM_STATE, "Each upstream's breaker: 0 closed, 1 half-open (next request probes), 2 open (skipped)."),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
    }
    for (name, help) in [
        (
            UPSTREAM_TTFB,
            "From sending a request upstream until its answer's head arrived.",
        ),
        (
            UPSTREAM_DURATION,
            "From sending a request upstream until its answer ended or the client left.",
        ),
    ] {
        recorder.describe_histogram(
            KeyName::from_const_str(name),
            Some(Unit::Seconds),
            help.into(),
        );
    }
}

/// A label value as the exposition format quotes it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelPrice, UpstreamConfig};

    fn config() -> Config {
        Config {
            upstreams: vec![UpstreamConfig::new(
                "main",
                "http://127.0.0.1:1",
                &["gpt-4o", "*"],
            )],
            models: vec![ModelPrice {
                name: "gpt-4o-mini".into(),
                input_usd_per_mtok: "0.15".parse().unwrap_or_default(),
                output_usd_per_mtok: "0.60".parse().unwrap_or_default(),
                cache_creation_input_usd_per_mtok: None,
                cache_read_input_usd_per_mtok: None,
            }],
            ..Config::default()
        }
    }

    #[test]
    fn models_outside_the_configuration_are_other() {
        let metrics = Metrics::new(&config());
        assert_ne!(metrics.model("gpt-4o"), ModelId::OTHER);
        assert_ne!(metrics.model("gpt-4o-mini"), ModelId::OTHER);
        assert_eq!(metrics.model("made-up"), ModelId::OTHER);
    }

    #[test]
    fn cost_is_rendered_exactly_in_usd() {
        let metrics = Metrics::new(&config());
        let model = metrics.model("gpt-4o-mini");
        metrics.used(model, 10, 20, 1_500_000_000_001);
        metrics.used(model, 1, 1, 2);
        let text = metrics.render(&Snapshot::default());
        assert!(
            text.contains("keygate_cost_usd_total{model=\"gpt-4o-mini\"} 1.500000000003\n"),
            "{text}"
        );
        assert!(text.contains("keygate_tokens_total{model=\"gpt-4o-mini\",type=\"input\"} 11"));
    }

    #[test]
    fn a_request_counter_is_made_once_per_route_status_and_model() {
        let metrics = Metrics::new(&config());
        let model = Some(metrics.model("gpt-4o"));
        metrics.count_fast_request(0, 200, model);
        metrics.count_request("/v1/chat/completions", 200, model);
        metrics.count_request("/admin/v1/keys/{id}", 404, None);
        let text = metrics.render(&Snapshot::default());
        assert!(text.contains(
            "keygate_requests_total{route=\"/v1/chat/completions\",status=\"200\",model=\"gpt-4o\"} 2"
        ), "{text}");
        assert!(
            text.contains("keygate_requests_total{route=\"/admin/v1/keys/{id}\",status=\"404\"} 1")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn nothing_is_counted_or_rendered_when_off() {
        let mut config = config();
        config.metrics.enabled = false;
        let metrics = Metrics::new(&config);
        metrics.count_fast_request(0, 200, None);
        assert!(metrics.upstream("main", ModelId::OTHER).is_none());
        assert_eq!(metrics.render(&Snapshot::default()), "");
    }
}
