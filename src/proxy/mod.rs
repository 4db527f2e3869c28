//! The inference proxy (DESIGN §4–5): admit a request against the key's model rules,
//! budget, concurrency cap and rate limits; forward it to the upstream serving its model
//! with the upstream's own credential; pass the answer back (streamed chunk by chunk or
//! whole) and settle exactly once with the real usage. No axum here: the HTTP layer
//! turns `ProxyAnswer` and `InferenceError` into responses.

pub mod bpe;
pub mod client;
pub mod headers;
pub mod meter;
pub mod request;
pub mod sse;
pub mod stream;
pub mod tokens;
pub mod upstreams;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use foldhash::HashMap;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, StatusCode};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{value::RawValue, Value};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use uuid::Uuid;

use self::{
    client::{RequestBuilder, SendError, UpstreamResponse},
    headers::RequestHeaders,
    meter::{Admission, Meter, Outcome, PromptTokens},
    request::RequestFields,
    stream::{ByteStream, MeteredStream},
    tokens::BodyKind,
    upstreams::{Upstream, Upstreams},
};
use crate::{
    config::ProxyConfig,
    keys::ApiKey,
    limits::{charges_for, BucketState, Limiter, Refusal, TokenEstimate},
    store::{DynStore, RateLimitEvent, StoreError},
    usage::{
        budget::{BudgetLedger, BudgetRefusal},
        pricing::Pricing,
        Recorder,
    },
};

/// Largest upstream answer read whole (non-streamed); larger ones are refused as an upstream error.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// What the gateway shares with every in-flight request.
pub struct Shared {
    pub limiter: Arc<dyn Limiter>,
    pub budgets: BudgetLedger,
    pub recorder: Recorder,
    pub pricing: Pricing,
}

pub struct Gateway {
    shared: Arc<Shared>,
    upstreams: Upstreams,
    store: DynStore,
    timeouts: Timeouts,
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
    /// A path an upstream declares for pass-through.
    Other,
}

