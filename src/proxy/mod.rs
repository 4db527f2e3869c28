//! The inference proxy (DESIGN §4–5): admit a request against the key's model rules,
//! budget, concurrency cap and rate limits; forward it to the upstream serving its model
//! with the upstream's own credential; pass the answer back (streamed chunk by chunk or
//! whole) and settle exactly once with the real usage. No axum here: the HTTP layer
//! turns `ProxyAnswer` and `InferenceError` into responses.
//!
//! A request's walk is [`Gateway::handle`]: parse (here, with `request`), admit
//! (`admission`), forward (`forward`, over the candidates `upstreams` picks), meter
//! (`meter`, and `stream` for a stream).
//! `models` lists the models a key may use.

mod admission;
pub mod anthropic;
pub mod bpe;
pub mod client;
pub mod fit;
mod forward;
pub mod headers;
pub mod meter;
mod models;
pub mod request;
pub mod sse;
pub mod stream;
pub mod tokens;
pub mod upstreams;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use foldhash::HashMap;
use http::{HeaderMap, Method, StatusCode};
use rust_decimal::Decimal;
use tokio::sync::Semaphore;
use uuid::Uuid;

use self::{
    admission::Admitted,
    headers::RequestHeaders,
    meter::Outcome,
    request::RequestFields,
    stream::ByteStream,
    tokens::BodyKind,
    upstreams::{Candidates, Upstreams},
};
use crate::{
    config::{ProxyConfig, UpstreamKind},
    keys::ApiKey,
    limits::{
        redis::{RedisGate, RedisLimiterWithFallback},
        BucketState, Charge, Limiter, Refusal,
    },
    store::DynStore,
    telemetry::metrics::{Metrics, ModelId},
    usage::{
        budget::{BudgetLedger, BudgetRefusal},
        pricing::Pricing,
        Recorder,
    },
};

/// What the gateway shares with every in-flight request.
pub struct Shared {
    /// The in-process limiter: the only one without Redis, the fallback with it.
    pub limiter: Arc<dyn Limiter>,
    /// The in-process budget ledger (likewise).
    pub budgets: BudgetLedger,
    pub recorder: Recorder,
    pub pricing: Pricing,
    pub metrics: Arc<Metrics>,
    /// Limits, budgets and slots shared by all replicas (`redis.url` set).
    pub redis: Option<SharedLimits>,
}

/// The Redis gate and what the in-process fallback divides every limit by.
pub struct SharedLimits {
    pub gate: RedisGate,
    pub view: RedisLimiterWithFallback,
    pub fallback_replicas: u32,
}

impl Shared {
    /// The buckets' states for `/v1/key`: from Redis when it is the limiter in force.
    pub async fn bucket_states(&self, buckets: &[Charge]) -> Vec<BucketState> {
        match &self.redis {
            Some(redis) if !redis.gate.in_fallback() => redis.view.snapshot(buckets).await,
            _ => self.limiter.snapshot(buckets).await,
        }
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
    upstreams: Upstreams,
    store: DynStore,
    timeouts: Timeouts,
    /// `proxy.max_event_bytes`: the largest SSE event passed on.
    max_event_bytes: usize,
    /// `proxy.max_attempts`: upstreams one request may be sent to, the first included.
    max_attempts: u32,
    /// `proxy.min_fitted_tokens`: the smallest cap a request is fitted to (`fit`).
    min_fitted_tokens: u64,
    slots: Mutex<HashMap<Uuid, (u32, Arc<Semaphore>)>>,
    credits: Mutex<HashMap<Uuid, (Option<Decimal>, std::time::Instant)>>,
    credits_ttl: Duration,
    model_lists: Mutex<HashMap<String, (Vec<String>, std::time::Instant)>>,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    first_byte: Duration,
    idle: Duration,
    total: Duration,
}

/// The endpoint family of a `/v1` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
    /// Anthropic's `/v1/messages/count_tokens`: forwarded, charged no tokens.
    CountTokens,
    /// A path an upstream declares for pass-through.
    Other,
}

impl Endpoint {
    fn body_kind(self) -> BodyKind {
        match self {
            Endpoint::ChatCompletions => BodyKind::Chat,
            Endpoint::Completions => BodyKind::Completion,
            Endpoint::Embeddings => BodyKind::Embedding,
            Endpoint::Messages => BodyKind::Messages,
            Endpoint::CountTokens | Endpoint::Other => BodyKind::Other,
        }
    }

    /// The API whose upstreams serve this route.
    pub fn api(self) -> UpstreamKind {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => UpstreamKind::Anthropic,
            _ => UpstreamKind::OpenAi,
        }
    }

    /// The route as clients call it, for messages.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Other => "/v1/{path}",
        }
    }
}