impl Endpoint {
    fn body_kind(self) -> BodyKind {
        match self {
            Endpoint::ChatCompletions => BodyKind::Chat,
            Endpoint::Completions => BodyKind::Completion,
            Endpoint::Embeddings => BodyKind::Embedding,
            Endpoint::Other => BodyKind::Other,
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

/// Request headers never sent upstream (`name` in any case): hop-by-hop headers, the
/// client's own key, and anything that would change the answer's encoding or identity.
/// One `match` on the lower-cased name: run for every header of every request.
fn is_stripped(name: &[u8]) -> bool {
    const LONGEST: usize = "proxy-authorization".len();
    if name.len() > LONGEST {
        return false;
    }
    let mut lower = [0u8; LONGEST];
    for (to, from) in lower.iter_mut().zip(name) {
        *to = from.to_ascii_lowercase();
    }
    matches!(
        &lower[..name.len()],
        b"authorization"
            | b"x-api-key"
            | b"x-aixplain-key"
            | b"host"
            | b"content-length"
            | b"connection"
            | b"keep-alive"
            | b"proxy-authorization"
            | b"proxy-authenticate"
            | b"proxy-connection"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
            | b"accept-encoding"
            | b"cookie"
            | b"openai-organization"
            | b"openai-project"
            | b"x-forwarded-for"
            | b"x-real-ip"
            | b"forwarded"
    )
}

/// The upstream's answer headers as passed back: without those [`keep_answer_header`]
/// drops, and with the upstream's `x-request-id` renamed. The client's `x-request-id` is
/// keygate's (it is in keygate's logs); the upstream's is kept under its own name for
/// support tickets upstream.
fn answer_headers(mut upstream: HeaderMap) -> HeaderMap {
    // The framing and the date are keygate's to set, and these are almost always there:
    // removed here so that the usual answer passes on as it is, without a copy.
    upstream.remove(header::CONTENT_LENGTH);
    upstream.remove(header::TRANSFER_ENCODING);
    upstream.remove(header::DATE);
    let passes = |name: &HeaderName| name.as_str() != "x-request-id" && keep_answer_header(name);
    if upstream.keys().all(passes) {
        return upstream;
    }
    let mut headers = HeaderMap::with_capacity(upstream.len());
    for (name, value) in &upstream {
        if name.as_str() == "x-request-id" {
            headers.append(
                HeaderName::from_static("x-upstream-request-id"),
                value.clone(),
            );
        } else if keep_answer_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Answer headers never passed back: hop-by-hop, lengths we recompute, the upstream's
/// own rate-limit view (the client's limits are keygate's), and its `date`: keygate
/// dates every answer itself, and `date` is a singleton field (RFC 9110 §6.6.1), so
/// passing the upstream's on would send two (nginx's `proxy_pass` drops it too).
fn keep_answer_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "content-encoding"
            | "date"
            | "trailer"
            | "upgrade"
            | "set-cookie"
            | "proxy-authenticate"
            | "retry-after"
    ) && !name.starts_with("x-ratelimit")
        && !name.starts_with("ratelimit")
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

    /// Admits, forwards and meters one request.
    pub async fn handle(&self, request: InferenceRequest) -> Result<ProxyAnswer, InferenceError> {
        let key = request.key.clone();
        let fields = read_fields(request.endpoint, &request.body)?;
        let model = match fields.as_ref().and_then(|f| f.model) {
            Some(raw) => match request::string(raw) {
                Some(model) if !model.is_empty() => Some(model.into_owned()),
                _ => {
                    return Err(InferenceError::InvalidRequest {
                        message: "`model` must be a non-empty string".into(),
                        param: Some("model".into()),
                    })
                }
            },
            None => None,
        };
        // Checked before routing, so a key learns nothing about models it may not use.
        if let Some(model) = model.as_ref().filter(|m| !model_allowed(&key, m)) {
            return Err(InferenceError::ModelNotAllowed(model.clone()));
        }
        let upstream = match (request.endpoint, &model) {
            (Endpoint::Other, _) => self
                .upstreams
                .for_path(&request.path)
                .ok_or_else(|| InferenceError::PathNotFound(format!("/v1{}", request.path)))?,
            (_, None) => {
                return Err(InferenceError::InvalidRequest {
                    message: "you must provide a `model`".into(),
                    param: Some("model".into()),
                })
            }
            (_, Some(model)) => self
                .upstreams
                .for_model(model)
                .ok_or_else(|| InferenceError::ModelNotFound(model.clone()))?,
        };
        let model_name = model.clone().unwrap_or_default();
        let stream = fields.as_ref().is_some_and(RequestFields::stream);

        // Workspace credits are charged by cost too, so a priced request needs its estimate
        // even on a key without limits or budget (a 0 estimate is always admitted).
        let credits = self
            .workspace_credits(key.workspace_id)
            .await
            .map_err(|err| {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "workspace credits unavailable; refusing (fail closed)");
                InferenceError::BudgetUnavailable
            })?;
        let estimated = needs_estimate(&key)
            || (credits.is_some() && !self.shared.pricing.is_free(&model_name));
        let (estimate, prompt_tokens) = match &fields {
            Some(body) if estimated => {
                let estimate = tokens::estimate_fields(request.endpoint.body_kind(), body);
                (estimate, PromptTokens::Counted(estimate.input))
            }
            // Counted from the body only if the upstream reports no usage.
            _ => (
                TokenEstimate::default(),
                PromptTokens::Deferred(request.endpoint.body_kind(), request.body.clone()),
            ),
        };

        // Admission: concurrency slot, then budget and credits, then rate limits. Each
        // refusal releases what earlier steps took (RAII), so nothing refused is counted.
        let slot = self.take_slot(&key).inspect_err(|_| {
            self.record_refusal(
                &key,
                model.as_deref(),
                "concurrency",
                key.max_parallel.unwrap_or(0).to_string(),
            );
        })?;
        let estimate_cost = self.shared.pricing.cost_pico(
            &model_name,
            saturating_i64(estimate.input),
            saturating_i64(estimate.output),
        );
        let admitted_at = crate::clock::now();
        let hold = match self
            .shared
            .budgets
            .admit(
                &key,
                credits.map(|c| (key.workspace_id, c)),
                estimate_cost,
                admitted_at,
            )
            .await
        {
            Ok(hold) => hold,
            Err(BudgetRefusal::Unavailable(err)) => {
                tracing::error!(request_id = %request.request_id, key_id = %key.id, error = %err, "budget state unavailable; refusing (fail closed)");
                return Err(InferenceError::BudgetUnavailable);
            }
            Err(refusal) => {
                let (limit, value) = match &refusal {
                    BudgetRefusal::Credits { credits_usd } => ("credits", credits_usd.to_string()),
                    BudgetRefusal::Budget { limit_usd, .. } => ("budget", limit_usd.to_string()),
                    BudgetRefusal::Unavailable(_) => ("budget", String::new()),
                };
                self.record_refusal(&key, model.as_deref(), limit, value);
                return Err(InferenceError::Budget(refusal));
            }
        };
        let charges = charges_for(
            key.id,
            &key.limits,
            &key.model_limits,
            &model_name,
            estimate,
        );
        let reserved = match self.shared.limiter.reserve_now(&charges) {
            Some(reserved) => reserved,
            None => self.shared.limiter.reserve(&charges).await,
        };
        let mut reservation = match reserved {
            Ok(reservation) => reservation,
            Err(refusal) => {
                self.record_refusal(
                    &key,
                    refusal.scope.model().or(model.as_deref()),
                    refusal.kind.as_str(),
                    refusal.limit.to_string(),
                );
                return Err(InferenceError::RateLimited(refusal));
            }
        };
        let limits = reservation.take_states();
        let mut meter = Meter::new(
            self.shared.clone(),
            key.clone(),
            model_name,
            prompt_tokens,
            Admission {
                reservation,
                hold: Some(hold),
                slot,
                at: admitted_at,
            },
        );

        // Forward.
        let stream_options = fields.as_ref().and_then(|f| f.stream_options);
        let client_wants_usage = fields.as_ref().is_some_and(RequestFields::wants_usage);
        let body = if stream && request.endpoint != Endpoint::Embeddings && !client_wants_usage {
            // Ask for the final usage chunk; `hide` drops it again since the client didn't.
            match usage_requested(&request.body, stream_options) {
                Ok(body) => body,
                Err(err) => {
                    meter.finish(Outcome::NotCharged);
                    return Err(err);
                }
            }
        } else {
            request.body
        };
        let started = Instant::now();
        let deadline = started + self.timeouts.total;
        let upstream_request = match self.build_request(
            upstream,
            &request.method,
            &request.path,
            request.query.as_deref(),
            &request.headers,
            &request.request_id,
        ) {
            Ok(upstream_request) => upstream_request,
            Err(message) => {
                meter.finish(Outcome::NotCharged);
                return Err(InferenceError::InvalidRequest {
                    message,
                    param: None,
                });
            }
        };
        let mut response = match tokio::time::timeout(
            self.timeouts.first_byte.min(self.timeouts.total),
            upstream_request.send(body),
        )
        .await
        {
            Err(_) | Ok(Err(SendError::ConnectTimeout)) => {
                meter.finish(Outcome::NotCharged);
                return Err(InferenceError::UpstreamTimeout);
            }
            Ok(Err(SendError::Failed(err))) => {
                meter.finish(Outcome::NotCharged);
                tracing::warn!(request_id = %request.request_id, key_id = %key.id, upstream = %upstream.name, error = %err, "upstream request failed");
                return Err(InferenceError::Upstream(format!(
                    "cannot reach upstream `{}`",
                    upstream.name
                )));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status;
        let headers = answer_headers(std::mem::take(&mut response.headers));
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));

        if status.is_success() && is_sse {
            let body = MeteredStream::new(
                response,
                request.request_id,
                meter,
                client_wants_usage,
                self.timeouts.idle,
                deadline,
            );
            return Ok(ProxyAnswer {
                status,
                headers,
                body: AnswerBody::Stream(Box::pin(body)),
                limits,
            });
        }

        let bytes =
            match read_whole(response, deadline, self.timeouts.idle, &request.request_id).await {
                Ok(bytes) => bytes,
                Err(err) => {
                    meter.finish(Outcome::NotCharged);
                    return Err(err);
                }
            };
        if !status.is_success() {
            // Upstream errors pass through as they are and are not charged.
            meter.finish(Outcome::NotCharged);
        } else {
            let usage = match sse::answer_usage(&bytes) {
                Some(usage) => usage.into(),
                _ => crate::limits::TokenUsage {
                    input: meter.prompt_tokens(),
                    output: serde_json::from_slice::<Value>(&bytes)
                        .map(|v| tokens::completion_tokens(&v))
                        .unwrap_or(0),
                },
            };
            meter.finish(Outcome::Charged(usage));
        }
        Ok(ProxyAnswer {
            status,
            headers,
            body: AnswerBody::Whole(bytes),
            limits,
        })
    }

    /// The upstream request's head: the client's method and path, its headers less the
    /// stripped ones, the request's id (the client's, else keygate's), and the upstream's
    /// own credential (the body goes to `send`). `Err` names a path or query that cannot
    /// be sent (the HTTP layer already parsed them, so this is a safety net).
    fn build_request<'a>(
        &'a self,
        upstream: &'a Upstream,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &RequestHeaders,
        request_id: &str,
    ) -> Result<RequestBuilder<'a>, String> {
        let path_and_query = match query {
            Some(query) => std::borrow::Cow::Owned(format!("{path}?{query}")),
            None => std::borrow::Cow::Borrowed(path),
        };
        let mut request = self
            .upstreams
            .client
            .request(&upstream.target, method, &path_and_query)
            .map_err(|err| format!("cannot forward this path upstream: {err}"))?;
        for (name, value) in headers.lines() {
            if !is_stripped(name) {
                request = request.header(name, value);
            }
        }
        if !request_id.is_empty() && headers.get("x-request-id").is_none() {
            request = request.header("x-request-id", request_id.as_bytes());
        }
        if let Some(authorization) = upstream.authorization() {
            request = request.header("authorization", authorization.as_bytes());
        }
        Ok(request)
    }

    fn take_slot(&self, key: &ApiKey) -> Result<Option<OwnedSemaphorePermit>, InferenceError> {
        let Some(limit) = key.max_parallel else {
            return Ok(None);
        };
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let entry = slots
                .entry(key.id)
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
            if entry.0 != limit {
                // The cap changed: requests in flight keep their slots on the old semaphore.
                *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
            }
            entry.1.clone()
        };
        semaphore
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| InferenceError::Concurrency { limit })
    }

    /// The workspace's credits, read again after `credits_ttl`. When the store cannot
    /// answer, the last value read stands (as a cached key does); with none, `Err`, and
    /// admission fails closed like an unloaded budget (docs/decisions.md).
    async fn workspace_credits(&self, workspace_id: Uuid) -> Result<Option<Decimal>, StoreError> {
        let known = {
            let credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
            match credits.get(&workspace_id) {
                Some((value, at)) if at.elapsed() < self.credits_ttl => return Ok(*value),
                other => other.map(|(value, _)| *value),
            }
        };
        let value = match (self.store.get_workspace(workspace_id).await, known) {
            (Ok(ws), _) => ws.credits_usd,
            (Err(err), Some(value)) if err.is_unavailable() => {
                tracing::debug!(error = %err, %workspace_id, "store unavailable; using the credits read last");
                value
            }
            (Err(err), _) => return Err(err),
        };
        let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
        credits.insert(workspace_id, (value, std::time::Instant::now()));
        Ok(value)
    }

    fn record_refusal(&self, key: &ApiKey, model: Option<&str>, limit: &str, limit_value: String) {
        self.shared.recorder.refusal(RateLimitEvent {
            id: Uuid::now_v7(),
            workspace_id: key.workspace_id,
            key_id: key.id,
            model: model.map(str::to_owned),
            limit: limit.to_string(),
            limit_value,
            at: crate::clock::now(),
        });
    }
}