pub struct InferenceRequest {
    pub key: Arc<ApiKey>,
    /// The request's `x-request-id`, named in every log event of this request (the hot
    /// path holds no tracing span per request: it cost more than the limiter).
    pub request_id: String,
    pub endpoint: Endpoint,
    /// Path after `/v1`, e.g. `/chat/completions`.
    pub path: String,
    pub query: Option<String>,
    pub method: Method,
    pub headers: RequestHeaders,
    pub body: Bytes,
}

/// An answer to pass to the client, plus the buckets for the rate-limit headers.
pub struct ProxyAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: AnswerBody,
    pub limits: Vec<BucketState>,
}

pub enum AnswerBody {
    Whole(Bytes),
    Stream(ByteStream),
}

/// What became of a request: answered or refused, and the model it named (the label of
/// its `/metrics` series; `None` when it named none).
pub struct Handled {
    pub model: Option<ModelId>,
    pub result: Result<ProxyAnswer, InferenceError>,
}

/// Why a request was not proxied, with the buckets' states where known.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("this key may not use model `{0}`")]
    ModelNotAllowed(String),
    #[error("the model `{0}` does not exist or no upstream serves it")]
    ModelNotFound(String),
    #[error("the model `{model}` is served only by {api} upstreams, which {route} does not reach; call {served_by} instead")]
    ModelOnOtherApi {
        model: String,
        api: &'static str,
        route: &'static str,
        served_by: &'static str,
    },
    #[error("no upstream serves {0}")]
    PathNotFound(String),
    #[error(transparent)]
    RateLimited(Refusal),
    #[error("{0}")]
    Budget(BudgetRefusal),
    #[error("budget or credit state is unavailable; try again")]
    BudgetUnavailable,
    #[error("too many requests in flight for this key (max_parallel = {limit})")]
    Concurrency { limit: u32 },
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("{0}")]
    Upstream(String),
}