/// The body's fields, or `None` for an empty body. Inference bodies must be JSON objects;
/// a pass-through body may be any JSON.
fn read_fields(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Option<RequestFields<'_>>, InferenceError> {
    if body.is_empty() {
        return if endpoint == Endpoint::Other {
            Ok(None)
        } else {
            Err(not_an_object())
        };
    }
    match RequestFields::parse(body) {
        Ok(fields) => Ok(Some(fields)),
        Err(err) if err.classify() == serde_json::error::Category::Data => {
            if endpoint == Endpoint::Other {
                Ok(None)
            } else {
                Err(not_an_object())
            }
        }
        Err(err) => Err(InferenceError::InvalidRequest {
            message: format!("request body is not valid JSON: {err}"),
            param: None,
        }),
    }
}

fn not_an_object() -> InferenceError {
    InferenceError::InvalidRequest {
        message: "request body must be a JSON object".into(),
        param: None,
    }
}

/// The streamed request's body with `stream_options.include_usage` set. Without a
/// `stream_options` member the body is passed on byte for byte with that member added;
/// otherwise it is rewritten through a `Value`.
fn usage_requested(
    body: &Bytes,
    stream_options: Option<&RawValue>,
) -> Result<Bytes, InferenceError> {
    if stream_options.is_none() {
        if let Some(body) = request::with_usage_requested(body) {
            return Ok(body);
        }
    }
    let mut value: Value =
        serde_json::from_slice(body).map_err(|err| InferenceError::InvalidRequest {
            message: format!("request body is not valid JSON: {err}"),
            param: None,
        })?;
    let options = &mut value["stream_options"];
    if options.is_null() {
        *options = Value::Object(serde_json::Map::new());
    }
    let Some(options) = options.as_object_mut() else {
        return Err(InferenceError::InvalidRequest {
            message: "`stream_options` must be an object".into(),
            param: Some("stream_options".into()),
        });
    };
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|err| InferenceError::InvalidRequest {
            message: format!("cannot rewrite the request body: {err}"),
            param: None,
        })
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