impl Gateway {
    pub fn new(
        shared: Shared,
        upstreams: Upstreams,
        store: DynStore,
        config: &ProxyConfig,
        credits_ttl: Duration,
    ) -> Self {
        Gateway {
            shared: Arc::new(shared),
            upstreams,
            store,
            timeouts: Timeouts {
                first_byte: Duration::from_secs_f64(config.first_byte_timeout_secs),
                idle: Duration::from_secs_f64(config.idle_timeout_secs),
                total: Duration::from_secs_f64(config.timeout_secs),
            },
            max_event_bytes: config.max_event_bytes,
            max_attempts: config.max_attempts,
            min_fitted_tokens: config.min_fitted_tokens,
            slots: Mutex::default(),
            credits: Mutex::default(),
            credits_ttl,
            model_lists: Mutex::default(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Which limiter decides now: `memory`, `redis`, or `fallback` while Redis is
    /// unreachable and this instance limits on its own.
    pub fn limiter_state(&self) -> &'static str {
        match &self.shared.redis {
            None => "memory",
            Some(redis) if redis.gate.in_fallback() => "fallback",
            Some(_) => "redis",
        }
    }

    /// Drops the workspace's cached credits (`None`: every workspace's), so the next
    /// request reads them from the store: some instance changed them.
    pub fn forget_credits(&self, workspace_id: Option<Uuid>) {
        let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
        match workspace_id {
            Some(id) => {
                credits.remove(&id);
            }
            None => credits.clear(),
        }
    }

    /// Admits, forwards and meters one request: parse → admit → forward → meter.
    pub async fn handle(&self, request: InferenceRequest) -> Handled {
        let mut model = None;
        let result = self.walk(request, &mut model).await;
        Handled { model, result }
    }

    /// [`Gateway::handle`]'s steps; `named` is set to the model's label once it is known.
    async fn walk(
        &self,
        mut request: InferenceRequest,
        named: &mut Option<ModelId>,
    ) -> Result<ProxyAnswer, InferenceError> {
        // Parse: the body's fields, the model, and the upstream serving it.
        let body = std::mem::take(&mut request.body);
        let fields = request::read_fields(request.endpoint, &body)?;
        let metrics = &self.shared.metrics;
        let model = requested_model(&request.key, fields.as_ref()).inspect_err(|err| {
            if let InferenceError::ModelNotAllowed(model) = err {
                *named = Some(metrics.model(model));
            }
        })?;
        *named = model.as_deref().map(|model| metrics.model(model));
        let mut candidates = self.route(&mut request, model.as_deref())?;
        let client_wants_usage = fields.as_ref().is_some_and(RequestFields::wants_usage);

        // Admit (admission.rs): the concurrency slot, credits and budget, rate limits.
        // Once, whatever the number of upstreams tried below.
        let Admitted {
            mut meter,
            limits,
            fitted,
        } = self.admit(&request, &body, fields.as_ref(), model).await?;
        // A request fitted to what its key has left goes on with the lower cap (fit.rs).
        let fitted_body;
        let (body, fields) = match (fitted, fields) {
            (Some(cap), Some(fields)) => {
                fitted_body = fit::with_cap(&body, &fields, cap).ok_or_else(|| {
                    InferenceError::InvalidRequest {
                        message: "cannot set `max_tokens` in this body".into(),
                        param: Some("max_tokens".into()),
                    }
                })?;
                let fields = request::read_fields(request.endpoint, &fitted_body)?;
                (&fitted_body, fields)
            }
            (_, fields) => (&body, fields),
        };
        meter.speaks(request.endpoint.api());

        // Forward (forward.rs): to the candidates in turn until one answers (fallback on
        // a connect error, a timeout before the first byte, a 429 or a 5xx); the body asks
        // for usage on a stream and carries each upstream's own model name.
        let sent = self
            .send(&mut candidates, &request, body, fields.as_ref(), *named)
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(err) => {
                // Nothing came back: the request counts toward rpm, its tokens are refunded.
                meter.finish(Outcome::NotCharged);
                return Err(err);
            }
        };
        if let Some((duration, started)) = sent.timing.clone() {
            meter.time_upstream(duration, started);
        }

        // Meter: a stream settles as it ends (stream.rs), a whole answer once it is read.
        let (status, mut headers, body) = self
            .answer(sent, meter, request.request_id, client_wants_usage)
            .await?;
        if let Some(cap) = fitted {
            headers.insert(fit::FITTED_HEADER, http::HeaderValue::from(cap));
        }
        Ok(ProxyAnswer {
            status,
            headers,
            body,
            limits,
        })
    }

    /// The upstreams that may serve the request: by its path for a pass-through (whose
    /// path becomes the normalised one, the only one forwarded), else by its model (which
    /// an inference request must name).
    fn route(
        &self,
        request: &mut InferenceRequest,
        model: Option<&str>,
    ) -> Result<Candidates<'_>, InferenceError> {
        match (request.endpoint, model) {
            (Endpoint::Other, _) => {
                let (candidates, path) = self.upstreams.for_path(&request.path)?;
                request.path = path;
                Ok(candidates)
            }
            (_, None) => Err(InferenceError::InvalidRequest {
                message: "you must provide a `model`".into(),
                param: Some("model".into()),
            }),
            (endpoint, Some(model)) => {
                let api = endpoint.api();
                if let Some(candidates) = self.upstreams.for_model(api, model) {
                    return Ok(candidates);
                }
                let other = match api {
                    UpstreamKind::OpenAi => UpstreamKind::Anthropic,
                    UpstreamKind::Anthropic => UpstreamKind::OpenAi,
                };
                match self.upstreams.for_model(other, model) {
                    Some(_) => Err(InferenceError::ModelOnOtherApi {
                        model: model.to_owned(),
                        api: other.as_str(),
                        route: endpoint.route(),
                        served_by: match other {
                            UpstreamKind::Anthropic => "POST /v1/messages",
                            UpstreamKind::OpenAi => "the OpenAI routes (/v1/chat/completions, …)",
                        },
                    }),
                    None => Err(InferenceError::ModelNotFound(model.to_owned())),
                }
            }
        }
    }
}

/// The body's `model`, if it names one. Refused: a `model` that is not a non-empty
/// string, or one outside the key's `allowed_models` (checked before routing, so a key
/// learns nothing about models it may not use).
fn requested_model(
    key: &ApiKey,
    fields: Option<&RequestFields<'_>>,
) -> Result<Option<String>, InferenceError> {
    let Some(raw) = fields.and_then(|f| f.model) else {
        return Ok(None);
    };
    match request::string(raw) {
        Some(model) if !model.is_empty() => {
            if model_allowed(key, &model) {
                Ok(Some(model.into_owned()))
            } else {
                Err(InferenceError::ModelNotAllowed(model.into_owned()))
            }
        }
        _ => Err(InferenceError::InvalidRequest {
            message: "`model` must be a non-empty string".into(),
            param: Some("model".into()),
        }),
    }
}

/// Token counts are u64 on the wire and i64 in the stores.
pub fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub fn model_allowed(key: &ApiKey, model: &str) -> bool {
    key.allowed_models
        .as_ref()
        .is_none_or(|allowed| allowed.iter().any(|m| m == model))
}