/// The estimate only matters when a token bucket or a budget will be charged.
fn needs_estimate(key: &ApiKey) -> bool {
    key.budget.is_some()
        || key.limits.tpm.is_some()
        || key.limits.tpd.is_some()
        || key
            .model_limits
            .iter()
            .any(|m| m.tpm.is_some() || m.tpd.is_some())
}

async fn read_whole(
    response: UpstreamResponse,
    deadline: Instant,
    idle: Duration,
    request_id: &str,
) -> Result<Bytes, InferenceError> {
    let mut body = response.body;
    // Most answers arrive in one frame: pass that frame on without copying it.
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let chunk = match tokio::time::timeout(wait, body.chunk()).await {
            Err(_) => return Err(InferenceError::UpstreamTimeout),
            Ok(Ok(None)) => break,
            Ok(Err(err)) => {
                tracing::warn!(request_id, error = %err, "upstream answer broke");
                return Err(InferenceError::Upstream(
                    "the upstream connection broke".into(),
                ));
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + chunk.len() > MAX_ANSWER_BYTES {
            return Err(InferenceError::Upstream(
                "the upstream answer is too large".into(),
            ));
        }
        match &first {
            None if rest.is_empty() => first = Some(chunk),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(match first {
        Some(first) => first,
        None => rest.freeze(),
    })
}

/// How long a wildcard upstream's own model list is reused.
const MODEL_LIST_TTL: Duration = Duration::from_secs(60);

impl Gateway {
    /// The models `key` may use, with the upstream serving each: models named in the
    /// config, plus what wildcard (`*`) upstreams list at their `/models`.
    pub async fn models_for(&self, key: &ApiKey) -> Vec<(String, String)> {
        let mut models: Vec<(String, String)> = Vec::new();
        let push = |id: &str, owner: &str, models: &mut Vec<(String, String)>| {
            if model_allowed(key, id) && !models.iter().any(|(m, _)| m == id) {
                models.push((id.to_string(), owner.to_string()));
            }
        };
        for upstream in self.upstreams.all() {
            for model in upstream.named_models() {
                push(model, &upstream.name, &mut models);
            }
            if upstream.serves_any() {
                for model in self.upstream_models(upstream).await {
                    push(&model, &upstream.name, &mut models);
                }
                // Allowed models routed to this wildcard upstream exist even if it doesn't list them.
                for model in key.allowed_models.iter().flatten() {
                    if self
                        .upstreams
                        .for_model(model)
                        .is_some_and(|u| u.name == upstream.name)
                    {
                        push(model, &upstream.name, &mut models);
                    }
                }
            }
        }
        models
    }

    async fn upstream_models(&self, upstream: &Upstream) -> Vec<String> {
        {
            let cache = self.model_lists.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((models, at)) = cache.get(&upstream.name) {
                if at.elapsed() < MODEL_LIST_TTL {
                    return models.clone();
                }
            }
        }
        let models = match self.fetch_models(upstream).await {
            Ok(list) => list.data.into_iter().map(|m| m.id).collect(),
            Err(err) => {
                tracing::warn!(upstream = %upstream.name, error = %err, "upstream model list unavailable");
                Vec::new()
            }
        };
        let mut cache = self.model_lists.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            upstream.name.clone(),
            (models.clone(), std::time::Instant::now()),
        );
        models
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl Gateway {
    async fn fetch_models(&self, upstream: &Upstream) -> Result<ModelList, String> {
        let request = self.build_request(
            upstream,
            &Method::GET,
            "/models",
            None,
            &RequestHeaders::Map(HeaderMap::new()),
            "",
        )?;
        let deadline = Instant::now() + self.timeouts.first_byte;
        let response = tokio::time::timeout(self.timeouts.first_byte, request.send(Bytes::new()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|err| err.to_string())?;
        if !response.status.is_success() {
            return Err(format!("answered {}", response.status));
        }
        let bytes = read_whole(response, deadline, self.timeouts.first_byte, "")
            .await
            .map_err(|err| err.to_string())?;
        serde_json::from_slice(&bytes).map_err(|err| format!("unreadable: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_headers_are_recognised_in_any_case_and_nothing_else_is() {
        for name in [
            "Authorization",
            "X-API-KEY",
            "x-aixplain-key",
            "HOST",
            "Proxy-Authorization",
            "OpenAI-Organization",
            "TE",
            "Forwarded",
        ] {
            assert!(is_stripped(name.as_bytes()), "{name}");
        }
        for name in [
            "x-request-id",
            "content-type",
            "authorizations",
            "x-forwarded-proto",
            "openai-organization-extra",
            "",
        ] {
            assert!(!is_stripped(name.as_bytes()), "{name}");
        }
    }
}
